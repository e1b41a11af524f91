//! The typed values of the configuration: each is parsed, and its single-value rules checked,
//! while the file is read, so that code past [`super::Config::load`] holds only values that make
//! sense. Errors name the value and say what would be accepted; the loader adds the option.

use std::{fmt, str::FromStr, time::Duration};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Deserializer, de::Error as _};

/// Parses a value with `FromStr`, turning its error into a deserialization error.
fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(D::Error::custom)
}

macro_rules! deserialize_from_str {
    ($($ty:ty),+) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                parsed(deserializer)
            }
        }
    )+};
}

deserialize_from_str!(
    JwtAlgorithm,
    RsaAlgorithm,
    HttpUrl,
    RedisUrl,
    Origin,
    Source,
    ContentTypePattern,
    ForwardableHeader
);

/// A JOSE algorithm name, exactly as JOSE spells it; `none` in any spelling is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtAlgorithm(pub Algorithm);

impl FromStr for JwtAlgorithm {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        if name.eq_ignore_ascii_case("none") {
            return Err("\"none\" is never accepted".into());
        }
        Algorithm::from_str(name).map(Self).map_err(|_| {
            format!(
                "{name:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, \
                 PS512, ES256, ES384, EdDSA"
            )
        })
    }
}

impl JwtAlgorithm {
    /// HS*: a shared secret rather than a public key.
    pub fn is_hmac(self) -> bool {
        self.0.family() == AlgorithmFamily::Hmac
    }
}

/// An RSA algorithm (RS* or PS*): the one a JWKS's RSA keys without `alg` are pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsaAlgorithm(pub Algorithm);

impl FromStr for RsaAlgorithm {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let JwtAlgorithm(algorithm) = name.parse()?;
        if algorithm.family() != AlgorithmFamily::Rsa {
            return Err(format!("{name:?} is not an RSA algorithm"));
        }
        Ok(Self(algorithm))
    }
}

/// An absolute `http://` or `https://` URL with a host and no credentials, kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!("{url:?} must be an http(s) URL"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("must not carry credentials".into());
        }
        Ok(Self(url.to_owned()))
    }
}

impl HttpUrl {
    /// The URL exactly as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for HttpUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `redis://` or `rediss://` URL with a host and no password (the password is a secret of its
/// own, `store.redis.password`: a URL is printed in errors and `Debug` output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none() {
            return Err(format!("{url:?} must be a redis:// or rediss:// URL"));
        }
        if parsed.password().is_some() {
            return Err(
                "put the password in store.redis.password (a sentinel's in store.redis.sentinel.password), not in the URL"
                    .into(),
            );
        }
        Ok(Self(url.to_owned()))
    }
}

impl RedisUrl {
    /// The URL exactly as configured (without a password, which is never in it).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }
}

/// A browser origin allowed by CORS, like `https://app.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(HeaderValue);

impl FromStr for Origin {
    type Err = String;

    fn from_str(origin: &str) -> Result<Self, String> {
        let shaped = (origin.starts_with("https://") || origin.starts_with("http://"))
            && !origin.ends_with('/');
        match HeaderValue::from_str(origin) {
            Ok(value) if shaped => Ok(Self(value)),
            _ => Err(format!(
                "{origin:?} is not an origin like \"https://app.example.com\""
            )),
        }
    }
}

impl Origin {
    /// The origin as the `Access-Control-Allow-Origin` value it is answered with.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Where in Kizen a file belongs: the `source` parameter of both calls, one of eleven values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source(&'static str);

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

impl FromStr for Source {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        KIZEN_SOURCES
            .iter()
            .find(|known| **known == name)
            .map(|known| Self(known))
            .ok_or_else(|| {
                format!(
                    "{name:?} is not a Kizen source ({})",
                    KIZEN_SOURCES.join(", ")
                )
            })
    }
}

impl Source {
    /// The value as the Kizen API spells it, e.g. `field_value`.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// An allowlist entry for `contenttype`: a media type, `type/*`, or `*/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentTypePattern(String);

impl FromStr for ContentTypePattern {
    type Err = String;

    fn from_str(pattern: &str) -> Result<Self, String> {
        if is_media_type(pattern) && (!pattern.contains('*') || pattern.ends_with("/*")) {
            Ok(Self(pattern.to_owned()))
        } else {
            Err(format!(
                "{pattern:?} is not like \"image/png\" or \"image/*\""
            ))
        }
    }
}

impl ContentTypePattern {
    /// Whether `media_type` (already known to be `type/subtype`) fits this pattern; case does
    /// not matter.
    pub fn matches(&self, media_type: &str) -> bool {
        match self.0.strip_suffix("/*") {
            Some("*") => true,
            Some(kind) => media_type
                .split_once('/')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(kind)),
            None => self.0.eq_ignore_ascii_case(media_type),
        }
    }

    /// The pattern as configured, e.g. `image/*`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `type/subtype`, both RFC 9110 tokens, no parameters, at most 255 bytes.
pub fn is_media_type(value: &str) -> bool {
    fn is_token_char(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }
    match value.split_once('/') {
        Some((kind, subtype)) => {
            value.len() <= 255
                && !kind.is_empty()
                && !subtype.is_empty()
                && kind.bytes().all(is_token_char)
                && subtype.bytes().all(is_token_char)
        }
        None => false,
    }
}

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

/// A client header the gateway may pass upstream: never one it owns or one that describes a hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardableHeader(pub HeaderName);

impl FromStr for ForwardableHeader {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let lower = header.as_str();
        if NEVER_FORWARDED.contains(&lower)
            || lower.starts_with("x-forwarded-")
            || lower.starts_with("proxy-")
        {
            return Err(format!(
                "{name:?} is owned by the gateway and cannot be forwarded"
            ));
        }
        Ok(Self(header))
    }
}

/// A count that must be at least 1 (`deserialize_with`).
pub fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    match usize::deserialize(deserializer)? {
        0 => Err(D::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// Like [`at_least_one`], for `u32` counts.
pub fn at_least_one_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    match u32::deserialize(deserializer)? {
        0 => Err(D::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// A humantime duration (`"5s"`, `"1h30m"`) that must be longer than 0s (`deserialize_with`).
pub fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let duration = humantime_serde::deserialize(deserializer)?;
    if Duration::is_zero(&duration) {
        return Err(D::Error::custom("must be longer than 0s"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_in_the_content_type_allowlist() {
        let image: ContentTypePattern = "image/*".parse().unwrap();
        assert!(image.matches("image/png"));
        assert!(image.matches("IMAGE/jpeg"));
        assert!(!image.matches("application/pdf"));
        let any: ContentTypePattern = "*/*".parse().unwrap();
        assert!(any.matches("application/pdf"));
        assert!("image/p*".parse::<ContentTypePattern>().is_err());
    }

    #[test]
    fn none_is_never_an_algorithm() {
        for name in ["none", "NONE", "None"] {
            assert!(name.parse::<JwtAlgorithm>().is_err(), "{name}");
        }
        assert!("ES256".parse::<RsaAlgorithm>().is_err());
        assert_eq!(
            "PS256".parse::<RsaAlgorithm>(),
            Ok(RsaAlgorithm(Algorithm::PS256))
        );
    }

    #[test]
    fn gateway_owned_headers_are_not_forwardable() {
        for name in [
            "X-Api-Key",
            "authorization",
            "x-forwarded-for",
            "proxy-authorization",
        ] {
            assert!(name.parse::<ForwardableHeader>().is_err(), "{name}");
        }
        assert!("accept-language".parse::<ForwardableHeader>().is_ok());
    }
}
