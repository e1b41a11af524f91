//! A local stand-in for the Kizen upload API, for dev mode and for the tests. It honours the
//! vendor's spec: both endpoints check X-API-KEY, X-BUSINESS-ID and X-USER-ID (403 otherwise),
//! validate their input (400 `{"detail": {..}}`), and serve an S3-like upload URL that checks the
//! presigned fields. It records every request it receives, and answers can be scripted (faults,
//! odd answers) so that tests can see what the gateway does with them.
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
    extract::{Multipart, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::{get, post},
};
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
    /// Largest file the upload URL takes.
    pub max_file_size: usize,
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
    signature: String,
    content_type: String,
    uploaded: Option<usize>,
}

#[derive(Default)]
struct Inner {
    requests: Vec<RecordedRequest>,
    issued: HashMap<Uuid, Issued>,
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

    /// The stand-in's routes: both Kizen endpoints and the S3-like `/upload`, all recorded.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/s3/presigned-post", get(presign))
            .route("/api/s3/success", post(success))
            .route("/upload", post(upload))
            .layer(from_fn_with_state(self.clone(), record_and_script))
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
    let expires_at = (now + Duration::from_secs(300))
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
    let body = json!({
        "url": format!("{}/upload", standin.config.public_base),
        "fields": {
            "key": key,
            "Content-Type": content_type,
            "policy": format!("standin-policy-{id}"),
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": "STANDIN/20260101/local/s3/aws4_request",
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
            signature,
            content_type,
            uploaded: None,
        },
    );
    axum::Json(body).into_response()
}

/// The S3-like upload URL: multipart form with every presigned field, the file last.
async fn upload(State(standin): State<Standin>, mut multipart: Multipart) -> Response {
    let mut fields = HashMap::new();
    let mut file: Option<Bytes> = None;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_owned();
                let Ok(data) = field.bytes().await else {
                    return (StatusCode::BAD_REQUEST, "unreadable multipart body").into_response();
                };
                if name == "file" {
                    file = Some(data);
                } else {
                    if file.is_some() {
                        return (StatusCode::BAD_REQUEST, "the file must be the last field")
                            .into_response();
                    }
                    fields.insert(name, String::from_utf8_lossy(&data).into_owned());
                }
            }
            Ok(None) => break,
            Err(_) => return (StatusCode::BAD_REQUEST, "malformed multipart body").into_response(),
        }
    }
    let Some(file) = file else {
        return (StatusCode::BAD_REQUEST, "no file field").into_response();
    };
    if file.len() > standin.config.max_file_size {
        return (StatusCode::BAD_REQUEST, "EntityTooLarge").into_response();
    }
    let mut inner = standin.lock();
    let Some(issued) = inner
        .issued
        .values_mut()
        .find(|i| fields.get("key") == Some(&i.key))
    else {
        return (StatusCode::FORBIDDEN, "AccessDenied: unknown key").into_response();
    };
    if fields.get("x-amz-signature") != Some(&issued.signature)
        || fields.get("Content-Type") != Some(&issued.content_type)
    {
        return (
            StatusCode::FORBIDDEN,
            "AccessDenied: policy fields do not match",
        )
            .into_response();
    }
    issued.uploaded = Some(file.len());
    let etag = format!("\"{}\"", Uuid::new_v4().simple());
    (StatusCode::NO_CONTENT, [(header::ETAG, etag)]).into_response()
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
