//! Upstream failures, in a fixed vocabulary: 502 `upstream_error` (5xx), 504 `upstream_timeout`,
//! 502 `upstream_bad_response` (redirects, unusable or oversized answers), 502
//! `upstream_unavailable` (the gateway's credentials refused), 502 `upstream_unreachable`.
//! A 400 describing the client's input passes through. A failed confirmation releases its claim.

use std::{sync::Arc, time::Duration};

use kizen_gateway::{
    clock::Clock,
    standin::{Endpoint, Scripted},
    store::{IssuedUpload, MemoryStore, StoreLimits, UploadStore},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::support::*;

#[tokio::test]
async fn upstream_5xx_is_502_upstream_error_on_both_routes() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    for status in [500, 502, 503, 504] {
        let id = uuid::Uuid::new_v4().to_string();
        // A usable body does not make a 5xx a success.
        gw.standin.script(
            Endpoint::Presign,
            respond(
                status,
                &[("content-type", "application/json")],
                presign_answer(&id).to_string(),
            ),
        );
        assert_problem(gw.presign(&token).await, 502, "upstream_error").await;
        assert_problem(gw.confirm_uuid(&token, &id).await, 404, "upload_not_found").await;
    }

    let issued = gw.issue(&token).await;
    for status in [500, 503] {
        gw.standin
            .script(Endpoint::Success, respond(status, &[], "Internal Error"));
        assert_problem(gw.confirm(&token, &issued).await, 502, "upstream_error").await;
    }
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
}

#[tokio::test]
async fn a_confirm_after_an_upstream_5xx_can_be_retried() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    gw.standin
        .script(Endpoint::Success, respond(503, &[], "unavailable"));
    assert_problem(gw.confirm(&token, &issued).await, 502, "upstream_error").await;

    let response = gw.confirm(&token, &issued).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], issued.s3object_id.as_str());
    assert_eq!(gw.forwarded(SUCCESS).len(), 2, "one failed call, one retry");
}

#[tokio::test]
async fn a_hanging_upstream_is_504_upstream_timeout_and_releases_the_claim() {
    let gw = TestGateway::builder()
        .with_config("[upstream]\nrequest_timeout = \"300ms\"")
        .start()
        .await;
    let token = gw.token("alice");

    gw.standin.script(Endpoint::Presign, Scripted::Hang);
    let response = tokio::time::timeout(Duration::from_secs(5), gw.presign(&token))
        .await
        .expect("the gateway gives up on its own");
    assert_problem(response, 504, "upstream_timeout").await;

    let issued = gw.issue(&token).await;
    gw.standin.script(Endpoint::Success, Scripted::Hang);
    let response = tokio::time::timeout(Duration::from_secs(5), gw.confirm(&token, &issued))
        .await
        .expect("the gateway gives up on its own");
    assert_problem(response, 504, "upstream_timeout").await;

    // The upstream has recovered: the claim was released, the retry goes through.
    let response = gw.confirm(&token, &issued).await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
}

#[tokio::test]
async fn an_upstream_redirect_is_not_followed() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    // Redirect to the stand-in itself: a followed redirect would show up as a second request.
    let location = format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.standin_url);

    gw.standin.script(
        Endpoint::Presign,
        respond(302, &[("location", &location)], ""),
    );
    let response = gw.presign(&token).await;
    assert!(response.headers().get("location").is_none());
    let text = format!("{:?}", response.headers());
    assert!(!text.contains(&location));
    let body = assert_problem(response, 502, "upstream_bad_response").await;
    assert!(!body.to_string().contains(&gw.standin_url));
    assert_eq!(gw.standin.requests().len(), 1, "the redirect was followed");

    let issued = gw.issue(&token).await;
    for status in [302, 307] {
        gw.standin.script(
            Endpoint::Success,
            respond(status, &[("location", &location)], ""),
        );
        let response = gw.confirm(&token, &issued).await;
        assert!(response.headers().get("location").is_none());
        assert_problem(response, 502, "upstream_bad_response").await;
    }
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        2,
        "the redirects were followed"
    );
    // Released each time: still confirmable.
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
}

#[tokio::test]
async fn unusable_presign_answers_are_502_and_nothing_is_recorded() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let id = || uuid::Uuid::new_v4().to_string();

    let mut cases: Vec<(&str, String, String)> = Vec::new();
    let u = id();
    cases.push(("not JSON", u.clone(), format!("<html>{u}</html>")));
    let u = id();
    let mut body = presign_answer(&u);
    body["s3object_id"] = json!("not-a-uuid");
    cases.push(("s3object_id not a UUID", u, body.to_string()));
    let u = id();
    let mut body = presign_answer(&u);
    body["s3object_id"] = json!(12345);
    cases.push(("s3object_id not a string", u, body.to_string()));
    let u = id();
    let mut body = presign_answer(&u);
    body["fields"]["key"] = json!("");
    cases.push(("empty fields.key", u, body.to_string()));
    let u = id();
    let mut body = presign_answer(&u);
    body["fields"].as_object_mut().unwrap().remove("key");
    cases.push(("missing fields.key", u, body.to_string()));
    let u = id();
    let mut body = presign_answer(&u);
    body.as_object_mut().unwrap().remove("expires_at");
    cases.push(("missing expires_at", u, body.to_string()));
    let u = id();
    let mut body = presign_answer(&u);
    body["expires_at"] = json!("tomorrow");
    cases.push(("expires_at not a date", u, body.to_string()));
    let u = id();
    let mut body = presign_answer(&u);
    body["expires_at"] = json!(4102444800u64);
    cases.push(("expires_at a number", u, body.to_string()));
    let u = id();
    cases.push(("empty body", u, String::new()));

    for (case, uuid, body) in &cases {
        gw.standin.script(
            Endpoint::Presign,
            respond(200, &[("content-type", "application/json")], body.clone()),
        );
        let response = gw.presign(&token).await;
        assert_eq!(response.status(), 502, "{case}");
        assert_problem(response, 502, "upstream_bad_response").await;
        let response = gw.confirm_uuid(&token, uuid).await;
        assert_eq!(response.status(), 404, "{case}: recorded");
        assert_problem(response, 404, "upload_not_found").await;
    }
    assert!(gw.forwarded(SUCCESS).is_empty());
    assert_eq!(gw.forwarded(PRESIGN).len(), cases.len());

    // The control: the same shape, well-formed, is recorded and confirmable.
    let u = id();
    gw.standin.script(
        Endpoint::Presign,
        respond(
            200,
            &[("content-type", "application/json")],
            presign_answer(&u).to_string(),
        ),
    );
    assert_eq!(gw.presign(&token).await.status(), 200);
    // Recorded: the gateway forwards the confirmation (the stand-in never issued it: 404 there).
    let response = gw.confirm_uuid(&token, &u).await;
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
    assert_ne!(response.status(), 502);
}

#[tokio::test]
async fn an_upstream_answer_over_max_response_bytes_is_502() {
    let gw = TestGateway::builder()
        .with_config("[upstream]\nmax_response_bytes = 1000")
        .start()
        .await;
    let token = gw.token("alice");

    // Answers under the cap go through (the stand-in's normal answers are a few hundred bytes).
    let issued = gw.issue(&token).await;

    let u = uuid::Uuid::new_v4().to_string();
    let mut body = presign_answer(&u);
    body["padding"] = json!("x".repeat(2000));
    gw.standin.script(
        Endpoint::Presign,
        respond(
            200,
            &[("content-type", "application/json")],
            body.to_string(),
        ),
    );
    assert_problem(gw.presign(&token).await, 502, "upstream_bad_response").await;
    assert_problem(gw.confirm_uuid(&token, &u).await, 404, "upload_not_found").await;

    // An oversized error answer is refused too, not passed through.
    gw.standin.script(
        Endpoint::Presign,
        respond(
            400,
            &[("content-type", "application/json")],
            json!({"detail": {"filename": "x".repeat(2000)}}).to_string(),
        ),
    );
    assert_problem(gw.presign(&token).await, 502, "upstream_bad_response").await;

    gw.standin.script(
        Endpoint::Success,
        respond(
            200,
            &[("content-type", "application/json")],
            json!({"id": issued.s3object_id, "padding": "x".repeat(2000)}).to_string(),
        ),
    );
    assert_problem(
        gw.confirm(&token, &issued).await,
        502,
        "upstream_bad_response",
    )
    .await;
    // Not consumed: a normal answer later confirms it.
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
}

/// A minimal upstream that answers every request with `body` in 100-byte chunks and no
/// Content-Length, so that only the streaming cap can catch an oversized answer.
async fn chunked_upstream(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                    .to_vec();
                for chunk in body.as_bytes().chunks(100) {
                    answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    answer.extend_from_slice(chunk);
                    answer.extend_from_slice(b"\r\n");
                }
                answer.extend_from_slice(b"0\r\n\r\n");
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_chunked_upstream_answer_over_max_response_bytes_is_502() {
    let gateway = |base_url: String| {
        TestGateway::builder()
            .with_config(&format!(
                "[upstream]\nmax_response_bytes = 1000\nbase_url = \"{base_url}\""
            ))
            .start()
    };

    // The control: a small chunked answer is read and accepted.
    let small = uuid::Uuid::new_v4().to_string();
    let gw = gateway(chunked_upstream(presign_answer(&small).to_string()).await).await;
    let response = gw.presign(&gw.token("alice")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["s3object_id"], small.as_str());

    // The same answer padded past the cap, without Content-Length.
    let large = uuid::Uuid::new_v4().to_string();
    let mut body = presign_answer(&large);
    body["padding"] = json!("x".repeat(2000));
    let gw = gateway(chunked_upstream(body.to_string()).await).await;
    let token = gw.token("alice");
    assert_problem(gw.presign(&token).await, 502, "upstream_bad_response").await;
    assert_problem(
        gw.confirm_uuid(&token, &large).await,
        404,
        "upload_not_found",
    )
    .await;
}

#[tokio::test]
async fn refused_gateway_credentials_are_502_upstream_unavailable_without_saying_why() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    let check = |body: &Value| {
        let detail = body["detail"].as_str().unwrap().to_ascii_lowercase();
        for word in [
            "credential",
            "api key",
            "api_key",
            "x-api-key",
            "key",
            "401",
            "403",
        ] {
            assert!(!detail.contains(word), "detail mentions {word:?}: {detail}");
        }
        assert!(!body.to_string().contains(API_KEY));
    };
    for status in [401, 403] {
        let refusal = json!({"detail": "Invalid API key."}).to_string();
        gw.standin.script(
            Endpoint::Presign,
            respond(status, &[("www-authenticate", "Api-Key")], refusal.clone()),
        );
        let response = gw.presign(&token).await;
        assert!(response.headers().get("www-authenticate").is_none());
        check(&assert_problem(response, 502, "upstream_unavailable").await);

        gw.standin
            .script(Endpoint::Success, respond(status, &[], refusal));
        let response = gw.confirm(&token, &issued).await;
        check(&assert_problem(response, 502, "upstream_unavailable").await);
    }
    // Real refusals too, not only scripted ones: a gateway with a wrong key.
    let wrong = TestGateway::builder()
        .with_config("[upstream]\napi_key = \"value:not-the-right-key\"")
        .start()
        .await;
    let response = wrong.presign(&wrong.token("alice")).await;
    check(&assert_problem(response, 502, "upstream_unavailable").await);
}

#[tokio::test]
async fn an_upstream_400_passes_through_and_a_confirm_can_be_retried() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let detail = json!({"detail": {"filename": "bad"}});

    gw.standin.script(
        Endpoint::Presign,
        respond(
            400,
            &[("content-type", "application/json")],
            detail.to_string(),
        ),
    );
    let response = gw.presign(&token).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(response.json::<Value>().await.unwrap(), detail);

    let issued = gw.issue(&token).await;
    gw.standin.script(
        Endpoint::Success,
        respond(
            400,
            &[("content-type", "application/json")],
            detail.to_string(),
        ),
    );
    let response = gw.confirm(&token, &issued).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap(), detail);

    // The claim was released: the upload can still be confirmed.
    let response = gw.confirm(&token, &issued).await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_upstream_unreachable_promptly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);

    let store = Arc::new(MemoryStore::new(StoreLimits {
        max_uploads: 100,
        max_uploads_per_user: 50,
        remember_expired: Duration::from_secs(3600),
    }));
    let gw = TestGateway::builder()
        .with_config(&format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:{port}\""
        ))
        .with_store(store.clone())
        .start()
        .await;
    let token = gw.token("alice");

    let response = tokio::time::timeout(Duration::from_secs(3), gw.presign(&token))
        .await
        .expect("refused connections fail fast");
    assert_problem(response, 502, "upstream_unreachable").await;

    // Confirm an upload recorded directly in the store (no presign can succeed here).
    let now = gw.clock.now();
    let id = uuid::Uuid::new_v4();
    let key = format!("uploads/{id}/photo.png");
    store
        .record(
            &IssuedUpload {
                s3object_id: id,
                key: key.clone(),
                user: "alice".into(),
                source: "field_value".into(),
                issued_at: now,
                window_end: now + Duration::from_secs(3600),
            },
            10,
            now,
        )
        .await
        .unwrap();
    let issued = Issued {
        s3object_id: id.to_string(),
        key,
        body: Value::Null,
    };
    for _ in 0..2 {
        // Twice: the first failure released the claim (a held claim would answer 409).
        let response = tokio::time::timeout(Duration::from_secs(3), gw.confirm(&token, &issued))
            .await
            .expect("refused connections fail fast");
        assert_problem(response, 502, "upstream_unreachable").await;
    }
    assert!(gw.standin.requests().is_empty());
}
