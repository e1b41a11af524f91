//! End-user authentication: `Authorization: Bearer <JWT>`, verified against keys whose algorithm
//! is pinned by configuration, never by the token. [`AuthenticatedUser`] is the extractor.
//!
//! Order of work for one token, cheapest first, so that floods of junk cost little:
//! size cap, shape (three base64url segments), header (known `alg`, no `crit`), a key that serves
//! this `alg`/`kid`, `exp` read without verification, then one signature check per candidate key,
//! then the claims.

pub mod jwks;
pub mod keys;

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::{
    app::AppState,
    config::AuthConfig,
    error::GatewayError,
    observability::{RequestUser, seconds_since_epoch},
};
use jwks::JwksCache;
use keys::{ClaimRules, KeySet, VerificationKey};

/// Why a token was refused. The code names the class of problem, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unsupported,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
}

impl AuthFailure {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Malformed => "token_malformed",
            Self::Unsupported => "token_unsupported",
            Self::UnknownKey => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongAudience => "token_wrong_audience",
            Self::MissingClaim => "token_missing_claim",
        }
    }

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

impl From<AuthFailure> for GatewayError {
    fn from(failure: AuthFailure) -> Self {
        GatewayError::Unauthorized(failure)
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
}

impl Verifier {
    /// Parses every static key now; the JWKS (if any) is fetched by [`Verifier::start`].
    pub fn new(
        auth: &AuthConfig,
        upstream_user_id_claim: Option<String>,
        tier_claim: Option<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        let rules = ClaimRules::from_config(auth);
        let static_keys = std::sync::RwLock::new(Arc::new(keys::load_static_keys(auth, &rules)?));
        let jwks = match &auth.jwks.url {
            Some(url) => Some(Arc::new(JwksCache::new(
                &auth.jwks,
                url,
                rules.for_issuer(auth.jwks.issuer.as_deref()),
                metrics,
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
        })
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

    pub fn jwks(&self) -> Option<&Arc<JwksCache>> {
        self.jwks.as_ref()
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

    /// Puts a new static key set in force for every token verified from now on.
    pub fn replace_static_keys(&self, keys: KeySet) {
        *self.static_keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Whether any key can verify a token now (readiness).
    pub fn has_keys(&self) -> bool {
        !self.static_keys().is_empty()
            || self
                .jwks
                .as_ref()
                .is_some_and(|jwks| !jwks.keys().is_empty())
    }

    pub async fn verify(&self, token: &str) -> Result<AuthenticatedUser, AuthFailure> {
        if token.len() > self.max_token_bytes {
            return Err(AuthFailure::Malformed);
        }
        check_shape(token)?;
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
                Ok(claims) => return self.user_from_claims(&claims, &key),
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
            Some(exp) if exp + (self.leeway_secs as f64) < seconds_since_epoch() as f64 => {
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
            if iat > (seconds_since_epoch() + self.leeway_secs) as f64 {
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

impl FromRequestParts<AppState> for AuthenticatedUser {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::Malformed.into());
        }
        let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthFailure::Missing.into());
        }
        let user = state.verifier.verify(token.trim_matches(' ')).await?;
        if let Some(slot) = parts.extensions.get::<RequestUser>() {
            slot.set(&user.id);
        }
        Ok(user)
    }
}
