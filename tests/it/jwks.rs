//! Keys from a JWKS endpoint: a small JWKS server in the test serves a key set that can be swapped
//! at run time and counts its fetches. The gateway fetches once at start, refetches when a token
//! names an unknown `kid` (at most once per cooldown), keeps the last good set when a fetch fails,
//! and never takes a symmetric key or lets a token pick another algorithm than the key's. The
//! unknown-`kid` refetch is single-flight and nobody waits on a lock across it; an oversized
//! chunked answer is dropped as soon as it passes the size limit.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, EncodingKey,
    jwk::{Jwk, PublicKeyUse},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};

use crate::support::*;

const SYMMETRIC_SECRET: &[u8] = b"jwks-symmetric-secret-0123456789abcdef";

/// What the JWKS endpoint answers.
#[derive(Clone)]
enum Answer {
    /// 200 with this JWKS document.
    Document(Value),
    /// This status, empty body.
    Status(u16),
    /// 200, `application/json`, with this (not necessarily JSON) body.
    Raw(&'static str),
    /// 200, `application/json`, chunked (no Content-Length), a body that never ends: see
    /// [`Endless`].
    Endless,
}

#[derive(Clone)]
struct Shared {
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    fetched: Arc<watch::Sender<usize>>,
    /// While `false`, every fetch is held (counted, not answered) until the test opens it.
    gate: Arc<watch::Sender<bool>>,
    /// Bytes of [`Answer::Endless`] bodies handed to the connection, and whether one was dropped
    /// (its connection closed).
    endless_served: Arc<AtomicUsize>,
    endless_dropped: Arc<watch::Sender<bool>>,
}

/// Served by [`Answer::Endless`] at most; then the body stays open without another byte.
const ENDLESS_CAP: usize = 64 * 1024 * 1024;
static ENDLESS_CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// The start of a JWKS document, then whitespace in 64 KiB chunks (up to [`ENDLESS_CAP`]) and then
/// nothing, never an end. Reports the bytes it produced and its drop.
struct Endless {
    started: bool,
    served: Arc<AtomicUsize>,
    dropped: Arc<watch::Sender<bool>>,
}

impl axum::body::HttpBody for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let chunk = if !self.started {
            self.started = true;
            Bytes::from_static(b"{\"keys\": [")
        } else if self.served.load(Ordering::SeqCst) < ENDLESS_CAP {
            Bytes::from_static(&ENDLESS_CHUNK)
        } else {
            // Never woken: the body ends only when its connection goes.
            return Poll::Pending;
        };
        self.served.fetch_add(chunk.len(), Ordering::SeqCst);
        Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.dropped.send_replace(true);
    }
}

/// The test's identity provider: `GET /jwks` answers the current [`Answer`].
struct JwksServer {
    url: String,
    shared: Shared,
    fetched: watch::Receiver<usize>,
}

async fn jwks_endpoint(State(shared): State<Shared>) -> Response {
    // Counted before answering: when the gateway has the answer, the count includes its fetch.
    let count = shared.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    shared.fetched.send_replace(count);
    let _ = shared.gate.subscribe().wait_for(|open| *open).await;
    let answer = shared.answer.lock().unwrap().clone();
    match answer {
        Answer::Document(document) => (
            [(header::CONTENT_TYPE, "application/json")],
            document.to_string(),
        )
            .into_response(),
        Answer::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answer::Raw(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Answer::Endless => (
            [(header::CONTENT_TYPE, "application/json")],
            Body::new(Endless {
                started: false,
                served: shared.endless_served.clone(),
                dropped: shared.endless_dropped.clone(),
            }),
        )
            .into_response(),
    }
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Self {
        let (sender, fetched) = watch::channel(0);
        let shared = Shared {
            answer: Arc::new(Mutex::new(Answer::Document(json!({ "keys": keys })))),
            fetches: Arc::new(AtomicUsize::new(0)),
            fetched: Arc::new(sender),
            gate: Arc::new(watch::Sender::new(true)),
            endless_served: Arc::new(AtomicUsize::new(0)),
            endless_dropped: Arc::new(watch::Sender::new(false)),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let router = Router::new()
            .route("/jwks", get(jwks_endpoint))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url,
            shared,
            fetched,
        }
    }

    fn serve_keys(&self, keys: Vec<Value>) {
        self.answer(Answer::Document(json!({ "keys": keys })));
    }

    fn answer(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// Holds every fetch from now on until [`JwksServer::release`].
    fn hold(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Lets held and later fetches be answered.
    fn release(&self) {
        self.shared.gate.send_replace(true);
    }

    fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Awaits the `count`th fetch (with a generous deadline so that a bug fails, not hangs).
    async fn wait_for_fetches(&self, count: usize) {
        let mut fetched = self.fetched.clone();
        tokio::time::timeout(Duration::from_secs(10), fetched.wait_for(|&n| n >= count))
            .await
            .unwrap_or_else(|_| panic!("the JWKS was not fetched {count} times"))
            .unwrap();
    }

    /// A JWKS-only gateway in front of this endpoint, after its start-up fetch.
    async fn gateway(&self, refetch_cooldown: &str) -> TestGateway {
        self.gateway_with_fetch_timeout(refetch_cooldown, "5s")
            .await
    }

    async fn gateway_with_fetch_timeout(
        &self,
        refetch_cooldown: &str,
        fetch_timeout: &str,
    ) -> TestGateway {
        let gw = TestGateway::builder()
            .without_static_keys()
            .with_config(&format!(
                "[auth.jwks]\nurl = \"{}\"\nrefetch_cooldown = \"{refetch_cooldown}\"\n\
                 fetch_timeout = \"{fetch_timeout}\"\nrefresh_interval = \"1h\"\n",
                self.url
            ))
            .start()
            .await;
        self.wait_for_fetches(1).await;
        assert_eq!(self.fetches(), 1, "one fetch at start");
        gw
    }
}

/// The public JWK of a fixture private key, with `alg`, `use` = sig and `kid`.
fn jwk(algorithm: Algorithm, private_file: &str, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&private_key(algorithm, private_file), algorithm)
        .expect("a JWK from the fixture key");
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    let value = serde_json::to_value(&jwk).unwrap();
    assert!(value.get("d").is_none(), "no private part in the JWK");
    value
}

fn rsa_jwk(kid: &str) -> Value {
    jwk(Algorithm::RS256, "rsa-private.pem", kid)
}

fn rsa2_jwk(kid: &str) -> Value {
    jwk(Algorithm::RS256, "rsa2-private.pem", kid)
}

fn ec_jwk(kid: &str) -> Value {
    jwk(Algorithm::ES256, "ec256-private.pem", kid)
}

fn token(algorithm: Algorithm, private_file: &str, kid: Option<&str>, sub: &str) -> String {
    signed(algorithm, private_file, kid, &claims(sub))
}

fn rsa_token(kid: &str) -> String {
    token(Algorithm::RS256, "rsa-private.pem", Some(kid), "alice")
}

fn rsa2_token(kid: &str) -> String {
    token(Algorithm::RS256, "rsa2-private.pem", Some(kid), "alice")
}

fn ec_token(kid: &str) -> String {
    token(Algorithm::ES256, "ec256-private.pem", Some(kid), "alice")
}

#[tokio::test]
async fn tokens_whose_kid_is_in_the_set_are_accepted() {
    let jwks = JwksServer::start(vec![
        rsa_jwk("rsa-1"),
        ec_jwk("ec-1"),
        jwk(Algorithm::ES384, "ec384-private.pem", "ec384-1"),
        jwk(Algorithm::EdDSA, "ed25519-private.pem", "ed-1"),
    ])
    .await;
    let gw = jwks.gateway("30s").await;

    accepted(&gw, &rsa_token("rsa-1")).await;
    accepted(&gw, &ec_token("ec-1")).await;
    accepted(
        &gw,
        &token(
            Algorithm::ES384,
            "ec384-private.pem",
            Some("ec384-1"),
            "bob",
        ),
    )
    .await;
    accepted(
        &gw,
        &token(
            Algorithm::EdDSA,
            "ed25519-private.pem",
            Some("ed-1"),
            "carol",
        ),
    )
    .await;
    assert_eq!(jwks.fetches(), 1, "known kids need no refetch");

    // A known kid does not make another key's signature good.
    rejected(&gw, &rsa2_token("rsa-1"), "token_bad_signature").await;
    let es_under_rsa_kid = token(Algorithm::ES256, "ec256-private.pem", Some("rsa-1"), "eve");
    rejected(&gw, &es_under_rsa_kid, "token_unknown_key").await;
    // Every key in the set has a kid: a token without one matches none (and refetches nothing).
    let no_kid = token(Algorithm::RS256, "rsa-private.pem", None, "alice");
    rejected(&gw, &no_kid, "token_unknown_key").await;
    assert_eq!(jwks.fetches(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_one_refetch_and_the_old_one_dropped() {
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    let gw = jwks.gateway("1h").await;
    accepted(&gw, &rsa_token("rsa-1")).await;

    // The identity provider rotates: the set now holds only a new key with a new kid.
    jwks.serve_keys(vec![rsa2_jwk("rsa-2")]);
    accepted(&gw, &rsa2_token("rsa-2")).await;
    assert_eq!(jwks.fetches(), 2, "exactly one refetch, on the unknown kid");

    // The cache was replaced whole: the old kid is gone, and within the cooldown it is not
    // refetched for.
    rejected(&gw, &rsa_token("rsa-1"), "token_unknown_key").await;
    assert_eq!(jwks.fetches(), 2);
    accepted(&gw, &rsa2_token("rsa-2")).await;
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_cooldown() {
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    let gw = jwks.gateway("1h").await;

    // Concurrent tokens with unknown kids: one refetch between them.
    let (a, b, c) = (
        rsa_token("ghost-a"),
        rsa_token("ghost-b"),
        rsa_token("ghost-c"),
    );
    let (ra, rb, rc) = tokio::join!(gw.presign(&a), gw.presign(&b), gw.presign(&c));
    for (response, token) in [(ra, &a), (rb, &b), (rc, &c)] {
        assert_unauthorized(response, &["token_unknown_key"], token).await;
    }
    assert!(gw.forwarded(PRESIGN).is_empty());
    assert_eq!(jwks.fetches(), 2, "one refetch for three unknown kids");

    for kid in ["ghost-d", "ghost-e", "ghost-f"] {
        rejected(&gw, &rsa_token(kid), "token_unknown_key").await;
    }
    assert_eq!(jwks.fetches(), 2, "no refetch within the cooldown");

    // Even a kid the endpoint now serves waits for the cooldown (or the background refresh).
    jwks.serve_keys(vec![rsa_jwk("rsa-1"), rsa2_jwk("late")]);
    rejected(&gw, &rsa2_token("late"), "token_unknown_key").await;
    assert_eq!(jwks.fetches(), 2);

    // The cached set still serves.
    accepted(&gw, &rsa_token("rsa-1")).await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
}

#[tokio::test]
async fn zero_cooldown_refetches_for_every_unknown_kid() {
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    let gw = jwks.gateway("0s").await;

    for (i, kid) in ["ghost-a", "ghost-b", "ghost-c"].into_iter().enumerate() {
        rejected(&gw, &rsa_token(kid), "token_unknown_key").await;
        assert_eq!(jwks.fetches(), 2 + i, "one refetch per unknown kid");
    }
    // The same unknown kid again: again a refetch.
    rejected(&gw, &rsa_token("ghost-a"), "token_unknown_key").await;
    assert_eq!(jwks.fetches(), 5);
    assert!(gw.forwarded(PRESIGN).is_empty());

    jwks.serve_keys(vec![rsa_jwk("rsa-1"), ec_jwk("ec-new")]);
    accepted(&gw, &ec_token("ec-new")).await;
    assert_eq!(jwks.fetches(), 6);
    accepted(&gw, &rsa_token("rsa-1")).await;
    assert_eq!(jwks.fetches(), 6, "known kids need no refetch");
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_key_set() {
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1"), ec_jwk("ec-1")]).await;
    let gw = jwks.gateway("0s").await;
    accepted(&gw, &rsa_token("rsa-1")).await;

    let mut encryption_only = rsa2_jwk("enc-key");
    encryption_only["use"] = json!("enc");
    let failures = [
        Answer::Status(500),
        Answer::Status(404),
        Answer::Raw("{not json"),
        Answer::Raw("{\"keys\": \"none\"}"),
        Answer::Document(json!({ "keys": [] })),
        // Only keys that cannot be used: one without its modulus, one for encryption.
        Answer::Document(json!({ "keys": [{ "kty": "RSA", "kid": "broken", "e": "AQAB" }] })),
        // Empty or short moduli parse as keys but verify nothing: refused like a failure.
        Answer::Document(json!({ "keys": [{ "kty": "RSA", "kid": "empty", "n": "", "e": "" }] })),
        Answer::Document(
            json!({ "keys": [{ "kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB" }] }),
        ),
        Answer::Document(json!({ "keys": [encryption_only] })),
    ];
    let mut expected_fetches = 1;
    for (i, failure) in failures.into_iter().enumerate() {
        jwks.answer(failure);
        rejected(&gw, &rsa_token(&format!("ghost-{i}")), "token_unknown_key").await;
        expected_fetches += 1;
        assert_eq!(jwks.fetches(), expected_fetches, "failure {i}: refetched");
        // Both cached keys still verify.
        accepted(&gw, &rsa_token("rsa-1")).await;
        accepted(&gw, &ec_token("ec-1")).await;
        assert_eq!(jwks.fetches(), expected_fetches);
    }

    // Once the endpoint recovers, its new set replaces the cached one.
    jwks.serve_keys(vec![rsa2_jwk("rsa-2")]);
    accepted(&gw, &rsa2_token("rsa-2")).await;
    assert_eq!(jwks.fetches(), expected_fetches + 1);
    rejected(&gw, &rsa_token("rsa-1"), "token_unknown_key").await;
}

#[tokio::test]
async fn symmetric_and_non_signature_keys_from_the_jwks_are_never_used() {
    let symmetric = EncodingKey::from_secret(SYMMETRIC_SECRET);
    let mut oct = Jwk::from_encoding_key(&symmetric, Algorithm::HS256).unwrap();
    oct.common.key_id = Some("sym".into());
    let oct = serde_json::to_value(&oct).unwrap();
    assert_eq!(oct["kty"], "oct");
    assert_eq!(oct["k"], URL_SAFE_NO_PAD.encode(SYMMETRIC_SECRET));
    let mut oct_without_alg = oct.clone();
    oct_without_alg["kid"] = json!("sym-no-alg");
    oct_without_alg.as_object_mut().unwrap().remove("alg");
    let mut encryption = rsa2_jwk("enc-key");
    encryption["use"] = json!("enc");

    let jwks = JwksServer::start(vec![oct, oct_without_alg, encryption, rsa_jwk("rsa-1")]).await;
    let gw = jwks.gateway("1h").await;
    // The document was taken: its RSA key works.
    accepted(&gw, &rsa_token("rsa-1")).await;

    for kid in [Some("sym"), Some("sym-no-alg"), None] {
        let forged = sign(Algorithm::HS256, &symmetric, kid, &claims("mallory"));
        rejected(&gw, &forged, "token_unknown_key").await;
    }
    rejected(&gw, &rsa2_token("enc-key"), "token_unknown_key").await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);
}

#[tokio::test]
async fn a_jwk_alg_pins_the_algorithm() {
    let mut ps_jwk = rsa2_jwk("ps-1");
    ps_jwk["alg"] = json!("PS256");
    let jwks = JwksServer::start(vec![rsa_jwk("rs-1"), ps_jwk]).await;
    let gw = jwks.gateway("30s").await;

    // An RS256 signature relabelled as PS256 under the RS256 key's kid.
    let original = rsa_token("rs-1");
    let (_, rest) = original.split_once('.').unwrap();
    let relabelled_header = json!({ "alg": "PS256", "typ": "JWT", "kid": "rs-1" });
    let relabelled = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&relabelled_header).unwrap())
    );
    rejected(&gw, &relabelled, "token_unknown_key").await;
    // A genuine PS256 signature by the same RSA key: still not the key's algorithm.
    let ps_by_rs_key = token(Algorithm::PS256, "rsa-private.pem", Some("rs-1"), "alice");
    rejected(&gw, &ps_by_rs_key, "token_unknown_key").await;
    // And the other way round: the PS256 key does not verify RS256.
    let rs_by_ps_key = token(Algorithm::RS256, "rsa2-private.pem", Some("ps-1"), "alice");
    rejected(&gw, &rs_by_ps_key, "token_unknown_key").await;
    assert_eq!(jwks.fetches(), 1, "known kids: no refetch");
    assert!(gw.forwarded(PRESIGN).is_empty());

    accepted(&gw, &original).await;
    accepted(
        &gw,
        &token(Algorithm::PS256, "rsa2-private.pem", Some("ps-1"), "bob"),
    )
    .await;
}

#[tokio::test]
async fn rsa_keys_without_alg_get_the_configured_rsa_algorithm() {
    let mut rs_jwk = rsa_jwk("rs-1");
    rs_jwk.as_object_mut().unwrap().remove("alg");
    let jwks = JwksServer::start(vec![rs_jwk]).await;
    let gw = TestGateway::builder()
        .without_static_keys()
        .with_config(&format!(
            "[auth.jwks]\nurl = \"{}\"\nrsa_algorithm = \"PS256\"\nrefresh_interval = \"1h\"\n",
            jwks.url
        ))
        .start()
        .await;
    jwks.wait_for_fetches(1).await;

    rejected(&gw, &rsa_token("rs-1"), "token_unknown_key").await;
    accepted(
        &gw,
        &token(Algorithm::PS256, "rsa-private.pem", Some("rs-1"), "alice"),
    )
    .await;
    assert_eq!(jwks.fetches(), 1);
}

#[tokio::test]
async fn a_jwks_tied_to_an_issuer_verifies_only_that_issuers_tokens() {
    const IDP_A: &str = "https://idp-a.example";
    const IDP_B: &str = "https://idp-b.example";
    // Issuer A publishes a JWKS; issuer B's key is a static one. Harness keys dropped.
    let jwks = JwksServer::start(vec![rsa_jwk("a-1")]).await;
    let gw = TestGateway::builder()
        .without_static_keys()
        .with_config(&format!(
            r#"
[auth]
issuers = ["{IDP_A}", "{IDP_B}"]
audiences = ["kizen-gw"]
[auth.jwks]
url = "{url}"
issuer = "{IDP_A}"
refresh_interval = "1h"
[[auth.keys]]
algorithm = "ES256"
public_key_file = "{ec}"
issuer = "{IDP_B}"
"#,
            url = jwks.url,
            ec = fixture("ec256-public.pem").display(),
        ))
        .start()
        .await;
    jwks.wait_for_fetches(1).await;
    let at =
        |iss: &str| json!({ "sub": "alice", "iss": iss, "aud": "kizen-gw", "exp": now() + 3600 });
    let by_jwks = |iss: &str| {
        sign(
            Algorithm::RS256,
            &private_key(Algorithm::RS256, "rsa-private.pem"),
            Some("a-1"),
            &at(iss),
        )
    };
    let by_static = |iss: &str| {
        sign(
            Algorithm::ES256,
            &private_key(Algorithm::ES256, "ec256-private.pem"),
            None,
            &at(iss),
        )
    };

    rejected(&gw, &by_jwks(IDP_B), "token_wrong_issuer").await;
    rejected(&gw, &by_static(IDP_A), "token_wrong_issuer").await;
    assert!(gw.forwarded(PRESIGN).is_empty());
    accepted(&gw, &by_jwks(IDP_A)).await;
    accepted(&gw, &by_static(IDP_B)).await;
}

/// Presigns with each token at once, from tasks of their own; the answers in token order.
async fn presign_all(gw: &Arc<TestGateway>, tokens: &[String]) -> Vec<reqwest::Response> {
    let tasks: Vec<_> = tokens
        .iter()
        .map(|token| {
            let (gw, token) = (Arc::clone(gw), token.clone());
            tokio::spawn(async move { gw.presign(&token).await })
        })
        .collect();
    let mut responses = Vec::with_capacity(tasks.len());
    for task in tasks {
        responses.push(task.await.unwrap());
    }
    responses
}

#[tokio::test]
async fn random_kids_during_a_stalled_fetch_share_it_and_wait_at_most_its_timeout() {
    const REQUESTS: usize = 24;
    // No cooldown: without a single flight every one of these requests would fetch, one after
    // another, each waiting behind the fetch before it.
    let fetch_timeout = Duration::from_secs(3);
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    let gw = Arc::new(jwks.gateway_with_fetch_timeout("0s", "3s").await);
    let tokens: Vec<String> = (0..REQUESTS)
        .map(|_| rsa_token(&format!("random-{}", uuid::Uuid::new_v4())))
        .collect();

    // The endpoint takes each request and never answers while held.
    jwks.hold();
    let started = tokio::time::Instant::now();
    let responses = tokio::time::timeout(Duration::from_secs(30), presign_all(&gw, &tokens))
        .await
        .expect("unknown kids were answered within a few fetch timeouts, not one per request");
    let elapsed = started.elapsed();
    for (response, token) in responses.into_iter().zip(&tokens) {
        assert_unauthorized(response, &["token_unknown_key"], token).await;
    }
    assert_eq!(
        jwks.fetches(),
        2,
        "one refetch for {REQUESTS} unknown kids, shared while it was in flight"
    );
    assert!(
        elapsed < fetch_timeout * 3,
        "answered after {elapsed:?}: bounded by the fetch timeout ({fetch_timeout:?})"
    );
    assert!(gw.forwarded(PRESIGN).is_empty());

    // The timed-out refetch is over: the next unknown kid fetches again, and the cached set
    // still serves.
    jwks.release();
    rejected(&gw, &rsa_token("ghost-after"), "token_unknown_key").await;
    assert_eq!(jwks.fetches(), 3);
    accepted(&gw, &rsa_token("rsa-1")).await;
    assert_eq!(jwks.fetches(), 3);
}

#[tokio::test]
async fn tokens_waiting_on_a_refetch_get_its_new_keys() {
    const REQUESTS: usize = 12;
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    let gw = Arc::new(jwks.gateway_with_fetch_timeout("0s", "30s").await);

    // A rotation: the endpoint now serves a new key, tokens signed with it arrive together while
    // the refetch they started is held.
    jwks.serve_keys(vec![rsa_jwk("rsa-1"), rsa2_jwk("rsa-2")]);
    jwks.hold();
    let tokens: Vec<String> = (0..REQUESTS).map(|_| rsa2_token("rsa-2")).collect();
    let all = tokio::spawn({
        let gw = Arc::clone(&gw);
        async move { presign_all(&gw, &tokens).await }
    });
    jwks.wait_for_fetches(2).await;
    jwks.release();
    let responses = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("answered once the refetch ended")
        .unwrap();
    for response in responses {
        assert_eq!(response.status(), 200, "a token with the new kid refused");
    }
    // Each request started the refetch, joined it, or came after it and found the key.
    assert_eq!(jwks.fetches(), 2, "one refetch");
    assert_eq!(gw.forwarded(PRESIGN).len(), REQUESTS);
}

#[tokio::test]
async fn a_chunked_jwks_answer_over_the_size_limit_is_dropped_without_reading_it_all() {
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    // A fetch timeout far beyond the test's deadlines: only the size limit can end this fetch.
    let gw = jwks.gateway_with_fetch_timeout("0s", "1h").await;

    jwks.answer(Answer::Endless);
    tokio::time::timeout(
        Duration::from_secs(30),
        rejected(&gw, &rsa_token("ghost"), "token_unknown_key"),
    )
    .await
    .expect("the oversized answer was refused, not read to its end");
    assert_eq!(jwks.fetches(), 2);
    // The gateway dropped the connection: the endless body went with it.
    let mut dropped = jwks.shared.endless_dropped.subscribe();
    tokio::time::timeout(Duration::from_secs(30), dropped.wait_for(|d| *d))
        .await
        .expect("the gateway closed the connection of the oversized answer")
        .unwrap();
    let served = jwks.shared.endless_served.load(Ordering::SeqCst);
    assert!(
        served < ENDLESS_CAP,
        "{served} bytes served: the gateway read on past its limit"
    );

    // The last good set stays.
    accepted(&gw, &rsa_token("rsa-1")).await;
    assert_eq!(jwks.fetches(), 2);
}

/// A JWKS-only gateway with the admin listener (for the cache metrics), after its first fetch.
async fn gateway_with_admin(jwks: &JwksServer, refetch_cooldown: &str) -> TestGateway {
    let gw = TestGateway::builder()
        .without_static_keys()
        .with_admin()
        .with_config(&format!(
            "[auth.jwks]\nurl = \"{}\"\nrefetch_cooldown = \"{refetch_cooldown}\"\n\
             refresh_interval = \"1h\"\n",
            jwks.url
        ))
        .start()
        .await;
    jwks.wait_for_fetches(1).await;
    gw
}

#[tokio::test]
async fn a_cached_token_of_a_key_dropped_from_the_jwks_is_refused() {
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    let gw = gateway_with_admin(&jwks, "1h").await;
    let old = rsa_token("rsa-1");
    accepted(&gw, &old).await;
    accepted(&gw, &old).await;
    assert_eq!(
        metric(&gw, TOKEN_CACHE_HITS).await,
        1.0,
        "the token is cached"
    );

    // The identity provider drops rsa-1; a token naming its new key makes the gateway refetch.
    jwks.serve_keys(vec![rsa2_jwk("rsa-2")]);
    accepted(&gw, &rsa2_token("rsa-2")).await;
    assert_eq!(jwks.fetches(), 2);

    rejected(&gw, &old, "token_unknown_key").await;
    rejected(&gw, &old, "token_unknown_key").await;
    assert_eq!(
        metric(&gw, TOKEN_CACHE_HITS).await,
        1.0,
        "the dropped key's token is never served from the cache"
    );
}

#[tokio::test]
async fn a_jwks_fetch_with_the_same_keys_keeps_the_cache() {
    let jwks = JwksServer::start(vec![rsa_jwk("rsa-1")]).await;
    // No cooldown: every unknown kid refetches.
    let gw = gateway_with_admin(&jwks, "0s").await;
    let token = rsa_token("rsa-1");
    accepted(&gw, &token).await;
    rejected(&gw, &rsa_token("rsa-unknown"), "token_unknown_key").await;
    assert_eq!(jwks.fetches(), 2, "a refetch, of the same keys");
    accepted(&gw, &token).await;
    assert_eq!(metric(&gw, TOKEN_CACHE_HITS).await, 1.0, "still cached");
}
