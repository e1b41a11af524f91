//! CORS: a configured origin is allowed on every answer (errors included, so that a browser
//! script can read the problem and the rate-limit headers), preflights are answered by the
//! gateway itself, other origins get nothing, and no origins configured means no CORS at all.

use reqwest::{Method, RequestBuilder, Response};

use crate::support::*;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";

fn cors_config() -> String {
    format!("[cors]\nallowed_origins = [\"{APP}\"]\n")
}

fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The comma-separated, lowercased entries of every `name` header line.
fn header_list(response: &Response, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

fn access_control_headers(response: &Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

fn presign_from(
    gw: &TestGateway,
    origin: &str,
    token: Option<&str>,
    query: &str,
) -> RequestBuilder {
    let request = gw
        .client
        .get(format!("{}{PRESIGN}?{query}", gw.url))
        .header("origin", origin);
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

fn assert_allowed_for_app(response: &Response, what: &str) {
    assert_eq!(
        header(response, "access-control-allow-origin"),
        Some(APP),
        "allow-origin on {what}"
    );
    let exposed = header_list(response, "access-control-expose-headers");
    for name in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-request-id",
        "idempotent-replayed",
    ] {
        assert!(
            exposed.iter().any(|e| e == name),
            "{name} is not exposed on {what}: {exposed:?}"
        );
    }
    assert!(
        header_list(response, "vary").iter().any(|v| v == "origin"),
        "Vary: Origin on {what}"
    );
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_headers_on_success_and_on_every_error() {
    let gw = TestGateway::builder()
        .with_config(&cors_config())
        .with_rate_limit(1, "1h")
        .start()
        .await;
    let token = gw.token("alice");

    let ok = presign_from(&gw, APP, Some(&token), DEFAULT_QUERY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_allowed_for_app(&ok, "200");

    let unauthorized = presign_from(&gw, APP, None, DEFAULT_QUERY)
        .send()
        .await
        .unwrap();
    assert_allowed_for_app(&unauthorized, "401");
    assert_problem(unauthorized, 401, "token_missing").await;

    let limited = presign_from(&gw, APP, Some(&token), DEFAULT_QUERY)
        .send()
        .await
        .unwrap();
    assert_allowed_for_app(&limited, "429");
    assert!(header(&limited, "retry-after").is_some());
    assert_problem(limited, 429, "rate_limited").await;

    let not_found = gw
        .client
        .get(format!("{}/api/s3/other", gw.url))
        .header("origin", APP)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_allowed_for_app(&not_found, "404");
    assert_problem(not_found, 404, "route_not_found").await;

    let invalid = presign_from(&gw, APP, Some(&token), "contenttype=png")
        .send()
        .await
        .unwrap();
    assert_allowed_for_app(&invalid, "400");
    assert_problem(invalid, 400, "invalid_input").await;

    let confirm = gw
        .client
        .post(format!("{}{SUCCESS}", gw.url))
        .header("origin", APP)
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("uuid=nope")
        .send()
        .await
        .unwrap();
    assert_allowed_for_app(&confirm, "400 on confirm");
    assert_problem(confirm, 400, "invalid_input").await;

    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
}

#[tokio::test]
async fn a_preflight_is_answered_by_the_gateway_and_not_forwarded() {
    let gw = TestGateway::builder()
        .with_config(&cors_config())
        .start()
        .await;
    for path in [SUCCESS, PRESIGN] {
        let response = gw
            .client
            .request(Method::OPTIONS, format!("{}{path}", gw.url))
            .header("origin", APP)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "preflight status {}",
            response.status()
        );
        assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
        let methods = header_list(&response, "access-control-allow-methods");
        assert!(methods.iter().any(|m| m == "post"), "{methods:?}");
        assert!(methods.iter().any(|m| m == "get"), "{methods:?}");
        let allowed = header_list(&response, "access-control-allow-headers");
        assert!(allowed.iter().any(|h| h == "authorization"), "{allowed:?}");
        assert!(allowed.iter().any(|h| h == "content-type"), "{allowed:?}");
        // cors.max_age defaults to 10m.
        assert_eq!(header(&response, "access-control-max-age"), Some("600"));
    }
    assert!(
        gw.standin.requests().is_empty(),
        "a preflight never reaches the upstream"
    );
}

#[tokio::test]
async fn another_origin_gets_no_allow_origin() {
    let gw = TestGateway::builder()
        .with_config(&cors_config())
        .start()
        .await;
    let token = gw.token("alice");

    let response = presign_from(&gw, EVIL, Some(&token), DEFAULT_QUERY)
        .send()
        .await
        .unwrap();
    // CORS is enforced by the browser; the gateway just does not vouch for the origin.
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), None);

    let response = presign_from(&gw, EVIL, None, DEFAULT_QUERY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(header(&response, "access-control-allow-origin"), None);

    // Neither a look-alike of the allowed origin.
    for lookalike in [
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://APP.example.com:443",
        "null",
    ] {
        let response = presign_from(&gw, lookalike, Some(&token), DEFAULT_QUERY)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{lookalike}"
        );
    }

    let preflight = gw
        .client
        .request(Method::OPTIONS, format!("{}{SUCCESS}", gw.url))
        .header("origin", EVIL)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(header(&preflight, "access-control-allow-origin"), None);
    assert!(gw.forwarded(SUCCESS).is_empty());
}

#[tokio::test]
async fn no_origins_configured_means_no_cors_headers_at_all() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");

    let ok = presign_from(&gw, APP, Some(&token), DEFAULT_QUERY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(access_control_headers(&ok), Vec::<String>::new());

    let unauthorized = presign_from(&gw, APP, None, DEFAULT_QUERY)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(access_control_headers(&unauthorized), Vec::<String>::new());

    let preflight = gw
        .client
        .request(Method::OPTIONS, format!("{}{SUCCESS}", gw.url))
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(access_control_headers(&preflight), Vec::<String>::new());
    assert!(!preflight.status().is_success(), "OPTIONS is not a route");
    assert!(gw.forwarded(SUCCESS).is_empty());
}
