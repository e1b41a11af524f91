//! `GET /api/s3/presigned-post`: validation of every field, the re-encoded upstream call, the
//! per-user rate limit and outstanding-upload cap, and the pass-through of the upstream's answer.

use std::{sync::Arc, time::Duration};

use kizen_gateway::{
    standin::{Endpoint, Scripted},
    store::{MemoryStore, StoreLimits, UploadStore},
};
use serde_json::Value;

use crate::support::*;

/// A header as an integer, panicking with the header's name when absent or not a number.
fn int_header(response: &reqwest::Response, name: &str) -> u64 {
    let value = response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} is missing"))
        .to_str()
        .unwrap();
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not an integer: {value:?}"))
}

/// The `errors` array of an invalid_input problem, as (field, code) pairs.
async fn field_errors(response: reqwest::Response) -> Vec<(String, String)> {
    let body = assert_problem(response, 400, "invalid_input").await;
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {body}"))
        .iter()
        .map(|e| {
            assert!(
                e["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "each field error has a detail: {e}"
            );
            (
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(field: &str, code: &str) -> (String, String) {
    (field.to_owned(), code.to_owned())
}

fn query(contenttype: &str, filename: &str, source: &str) -> String {
    format!("contenttype={contenttype}&filename={filename}&source={source}")
}

/// A presign answer as the real API shapes it, with unusual formatting and an extra field, to
/// show the body is passed on byte for byte.
const SCRIPTED_ANSWER: &str = "{ \"url\": \"https://bucket.example/upload\",\n  \"fields\": {\"key\": \"uploads/b/1f0e6c1e-3a63-4b8e-9d55-0d1b3c2f7a10/photo.png\", \"policy\": \"p\"},\n  \"s3object_id\": \"1f0e6c1e-3a63-4b8e-9d55-0d1b3c2f7a10\",\n  \"max_file_size\": 1048576,\n  \"expires_at\": \"2099-01-01T00:00:00Z\", \"extra\": [1, 2.50, \"\\u00e9\"] }";

#[tokio::test]
async fn valid_presign_returns_the_upstream_body_verbatim_with_rate_limit_headers() {
    let gw = TestGateway::start().await;
    gw.standin.script(
        Endpoint::Presign,
        Scripted::Respond {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: SCRIPTED_ANSWER.into(),
        },
    );
    let response = gw.presign(&gw.token("alice")).await;
    assert_eq!(response.status(), 200);
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        int_header(&response, name);
    }
    assert_eq!(int_header(&response, "ratelimit-limit"), 1000);
    assert_eq!(int_header(&response, "ratelimit-remaining"), 999);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(response.text().await.unwrap(), SCRIPTED_ANSWER);
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
}

#[tokio::test]
async fn the_stand_in_answer_is_passed_on_and_is_usable() {
    let gw = TestGateway::start().await;
    let response = gw.presign(&gw.token("alice")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["url"].as_str().is_some_and(|u| u.ends_with("/upload")));
    assert!(body["fields"]["key"].as_str().is_some());
    assert!(
        uuid::Uuid::try_parse(body["s3object_id"].as_str().unwrap()).is_ok(),
        "{body}"
    );
}

#[tokio::test]
async fn upstream_gets_the_validated_parameters_re_encoded_in_a_fixed_order() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    // The client's order and encoding (`+` for space, raw UTF-8 percent-encoded) differ from the
    // gateway's: what goes upstream is built from the validated values, not copied.
    let response = gw
        .presign_query(
            &token,
            "source=field_value&filename=r%C3%A9sum%C3%A9+2026.pdf&contenttype=application%2Fpdf",
        )
        .await;
    assert_eq!(response.status(), 200);

    let forwarded = gw.forwarded(PRESIGN);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].method, "GET");
    assert_eq!(
        forwarded[0].query_pairs(),
        vec![
            ("contenttype".to_owned(), "application/pdf".to_owned()),
            ("filename".to_owned(), "résumé 2026.pdf".to_owned()),
            ("source".to_owned(), "field_value".to_owned()),
        ]
    );
    // The stand-in built the key from the filename it decoded: the name round-tripped.
    let body: Value = response.json().await.unwrap();
    assert!(
        body["fields"]["key"]
            .as_str()
            .unwrap()
            .ends_with("/résumé 2026.pdf"),
        "{body}"
    );
}

#[tokio::test]
async fn every_invalid_field_is_listed_at_once_and_nothing_is_forwarded() {
    let gw = TestGateway::start().await;
    let response = gw
        .presign_query(&gw.token("alice"), &query("png", "..%2Fx", "nope"))
        .await;
    let errors = field_errors(response).await;
    assert_eq!(
        errors,
        vec![
            pair("contenttype", "invalid"),
            pair("filename", "invalid"),
            pair("source", "invalid"),
        ]
    );
    assert!(gw.forwarded(PRESIGN).is_empty());
}

#[tokio::test]
async fn missing_fields_are_each_required() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");

    let errors = field_errors(gw.presign_query(&token, "").await).await;
    assert_eq!(
        errors,
        vec![
            pair("contenttype", "required"),
            pair("filename", "required"),
            pair("source", "required"),
        ]
    );

    // Empty values count as missing.
    let errors = field_errors(
        gw.presign_query(
            &token,
            "contenttype=image%2Fpng&filename=&source=field_value",
        )
        .await,
    )
    .await;
    assert_eq!(errors, vec![pair("filename", "required")]);

    let errors = field_errors(
        gw.presign_query(&token, "contenttype=image%2Fpng&filename=a.png")
            .await,
    )
    .await;
    assert_eq!(errors, vec![pair("source", "required")]);

    assert!(gw.forwarded(PRESIGN).is_empty());
}

#[tokio::test]
async fn a_duplicate_parameter_is_refused() {
    let gw = TestGateway::start().await;
    let response = gw
        .presign_query(
            &gw.token("alice"),
            &format!("{DEFAULT_QUERY}&filename=other.png"),
        )
        .await;
    let errors = field_errors(response).await;
    assert_eq!(errors, vec![pair("filename", "duplicate")]);
    assert!(gw.forwarded(PRESIGN).is_empty());
}

#[tokio::test]
async fn an_unknown_parameter_is_refused() {
    let gw = TestGateway::start().await;
    let response = gw
        .presign_query(
            &gw.token("alice"),
            &format!("{DEFAULT_QUERY}&business_id=someone-else"),
        )
        .await;
    let errors = field_errors(response).await;
    assert_eq!(errors, vec![pair("business_id", "unknown_field")]);
    assert!(gw.forwarded(PRESIGN).is_empty());
}

#[tokio::test]
async fn filename_rules() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");

    let just_fits = format!("{}.pdf", "a".repeat(251));
    assert_eq!(just_fits.len(), 255);
    let response = gw
        .presign_query(
            &token,
            &query("application%2Fpdf", &just_fits, "field_value"),
        )
        .await;
    assert_eq!(response.status(), 200, "a 255-byte filename is accepted");
    assert_eq!(gw.forwarded(PRESIGN)[0].query_pairs()[1].1, just_fits);

    let too_long = format!("{}.pdf", "a".repeat(252));
    assert_eq!(too_long.len(), 256);
    // 128 two-byte characters: 128 chars but 256 bytes; the limit is in bytes.
    let too_long_utf8 = "%C3%A9".repeat(128);
    for bad in [
        too_long.as_str(),
        too_long_utf8.as_str(),
        ".",
        "..",
        "a%2Fb.png",
        "%2Fetc%2Fpasswd",
        "a%5Cb.png",
        "..%5C..%5Cx",
        "a%00b.png",
        "a%0Ab.png",
        "a%0Db.png",
        "a%09b.png",
        "a%7Fb.png",
        "a%C2%85b.png",
        "evil%E2%80%AEgnp.exe",
        "a%E2%80%8Fb.png",
        "a%E2%81%A6b.png",
        "a%FFb.png",
    ] {
        let response = gw
            .presign_query(&token, &query("image%2Fpng", bad, "field_value"))
            .await;
        let errors = field_errors(response).await;
        assert_eq!(errors, vec![pair("filename", "invalid")], "filename {bad}");
    }
    assert_eq!(gw.forwarded(PRESIGN).len(), 1, "no invalid name forwarded");
}

#[tokio::test]
async fn source_must_be_one_of_the_eleven_kizen_values() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    for bad in [
        "nope",
        "Field_Value",
        "field_value%20",
        "public_images",
        "%2A",
    ] {
        let response = gw
            .presign_query(&token, &query("image%2Fpng", "a.png", bad))
            .await;
        assert_eq!(
            field_errors(response).await,
            vec![pair("source", "invalid")],
            "source {bad}"
        );
    }
    assert!(gw.forwarded(PRESIGN).is_empty());

    for good in kizen_gateway::config::KIZEN_SOURCES {
        let response = gw
            .presign_query(&token, &query("image%2Fpng", "a.png", good))
            .await;
        assert_eq!(response.status(), 200, "source {good}");
    }
    assert_eq!(gw.forwarded(PRESIGN).len(), 11);
}

#[tokio::test]
async fn sources_outside_the_configured_allowlist_are_not_allowed() {
    let gw = TestGateway::builder()
        .with_config("[presign]\nallowed_sources = [\"public_image\"]\n")
        .start()
        .await;
    let token = gw.token("alice");

    let response = gw
        .presign_query(&token, &query("image%2Fpng", "a.png", "field_value"))
        .await;
    assert_eq!(
        field_errors(response).await,
        vec![pair("source", "not_allowed")]
    );
    // Outside the eleven is still "invalid", not "not_allowed".
    let response = gw
        .presign_query(&token, &query("image%2Fpng", "a.png", "nope"))
        .await;
    assert_eq!(
        field_errors(response).await,
        vec![pair("source", "invalid")]
    );
    assert!(gw.forwarded(PRESIGN).is_empty());

    let response = gw
        .presign_query(&token, &query("image%2Fpng", "a.png", "public_image"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
}

#[tokio::test]
async fn content_type_allowlist() {
    let gw = TestGateway::builder()
        .with_config("[presign]\nallowed_content_types = [\"image/*\", \"application/pdf\"]\n")
        .start()
        .await;
    let token = gw.token("alice");

    for good in ["image%2Fpng", "image%2Fjpeg", "application%2Fpdf"] {
        let response = gw
            .presign_query(&token, &query(good, "a.bin", "field_value"))
            .await;
        assert_eq!(response.status(), 200, "contenttype {good}");
    }
    assert_eq!(gw.forwarded(PRESIGN).len(), 3);

    for (value, code) in [
        ("text%2Fplain", "not_allowed"),
        ("application%2Fjson", "not_allowed"),
        ("imagex%2Fpng", "not_allowed"),
        ("image%2Fpng%3B%20charset%3Dx", "invalid"),
        ("image%2Fpng;charset=x", "invalid"),
        ("image", "invalid"),
        ("image%2F", "invalid"),
        ("%2Fpng", "invalid"),
        ("image%2Fpng%2Fx", "invalid"),
    ] {
        let response = gw
            .presign_query(&token, &query(value, "a.bin", "field_value"))
            .await;
        assert_eq!(
            field_errors(response).await,
            vec![pair("contenttype", code)],
            "contenttype {value}"
        );
    }
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        3,
        "nothing refused was forwarded"
    );
}

#[tokio::test]
async fn the_rate_limit_refuses_the_fourth_presign_of_a_user() {
    let gw = TestGateway::builder()
        .with_rate_limit(3, "1h")
        .start()
        .await;
    let alice = gw.token("alice");

    for expected_remaining in [2, 1, 0] {
        let response = gw.presign(&alice).await;
        assert_eq!(response.status(), 200);
        assert_eq!(int_header(&response, "ratelimit-limit"), 3);
        assert_eq!(
            int_header(&response, "ratelimit-remaining"),
            expected_remaining
        );
        int_header(&response, "ratelimit-reset");
    }

    let response = gw.presign(&alice).await;
    let retry_after = int_header(&response, "retry-after");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    // One token comes back every 20 minutes.
    assert!(retry_after <= 20 * 60, "Retry-After {retry_after}");
    assert_eq!(int_header(&response, "ratelimit-limit"), 3);
    assert_eq!(int_header(&response, "ratelimit-remaining"), 0);
    let reset = int_header(&response, "ratelimit-reset");
    assert!(
        reset >= 1 && reset >= retry_after,
        "RateLimit-Reset {reset}"
    );
    assert_problem(response, 429, "rate_limited").await;
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        3,
        "the refused one is not forwarded"
    );

    // Another user has a budget of their own.
    let response = gw.presign(&gw.token("bob")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(int_header(&response, "ratelimit-remaining"), 2);
    assert_eq!(gw.forwarded(PRESIGN).len(), 4);

    // And alice is still refused.
    assert_problem(gw.presign(&alice).await, 429, "rate_limited").await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 4);
}

#[tokio::test]
async fn invalid_input_does_not_consume_the_budget() {
    let gw = TestGateway::builder()
        .with_rate_limit(3, "1h")
        .start()
        .await;
    let alice = gw.token("alice");
    for _ in 0..5 {
        let response = gw
            .presign_query(&alice, &query("png", "a.png", "field_value"))
            .await;
        assert_eq!(
            field_errors(response).await,
            vec![pair("contenttype", "invalid")]
        );
    }
    for expected_remaining in [2, 1, 0] {
        let response = gw.presign(&alice).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            int_header(&response, "ratelimit-remaining"),
            expected_remaining
        );
    }
    assert_problem(gw.presign(&alice).await, 429, "rate_limited").await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 3);
}

#[tokio::test]
async fn the_outstanding_cap_holds_until_an_upload_is_confirmed() {
    let gw = TestGateway::builder()
        .with_config("[quotas.tiers.default]\nmax_outstanding = 2\n")
        .start()
        .await;
    let alice = gw.token("alice");
    let first = gw.issue(&alice).await;
    let _second = gw.issue(&alice).await;

    assert_problem(
        gw.presign(&alice).await,
        429,
        "too_many_outstanding_uploads",
    )
    .await;
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        2,
        "the refused one is not forwarded"
    );

    // Another user has a cap of their own.
    let bob = gw.token("bob");
    gw.issue(&bob).await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 3);

    let response = gw.confirm(&alice, &first).await;
    assert_eq!(response.status(), 200);
    gw.issue(&alice).await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 4);

    // Back at two outstanding: refused again.
    assert_problem(
        gw.presign(&alice).await,
        429,
        "too_many_outstanding_uploads",
    )
    .await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 4);
}

#[tokio::test]
async fn an_upstream_400_passes_through_and_nothing_is_recorded() {
    let store = Arc::new(MemoryStore::new(StoreLimits {
        max_uploads: 1000,
        max_uploads_per_user: 100,
        remember_expired: Duration::from_secs(3600),
    }));
    let gw = TestGateway::builder()
        .with_store(store.clone())
        .start()
        .await;
    let upstream_body =
        r#"{"detail": {"filename": "Ensure this field has no more than 100 characters."}}"#;
    gw.standin.script(
        Endpoint::Presign,
        Scripted::Respond {
            status: 400,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("set-cookie".into(), "session=upstream".into()),
            ],
            body: upstream_body.into(),
        },
    );
    let response = gw.presign(&gw.token("alice")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert!(
        response.headers().get("set-cookie").is_none(),
        "upstream headers are filtered"
    );
    assert_eq!(response.text().await.unwrap(), upstream_body);
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
    assert_eq!(
        store.entry_count().await.unwrap(),
        Some(0),
        "nothing recorded"
    );

    // The next (unscripted) presign is recorded, so the check above could have failed.
    gw.issue(&gw.token("alice")).await;
    assert_eq!(store.entry_count().await.unwrap(), Some(1));
}
