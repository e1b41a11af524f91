//! The server-held secrets: the upstream request is constructed (client copies of the secret
//! headers never pass, the injected ones cannot be stripped), upstream answers are filtered
//! (headers allowlisted, secret echoes withheld), and nothing the gateway prints or answers
//! carries a secret.

use kizen_gateway::standin::Endpoint;
use serde_json::{Value, json};

use crate::support::*;

const SECRET_HEADERS: [&str; 3] = ["x-api-key", "x-business-id", "x-user-id"];

/// A raw HTTP/1.1 GET presign with a valid token and `extra` header lines.
fn raw_presign(token: &str, extra: &str) -> Vec<u8> {
    raw_request(
        "GET",
        &format!("{PRESIGN}?{DEFAULT_QUERY}"),
        token,
        extra,
        "",
    )
}

/// A raw HTTP/1.1 confirm of `issued` with `extra` header lines.
fn raw_confirm(token: &str, issued: &Issued, extra: &str) -> Vec<u8> {
    let body = issued.confirmation();
    let head = format!(
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}",
        body.len()
    );
    raw_request("POST", SUCCESS, token, &head, &body)
}

/// A presign answer the gateway accepts, with `extra` merged into its top level.
fn presign_body(s3object_id: &str, extra: Value) -> String {
    let mut body = presign_answer(s3object_id);
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body.to_string()
}

/// Asserts the recorded upstream request carries each injected credential exactly once, with
/// the server-held value, and no client spelling of any of them.
fn assert_constructed_credentials(request: &kizen_gateway::standin::RecordedRequest) {
    assert_eq!(request.header_values("x-api-key"), [API_KEY]);
    assert_eq!(request.header_values("x-business-id"), [BUSINESS_ID]);
    assert_eq!(request.header_values("x-user-id"), [KIZEN_USER_ID]);
    for (name, value) in &request.headers {
        assert!(!value.contains("evil"), "{name}: {value} reached upstream");
        let normalised = name.to_ascii_lowercase().replace(['_', '.'], "-");
        assert!(
            !(SECRET_HEADERS.contains(&normalised.as_str()) && normalised != *name),
            "a client spelling {name:?} of a secret header reached upstream"
        );
    }
}

#[tokio::test]
async fn client_copies_of_the_secret_headers_never_reach_upstream() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let mut extra = String::new();
    for (i, name) in ["API-KEY", "BUSINESS-ID", "USER-ID"].iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        extra.push_str(&format!(
            "X-{name}: evil{i}a\r\nx-{lower}: evil{i}b\r\nX_{under}: evil{i}c\r\nX.{dot}: evil{i}d\r\n",
            under = name.replace('-', "_"),
            dot = name.replace('-', "."),
        ));
    }
    let answer = raw_http(gw.addr, &raw_presign(&token, &extra)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(!answer.contains("evil"), "{answer}");

    let forwarded = gw.forwarded(PRESIGN);
    assert_eq!(forwarded.len(), 1);
    assert_constructed_credentials(&forwarded[0]);

    // The same on the confirmation.
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let issued = Issued {
        s3object_id: body["s3object_id"].as_str().unwrap().to_owned(),
        key: body["fields"]["key"].as_str().unwrap().to_owned(),
        body,
    };
    let answer = raw_http(gw.addr, &raw_confirm(&token, &issued, &extra)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let forwarded = gw.forwarded(SUCCESS);
    assert_eq!(forwarded.len(), 1);
    assert_constructed_credentials(&forwarded[0]);
    assert_eq!(forwarded[0].form()["business_id"], BUSINESS_ID);
}

#[tokio::test]
async fn a_client_connection_header_cannot_strip_the_injected_credentials() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let connection = "Connection: X-API-KEY, X-USER-ID, X-BUSINESS-ID\r\n";
    let answer = raw_http(gw.addr, &raw_presign(&token, connection)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_constructed_credentials(&gw.forwarded(PRESIGN)[0]);

    let issued = gw.issue(&token).await;
    let answer = raw_http(gw.addr, &raw_confirm(&token, &issued, connection)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_constructed_credentials(&gw.forwarded(SUCCESS)[0]);
}

#[tokio::test]
async fn client_identity_and_hop_headers_are_not_passed_upstream() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let extra = "Forwarded: for=6.6.6.6;host=evil.example\r\n\
                 X-Forwarded-For: 6.6.6.6\r\n\
                 X-Forwarded-Host: evil.example\r\n\
                 X-Forwarded-Proto: http\r\n\
                 X-Real-IP: 6.6.6.6\r\n\
                 Cookie: session=evil-cookie\r\n\
                 Proxy-Authorization: Basic ZXZpbDpldmls\r\n\
                 X-Custom: evil-custom\r\n\
                 User-Agent: evil-agent\r\n\
                 Accept-Language: fr-CH\r\n";
    // The raw helper sends `Host: gateway.test`; swap in a hostile one.
    let request = String::from_utf8(raw_presign(&token, extra))
        .unwrap()
        .replace("Host: gateway.test", "Host: evil.example");
    let answer = raw_http(gw.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");

    let forwarded = gw.forwarded(PRESIGN);
    assert_eq!(forwarded.len(), 1);
    let upstream = &forwarded[0];
    let standin_host = gw.standin_url.trim_start_matches("http://");
    assert_eq!(upstream.header_values("host"), [standin_host]);
    for name in [
        "authorization",
        "proxy-authorization",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-custom",
    ] {
        assert!(
            upstream.header_values(name).is_empty(),
            "{name} reached upstream: {:?}",
            upstream.headers
        );
    }
    for (name, value) in &upstream.headers {
        assert!(
            !value.contains(&token),
            "the token reached upstream in {name}"
        );
        assert!(!value.contains("evil"), "{name}: {value} reached upstream");
        assert!(
            !value.contains("6.6.6.6"),
            "{name}: {value} reached upstream"
        );
    }
    assert_constructed_credentials(upstream);
    // Allowlisted by default (upstream.forward_headers).
    assert_eq!(upstream.header_values("accept-language"), ["fr-CH"]);

    // ...unless the client declares it hop-by-hop.
    let answer = raw_http(
        gw.addr,
        &raw_presign(
            &token,
            "Accept-Language: de-DE\r\nConnection: Accept-Language\r\n",
        ),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let forwarded = gw.forwarded(PRESIGN);
    assert_eq!(forwarded.len(), 2);
    assert!(
        forwarded[1].header_values("accept-language").is_empty(),
        "{:?}",
        forwarded[1].headers
    );
}

#[tokio::test]
async fn upstream_response_headers_are_filtered() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let id = uuid::Uuid::new_v4().to_string();
    gw.standin.script(
        Endpoint::Presign,
        respond(
            200,
            &[
                ("set-cookie", "a=b"),
                ("x-api-key", API_KEY),
                ("x-echo", API_KEY),
                ("connection", "x-foo"),
                ("x-foo", "bar"),
                ("location", "http://evil.example/"),
                ("www-authenticate", "Basic realm=kizen"),
                ("server", "kizen-internal"),
                ("x-request-id", "upstream-request-id"),
                ("access-control-allow-origin", "*"),
            ],
            presign_body(&id, json!({})),
        ),
    );
    let response = gw.presign(&token).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    for name in [
        "set-cookie",
        "x-api-key",
        "x-echo",
        "x-foo",
        "location",
        "www-authenticate",
        "server",
        "access-control-allow-origin",
    ] {
        assert!(!headers.contains_key(name), "{name} reached the client");
    }
    assert_ne!(
        headers.get("x-request-id").unwrap(),
        "upstream-request-id",
        "the gateway's request id, not the upstream's"
    );
    for (name, value) in &headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(API_KEY),
            "{name} carries the API key"
        );
    }
    assert!(
        headers.contains_key("content-type"),
        "content-type is allowed"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["s3object_id"], id.as_str());
}

#[tokio::test]
async fn an_allowlisted_response_header_naming_a_secret_is_dropped() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let id = uuid::Uuid::new_v4().to_string();
    let cache_control = format!("private, tag={KIZEN_USER_ID}");
    gw.standin.script(
        Endpoint::Presign,
        respond(
            200,
            &[
                ("content-language", BUSINESS_ID),
                ("cache-control", &cache_control),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ],
            presign_body(&id, json!({})),
        ),
    );
    let response = gw.presign(&token).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert!(!headers.contains_key("content-language"));
    // The upstream's Cache-Control was dropped; the gateway's default stands.
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");
    // The control: an allowlisted header without a secret is kept.
    assert_eq!(
        headers.get("expires").unwrap(),
        "Thu, 01 Jan 2099 00:00:00 GMT"
    );
}

#[tokio::test]
async fn a_presign_answer_echoing_the_api_key_is_withheld_and_not_recorded() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let id = uuid::Uuid::new_v4().to_string();
    gw.standin.script(
        Endpoint::Presign,
        respond(
            200,
            &[("content-type", "application/json")],
            presign_body(&id, json!({ "debug": { "x-api-key": API_KEY } })),
        ),
    );
    let response = gw.presign(&token).await;
    let text = format!("{:?}", response.headers());
    assert!(!text.contains(API_KEY));
    let body = assert_problem(response, 502, "upstream_bad_response").await;
    assert!(!body.to_string().contains(API_KEY));
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);

    // Nothing was recorded: the upload cannot be confirmed.
    let response = gw.confirm_uuid(&token, &id).await;
    assert_problem(response, 404, "upload_not_found").await;
    assert!(gw.forwarded(SUCCESS).is_empty());

    // A 400 that echoes the key is withheld too, not passed through.
    gw.standin.script(
        Endpoint::Presign,
        respond(
            400,
            &[("content-type", "application/json")],
            json!({ "detail": { "x-api-key": format!("{API_KEY} is not valid") } }).to_string(),
        ),
    );
    let body = assert_problem(gw.presign(&token).await, 502, "upstream_bad_response").await;
    assert!(!body.to_string().contains(API_KEY));
}

#[tokio::test]
async fn a_confirm_answer_echoing_the_api_key_is_withheld_and_the_claim_released() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    for status in [200, 400] {
        gw.standin.script(
            Endpoint::Success,
            respond(
                status,
                &[("content-type", "application/json")],
                json!({ "id": issued.s3object_id, "echo": API_KEY }).to_string(),
            ),
        );
        let response = gw.confirm(&token, &issued).await;
        let body = assert_problem(response, 502, "upstream_bad_response").await;
        assert!(!body.to_string().contains(API_KEY), "upstream {status}");
    }
    // Withheld, not consumed: a clean answer later confirms it.
    let response = gw.confirm(&token, &issued).await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 3);
}

/// Every byte of `text` as `%XX`, in upper or lower case hex.
fn percent_every_byte(text: &str, upper: bool) -> String {
    text.bytes()
        .map(|b| match upper {
            true => format!("%{b:02X}"),
            false => format!("%{b:02x}"),
        })
        .collect()
}

/// Every character of `text` as a JSON `\uXXXX` escape, in upper or lower case hex.
fn json_escape_every_char(text: &str, upper: bool) -> String {
    text.encode_utf16()
        .map(|unit| match upper {
            true => format!("\\u{unit:04X}"),
            false => format!("\\u{unit:04x}"),
        })
        .collect()
}

/// The JSON-escaped and percent-encoded spellings of `secret` an upstream answer might carry,
/// each labelled. Every one is valid inside a JSON string.
fn encoded_forms(secret: &str) -> Vec<(&'static str, String)> {
    let form_encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![
        ("JSON \\/ for /", secret.replace('/', "\\/")),
        (
            "JSON \\u escapes, lower hex",
            json_escape_every_char(secret, false),
        ),
        (
            "JSON \\u escapes, upper hex",
            json_escape_every_char(secret, true),
        ),
        (
            "JSON \\u escapes of some characters",
            secret
                .replace('/', "\\u002F")
                .replace('+', "\\u002b")
                .replace(' ', "\\u0020")
                .replace('é', "\\u00E9"),
        ),
        (
            "percent-encoded bytes, upper hex",
            percent_every_byte(secret, true),
        ),
        (
            "percent-encoded bytes, lower hex",
            percent_every_byte(secret, false),
        ),
        ("form-encoded (+ for space)", form_encoded.clone()),
        (
            "URL-encoded, lower hex, %20 for space",
            form_encoded.replace('+', "%20").to_ascii_lowercase(),
        ),
        (
            "a form-encoded URL in JSON with / and % escaped",
            format!(
                "https:\\/\\/kizen.example\\/debug?key={}",
                form_encoded.replace('%', "\\u0025")
            ),
        ),
    ]
}

/// An API key with the characters encoders change: `/`, `+`, a space and a non-ASCII letter.
const AWKWARD_API_KEY: &str = "sk_live/9f2c+4e7a 1b3dé-kizen";

#[tokio::test]
async fn a_presign_answer_echoing_an_encoded_api_key_is_withheld_and_not_recorded() {
    let gw = TestGateway::builder()
        .with_config(&format!(
            "[upstream]\napi_key = \"value:{AWKWARD_API_KEY}\"\n"
        ))
        .start()
        .await;
    let token = gw.token("alice");
    for (i, (label, form)) in encoded_forms(AWKWARD_API_KEY).into_iter().enumerate() {
        let id = uuid::Uuid::new_v4().to_string();
        let body = presign_body(&id, json!({ "debug": "<echo>" })).replace("<echo>", &form);
        serde_json::from_str::<Value>(&body).expect("a JSON answer");
        gw.standin.script(
            Endpoint::Presign,
            respond(200, &[("content-type", "application/json")], body),
        );
        let response = gw.presign(&token).await;
        let body = assert_problem(response, 502, "upstream_bad_response").await;
        let text = body.to_string();
        assert!(!text.contains(&form), "{label}: {text}");
        assert_eq!(gw.forwarded(PRESIGN).len(), i + 1, "{label}");

        // Not recorded: the upload cannot be confirmed.
        let response = gw.confirm_uuid(&token, &id).await;
        assert_problem(response, 404, "upload_not_found").await;
    }
    assert!(gw.forwarded(SUCCESS).is_empty());

    // The control: the same answer without the key passes.
    let id = uuid::Uuid::new_v4().to_string();
    let body = presign_body(
        &id,
        json!({ "debug": "sk_live\\/9f2c+4e7a 1b3d\\u00e9-other" }),
    );
    gw.standin.script(
        Endpoint::Presign,
        respond(200, &[("content-type", "application/json")], body),
    );
    let response = gw.presign(&token).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_confirm_answer_echoing_an_encoded_api_key_is_withheld_and_the_claim_released() {
    let gw = TestGateway::start().await;
    let forms = encoded_forms(API_KEY);
    for (label, form) in &forms {
        // An upload (and a user) per form: each sees only this form's failures.
        let token = gw.token(&format!("user-{}", uuid::Uuid::new_v4()));
        let issued = gw.issue(&token).await;
        for status in [200, 400] {
            let body = json!({ "id": issued.s3object_id, "echo": "<echo>" })
                .to_string()
                .replace("<echo>", form);
            gw.standin.script(
                Endpoint::Success,
                respond(status, &[("content-type", "application/json")], body),
            );
            let response = gw.confirm(&token, &issued).await;
            let body = assert_problem(response, 502, "upstream_bad_response").await;
            assert!(
                !body.to_string().contains(form),
                "{label}, upstream {status}"
            );
        }
        // Withheld, not consumed: a clean answer later confirms it.
        let response = gw.confirm(&token, &issued).await;
        assert_eq!(response.status(), 200, "{label}");
    }
    assert_eq!(gw.forwarded(SUCCESS).len(), forms.len() * 3);
}

#[tokio::test]
async fn an_allowlisted_response_header_naming_an_encoded_secret_is_dropped() {
    let gw = TestGateway::start().await;
    for secret in [API_KEY, BUSINESS_ID, KIZEN_USER_ID] {
        for (label, form) in encoded_forms(secret) {
            let id = uuid::Uuid::new_v4().to_string();
            let cache_control = format!("private, tag=\"{form}\"");
            gw.standin.script(
                Endpoint::Presign,
                respond(
                    200,
                    &[
                        ("content-language", &form),
                        ("cache-control", &cache_control),
                        ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                    ],
                    presign_body(&id, json!({})),
                ),
            );
            // A user per answer: each is recorded as an open upload.
            let response = gw.presign(&gw.token(&format!("user-{id}"))).await;
            assert_eq!(response.status(), 200, "{label}");
            let headers = response.headers();
            assert!(!headers.contains_key("content-language"), "{label}");
            assert_eq!(headers.get("cache-control").unwrap(), "no-store", "{label}");
            assert_eq!(
                headers.get("expires").unwrap(),
                "Thu, 01 Jan 2099 00:00:00 GMT",
                "{label}: a header without a secret is kept"
            );
        }
    }
}

#[tokio::test]
async fn a_presign_answer_naming_the_business_in_its_s3_key_passes_in_any_encoding() {
    // Kizen's S3 keys embed the business id, so the browser sees it in `fields.key` and in URLs:
    // an identifier, not a credential. Bodies are scanned for the API key only.
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let id = uuid::Uuid::new_v4().to_string();
    let key = format!("uploads/{BUSINESS_ID}/{id}/photo.png");
    let escaped_key = key.replace('/', "\\/");
    let encoded_key: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
    let body = format!(
        r#"{{"url": "https:\/\/bucket.example\/upload?prefix={encoded_key}",
            "fields": {{"key": "{escaped_key}", "Content-Type": "image/png", "policy": "p",
                        "x-amz-signature": "s"}},
            "s3object_id": "{id}", "max_file_size": 1024, "expires_at": "2099-01-01T00:00:00Z",
            "business": "{business}", "business_pct": "{business_pct}"}}"#,
        business = json_escape_every_char(BUSINESS_ID, false),
        business_pct = percent_every_byte(BUSINESS_ID, true),
    );
    serde_json::from_str::<Value>(&body).expect("a JSON answer");
    gw.standin.script(
        Endpoint::Presign,
        respond(200, &[("content-type", "application/json")], body.clone()),
    );
    let response = gw.presign(&token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), body, "passed verbatim");

    // And it was recorded under its key: the browser can confirm it.
    gw.standin.script(
        Endpoint::Success,
        respond(
            200,
            &[("content-type", "application/json")],
            json!({ "id": id, "key": key }).to_string(),
        ),
    );
    let response = gw
        .confirm_form(
            &token,
            &[
                ("uuid", &id),
                ("key", &key),
                ("name", "photo.png"),
                ("etag", "abc"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
}

/// Everything the client can see of a response: status line, headers, body.
async fn dump(label: &str, response: reqwest::Response) -> (String, String) {
    let mut text = format!("{label}: {}\n", response.status());
    for (name, value) in response.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push('\n');
    text.push_str(&response.text().await.unwrap());
    (label.to_owned(), text)
}

#[tokio::test]
async fn no_answer_of_a_full_flow_carries_a_secret() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let mut seen = Vec::new();

    // Success path: presign, confirm, replayed confirm.
    let response = gw.presign(&token).await;
    assert_eq!(response.status(), 200);
    let (label, text) = dump("presign", response).await;
    let body: Value = serde_json::from_str(text.split_once("\n\n").unwrap().1).unwrap();
    let issued = Issued {
        s3object_id: body["s3object_id"].as_str().unwrap().to_owned(),
        key: body["fields"]["key"].as_str().unwrap().to_owned(),
        body,
    };
    seen.push((label, text));
    let response = gw.confirm(&token, &issued).await;
    assert_eq!(response.status(), 200);
    seen.push(dump("confirm", response).await);
    let response = gw.confirm(&token, &issued).await;
    assert_eq!(response.status(), 200);
    seen.push(dump("confirm replayed", response).await);

    // The gateway's own refusals.
    let url = |path: &str| format!("{}{path}", gw.url);
    let client = &gw.client;
    seen.push(dump("no token", client.get(url(PRESIGN)).send().await.unwrap()).await);
    seen.push(
        dump(
            "bad token",
            client
                .get(url(PRESIGN))
                .bearer_auth("a.b.c")
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    seen.push(
        dump(
            "invalid query",
            gw.presign_query(&token, "contenttype=png&filename=..&source=nope")
                .await,
        )
        .await,
    );
    seen.push(
        dump(
            "unknown route",
            client
                .get(url("/admin"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    seen.push(
        dump(
            "wrong method",
            client
                .delete(url(PRESIGN))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    let other = gw.issue(&token).await;
    seen.push(("presign 2".to_owned(), format!("{}", other.body).to_owned()));
    seen.push(
        dump(
            "key mismatch",
            gw.confirm_form(
                &token,
                &[
                    ("uuid", &other.s3object_id),
                    ("key", "uploads/someone-else"),
                    ("name", "photo.png"),
                    ("etag", "abc"),
                ],
            )
            .await,
        )
        .await,
    );
    seen.push(
        dump(
            "unknown upload",
            gw.confirm_form(
                &token,
                &[
                    ("uuid", &uuid::Uuid::new_v4().to_string()),
                    ("key", "k"),
                    ("name", "photo.png"),
                    ("etag", "abc"),
                ],
            )
            .await,
        )
        .await,
    );

    // Upstream failures and refusals.
    for (label, status, body) in [
        (
            "upstream 400",
            400,
            json!({"detail": {"filename": "bad"}}).to_string(),
        ),
        (
            "upstream 403",
            403,
            json!({"detail": "You do not have permission to perform this action."}).to_string(),
        ),
        ("upstream 500", 500, "boom".to_owned()),
        (
            "upstream echo",
            200,
            presign_body(&uuid::Uuid::new_v4().to_string(), json!({ "k": API_KEY })),
        ),
    ] {
        gw.standin
            .script(Endpoint::Presign, respond(status, &[], body));
        seen.push(dump(label, gw.presign(&token).await).await);
    }
    gw.standin
        .script(Endpoint::Success, respond(403, &[], "{}".to_owned()));
    seen.push(dump("confirm upstream 403", gw.confirm(&token, &other).await).await);

    assert!(seen.len() >= 15);
    for (label, text) in &seen {
        assert!(
            !text.contains(API_KEY),
            "{label} carries the API key:\n{text}"
        );
        assert!(
            !text.contains(KIZEN_USER_ID),
            "{label} carries the Kizen user id:\n{text}"
        );
        // The stand-in, like Kizen, names the business in its own object keys
        // (`uploads/<business>/<uuid>/<file>`): that is upstream data the client needs to upload.
        // Anywhere else, the business id must not appear.
        let outside_keys = text
            .replace(&issued.key, "<key>")
            .replace(&other.key, "<key>");
        assert!(
            !outside_keys.contains(BUSINESS_ID),
            "{label} carries the business id outside an object key:\n{text}"
        );
    }
}

#[test]
fn debug_output_of_the_configuration_never_shows_a_secret() {
    let secrets = [
        "dbg-api-key-secret-1",
        "dbg-business-secret-2",
        "dbg-user-secret-3",
        "dbg-hs256-secret-4-0123456789abcdef0123456789",
    ];
    let layer = format!(
        r#"
[upstream]
api_key = "value:{}"
business_id = "value:{}"
user_id = "value:{}"

[[auth.keys]]
algorithm = "HS256"
secret = "value:{}"
"#,
        secrets[0], secrets[1], secrets[2], secrets[3]
    );
    let config = kizen_gateway::Config::from_toml_layers(&[&layer]);
    assert!(config.is_ok(), "{config:?}");
    for text in [format!("{config:?}"), format!("{config:#?}")] {
        assert!(text.contains("REDACTED"), "{text}");
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    let source = kizen_gateway::secrets::SecretSource::parse("value:xyz-secret");
    assert!(source.is_ok());
    let text = format!("{source:?}");
    assert!(!text.contains("xyz-secret"), "{text}");
    let loaded = source.unwrap().load_header_value().unwrap();
    assert_eq!(loaded.expose(), "xyz-secret");
    assert!(!format!("{loaded:?}").contains("xyz-secret"));
}

#[test]
fn a_secret_written_without_a_source_prefix_is_not_echoed_in_the_error() {
    let layer = r#"
[upstream]
api_key = "dbg-bare-secret-5"
business_id = "value:b"
user_id = "value:u"

[[auth.keys]]
algorithm = "HS256"
secret = "value:dbg-hs256-secret-4-0123456789abcdef0123456789"
"#;
    let error = kizen_gateway::Config::from_toml_layers(&[layer]).unwrap_err();
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(
            text.contains("api_key"),
            "the error names the option: {text}"
        );
        assert!(!text.contains("dbg-bare-secret-5"), "{text}");
    }
}

#[tokio::test]
async fn with_telemetry_off_the_clients_trace_context_goes_upstream_unchanged() {
    let gw = TestGateway::start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = gw
        .presign_request(&gw.token("alice"), DEFAULT_QUERY)
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = &gw.forwarded(PRESIGN)[0];
    assert_eq!(forwarded.header_values("traceparent"), [traceparent]);
    assert_eq!(forwarded.header_values("tracestate"), ["vendor=1"]);

    // A malformed one is not passed on.
    let response = gw
        .presign_request(&gw.token("alice"), DEFAULT_QUERY)
        .header("traceparent", "not-a-traceparent")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        gw.forwarded(PRESIGN)[1]
            .header_values("traceparent")
            .is_empty()
    );
}
