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
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub cors: CorsConfig,
    pub auth: AuthConfig,
    pub upstream: UpstreamConfig,
    pub presign: PresignConfig,
    pub confirm: ConfirmConfig,
    pub quotas: QuotaConfig,
    pub store: StoreConfig,
    pub reload: ReloadConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub otlp_traces: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "positive_duration")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "header_bytes")]
    pub max_header_bytes: usize,
    #[serde(deserialize_with = "at_least_one")]
    pub max_headers: usize,
    #[serde(deserialize_with = "positive_duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "at_least_one")]
    pub max_concurrent_requests: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(deserialize_with = "log_filter")]
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub allowed_origins: Vec<Origin>,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(deserialize_with = "claim_name")]
    pub user_claim: String,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    /// Accept tokens without checking `aud` although asymmetric keys are configured: any token
    /// the identity provider signed, for any application. Refused unless set explicitly.
    pub allow_any_audience: bool,
    #[serde(deserialize_with = "leeway")]
    pub leeway: Duration,
    #[serde(deserialize_with = "at_least_one")]
    pub max_token_bytes: usize,
    #[serde(default)]
    pub keys: Vec<StaticKeyConfig>,
    pub jwks: JwksConfig,
    pub token_cache: TokenCacheConfig,
}

/// The verified-token cache (see [`crate::auth::cache`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    pub enabled: bool,
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
    pub kid: Option<String>,
    pub algorithm: JwtAlgorithm,
    pub secret: Option<SecretSource>,
    pub public_key_file: Option<std::path::PathBuf>,
    /// The only `iss` a token verified by this key may carry.
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    pub url: Option<HttpUrl>,
    /// The only `iss` a token verified by a key of this set may carry.
    pub issuer: Option<String>,
    #[serde(deserialize_with = "positive_duration")]
    pub refresh_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub refetch_cooldown: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub fetch_timeout: Duration,
    pub rsa_algorithm: RsaAlgorithm,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub base_url: HttpUrl,
    pub api_key: SecretSource,
    pub business_id: SecretSource,
    pub user_id: SecretSource,
    #[serde(default, deserialize_with = "optional_claim_name")]
    pub user_id_claim: Option<String>,
    pub forward_headers: Vec<ForwardableHeader>,
    #[serde(deserialize_with = "positive_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "at_least_one")]
    pub max_response_bytes: usize,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignConfig {
    pub allowed_content_types: Vec<ContentTypePattern>,
    #[serde(deserialize_with = "some_sources")]
    pub allowed_sources: Vec<Source>,
    #[serde(deserialize_with = "at_least_one_u32")]
    pub rate_limit_burst: u32,
    #[serde(deserialize_with = "positive_duration")]
    pub rate_limit_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConfig {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub max_window: Duration,
    #[serde(deserialize_with = "at_least_an_hour")]
    pub remember_expired: Duration,
    #[serde(deserialize_with = "at_least_one")]
    pub max_body_bytes: usize,
    pub public_sources: Vec<Source>,
    #[serde(deserialize_with = "positive_duration")]
    pub claim_lease: Duration,
    #[serde(deserialize_with = "at_least_one_u32")]
    pub max_attempts: u32,
    #[serde(deserialize_with = "positive_duration")]
    pub attempt_backoff: Duration,
    #[serde(deserialize_with = "at_least_one_u32")]
    pub rate_limit_burst: u32,
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
    pub default_tier: String,
    pub tiers: BTreeMap<String, TierLimits>,
}

/// The limits of one tier. `None`: no daily limit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    #[serde(deserialize_with = "at_least_one")]
    pub max_outstanding: usize,
    pub max_uploads_per_day: Option<u64>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    #[serde(deserialize_with = "at_least_one")]
    pub max_uploads: usize,
    pub max_uploads_per_user: usize,
    #[serde(deserialize_with = "positive_duration")]
    pub sweep_interval: Duration,
    pub redis: RedisConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub urls: Vec<RedisUrl>,
    pub cluster: bool,
    pub password: Option<SecretSource>,
    #[serde(deserialize_with = "key_prefix")]
    pub prefix: String,
    #[serde(deserialize_with = "positive_duration")]
    pub operation_timeout: Duration,
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

impl Config {
    /// Defaults, then `file` (if any), then the process environment, then the command line's
    /// `overrides`, then [`Config::validate`].
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
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
        if self.store.kind == StoreKind::Redis
            && (r.urls.is_empty() || (!r.cluster && r.urls.len() > 1))
        {
            return Err(invalid(
                "store.redis.urls",
                "give one URL, or the seed nodes of a cluster with store.redis.cluster = true",
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
