//! Configuration: the commented defaults in `config/default.toml`, then an optional file, then
//! `KIZEN_GATEWAY_*` environment variables, then validation. Every error names its option.

use std::{net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;

use crate::secrets::SecretSource;

/// The defaults, compiled in so that the binary needs no file to start.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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
    pub quotas: crate::quota::QuotaConfig,
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
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
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
    pub allowed_origins: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub user_claim: String,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    /// Accept tokens without checking `aud` although asymmetric keys are configured: any token
    /// the identity provider signed, for any application. Refused unless set explicitly.
    pub allow_any_audience: bool,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
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
    pub max_entries: usize,
}

impl AuthConfig {
    /// Whether a key is asymmetric (a public key file, or the JWKS): the identity provider signs
    /// with it for every application it serves, not for this gateway alone.
    pub fn has_asymmetric_keys(&self) -> bool {
        self.jwks.url.is_some()
            || self.keys.iter().any(|key| {
                crate::auth::keys::parse_algorithm(&key.algorithm)
                    .map_or(true, |a| a.family() != jsonwebtoken::AlgorithmFamily::Hmac)
            })
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
    pub algorithm: String,
    pub secret: Option<SecretSource>,
    pub public_key_file: Option<std::path::PathBuf>,
    /// The only `iss` a token verified by this key may carry.
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    pub url: Option<String>,
    /// The only `iss` a token verified by a key of this set may carry.
    pub issuer: Option<String>,
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub refetch_cooldown: Duration,
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    pub rsa_algorithm: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub base_url: String,
    pub api_key: SecretSource,
    pub business_id: SecretSource,
    pub user_id: SecretSource,
    pub user_id_claim: Option<String>,
    pub forward_headers: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignConfig {
    pub allowed_content_types: Vec<String>,
    pub allowed_sources: Vec<String>,
    pub rate_limit_burst: u32,
    #[serde(with = "humantime_serde")]
    pub rate_limit_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConfig {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    #[serde(with = "humantime_serde")]
    pub max_window: Duration,
    #[serde(with = "humantime_serde")]
    pub remember_expired: Duration,
    pub max_body_bytes: usize,
    pub public_sources: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub attempt_backoff: Duration,
    pub rate_limit_burst: u32,
    #[serde(with = "humantime_serde")]
    pub rate_limit_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub max_uploads: usize,
    pub max_uploads_per_user: usize,
    #[serde(with = "humantime_serde")]
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
    pub urls: Vec<String>,
    pub cluster: bool,
    pub password: Option<SecretSource>,
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
}

/// The eleven `source` values the Kizen API accepts.
pub const KIZEN_SOURCES: [&str; 11] = [
    "field_value",
    "form_field_value",
    "activity_field_value",
    "automation_value",
    "employee_import",
    "record_import",
    "meta_import",
    "smart_connector_import",
    "knowledge_source",
    "public_image",
    "third_party_image",
];

/// Headers the gateway itself owns upstream or that describe a hop; never forwardable.
const NEVER_FORWARDED: [&str; 16] = [
    "x-api-key",
    "x-business-id",
    "x-user-id",
    "authorization",
    "cookie",
    "host",
    "forwarded",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-request-id",
];

/// Room left in `confirm.claim_lease` beyond the timeouts of one forward and its settle.
pub const CLAIM_LEASE_MARGIN: Duration = Duration::from_secs(5);

/// A configuration error: the option at fault and what is wrong with it, on one line.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

fn invalid(option: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{option}: {why}"))
}

impl Config {
    /// Defaults, then `file` (if any), then the process environment, then [`Config::validate`].
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, Env::prefixed(ENV_PREFIX).split("__"))
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

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
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
        Self::extract(figment.merge(env))
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|e| {
            // figment reports one error per problem; the first names the option and the source.
            let first = e
                .into_iter()
                .next()
                .map(|e| e.to_string())
                .unwrap_or_default();
            ConfigError(without_source_lines(&first))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that serde cannot: ranges, cross-field rules, known names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.max_header_bytes < 8192 {
            return Err(invalid("server.max_header_bytes", "must be at least 8192"));
        }
        positive("server.max_headers", s.max_headers)?;
        positive("server.max_concurrent_requests", s.max_concurrent_requests)?;
        nonzero("server.header_read_timeout", s.header_read_timeout)?;
        nonzero("server.request_timeout", s.request_timeout)?;

        if self.admin.listen == s.listen && s.listen.port() != 0 {
            return Err(invalid("admin.listen", "must differ from server.listen"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e))?;

        for origin in &self.cors.allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin != "*"
                && http::HeaderValue::from_str(origin).is_ok();
            if !ok {
                return Err(invalid(
                    "cors.allowed_origins",
                    format!("{origin:?} is not an origin like \"https://app.example.com\""),
                ));
            }
        }

        let a = &self.auth;
        if a.user_claim.is_empty() {
            return Err(invalid("auth.user_claim", "must not be empty"));
        }
        positive("auth.max_token_bytes", a.max_token_bytes)?;
        if a.leeway > Duration::from_secs(300) {
            return Err(invalid("auth.leeway", "must be at most 5m"));
        }
        if a.keys.is_empty() && a.jwks.url.is_none() {
            return Err(invalid(
                "auth.keys",
                "no verification key: configure [[auth.keys]] or auth.jwks.url",
            ));
        }
        for (i, key) in a.keys.iter().enumerate() {
            crate::auth::keys::check_static_key_config(key)
                .map_err(|why| invalid(&format!("auth.keys[{i}]"), why))?;
        }
        if let Some(url) = &a.jwks.url {
            check_http_url("auth.jwks.url", url)?;
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
        crate::auth::keys::parse_rsa_algorithm(&a.jwks.rsa_algorithm)
            .map_err(|why| invalid("auth.jwks.rsa_algorithm", why))?;
        nonzero("auth.jwks.fetch_timeout", a.jwks.fetch_timeout)?;
        nonzero("auth.jwks.refresh_interval", a.jwks.refresh_interval)?;
        positive("auth.token_cache.max_entries", a.token_cache.max_entries)?;

        let u = &self.upstream;
        check_http_url("upstream.base_url", &u.base_url)?;
        if let Some(claim) = &u.user_id_claim
            && claim.is_empty()
        {
            return Err(invalid("upstream.user_id_claim", "must not be empty"));
        }
        for name in &u.forward_headers {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    "upstream.forward_headers",
                    format!("{name:?} is not a header name"),
                ));
            }
            if NEVER_FORWARDED.contains(&lower.as_str())
                || lower.starts_with("x-forwarded-")
                || lower.starts_with("proxy-")
            {
                return Err(invalid(
                    "upstream.forward_headers",
                    format!("{name:?} is owned by the gateway and cannot be forwarded"),
                ));
            }
        }
        nonzero("upstream.connect_timeout", u.connect_timeout)?;
        nonzero("upstream.request_timeout", u.request_timeout)?;
        positive("upstream.max_response_bytes", u.max_response_bytes)?;

        let p = &self.presign;
        for ct in &p.allowed_content_types {
            if !crate::validate::is_content_type_pattern(ct) {
                return Err(invalid(
                    "presign.allowed_content_types",
                    format!("{ct:?} is not like \"image/png\" or \"image/*\""),
                ));
            }
        }
        if p.allowed_sources.is_empty() {
            return Err(invalid("presign.allowed_sources", "must not be empty"));
        }
        for source in &p.allowed_sources {
            if !KIZEN_SOURCES.contains(&source.as_str()) {
                return Err(invalid(
                    "presign.allowed_sources",
                    format!(
                        "{source:?} is not a Kizen source ({})",
                        KIZEN_SOURCES.join(", ")
                    ),
                ));
            }
        }
        if p.rate_limit_burst == 0 {
            return Err(invalid("presign.rate_limit_burst", "must be at least 1"));
        }
        nonzero("presign.rate_limit_period", p.rate_limit_period)?;
        self.quotas.validate().map_err(ConfigError)?;

        let c = &self.confirm;
        nonzero("confirm.max_window", c.max_window)?;
        nonzero("confirm.claim_lease", c.claim_lease)?;
        // The forward and its settle must fit in the lease: the claim, the upstream call and the
        // settle each take up to their timeouts, and the settle is retried until the lease ends.
        let needed = self.upstream.request_timeout
            + 2 * self.store.redis.operation_timeout
            + CLAIM_LEASE_MARGIN;
        if c.claim_lease < needed {
            return Err(invalid(
                "confirm.claim_lease",
                format!(
                    "must be at least upstream.request_timeout + 2 x store.redis.operation_timeout + {}s ({}ms here)",
                    CLAIM_LEASE_MARGIN.as_secs(),
                    needed.as_millis()
                ),
            ));
        }
        if c.max_attempts == 0 {
            return Err(invalid("confirm.max_attempts", "must be at least 1"));
        }
        nonzero("confirm.attempt_backoff", c.attempt_backoff)?;
        if c.rate_limit_burst == 0 {
            return Err(invalid("confirm.rate_limit_burst", "must be at least 1"));
        }
        nonzero("confirm.rate_limit_period", c.rate_limit_period)?;
        if c.remember_expired < Duration::from_secs(3600) {
            return Err(invalid("confirm.remember_expired", "must be at least 1h"));
        }
        positive("confirm.max_body_bytes", c.max_body_bytes)?;
        for source in &c.public_sources {
            if !KIZEN_SOURCES.contains(&source.as_str()) {
                return Err(invalid(
                    "confirm.public_sources",
                    format!("{source:?} is not a Kizen source"),
                ));
            }
        }

        positive("store.max_uploads", self.store.max_uploads)?;
        if let Some((name, tier)) = self
            .quotas
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
        nonzero("store.sweep_interval", self.store.sweep_interval)?;
        let r = &self.store.redis;
        if self.store.kind == StoreKind::Redis {
            if r.urls.is_empty() || (!r.cluster && r.urls.len() > 1) {
                return Err(invalid(
                    "store.redis.urls",
                    "give one URL, or the seed nodes of a cluster with store.redis.cluster = true",
                ));
            }
            for url in &r.urls {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| invalid("store.redis.urls", format!("{url:?}: {e}")))?;
                if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none() {
                    return Err(invalid(
                        "store.redis.urls",
                        format!("{url:?} must be a redis:// or rediss:// URL"),
                    ));
                }
                if parsed.password().is_some() {
                    // The URL is printed in errors and Debug output: keep the secret apart.
                    return Err(invalid(
                        "store.redis.urls",
                        "put the password in store.redis.password, not in the URL",
                    ));
                }
            }
        }
        if r.prefix.is_empty() || r.prefix.contains(['{', '}']) {
            return Err(invalid(
                "store.redis.prefix",
                "must be non-empty and without { or }",
            ));
        }
        nonzero("store.redis.operation_timeout", r.operation_timeout)?;
        nonzero("reload.interval", self.reload.interval)?;
        Ok(())
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

fn positive(option: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(option, "must be at least 1"));
    }
    Ok(())
}

fn nonzero(option: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(option, "must be longer than 0s"));
    }
    Ok(())
}

fn check_http_url(option: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(option, format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(option, format!("{url:?} must be an http(s) URL")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(option, "must not carry credentials"));
    }
    Ok(())
}
