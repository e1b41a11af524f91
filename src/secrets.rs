//! Server-held secrets: where each comes from (`env:`, `file:`, `value:`) and the loaded values,
//! which live in `secrecy` types and print as `[REDACTED]`.

use std::{fmt, path::PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// Where a secret is read from. Never holds a value in clear `Debug` output.
#[derive(Clone)]
pub enum SecretSource {
    /// `env:NAME`: the process's environment variable `NAME`.
    Env(String),
    /// `file:/path`: a file's content without one trailing newline, re-read when it changes.
    File(PathBuf),
    /// `value:literal`: the secret written in the configuration itself.
    Value(SecretString),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Value(_) => f.write_str("value:[REDACTED]"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        SecretSource::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl SecretSource {
    /// Parses `env:NAME`, `file:/path` or `value:literal`.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if let Some(name) = raw.strip_prefix("env:") {
            if name.is_empty() {
                return Err("\"env:\" needs a variable name");
            }
            Ok(Self::Env(name.to_owned()))
        } else if let Some(path) = raw.strip_prefix("file:") {
            if path.is_empty() {
                return Err("\"file:\" needs a path");
            }
            Ok(Self::File(PathBuf::from(path)))
        } else if let Some(value) = raw.strip_prefix("value:") {
            Ok(Self::Value(SecretString::from(value.to_owned())))
        } else {
            // The raw text may be a pasted secret: never echo it.
            Err("a secret must be written \"env:NAME\", \"file:/path\" or \"value:...\"")
        }
    }

    /// Reads the secret now. The error names the source, never the value.
    pub fn load(&self) -> Result<SecretString, String> {
        let value = match self {
            Self::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set (or not UTF-8)"))?,
            Self::File(path) => {
                let mut text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                // Files written by `echo` or by hand end in a newline that is not part of the secret.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
            Self::Value(value) => value.expose_secret().to_owned(),
        };
        if value.is_empty() {
            return Err(format!("{self:?} is empty"));
        }
        Ok(SecretString::from(value))
    }

    /// Loads a secret that will be sent as an HTTP header value.
    pub fn load_header_value(&self) -> Result<SecretHeaderValue, String> {
        let secret = self.load()?;
        let mut value = http::HeaderValue::from_str(secret.expose_secret())
            .map_err(|_| format!("{self:?} holds characters not allowed in an HTTP header"))?;
        value.set_sensitive(true);
        Ok(SecretHeaderValue { secret, value })
    }
}

/// A secret ready to be injected as a header: kept as text (for leak scanning) and as a
/// pre-built, sensitive `HeaderValue` (so the hot path does no parsing).
#[derive(Clone)]
pub struct SecretHeaderValue {
    secret: SecretString,
    value: http::HeaderValue,
}

impl fmt::Debug for SecretHeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl SecretHeaderValue {
    /// The pre-built, sensitive header value sent upstream.
    pub fn header_value(&self) -> &http::HeaderValue {
        &self.value
    }

    /// The secret as text: the form's `business_id`, and what Kizen's answers are scanned for.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_literal_value() {
        let source = SecretSource::parse("value:hunter2-secret").unwrap();
        assert!(!format!("{source:?}").contains("hunter2"));
        let header = source.load_header_value().unwrap();
        assert!(!format!("{header:?}").contains("hunter2"));
        assert_eq!(header.expose(), "hunter2-secret");
    }

    #[test]
    fn a_bare_string_is_refused_without_being_echoed() {
        let err = SecretSource::parse("sk_live_abcdef").unwrap_err();
        assert!(!err.contains("sk_live"));
    }

    #[test]
    fn file_secrets_lose_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("kgw-secret-{}", std::process::id()));
        std::fs::write(&dir, "abc\n").unwrap();
        let source = SecretSource::File(dir.clone());
        assert_eq!(source.load_header_value().unwrap().expose(), "abc");
        std::fs::remove_file(dir).unwrap();
    }
}
