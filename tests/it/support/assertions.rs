//! Assertions on the gateway's answers, and its metrics.

use serde_json::Value;

use super::gateway::{PRESIGN, TestGateway};

/// Asserts an RFC 9457 problem with this status and code; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "content type"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "problem code in {body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a human detail"
    );
    body
}

/// The challenge of every 401.
pub const CHALLENGE: &str = "Bearer error=\"invalid_token\"";

/// Asserts a 401 with the Bearer challenge and a problem body whose code is one of `codes`, and
/// that neither the body nor any header echoes `token` or one of its parts. Returns the body.
pub async fn assert_unauthorized(
    response: reqwest::Response,
    codes: &[&str],
    token: &str,
) -> Value {
    assert_eq!(response.status().as_u16(), 401, "status");
    let challenges: Vec<&str> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(challenges, [CHALLENGE], "WWW-Authenticate challenge");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "content type"
    );
    // Parts short enough to occur in any text by chance ("a", "b") say nothing: skip them.
    let secrets: Vec<&str> = std::iter::once(token)
        .chain(token.split('.'))
        .filter(|part| part.len() >= 8)
        .collect();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        for secret in &secrets {
            assert!(!value.contains(secret), "header {name} echoes the token");
        }
    }
    let text = response.text().await.unwrap();
    for secret in &secrets {
        assert!(!text.contains(secret), "the body echoes the token: {text}");
    }
    let body: Value = serde_json::from_str(&text).expect("a JSON problem body");
    let code = body["code"].as_str().unwrap_or_default();
    assert!(
        codes.contains(&code),
        "code {code:?} not one of {codes:?} in {body}"
    );
    assert_eq!(body["status"], 401);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a human detail"
    );
    body
}

/// Presigns with `Authorization: Bearer <token>` and asserts the 401 `code`, with nothing more
/// forwarded upstream.
pub async fn rejected(gw: &TestGateway, token: &str, code: &str) {
    rejected_any(gw, token, &[code]).await;
}

pub async fn rejected_any(gw: &TestGateway, token: &str, codes: &[&str]) {
    let before = gw.forwarded(PRESIGN).len();
    let response = gw.presign(token).await;
    assert_unauthorized(response, codes, token).await;
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        before,
        "a rejected request was forwarded"
    );
}

/// Presigns with `token`, asserts the 200 and exactly one more forwarded presign.
pub async fn accepted(gw: &TestGateway, token: &str) {
    let before = gw.forwarded(PRESIGN).len();
    let response = gw.presign(token).await;
    assert_eq!(response.status(), 200, "token refused");
    let body: Value = response.json().await.unwrap();
    assert!(body["s3object_id"].is_string(), "an issued upload: {body}");
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        before + 1,
        "one presign forwarded"
    );
}

/// One sample of the admin listener's `/metrics` (the gateway needs `with_admin`), e.g.
/// `kizen_gateway_token_cache_hits_total`; 0 when absent.
pub async fn metric(gw: &TestGateway, series: &str) -> f64 {
    let admin = gw.admin_url.as_ref().expect("a gateway started with_admin");
    let text = gw
        .client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sample(&text, series)
}

/// The value of one sample line of a metrics text, e.g. `kizen_gateway_uploads_issued_total`;
/// 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

pub const TOKEN_CACHE_HITS: &str = "kizen_gateway_token_cache_hits_total";
pub const TOKEN_CACHE_MISSES: &str = "kizen_gateway_token_cache_misses_total";
