//! The admin listener: health, readiness transitions, and metrics that move with real traffic.

use serde_json::Value;

use crate::support::{redis::RedisServer, *};

async fn get(gw: &TestGateway, path: &str) -> reqwest::Response {
    let admin = gw.admin_url.as_ref().expect("started with_admin");
    gw.client
        .get(format!("{admin}{path}"))
        .send()
        .await
        .unwrap()
}

async fn readiness(gw: &TestGateway) -> (u16, Value) {
    let response = get(gw, "/readyz").await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn health_and_readiness_of_a_healthy_gateway() {
    let gw = TestGateway::builder().with_admin().start().await;
    let health = get(&gw, "/healthz").await;
    assert_eq!(health.status(), 200);
    let (status, body) = readiness(&gw).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["keys_loaded"], true);
    // The admin listener is apart: the public one does not serve it.
    let public = gw
        .client
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let mut redis = RedisServer::start();
    let gw = TestGateway::builder()
        .with_admin()
        .with_redis(
            &[redis.url()],
            false,
            &format!("admin-{}", uuid::Uuid::new_v4()),
        )
        .start()
        .await;
    assert_eq!(readiness(&gw).await.0, 200);
    redis.stop();
    let (status, body) = readiness(&gw).await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["store_reachable"], false);
    assert_eq!(
        get(&gw, "/healthz").await.status(),
        200,
        "alive, though not ready"
    );
    redis.restart();
    assert_eq!(readiness(&gw).await.0, 200, "ready again without a restart");
}

#[tokio::test]
async fn readiness_turns_false_when_draining() {
    let mut gw = TestGateway::builder().with_admin().start().await;
    gw.standin.script(
        kizen_gateway::standin::Endpoint::Presign,
        kizen_gateway::standin::Scripted::Delay(std::time::Duration::from_millis(500)),
    );
    let token = gw.token("alice");
    let in_flight = {
        let request = gw.presign_request(&token, DEFAULT_QUERY);
        tokio::spawn(async move { request.send().await.unwrap().status() })
    };
    gw.standin.wait_for_requests(PRESIGN, 1).await;
    gw.begin_shutdown();
    let mut drained_readiness = None;
    for _ in 0..100 {
        let (status, body) = readiness(&gw).await;
        if status == 503 {
            drained_readiness = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let body = drained_readiness.expect("readiness turns false on shutdown");
    assert_eq!(body["checks"]["draining"], true);
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request still completes"
    );
    gw.join().await.unwrap();
}

#[tokio::test]
async fn metrics_move_with_real_requests() {
    let gw = TestGateway::builder()
        .with_admin()
        .with_rate_limit(2, "1h")
        .start()
        .await;
    let before = get(&gw, "/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&before, "kizen_gateway_uploads_issued_total"),
        0.0,
        "{before}"
    );
    assert!(before.contains("# TYPE kizen_gateway_uploads_issued counter"));

    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
    assert_eq!(gw.presign(&token).await.status(), 200);
    assert_eq!(gw.presign(&token).await.status(), 429);
    assert_eq!(gw.presign("not-a-token").await.status(), 401);
    let bad = gw.confirm(&gw.token("bob"), &issued).await;
    assert_eq!(bad.status(), 404);

    let response = get(&gw, "/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert_eq!(sample(&text, "kizen_gateway_uploads_issued_total"), 2.0);
    assert_eq!(sample(&text, "kizen_gateway_uploads_confirmed_total"), 1.0);
    assert_eq!(
        sample(&text, r#"kizen_gateway_rate_limited_total{tier="default"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"kizen_gateway_auth_failures_total{reason="token_malformed"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"kizen_gateway_uploads_rejected_total{reason="upload_not_found"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"kizen_gateway_requests_total{route="presign",status="200",outcome="issued"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"kizen_gateway_request_duration_seconds_count{route="confirm"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"kizen_gateway_upstream_duration_seconds_count{route="presign"}"#
        ),
        2.0
    );
    assert_eq!(sample(&text, "kizen_gateway_store_entries"), 2.0);
    // Set on the scrape: at least the task serving this very connection is alive.
    assert!(sample(&text, "kizen_gateway_runtime_alive_tasks") >= 1.0);
    // No user id in any label.
    assert!(!text.contains("alice") && !text.contains("bob"));
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let gw = TestGateway::builder().with_admin().start().await;
    let response = get(&gw, "/openapi.json").await;
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.unwrap();
    let in_repo: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/openapi/kizen-gateway.openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, in_repo);
}
