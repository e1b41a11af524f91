//! Strict HTTP: exactly two routes matched on the raw path, one method each, strict HTTP/1.1
//! framing, bounded heads and bodies, a global concurrency limit and a header read timeout.
//! Nothing refused here ever reaches the upstream.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A raw HTTP/1.1 request with a valid token, `extra` header lines and no body.
fn request(method: &str, target: &str, token: &str, extra: &str) -> Vec<u8> {
    raw_request(
        method,
        target,
        token,
        &format!("{extra}Content-Length: 0\r\n"),
        "",
    )
}

/// The value of the first header `name` of a raw answer.
fn raw_header(answer: &str, name: &str) -> Option<String> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn raw_body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Asserts that a raw answer is a problem+json with this status and code.
fn assert_raw_problem(answer: &str, status: u16, code: &str, case: &str) {
    assert_eq!(raw_status(answer), status, "{case}: {answer}");
    assert_eq!(
        raw_header(answer, "content-type").as_deref(),
        Some("application/problem+json"),
        "{case}: {answer}"
    );
    let body: Value = serde_json::from_str(raw_body(answer))
        .unwrap_or_else(|e| panic!("{case}: body is not JSON ({e}): {answer}"));
    assert_eq!(body["code"], code, "{case}: {body}");
    assert_eq!(body["status"], status, "{case}: {body}");
}

fn assert_nothing_forwarded(gw: &TestGateway, case: &str) {
    let forwarded = gw.standin.requests();
    assert!(
        forwarded.is_empty(),
        "{case}: forwarded {:?}",
        forwarded
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_exact_raw_path_is_served_and_forwarded() {
    // The control for every refusal below: the same raw request on the exact path goes through.
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let answer = raw_http(
        gw.addr,
        &request("GET", &format!("{PRESIGN}?{DEFAULT_QUERY}"), &token, ""),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
}

#[tokio::test]
async fn near_miss_paths_are_not_routes_and_are_never_forwarded() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let targets = [
        "/api/s3/presigned-post/",
        "//api/s3/presigned-post",
        "/api/s3/../s3/presigned-post",
        "/api/s3/%2e%2e/s3/presigned-post",
        "/api/s3%2Fpresigned-post",
        "/api/s3/presigned-post;x=1",
        "/API/S3/PRESIGNED-POST",
        "/api/s3/Presigned-Post",
        "/api/s3/presigned%2Dpost",
        "/",
        "/api/s3/other",
        "/admin",
        "/api/s3/success/",
        "/api/s3/SUCCESS",
    ];
    for target in targets {
        let answer = raw_http(
            gw.addr,
            &request("GET", &format!("{target}?{DEFAULT_QUERY}"), &token, ""),
        )
        .await;
        assert_raw_problem(&answer, 404, "route_not_found", target);
        // Without a query string too.
        let answer = raw_http(gw.addr, &request("GET", target, &token, "")).await;
        assert_raw_problem(&answer, 404, "route_not_found", target);
    }
    assert_nothing_forwarded(&gw, "near-miss paths");
}

#[tokio::test]
async fn an_absolute_form_target_is_refused() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    for target in [
        format!("http://evil.example{PRESIGN}?{DEFAULT_QUERY}"),
        format!("http://{}{PRESIGN}?{DEFAULT_QUERY}", gw.addr),
    ] {
        let answer = raw_http(gw.addr, &request("GET", &target, &token, "")).await;
        assert_raw_problem(&answer, 400, "absolute_form_target", &target);
    }
    assert_nothing_forwarded(&gw, "absolute form");
}

#[tokio::test]
async fn a_wrong_method_gets_405_with_allow_and_is_never_forwarded() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let cases = [
        ("POST", PRESIGN, "GET"),
        ("PUT", PRESIGN, "GET"),
        ("DELETE", PRESIGN, "GET"),
        ("PATCH", PRESIGN, "GET"),
        ("OPTIONS", PRESIGN, "GET"),
        ("HEAD", PRESIGN, "GET"),
        ("GET", SUCCESS, "POST"),
        ("PUT", SUCCESS, "POST"),
        ("HEAD", SUCCESS, "POST"),
    ];
    for (method, path, allow) in cases {
        let case = format!("{method} {path}");
        let answer = raw_http(
            gw.addr,
            &request(method, &format!("{path}?{DEFAULT_QUERY}"), &token, ""),
        )
        .await;
        if method == "HEAD" {
            assert_eq!(raw_status(&answer), 405, "{case}: {answer}");
            assert!(raw_body(&answer).is_empty(), "{case}: {answer}");
        } else {
            assert_raw_problem(&answer, 405, "method_not_allowed", &case);
        }
        assert_eq!(
            raw_header(&answer, "allow").as_deref(),
            Some(allow),
            "{case}: {answer}"
        );
    }
    assert_nothing_forwarded(&gw, "wrong methods");
}

#[tokio::test]
async fn the_host_header_is_required_exactly_once() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let target = format!("{PRESIGN}?{DEFAULT_QUERY}");

    let duplicate = format!(
        "GET {target} HTTP/1.1\r\nHost: gateway.test\r\nHost: evil.example\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_http(gw.addr, duplicate.as_bytes()).await;
    assert_raw_problem(&answer, 400, "bad_host_header", "duplicate Host");

    let missing = format!(
        "GET {target} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_http(gw.addr, missing.as_bytes()).await;
    assert_raw_problem(&answer, 400, "bad_host_header", "missing Host");

    assert_nothing_forwarded(&gw, "Host rules");
}

fn confirm_head(token: &str, framing: &str) -> String {
    format!(
        "POST {SUCCESS} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n{framing}Connection: close\r\n\r\n"
    )
}

fn confirm_form_body(issued: &Issued) -> String {
    format!(
        "uuid={}&key={}&name=photo.png&etag=abc",
        issued.s3object_id,
        form_urlencoded::byte_serialize(issued.key.as_bytes()).collect::<String>()
    )
}

/// `body` as chunks of at most 7 bytes, then the last chunk.
fn chunked(body: &str) -> String {
    let mut out = String::new();
    for piece in body.as_bytes().chunks(7) {
        out.push_str(&format!(
            "{:x}\r\n{}\r\n",
            piece.len(),
            String::from_utf8_lossy(piece)
        ));
    }
    out + "0\r\n\r\n"
}

#[tokio::test]
async fn ambiguous_or_unknown_body_framing_is_refused() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    let form = confirm_form_body(&issued);
    let len = form.len();

    // Two different Content-Length values: hyper refuses before the app sees anything.
    let conflicting = format!(
        "{}{form}",
        confirm_head(
            &token,
            &format!("Content-Length: {len}\r\nContent-Length: {}\r\n", len + 1)
        )
    );
    let answer = raw_http(gw.addr, conflicting.as_bytes()).await;
    assert_eq!(
        raw_status(&answer),
        400,
        "conflicting Content-Length: {answer}"
    );

    // Encodings other than plain chunked: refused by hyper (chunked not last) or by the guard.
    for framing in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
    ] {
        let raw = format!("{}{}", confirm_head(&token, framing), chunked(&form));
        let answer = raw_http(gw.addr, raw.as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{framing:?}: {answer}");
        if raw_header(&answer, "content-type").as_deref() == Some("application/problem+json") {
            assert_raw_problem(&answer, 400, "transfer_encoding_not_accepted", framing);
        }
    }

    // A presign never has a body, chunked or not.
    let target = format!("{PRESIGN}?{DEFAULT_QUERY}");
    let answer = raw_http(
        gw.addr,
        &raw_request(
            "GET",
            &target,
            &token,
            "Transfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
    )
    .await;
    assert_raw_problem(
        &answer,
        400,
        "transfer_encoding_not_accepted",
        "chunked presign",
    );

    // Only the presign that issued the upload was ever forwarded: no confirmation reached upstream.
    assert!(gw.forwarded(SUCCESS).is_empty());
    assert_eq!(gw.standin.requests().len(), 1);

    // The upload is untouched and still confirmable with a well-framed request.
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
}

#[tokio::test]
async fn a_chunked_confirmation_is_read_under_the_same_byte_cap() {
    let gw = TestGateway::builder()
        .with_config("[confirm]\nmax_body_bytes = 300")
        .start()
        .await;
    let token = gw.token("alice");

    // Over the cap, with no length announced: 413 once the cap is passed, nothing forwarded.
    let issued = gw.issue(&token).await;
    let padded = format!("{}{}", confirm_form_body(&issued), "p".repeat(400));
    let raw = format!(
        "{}{}",
        confirm_head(&token, "Transfer-Encoding: chunked\r\n"),
        chunked(&padded)
    );
    let answer = raw_http(gw.addr, raw.as_bytes()).await;
    assert_raw_problem(&answer, 413, "payload_too_large", "chunked over the cap");
    assert!(gw.forwarded(SUCCESS).is_empty());

    // Under the cap: confirmed and forwarded once, with the form's fields.
    let raw = format!(
        "{}{}",
        confirm_head(&token, "Transfer-Encoding: chunked\r\n"),
        chunked(&confirm_form_body(&issued))
    );
    let answer = raw_http(gw.addr, raw.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "chunked under the cap: {answer}");
    let forwarded = gw.forwarded(SUCCESS);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].form()["key"], issued.key);
}

#[tokio::test]
async fn content_length_beside_chunked_is_ignored_and_the_connection_closed() {
    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and the server closes the
    // connection after answering, so nothing after the body can be read as a second request.
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    for order in [0, 1] {
        let issued = gw.issue(&token).await;
        let form = confirm_form_body(&issued);
        // A Content-Length that would end the body early, leaving a smuggled request behind it.
        let framing = [
            "Content-Length: 5\r\n".to_owned(),
            "Transfer-Encoding: chunked\r\n".to_owned(),
        ];
        let framing = if order == 0 {
            framing.concat()
        } else {
            format!("{}{}", framing[1], framing[0])
        };
        let head = format!(
            "POST {SUCCESS} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n"
        );
        let smuggled =
            format!("GET {PRESIGN}?{DEFAULT_QUERY} HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(format!("{head}{}{smuggled}", chunked(&form)).as_bytes())
            .await
            .unwrap();
        let answer = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .expect("the gateway closes the connection after the answer");
        assert_eq!(raw_status(&answer), 200, "order {order}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "order {order}: one answer only, the smuggled request is never read: {answer}"
        );
    }
    // Two presigns and two confirmations, nothing else.
    assert_eq!(gw.forwarded(PRESIGN).len(), 2);
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
}

#[tokio::test]
async fn oversized_heads_get_a_431_or_414_problem_and_beyond_twice_the_limits_hyper_s_bare_431() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let target = format!("{PRESIGN}?{DEFAULT_QUERY}");

    // Over server.max_header_bytes (16384) and server.max_headers (64): the guard's problems.
    let big = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let answer = raw_http(gw.addr, &request("GET", &target, &token, &big)).await;
    assert_raw_problem(&answer, 431, "headers_too_large", "one huge header");
    assert!(
        raw_body(&answer).contains("server.max_header_bytes"),
        "{answer}"
    );

    let many: String = (0..70).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let answer = raw_http(gw.addr, &request("GET", &target, &token, &many)).await;
    assert_raw_problem(&answer, 431, "headers_too_large", "too many headers");
    assert!(raw_body(&answer).contains("server.max_headers"), "{answer}");

    // A target over 8 KiB: 414 with a problem body.
    let long = format!("{target}&pad={}", "p".repeat(9_000));
    let answer = raw_http(gw.addr, &request("GET", &long, &token, "")).await;
    assert_raw_problem(&answer, 414, "uri_too_long", "a 9 kB target");

    // Beyond twice the limits hyper answers itself, before any service: a bare 431.
    let huge = format!("X-Big: {}\r\n", "a".repeat(40_000));
    let answer = raw_http(gw.addr, &request("GET", &target, &token, &huge)).await;
    assert_eq!(raw_status(&answer), 431, "a 40 kB header: {answer:.200}");
    assert!(raw_body(&answer).is_empty(), "{answer:.200}");
    let lots: String = (0..130).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let answer = raw_http(gw.addr, &request("GET", &target, &token, &lots)).await;
    assert_eq!(raw_status(&answer), 431, "130 header lines: {answer:.200}");

    assert_nothing_forwarded(&gw, "oversized heads");

    // A head within both limits is served: the limits are not simply "refuse everything".
    let some: String = (0..40).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let answer = raw_http(gw.addr, &request("GET", &target, &token, &some)).await;
    assert_eq!(raw_status(&answer), 200, "a normal head: {answer:.200}");
    let near = format!("X-Big: {}\r\n", "a".repeat(14_000));
    let answer = raw_http(gw.addr, &request("GET", &target, &token, &near)).await;
    assert_eq!(raw_status(&answer), 200, "a 14 kB header: {answer:.200}");
}

#[tokio::test]
async fn options_is_answered_only_as_a_preflight_on_the_two_routes() {
    let cors = TestGateway::builder()
        .with_config("[cors]\nallowed_origins = [\"https://app.example.com\"]")
        .start()
        .await;
    let plain = TestGateway::start().await;
    let preflight = "Origin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\n";
    for (gw, name) in [(&cors, "CORS on"), (&plain, "CORS off")] {
        for extra in ["", preflight] {
            let case = format!("{name}, {extra:?}");
            let answer = raw_http(gw.addr, &request("OPTIONS", "*", "x", extra)).await;
            assert_raw_problem(
                &answer,
                400,
                "asterisk_form_target",
                &format!("OPTIONS * {case}"),
            );
            for path in ["/", "/nowhere", "/api/s3/presigned-post/"] {
                let answer = raw_http(gw.addr, &request("OPTIONS", path, "x", extra)).await;
                assert_raw_problem(
                    &answer,
                    404,
                    "route_not_found",
                    &format!("OPTIONS {path} {case}"),
                );
            }
        }
        // Not a preflight (no Origin, or no Access-Control-Request-Method): 405 on a route.
        for extra in ["", "Origin: https://app.example.com\r\n"] {
            let answer = raw_http(gw.addr, &request("OPTIONS", SUCCESS, "x", extra)).await;
            assert_raw_problem(
                &answer,
                405,
                "method_not_allowed",
                &format!("{name} {extra:?}"),
            );
        }
        assert_nothing_forwarded(gw, name);
    }
    // A preflight on a route: answered by the CORS layer when it is on, 405 when it is off.
    for path in [SUCCESS, PRESIGN] {
        let answer = raw_http(cors.addr, &request("OPTIONS", path, "x", preflight)).await;
        assert_eq!(raw_status(&answer), 200, "{path}: {answer}");
        assert_eq!(
            raw_header(&answer, "access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        let answer = raw_http(plain.addr, &request("OPTIONS", path, "x", preflight)).await;
        assert_raw_problem(&answer, 405, "method_not_allowed", path);
    }
    // Any other method with an asterisk target is refused the same way.
    let answer = raw_http(plain.addr, &request("GET", "*", "x", "")).await;
    assert_raw_problem(&answer, 400, "asterisk_form_target", "GET *");
}

#[tokio::test]
async fn a_confirm_body_over_the_limit_gets_413() {
    let gw = TestGateway::builder()
        .with_config("[confirm]\nmax_body_bytes = 100")
        .start()
        .await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    let padding = "p".repeat(200);
    let response = gw
        .confirm_form(
            &token,
            &[
                ("uuid", &issued.s3object_id),
                ("key", &issued.key),
                ("name", "photo.png"),
                ("etag", &padding),
            ],
        )
        .await;
    assert_problem(response, 413, "payload_too_large").await;
    assert!(gw.forwarded(SUCCESS).is_empty());
}

#[tokio::test]
async fn a_confirm_that_is_not_a_form_gets_415() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    let response = gw
        .client
        .post(format!("{}{SUCCESS}", gw.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "uuid": issued.s3object_id,
                "key": issued.key,
                "name": "photo.png",
                "etag": "abc",
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "unsupported_media_type").await;
    assert!(gw.forwarded(SUCCESS).is_empty());
}

#[tokio::test]
async fn beyond_the_concurrency_limit_the_gateway_sheds_load() {
    let gw = TestGateway::builder()
        .with_config("[server]\nmax_concurrent_requests = 1")
        .start()
        .await;
    let token = gw.token("alice");
    gw.standin.script(
        kizen_gateway::standin::Endpoint::Presign,
        kizen_gateway::standin::Scripted::Hang,
    );

    let first = {
        let client = gw.client.clone();
        let url = format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.url);
        let token = token.clone();
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await })
    };
    gw.standin.wait_for_requests(PRESIGN, 1).await;

    // The second request is refused at once rather than queued behind the hanging one.
    let response = tokio::time::timeout(Duration::from_secs(3), gw.presign(&token))
        .await
        .expect("a prompt answer, not a queue");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_problem(response, 503, "overloaded").await;
    assert!(!first.is_finished(), "the first request is still pending");
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        1,
        "the shed request was not forwarded"
    );
    first.abort();
}

/// Reads until the server ends the connection; `None` if it is still open after `bound` (an
/// upper bound, not a synchronisation).
async fn read_until_closed(stream: &mut tokio::net::TcpStream, bound: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_slow_head_is_cut_off_by_the_header_read_timeout() {
    let gw = TestGateway::builder()
        .with_config("[server]\nheader_read_timeout = \"200ms\"")
        .start()
        .await;
    let token = gw.token("alice");
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let partial = format!(
        "GET {PRESIGN}?{DEFAULT_QUERY} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n"
    );
    stream.write_all(partial.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection was still open after 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "closed before the timeout could have fired: {:?}",
        started.elapsed()
    );
    assert_ne!(raw_status(&answer), 200, "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert_nothing_forwarded(&gw, "slow head");
}

#[tokio::test]
async fn a_silent_connection_is_cut_off_by_the_header_read_timeout() {
    let gw = TestGateway::builder()
        .with_config("[server]\nheader_read_timeout = \"200ms\"")
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("a silent connection was still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_cut_off_too() {
    let gw = TestGateway::builder()
        .with_config("[server]\nheader_read_timeout = \"200ms\"")
        .start()
        .await;
    let token = gw.token("alice");
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let first = format!(
        "GET {PRESIGN}?{DEFAULT_QUERY} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(first.as_bytes()).await.unwrap();
    // The first request is answered and the connection kept alive; then the client goes quiet.
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection was still open after 5 s");
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
}
