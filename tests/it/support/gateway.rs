//! The test gateway: the gateway on a free port in front of its own stand-in of Kizen (also on a
//! free port), started by a builder with knobs, and the client calls the tests make of it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kizen_gateway::{
    App, Config,
    clock::{Clock, ManualClock},
    standin::{RecordedRequest, Standin, StandinConfig},
    store::UploadStore,
};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use super::tokens::{claims, fixture, hs256};

pub const API_KEY: &str = "test-api-key-9f2c4e7a1b3d5f60c8e1";
pub const BUSINESS_ID: &str = "test-business-7d41c2";
pub const KIZEN_USER_ID: &str = "test-kizen-user-5e2a90";
pub const HS256_SECRET: &str = "test-hs256-secret-0123456789abcdef0123456789";
pub const PRESIGN: &str = "/api/s3/presigned-post";
pub const SUCCESS: &str = "/api/s3/success";
pub const DEFAULT_QUERY: &str = "contenttype=image%2Fpng&filename=photo.png&source=field_value";

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

/// A test clock at the real time, unless that is in the last five minutes of a UTC day: then just
/// past midnight, so that a test moving time by a few minutes never sees its daily counters reset
/// halfway. Upload windows (an hour past Kizen's `expires_at`) easily absorb that offset.
fn clock_clear_of_midnight() -> ManualClock {
    let clock = ManualClock::default();
    let seconds_into_day = clock.now().unix_timestamp().rem_euclid(86_400);
    let to_midnight = 86_400 - seconds_into_day;
    if to_midnight <= 300 {
        clock.advance(Duration::from_secs(to_midnight as u64 + 1));
    }
    clock
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
            clock: clock_clear_of_midnight(),
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

    /// The Redis store, its master found through `sentinels` under `master_name`.
    pub fn with_redis_sentinel(
        self,
        sentinels: &[String],
        master_name: &str,
        prefix: &str,
    ) -> Self {
        let urls: Vec<String> = sentinels.iter().map(|u| format!("{u:?}")).collect();
        self.with_config(&format!(
            "[store]\nkind = \"redis\"\n[store.redis]\nprefix = \"{prefix}\"\noperation_timeout = \"500ms\"\n[store.redis.sentinel]\nmaster_name = \"{master_name}\"\nurls = [{}]\n",
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
                    upload_ttl: Duration::from_secs(300),
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

impl Issued {
    /// The upload that a presign answer's `body` issued.
    pub fn from_answer(body: Value) -> Self {
        Self {
            s3object_id: body["s3object_id"].as_str().unwrap().to_owned(),
            key: body["fields"]["key"].as_str().unwrap().to_owned(),
            body,
        }
    }

    /// The form of a plain confirmation of this upload.
    pub fn confirmation(&self) -> String {
        form(&[
            ("uuid", &self.s3object_id),
            ("key", &self.key),
            ("name", "photo.png"),
            ("etag", "\"abc123\""),
        ])
    }
}

/// An `application/x-www-form-urlencoded` body of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
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
        hs256(&claims(sub))
    }

    /// A presign of `query` with `token`, to send.
    pub fn presign_request(&self, token: &str, query: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{PRESIGN}?{query}", self.url))
            .bearer_auth(token)
    }

    /// A confirmation with `token` and this form `body`, to send.
    pub fn confirm_request(&self, token: &str, body: String) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{SUCCESS}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }

    pub async fn presign_query(&self, token: &str, query: &str) -> reqwest::Response {
        self.presign_request(token, query).send().await.unwrap()
    }

    pub async fn presign(&self, token: &str) -> reqwest::Response {
        self.presign_query(token, DEFAULT_QUERY).await
    }

    /// Presigns with the default query and asserts that it was issued.
    pub async fn issue(&self, token: &str) -> Issued {
        let response = self.presign(token).await;
        assert_eq!(response.status(), 200, "presign failed");
        Issued::from_answer(response.json().await.unwrap())
    }

    pub async fn confirm_form(&self, token: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
        self.confirm_request(token, form(pairs))
            .send()
            .await
            .unwrap()
    }

    pub async fn confirm(&self, token: &str, issued: &Issued) -> reqwest::Response {
        self.confirm_request(token, issued.confirmation())
            .send()
            .await
            .unwrap()
    }

    /// Confirms `uuid` with the key a [`presign_answer`](super::presign_answer) gives it; used
    /// to show that an upload was never recorded.
    pub async fn confirm_uuid(&self, token: &str, uuid: &str) -> reqwest::Response {
        self.confirm_form(
            token,
            &[
                ("uuid", uuid),
                ("key", &format!("uploads/{uuid}/photo.png")),
                ("name", "photo.png"),
                ("etag", "abc"),
            ],
        )
        .await
    }

    /// Like [`TestGateway::confirm`], as a task of its own (for concurrent or abandoned calls).
    pub fn confirm_task(&self, token: &str, issued: &Issued) -> JoinHandle<reqwest::Response> {
        let request = self.confirm_request(token, issued.confirmation());
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
