//! End-user authentication: `Authorization: Bearer <JWT>`, verified against keys whose algorithm
//! is pinned by configuration, never by the token. [`Verifier::verify`] turns a token into an [`AuthenticatedUser`].
//!
//! Order of work for one token, cheapest first, so that floods of junk cost little:
//! size cap, shape (three base64url segments), the verified-token cache ([`cache`]: a token that
//! verified before is accepted again while its time claims hold), header (known `alg`, no `crit`),
//! a key that serves this `alg`/`kid`, `exp` read without verification, then one signature check
//! per candidate key, then the claims. The bearer extractor is [`crate::routes::extract`]'s.
//!
//! Every time check of ours (the `exp` pre-check, `iat`, the cache's rechecks) reads the
//! verifier's clock, the system clock; jsonwebtoken checks `exp` and `nbf` against the system
//! clock too.

pub mod cache;
pub mod jwks;
pub mod keys;

use std::sync::Arc;

use cache::{Lookup, TokenCache, TokenTimes};
use jsonwebtoken::{Algorithm, errors::ErrorKind};
use jwks::JwksCache;
use keys::{ClaimRules, KeySet, VerificationKey};
use serde_json::{Map, Value};

use crate::{
    clock::{Clock, SystemClock},
    config::AuthConfig,
    observability::metrics::Metrics,
};

/// Why a token was refused. The code names the class of problem, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header, or one with another scheme than Bearer (`token_missing`).
    Missing,
    /// Not one well-formed JWT: too long, wrong shape, undecodable, a non-numeric `iat`, or two
    /// `Authorization` headers (`token_malformed`).
    Malformed,
    /// An `alg`, `typ` or `crit` the gateway refuses, `none` included (`token_unsupported`).
    Unsupported,
    /// No key serves the token's `kid` and `alg`, after any JWKS refetch (`token_unknown_key`).
    UnknownKey,
    /// No candidate key verifies the signature (`token_bad_signature`).
    BadSignature,
    /// `exp` is past, beyond the leeway (`token_expired`).
    Expired,
    /// `nbf` or `iat` is in the future, beyond the leeway (`token_not_yet_valid`).
    NotYetValid,
    /// `iss` is missing or not accepted by the key that verified the token (`token_wrong_issuer`).
    WrongIssuer,
    /// `aud` is missing or names none of `auth.audiences` (`token_wrong_audience`).
    WrongAudience,
    /// `exp`, the identity or the X-USER-ID claim is absent or unusable (`token_missing_claim`).
    MissingClaim,
}

impl AuthFailure {
    /// What is wrong with the token, for the problem's `detail`: the class of problem, never
    /// the token.
    pub fn detail(self) -> &'static str {
        match self {
            Self::Missing => "send the end user's token as `Authorization: Bearer <JWT>`",
            Self::Malformed => "the bearer token is not a well-formed JWT",
            Self::Unsupported => {
                "the token uses an algorithm or header this gateway does not accept"
            }
            Self::UnknownKey => "no configured key matches the token's `kid` and `alg`",
            Self::BadSignature => "the token's signature does not verify",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet (`nbf` or `iat` in the future)",
            Self::WrongIssuer => "the token's issuer is not accepted",
            Self::WrongAudience => "the token's audience is not accepted",
            Self::MissingClaim => "the token lacks a required claim",
        }
    }
}

/// The verified end user of a request.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    /// Whose uploads these are: the identity claim (`auth.user_claim`) as it is with one issuer
    /// or none; with several, the issuer and the claim (see [`qualified_user_id`]).
    pub id: String,
    /// The X-USER-ID claim, when `upstream.user_id_claim` is configured.
    pub upstream_user_id: Option<String>,
    /// The quota tier claim, when `quotas.tier_claim` is configured and the token carries it.
    pub tier: Option<String>,
}

/// Longest identity accepted from a claim.
const MAX_USER_ID_BYTES: usize = 256;

/// Separates issuer and subject in [`qualified_user_id`]; configuration refuses issuers with
/// whitespace, so the first space of an id ends its issuer.
pub const ISSUER_SUBJECT_SEPARATOR: char = ' ';

/// The identity of a user when several issuers are configured: `<iss> <subject>`, for example
/// `https://idp-a.example/ alice`. The same subject at two issuers is two users. Unambiguous: an
/// issuer is one of the configured ones, which never contain whitespace, so the id splits at
/// its first space.
pub fn qualified_user_id(issuer: &str, subject: &str) -> String {
    format!("{issuer}{ISSUER_SUBJECT_SEPARATOR}{subject}")
}

/// Turns bearer tokens into users: the static keys, the JWKS, the claim rules and the
/// verified-token cache, shared by every request and swapped in place on reload.
pub struct Verifier {
    /// Replaced whole when key files change (see [`crate::reload`]).
    static_keys: std::sync::RwLock<Arc<KeySet>>,
    rules: ClaimRules,
    jwks: Option<Arc<JwksCache>>,
    user_claim: String,
    upstream_user_id_claim: Option<String>,
    tier_claim: Option<String>,
    leeway_secs: u64,
    max_token_bytes: usize,
    /// Several issuers: the identity is issuer and subject.
    multiple_issuers: bool,
    /// `None` when `auth.token_cache.enabled = false`.
    token_cache: Option<Arc<TokenCache>>,
    /// The time tokens are checked against. Always the system clock outside unit tests: tokens
    /// carry real time, and jsonwebtoken reads the system clock for `exp` and `nbf` (the app's
    /// own clock is for upload windows, and tests move it by hours).
    clock: Arc<dyn Clock>,
}

impl Verifier {
    /// Parses every static key now; the JWKS (if any) is fetched by [`Verifier::start`].
    pub fn new(
        auth: &AuthConfig,
        upstream_user_id_claim: Option<String>,
        tier_claim: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let rules = ClaimRules::from_config(auth);
        let static_keys = std::sync::RwLock::new(Arc::new(keys::load_static_keys(auth, &rules)?));
        let token_cache = auth.token_cache.enabled.then(|| {
            Arc::new(TokenCache::new(
                auth.token_cache.max_entries,
                auth.leeway.as_secs(),
                metrics.clone(),
            ))
        });
        let jwks = match &auth.jwks.url {
            Some(url) => Some(Arc::new(JwksCache::new(
                &auth.jwks,
                url.as_str(),
                rules.for_issuer(auth.jwks.issuer.as_deref()),
                metrics,
                token_cache.clone(),
            )?)),
            None => None,
        };
        if auth.accepts_any_audience() {
            // Validation refuses this unless the option is set: say at every start what it does.
            tracing::warn!(
                option = "auth.allow_any_audience",
                "auth.allow_any_audience = true and no auth.audiences: tokens minted by the \
                 identity provider for any other application are accepted too"
            );
        }
        Ok(Self {
            static_keys,
            rules,
            jwks,
            user_claim: auth.user_claim.clone(),
            upstream_user_id_claim,
            tier_claim,
            leeway_secs: auth.leeway.as_secs(),
            max_token_bytes: auth.max_token_bytes,
            multiple_issuers: auth.multiple_issuers(),
            token_cache,
            clock: Arc::new(SystemClock),
        })
    }

    /// Seconds since the epoch, as every time check of ours reads them.
    fn now(&self) -> u64 {
        u64::try_from(self.clock.now().unix_timestamp()).unwrap_or(0)
    }

    /// The verified-token cache, when enabled.
    pub fn token_cache(&self) -> Option<&Arc<TokenCache>> {
        self.token_cache.as_ref()
    }

    /// First JWKS fetch and the background refresh. A failed first fetch is logged and retried by
    /// the refresh loop and by unknown-`kid` refetches; static keys keep working meanwhile.
    pub async fn start(
        &self,
        refresh_interval: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let jwks = self.jwks.as_ref()?;
        let _ = jwks.refresh().await;
        Some(jwks.spawn_refresh(refresh_interval))
    }

    fn static_keys(&self) -> Arc<KeySet> {
        self.static_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Parses the configured static keys again, from their files; errors name the key.
    pub fn load_static_keys(&self, auth: &AuthConfig) -> Result<KeySet, String> {
        keys::load_static_keys(auth, &self.rules)
    }

    /// Puts a new static key set in force for every token verified from now on, cached ones
    /// included: the verified-token cache is flushed once the new set is in place.
    pub fn replace_static_keys(&self, keys: KeySet) {
        *self.static_keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        if let Some(cache) = &self.token_cache {
            cache.flush();
        }
    }

    /// Whether any key can verify a token now (readiness).
    pub fn has_keys(&self) -> bool {
        !self.static_keys().is_empty()
            || self
                .jwks
                .as_ref()
                .is_some_and(|jwks| !jwks.keys().is_empty())
    }

    /// Verifies `token` (cheapest checks first, see the module docs) and names its user.
    pub async fn verify(&self, token: &str) -> Result<AuthenticatedUser, AuthFailure> {
        if token.len() > self.max_token_bytes {
            return Err(AuthFailure::Malformed);
        }
        check_shape(token)?;
        // Before the keys are read: a flush after this lookup turns this verification's fill away.
        let ticket = match &self.token_cache {
            Some(cache) => match cache.lookup(token, self.now()) {
                Lookup::Hit(user) => return Ok(user),
                Lookup::Miss(ticket) => Some(ticket),
            },
            None => None,
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // An `alg` outside the supported list, `none` in any spelling included.
            ErrorKind::Json(_) => AuthFailure::Unsupported,
            _ => AuthFailure::Malformed,
        })?;
        if header.crit.is_some() {
            return Err(AuthFailure::Unsupported);
        }
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT") && !t.eq_ignore_ascii_case("at+jwt"))
        {
            return Err(AuthFailure::Unsupported);
        }
        // Reading `exp` before any signature work turns away expired replays cheaply.
        self.precheck_exp(token)?;

        let candidates = self.candidates(header.kid.as_deref(), header.alg).await;
        if candidates.is_empty() {
            return Err(AuthFailure::UnknownKey);
        }
        let mut failure = AuthFailure::BadSignature;
        for key in candidates {
            match verify_with(token, &key) {
                Ok(claims) => {
                    let user = self.user_from_claims(&claims, &key)?;
                    if let (Some(cache), Some(ticket), Some(times)) =
                        (&self.token_cache, ticket, TokenTimes::from_claims(&claims))
                    {
                        cache.fill(ticket, token, &user, times, self.now());
                    }
                    return Ok(user);
                }
                Err(AuthFailure::BadSignature) => continue,
                Err(other) => {
                    failure = other;
                    break;
                }
            }
        }
        Err(failure)
    }

    async fn candidates(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Vec<Arc<VerificationKey>> {
        let mut found = self.static_keys().candidates(kid, algorithm);
        if let Some(jwks) = &self.jwks {
            let mut set = jwks.keys();
            if let Some(kid) = kid
                && !set.has_kid(kid)
                && found.is_empty()
            {
                set = jwks.refetch_for_unknown_kid(kid).await;
            }
            found.extend(set.candidates(kid, algorithm));
        }
        found
    }

    fn precheck_exp(&self, token: &str) -> Result<(), AuthFailure> {
        #[derive(serde::Deserialize)]
        struct Exp {
            exp: Option<Value>,
        }
        let claims: Exp = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthFailure::Malformed)?;
        match claims.exp.as_ref().and_then(Value::as_f64) {
            None => Err(AuthFailure::MissingClaim),
            Some(exp) if cache::exp_passed(exp, self.now(), self.leeway_secs) => {
                Err(AuthFailure::Expired)
            }
            Some(_) => Ok(()),
        }
    }

    /// The user of a token whose signature and registered claims `key` verified.
    fn user_from_claims(
        &self,
        claims: &Map<String, Value>,
        key: &VerificationKey,
    ) -> Result<AuthenticatedUser, AuthFailure> {
        // jsonwebtoken accepts an array `iss`; a token names exactly one issuer. A key bound to
        // issuers (its own, or `auth.issuers`) has checked that this one is among them.
        let issuer = match claims.get("iss") {
            Some(Value::String(iss)) => Some(iss.as_str()),
            _ if key.validation.iss.is_some() => return Err(AuthFailure::WrongIssuer),
            _ => None,
        };
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_f64().ok_or(AuthFailure::Malformed)?;
            if cache::iat_in_future(iat, self.now(), self.leeway_secs) {
                return Err(AuthFailure::NotYetValid);
            }
        }
        let subject = identity_claim(claims, &self.user_claim)?;
        let id = if self.multiple_issuers {
            // Every key is tied to its issuer then (configuration checks it).
            qualified_user_id(issuer.ok_or(AuthFailure::WrongIssuer)?, &subject)
        } else {
            subject
        };
        let upstream_user_id = match &self.upstream_user_id_claim {
            Some(claim) => {
                let value = identity_claim(claims, claim)?;
                // It becomes a header value upstream: visible ASCII only.
                if !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(AuthFailure::MissingClaim);
                }
                Some(value)
            }
            None => None,
        };
        // A tier is a name to look up, not an identity: anything but a string means "default".
        let tier = self
            .tier_claim
            .as_ref()
            .and_then(|claim| claims.get(claim))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(AuthenticatedUser {
            id,
            upstream_user_id,
            tier,
        })
    }
}

fn identity_claim(claims: &Map<String, Value>, name: &str) -> Result<String, AuthFailure> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_USER_ID_BYTES => Ok(s.clone()),
        _ => Err(AuthFailure::MissingClaim),
    }
}

fn check_shape(token: &str) -> Result<(), AuthFailure> {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthFailure::Malformed);
        }
    }
    if segments != 3 {
        return Err(AuthFailure::Malformed);
    }
    Ok(())
}

fn verify_with(token: &str, key: &VerificationKey) -> Result<Map<String, Value>, AuthFailure> {
    jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthFailure::BadSignature,
            ErrorKind::ExpiredSignature => AuthFailure::Expired,
            ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
            ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
            ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthFailure::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthFailure::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => AuthFailure::MissingClaim,
            ErrorKind::InvalidAlgorithm => AuthFailure::Unsupported,
            _ => AuthFailure::Malformed,
        })
}

#[cfg(test)]
impl Verifier {
    /// The same verifier reading `clock` for its time checks (jsonwebtoken still reads the system
    /// clock for `exp` and `nbf`).
    fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::{clock::ManualClock, config::Config, observability::metrics::Metrics};

    const SECRET: &str = "unit-test-hs256-secret-0123456789abcdef";

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn auth_config(extra: &str) -> AuthConfig {
        Config::from_toml(&format!(
            "[auth]\nallow_any_audience = true\n{extra}\n\
             [[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"value:{SECRET}\"\n\
             [[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
            fixture("rsa-public.pem")
        ))
        .expect("valid test config")
        .auth
    }

    fn verifier(extra: &str) -> (Verifier, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let verifier = Verifier::new(&auth_config(extra), None, None, metrics.clone()).unwrap();
        (verifier, metrics)
    }

    fn now() -> u64 {
        crate::clock::seconds_since_epoch()
    }

    fn hs256(claims: &Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    fn rs256(claims: &Value) -> String {
        let pem = std::fs::read(fixture("rsa-private.pem")).unwrap();
        let key = EncodingKey::from_rsa_pem(&pem).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }

    fn cached(verifier: &Verifier) -> usize {
        verifier.token_cache().map_or(0, |cache| cache.len())
    }

    #[tokio::test]
    async fn a_verified_token_is_cached_and_a_refused_one_is_not() {
        let (verifier, metrics) = verifier("");
        let token = rs256(&json!({ "sub": "alice", "iat": now(), "exp": now() + 3600 }));
        for _ in 0..3 {
            assert_eq!(verifier.verify(&token).await.unwrap().id, "alice");
        }
        assert_eq!(metrics.token_cache_misses.get(), 1);
        assert_eq!(metrics.token_cache_hits.get(), 2);

        let (header, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged = format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":9999999999}"#)
        );
        for _ in 0..2 {
            assert_eq!(
                verifier.verify(&forged).await.unwrap_err(),
                AuthFailure::BadSignature
            );
        }
        let expired = hs256(&json!({ "sub": "bob", "exp": now() - 3600 }));
        for _ in 0..2 {
            assert_eq!(
                verifier.verify(&expired).await.unwrap_err(),
                AuthFailure::Expired
            );
        }
        assert_eq!(metrics.token_cache_hits.get(), 2, "no refusal is a hit");
        assert_eq!(cached(&verifier), 1);
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_once_it_expires() {
        let clock = ManualClock::default();
        let (verifier, metrics) = verifier("");
        let verifier = verifier.with_clock(Arc::new(clock.clone()));
        let token = hs256(&json!({ "sub": "alice", "iat": now(), "exp": now() + 60 }));
        verifier.verify(&token).await.unwrap();
        verifier.verify(&token).await.unwrap();
        assert_eq!(metrics.token_cache_hits.get(), 1);

        // Within the 30 s leeway after `exp`: still served from the cache.
        clock.advance(Duration::from_secs(60 + 20));
        verifier.verify(&token).await.unwrap();
        assert_eq!(metrics.token_cache_hits.get(), 2);

        clock.advance(Duration::from_secs(15));
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            AuthFailure::Expired
        );
        assert_eq!(metrics.token_cache_hits.get(), 2, "not a hit");
        assert_eq!(cached(&verifier), 0, "the expired entry is gone");
    }

    #[tokio::test]
    async fn replaced_static_keys_flush_the_cache() {
        let (verifier, metrics) = verifier("");
        let token = rs256(&json!({ "sub": "alice", "exp": now() + 3600 }));
        verifier.verify(&token).await.unwrap();
        verifier.verify(&token).await.unwrap();
        assert_eq!(metrics.token_cache_hits.get(), 1);

        // The RS256 key is rotated out: only the HMAC key is left.
        let mut auth = auth_config("");
        auth.keys.retain(|key| key.algorithm.is_hmac());
        verifier.replace_static_keys(verifier.load_static_keys(&auth).unwrap());
        assert_eq!(cached(&verifier), 0);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            AuthFailure::UnknownKey
        );
        assert_eq!(metrics.token_cache_hits.get(), 1);
    }

    #[tokio::test]
    async fn with_the_cache_off_every_token_is_verified() {
        let (verifier, metrics) = verifier("[auth.token_cache]\nenabled = false\n");
        assert!(verifier.token_cache().is_none());
        let token = rs256(&json!({ "sub": "alice", "exp": now() + 3600 }));
        for _ in 0..3 {
            verifier.verify(&token).await.unwrap();
        }
        assert_eq!(metrics.token_cache_hits.get(), 0);
        assert_eq!(metrics.token_cache_misses.get(), 0);
    }

    /// `cargo test --lib -- --ignored --nocapture verify_cost`: CPU per RS256 verification with
    /// and without the cache, in the profile the tests are built with.
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn verify_cost_with_and_without_the_cache() {
        const ROUNDS: u32 = 2000;
        let token = rs256(&json!({ "sub": "alice", "iat": now(), "exp": now() + 3600 }));
        for (label, extra) in [("off", "[auth.token_cache]\nenabled = false\n"), ("on", "")] {
            let (verifier, _) = verifier(extra);
            verifier.verify(&token).await.unwrap();
            let started = Instant::now();
            for _ in 0..ROUNDS {
                verifier.verify(&token).await.unwrap();
            }
            let per_call = started.elapsed() / ROUNDS;
            eprintln!("RS256 verify, token cache {label}: {per_call:?} per call");
        }
    }
}
