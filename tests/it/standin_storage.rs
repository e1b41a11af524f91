//! The dev stand-in's storage URL behaves like S3's POST Object for a browser: it checks the POST
//! policy it issued (signature, expiry, key, Content-Type, size range, no extra fields), answers
//! 204 with `ETag` and `Location`, S3 XML errors otherwise, and CORS (ETag exposed, preflights)
//! on every answer. The browser tests in `clients/js` drive the same URL from Chromium.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use kizen_gateway::standin::{Standin, StandinConfig};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::*;

const ORIGIN: &str = "http://app.localhost:5173";
const MAX: usize = 1000;

struct Storage {
    standin: Standin,
    url: String,
    client: reqwest::Client,
}

/// A stand-in alone on a free port, its presigned POSTs valid for `ttl`.
async fn storage(ttl: Duration) -> Storage {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let standin = Standin::new(StandinConfig {
        api_key: API_KEY.into(),
        business_id: BUSINESS_ID.into(),
        user_id: None,
        public_base: url.clone(),
        max_file_size: MAX,
        upload_ttl: ttl,
    });
    let router = standin.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    // reqwest is built without a TLS provider of its own; the gateway installs one at start.
    kizen_gateway::tls::install_crypto_provider();
    Storage {
        standin,
        url,
        client: reqwest::Client::new(),
    }
}

impl Storage {
    /// A presign answer, asked of the stand-in directly with the gateway's credentials.
    async fn presign(&self) -> Value {
        let response = self
            .client
            .get(format!(
                "{}{PRESIGN}?contenttype=text%2Fplain&filename=a+b.txt&source=field_value",
                self.url
            ))
            .header("x-api-key", API_KEY)
            .header("x-business-id", BUSINESS_ID)
            .header("x-user-id", KIZEN_USER_ID)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// POSTs `fields` in order, then (when `Some`) the file, as a browser's FormData would.
    async fn post(&self, fields: &[(String, String)], file: Option<&[u8]>) -> reqwest::Response {
        self.post_parts(fields, file, &[]).await
    }

    async fn post_parts(
        &self,
        fields: &[(String, String)],
        file: Option<&[u8]>,
        after_file: &[(String, String)],
    ) -> reqwest::Response {
        let boundary = "----standin-test-boundary";
        let mut body = Vec::new();
        let mut field = |name: &str, value: &[u8], filename: Option<&str>| {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match filename {
                Some(f) => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(value);
            body.extend_from_slice(b"\r\n");
        };
        for (name, value) in fields {
            field(name, value.as_bytes(), None);
        }
        if let Some(file) = file {
            field("file", file, Some("blob"));
        }
        for (name, value) in after_file {
            field(name, value.as_bytes(), None);
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        self.client
            .post(format!("{}/upload", self.url))
            .header("origin", ORIGIN)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

/// The presigned fields, in the answer's order.
fn fields_of(presigned: &Value) -> Vec<(String, String)> {
    presigned["fields"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn with(fields: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| {
            let v = if n == name { value } else { v.as_str() };
            (n.clone(), v.to_owned())
        })
        .collect()
}

fn without(fields: &[(String, String)], name: &str) -> Vec<(String, String)> {
    fields.iter().filter(|(n, _)| n != name).cloned().collect()
}

/// One refused form: what changed, the form, its status, S3 code and part of its message.
type Case = (
    &'static str,
    Vec<(String, String)>,
    u16,
    &'static str,
    &'static str,
);

fn header<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Asserts an S3 XML error answer with `status` and `<Code>code</Code>`, with CORS headers, and
/// returns its body.
async fn assert_s3_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(header(&response, "content-type"), "application/xml");
    assert_eq!(header(&response, "access-control-allow-origin"), ORIGIN);
    let body = response.text().await.unwrap();
    assert!(
        body.contains(&format!("<Error><Code>{code}</Code><Message>")),
        "{body}"
    );
    body
}

#[tokio::test]
async fn the_policy_is_a_base64_json_document_of_the_issued_upload() {
    let s3 = storage(Duration::from_secs(300)).await;
    let presigned = s3.presign().await;
    let policy: Value = serde_json::from_slice(
        &STANDARD
            .decode(presigned["fields"]["policy"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(policy["expiration"], presigned["expires_at"]);
    let conditions = policy["conditions"].as_array().unwrap();
    let key = &presigned["fields"]["key"];
    assert!(conditions.contains(&serde_json::json!({ "key": key })));
    assert!(conditions.contains(&serde_json::json!({"Content-Type": "text/plain"})));
    assert!(conditions.contains(&serde_json::json!(["content-length-range", 0, MAX])));
    for field in ["x-amz-algorithm", "x-amz-credential", "x-amz-date"] {
        assert!(
            conditions.contains(&serde_json::json!({ field: presigned["fields"][field] })),
            "{field} is not in the policy"
        );
    }
}

#[tokio::test]
async fn a_form_within_the_policy_is_stored_and_answered_204_with_etag_and_location() {
    let s3 = storage(Duration::from_secs(300)).await;
    let presigned = s3.presign().await;
    let key = presigned["fields"]["key"].as_str().unwrap();
    let bytes: Vec<u8> = (0..MAX).map(|i| (i % 251) as u8).collect();
    let response = s3.post(&fields_of(&presigned), Some(&bytes)).await;
    assert_eq!(response.status(), 204);
    let etag = header(&response, "etag").to_owned();
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'));
    assert_eq!(
        header(&response, "location"),
        format!("{}/upload/{}", s3.url, key.replace(' ', "%20"))
    );
    assert_eq!(header(&response, "access-control-allow-origin"), ORIGIN);
    let exposed = header(&response, "access-control-expose-headers").to_ascii_lowercase();
    assert!(exposed.contains("etag") && exposed.contains("location"));
    let stored = s3.standin.object(key).expect("stored");
    assert_eq!(stored.bytes, bytes);
    assert_eq!(stored.etag, etag);
    assert_eq!(stored.content_type, "text/plain");
}

#[tokio::test]
async fn a_browser_preflight_is_answered_for_post_only() {
    let s3 = storage(Duration::from_secs(300)).await;
    let preflight = |method: &'static str| {
        s3.client
            .request(reqwest::Method::OPTIONS, format!("{}/upload", s3.url))
            .header("origin", ORIGIN)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "x-requested-with")
            .send()
    };
    let allowed = preflight("POST").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(header(&allowed, "access-control-allow-origin"), ORIGIN);
    assert_eq!(header(&allowed, "access-control-allow-methods"), "POST");
    assert_eq!(
        header(&allowed, "access-control-allow-headers"),
        "x-requested-with"
    );
    let refused = preflight("PUT").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn a_file_over_the_policy_range_is_entity_too_large_and_not_stored() {
    let s3 = storage(Duration::from_secs(300)).await;
    let presigned = s3.presign().await;
    let response = s3.post(&fields_of(&presigned), Some(&[7; MAX + 1])).await;
    let body = assert_s3_error(response, 400, "EntityTooLarge").await;
    assert!(body.contains(&format!("<ProposedSize>{}</ProposedSize>", MAX + 1)));
    assert!(body.contains(&format!("<MaxSizeAllowed>{MAX}</MaxSizeAllowed>")));
    let key = presigned["fields"]["key"].as_str().unwrap();
    assert!(s3.standin.object(key).is_none());
}

#[tokio::test]
async fn an_expired_policy_is_refused() {
    let s3 = storage(Duration::ZERO).await;
    let presigned = s3.presign().await;
    let response = s3.post(&fields_of(&presigned), Some(b"late")).await;
    let body = assert_s3_error(response, 403, "AccessDenied").await;
    assert!(body.contains("Policy expired"), "{body}");
}

#[tokio::test]
async fn forms_outside_the_policy_are_refused_with_s3_errors() {
    let s3 = storage(Duration::from_secs(300)).await;
    let presigned = s3.presign().await;
    let fields = fields_of(&presigned);
    let other = s3.presign().await;
    // The policy re-encoded with a larger size range: no longer the one that was signed.
    let loosened = {
        let text = String::from_utf8(
            STANDARD
                .decode(presigned["fields"]["policy"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        STANDARD.encode(text.replace(&format!(",{MAX}]"), ",999999999]"))
    };
    let mut extra = fields.clone();
    extra.push(("acl".into(), "public-read".into()));
    // (case, form, status, S3 code, part of the message)
    let cases: Vec<Case> = vec![
        (
            "another key",
            with(&fields, "key", "uploads/elsewhere.txt"),
            403,
            "AccessDenied",
            "Policy Condition failed: [\"eq\", \"$key\"",
        ),
        (
            "another Content-Type",
            with(&fields, "Content-Type", "text/html"),
            403,
            "AccessDenied",
            "$Content-Type",
        ),
        (
            "a field the policy does not name",
            extra,
            403,
            "AccessDenied",
            "Extra input fields: acl",
        ),
        (
            "a changed policy",
            with(&fields, "policy", &loosened),
            403,
            "SignatureDoesNotMatch",
            "",
        ),
        (
            "another upload's signature",
            with(
                &fields,
                "x-amz-signature",
                other["fields"]["x-amz-signature"].as_str().unwrap(),
            ),
            403,
            "SignatureDoesNotMatch",
            "",
        ),
        (
            "no x-amz-date",
            without(&fields, "x-amz-date"),
            400,
            "InvalidArgument",
            "'x-amz-date'",
        ),
        (
            "no policy",
            without(&fields, "policy"),
            400,
            "InvalidArgument",
            "'policy'",
        ),
        (
            "no signature",
            without(&fields, "x-amz-signature"),
            400,
            "InvalidArgument",
            "'x-amz-signature'",
        ),
    ];
    for (case, form, status, code, message) in cases {
        let response = s3.post(&form, Some(b"data")).await;
        assert_eq!(response.status(), status, "{case}");
        let body = assert_s3_error(response, status, code).await;
        assert!(body.contains(message), "{case}: {body}");
    }
    let no_file = s3.post(&fields, None).await;
    assert_s3_error(no_file, 400, "InvalidArgument").await;
    let field_after_file = s3
        .post_parts(
            &without(&fields, "x-amz-date"),
            Some(b"data"),
            &[(
                "x-amz-date".into(),
                presigned["fields"]["x-amz-date"].as_str().unwrap().into(),
            )],
        )
        .await;
    assert_s3_error(field_after_file, 400, "InvalidArgument").await;
    let key = presigned["fields"]["key"].as_str().unwrap();
    assert!(
        s3.standin.object(key).is_none(),
        "a refused form was stored"
    );
    // The untouched form still goes through: the refusals were the changes, not the upload.
    assert_eq!(s3.post(&fields, Some(b"data")).await.status(), 204);
}
