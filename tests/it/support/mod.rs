//! The test harness: a gateway on port 0 in front of the stand-in Kizen (also on port 0), a
//! builder with knobs, token signing, and assertion helpers.
#![allow(dead_code)]

pub mod faulty_store;
pub mod redis;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kizen_gateway::{
    App, Config,
    clock::ManualClock,
    standin::{RecordedRequest, Standin, StandinConfig},
    store::UploadStore,
};
use serde_json::{Value, json};
use tokio::{
    io::AsyncReadExt, io::AsyncWriteExt, net::TcpListener, sync::oneshot, task::JoinHandle,
};

pub const API_KEY: &str = "test-api-key-9f2c4e7a1b3d5f60c8e1";
pub const BUSINESS_ID: &str = "test-business-7d41c2";
pub const KIZEN_USER_ID: &str = "test-kizen-user-5e2a90";
pub const HS256_SECRET: &str = "test-hs256-secret-0123456789abcdef0123456789";
pub const PRESIGN: &str = "/api/s3/presigned-post";
pub const SUCCESS: &str = "/api/s3/success";
pub const DEFAULT_QUERY: &str = "contenttype=image%2Fpng&filename=photo.png&source=field_value";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

pub fn now() -> u64 {
    kizen_gateway::clock::seconds_since_epoch()
}

/// The static keys every test gateway trusts, one per algorithm family.
pub fn keys_toml() -> String {
    format!(
        r#"
[[auth.keys]]
algorithm = "HS256"
secret = "value:{HS256_SECRET}"

[[auth.keys]]
algorithm = "RS256"
public_key_file = "{rsa}"

[[auth.keys]]
kid = "ps-key"
algorithm = "PS256"
public_key_file = "{rsa2}"

[[auth.keys]]
algorithm = "ES256"
public_key_file = "{ec256}"

[[auth.keys]]
algorithm = "ES384"
public_key_file = "{ec384}"

[[auth.keys]]
algorithm = "EdDSA"
public_key_file = "{ed}"
"#,
        rsa = fixture("rsa-public.pem").display(),
        rsa2 = fixture("rsa2-public.pem").display(),
        ec256 = fixture("ec256-public.pem").display(),
        ec384 = fixture("ec384-public.pem").display(),
        ed = fixture("ed25519-public.pem").display(),
    )
}

pub struct TestGatewayBuilder {
    layers: Vec<String>,
    clock: ManualClock,
    store: Option<Arc<dyn UploadStore>>,
    keys: bool,
    upstream: Option<(Standin, String)>,
    admin: bool,
}

impl Default for TestGatewayBuilder {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            clock: ManualClock::default(),
            store: None,
            keys: true,
            upstream: None,
            admin: false,
        }
    }
}

impl TestGatewayBuilder {
    /// A TOML layer applied over the harness defaults (later layers win).
    pub fn with_config(mut self, toml: &str) -> Self {
        self.layers.push(toml.to_owned());
        self
    }

    pub fn with_rate_limit(self, burst: u32, period: &str) -> Self {
        self.with_config(&format!(
            "[presign]\nrate_limit_burst = {burst}\nrate_limit_period = \"{period}\"\n"
        ))
    }

    pub fn with_store(mut self, store: Arc<dyn UploadStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Use the Redis store (and the Redis rate limiter) at `urls`, with this key prefix.
    pub fn with_redis(self, urls: &[String], cluster: bool, prefix: &str) -> Self {
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        self.with_config(&format!(
            "[store]\nkind = \"redis\"\n[store.redis]\nurls = [{}]\ncluster = {cluster}\nprefix = \"{prefix}\"\noperation_timeout = \"500ms\"\n",
            urls.join(", ")
        ))
    }

    /// Drop the harness's static keys (for JWKS-only gateways).
    pub fn without_static_keys(mut self) -> Self {
        self.keys = false;
        self
    }

    /// Also start the admin listener (health, readiness, metrics) on a free port.
    pub fn with_admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Another replica: the same upstream stand-in (and clock) as `other`.
    pub fn sharing_upstream_with(mut self, other: &TestGateway) -> Self {
        self.upstream = Some((other.standin.clone(), other.standin_url.clone()));
        self.clock = other.clock.clone();
        self
    }

    pub async fn start(self) -> TestGateway {
        let (standin, standin_url) = match self.upstream {
            Some(shared) => shared,
            None => {
                let standin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let standin_url = format!("http://{}", standin_listener.local_addr().unwrap());
                let standin = Standin::new(StandinConfig {
                    api_key: API_KEY.into(),
                    business_id: BUSINESS_ID.into(),
                    user_id: None,
                    public_base: standin_url.clone(),
                    max_file_size: 1024 * 1024,
                });
                let router = standin.router();
                tokio::spawn(async move { axum::serve(standin_listener, router).await });
                (standin, standin_url)
            }
        };

        let base = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "{standin_url}"
api_key = "value:{API_KEY}"
business_id = "value:{BUSINESS_ID}"
user_id = "value:{KIZEN_USER_ID}"
request_timeout = "5s"
[presign]
rate_limit_burst = 1000
[auth]
# The harness's public keys and test JWKS serve tokens without `aud`; tests of audiences set them.
allow_any_audience = true
"#
        );
        let keys = if self.keys {
            keys_toml()
        } else {
            String::new()
        };
        let mut layers: Vec<&str> = vec![&base, &keys];
        layers.extend(self.layers.iter().map(String::as_str));
        let config = Config::from_toml_layers(&layers).expect("test config is valid");
        let clock = Arc::new(self.clock.clone());
        let app = match self.store {
            Some(store) => App::with_parts(config, store, clock),
            None => App::from_config_with_clock(config, clock).await,
        }
        .expect("app builds");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let admin = match self.admin {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let admin_url = admin
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().unwrap()));
        let handle = tokio::spawn(kizen_gateway::run_with_admin(listener, admin, app, async {
            let _ = stopped.await;
        }));
        TestGateway {
            url: format!("http://{addr}"),
            addr,
            admin_url,
            standin,
            standin_url,
            clock: self.clock,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            stop: Some(stop),
            handle,
        }
    }
}

pub struct TestGateway {
    pub url: String,
    pub addr: SocketAddr,
    /// Set by [`TestGatewayBuilder::with_admin`].
    pub admin_url: Option<String>,
    pub standin: Standin,
    pub standin_url: String,
    pub clock: ManualClock,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

/// An upload the gateway issued, as the client saw it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub s3object_id: String,
    pub key: String,
    pub body: Value,
}

impl TestGateway {
    pub fn builder() -> TestGatewayBuilder {
        TestGatewayBuilder::default()
    }

    pub async fn start() -> TestGateway {
        Self::builder().start().await
    }

    /// A valid HS256 token for `sub`, one hour left.
    pub fn token(&self, sub: &str) -> String {
        hs256(&json!({ "sub": sub, "iat": now(), "exp": now() + 3600 }))
    }

    pub async fn presign_query(&self, token: &str, query: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{PRESIGN}?{query}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn presign(&self, token: &str) -> reqwest::Response {
        self.presign_query(token, DEFAULT_QUERY).await
    }

    /// Presigns with the default query and asserts that it was issued.
    pub async fn issue(&self, token: &str) -> Issued {
        let response = self.presign(token).await;
        assert_eq!(response.status(), 200, "presign failed");
        let body: Value = response.json().await.unwrap();
        Issued {
            s3object_id: body["s3object_id"].as_str().unwrap().to_owned(),
            key: body["fields"]["key"].as_str().unwrap().to_owned(),
            body,
        }
    }

    pub async fn confirm_form(&self, token: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.client
            .post(format!("{}{SUCCESS}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn confirm(&self, token: &str, issued: &Issued) -> reqwest::Response {
        self.confirm_form(
            token,
            &[
                ("uuid", &issued.s3object_id),
                ("key", &issued.key),
                ("name", "photo.png"),
                ("etag", "\"abc123\""),
            ],
        )
        .await
    }

    /// Like [`TestGateway::confirm`], as a task of its own (for concurrent or abandoned calls).
    pub fn confirm_task(&self, token: &str, issued: &Issued) -> JoinHandle<reqwest::Response> {
        let request = self
            .client
            .post(format!("{}{SUCCESS}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs([
                        ("uuid", issued.s3object_id.as_str()),
                        ("key", &issued.key),
                        ("name", "photo.png"),
                        ("etag", "\"abc123\""),
                    ])
                    .finish(),
            );
        tokio::spawn(async move { request.send().await.unwrap() })
    }

    /// Repeats a confirmation while it answers one of `waiting` (its earlier outcome is not
    /// recorded yet, or the store is still away), for at most a few seconds; returns the first
    /// other answer.
    pub async fn confirm_while(
        &self,
        token: &str,
        issued: &Issued,
        waiting: &[u16],
    ) -> reqwest::Response {
        for _ in 0..800 {
            let response = self.confirm(token, issued).await;
            if !waiting.contains(&response.status().as_u16()) {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the confirmation kept answering {waiting:?}");
    }

    /// Requests the stand-in received on `path`.
    pub fn forwarded(&self, path: &str) -> Vec<RecordedRequest> {
        self.standin.requests_to(path)
    }

    /// Stops accepting, drains, and returns what `run` returned.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.expect("gateway task")
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn join(self) -> std::io::Result<()> {
        self.handle.await.expect("gateway task")
    }
}

/// Signs `claims` with the harness's HS256 secret.
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
        None,
        claims,
    )
}

pub fn sign(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn private_key(algorithm: Algorithm, file: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(file)).unwrap();
    match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => panic!("not an asymmetric algorithm"),
    }
}

/// Builds a token from raw JSON header and claims, signed with HMAC-SHA256 over `secret` (or
/// with an empty signature when `secret` is None): for headers jsonwebtoken refuses to write.
pub fn raw_token(header: &Value, claims: &Value, secret: Option<&[u8]>) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    match secret {
        Some(secret) => {
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{message}.{signature}")
        }
        None => format!("{message}."),
    }
}

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

/// Sends raw bytes on a new connection and returns everything the server wrote until it closed
/// the connection (or went quiet for a second after answering).
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One answer is all we ask for: stop at the end of its body.
                if response_complete(&out) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let head = text[..head_end].to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= head_end + 4 + length
}

/// The status code of a raw HTTP answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
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
