//! Token minting: the test keys (tests/fixtures/keys), claims, and tokens signed with them.

use std::path::PathBuf;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::gateway::HS256_SECRET;

/// A file of tests/fixtures/keys.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// Now, in seconds since the epoch (the unit of `iat`, `nbf` and `exp`).
pub fn now() -> u64 {
    kizen_gateway::clock::seconds_since_epoch()
}

/// Claims for `sub`, issued now, valid for one hour.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iat": now(), "exp": now() + 3600 })
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

/// Signs `claims` with the fixture private key in `file`.
pub fn signed(algorithm: Algorithm, file: &str, kid: Option<&str>, claims: &Value) -> String {
    sign(algorithm, &private_key(algorithm, file), kid, claims)
}

/// The fixture private key in `file`, for `algorithm`.
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
