//! Configuration: the commented defaults in `config/default.toml`, then an optional file, then
//! `KIZEN_GATEWAY_*` environment variables, then validation. Every error names its option.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::Deserialize;
pub use values::{
    ContentTypePattern, ForwardableHeader, HttpUrl, JwtAlgorithm, KIZEN_SOURCES, Origin, RedisUrl,
    RsaAlgorithm, Source,
};
use values::{at_least_one, at_least_one_u32, positive_duration};

use crate::secrets::SecretSource;

pub mod values;

/// The defaults, compiled in so that the binary needs no file to start.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables that override configuration options.
pub const ENV_PREFIX: &str = "KIZEN_GATEWAY_";

/// Everything the gateway can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the public listener and its limits.
    pub server: ServerConfig,
    /// `[admin]`: the listener of health, readiness, metrics and the OpenAPI document.
    pub admin: AdminConfig,
    /// `[log]`: what is logged, and in which format.
    pub log: LogConfig,
    /// `[cors]`: the browser origins allowed to call the gateway.
    pub cors: CorsConfig,
    /// `[auth]`: how end-user JWTs are verified.
    pub auth: AuthConfig,
    /// `[upstream]`: the Kizen API, and the server-held credentials sent to it.
    pub upstream: UpstreamConfig,
    /// `[presign]`: what a presign may ask for, and how often.
    pub presign: PresignConfig,
    /// `[confirm]`: how long, how often and with what a confirmation may come.
    pub confirm: ConfirmConfig,
    /// `[quotas]`: per-user quotas, by tier.
    pub quotas: QuotaConfig,
    /// `[store]`: where issued uploads, rate limits and quota counters are kept.
    pub store: StoreConfig,
    /// `[reload]`: how often secret and key files are checked for new content.
    pub reload: ReloadConfig,
    /// `[telemetry]`: OpenTelemetry trace export.
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: exporting traces over OTLP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export a span per request and per Kizen call over OTLP/HTTP (endpoint and headers from the
    /// standard `OTEL_*` variables). Off by default; the client's `traceparent` goes upstream
    /// either way.
    pub otlp_traces: bool,
}

/// `[reload]`: hot reload of the files behind `file:` secrets and of the JWT key files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// How often those files are checked for new content (default 10s); SIGHUP reloads at once.
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
}

/// `[server]`: the public listener and the limits it puts on every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the public listener binds (default `127.0.0.1:8080`; `--listen` overrides it).
    pub listen: SocketAddr,
    /// Time a client has to send its whole request head (default 10s).
    #[serde(deserialize_with = "positive_duration")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; bigger gets 431. At least 8192.
    #[serde(deserialize_with = "header_bytes")]
    pub max_header_bytes: usize,
    /// Most header lines in one request; more get 431 (default 64).
    #[serde(deserialize_with = "at_least_one")]
    pub max_headers: usize,
    /// Deadline of a whole request, upstream call included (default 30s).
    #[serde(deserialize_with = "positive_duration")]
    pub request_timeout: Duration,
    /// Requests served at once; beyond it the gateway sheds load with 503 rather than queueing.
    #[serde(deserialize_with = "at_least_one")]
    pub max_concurrent_requests: usize,
    /// How long in-flight requests may finish after SIGTERM/SIGINT (default 30s).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// `[admin]`: the listener of `/healthz`, `/readyz`, `/metrics` and `/openapi.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the admin listener binds: loopback by default, `0.0.0.0:9090` in Kubernetes.
    pub listen: SocketAddr,
}

/// `[log]`: the filter and format of the process's logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `kizen_gateway=debug,info`, checked on load.
    #[serde(deserialize_with = "log_filter")]
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `[cors]`: which browser origins may call the gateway, and how long preflights are cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call the gateway, e.g. `https://app.example.com`; none by default.
    pub allowed_origins: Vec<Origin>,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`; default 10m).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

/// `[auth]`: which tokens are accepted, who their user is, and with which keys they are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The claim naming the end user (default `sub`): a non-empty string in every token.
    #[serde(deserialize_with = "claim_name")]
    pub user_claim: String,
    /// Accepted `iss` values; when non-empty, `iss` is required and must be one of them. With more
    /// than one issuer, a user is `<iss> <user claim>`.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; when non-empty, `aud` is required and must contain one of them.
    /// Required with a JWKS or a public key unless [`allow_any_audience`](Self::allow_any_audience)
    /// is set.
    pub audiences: Vec<String>,
    /// Accept tokens without checking `aud` although asymmetric keys are configured: any token
    /// the identity provider signed, for any application. Refused unless set explicitly.
    pub allow_any_audience: bool,
    /// Clock skew tolerated for `exp`, `nbf` and `iat` (default 30s, at most 5m).
    #[serde(deserialize_with = "leeway")]
    pub leeway: Duration,
    /// Longest token accepted, in bytes (default 8192); longer ones are refused before decoding.
    #[serde(deserialize_with = "at_least_one")]
    pub max_token_bytes: usize,
    /// `[[auth.keys]]`: the static verification keys, each pinned to its algorithm.
    #[serde(default)]
    pub keys: Vec<StaticKeyConfig>,
    /// `[auth.jwks]`: the identity provider's key set, fetched and refreshed in the background.
    pub jwks: JwksConfig,
    /// `[auth.token_cache]`: the cache of tokens that verified.
    pub token_cache: TokenCacheConfig,
}

/// The verified-token cache (see [`crate::auth::cache`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Whether verified tokens are remembered, so that their next uses skip the signature check.
    pub enabled: bool,
    /// Most tokens held (default 10000); when full, expired go first, then those closest to expiry.
    #[serde(deserialize_with = "at_least_one")]
    pub max_entries: usize,
}

impl AuthConfig {
    /// Whether a key is asymmetric (a public key file, or the JWKS): the identity provider signs
    /// with it for every application it serves, not for this gateway alone.
    pub fn has_asymmetric_keys(&self) -> bool {
        self.jwks.url.is_some() || self.keys.iter().any(|key| !key.algorithm.is_hmac())
    }

    /// Whether tokens are accepted whatever their `aud` although an asymmetric key verifies
    /// them: only with `auth.allow_any_audience = true`.
    pub fn accepts_any_audience(&self) -> bool {
        self.audiences.is_empty() && self.has_asymmetric_keys()
    }

    /// Every issuer the configuration names, once: `auth.issuers`, then the issuers tied to a key
    /// or to the JWKS.
    pub fn configured_issuers(&self) -> Vec<&str> {
        let tied = self
            .keys
            .iter()
            .filter_map(|key| key.issuer.as_deref())
            .chain(self.jwks.url.as_ref().and(self.jwks.issuer.as_deref()));
        let mut all: Vec<&str> = Vec::new();
        for issuer in self.issuers.iter().map(String::as_str).chain(tied) {
            if !all.contains(&issuer) {
                all.push(issuer);
            }
        }
        all
    }

    /// With more than one issuer, a user is an issuer and a subject (see
    /// [`crate::auth::qualified_user_id`]), and every key is tied to its issuer.
    pub fn multiple_issuers(&self) -> bool {
        self.configured_issuers().len() > 1
    }
}

/// One configured verification key. Exactly one of `secret` (HS*) and `public_key_file` (others).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKeyConfig {
    /// The `kid` a token must name to be verified by this key; `None`: any or no `kid`.
    pub kid: Option<String>,
    /// The algorithm this key is pinned to; a token must name the same `alg`.
    pub algorithm: JwtAlgorithm,
    /// The HMAC secret (HS* only), as a secret source like `env:JWT_HS256_SECRET`.
    pub secret: Option<SecretSource>,
    /// The PEM file of the public key (RS*, PS*, ES*, EdDSA); reloaded when its content changes.
    pub public_key_file: Option<std::path::PathBuf>,
    /// The only `iss` a token verified by this key may carry.
    pub issuer: Option<String>,
}

/// `[auth.jwks]`: the identity provider's JWKS endpoint and how it is fetched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// The JWKS endpoint, e.g. `https://idp.example.com/.well-known/jwks.json`; `None`: no JWKS.
    pub url: Option<HttpUrl>,
    /// The only `iss` a token verified by a key of this set may carry.
    pub issuer: Option<String>,
    /// How often the key set is refetched in the background (default 5m).
    #[serde(deserialize_with = "positive_duration")]
    pub refresh_interval: Duration,
    /// Least time between two refetches triggered by a token with an unknown `kid` (default 30s).
    #[serde(with = "humantime_serde")]
    pub refetch_cooldown: Duration,
    /// Deadline of one JWKS fetch (default 5s).
    #[serde(deserialize_with = "positive_duration")]
    pub fetch_timeout: Duration,
    /// The algorithm RSA keys without an `alg` are pinned to (default RS256); EC and OKP keys are
    /// pinned by their curve.
    pub rsa_algorithm: RsaAlgorithm,
}

/// `[upstream]`: the Kizen API, the credentials injected into every call, and the call's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the Kizen API (default `https://app.kizen.com`); only its presign and confirm
    /// endpoints are called.
    pub base_url: HttpUrl,
    /// The Kizen API key, sent as `X-API-KEY`; never shown to a browser.
    pub api_key: SecretSource,
    /// The Kizen business id, sent as `X-BUSINESS-ID`.
    pub business_id: SecretSource,
    /// The constant `X-USER-ID`, used unless [`user_id_claim`](Self::user_id_claim) is set.
    pub user_id: SecretSource,
    /// A JWT claim to take `X-USER-ID` from, per user, instead of the constant `user_id`.
    #[serde(default, deserialize_with = "optional_claim_name")]
    pub user_id_claim: Option<String>,
    /// Client request headers passed upstream (default `accept-language`); all others are dropped.
    pub forward_headers: Vec<ForwardableHeader>,
    /// Deadline of opening a connection to the Kizen API (default 3s).
    #[serde(deserialize_with = "positive_duration")]
    pub connect_timeout: Duration,
    /// Deadline of one Kizen call, answer included (default 15s).
    #[serde(deserialize_with = "positive_duration")]
    pub request_timeout: Duration,
    /// Largest Kizen answer accepted, in bytes; a bigger one is refused with 502 (default 1 MiB).
    #[serde(deserialize_with = "at_least_one")]
    pub max_response_bytes: usize,
    /// Idle pooled connections kept per upstream host (default 64).
    pub pool_max_idle_per_host: usize,
}

/// `[presign]`: which content types and sources a presign may name, and the per-user rate limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignConfig {
    /// Allowed `contenttype` values, wildcards like `image/*` included; empty: any `type/subtype`.
    pub allowed_content_types: Vec<ContentTypePattern>,
    /// Allowed `source` values, a non-empty subset of [`KIZEN_SOURCES`] (default: all eleven).
    #[serde(deserialize_with = "some_sources")]
    pub allowed_sources: Vec<Source>,
    /// Presigns one user may make at once before the rate limit applies (default 10).
    #[serde(deserialize_with = "at_least_one_u32")]
    pub rate_limit_burst: u32,
    /// Time over which the presign budget of `rate_limit_burst` refills (default 1m).
    #[serde(deserialize_with = "positive_duration")]
    pub rate_limit_period: Duration,
}

/// `[confirm]`: the confirmation window, the claim held while forwarding, retries, rate limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConfig {
    /// How long after the upload's `expires_at` a confirmation is still accepted (default 1h).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// A confirmation is never accepted later than this after the presign, whatever `expires_at`.
    #[serde(deserialize_with = "positive_duration")]
    pub max_window: Duration,
    /// How long an expired upload is remembered after its window closes, to answer 410 rather than
    /// 404 (default 1h, at least 1h).
    #[serde(deserialize_with = "at_least_an_hour")]
    pub remember_expired: Duration,
    /// Largest confirmation body, in bytes; bigger gets 413 (default 8192).
    #[serde(deserialize_with = "at_least_one")]
    pub max_body_bytes: usize,
    /// Sources whose uploads may be confirmed with `is_public=true`; others get it forced false.
    pub public_sources: Vec<Source>,
    /// How long a confirmation holds its upload, from before the forward until Kizen's answer is
    /// recorded (default 1m; at least `upstream.request_timeout` + 2 x
    /// `store.redis.operation_timeout` + 5s).
    #[serde(deserialize_with = "positive_duration")]
    pub claim_lease: Duration,
    /// Failed confirmations of one upload before it backs off, with 429 (default 5).
    #[serde(deserialize_with = "at_least_one_u32")]
    pub max_attempts: u32,
    /// How long an upload that used up its attempts backs off after its last failure (default 1m).
    #[serde(deserialize_with = "positive_duration")]
    pub attempt_backoff: Duration,
    /// Confirmations one user may make at once before the rate limit applies (default 30).
    #[serde(deserialize_with = "at_least_one_u32")]
    pub rate_limit_burst: u32,
    /// Time over which the confirmation budget of `rate_limit_burst` refills (default 1m).
    #[serde(deserialize_with = "positive_duration")]
    pub rate_limit_period: Duration,
}

/// Per-user quotas by tier (see [`crate::quota`] for what each guarantees).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// JWT claim naming the user's tier.
    #[serde(default, deserialize_with = "optional_claim_name")]
    pub tier_claim: Option<String>,
    /// The tier of users whose claim is missing or names no configured tier (default `default`).
    pub default_tier: String,
    /// The limits of each tier, by name (`[quotas.tiers.<name>]`); must include the default tier.
    pub tiers: BTreeMap<String, TierLimits>,
}

/// The limits of one tier. `None`: no daily limit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Issued but unconfirmed uploads one user may hold at once (default 20).
    #[serde(deserialize_with = "at_least_one")]
    pub max_outstanding: usize,
    /// Confirmed uploads per UTC day.
    pub max_uploads_per_day: Option<u64>,
    /// Confirmed bytes (Kizen's `size_bytes`) per UTC day.
    pub max_bytes_per_day: Option<u64>,
}

impl QuotaConfig {
    /// The tier a user's claim names, or the default for a missing or unknown one.
    pub fn tier<'a>(&'a self, claimed: Option<&'a str>) -> (&'a str, &'a TierLimits) {
        if let Some(name) = claimed
            && let Some(limits) = self.tiers.get(name)
        {
            return (name, limits);
        }
        (&self.default_tier, &self.tiers[&self.default_tier])
    }
}

/// `[store]`: which store keeps issued uploads, rate limits and quota counters, and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (one replica, lost on restart) or `redis` (shared by every replica).
    pub kind: StoreKind,
    /// Memory store only: uploads held at once across all users, in every state (default 100000).
    #[serde(deserialize_with = "at_least_one")]
    pub max_uploads: usize,
    /// Memory store only: entries one user may hold, all states together (default 1000); must
    /// exceed every tier's `max_outstanding`.
    pub max_uploads_per_user: usize,
    /// How often entries past their memory are swept and those never confirmed reported
    /// (default 1m); with Redis, upload keys outlive their memory by twice this.
    #[serde(deserialize_with = "positive_duration")]
    pub sweep_interval: Duration,
    /// `[store.redis]`: the Redis server or cluster, used when `kind = "redis"`.
    pub redis: RedisConfig,
}

/// Which store backs the gateway (`store.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process: one replica only, everything lost on restart.
    Memory,
    /// Redis: any number of replicas share one truth.
    Redis,
}

/// `[store.redis]`: how the gateway reaches Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One `redis://` or `rediss://` URL, or with [`cluster`](Self::cluster) the seed nodes of a
    /// Redis Cluster.
    pub urls: Vec<RedisUrl>,
    /// Whether [`urls`](Self::urls) name the seed nodes of a Redis Cluster rather than one server.
    pub cluster: bool,
    /// The Redis password, as a secret source; never inside a URL.
    pub password: Option<SecretSource>,
    /// Prefix of every key, so that deployments can share one Redis (default `kizen-gateway`).
    #[serde(deserialize_with = "key_prefix")]
    pub prefix: String,
    /// Bound on every Redis operation (default 250ms); past it, 503 and nothing is forwarded.
    #[serde(deserialize_with = "positive_duration")]
    pub operation_timeout: Duration,
    /// Replicas that must have received a claim, a settle or a record before the gateway acts on
    /// it (`WAIT`; default 0: the master's word is enough). With 1, a failover that promotes that
    /// replica cannot lose a claim and so forward a confirmation twice.
    pub wait_for_replicas: u32,
    /// `[store.redis.sentinel]`: find the master through Redis Sentinel instead of `urls`.
    pub sentinel: Option<SentinelConfig>,
}

/// `[store.redis.sentinel]`: the master is whichever node the sentinels name for `master_name`;
/// the gateway asks them again whenever its connection to the master breaks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// The sentinels, `redis://host:26379` (or `rediss://`: then the data nodes are reached over
    /// TLS too). Every URL must use the same scheme.
    pub urls: Vec<RedisUrl>,
    /// The sentinels' own password (`requirepass` in sentinel.conf), as a secret source; the
    /// data nodes' is `store.redis.password`.
    pub password: Option<SecretSource>,
}

/// Room left in `confirm.claim_lease` beyond the timeouts of one forward and its settle.
pub const CLAIM_LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Values given on the command line, applied over every other layer and validated with them.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`: `server.listen`.
    pub listen: Option<SocketAddr>,
}

/// A configuration error: the option at fault and what is wrong with it, on one line.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

fn invalid(option: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{option}: {why}"))
}

/// Refuses the `KIZEN_GATEWAY_*` values that figment (0.10.19) misreads: its string unescaping
/// slices at a character count as if it were a byte offset, so a quoted value with a non-ASCII
/// character before a `\` escape panics or silently loses characters (found by the
/// `config_load` fuzz target). Such a value is refused by name, never shown.
fn check_env_values(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        if name.starts_with(ENV_PREFIX)
            && value.contains('"')
            && value.contains('\\')
            && !value.is_ascii()
        {
            return Err(invalid(
                name,
                "a quoted value with a backslash escape must be ASCII; write non-ASCII \
                 characters as \\u escapes",
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Defaults, then `file` (if any), then the process environment, then the command line's
    /// `overrides`, then [`Config::validate`].
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        check_env_values(std::env::vars_os())?;
        Self::load_with_env(file, Env::prefixed(ENV_PREFIX).split("__"), overrides)
    }

    /// Like [`Config::load`] without reading the environment (tests, dev mode).
    pub fn from_toml(overrides: &str) -> Result<Self, ConfigError> {
        Self::from_toml_layers(&[overrides])
    }

    /// The defaults, then each TOML layer in order, then validation.
    pub fn from_toml_layers(layers: &[&str]) -> Result<Self, ConfigError> {
        let figment = layers.iter().fold(
            Figment::from(Toml::string(DEFAULT_TOML)),
            |figment, layer| figment.merge(Toml::string(layer)),
        );
        Self::extract(figment)
    }

    fn load_with_env(
        file: Option<&Path>,
        env: Env,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("no such file: {}", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut figment = figment.merge(env);
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("server.listen", listen));
        }
        Self::extract(figment)
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|e| {
            // figment reports one error per problem; the first names the option and the source.
            // Said as "<option>: <what is wrong> (in <source>)", like the cross-option rules.
            let Some(first) = e.into_iter().next() else {
                return ConfigError("invalid configuration".into());
            };
            let message = match first.path.is_empty() {
                true => first.to_string(),
                false => {
                    let source = first
                        .metadata
                        .as_ref()
                        .map(|md| match &md.source {
                            Some(source) => format!(" (in {} {source})", md.name),
                            None => format!(" (in {})", md.name),
                        })
                        .unwrap_or_default();
                    format!("{}: {}{source}", first.path.join("."), first.kind)
                }
            };
            ConfigError(without_source_lines(&message))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The rules that span several options (every single value was checked as it was read).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.admin.listen == self.server.listen && self.server.listen.port() != 0 {
            return Err(invalid("admin.listen", "must differ from server.listen"));
        }

        let a = &self.auth;
        if a.keys.is_empty() && a.jwks.url.is_none() {
            return Err(invalid(
                "auth.keys",
                "no verification key: configure [[auth.keys]] or auth.jwks.url",
            ));
        }
        for (i, key) in a.keys.iter().enumerate() {
            key.check_material()
                .map_err(|why| invalid(&format!("auth.keys[{i}]"), why))?;
        }
        check_issuers(a)?;
        if a.accepts_any_audience() && !a.allow_any_audience {
            return Err(invalid(
                "auth.audiences",
                "required with auth.jwks.url or a public key, whose identity provider signs tokens \
                 for other applications too: list the audiences of this gateway's tokens, or set \
                 auth.allow_any_audience = true to accept tokens minted for any application",
            ));
        }

        let q = &self.quotas;
        if !q.tiers.contains_key(&q.default_tier) {
            return Err(invalid(
                "quotas.default_tier",
                format!("no tier named {:?} in [quotas.tiers]", q.default_tier),
            ));
        }

        // The forward and its settle must fit in the lease: the claim, the upstream call and the
        // settle each take up to their timeouts, and the settle is retried until the lease ends.
        let needed = self.upstream.request_timeout
            + 2 * self.store.redis.operation_timeout
            + CLAIM_LEASE_MARGIN;
        if self.confirm.claim_lease < needed {
            return Err(invalid(
                "confirm.claim_lease",
                format!(
                    "must be at least upstream.request_timeout + 2 x store.redis.operation_timeout + {}s ({}ms here)",
                    CLAIM_LEASE_MARGIN.as_secs(),
                    needed.as_millis()
                ),
            ));
        }

        if let Some((name, tier)) = q
            .tiers
            .iter()
            .find(|(_, tier)| tier.max_outstanding >= self.store.max_uploads_per_user)
        {
            return Err(invalid(
                "store.max_uploads_per_user",
                format!(
                    "must exceed quotas.tiers.{name}.max_outstanding ({}), so that a user's open uploads always fit",
                    tier.max_outstanding
                ),
            ));
        }
        let r = &self.store.redis;
        if let Some(sentinel) = &r.sentinel {
            if r.cluster {
                return Err(invalid(
                    "store.redis.sentinel",
                    "Sentinel manages one master and its replicas: not with store.redis.cluster = true",
                ));
            }
            if sentinel.master_name.trim().is_empty() {
                return Err(invalid(
                    "store.redis.sentinel.master_name",
                    "must name the master the sentinels monitor",
                ));
            }
            if sentinel.urls.is_empty() {
                return Err(invalid(
                    "store.redis.sentinel.urls",
                    "give the sentinels' addresses (usually three or more)",
                ));
            }
            if sentinel
                .urls
                .iter()
                .any(|url| url.is_tls() != sentinel.urls[0].is_tls())
            {
                return Err(invalid(
                    "store.redis.sentinel.urls",
                    "use one scheme for every sentinel: redis:// or rediss:// (TLS to the sentinels and the data nodes)",
                ));
            }
        } else if self.store.kind == StoreKind::Redis
            && (r.urls.is_empty() || (!r.cluster && r.urls.len() > 1))
        {
            return Err(invalid(
                "store.redis.urls",
                "give one URL, or the seed nodes of a cluster with store.redis.cluster = true, or [store.redis.sentinel]",
            ));
        }
        Ok(())
    }
}

impl StaticKeyConfig {
    /// HS* keys are a `secret`, the others a `public_key_file`: exactly one of the two.
    pub fn check_material(&self) -> Result<(), String> {
        let algorithm = self.algorithm.0;
        match (
            self.algorithm.is_hmac(),
            &self.secret,
            &self.public_key_file,
        ) {
            (true, Some(_), None) | (false, None, Some(_)) => Ok(()),
            (true, _, _) => Err(format!(
                "{algorithm:?} needs `secret` (and no public_key_file)"
            )),
            (false, _, _) => Err(format!(
                "{algorithm:?} needs `public_key_file` (and no secret)"
            )),
        }
    }
}

/// Joins an error's lines into one, dropping the source lines a TOML syntax error quotes
/// (`2 | api_key = "value:..."` and its `  |   ^` markers): the quoted line may hold a secret.
/// The position and the reason are kept.
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            !line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Issuers are compared exactly and never contain whitespace: a space separates issuer and
/// subject in the identity of a user when several issuers are configured.
fn check_issuer(option: &str, issuer: &str) -> Result<(), ConfigError> {
    if issuer.is_empty() || issuer.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            option,
            format!("{issuer:?}: an issuer is non-empty and has no whitespace"),
        ));
    }
    Ok(())
}

/// Each key and the JWKS verify the tokens of at most one issuer (their own `issuer`); with more
/// than one issuer configured, every key must name its own.
fn check_issuers(a: &AuthConfig) -> Result<(), ConfigError> {
    for issuer in &a.issuers {
        check_issuer("auth.issuers", issuer)?;
    }
    let jwks = a
        .jwks
        .url
        .as_ref()
        .map(|_| ("auth.jwks.issuer".to_owned(), &a.jwks.issuer));
    let tied = a
        .keys
        .iter()
        .enumerate()
        .map(|(i, key)| (format!("auth.keys[{i}].issuer"), &key.issuer))
        .chain(jwks);
    let multiple = a.multiple_issuers();
    for (option, issuer) in tied {
        match issuer {
            Some(issuer) => {
                check_issuer(&option, issuer)?;
                if !a.issuers.is_empty() && !a.issuers.contains(issuer) {
                    return Err(invalid(
                        &option,
                        format!("{issuer:?} is not one of auth.issuers"),
                    ));
                }
            }
            None if multiple => {
                return Err(invalid(
                    &option,
                    "required when more than one issuer is configured (auth.issuers, or the \
                     issuers of keys): each key verifies the tokens of its own issuer only",
                ));
            }
            None => {}
        }
    }
    Ok(())
}

/// `server.max_header_bytes`: room for a long token and the usual browser headers.
fn header_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    match usize::deserialize(deserializer)? {
        n if n < 8192 => Err(serde::de::Error::custom("must be at least 8192")),
        n => Ok(n),
    }
}

/// `log.level`: a tracing filter such as `info` or `kizen_gateway=debug,info`.
fn log_filter<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let filter = String::deserialize(deserializer)?;
    tracing_subscriber::EnvFilter::try_new(&filter).map_err(serde::de::Error::custom)?;
    Ok(filter)
}

/// `auth.leeway`: clocks may disagree by seconds, not by hours.
fn leeway<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let leeway: Duration = humantime_serde::deserialize(deserializer)?;
    if leeway > Duration::from_secs(300) {
        return Err(serde::de::Error::custom("must be at most 5m"));
    }
    Ok(leeway)
}

/// `confirm.remember_expired`: a repeat must keep getting its answer for at least an hour.
fn at_least_an_hour<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let duration: Duration = humantime_serde::deserialize(deserializer)?;
    if duration < Duration::from_secs(3600) {
        return Err(serde::de::Error::custom("must be at least 1h"));
    }
    Ok(duration)
}

fn claim_name<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    if name.is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(name)
}

fn optional_claim_name<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(name) if name.is_empty() => Err(serde::de::Error::custom("must not be empty")),
        other => Ok(other),
    }
}

fn some_sources<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Source>, D::Error> {
    let sources = Vec::<Source>::deserialize(deserializer)?;
    if sources.is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(sources)
}

/// `store.redis.prefix`: braces would change which cluster slot a key hashes to.
fn key_prefix<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(deserializer)?;
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(serde::de::Error::custom(
            "must be non-empty and without { or }",
        ));
    }
    Ok(prefix)
}
