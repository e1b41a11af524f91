//! A fast, fixed fake of the two Kizen routes the gateway calls, for benchmarks.
//!
//! `GET /api/s3/presigned-post` answers a presigned POST with a fresh `s3object_id` (UUID v4),
//! `fields.key` = `uploads/<that id>/a.png` and `expires_at` five minutes ahead; `POST
//! /api/s3/success` answers a stored S3Object with `size_bytes`. Both need the expected
//! `X-API-KEY` (and `X-BUSINESS-ID` when one is given), else 403. Anything else is 404.

use std::{net::SocketAddr, sync::Arc};

use bench::{Options, serve};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_TYPE, HeaderValue},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

const PROGRAM: &str = "bench-upstream";
const USAGE: &str = "--listen ADDR --api-key KEY [--business-id ID]";

const STORED_OBJECT: &str = concat!(
    r#"{"id":"3fa85f64-5717-4562-b3fc-2c963f66afa6","created":"2026-11-22T10:00:00Z","#,
    r#""key":"uploads/3fa85f64-5717-4562-b3fc-2c963f66afa6/a.png","name":"a.png","#,
    r#""url":"http://127.0.0.1:9000/bench-bucket/uploads/3fa85f64-5717-4562-b3fc-2c963f66afa6/a.png","#,
    r#""thumbnail_url":null,"size_bytes":1024,"size_formatted":"1.0 KB","content_type":"image/png","#,
    r#""is_public":false,"common_key":null,"is_common":false,"metadata":{},"employee":{}}"#
);

struct Expected {
    api_key: String,
    business_id: Option<String>,
}

impl Expected {
    fn allows(&self, headers: &HeaderMap) -> bool {
        let is = |name: &str, want: &str| {
            headers
                .get(name)
                .is_some_and(|v| v.as_bytes() == want.as_bytes())
        };
        is("x-api-key", &self.api_key)
            && self
                .business_id
                .as_deref()
                .is_none_or(|id| is("x-business-id", id))
    }
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn presign_answer() -> String {
    let id = uuid::Uuid::new_v4();
    let expires_at = (OffsetDateTime::now_utc() + time::Duration::minutes(5))
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    format!(
        concat!(
            r#"{{"url":"http://127.0.0.1:9000/bench-bucket","fields":{{"key":"uploads/{id}/a.png","#,
            r#""policy":"eyJleHBpcmF0aW9uIjoiMjAyNi0xMS0yMlQxMDowNTowMFoifQ==","#,
            r#""x-amz-algorithm":"AWS4-HMAC-SHA256","#,
            r#""x-amz-credential":"bench/20261122/us-east-1/s3/aws4_request","#,
            r#""x-amz-date":"20261122T100000Z","#,
            r#""x-amz-signature":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}},"#,
            r#""s3object_id":"{id}","max_file_size":1048576,"expires_at":"{expires_at}"}}"#
        ),
        id = id,
        expires_at = expires_at
    )
}

async fn handle(expected: &Expected, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let allowed = expected.allows(request.headers());
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/api/s3/presigned-post") if allowed => {
            json(StatusCode::OK, presign_answer())
        }
        (&Method::POST, "/api/s3/success") if allowed => {
            // Read the form to its end, as a real server would, before answering.
            match request.into_body().collect().await {
                Ok(_) => json(StatusCode::OK, STORED_OBJECT),
                Err(_) => json(StatusCode::BAD_REQUEST, r#"{"detail":"unreadable body"}"#),
            }
        }
        (&Method::GET, "/api/s3/presigned-post") | (&Method::POST, "/api/s3/success") => json(
            StatusCode::FORBIDDEN,
            r#"{"detail":"missing or wrong X-API-KEY/X-BUSINESS-ID"}"#,
        ),
        _ => json(StatusCode::NOT_FOUND, r#"{"detail":"not found"}"#),
    }
}

#[tokio::main]
async fn main() {
    let options = Options::parse(PROGRAM, USAGE, &["listen", "api-key", "business-id"]);
    let listen: SocketAddr = options.parsed("listen", "127.0.0.1:18080".parse().unwrap());
    let expected = Arc::new(Expected {
        api_key: options.required("api-key").to_owned(),
        business_id: options.get("business-id").map(str::to_owned),
    });
    serve(PROGRAM, listen, move |request| {
        let expected = Arc::clone(&expected);
        async move { handle(&expected, request).await }
    })
    .await;
}
