//! The binary as a user runs it: dev mode's printed steps work as printed, and SIGTERM drains
//! in-flight requests before a clean exit.

use std::{process::Stdio, time::Duration};

use kizen_gateway::standin::{Endpoint, Scripted};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_kizen-gateway");

/// Reads the child's stdout line by line until `done` says stop; returns the lines. The rest
/// of its output keeps being read in the background, so that the child never writes into a
/// closed pipe.
async fn read_until(child: &mut Child, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let stop = done(&line);
            seen.push(line);
            if stop {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the binary printed what was expected");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    seen
}

/// The real binary, serving, with its stdout drained.
struct Gateway {
    child: Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Gateway {
    /// Starts the binary with the test secrets, `upstream` as Kizen, and `extra` TOML (which
    /// must configure a key); listeners on free ports.
    async fn start(
        dir: &std::path::Path,
        upstream: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"{upstream}\"\napi_key = \"value:{API_KEY}\"\nbusiness_id = \"value:{BUSINESS_ID}\"\nuser_id = \"value:{KIZEN_USER_ID}\"\n{extra}"
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = read_until(&mut child, |line| line.contains("kizen-gateway listening")).await;
        let field = |name: &str| -> std::net::SocketAddr {
            lines
                .last()
                .and_then(|l| l.split(&format!(" {name}=")).nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("the listening line names the bound {name}"))
        };
        Self {
            addr: field("addr"),
            admin: field("admin"),
            child,
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

fn hs256_key(secret: &str) -> String {
    format!("[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\n")
}

#[tokio::test]
async fn dev_mode_prints_steps_that_work_as_printed() {
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--standin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = read_until(&mut child, |line| line == kizen_gateway::dev::STEPS_END).await;
    let output = lines.join("\n");
    assert!(output.contains("DEV MODE"), "clearly labelled:\n{output}");
    let begin = lines
        .iter()
        .position(|l| l == kizen_gateway::dev::STEPS_BEGIN)
        .expect("steps block");
    let script = lines[begin..].join("\n");

    let dir = temp_dir("dev");
    std::fs::write(dir.join("steps.sh"), &script).unwrap();
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "steps.sh"])
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "steps failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Step 3's answer: the stored object, with the size of the file uploaded in step 2.
    let confirmed: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(confirmed["size_bytes"], 13, "hello, kizen\\n is 13 bytes");
    assert_eq!(confirmed["name"], "hello.txt");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    // The upstream stand-in runs in this process; the gateway is the real binary.
    let gw = TestGateway::start().await;
    gw.standin.script(
        Endpoint::Presign,
        Scripted::Delay(Duration::from_millis(800)),
    );
    let dir = temp_dir("sigterm");
    let mut gateway = Gateway::start(
        &dir,
        &gw.standin_url,
        &hs256_key(&format!("value:{HS256_SECRET}")),
        &[("KIZEN_GATEWAY_SERVER__SHUTDOWN_GRACE", "20s")],
    )
    .await;
    let addr = gateway.addr;
    let readyz = format!("http://{}/readyz", gateway.admin);
    assert_eq!(
        gw.client.get(&readyz).send().await.unwrap().status(),
        200,
        "ready before SIGTERM"
    );

    let token = gw.token("alice");
    let in_flight = tokio::spawn({
        let client = gw.client.clone();
        async move {
            client
                .get(format!("http://{addr}{PRESIGN}?{DEFAULT_QUERY}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    gw.standin.wait_for_requests(PRESIGN, 1).await;

    gateway.signal("-TERM");

    // Readiness turns false first; the admin listener keeps answering while the drain lasts.
    let mut not_ready = false;
    for _ in 0..100 {
        if gw
            .client
            .get(&readyz)
            .send()
            .await
            .map(|r| r.status() == 503)
            .unwrap_or(false)
        {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(not_ready, "readiness is false while draining");

    // New connections are refused once the listener is closed, while the request is in flight.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener closes on SIGTERM");
    assert!(
        !in_flight.is_finished(),
        "the slow request was still in flight when the listener closed"
    );

    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request completed"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), gateway.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit code 0, got {status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sighup_reloads_key_files_at_once() {
    let gw = TestGateway::start().await; // its stand-in is the upstream
    let dir = temp_dir("sighup");
    let secret_file = dir.join("jwt-secret");
    let new_secret = "after-sighup-0123456789abcdef0123456789abcdef";
    std::fs::write(&secret_file, HS256_SECRET).unwrap();
    let extra = format!(
        "[reload]\ninterval = \"1h\"\n{}",
        hs256_key(&format!("file:{}", secret_file.display()))
    );
    let mut gateway = Gateway::start(&dir, &gw.standin_url, &extra, &[]).await;
    let addr = gateway.addr;
    let new_token = crate::support::sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(new_secret.as_bytes()),
        None,
        &serde_json::json!({ "sub": "alice", "iat": now(), "exp": now() + 3600 }),
    );
    let presign = |token: String| {
        let client = gw.client.clone();
        async move {
            client
                .get(format!("http://{addr}{PRESIGN}?{DEFAULT_QUERY}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(presign(gw.token("alice")).await, 200);
    std::fs::write(&secret_file, new_secret).unwrap();
    // The interval is an hour: only the signal can make the new key count.
    assert_eq!(presign(new_token.clone()).await, 401);
    gateway.signal("-HUP");
    let mut accepted = false;
    for _ in 0..200 {
        if presign(new_token.clone()).await == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(accepted, "SIGHUP put the new key in force");
    assert_eq!(
        presign(gw.token("alice")).await,
        401,
        "the old key is retired"
    );
    gateway.signal("-TERM");
    assert!(gateway.child.wait().await.unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A stand-in OTLP/HTTP collector: records the bodies posted to /v1/traces.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use axum::{Router, body::Bytes, routing::post};
    let received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
    let sink = received.clone();
    let router = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn opentelemetry_traces_are_exported_and_the_trace_continues_upstream() {
    let gw = TestGateway::start().await; // its stand-in is the upstream
    let (collector_url, received) = collector().await;
    let dir = temp_dir("otel");
    let extra = format!(
        "[telemetry]\notlp_traces = true\n{}",
        hs256_key(&format!("value:{HS256_SECRET}"))
    );
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str())];
    let mut gateway = Gateway::start(&dir, &gw.standin_url, &extra, &env).await;
    let addr = gateway.addr;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = gw
        .client
        .get(format!("http://{addr}{PRESIGN}?{DEFAULT_QUERY}"))
        .bearer_auth(gw.token("alice"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .header("x-request-id", "otel-request-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Upstream sees the same trace, with the gateway's own span as the parent.
    let forwarded = gw.forwarded(PRESIGN);
    let traceparent = forwarded[0].header_values("traceparent");
    assert_eq!(traceparent.len(), 1);
    let parts: Vec<&str> = traceparent[0].split('-').collect();
    assert_eq!(parts[1], trace_id);
    assert_ne!(
        parts[2], client_span,
        "the gateway's upstream span is the parent"
    );

    // On shutdown the batch is flushed to the collector.
    gateway.signal("-TERM");
    assert!(gateway.child.wait().await.unwrap().success());
    let bodies = received.lock().unwrap().concat();
    let raw_trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        contains(&bodies, &raw_trace_id),
        "spans of the client's trace were exported"
    );
    assert!(
        contains(&bodies, b"otel-request-7"),
        "the request id is a span attribute"
    );
    assert!(
        contains(&bodies, b"kizen presign"),
        "the upstream call is a span"
    );
    assert!(
        !contains(&bodies, API_KEY.as_bytes()),
        "no secret in any span"
    );
    let _ = std::fs::remove_dir_all(dir);
}
