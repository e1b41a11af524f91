#![allow(missing_docs)]
mod common;
use common::*;

// The OpenAPI document (`openapi/kizen-gateway.openapi.json`) against the gateway itself.
//
// `every_response_conforms_to_the_spec` drives real requests over real sockets (reqwest, and raw
// bytes where a client library would not send them) through gateways configured to provoke every
// status the gateway can give, and checks each answer against the document: path and method,
// status, media type, body schema (JSON Schema 2020-12, `$ref`s resolved inside the document),
// required headers and the schema of every documented header that is present. Every violation
// is collected and printed before the one assertion at the end.
//
// `the_spec_is_well_formed` checks the document on its own and against the source: every `$ref`
// resolves, every schema is a valid 2020-12 schema, and the problem codes, field error codes,
// statuses, sources, paths and exposed headers in the code all appear in the document (and the
// document lists no code the source cannot produce).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use common::faulty_store::FaultyStore;
use kizen_gateway::{
    error::{ErrorCode, RetryAfter},
    standin::{Endpoint, Scripted},
};
use serde_json::{Value, json};
use uuid::Uuid;

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

/// A raw HTTP/1.1 request with a valid token that asks the server to close after answering.
fn raw_request(method: &str, target: &str, token: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\
         {extra}Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Every exchange of the run, and the scenarios' own expectations that were not met.
#[derive(Default)]
struct Recorder {
    exchanges: Vec<Exchange>,
    /// A scenario that did not provoke what it meant to is reported, not silently counted.
    unmet: Vec<String>,
}

impl Recorder {
    fn push(&mut self, exchange: Exchange) -> Exchange {
        self.exchanges.push(exchange.clone());
        exchange
    }

    /// Records the exchange and checks that the scenario provoked what it meant to.
    fn expect(&mut self, exchange: Exchange, status: u16, code: Option<&str>) -> Exchange {
        let got_code = exchange.code();
        if exchange.status != status || (code.is_some() && got_code.as_deref() != code) {
            self.unmet.push(format!(
                "{}: expected {status}{} but got {} {}",
                exchange.label,
                code.map(|c| format!(" {c}")).unwrap_or_default(),
                exchange.status,
                String::from_utf8_lossy(&exchange.body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        self.push(exchange)
    }

    async fn send(
        &mut self,
        label: &str,
        request: reqwest::RequestBuilder,
        status: u16,
        code: Option<&str>,
    ) -> Exchange {
        let exchange = capture(label, request).await;
        self.expect(exchange, status, code)
    }

    async fn raw(
        &mut self,
        label: &str,
        gw: &TestGateway,
        request: &[u8],
        status: u16,
        code: Option<&str>,
    ) -> Exchange {
        let exchange = capture_raw(label, gw, request).await;
        self.expect(exchange, status, code)
    }

    /// Presigns with the default query; returns `(s3object_id, key)`.
    async fn issue(&mut self, label: &str, gw: &TestGateway, token: &str) -> (String, String) {
        let exchange = self
            .send(label, presign_request(gw, token, DEFAULT_QUERY), 200, None)
            .await;
        let body = exchange.json();
        (
            body["s3object_id"].as_str().unwrap_or_default().to_owned(),
            body["fields"]["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

fn presign_request(gw: &TestGateway, token: &str, query: &str) -> reqwest::RequestBuilder {
    gw.client
        .get(format!("{}{PRESIGN}?{query}", gw.url))
        .bearer_auth(token)
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn confirm_request(gw: &TestGateway, token: &str, body: String) -> reqwest::RequestBuilder {
    gw.client
        .post(format!("{}{SUCCESS}", gw.url))
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

fn confirm_upload(
    gw: &TestGateway,
    token: &str,
    upload: &(String, String),
) -> reqwest::RequestBuilder {
    confirm_request(
        gw,
        token,
        form(&[
            ("uuid", &upload.0),
            ("key", &upload.1),
            ("name", "photo.png"),
            ("etag", "\"abc123\""),
        ]),
    )
}

fn respond(status: u16, content_type: Option<&str>, body: &str) -> Scripted {
    Scripted::Respond {
        status,
        headers: content_type
            .map(|ct| vec![("content-type".to_owned(), ct.to_owned())])
            .unwrap_or_default(),
        body: body.to_owned(),
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
// The scenarios
// ---------------------------------------------------------------------------------------------

/// The everyday gateway: success, repeats, invalid input, every token failure the default
/// configuration can produce, the confirmation conflicts, body limits, upstream pass-through and
/// upstream failures, strict HTTP.
async fn everyday(rec: &mut Recorder) {
    let gw = TestGateway::start().await;
    let alice = gw.token("alice");
    let bob = gw.token("bob");

    // 200, then the idempotent repeat, then the same upload with another key.
    let first = rec.issue("presign", &gw, &alice).await;
    rec.send("confirm", confirm_upload(&gw, &alice, &first), 200, None)
        .await;
    let repeat = rec
        .send(
            "confirm repeated",
            confirm_upload(&gw, &alice, &first),
            200,
            None,
        )
        .await;
    if repeat.header("idempotent-replayed") != Some("true") {
        rec.unmet
            .push("confirm repeated: no idempotent-replayed: true".into());
    }
    rec.send(
        "confirm a confirmed upload with another key",
        confirm_upload(&gw, &alice, &(first.0.clone(), "uploads/other".into())),
        409,
        Some("already_confirmed"),
    )
    .await;
    rec.send(
        "presign with a sane x-request-id",
        presign_request(&gw, &alice, DEFAULT_QUERY).header("x-request-id", "trace-1:a.b_c"),
        200,
        None,
    )
    .await;

    // 400: the gateway's own validation, every field at once; duplicates and unknown fields.
    rec.send(
        "presign invalid input",
        presign_request(&gw, &alice, "contenttype=png&filename=..&source=images"),
        400,
        Some("invalid_input"),
    )
    .await;
    rec.send(
        "presign duplicate and unknown parameters",
        presign_request(
            &gw,
            &alice,
            "contenttype=image%2Fpng&contenttype=image%2Fgif&filename=a.png&source=field_value&x=1",
        ),
        400,
        Some("invalid_input"),
    )
    .await;
    rec.send(
        "presign without parameters",
        presign_request(&gw, &alice, ""),
        400,
        Some("invalid_input"),
    )
    .await;
    rec.send(
        "confirm invalid input",
        confirm_request(
            &gw,
            &alice,
            form(&[
                ("uuid", "not-a-uuid"),
                ("is_public", "maybe"),
                ("extra", "1"),
            ]),
        ),
        400,
        Some("invalid_input"),
    )
    .await;

    // 400 from Kizen, passed through (and 404 and a 422 the gateway has no number of its own for).
    gw.standin.script(
        Endpoint::Presign,
        respond(
            400,
            Some("application/json"),
            r#"{"detail": {"filename": "Ensure this field has no more than 100 characters."}}"#,
        ),
    );
    rec.send(
        "presign, upstream 400 passed through",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        400,
        None,
    )
    .await;
    gw.standin.script(
        Endpoint::Presign,
        respond(404, Some("application/json"), r#"{"detail": "Not found."}"#),
    );
    rec.send(
        "presign, upstream 404 passed through",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        404,
        None,
    )
    .await;
    gw.standin.script(
        Endpoint::Presign,
        respond(
            429,
            Some("application/json"),
            r#"{"detail": "Request was throttled. Expected available in 2 seconds."}"#,
        ),
    );
    rec.send(
        "presign, upstream 429 passed through",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        429,
        None,
    )
    .await;
    gw.standin.script(
        Endpoint::Presign,
        respond(
            409,
            Some("application/json; charset=utf-8"),
            r#"{"detail": {"filename": "A file with this name is being uploaded."}}"#,
        ),
    );
    rec.send(
        "presign, upstream 409 passed through",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        409,
        None,
    )
    .await;
    let second = rec.issue("presign (second upload)", &gw, &alice).await;
    gw.standin.script(
        Endpoint::Success,
        respond(
            422,
            Some("application/json"),
            r#"{"detail": {"etag": "Does not match the uploaded object."}}"#,
        ),
    );
    rec.send(
        "confirm, upstream 422 passed through",
        confirm_upload(&gw, &alice, &second),
        422,
        None,
    )
    .await;
    gw.standin.script(
        Endpoint::Success,
        respond(404, Some("application/json"), r#"{"detail": "Not found."}"#),
    );
    rec.send(
        "confirm, upstream 404 passed through",
        confirm_upload(&gw, &alice, &second),
        404,
        None,
    )
    .await;

    // 401, every code this configuration can produce.
    let claims = |extra: Value| {
        let mut claims = json!({"sub": "alice", "iat": now(), "exp": now() + 3600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        claims
    };
    rec.send(
        "presign without a token",
        gw.client
            .get(format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.url)),
        401,
        Some("token_missing"),
    )
    .await;
    rec.send(
        "confirm with Basic credentials",
        gw.client
            .post(format!("{}{SUCCESS}", gw.url))
            .header("authorization", "Basic YWxpY2U6c2VjcmV0")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("uuid=x"),
        401,
        Some("token_missing"),
    )
    .await;
    let unauthorized: Vec<(&str, String, &str)> = vec![
        ("not a JWT", "not-a-jwt".into(), "token_malformed"),
        (
            "alg none",
            raw_token(
                &json!({"alg": "none", "typ": "JWT"}),
                &claims(json!({})),
                Some(HS256_SECRET.as_bytes()),
            ),
            "token_unsupported",
        ),
        (
            "an alg no key serves",
            raw_token(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &claims(json!({})),
                Some(HS256_SECRET.as_bytes()),
            ),
            "token_unknown_key",
        ),
        (
            "a wrong signature",
            raw_token(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &claims(json!({})),
                Some(b"another-secret-0123456789abcdef0123456789"),
            ),
            "token_bad_signature",
        ),
        (
            "expired",
            hs256(&json!({"sub": "alice", "iat": now() - 7200, "exp": now() - 3600})),
            "token_expired",
        ),
        (
            "issued in the future",
            hs256(&claims(json!({"iat": now() + 3600}))),
            "token_not_yet_valid",
        ),
        (
            "no sub",
            hs256(&json!({"iat": now(), "exp": now() + 3600})),
            "token_missing_claim",
        ),
    ];
    for (what, token, code) in &unauthorized {
        rec.send(
            &format!("presign with a token: {what}"),
            presign_request(&gw, token, DEFAULT_QUERY),
            401,
            Some(code),
        )
        .await;
    }
    rec.send(
        "confirm with an expired token",
        confirm_upload(&gw, &unauthorized[4].1, &second),
        401,
        Some("token_expired"),
    )
    .await;

    // 403, 404, 409 (in flight), 413, 415.
    rec.send(
        "confirm with another key",
        confirm_upload(
            &gw,
            &alice,
            &(second.0.clone(), "uploads/elsewhere.png".into()),
        ),
        403,
        Some("key_mismatch"),
    )
    .await;
    rec.send(
        "confirm an unknown uuid",
        confirm_upload(&gw, &alice, &(Uuid::new_v4().to_string(), second.1.clone())),
        404,
        Some("upload_not_found"),
    )
    .await;
    rec.send(
        "confirm another user's upload",
        confirm_upload(&gw, &bob, &second),
        404,
        Some("upload_not_found"),
    )
    .await;
    gw.standin.script(
        Endpoint::Success,
        Scripted::Delay(Duration::from_millis(1500)),
    );
    let seen = gw.forwarded(SUCCESS).len();
    let in_flight = tokio::spawn(capture(
        "confirm (slow upstream)",
        confirm_upload(&gw, &alice, &second),
    ));
    gw.standin.wait_for_requests(SUCCESS, seen + 1).await;
    rec.send(
        "confirm while another confirmation is in flight",
        confirm_upload(&gw, &alice, &second),
        409,
        Some("confirmation_in_progress"),
    )
    .await;
    let slow = in_flight.await.expect("the slow confirmation");
    rec.expect(slow, 200, None);

    let third = rec.issue("presign (third upload)", &gw, &alice).await;
    rec.send(
        "confirm a body over confirm.max_body_bytes",
        confirm_request(
            &gw,
            &alice,
            form(&[
                ("uuid", &third.0),
                ("key", &third.1),
                ("name", "photo.png"),
                ("etag", &"e".repeat(9000)),
            ]),
        ),
        413,
        Some("payload_too_large"),
    )
    .await;
    rec.send(
        "confirm with a JSON body",
        gw.client
            .post(format!("{}{SUCCESS}", gw.url))
            .bearer_auth(&alice)
            .json(&json!({"uuid": third.0, "key": third.1, "name": "photo.png", "etag": "e"})),
        415,
        Some("unsupported_media_type"),
    )
    .await;
    rec.send(
        "confirm without a Content-Type",
        gw.client
            .post(format!("{}{SUCCESS}", gw.url))
            .bearer_auth(&alice)
            .body(form(&[("uuid", &third.0)])),
        415,
        Some("unsupported_media_type"),
    )
    .await;

    // 404 and 405: other paths and other methods.
    rec.send(
        "GET an unknown path",
        gw.client
            .get(format!("{}/api/s3/other", gw.url))
            .bearer_auth(&alice),
        404,
        Some("route_not_found"),
    )
    .await;
    rec.send(
        "GET the presign path with a trailing slash",
        gw.client
            .get(format!("{}{PRESIGN}/?{DEFAULT_QUERY}", gw.url))
            .bearer_auth(&alice),
        404,
        Some("route_not_found"),
    )
    .await;
    rec.raw(
        "GET an encoded variant of the presign path",
        &gw,
        &raw_request("GET", "/api/s3/presigned%2Dpost", &alice, "", ""),
        404,
        Some("route_not_found"),
    )
    .await;
    rec.send(
        "POST the presign path",
        gw.client
            .post(format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.url))
            .bearer_auth(&alice),
        405,
        Some("method_not_allowed"),
    )
    .await;
    rec.send(
        "GET the confirm path",
        gw.client
            .get(format!("{}{SUCCESS}", gw.url))
            .bearer_auth(&alice),
        405,
        Some("method_not_allowed"),
    )
    .await;
    rec.send(
        "PUT the confirm path",
        gw.client
            .put(format!("{}{SUCCESS}", gw.url))
            .bearer_auth(&alice)
            .body(""),
        405,
        Some("method_not_allowed"),
    )
    .await;
    rec.send(
        "OPTIONS the presign path, CORS not configured",
        gw.client
            .request(reqwest::Method::OPTIONS, format!("{}{PRESIGN}", gw.url)),
        405,
        Some("method_not_allowed"),
    )
    .await;

    // 400 before routing: the gateway's framing problems, and hyper's bare 400.
    let target = format!("{PRESIGN}?{DEFAULT_QUERY}");
    rec.raw(
        "presign with two Host headers",
        &gw,
        format!(
            "GET {target} HTTP/1.1\r\nHost: gateway.test\r\nHost: evil.example\r\n\
             Authorization: Bearer {alice}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        400,
        Some("bad_host_header"),
    )
    .await;
    rec.raw(
        "presign with an absolute-form target",
        &gw,
        &raw_request(
            "GET",
            &format!("http://kizen.example{target}"),
            &alice,
            "",
            "",
        ),
        400,
        Some("absolute_form_target"),
    )
    .await;
    let body = form(&[("uuid", &third.0), ("key", &third.1)]);
    rec.raw(
        "confirm with a chunked body",
        &gw,
        &raw_request(
            "POST",
            SUCCESS,
            &alice,
            "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n",
            &format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
        ),
        400,
        Some("transfer_encoding_not_accepted"),
    )
    .await;
    rec.raw(
        "confirm with conflicting Content-Length (hyper)",
        &gw,
        &raw_request(
            "POST",
            SUCCESS,
            &alice,
            &format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nContent-Length: {}\r\n",
                body.len(),
                body.len() + 1
            ),
            &body,
        ),
        400,
        None,
    )
    .await;
    rec.raw(
        "presign with a header line hyper cannot parse",
        &gw,
        &raw_request("GET", &target, &alice, "Bad Header Name: x\r\n", ""),
        400,
        None,
    )
    .await;

    // 431 (hyper): a head over server.max_header_bytes, and too many header lines.
    rec.raw(
        "presign with a 20 kB header",
        &gw,
        &raw_request(
            "GET",
            &target,
            &alice,
            &format!("X-Big: {}\r\n", "a".repeat(20_000)),
            "",
        ),
        431,
        None,
    )
    .await;
    let many: String = (0..70).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    rec.raw(
        "confirm with 70 header lines",
        &gw,
        &raw_request("POST", SUCCESS, &alice, &many, ""),
        431,
        None,
    )
    .await;

    // 502: Kizen failed, refused the gateway's credentials, or answered nonsense.
    let fourth = rec.issue("presign (fourth upload)", &gw, &alice).await;
    for (what, answer, code) in [
        (
            "a 500",
            respond(500, Some("text/html"), "<h1>oops</h1>"),
            "upstream_error",
        ),
        (
            "a 403",
            respond(
                403,
                Some("application/json"),
                r#"{"detail": "You do not have permission to perform this action."}"#,
            ),
            "upstream_unavailable",
        ),
        (
            "not JSON",
            respond(200, Some("application/json"), "{not json"),
            "upstream_bad_response",
        ),
        (
            "a redirect",
            Scripted::Respond {
                status: 302,
                headers: vec![("location".into(), "https://elsewhere.example/".into())],
                body: String::new(),
            },
            "upstream_bad_response",
        ),
    ] {
        gw.standin.script(Endpoint::Presign, answer);
        rec.send(
            &format!("presign, upstream answers {what}"),
            presign_request(&gw, &alice, DEFAULT_QUERY),
            502,
            Some(code),
        )
        .await;
    }
    gw.standin
        .script(Endpoint::Success, respond(503, None, "unavailable"));
    rec.send(
        "confirm, upstream answers 503",
        confirm_upload(&gw, &alice, &fourth),
        502,
        Some("upstream_error"),
    )
    .await;
    gw.standin.script(
        Endpoint::Success,
        respond(
            401,
            Some("application/json"),
            r#"{"detail": "Invalid API key."}"#,
        ),
    );
    rec.send(
        "confirm, upstream answers 401",
        confirm_upload(&gw, &alice, &fourth),
        502,
        Some("upstream_unavailable"),
    )
    .await;
    gw.standin.script(
        Endpoint::Success,
        respond(
            200,
            Some("application/json"),
            &format!(r#"{{"leaked": "{API_KEY}"}}"#),
        ),
    );
    rec.send(
        "confirm, upstream answer contains the API key",
        confirm_upload(&gw, &alice, &fourth),
        502,
        Some("upstream_bad_response"),
    )
    .await;
    // Released every time: the upload is still confirmable.
    rec.send(
        "confirm after the upstream failures",
        confirm_upload(&gw, &alice, &fourth),
        200,
        None,
    )
    .await;

    // 410 (last: the clock moves): past the confirmation window (expires_at + 1 h grace; the stand-in says 5 min).
    gw.clock.advance(Duration::from_secs(66 * 60));
    rec.send(
        "confirm after the window closed",
        confirm_upload(&gw, &alice, &third),
        410,
        Some("upload_expired"),
    )
    .await;
}

/// `iss` and `aud` configured: the two codes only such a gateway can produce.
async fn issuer_and_audience(rec: &mut Recorder) {
    let gw = TestGateway::builder()
        .with_config("[auth]\nissuers = [\"https://idp.test/\"]\naudiences = [\"kizen-uploads\"]\n")
        .start()
        .await;
    let claims = |iss: &str, aud: &str| json!({"sub": "alice", "iss": iss, "aud": aud, "iat": now(), "exp": now() + 3600});
    let good = hs256(&claims("https://idp.test/", "kizen-uploads"));
    rec.send(
        "presign with iss and aud",
        presign_request(&gw, &good, DEFAULT_QUERY),
        200,
        None,
    )
    .await;
    rec.send(
        "presign with a wrong issuer",
        presign_request(
            &gw,
            &hs256(&claims("https://evil.test/", "kizen-uploads")),
            DEFAULT_QUERY,
        ),
        401,
        Some("token_wrong_issuer"),
    )
    .await;
    rec.send(
        "presign with a wrong audience",
        presign_request(
            &gw,
            &hs256(&claims("https://idp.test/", "other")),
            DEFAULT_QUERY,
        ),
        401,
        Some("token_wrong_audience"),
    )
    .await;
}

/// 429: the rate limit, and the three quotas.
async fn limits(rec: &mut Recorder) {
    let gw = TestGateway::builder()
        .with_rate_limit(1, "1h")
        .start()
        .await;
    let alice = gw.token("alice");
    rec.issue("presign within the rate limit", &gw, &alice)
        .await;
    rec.send(
        "presign over the rate limit",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        429,
        Some("rate_limited"),
    )
    .await;

    let gw = TestGateway::builder()
        .with_config("[quotas.tiers.default]\nmax_outstanding = 1\nmax_uploads_per_day = 1\n")
        .start()
        .await;
    let alice = gw.token("alice");
    let upload = rec.issue("presign within the quotas", &gw, &alice).await;
    rec.send(
        "presign over max_outstanding",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        429,
        Some("too_many_outstanding_uploads"),
    )
    .await;
    rec.send(
        "confirm (quota gateway)",
        confirm_upload(&gw, &alice, &upload),
        200,
        None,
    )
    .await;
    rec.send(
        "presign over max_uploads_per_day",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        429,
        Some("daily_upload_quota_exceeded"),
    )
    .await;

    let gw = TestGateway::builder()
        .with_config("[quotas.tiers.default]\nmax_outstanding = 5\nmax_bytes_per_day = 1\n")
        .start()
        .await;
    let alice = gw.token("alice");
    let upload = rec
        .issue("presign within the byte quota", &gw, &alice)
        .await;
    gw.standin.script(
        Endpoint::Success,
        respond(
            200,
            Some("application/json"),
            &json!({"id": upload.0, "key": upload.1, "name": "photo.png", "size_bytes": 10})
                .to_string(),
        ),
    );
    rec.send(
        "confirm 10 bytes (byte quota gateway)",
        confirm_upload(&gw, &alice, &upload),
        200,
        None,
    )
    .await;
    rec.send(
        "presign over max_bytes_per_day",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        429,
        Some("daily_byte_quota_exceeded"),
    )
    .await;
}

/// 503 and 504: load shedding, a full or failing store, timeouts; and 500.
async fn faults(rec: &mut Recorder) {
    // One request at a time, and a hanging upstream: the second request is shed, the first times out.
    let gw = TestGateway::builder()
        .with_config(
            "[server]\nmax_concurrent_requests = 1\n[upstream]\nrequest_timeout = \"1s\"\n",
        )
        .start()
        .await;
    let alice = gw.token("alice");
    gw.standin.script(Endpoint::Presign, Scripted::Hang);
    let hanging = tokio::spawn(capture(
        "presign, upstream hangs",
        presign_request(&gw, &alice, DEFAULT_QUERY),
    ));
    gw.standin.wait_for_requests(PRESIGN, 1).await;
    rec.send(
        "presign at the concurrency limit",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        503,
        Some("overloaded"),
    )
    .await;
    let timed_out = hanging.await.expect("the hanging presign");
    rec.expect(timed_out, 504, Some("upstream_timeout"));
    let upload = rec.issue("presign (timeout gateway)", &gw, &alice).await;
    gw.standin.script(Endpoint::Success, Scripted::Hang);
    rec.send(
        "confirm, upstream hangs",
        confirm_upload(&gw, &alice, &upload),
        504,
        Some("upstream_timeout"),
    )
    .await;

    // The whole-request deadline, shorter than the upstream's.
    let gw = TestGateway::builder()
        .with_config("[server]\nrequest_timeout = \"300ms\"\n")
        .start()
        .await;
    let alice = gw.token("alice");
    gw.standin.script(Endpoint::Presign, Scripted::Hang);
    rec.send(
        "presign past server.request_timeout",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        504,
        Some("request_timeout"),
    )
    .await;

    // A store at capacity.
    let gw = TestGateway::builder()
        .with_config("[store]\nmax_uploads = 1\n")
        .start()
        .await;
    rec.issue("presign (full store gateway)", &gw, &gw.token("alice"))
        .await;
    rec.send(
        "presign into a full store",
        presign_request(&gw, &gw.token("bob"), DEFAULT_QUERY),
        503,
        Some("store_full"),
    )
    .await;

    // Kizen unreachable.
    let gw = TestGateway::builder()
        .with_config("[upstream]\nbase_url = \"http://127.0.0.1:1\"\nconnect_timeout = \"1s\"\n")
        .start()
        .await;
    rec.send(
        "presign, upstream unreachable",
        presign_request(&gw, &gw.token("alice"), DEFAULT_QUERY),
        502,
        Some("upstream_unreachable"),
    )
    .await;

    // A store that stops answering, and one that panics while settling a confirmation.
    let store = Arc::new(FaultyStore::new());
    let gw = TestGateway::builder()
        .with_store(store.clone())
        .start()
        .await;
    let alice = gw.token("alice");
    let upload = rec
        .issue("presign (faulty store gateway)", &gw, &alice)
        .await;
    store.unavailable.store(true, Ordering::SeqCst);
    rec.send(
        "presign, store unavailable",
        presign_request(&gw, &alice, DEFAULT_QUERY),
        503,
        Some("store_unavailable"),
    )
    .await;
    rec.send(
        "confirm, store unavailable",
        confirm_upload(&gw, &alice, &upload),
        503,
        Some("store_unavailable"),
    )
    .await;
    store.unavailable.store(false, Ordering::SeqCst);
    store.panic_on_consume.store(true, Ordering::SeqCst);
    rec.send(
        "confirm, settling the confirmation panics",
        confirm_upload(&gw, &alice, &upload),
        500,
        Some("internal_error"),
    )
    .await;
}

/// CORS preflights (answered for any path once CORS is on) and the 414 that only a head limit
/// over 64 KiB lets through.
async fn cors_and_long_targets(rec: &mut Recorder) {
    let gw = TestGateway::builder()
        .with_config(&format!(
            "[cors]\nallowed_origins = [\"{ORIGIN}\"]\n[server]\nmax_header_bytes = 70000\n"
        ))
        .start()
        .await;
    let alice = gw.token("alice");
    let preflight = |path: &str| {
        gw.client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", gw.url))
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
    };
    rec.send("preflight of confirm", preflight(SUCCESS), 200, None)
        .await;
    rec.send("preflight of presign", preflight(PRESIGN), 200, None)
        .await;
    rec.send(
        "preflight of an unknown path",
        preflight("/nowhere"),
        200,
        None,
    )
    .await;
    let cross_origin = rec
        .send(
            "cross-origin presign",
            presign_request(&gw, &alice, DEFAULT_QUERY).header("origin", ORIGIN),
            200,
            None,
        )
        .await;
    if cross_origin.header("access-control-allow-origin") != Some(ORIGIN) {
        rec.unmet
            .push("cross-origin presign: no Access-Control-Allow-Origin".into());
    }
    rec.send(
        "cross-origin presign without a token",
        gw.client
            .get(format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.url))
            .header("origin", ORIGIN),
        401,
        Some("token_missing"),
    )
    .await;
    let long = format!("{PRESIGN}?{DEFAULT_QUERY}&pad={}", "p".repeat(66_000));
    rec.raw(
        "presign with a 66 kB target",
        &gw,
        &raw_request("GET", &long, &alice, "", ""),
        414,
        None,
    )
    .await;
    rec.raw(
        "confirm with a 66 kB target",
        &gw,
        &raw_request(
            "POST",
            &format!("{SUCCESS}?pad={}", "p".repeat(66_000)),
            &alice,
            "Content-Length: 0\r\n",
            "",
        ),
        414,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_conforms_to_the_spec() {
    let mut spec = Spec::load();
    let mut rec = Recorder::default();
    everyday(&mut rec).await;
    issuer_and_audience(&mut rec).await;
    limits(&mut rec).await;
    faults(&mut rec).await;
    cors_and_long_targets(&mut rec).await;

    let mut violations = Vec::new();
    let mut covered: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut codes = BTreeSet::new();
    for exchange in &rec.exchanges {
        let mut found = check(&mut spec, exchange);
        found.extend(check_invariants(exchange));
        for violation in found {
            violations.push(format!(
                "[{}] {} {} -> {}: {violation}",
                exchange.label, exchange.method, exchange.path, exchange.status
            ));
        }
        let operation = match spec.target(&exchange.method, &exchange.path) {
            Target::Operation(_) => format!("{} {}", exchange.method, exchange.path),
            Target::OtherMethod(_) => format!("(other method) {}", exchange.path),
            Target::Unmatched => "(unmatched path)".into(),
        };
        covered
            .entry(operation)
            .or_default()
            .insert(exchange.status);
        if let Some(code) = exchange.code() {
            codes.insert(code);
        }
    }

    eprintln!(
        "{} responses checked against {SPEC_FILE}:",
        rec.exchanges.len()
    );
    for (operation, statuses) in &covered {
        eprintln!("  {operation}: {statuses:?}");
    }
    eprintln!("  problem codes seen ({}): {codes:?}", codes.len());
    for (path, item) in spec.doc["paths"].as_object().cloned().unwrap_or_default() {
        for (method, op) in item.as_object().cloned().unwrap_or_default() {
            let seen = covered
                .get(&format!("{} {path}", method.to_ascii_uppercase()))
                .cloned()
                .unwrap_or_default();
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
    let all_codes = enum_strings(&spec.doc["components"]["schemas"]["ProblemCode"]["enum"]);
    let unseen: Vec<&String> = all_codes.difference(&codes).collect();
    eprintln!("  problem codes documented, not provoked: {unseen:?}");
    for unmet in &rec.unmet {
        eprintln!("SCENARIO: {unmet}");
    }
    for violation in &violations {
        eprintln!("VIOLATION: {violation}");
    }
    assert!(
        rec.unmet.is_empty(),
        "{} scenarios did not provoke what they meant to (see above)",
        rec.unmet.len()
    );
    assert!(
        violations.is_empty(),
        "{} violations of the spec (see above)",
        violations.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The document on its own, and against the source
// ---------------------------------------------------------------------------------------------

/// Every problem code the gateway can answer with: its table of codes.
fn source_problem_codes() -> BTreeSet<String> {
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
    let produced = source_problem_codes();
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
