//! The gateway's logs, captured at trace level in JSON: no secret and no token ever appears, every
//! request has its access line, every upload its audit events, and a client-chosen user id cannot
//! break a line.
//!
//! One test only, run in a process of its own: the subscriber is global to its process, and the
//! capture is read as a whole.

use kizen_gateway::{
    config::{LogConfig, LogFormat},
    standin::{Endpoint, Scripted},
};
use serde_json::{Value, json};

use crate::support::*;

/// The parsed lines of the capture; panics on a line that is not one JSON object.
fn json_lines(text: &str) -> Vec<Value> {
    text.split('\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// What one request of the flow should leave in the access log.
struct Expected {
    request_id: String,
    route: &'static str,
    status: u16,
    outcome: &'static str,
}

struct Flow<'g> {
    gw: &'g TestGateway,
    expected: Vec<Expected>,
}

impl Flow<'_> {
    fn next_id(&self) -> String {
        format!("logs-test-{}", self.expected.len())
    }

    async fn presign(
        &mut self,
        token: &str,
        status: u16,
        outcome: &'static str,
    ) -> reqwest::Response {
        let request_id = self.next_id();
        let response = self
            .gw
            .presign_request(token, DEFAULT_QUERY)
            .header("x-request-id", &request_id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "presign {request_id}");
        self.expected.push(Expected {
            request_id,
            route: "presign",
            status,
            outcome,
        });
        response
    }

    async fn issue(&mut self, token: &str) -> Issued {
        let response = self.presign(token, 200, "issued").await;
        Issued::from_answer(response.json().await.unwrap())
    }

    async fn confirm(
        &mut self,
        token: &str,
        issued: &Issued,
        status: u16,
        outcome: &'static str,
    ) -> reqwest::Response {
        let request_id = self.next_id();
        let response = self
            .gw
            .confirm_request(token, issued.confirmation())
            .header("x-request-id", &request_id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "confirm {request_id}");
        self.expected.push(Expected {
            request_id,
            route: "confirm",
            status,
            outcome,
        });
        response
    }
}

/// Set in the environment of the test binary run again for one test alone.
const OWN_PROCESS: &str = "KIZEN_GATEWAY_TEST_OWN_PROCESS";

/// Runs `test` (this module's test of that name) alone in a process of its own: this test binary
/// run again with only that test selected. In that process, `body` runs.
fn in_own_process(test: &str, body: impl FnOnce()) {
    if std::env::var_os(OWN_PROCESS).is_some() {
        return body();
    }
    // The harness names tests by their module path without the crate's name.
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::{test}");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS, "1")
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name}, in a process of its own:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn logs_carry_no_secret_and_no_token_and_every_request_is_accounted_for() {
    in_own_process(
        "logs_carry_no_secret_and_no_token_and_every_request_is_accounted_for",
        || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(logged_flow());
        },
    );
}

/// The flow, under the global subscriber that captures the logs, then the checks of the capture.
async fn logged_flow() {
    let capture = LogCapture::default();
    kizen_gateway::observability::logs::init_tracing(
        &LogConfig {
            level: "trace".into(),
            format: LogFormat::Json,
        },
        capture.clone(),
    )
    .expect("the subscriber installs");

    let gw = TestGateway::start().await;
    let mut flow = Flow {
        gw: &gw,
        expected: Vec::new(),
    };
    let mut tokens = Vec::new();

    // A presign and its confirmation.
    let alice = gw.token("alice");
    tokens.push(alice.clone());
    let issued = flow.issue(&alice).await;
    flow.confirm(&alice, &issued, 200, "confirmed").await;

    // A token signed with another secret.
    let forged = sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-entirely-0123456789abcdef"),
        None,
        &json!({ "sub": "alice", "iat": now(), "exp": now() + 3600 }),
    );
    tokens.push(forged.clone());
    flow.presign(&forged, 401, "token_bad_signature").await;

    // An expired token.
    let expired = hs256(&json!({ "sub": "alice", "iat": now() - 7200, "exp": now() - 3600 }));
    tokens.push(expired.clone());
    flow.presign(&expired, 401, "token_expired").await;

    // The upstream refuses the gateway's credentials.
    gw.standin.script(
        Endpoint::Presign,
        Scripted::Respond {
            status: 401,
            headers: vec![("content-type".into(), "application/json".into())],
            // Without the API key, which would be withheld as a leak before the status is read.
            body: format!(r#"{{"detail": "Invalid credentials for business {BUSINESS_ID}"}}"#),
        },
    );
    flow.presign(&alice, 502, "upstream_unavailable").await;

    // The upstream echoes the API key (and the other secrets) in a success body.
    gw.standin.script(
        Endpoint::Presign,
        Scripted::Respond {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), format!("private, x={API_KEY}")),
            ],
            body: format!(
                r#"{{"debug": {{"x-api-key": "{API_KEY}", "x-business-id": "{BUSINESS_ID}", "x-user-id": "{KIZEN_USER_ID}"}}}}"#
            ),
        },
    );
    flow.presign(&alice, 502, "upstream_bad_response").await;

    // A replayed confirmation.
    let replay = flow.confirm(&alice, &issued, 200, "replayed").await;
    assert_eq!(
        replay
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );

    // A user id with a newline and a quote.
    let evil_sub = "evil\nuser\"x";
    let evil = gw.token(evil_sub);
    tokens.push(evil.clone());
    let evil_upload = flow.issue(&evil).await;
    flow.confirm(&evil, &evil_upload, 200, "confirmed").await;

    let text = capture.text();

    // No secret, no token, not even a token's signature or claims segment.
    for secret in [API_KEY, BUSINESS_ID, KIZEN_USER_ID, HS256_SECRET] {
        let at = text.find(secret);
        assert!(
            at.is_none(),
            "the logs show a secret {secret:?}: {}",
            text[at.unwrap().saturating_sub(300)..]
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    for token in &tokens {
        let segments: Vec<&str> = token.split('.').collect();
        for needle in [token.as_str(), segments[1], segments[2]] {
            assert!(
                !text.contains(needle),
                "the logs show a token part {needle}"
            );
        }
    }

    // Every line is one JSON object: nothing a client sent broke a line.
    let lines = json_lines(&text);
    assert!(!text.contains(evil_sub), "a raw newline from a user id");

    // Trace level really reached the dependencies, so the checks above covered their lines.
    assert!(
        lines.iter().any(|l| l["level"] == "TRACE"
            && l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("hyper") || t.starts_with("reqwest"))),
        "dependency trace lines are captured"
    );

    // One line per request, with its route, status and outcome: under the access target, or the
    // audit target when the request moved an upload along.
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"] == "kizen_gateway::access"
                || (l["target"] == "kizen_gateway::audit" && l["status"].is_number())
        })
        .collect();
    assert_eq!(access.len(), flow.expected.len(), "one line per request");
    for expected in &flow.expected {
        let matching: Vec<&&Value> = access
            .iter()
            .filter(|l| l["request_id"] == expected.request_id.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "access line of {}", expected.request_id);
        let line = matching[0];
        assert_eq!(line["route"], expected.route, "{line}");
        assert_eq!(line["status"], expected.status, "{line}");
        assert_eq!(line["outcome"], expected.outcome, "{line}");
        assert!(line["latency_ms"].is_number(), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
    // The user is named on authenticated requests, escaped.
    let evil_lines: Vec<&&Value> = access
        .iter()
        .filter(|l| l["user"].as_str().is_some_and(|u| u.contains("evil")))
        .collect();
    assert_eq!(evil_lines.len(), 2, "the evil user's two requests");
    for line in evil_lines {
        let user = line["user"].as_str().unwrap();
        assert!(!user.contains('\n'), "{user:?}");
        assert_eq!(user, format!("{evil_sub:?}"), "logged with Debug escaping");
    }

    // The audit trail: issued and confirmed, for alice and for the evil user.
    let audit = |event: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["target"] == "kizen_gateway::audit" && l["event"] == event)
            .collect()
    };
    let issued_events = audit("upload_issued");
    assert_eq!(issued_events.len(), 2, "{issued_events:?}");
    assert_eq!(issued_events[0]["s3object_id"], issued.s3object_id.as_str());
    assert_eq!(issued_events[0]["user"], "\"alice\"");
    assert_eq!(issued_events[0]["request_id"], "logs-test-0");
    assert_eq!(
        issued_events[1]["s3object_id"],
        evil_upload.s3object_id.as_str()
    );
    assert_eq!(issued_events[1]["user"], format!("{evil_sub:?}"));
    let confirmed_events = audit("upload_confirmed");
    assert_eq!(confirmed_events.len(), 2, "{confirmed_events:?}");
    assert_eq!(
        confirmed_events[0]["s3object_id"],
        issued.s3object_id.as_str()
    );
    assert_eq!(confirmed_events[0]["request_id"], "logs-test-1");

    // The upstream failures are explained without their bodies.
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("refused the gateway's credentials"))),
        "the credentials failure is logged"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("contained the API key"))),
        "the withheld answer is logged"
    );

    gw.stop().await.unwrap();
}
