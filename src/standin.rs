//! A local stand-in for the Kizen upload API, for dev mode and for the tests. It honours the
//! vendor's spec: both endpoints check X-API-KEY, X-BUSINESS-ID and X-USER-ID (403 otherwise),
//! validate their input (400 `{"detail": {..}}`), and serve an S3-like upload URL that behaves like
//! S3's POST Object for a browser: it checks the POST policy it issued (a base64 JSON policy
//! document: expiry, key, Content-Type, size range, signature fields), answers 204 with `ETag` and
//! `Location` or an S3 XML error, and sends CORS headers (ETag exposed) and preflight answers. It
//! records every request it receives, and answers can be scripted (faults, odd answers) so that
//! tests can see what the gateway does with them.
//!
//! Dev mode also serves [`Standin::inspection_router`] (`/_dev/...`): the requests received, the
//! stored objects, and scripting from outside the process, for browser tests.
//!
//! It is NOT the real API and stores uploads in memory only.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Multipart, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

/// What the stand-in expects from its callers.
#[derive(Clone)]
pub struct StandinConfig {
    /// The X-API-KEY every call must carry.
    pub api_key: String,
    /// The X-BUSINESS-ID every call must carry (and the confirmation form's `business_id`).
    pub business_id: String,
    /// `None`: any non-empty X-USER-ID.
    pub user_id: Option<String>,
    /// Base URL the stand-in is reachable at (its upload URL is `<base>/upload`).
    pub public_base: String,
    /// Largest file the upload URL takes (the policy's `content-length-range`).
    pub max_file_size: usize,
    /// How long a presigned POST is valid (Kizen's is 5 minutes): its `expires_at` and the
    /// policy's `expiration`.
    pub upload_ttl: Duration,
}

impl std::fmt::Debug for StandinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinConfig")
            .field("public_base", &self.public_base)
            .finish_non_exhaustive()
    }
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request's method, e.g. `GET`.
    pub method: String,
    /// The request's path, without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Every header line, names lowercased, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// The whole body as received.
    pub body: Bytes,
}

impl RecordedRequest {
    /// Every value of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as form fields (a repeated name keeps its last value).
    pub fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The query's pairs, decoded, in order, duplicates kept.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }
}

/// Which endpoint a scripted answer replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /api/s3/presigned-post`.
    Presign,
    /// `POST /api/s3/success`.
    Success,
}

/// A scripted answer, used once, in place of the normal behaviour.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Answer with exactly this status, these headers and this body.
    Respond {
        /// The status to answer with.
        status: u16,
        /// Header lines to answer with, in order.
        headers: Vec<(String, String)>,
        /// The body to answer with, verbatim.
        body: String,
    },
    /// Never answer (until the caller gives up).
    Hang,
    /// Answer normally, after this long.
    Delay(Duration),
    /// Answer normally once the test calls `notify_one` (the request is recorded before).
    AfterSignal(Arc<tokio::sync::Notify>),
}

#[derive(Debug)]
struct Issued {
    key: String,
    policy: String,
    signature: String,
    content_type: String,
    uploaded: Option<usize>,
}

/// An object the upload URL stored.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// The file's bytes.
    pub bytes: Bytes,
    /// The form's `Content-Type` field.
    pub content_type: String,
    /// The ETag it was answered with, quotes included.
    pub etag: String,
}

#[derive(Default)]
struct Inner {
    requests: Vec<RecordedRequest>,
    issued: HashMap<Uuid, Issued>,
    objects: HashMap<String, StoredObject>,
    script: VecDeque<(Endpoint, Scripted)>,
}

/// The stand-in: a handle on its state (requests received, uploads issued, scripted answers) that
/// also serves it; clones share one state.
#[derive(Clone)]
pub struct Standin {
    config: Arc<StandinConfig>,
    inner: Arc<Mutex<Inner>>,
    recorded: Arc<tokio::sync::Notify>,
}

impl Standin {
    /// A stand-in that expects `config`'s credentials and has received nothing yet.
    pub fn new(config: StandinConfig) -> Self {
        Self {
            config: Arc::new(config),
            inner: Arc::default(),
            recorded: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("standin lock")
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Requests received on one path.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Resolves once `count` requests to `path` have been received (a signal, not a sleep).
    pub async fn wait_for_requests(&self, path: &str, count: usize) {
        loop {
            let notified = self.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .lock()
                .requests
                .iter()
                .filter(|r| r.path == path)
                .count()
                >= count
            {
                return;
            }
            notified.await;
        }
    }

    /// The next call to `endpoint` gets `answer` instead of the normal behaviour.
    pub fn script(&self, endpoint: Endpoint, answer: Scripted) {
        self.lock().script.push_back((endpoint, answer));
    }

    /// The object the upload URL stored under `key`, if any.
    pub fn object(&self, key: &str) -> Option<StoredObject> {
        self.lock().objects.get(key).cloned()
    }

    /// The stand-in's routes: both Kizen endpoints and the S3-like `/upload` (POST, and the
    /// browser's preflight), all recorded.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/s3/presigned-post", get(presign))
            .route("/api/s3/success", post(success))
            // S3 reads the whole form, then judges its size against the policy.
            .route(
                "/upload",
                post(upload)
                    .options(upload_preflight)
                    .layer(DefaultBodyLimit::disable()),
            )
            .layer(from_fn_with_state(self.clone(), record_and_script))
            .with_state(self.clone())
    }

    /// Dev-only inspection routes, not recorded, for tests that drive the stand-in from another
    /// process (dev mode serves them beside [`Standin::router`]):
    ///
    /// - `GET /_dev/requests`: every request received, as JSON (`method`, `path`, `query`,
    ///   `headers` as `[name, value]` pairs, `body` as text when under 64 KiB, `body_len`);
    /// - `GET /_dev/objects?key=<key>`: the bytes stored under `key` (with its `Content-Type` and
    ///   `ETag`), 404 when none;
    /// - `POST /_dev/script`: `{"endpoint": "presign" | "success", "status": 503, "headers":
    ///   [[name, value]], "body": "..."}` answers the next call to that endpoint so, once.
    pub fn inspection_router(&self) -> Router {
        Router::new()
            .route("/_dev/requests", get(inspect_requests))
            .route("/_dev/objects", get(inspect_object))
            .route("/_dev/script", post(script_from_outside))
            .with_state(self.clone())
    }

    /// `false` answers 403, as DRF does for missing or wrong credentials.
    fn credentials_ok(&self, headers: &HeaderMap) -> bool {
        let get = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect::<Vec<_>>()
        };
        let api_key = get("x-api-key");
        let business = get("x-business-id");
        let user = get("x-user-id");
        api_key == [self.config.api_key.as_str()]
            && business == [self.config.business_id.as_str()]
            && user.len() == 1
            && !user[0].is_empty()
            && self
                .config
                .user_id
                .as_deref()
                .is_none_or(|expected| user[0] == expected)
    }
}

async fn record_and_script(
    State(standin): State<Standin>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    };
    let endpoint = match recorded.path.as_str() {
        "/api/s3/presigned-post" => Some(Endpoint::Presign),
        "/api/s3/success" => Some(Endpoint::Success),
        _ => None,
    };
    let scripted = {
        let mut inner = standin.lock();
        inner.requests.push(recorded);
        standin.recorded.notify_waiters();
        match endpoint {
            Some(endpoint) => {
                let position = inner.script.iter().position(|(e, _)| *e == endpoint);
                position
                    .and_then(|i| inner.script.remove(i))
                    .map(|(_, answer)| answer)
            }
            None => None,
        }
    };
    match scripted {
        Some(Scripted::Respond {
            status,
            headers,
            body,
        }) => {
            let mut response =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            // A scripted content type replaces the text/plain default rather than joining it.
            if headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            {
                response.headers_mut().remove(header::CONTENT_TYPE);
            }
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    header::HeaderValue::from_str(&value),
                ) {
                    response.headers_mut().append(name, value);
                }
            }
            response
        }
        Some(Scripted::Hang) => std::future::pending().await,
        Some(Scripted::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(Request::from_parts(parts, body.into())).await
        }
        Some(Scripted::AfterSignal(signal)) => {
            signal.notified().await;
            next.run(Request::from_parts(parts, body.into())).await
        }
        None => next.run(Request::from_parts(parts, body.into())).await,
    }
}

const SOURCES: [&str; 11] = crate::config::KIZEN_SOURCES;

fn forbidden() -> Response {
    let detail = json!({"detail": "You do not have permission to perform this action."});
    (StatusCode::FORBIDDEN, axum::Json(detail)).into_response()
}

fn bad_request(detail: Value) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "detail": detail })),
    )
        .into_response()
}

async fn presign(State(standin): State<Standin>, headers: HeaderMap, request: Request) -> Response {
    if !standin.credentials_ok(&headers) {
        return forbidden();
    }
    let query: HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let mut problems = serde_json::Map::new();
    for field in ["contenttype", "filename", "source"] {
        if query.get(field).is_none_or(String::is_empty) {
            problems.insert(field.into(), json!("This field is required."));
        }
    }
    if let Some(source) = query.get("source")
        && !source.is_empty()
        && !SOURCES.contains(&source.as_str())
    {
        problems.insert(
            "source".into(),
            json!(format!("\"{source}\" is not a valid choice.")),
        );
    }
    if !problems.is_empty() {
        return bad_request(Value::Object(problems));
    }
    let id = Uuid::new_v4();
    let filename = &query["filename"];
    let content_type = query["contenttype"].clone();
    let key = format!("uploads/{}/{id}/{filename}", standin.config.business_id);
    let signature = Uuid::new_v4().simple().to_string();
    let now = OffsetDateTime::now_utc();
    let expires_at = (now + standin.config.upload_ttl)
        .format(&Rfc3339)
        .expect("formattable");
    let amz_date = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let credential = format!(
        "STANDIN/{}/local/s3/aws4_request",
        amz_date.get(..8).unwrap_or("")
    );
    // The POST policy document S3 would check (boto3's generate_presigned_post makes the same).
    let policy = BASE64.encode(
        json!({
            "expiration": expires_at,
            "conditions": [
                {"bucket": STANDIN_BUCKET},
                {"key": key},
                {"Content-Type": content_type},
                ["content-length-range", 0, standin.config.max_file_size],
                {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
                {"x-amz-credential": credential},
                {"x-amz-date": amz_date},
            ],
        })
        .to_string(),
    );
    let body = json!({
        "url": format!("{}/upload", standin.config.public_base),
        "fields": {
            "key": key,
            "Content-Type": content_type,
            "policy": policy,
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": credential,
            "x-amz-date": amz_date,
            "x-amz-signature": signature,
        },
        "s3object_id": id.to_string(),
        "max_file_size": standin.config.max_file_size,
        "expires_at": expires_at,
    });
    standin.lock().issued.insert(
        id,
        Issued {
            key,
            policy,
            signature,
            content_type,
            uploaded: None,
        },
    );
    axum::Json(body).into_response()
}

/// The bucket the stand-in's policies name (its upload URL is the bucket).
const STANDIN_BUCKET: &str = "standin-bucket";

/// Form fields a POST policy never names: S3 checks them otherwise (`x-ignore-*` too).
const UNCHECKED_FIELDS: [&str; 3] = ["policy", "x-amz-signature", "file"];

/// The fields S3 needs in a SigV4 POST, besides the file.
const REQUIRED_FIELDS: [&str; 6] = [
    "key",
    "policy",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-signature",
];

/// What a browser may read of the upload URL's answers (the bucket CORS `ExposeHeaders`).
const EXPOSED_HEADERS: &str = "ETag, Location, x-amz-request-id";

/// Text content of an XML element (quotes need no escaping there).
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An S3 error answer: `<Error><Code>..</Code><Message>..</Message>..</Error>`.
fn s3_error(status: StatusCode, code: &str, message: &str, extra: &[(&str, String)]) -> Response {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message>",
        xml_escape(message)
    );
    for (name, value) in extra {
        xml.push_str(&format!("<{name}>{}</{name}>", xml_escape(value)));
    }
    xml.push_str(&format!(
        "<RequestId>{}</RequestId><HostId>standin</HostId></Error>",
        Uuid::new_v4().simple()
    ));
    (status, [(header::CONTENT_TYPE, "application/xml")], xml).into_response()
}

fn policy_refusal(reason: &str) -> Response {
    s3_error(
        StatusCode::FORBIDDEN,
        "AccessDenied",
        &format!("Invalid according to Policy: {reason}"),
        &[],
    )
}

/// Adds the CORS answer of a bucket whose rule allows every origin to POST (S3 echoes the origin).
fn with_cors(request_headers: &HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = request_headers.get(header::ORIGIN) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The browser's preflight of a cross-origin POST (an `XMLHttpRequest` with upload listeners
/// always sends one): allowed for POST from any origin, with any requested header.
async fn upload_preflight(headers: HeaderMap) -> Response {
    let origin = headers.get(header::ORIGIN);
    let method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD);
    let (Some(origin), Some(method)) = (origin, method) else {
        return s3_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Insufficient information. Origin request header needed.",
            &[],
        );
    };
    if method.as_bytes() != b"POST" {
        return s3_error(
            StatusCode::FORBIDDEN,
            "AccessForbidden",
            "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
            &[(
                "Method",
                String::from_utf8_lossy(method.as_bytes()).into_owned(),
            )],
        );
    }
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3000"),
    );
    out.append(header::VARY, HeaderValue::from_static("Origin"));
    out.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Headers, Access-Control-Request-Method"),
    );
    response
}

/// The S3-like upload URL (POST Object): a multipart form with every presigned field, the file
/// last, checked against the POST policy the stand-in issued. 204 with `ETag` and `Location`, or
/// an S3 XML error; CORS headers either way.
async fn upload(State(standin): State<Standin>, request: Request) -> Response {
    let headers = request.headers().clone();
    let response =
        match <Multipart as axum::extract::FromRequest<()>>::from_request(request, &()).await {
            Ok(multipart) => store_upload(&standin, multipart).await,
            Err(_) => s3_error(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "Bucket POST must be of the enclosure-type multipart/form-data",
                &[(
                    "Condition",
                    "Bucket POST must be of the enclosure-type multipart/form-data".into(),
                )],
            ),
        };
    with_cors(&headers, response)
}

async fn store_upload(standin: &Standin, mut multipart: Multipart) -> Response {
    // Field names as sent, values as text; S3 matches names case-insensitively.
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut file: Option<Bytes> = None;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_owned();
                let Ok(data) = field.bytes().await else {
                    return s3_error(
                        StatusCode::BAD_REQUEST,
                        "MalformedPOSTRequest",
                        "The body of your POST request is not well-formed multipart/form-data.",
                        &[],
                    );
                };
                if name.eq_ignore_ascii_case("file") {
                    file = Some(data);
                } else {
                    if file.is_some() {
                        // S3 ignores fields after the file; refusing says what went wrong.
                        return s3_error(
                            StatusCode::BAD_REQUEST,
                            "InvalidArgument",
                            &format!("the file must be the last field (found {name} after it)"),
                            &[],
                        );
                    }
                    fields.push((name, String::from_utf8_lossy(&data).into_owned()));
                }
            }
            Ok(None) => break,
            Err(_) => {
                return s3_error(
                    StatusCode::BAD_REQUEST,
                    "MalformedPOSTRequest",
                    "The body of your POST request is not well-formed multipart/form-data.",
                    &[],
                );
            }
        }
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let Some(file) = file else {
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "POST requires exactly one file upload per request.",
            &[("ArgumentName", "file".into())],
        );
    };
    for name in REQUIRED_FIELDS {
        if field(name).is_none_or(str::is_empty) {
            return s3_error(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                &format!(
                    "Bucket POST must contain a field named '{name}'.  If it is specified, please check the order of the fields."
                ),
                &[("ArgumentName", name.into())],
            );
        }
    }
    let policy_field = field("policy").unwrap_or_default();
    let signature = field("x-amz-signature").unwrap_or_default();

    let mut inner = standin.lock();
    // The signature stands for the policy it was issued with: another policy is not signed.
    let Some(issued) = inner
        .issued
        .values_mut()
        .find(|i| i.signature == signature && i.policy == policy_field)
    else {
        return s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            &[],
        );
    };
    let Some(policy) = BASE64
        .decode(policy_field)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    else {
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidPolicyDocument",
            "Invalid Policy: Invalid JSON.",
            &[],
        );
    };
    let expired = policy["expiration"]
        .as_str()
        .and_then(|e| OffsetDateTime::parse(e, &Rfc3339).ok())
        .is_none_or(|expiration| OffsetDateTime::now_utc() >= expiration);
    if expired {
        return policy_refusal("Policy expired.");
    }
    let mut named: Vec<String> = Vec::new();
    let mut length_range: Option<(u64, u64)> = None;
    for condition in policy["conditions"].as_array().into_iter().flatten() {
        let (operator, name, expected) = match condition {
            Value::Object(map) if map.len() == 1 => {
                let (name, value) = map.iter().next().expect("one entry");
                ("eq", name.clone(), value.as_str().unwrap_or_default())
            }
            Value::Array(parts)
                if parts.first().and_then(Value::as_str) == Some("content-length-range") =>
            {
                let bound = |i: usize| parts.get(i).and_then(Value::as_u64).unwrap_or(0);
                length_range = Some((bound(1), bound(2)));
                continue;
            }
            Value::Array(parts) if parts.len() == 3 => (
                parts[0].as_str().unwrap_or_default(),
                parts[1]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('$')
                    .to_owned(),
                parts[2].as_str().unwrap_or_default(),
            ),
            _ => {
                return s3_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidPolicyDocument",
                    "Invalid Policy: Invalid Condition.",
                    &[],
                );
            }
        };
        named.push(name.to_ascii_lowercase());
        if name == "bucket" {
            continue;
        }
        let actual = field(&name).unwrap_or_default();
        let holds = match operator {
            "eq" => actual == expected,
            "starts-with" => actual.starts_with(expected),
            _ => false,
        };
        if !holds {
            return policy_refusal(&format!(
                "Policy Condition failed: [\"{operator}\", \"${name}\", \"{expected}\"]"
            ));
        }
    }
    if let Some((name, _)) = fields.iter().find(|(name, _)| {
        let lower = name.to_ascii_lowercase();
        !UNCHECKED_FIELDS.contains(&lower.as_str())
            && !lower.starts_with("x-ignore-")
            && !named.contains(&lower)
    }) {
        return policy_refusal(&format!("Extra input fields: {name}"));
    }
    let size = file.len() as u64;
    if let Some((min, max)) = length_range {
        if size > max {
            return s3_error(
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size",
                &[
                    ("ProposedSize", size.to_string()),
                    ("MaxSizeAllowed", max.to_string()),
                ],
            );
        }
        if size < min {
            return s3_error(
                StatusCode::BAD_REQUEST,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size",
                &[
                    ("ProposedSize", size.to_string()),
                    ("MinSizeAllowed", min.to_string()),
                ],
            );
        }
    }
    issued.uploaded = Some(file.len());
    let key = issued.key.clone();
    let etag = format!("\"{}\"", Uuid::new_v4().simple());
    let object = StoredObject {
        bytes: file,
        content_type: field("Content-Type").unwrap_or_default().to_owned(),
        etag: etag.clone(),
    };
    inner.objects.insert(key.clone(), object);
    let location = format!("{}/upload/{}", standin.config.public_base, encode_key(&key));
    (
        StatusCode::NO_CONTENT,
        [
            (header::ETAG, etag),
            (header::LOCATION, location),
            (
                header::HeaderName::from_static("x-amz-request-id"),
                Uuid::new_v4().simple().to_string(),
            ),
        ],
    )
        .into_response()
}

/// A key in a URL path: unreserved characters and `/` as they are, the rest percent-encoded.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn inspect_requests(State(standin): State<Standin>) -> Response {
    let requests: Vec<Value> = standin
        .lock()
        .requests
        .iter()
        .map(|r| {
            json!({
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "headers": r.headers,
                "body": (r.body.len() < 64 * 1024).then(|| String::from_utf8_lossy(&r.body).into_owned()),
                "body_len": r.body.len(),
            })
        })
        .collect();
    axum::Json(requests).into_response()
}

async fn inspect_object(State(standin): State<Standin>, request: Request) -> Response {
    let key = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    match standin.object(&key) {
        Some(object) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, object.content_type),
                (header::ETAG, object.etag),
            ],
            object.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no object with this key").into_response(),
    }
}

async fn script_from_outside(State(standin): State<Standin>, body: Bytes) -> Response {
    let Ok(order) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected a JSON object").into_response();
    };
    let endpoint = match order["endpoint"].as_str() {
        Some("presign") => Endpoint::Presign,
        Some("success") => Endpoint::Success,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "endpoint must be \"presign\" or \"success\"",
            )
                .into_response();
        }
    };
    let Some(status) = order["status"].as_u64().and_then(|s| u16::try_from(s).ok()) else {
        return (StatusCode::BAD_REQUEST, "status must be a number").into_response();
    };
    let headers = order["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            Some((
                pair.get(0)?.as_str()?.to_owned(),
                pair.get(1)?.as_str()?.to_owned(),
            ))
        })
        .collect();
    let body = order["body"].as_str().unwrap_or_default().to_owned();
    standin.script(
        endpoint,
        Scripted::Respond {
            status,
            headers,
            body,
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn success(State(standin): State<Standin>, headers: HeaderMap, body: Bytes) -> Response {
    if !standin.credentials_ok(&headers) {
        return forbidden();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut problems = serde_json::Map::new();
    for field in ["uuid", "key", "name", "etag"] {
        if form.get(field).is_none_or(String::is_empty) {
            problems.insert(field.into(), json!("This field is required."));
        }
    }
    if form
        .get("business_id")
        .is_some_and(|b| *b != standin.config.business_id)
    {
        problems.insert("business_id".into(), json!("Invalid business."));
    }
    if !problems.is_empty() {
        return bad_request(Value::Object(problems));
    }
    let id = match Uuid::try_parse(&form["uuid"]) {
        Ok(id) => id,
        Err(_) => return bad_request(json!({"uuid": "Must be a valid UUID."})),
    };
    let inner = standin.lock();
    let Some(issued) = inner.issued.get(&id) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"detail": "Not found."})),
        )
            .into_response();
    };
    if issued.key != form["key"] {
        return bad_request(json!({"key": "Does not match the S3 object."}));
    }
    // Tests confirm without uploading; dev mode uploads first. Both are accepted.
    let size = issued.uploaded.unwrap_or(0);
    let base = &standin.config.public_base;
    axum::Json(json!({
        "id": id.to_string(),
        "created": OffsetDateTime::now_utc().format(&Rfc3339).expect("formattable"),
        "key": issued.key,
        "name": form["name"],
        "url": format!("{base}/files/{id}"),
        "thumbnail_url": format!("{base}/files/{id}/thumbnail"),
        "size_bytes": size,
        "size_formatted": format!("{size} B"),
        "content_type": issued.content_type,
        "is_public": form.get("is_public").is_some_and(|v| v == "true"),
        "common_key": null,
        "is_common": false,
        "metadata": {},
        "employee": {},
    }))
    .into_response()
}
