//! The OpenAPI document (`openapi/kizen-gateway.openapi.json`) against the gateway itself.
//!
//! `every_response_conforms_to_the_spec` has a table of cases for each route (the presign path,
//! the confirm path, and every other path). A case names one request and the answer it must
//! provoke (status, and problem code where there is one); it runs on a gateway of its own,
//! configured to provoke it, after the steps it needs (an upload issued, a confirmation left in
//! flight, the clock moved...). Requests go over real sockets (reqwest, and raw bytes where a
//! client library would not send them). Every answer, the steps' included, must be the one meant
//! and must conform to the document: path and method, status, media type, body schema (JSON
//! Schema 2020-12, `$ref`s resolved inside the document), required headers and the schema of
//! every documented header that is present. Each assertion names its case.
//!
//! `the_spec_is_well_formed` checks the document on its own and against the source: every `$ref`
//! resolves, every schema is a valid 2020-12 schema, and the problem codes
//! ([`every_error_code_the_gateway_can_emit`]), field error codes, statuses, sources, paths and
//! exposed headers in the code all appear in the document (and the document lists no code the
//! gateway cannot emit).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use kizen_gateway::{
    error::{ErrorCode, RetryAfter},
    standin::{Endpoint, Scripted},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::support::{faulty_store::FaultyStore, *};

const SPEC_FILE: &str = "openapi/kizen-gateway.openapi.json";
const PROBLEM_JSON: &str = "application/problem+json";
const ORIGIN: &str = "https://app.example.com";

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn load_spec() -> Value {
    let path = manifest_path(SPEC_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{SPEC_FILE} is not JSON: {e}"))
}

/// `/api/s3/success` -> `~1api~1s3~1success` (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

mod every_response_conforms_to_the_spec {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presign() {
        run("presign route", presign_cases()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn confirm() {
        run("confirm route", confirm_cases()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_paths() {
        run("other paths", other_path_cases()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The cases, a table per route
// ---------------------------------------------------------------------------------------------

/// `GET` the presign path, and the methods it has no operation for.
fn presign_cases() -> Vec<Case> {
    vec![
        // 200.
        Case::presign("presign").answers(200),
        Case::new("presign with a sane x-request-id", |c| {
            c.presign(DEFAULT_QUERY)
                .header("x-request-id", "trace-1:a.b_c")
        })
        .answers(200),
        Case::new("presign with iss and aud", |c| {
            c.presign_with(&hs256(&iss_aud_claims(
                "https://idp.test/",
                "kizen-uploads",
            )))
        })
        .on(Gateway::IssuerAndAudience)
        .answers(200),
        Case::new("cross-origin presign", |c| {
            c.presign(DEFAULT_QUERY).header("origin", ORIGIN)
        })
        .on(Gateway::Cors)
        .answers(200)
        .with_header("access-control-allow-origin", ORIGIN),
        Case::new("preflight of presign", |c| c.preflight(PRESIGN))
            .on(Gateway::Cors)
            .answers(200),
        // 400: the gateway's own validation, every field at once; duplicates and unknown fields.
        Case::new("presign invalid input", |c| {
            c.presign("contenttype=png&filename=..&source=images")
        })
        .problem(400, "invalid_input"),
        Case::new("presign duplicate and unknown parameters", |c| {
            c.presign(concat!(
                "contenttype=image%2Fpng&contenttype=image%2Fgif",
                "&filename=a.png&source=field_value&x=1"
            ))
        })
        .problem(400, "invalid_input"),
        Case::new("presign without parameters", |c| c.presign("")).problem(400, "invalid_input"),
        // 400 before routing: the gateway's framing problems, and hyper's bare 400.
        Case::raw("presign with two Host headers", |c| {
            format!(
                "GET {PRESIGN}?{DEFAULT_QUERY} HTTP/1.1\r\n\
                 Host: gateway.test\r\nHost: evil.example\r\n\
                 Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
                c.alice
            )
            .into_bytes()
        })
        .problem(400, "bad_host_header"),
        Case::raw("presign with an absolute-form target", |c| {
            c.raw(
                "GET",
                &format!("http://kizen.example{PRESIGN}?{DEFAULT_QUERY}"),
                "",
                "",
            )
        })
        .problem(400, "absolute_form_target"),
        Case::raw("presign with a header line hyper cannot parse", |c| {
            c.raw("GET", &presign_target(), "Bad Header Name: x\r\n", "")
        })
        .answers(400),
        // 400, 404, 409 and 429 from Kizen, passed through.
        Case::presign("presign, upstream 400 passed through")
            .kizen(Endpoint::Presign, json_answer(400, FILENAME_TOO_LONG))
            .answers(400),
        Case::presign("presign, upstream 404 passed through")
            .kizen(
                Endpoint::Presign,
                json_answer(404, r#"{"detail": "Not found."}"#),
            )
            .answers(404),
        Case::presign("presign, upstream 429 passed through")
            .kizen(
                Endpoint::Presign,
                json_answer(
                    429,
                    r#"{"detail": "Request was throttled. Expected available in 2 seconds."}"#,
                ),
            )
            .answers(429),
        Case::presign("presign, upstream 409 passed through")
            .kizen(
                Endpoint::Presign,
                respond(
                    409,
                    &[("content-type", "application/json; charset=utf-8")],
                    r#"{"detail": {"filename": "A file with this name is being uploaded."}}"#,
                ),
            )
            .answers(409),
        // 401, every code the default configuration can produce, and the two of `iss` and `aud`.
        Case::new("presign without a token", |c| {
            c.gw.client.get(c.url(&presign_target()))
        })
        .problem(401, "token_missing"),
        Case::new("cross-origin presign without a token", |c| {
            c.gw.client
                .get(c.url(&presign_target()))
                .header("origin", ORIGIN)
        })
        .on(Gateway::Cors)
        .problem(401, "token_missing"),
        Case::new("presign with a token: not a JWT", |c| {
            c.presign_with("not-a-jwt")
        })
        .problem(401, "token_malformed"),
        Case::new("presign with a token: alg none", |c| {
            c.presign_with(&raw_token(
                &json!({"alg": "none", "typ": "JWT"}),
                &claims("alice"),
                Some(HS256_SECRET.as_bytes()),
            ))
        })
        .problem(401, "token_unsupported"),
        Case::new("presign with a token: an alg no key serves", |c| {
            c.presign_with(&raw_token(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &claims("alice"),
                Some(HS256_SECRET.as_bytes()),
            ))
        })
        .problem(401, "token_unknown_key"),
        Case::new("presign with a token: a wrong signature", |c| {
            c.presign_with(&raw_token(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &claims("alice"),
                Some(b"another-secret-0123456789abcdef0123456789"),
            ))
        })
        .problem(401, "token_bad_signature"),
        Case::new("presign with a token: expired", |c| {
            c.presign_with(&expired_token())
        })
        .problem(401, "token_expired"),
        Case::new("presign with a token: issued in the future", |c| {
            c.presign_with(&hs256(
                &json!({"sub": "alice", "iat": now() + 3600, "exp": now() + 3600}),
            ))
        })
        .problem(401, "token_not_yet_valid"),
        Case::new("presign with a token: no sub", |c| {
            c.presign_with(&hs256(&json!({"iat": now(), "exp": now() + 3600})))
        })
        .problem(401, "token_missing_claim"),
        Case::new("presign with a wrong issuer", |c| {
            c.presign_with(&hs256(&iss_aud_claims(
                "https://evil.test/",
                "kizen-uploads",
            )))
        })
        .on(Gateway::IssuerAndAudience)
        .problem(401, "token_wrong_issuer"),
        Case::new("presign with a wrong audience", |c| {
            c.presign_with(&hs256(&iss_aud_claims("https://idp.test/", "other")))
        })
        .on(Gateway::IssuerAndAudience)
        .problem(401, "token_wrong_audience"),
        // 405: the methods without an operation, and OPTIONS without CORS.
        Case::new("POST the presign path", |c| {
            c.gw.client
                .post(c.url(&presign_target()))
                .bearer_auth(&c.alice)
        })
        .problem(405, "method_not_allowed"),
        Case::new("OPTIONS the presign path, CORS not configured", |c| {
            c.gw.client
                .request(reqwest::Method::OPTIONS, c.url(PRESIGN))
        })
        .problem(405, "method_not_allowed"),
        // 414: a target over 8 KiB; over 64 KiB (which only a head limit above it lets through),
        // hyper's bare 414.
        Case::raw("presign with a 9 kB target", |c| {
            c.raw(
                "GET",
                &format!("{PRESIGN}?{DEFAULT_QUERY}&pad={}", "p".repeat(9_000)),
                "",
                "",
            )
        })
        .problem(414, "uri_too_long"),
        Case::raw("presign with a 66 kB target (hyper)", |c| {
            c.raw(
                "GET",
                &format!("{PRESIGN}?{DEFAULT_QUERY}&pad={}", "p".repeat(66_000)),
                "",
                "",
            )
        })
        .on(Gateway::Cors)
        .answers(414),
        // 429: the rate limit, and the three quotas.
        Case::presign("presign over the rate limit")
            .on(Gateway::RateLimitOfOne)
            .given([Step::Issue])
            .problem(429, "rate_limited"),
        Case::presign("presign over max_outstanding")
            .on(Gateway::OneUploadADay)
            .given([Step::Issue])
            .problem(429, "too_many_outstanding_uploads"),
        Case::presign("presign over max_uploads_per_day")
            .on(Gateway::OneUploadADay)
            .given([Step::Issue, Step::Confirm])
            .problem(429, "daily_upload_quota_exceeded"),
        Case::presign("presign over max_bytes_per_day")
            .on(Gateway::OneByteADay)
            .given([Step::Issue, Step::ConfirmTenBytes])
            .problem(429, "daily_byte_quota_exceeded"),
        // 431: a head over server.max_header_bytes; over twice that, hyper's bare 431.
        Case::raw("presign with a 20 kB header", |c| {
            c.raw(
                "GET",
                &presign_target(),
                &format!("X-Big: {}\r\n", "a".repeat(20_000)),
                "",
            )
        })
        .problem(431, "headers_too_large"),
        Case::raw("presign with a 40 kB header (hyper)", |c| {
            c.raw(
                "GET",
                &presign_target(),
                &format!("X-Big: {}\r\n", "a".repeat(40_000)),
                "",
            )
        })
        .answers(431),
        // 502: Kizen failed, refused the gateway's credentials, answered nonsense, or is away.
        Case::presign("presign, upstream answers a 500")
            .kizen(
                Endpoint::Presign,
                respond(500, &[("content-type", "text/html")], "<h1>oops</h1>"),
            )
            .problem(502, "upstream_error"),
        Case::presign("presign, upstream answers a 403")
            .kizen(
                Endpoint::Presign,
                json_answer(
                    403,
                    r#"{"detail": "You do not have permission to perform this action."}"#,
                ),
            )
            .problem(502, "upstream_unavailable"),
        Case::presign("presign, upstream answers not JSON")
            .kizen(Endpoint::Presign, json_answer(200, "{not json"))
            .problem(502, "upstream_bad_response"),
        Case::presign("presign, upstream answers a redirect")
            .kizen(
                Endpoint::Presign,
                respond(302, &[("location", "https://elsewhere.example/")], ""),
            )
            .problem(502, "upstream_bad_response"),
        Case::presign("presign, upstream unreachable")
            .on(Gateway::NoKizen)
            .problem(502, "upstream_unreachable"),
        // 503: load shed, a full store, a store away.
        Case::presign("presign at the concurrency limit")
            .on(Gateway::OneAtATime)
            .given([Step::PresignHanging])
            .problem(503, "overloaded"),
        Case::new("presign into a full store", |c| {
            c.gw.presign_request(&c.bob, DEFAULT_QUERY)
        })
        .on(Gateway::FullStore)
        .given([Step::Issue])
        .problem(503, "store_full"),
        Case::presign("presign, store unavailable")
            .on(Gateway::FaultyStore)
            .given([Step::Issue, Step::StoreUnavailable])
            .problem(503, "store_unavailable"),
        // 504: Kizen past upstream.request_timeout, the whole request past server.request_timeout.
        Case::presign("presign, upstream hangs")
            .on(Gateway::OneAtATime)
            .kizen(Endpoint::Presign, Scripted::Hang)
            .problem(504, "upstream_timeout"),
        Case::presign("presign past server.request_timeout")
            .on(Gateway::ShortDeadline)
            .kizen(Endpoint::Presign, Scripted::Hang)
            .problem(504, "request_timeout"),
    ]
}

/// `POST` the confirm path, and the methods it has no operation for.
fn confirm_cases() -> Vec<Case> {
    vec![
        // 200: a confirmation, its idempotent repeat, and one after failures that released it.
        Case::confirm("confirm").given([Step::Issue]).answers(200),
        Case::confirm("confirm repeated")
            .given([Step::Issue, Step::Confirm])
            .answers(200)
            .with_header("idempotent-replayed", "true"),
        Case::confirm("confirm after the upstream failures")
            .given([
                Step::Issue,
                Step::ConfirmFails(kizen_503(), "upstream_error"),
                Step::ConfirmFails(kizen_401(), "upstream_unavailable"),
                Step::ConfirmFails(kizen_echoes_the_api_key(), "upstream_bad_response"),
            ])
            .answers(200),
        Case::new("preflight of confirm", |c| c.preflight(SUCCESS))
            .on(Gateway::Cors)
            .answers(200),
        // 400: the gateway's validation, its framing problems, and hyper's bare 400.
        Case::new("confirm invalid input", |c| {
            c.confirm(form(&[
                ("uuid", "not-a-uuid"),
                ("is_public", "maybe"),
                ("extra", "1"),
            ]))
        })
        .problem(400, "invalid_input"),
        Case::raw("confirm with a gzip, chunked body", |c| {
            let body = form(&[("uuid", &c.upload().s3object_id), ("key", &c.upload().key)]);
            c.raw(
                "POST",
                SUCCESS,
                "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: gzip, chunked\r\n",
                &format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
            )
        })
        .given([Step::Issue])
        .problem(400, "transfer_encoding_not_accepted"),
        Case::raw("confirm with conflicting Content-Length (hyper)", |c| {
            let body = form(&[("uuid", &c.upload().s3object_id), ("key", &c.upload().key)]);
            c.raw(
                "POST",
                SUCCESS,
                &format!(
                    "Content-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: {}\r\nContent-Length: {}\r\n",
                    body.len(),
                    body.len() + 1
                ),
                &body,
            )
        })
        .given([Step::Issue])
        .answers(400),
        // 401.
        Case::new("confirm with Basic credentials", |c| {
            c.gw.client
                .post(c.url(SUCCESS))
                .header("authorization", "Basic YWxpY2U6c2VjcmV0")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("uuid=x")
        })
        .problem(401, "token_missing"),
        Case::new("confirm with an expired token", |c| {
            c.gw.confirm_request(&expired_token(), c.upload().confirmation())
        })
        .given([Step::Issue])
        .problem(401, "token_expired"),
        // 403, 404.
        Case::new("confirm with another key", |c| {
            c.confirm(form(&[
                ("uuid", &c.upload().s3object_id),
                ("key", "uploads/elsewhere.png"),
                ("name", "photo.png"),
                ("etag", "\"abc123\""),
            ]))
        })
        .given([Step::Issue])
        .problem(403, "key_mismatch"),
        Case::new("confirm an unknown uuid", |c| {
            c.confirm(form(&[
                ("uuid", &Uuid::new_v4().to_string()),
                ("key", &c.upload().key),
                ("name", "photo.png"),
                ("etag", "\"abc123\""),
            ]))
        })
        .given([Step::Issue])
        .problem(404, "upload_not_found"),
        Case::new("confirm another user's upload", |c| {
            c.gw.confirm_request(&c.bob, c.upload().confirmation())
        })
        .given([Step::Issue])
        .problem(404, "upload_not_found"),
        // 404 and 422 (a status the gateway has no number of its own for) from Kizen, passed on.
        Case::confirm("confirm, upstream 404 passed through")
            .given([Step::Issue])
            .kizen(
                Endpoint::Success,
                json_answer(404, r#"{"detail": "Not found."}"#),
            )
            .answers(404),
        Case::confirm("confirm, upstream 422 passed through")
            .given([Step::Issue])
            .kizen(
                Endpoint::Success,
                json_answer(
                    422,
                    r#"{"detail": {"etag": "Does not match the uploaded object."}}"#,
                ),
            )
            .answers(422),
        // 405: the methods without an operation.
        Case::new("GET the confirm path", |c| {
            c.gw.client.get(c.url(SUCCESS)).bearer_auth(&c.alice)
        })
        .problem(405, "method_not_allowed"),
        Case::new("PUT the confirm path", |c| {
            c.gw.client
                .put(c.url(SUCCESS))
                .bearer_auth(&c.alice)
                .body("")
        })
        .problem(405, "method_not_allowed"),
        // 409: confirmed with another key; another confirmation of it in flight.
        Case::new("confirm a confirmed upload with another key", |c| {
            c.confirm(form(&[
                ("uuid", &c.upload().s3object_id),
                ("key", "uploads/other"),
                ("name", "photo.png"),
                ("etag", "\"abc123\""),
            ]))
        })
        .given([Step::Issue, Step::Confirm])
        .problem(409, "already_confirmed"),
        Case::confirm("confirm while another confirmation is in flight")
            .given([Step::Issue, Step::ConfirmInFlight])
            .problem(409, "confirmation_in_progress"),
        // 410: past the confirmation window (expires_at + 1 h grace; the stand-in says 5 min).
        Case::confirm("confirm after the window closed")
            .given([Step::Issue, Step::Advance(Duration::from_secs(66 * 60))])
            .problem(410, "upload_expired"),
        // 413, 414 (hyper: only a head limit over 64 KiB lets the target through), 415.
        Case::new("confirm a body over confirm.max_body_bytes", |c| {
            c.confirm(form(&[
                ("uuid", &c.upload().s3object_id),
                ("key", &c.upload().key),
                ("name", "photo.png"),
                ("etag", &"e".repeat(9000)),
            ]))
        })
        .given([Step::Issue])
        .problem(413, "payload_too_large"),
        Case::raw("confirm with a 66 kB target (hyper)", |c| {
            c.raw(
                "POST",
                &format!("{SUCCESS}?pad={}", "p".repeat(66_000)),
                "Content-Length: 0\r\n",
                "",
            )
        })
        .on(Gateway::Cors)
        .answers(414),
        Case::new("confirm with a JSON body", |c| {
            let upload = c.upload();
            c.gw.client
                .post(c.url(SUCCESS))
                .bearer_auth(&c.alice)
                .json(&json!({
                    "uuid": upload.s3object_id,
                    "key": upload.key,
                    "name": "photo.png",
                    "etag": "e",
                }))
        })
        .given([Step::Issue])
        .problem(415, "unsupported_media_type"),
        Case::new("confirm without a Content-Type", |c| {
            c.gw.client
                .post(c.url(SUCCESS))
                .bearer_auth(&c.alice)
                .body(form(&[("uuid", &c.upload().s3object_id)]))
        })
        .given([Step::Issue])
        .problem(415, "unsupported_media_type"),
        // 431: too many header lines; over twice the limit, hyper's bare 431.
        Case::raw("confirm with 70 header lines", |c| {
            let many: String = (0..70).map(|i| format!("X-Header-{i}: v\r\n")).collect();
            c.raw("POST", SUCCESS, &many, "")
        })
        .problem(431, "headers_too_large"),
        Case::raw("confirm with 130 header lines (hyper)", |c| {
            let many: String = (0..130).map(|i| format!("X-Header-{i}: v\r\n")).collect();
            c.raw("POST", SUCCESS, &many, "")
        })
        .answers(431),
        // 500: settling the confirmation panics.
        Case::confirm("confirm, settling the confirmation panics")
            .on(Gateway::FaultyStore)
            .given([Step::Issue, Step::PanicOnConsume])
            .problem(500, "internal_error"),
        // 502: Kizen failed, refused the gateway's credentials, or echoed a secret.
        Case::confirm("confirm, upstream answers 503")
            .given([Step::Issue])
            .kizen(Endpoint::Success, kizen_503())
            .problem(502, "upstream_error"),
        Case::confirm("confirm, upstream answers 401")
            .given([Step::Issue])
            .kizen(Endpoint::Success, kizen_401())
            .problem(502, "upstream_unavailable"),
        Case::confirm("confirm, upstream answer contains the API key")
            .given([Step::Issue])
            .kizen(Endpoint::Success, kizen_echoes_the_api_key())
            .problem(502, "upstream_bad_response"),
        // 503, 504.
        Case::confirm("confirm, store unavailable")
            .on(Gateway::FaultyStore)
            .given([Step::Issue, Step::StoreUnavailable])
            .problem(503, "store_unavailable"),
        Case::confirm("confirm, upstream hangs")
            .on(Gateway::OneAtATime)
            .given([Step::Issue])
            .kizen(Endpoint::Success, Scripted::Hang)
            .problem(504, "upstream_timeout"),
    ]
}

/// Paths the gateway does not serve (`/x-unmatched-paths` in the document).
fn other_path_cases() -> Vec<Case> {
    vec![
        Case::new("GET an unknown path", |c| {
            c.gw.client
                .get(c.url("/api/s3/other"))
                .bearer_auth(&c.alice)
        })
        .problem(404, "route_not_found"),
        Case::new("GET the presign path with a trailing slash", |c| {
            c.gw.client
                .get(c.url(&format!("{PRESIGN}/?{DEFAULT_QUERY}")))
                .bearer_auth(&c.alice)
        })
        .problem(404, "route_not_found"),
        Case::raw("GET an encoded variant of the presign path", |c| {
            c.raw("GET", "/api/s3/presigned%2Dpost", "", "")
        })
        .problem(404, "route_not_found"),
        // With CORS on, preflights are answered on the two routes only.
        Case::new("preflight of an unknown path", |c| c.preflight("/nowhere"))
            .on(Gateway::Cors)
            .problem(404, "route_not_found"),
        Case::raw("OPTIONS *", |c| c.raw("OPTIONS", "*", "", ""))
            .on(Gateway::Cors)
            .problem(400, "asterisk_form_target"),
    ]
}

/// The presign path with the default query.
fn presign_target() -> String {
    format!("{PRESIGN}?{DEFAULT_QUERY}")
}

/// Claims of alice with this issuer and audience.
fn iss_aud_claims(iss: &str, aud: &str) -> Value {
    json!({"sub": "alice", "iss": iss, "aud": aud, "iat": now(), "exp": now() + 3600})
}

/// Alice's token, expired an hour ago.
fn expired_token() -> String {
    hs256(&json!({"sub": "alice", "iat": now() - 7200, "exp": now() - 3600}))
}

/// Kizen's 400 for a file name.
const FILENAME_TOO_LONG: &str =
    r#"{"detail": {"filename": "Ensure this field has no more than 100 characters."}}"#;

/// Kizen answers `status` with a JSON `body`.
fn json_answer(status: u16, body: &str) -> Scripted {
    respond(status, &[("content-type", "application/json")], body)
}

fn kizen_503() -> Scripted {
    respond(503, &[], "unavailable")
}

/// Kizen refuses the gateway's credentials.
fn kizen_401() -> Scripted {
    json_answer(401, r#"{"detail": "Invalid API key."}"#)
}

fn kizen_echoes_the_api_key() -> Scripted {
    json_answer(200, &format!(r#"{{"leaked": "{API_KEY}"}}"#))
}

// ---------------------------------------------------------------------------------------------
// A case, and how it runs
// ---------------------------------------------------------------------------------------------

/// One request, the answer it must provoke, and what it needs first.
struct Case {
    /// Names the case in each assertion about it.
    name: &'static str,
    /// The gateway it runs on (a new one for each case).
    gateway: Gateway,
    /// What happens first, in order; each answer a step gets is checked too.
    given: Vec<Step>,
    /// Kizen's answer to the request, in place of the stand-in's own.
    kizen: Option<(Endpoint, Scripted)>,
    request: Request,
    /// The answer it must provoke: this status, this problem code (when one is named), and these
    /// headers with these values.
    status: u16,
    code: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
}

enum Request {
    Client(fn(&Ctx) -> reqwest::RequestBuilder),
    /// Raw bytes, for requests a client library would not send.
    Raw(fn(&Ctx) -> Vec<u8>),
}

impl Case {
    fn new(name: &'static str, request: fn(&Ctx) -> reqwest::RequestBuilder) -> Self {
        Self::with(name, Request::Client(request))
    }

    /// Alice's presign of the default query.
    fn presign(name: &'static str) -> Self {
        Self::new(name, |c| c.presign(DEFAULT_QUERY))
    }

    /// Alice's plain confirmation of her upload (which a step must issue).
    fn confirm(name: &'static str) -> Self {
        Self::new(name, Ctx::confirm_upload)
    }

    fn raw(name: &'static str, request: fn(&Ctx) -> Vec<u8>) -> Self {
        Self::with(name, Request::Raw(request))
    }

    fn with(name: &'static str, request: Request) -> Self {
        Self {
            name,
            gateway: Gateway::Default,
            given: Vec::new(),
            kizen: None,
            request,
            status: 0,
            code: None,
            headers: Vec::new(),
        }
    }

    fn on(mut self, gateway: Gateway) -> Self {
        self.gateway = gateway;
        self
    }

    fn given(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.given.extend(steps);
        self
    }

    fn kizen(mut self, endpoint: Endpoint, answer: Scripted) -> Self {
        self.kizen = Some((endpoint, answer));
        self
    }

    /// The status it must provoke, whatever the body (Kizen's, hyper's, a success).
    fn answers(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The problem it must provoke.
    fn problem(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The problem codes the case and its steps mean to provoke.
    fn codes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.code
            .into_iter()
            .chain(self.given.iter().filter_map(Step::code))
    }
}

/// The gateways the cases run on: the harness's, or one configured to provoke an answer.
#[derive(Clone, Copy)]
enum Gateway {
    Default,
    /// `auth.issuers` and `auth.audiences` configured.
    IssuerAndAudience,
    /// One presign an hour.
    RateLimitOfOne,
    /// One open upload, one upload a day.
    OneUploadADay,
    /// One byte a day.
    OneByteADay,
    /// One request at a time, and a 1 s upstream timeout.
    OneAtATime,
    /// A 300 ms deadline for the whole request.
    ShortDeadline,
    /// Room for one upload in the store.
    FullStore,
    /// Kizen unreachable.
    NoKizen,
    /// A [`FaultyStore`], for the steps that make it fail.
    FaultyStore,
    /// CORS for [`ORIGIN`], and a head limit over 64 KiB.
    Cors,
}

impl Gateway {
    async fn start(self) -> (TestGateway, Option<Arc<FaultyStore>>) {
        let builder = TestGateway::builder();
        let mut store = None;
        let builder = match self {
            Self::Default => builder,
            Self::IssuerAndAudience => builder.with_config(
                "[auth]\nissuers = [\"https://idp.test/\"]\naudiences = [\"kizen-uploads\"]\n",
            ),
            Self::RateLimitOfOne => builder.with_rate_limit(1, "1h"),
            Self::OneUploadADay => builder.with_config(
                "[quotas.tiers.default]\nmax_outstanding = 1\nmax_uploads_per_day = 1\n",
            ),
            Self::OneByteADay => builder.with_config(
                "[quotas.tiers.default]\nmax_outstanding = 5\nmax_bytes_per_day = 1\n",
            ),
            Self::OneAtATime => builder.with_config(
                "[server]\nmax_concurrent_requests = 1\n[upstream]\nrequest_timeout = \"1s\"\n",
            ),
            Self::ShortDeadline => builder.with_config("[server]\nrequest_timeout = \"300ms\"\n"),
            Self::FullStore => builder.with_config("[store]\nmax_uploads = 1\n"),
            Self::NoKizen => builder.with_config(
                "[upstream]\nbase_url = \"http://127.0.0.1:1\"\nconnect_timeout = \"1s\"\n",
            ),
            Self::FaultyStore => {
                let faulty = Arc::new(FaultyStore::new());
                store = Some(faulty.clone());
                builder.with_store(faulty)
            }
            Self::Cors => builder.with_config(&format!(
                "[cors]\nallowed_origins = [\"{ORIGIN}\"]\n[server]\nmax_header_bytes = 70000\n"
            )),
        };
        (builder.start().await, store)
    }
}

/// What happens before a case's request.
enum Step {
    /// Alice presigns (200): the case's upload.
    Issue,
    /// Alice confirms the upload (200).
    Confirm,
    /// Kizen answers alice's confirmation of the upload with this, and the gateway with a 502 of
    /// this code (releasing the upload).
    ConfirmFails(Scripted, &'static str),
    /// Alice confirms the upload (200), and Kizen says it holds 10 bytes.
    ConfirmTenBytes,
    /// Alice confirms the upload, and Kizen takes 1.5 s over it: the confirmation is left in
    /// flight, and its answer (200) checked after the case's.
    ConfirmInFlight,
    /// Alice presigns, and Kizen never answers: the presign is left in flight, and its answer
    /// (504 `upstream_timeout`, on a gateway with an upstream timeout) checked after the case's.
    PresignHanging,
    /// The clock moves on.
    Advance(Duration),
    /// The [`FaultyStore`] stops answering.
    StoreUnavailable,
    /// The [`FaultyStore`] panics when a confirmation is settled.
    PanicOnConsume,
}

impl Step {
    fn code(&self) -> Option<&'static str> {
        match self {
            Self::ConfirmFails(_, code) => Some(*code),
            Self::PresignHanging => Some("upstream_timeout"),
            _ => None,
        }
    }
}

/// A case's gateway, its users' tokens, and what its steps left.
struct Ctx {
    gw: TestGateway,
    alice: String,
    bob: String,
    store: Option<Arc<FaultyStore>>,
    /// The upload of [`Step::Issue`].
    upload: Option<Issued>,
    /// Requests left in flight, with the answer each must get.
    pending: Vec<(JoinHandle<Exchange>, u16, Option<&'static str>)>,
}

impl Ctx {
    async fn start(gateway: Gateway) -> Self {
        let (gw, store) = gateway.start().await;
        Self {
            alice: gw.token("alice"),
            bob: gw.token("bob"),
            gw,
            store,
            upload: None,
            pending: Vec::new(),
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.gw.url)
    }

    fn upload(&self) -> &Issued {
        self.upload.as_ref().expect("a case given Step::Issue")
    }

    fn faulty_store(&self) -> &FaultyStore {
        self.store
            .as_deref()
            .expect("a case on Gateway::FaultyStore")
    }

    /// Alice's presign of `query`.
    fn presign(&self, query: &str) -> reqwest::RequestBuilder {
        self.gw.presign_request(&self.alice, query)
    }

    /// A presign of the default query with `token`.
    fn presign_with(&self, token: &str) -> reqwest::RequestBuilder {
        self.gw.presign_request(token, DEFAULT_QUERY)
    }

    /// Alice's confirmation with this form.
    fn confirm(&self, form: String) -> reqwest::RequestBuilder {
        self.gw.confirm_request(&self.alice, form)
    }

    /// Alice's plain confirmation of the upload.
    fn confirm_upload(&self) -> reqwest::RequestBuilder {
        self.confirm(self.upload().confirmation())
    }

    /// A browser's preflight of a confirmation from [`ORIGIN`].
    fn preflight(&self, path: &str) -> reqwest::RequestBuilder {
        self.gw
            .client
            .request(reqwest::Method::OPTIONS, self.url(path))
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
    }

    /// Alice's raw request.
    fn raw(&self, method: &str, target: &str, extra: &str, body: &str) -> Vec<u8> {
        raw_request(method, target, &self.alice, extra, body)
    }

    async fn take(&mut self, step: Step, case: &str, checker: &mut Checker) {
        let label = |what: &str| format!("{case}, given {what}");
        match step {
            Step::Issue => {
                let exchange =
                    capture(&label("alice's presign"), self.presign(DEFAULT_QUERY)).await;
                checker.verify(&exchange, 200, None);
                self.upload = Some(Issued::from_answer(exchange.json()));
            }
            Step::Confirm => {
                let exchange = capture(&label("alice's confirmation"), self.confirm_upload()).await;
                checker.verify(&exchange, 200, None);
            }
            Step::ConfirmFails(answer, code) => {
                self.gw.standin.script(Endpoint::Success, answer);
                let exchange = capture(
                    &label(&format!("a confirmation Kizen fails ({code})")),
                    self.confirm_upload(),
                )
                .await;
                checker.verify(&exchange, 502, Some(code));
            }
            Step::ConfirmTenBytes => {
                let upload = self.upload();
                let answer = json!({
                    "id": upload.s3object_id,
                    "key": upload.key,
                    "name": "photo.png",
                    "size_bytes": 10,
                });
                self.gw
                    .standin
                    .script(Endpoint::Success, json_answer(200, &answer.to_string()));
                let exchange =
                    capture(&label("a confirmation of 10 bytes"), self.confirm_upload()).await;
                checker.verify(&exchange, 200, None);
            }
            Step::ConfirmInFlight => {
                self.gw.standin.script(
                    Endpoint::Success,
                    Scripted::Delay(Duration::from_millis(1500)),
                );
                let seen = self.gw.forwarded(SUCCESS).len();
                let (label, request) = (label("a confirmation in flight"), self.confirm_upload());
                let in_flight = tokio::spawn(async move { capture(&label, request).await });
                self.gw.standin.wait_for_requests(SUCCESS, seen + 1).await;
                self.pending.push((in_flight, 200, None));
            }
            Step::PresignHanging => {
                self.gw.standin.script(Endpoint::Presign, Scripted::Hang);
                let seen = self.gw.forwarded(PRESIGN).len();
                let (label, request) = (label("a hanging presign"), self.presign(DEFAULT_QUERY));
                let hanging = tokio::spawn(async move { capture(&label, request).await });
                self.gw.standin.wait_for_requests(PRESIGN, seen + 1).await;
                self.pending.push((hanging, 504, Some("upstream_timeout")));
            }
            Step::Advance(by) => self.gw.clock.advance(by),
            Step::StoreUnavailable => self
                .faulty_store()
                .unavailable
                .store(true, Ordering::SeqCst),
            Step::PanicOnConsume => self
                .faulty_store()
                .panic_on_consume
                .store(true, Ordering::SeqCst),
        }
    }
}

/// Runs every case of `table`, each on a gateway of its own: its steps, its request, the checks
/// of every answer; then prints what the table covered.
async fn run(table: &str, cases: Vec<Case>) {
    let mut checker = Checker::new();
    for case in cases {
        assert_ne!(case.status, 0, "{}: the case names no answer", case.name);
        let mut ctx = Ctx::start(case.gateway).await;
        for step in case.given {
            ctx.take(step, case.name, &mut checker).await;
        }
        if let Some((endpoint, answer)) = case.kizen {
            ctx.gw.standin.script(endpoint, answer);
        }
        let exchange = match case.request {
            Request::Client(request) => capture(case.name, request(&ctx)).await,
            Request::Raw(request) => capture_raw(case.name, &ctx.gw, &request(&ctx)).await,
        };
        checker.verify(&exchange, case.status, case.code);
        for (name, value) in &case.headers {
            assert_eq!(
                exchange.header(name),
                Some(*value),
                "{}: header {name}",
                case.name
            );
        }
        for (pending, status, code) in ctx.pending {
            let exchange = pending.await.expect("a request left in flight");
            checker.verify(&exchange, status, code);
        }
    }
    checker.report(table);
}

/// Checks answers against the document, and keeps count of what they covered.
struct Checker {
    spec: Spec,
    exchanges: usize,
    /// Statuses seen, by operation.
    covered: BTreeMap<String, BTreeSet<u16>>,
    codes: BTreeSet<String>,
}

impl Checker {
    fn new() -> Self {
        Self {
            spec: Spec::load(),
            exchanges: 0,
            covered: BTreeMap::new(),
            codes: BTreeSet::new(),
        }
    }

    /// Asserts that the answer is the one meant (`status`, and `code` when given), and that it
    /// conforms to the document.
    fn verify(&mut self, exchange: &Exchange, status: u16, code: Option<&str>) {
        let got_code = exchange.code();
        assert!(
            exchange.status == status && (code.is_none() || got_code.as_deref() == code),
            "{}: expected {status}{} but got {} {}",
            exchange.label,
            code.map(|c| format!(" {c}")).unwrap_or_default(),
            exchange.status,
            String::from_utf8_lossy(&exchange.body)
                .chars()
                .take(300)
                .collect::<String>()
        );
        let mut violations = check(&mut self.spec, exchange);
        violations.extend(check_invariants(exchange));
        assert!(
            violations.is_empty(),
            "{}: {} {} -> {} violates {SPEC_FILE}:\n  {}",
            exchange.label,
            exchange.method,
            exchange.path,
            exchange.status,
            violations.join("\n  ")
        );

        self.exchanges += 1;
        let operation = match self.spec.target(&exchange.method, &exchange.path) {
            Target::Operation(_) => format!("{} {}", exchange.method, exchange.path),
            Target::OtherMethod(_) => format!("(other method) {}", exchange.path),
            Target::Unmatched => "(unmatched path)".into(),
        };
        self.covered
            .entry(operation)
            .or_default()
            .insert(exchange.status);
        self.codes.extend(got_code);
    }

    /// Prints what the answers covered, and what the document lists that no case provokes.
    fn report(&self, table: &str) {
        eprintln!(
            "{table}: {} responses checked against {SPEC_FILE}:",
            self.exchanges
        );
        for (operation, statuses) in &self.covered {
            eprintln!("  {operation}: {statuses:?}");
        }
        eprintln!(
            "  problem codes seen ({}): {:?}",
            self.codes.len(),
            self.codes
        );
        let doc = &self.spec.doc;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let Some(seen) = self
                    .covered
                    .get(&format!("{} {path}", method.to_ascii_uppercase()))
                else {
                    continue;
                };
                let missing: Vec<&String> = op["responses"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(status, _)| status)
                    .filter(|status| status.parse().is_ok_and(|n: u16| !seen.contains(&n)))
                    .collect();
                if !missing.is_empty() {
                    eprintln!(
                        "  documented, not provoked: {} {path}: {missing:?}",
                        method.to_ascii_uppercase()
                    );
                }
            }
        }
        let provoked: BTreeSet<String> = [presign_cases(), confirm_cases(), other_path_cases()]
            .iter()
            .flatten()
            .flat_map(Case::codes)
            .map(str::to_owned)
            .collect();
        let documented = enum_strings(&doc["components"]["schemas"]["ProblemCode"]["enum"]);
        let unseen: Vec<&String> = documented.difference(&provoked).collect();
        eprintln!("  problem codes documented, provoked by no case: {unseen:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// What the test saw
// ---------------------------------------------------------------------------------------------

/// One request and the answer it got, as seen on the wire.
#[derive(Debug, Clone)]
struct Exchange {
    label: String,
    method: String,
    /// The raw path the request targeted (origin-form, without the query).
    path: String,
    status: u16,
    /// Names lowercased, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Exchange {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> Option<String> {
        self.json()["code"].as_str().map(str::to_owned)
    }

    /// The media type without parameters, lowercased.
    fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }
}

/// Sends a reqwest request and records everything about its answer.
async fn capture(label: &str, request: reqwest::RequestBuilder) -> Exchange {
    let (client, request) = request.build_split();
    let request = request.expect("a buildable request");
    let method = request.method().to_string();
    let path = request.url().path().to_owned();
    let response = client
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{label}: request failed: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{label}: body: {e}"))
        .to_vec();
    Exchange {
        label: label.to_owned(),
        method,
        path,
        status,
        headers,
        body,
    }
}

/// Sends raw bytes (for requests a client library would not send) and parses the answer.
async fn capture_raw(label: &str, gw: &TestGateway, request: &[u8]) -> Exchange {
    let line = request
        .split(|b| *b == b'\r')
        .next()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let mut target = parts.next().unwrap_or("").to_owned();
    // An absolute-form target still names a path: the one the request was aimed at.
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            target = rest.find('/').map_or("/".into(), |i| rest[i..].to_owned());
        }
    }
    let path = target.split('?').next().unwrap_or("").to_owned();

    let answer = raw_http(gw.addr, request).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Exchange {
        label: label.to_owned(),
        method,
        path,
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// The document, resolved and validated
// ---------------------------------------------------------------------------------------------

/// The spec with a cache of compiled validators, keyed by the JSON pointer of the schema.
struct Spec {
    doc: Value,
    validators: HashMap<String, jsonschema::Validator>,
}

/// Where the answers to a request are documented.
enum Target {
    /// The operation `method path`: `/paths/<path>/<method>`.
    Operation(String),
    /// A listed path, a method it has no operation for: every operation of the path must document
    /// the answer (405), and it is checked against the first.
    OtherMethod(Vec<String>),
    /// Any other path: `/x-unmatched-paths`.
    Unmatched,
}

impl Spec {
    fn load() -> Self {
        Self {
            doc: load_spec(),
            validators: HashMap::new(),
        }
    }

    fn at(&self, pointer: &str) -> Option<&Value> {
        self.doc.pointer(pointer)
    }

    /// Follows `$ref`s from `pointer`; returns the pointer of the object finally reached.
    fn resolve(&self, pointer: &str) -> Result<String, String> {
        let mut pointer = pointer.to_owned();
        for _ in 0..32 {
            let value = self
                .at(&pointer)
                .ok_or_else(|| format!("nothing at #{pointer}"))?;
            match value.get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    pointer = reference
                        .strip_prefix('#')
                        .ok_or_else(|| format!("non-local $ref {reference}"))?
                        .to_owned();
                }
                None => return Ok(pointer),
            }
        }
        Err(format!("$ref cycle at #{pointer}"))
    }

    /// Compiles (once) the schema at `pointer`, with the whole document as its root resource so
    /// that every `#/components/...` reference resolves.
    fn compile(&mut self, pointer: &str) -> Result<&jsonschema::Validator, String> {
        if !self.validators.contains_key(pointer) {
            let mut root = self.doc.clone();
            root["$ref"] = Value::String(format!("#{pointer}"));
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&root)
                .map_err(|e| format!("the schema at #{pointer} does not compile: {e}"))?;
            self.validators.insert(pointer.to_owned(), validator);
        }
        Ok(&self.validators[pointer])
    }

    /// Schema errors of `instance` against the schema at `pointer`.
    fn validate(&mut self, pointer: &str, instance: &Value) -> Vec<String> {
        match self.compile(pointer) {
            Ok(validator) => validator
                .iter_errors(instance)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    format!("{e} (at {})", if at.is_empty() { "/" } else { &at })
                })
                .collect(),
            Err(e) => vec![e],
        }
    }

    fn target(&self, method: &str, path: &str) -> Target {
        let method = method.to_ascii_lowercase();
        match self.doc["paths"].get(path) {
            Some(item) if item.get(&method).is_some() => {
                Target::Operation(format!("/paths/{}/{method}", escape(path)))
            }
            Some(item) => Target::OtherMethod(
                item.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(m, _)| HTTP_METHODS.contains(&m.as_str()))
                    .map(|(m, _)| format!("/paths/{}/{m}", escape(path)))
                    .collect(),
            ),
            None => Target::Unmatched,
        }
    }

    /// The key of `responses` that documents `status`: exact, then `4XX`, then `default`.
    fn status_key(responses: &Value, status: u16) -> Option<String> {
        [
            status.to_string(),
            format!("{}XX", status / 100),
            "default".into(),
        ]
        .into_iter()
        .find(|key| responses.get(key).is_some())
    }
}

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn is_json_media_type(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// Checks one exchange against the document; returns its violations.
fn check(spec: &mut Spec, exchange: &Exchange) -> Vec<String> {
    let mut violations = Vec::new();
    let mut fail = |what: String| violations.push(what);
    let responses_ptr = match spec.target(&exchange.method, &exchange.path) {
        Target::Operation(op) => format!("{op}/responses"),
        Target::OtherMethod(ops) => {
            if exchange.status != 405 {
                fail(format!(
                    "{} {} has no operation in the spec, and the answer is {} rather than 405",
                    exchange.method, exchange.path, exchange.status
                ));
            }
            for op in &ops {
                if spec
                    .at(&format!("{op}/responses/{}", exchange.status))
                    .is_none()
                {
                    fail(format!(
                        "{op} does not document {} (for methods without an operation)",
                        exchange.status
                    ));
                }
            }
            match ops.first() {
                Some(op) => format!("{op}/responses"),
                None => {
                    fail(format!(
                        "the path item of {} has no operation",
                        exchange.path
                    ));
                    return violations;
                }
            }
        }
        Target::Unmatched => "/x-unmatched-paths/responses".into(),
    };
    let Some(responses) = spec.at(&responses_ptr).cloned() else {
        fail(format!("no responses at #{responses_ptr}"));
        return violations;
    };
    let Some(key) = Spec::status_key(&responses, exchange.status) else {
        fail(format!(
            "status {} is not documented at #{responses_ptr}",
            exchange.status
        ));
        return violations;
    };
    let response_ptr = match spec.resolve(&format!("{responses_ptr}/{key}")) {
        Ok(ptr) => ptr,
        Err(e) => {
            fail(e);
            return violations;
        }
    };
    let response = spec.at(&response_ptr).cloned().unwrap_or(Value::Null);

    // Media type and body.
    let content = response.get("content").and_then(Value::as_object);
    match (exchange.media_type(), exchange.body.is_empty()) {
        (None, true) => {
            if content.is_some() && response.get("x-bare-response").is_none() {
                fail(format!(
                    "no body and no Content-Type, but #{response_ptr} documents content and no bare response"
                ));
            }
        }
        (None, false) => fail("a body without a Content-Type".into()),
        (Some(media_type), _) => {
            let documented = content.and_then(|content| {
                let (kind, _) = media_type.split_once('/').unwrap_or((&media_type, ""));
                [media_type.clone(), format!("{kind}/*"), "*/*".into()]
                    .into_iter()
                    .find(|k| content.contains_key(k))
            });
            match documented {
                None => fail(format!(
                    "Content-Type {media_type} is not documented for {} (#{response_ptr})",
                    exchange.status
                )),
                Some(documented) => {
                    let schema_ptr =
                        format!("{response_ptr}/content/{}/schema", escape(&documented));
                    if is_json_media_type(&media_type) && spec.at(&schema_ptr).is_some() {
                        match serde_json::from_slice::<Value>(&exchange.body) {
                            Ok(body) => {
                                for error in spec.validate(&schema_ptr, &body) {
                                    fail(format!("body vs #{schema_ptr}: {error}"));
                                }
                            }
                            Err(e) => fail(format!("the {media_type} body is not JSON: {e}")),
                        }
                    }
                }
            }
        }
    }

    // Headers: the required ones present, every documented one that is present valid.
    let headers = response
        .get("headers")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, _) in headers {
        let header_ptr = match spec.resolve(&format!("{response_ptr}/headers/{}", escape(&name))) {
            Ok(ptr) => ptr,
            Err(e) => {
                fail(e);
                continue;
            }
        };
        let header = spec.at(&header_ptr).cloned().unwrap_or(Value::Null);
        let required = header["required"].as_bool().unwrap_or(false);
        match exchange.header(&name) {
            None if required => fail(format!(
                "required header {name} is missing (#{response_ptr})"
            )),
            None => {}
            Some(value) => {
                let schema_ptr = format!("{header_ptr}/schema");
                let Ok(schema_ptr) = spec.resolve(&schema_ptr) else {
                    continue;
                };
                let is_integer = spec.at(&schema_ptr).is_some_and(|s| s["type"] == "integer");
                let instance = match (is_integer, value.parse::<i64>()) {
                    (true, Ok(n)) => json!(n),
                    _ => json!(value),
                };
                for error in spec.validate(&schema_ptr, &instance) {
                    fail(format!("header {name}: {value:?}: {error}"));
                }
            }
        }
    }
    violations
}

/// What error.rs promises beyond what a response object can say: the problem's own `type` and
/// `status` members agree with its code and the HTTP status, and the headers that come with
/// particular codes (`extra_headers`) are there.
fn check_invariants(exchange: &Exchange) -> Vec<String> {
    let mut violations = Vec::new();
    if exchange.header("content-type").is_some() && exchange.header("x-request-id").is_none() {
        violations.push("an answer with a Content-Type but no x-request-id".into());
    }
    if exchange.media_type().as_deref() != Some(PROBLEM_JSON) {
        return violations;
    }
    let body = exchange.json();
    let code = body["code"].as_str().unwrap_or("");
    if body["type"] != format!("urn:kizen-gateway:problem:{code}") {
        violations.push(format!(
            "problem type {} does not name code {code}",
            body["type"]
        ));
    }
    if body["status"] != exchange.status {
        violations.push(format!(
            "problem status {} but HTTP status {}",
            body["status"], exchange.status
        ));
    }
    // Retry-After comes with exactly the codes whose row in the table says so.
    match ErrorCode::ALL.iter().find(|row| row.as_str() == code) {
        Some(row) => {
            let promised = row.retry_after() != RetryAfter::Never;
            if exchange.header("retry-after").is_some() != promised {
                violations.push(format!("{code}: retry-after should be present: {promised}"));
            }
        }
        None => violations.push(format!("{code} is not in the table of codes")),
    }
    let mut expect = |header: &str, present: bool| {
        if exchange.header(header).is_some() != present {
            violations.push(format!(
                "{code}: {header} should be {}",
                if present { "present" } else { "absent" }
            ));
        }
    };
    match code {
        "rate_limited" => {
            for header in [
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ] {
                expect(header, true);
            }
        }
        "daily_upload_quota_exceeded" | "daily_byte_quota_exceeded" => {
            expect("retry-after", true);
            if body["quota"]["resets_at"].as_str().is_none() {
                violations.push(format!("{code}: quota.resets_at missing"));
            }
        }
        "too_many_outstanding_uploads" => {
            expect("retry-after", false);
            if !body["quota"]["resets_at"].is_null() {
                violations.push(format!("{code}: quota.resets_at should be absent"));
            }
        }
        c if c.starts_with("token_") => expect("www-authenticate", true),
        "method_not_allowed" => expect("allow", true),
        _ => {}
    }
    violations
}

// ---------------------------------------------------------------------------------------------
// The document on its own, and against the source
// ---------------------------------------------------------------------------------------------

/// Every problem code the gateway can emit: the one list of them, against which the document's
/// `ProblemCode` is checked.
fn every_error_code_the_gateway_can_emit() -> BTreeSet<String> {
    kizen_gateway::error::ErrorCode::ALL
        .iter()
        .map(|code| code.as_str().to_owned())
        .collect()
}

/// Every field error code validation can report.
fn source_field_error_codes() -> BTreeSet<String> {
    kizen_gateway::validate::FieldErrorCode::ALL
        .iter()
        .map(|code| code.as_str().to_owned())
        .collect()
}

/// The statuses the gateway's problems can have: those of its table of codes.
fn source_statuses() -> BTreeSet<u16> {
    kizen_gateway::error::ErrorCode::ALL
        .iter()
        .map(|code| code.status().as_u16())
        .collect()
}

fn enum_strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Every `$ref` in the document, with the pointer of the object that holds it.
fn collect_refs(value: &Value, at: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                out.push((at.clone(), reference.to_owned()));
            }
            for (key, child) in map {
                collect_refs(child, format!("{at}/{}", escape(key)), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Every `schema` of a parameter, header or media type, and every component schema.
fn schema_pointers(spec: &Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(value: &Value, at: String, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let here = format!("{at}/{}", escape(key));
                    if key == "schema" && child.is_object() {
                        found.push(here);
                    } else {
                        walk(child, here, found);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), found);
                }
            }
            _ => {}
        }
    }
    walk(spec, String::new(), &mut found);
    for name in spec["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, _)| name)
    {
        found.push(format!("/components/schemas/{}", escape(name)));
    }
    found
}

/// Every header name documented on any response, lowercased.
fn documented_headers(spec: &Spec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut responses = Vec::new();
    for (path, item) in spec.doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            for (status, _) in op["responses"].as_object().into_iter().flatten() {
                responses.push(format!(
                    "/paths/{}/{method}/responses/{status}",
                    escape(path)
                ));
            }
        }
    }
    for pointer in responses {
        let Ok(resolved) = spec.resolve(&pointer) else {
            continue;
        };
        for (name, _) in spec.doc.pointer(&resolved).unwrap()["headers"]
            .as_object()
            .into_iter()
            .flatten()
        {
            names.insert(name.to_ascii_lowercase());
        }
    }
    names
}

#[test]
fn the_spec_is_well_formed() {
    let spec = Spec::load();
    let doc = &spec.doc;
    let mut problems: Vec<String> = Vec::new();

    if doc["openapi"] != "3.1.0" {
        problems.push(format!("openapi is {}, not \"3.1.0\"", doc["openapi"]));
    }
    if doc["info"]["title"].as_str().is_none() || doc["info"]["version"].as_str().is_none() {
        problems.push("info.title and info.version are required".into());
    }

    // Every $ref resolves, inside the document.
    let mut refs = Vec::new();
    collect_refs(doc, String::new(), &mut refs);
    for (at, reference) in &refs {
        match reference.strip_prefix('#') {
            Some(pointer) if doc.pointer(pointer).is_some() => {}
            _ => problems.push(format!("#{at}: $ref {reference} does not resolve")),
        }
    }

    // Exactly the two routes (and their preflights); every operation has responses, and every
    // response an explanation.
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let expected: BTreeSet<&str> = [
        kizen_gateway::paths::PRESIGN_PATH,
        kizen_gateway::paths::SUCCESS_PATH,
    ]
    .into();
    if paths != expected {
        problems.push(format!(
            "paths are {paths:?}, the gateway serves {expected:?}"
        ));
    }
    if doc["paths"][PRESIGN]["get"].is_null() || doc["paths"][SUCCESS]["post"].is_null() {
        problems.push("GET presign and POST success must both be operations".into());
    }
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let responses = op["responses"].as_object();
            if responses.is_none_or(|r| r.is_empty()) {
                problems.push(format!("{method} {path} has no responses"));
            }
            for (status, _) in responses.into_iter().flatten() {
                let pointer = format!("/paths/{}/{method}/responses/{status}", escape(path));
                match spec.resolve(&pointer) {
                    Ok(resolved) if doc.pointer(&resolved).unwrap()["description"].is_string() => {}
                    Ok(_) => problems.push(format!("#{pointer} has no description")),
                    Err(e) => problems.push(format!("#{pointer}: {e}")),
                }
            }
        }
    }
    assert!(operations >= 2, "no operations found");

    // Every schema is a valid JSON Schema 2020-12 schema, and compiles with the document's refs.
    let mut compiler = Spec::load();
    for pointer in schema_pointers(doc) {
        let schema = doc.pointer(&pointer).unwrap();
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            problems.push(format!("#{pointer} is not a 2020-12 schema: {e}"));
        }
        if let Err(e) = compiler.compile(&pointer) {
            problems.push(e);
        }
    }

    // The problem codes: exactly those the source can produce.
    let documented = enum_strings(&doc["components"]["schemas"]["ProblemCode"]["enum"]);
    let produced = every_error_code_the_gateway_can_emit();
    assert!(
        produced.len() >= 30,
        "the source scan found too few codes: {produced:?}"
    );
    for code in produced.difference(&documented) {
        problems.push(format!(
            "code {code} is produced by src/ but missing from ProblemCode"
        ));
    }
    for code in documented.difference(&produced) {
        problems.push(format!(
            "ProblemCode lists {code}, which src/ never produces"
        ));
    }
    // Each code is placed under at least one status-specific problem schema.
    let mut placed = BTreeSet::new();
    for (_, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        for part in schema["allOf"].as_array().into_iter().flatten() {
            let code = &part["properties"]["code"];
            placed.extend(enum_strings(&code["enum"]));
            if let Some(c) = code["const"].as_str() {
                placed.insert(c.to_owned());
            }
        }
    }
    for code in documented.difference(&placed) {
        problems.push(format!(
            "code {code} is not tied to any status-specific problem schema"
        ));
    }

    // The field error codes.
    let documented =
        enum_strings(&doc["components"]["schemas"]["FieldError"]["properties"]["code"]["enum"]);
    let produced = source_field_error_codes();
    if documented != produced {
        problems.push(format!(
            "FieldError codes: the spec lists {documented:?}, src/ produces {produced:?}"
        ));
    }

    // Every status GatewayError can give is documented on some operation.
    let mut statuses = BTreeSet::new();
    for (_, item) in doc["paths"].as_object().into_iter().flatten() {
        for (_, op) in item.as_object().into_iter().flatten() {
            for (status, _) in op["responses"].as_object().into_iter().flatten() {
                if let Ok(n) = status.parse::<u16>() {
                    statuses.insert(n);
                }
            }
        }
    }
    for status in source_statuses().difference(&statuses) {
        problems.push(format!(
            "error.rs can answer {status}, which no operation documents"
        ));
    }
    // hyper's own answers.
    for status in [400, 414, 431] {
        if !statuses.contains(&status) {
            problems.push(format!(
                "hyper can answer {status}, which no operation documents"
            ));
        }
    }

    // The eleven sources.
    let sources = doc["paths"][PRESIGN]["get"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "source")
        .map(|p| enum_strings(&p["schema"]["enum"]))
        .unwrap_or_default();
    let known: BTreeSet<String> = kizen_gateway::config::KIZEN_SOURCES
        .iter()
        .map(|s| s.to_string())
        .collect();
    if sources != known {
        problems.push(format!(
            "source enum {sources:?} is not KIZEN_SOURCES {known:?}"
        ));
    }

    // Every header a browser may read is documented on some response.
    let headers = documented_headers(&spec);
    for exposed in kizen_gateway::router::EXPOSED_HEADERS {
        if !headers.contains(exposed) {
            problems.push(format!(
                "exposed header {exposed} is documented on no response"
            ));
        }
    }
    if !headers.contains(kizen_gateway::routes::confirm::IDEMPOTENT_REPLAYED) {
        problems.push("idempotent-replayed is not documented".into());
    }

    // The problem media type.
    let problem_media = doc.pointer(&format!(
        "/components/responses/Unauthorized/content/{}",
        escape(PROBLEM_JSON)
    ));
    if problem_media.is_none() {
        problems.push(format!("errors are not documented as {PROBLEM_JSON}"));
    }

    for problem in &problems {
        eprintln!("SPEC: {problem}");
    }
    assert!(
        problems.is_empty(),
        "{} problems with {SPEC_FILE}",
        problems.len()
    );
}
