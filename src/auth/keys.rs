//! Verification keys: each pins one algorithm, parsed once at start (or once per JWKS fetch).

use std::sync::Arc;

use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};

use crate::config::{AuthConfig, StaticKeyConfig};

/// Claim rules shared by every key.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// Accepted `iss` values (`auth.issuers`, or the key's own issuer alone); empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (`auth.audiences`); empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew tolerated for `exp` and `nbf`, in whole seconds (`auth.leeway`).
    pub leeway_secs: u64,
}

impl ClaimRules {
    /// The shared rules of `[auth]`: its issuers, audiences and leeway.
    pub fn from_config(auth: &AuthConfig) -> Self {
        Self {
            issuers: auth.issuers.clone(),
            audiences: auth.audiences.clone(),
            leeway_secs: auth.leeway.as_secs(),
        }
    }

    /// The rules of a key tied to `issuer`: a token it verifies must carry exactly that `iss`.
    /// Without an issuer of its own, a key takes the shared rules (`auth.issuers`).
    pub fn for_issuer(&self, issuer: Option<&str>) -> Self {
        match issuer {
            Some(issuer) => Self {
                issuers: vec![issuer.to_owned()],
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// A key that verifies exactly one algorithm.
pub struct VerificationKey {
    /// The `kid` a token must name to be verified by this key; `None`: any token of its algorithm.
    pub kid: Option<String>,
    /// The one algorithm this key verifies; the token's `alg` must be the same.
    pub algorithm: Algorithm,
    /// The parsed key material (an HMAC secret or a public key).
    pub key: DecodingKey,
    /// The jsonwebtoken checks this key runs: its algorithm only, `exp`, `nbf`, and `iss` and `aud`
    /// by its [`ClaimRules`].
    pub validation: Validation,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key material stays out of Debug: an HMAC key is a secret.
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// A key pinned to `algorithm`, checking the claims by `rules`.
    pub fn new(
        kid: Option<String>,
        algorithm: Algorithm,
        key: DecodingKey,
        rules: &ClaimRules,
    ) -> Self {
        Self {
            kid,
            algorithm,
            key,
            validation: rules.validation(algorithm),
        }
    }

    /// A key with a `kid` serves only tokens naming it; a key without one serves any token of its
    /// algorithm. The token's `alg` must always equal the pinned one.
    fn serves(&self, kid: Option<&str>, algorithm: Algorithm) -> bool {
        self.algorithm == algorithm
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }
}

/// An immutable set of keys; replaced whole when a JWKS is refetched.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
}

impl KeySet {
    /// A set of these keys: the configured static keys, or the usable keys of one JWKS fetch.
    pub fn new(keys: Vec<VerificationKey>) -> Self {
        Self {
            keys: keys.into_iter().map(Arc::new).collect(),
        }
    }

    /// Keys that may verify a token with this header, best first: an exact `kid` match before
    /// kid-less keys. The list is as long as the configured keys at most: verification work per
    /// token is bounded.
    pub fn candidates(&self, kid: Option<&str>, algorithm: Algorithm) -> Vec<Arc<VerificationKey>> {
        let mut found: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.serves(kid, algorithm))
            .cloned()
            .collect();
        found.sort_by_key(|k| k.kid.is_none());
        found
    }

    /// Whether some key carries this `kid` (otherwise an unknown `kid` may trigger a JWKS refetch).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Reads and parses every configured static key. Errors name the key and never its material.
pub fn load_static_keys(auth: &AuthConfig, rules: &ClaimRules) -> Result<KeySet, String> {
    let mut keys = Vec::with_capacity(auth.keys.len());
    for (i, config) in auth.keys.iter().enumerate() {
        let key = load_static_key(config, rules).map_err(|why| format!("auth.keys[{i}]: {why}"))?;
        keys.push(key);
    }
    Ok(KeySet::new(keys))
}

fn load_static_key(
    config: &StaticKeyConfig,
    rules: &ClaimRules,
) -> Result<VerificationKey, String> {
    config.check_material()?;
    let algorithm = config.algorithm.0;
    let key = if let Some(secret) = &config.secret {
        use secrecy::ExposeSecret;
        let secret = secret.load()?;
        if secret.expose_secret().len() < 32 {
            return Err("an HMAC secret must be at least 32 bytes".into());
        }
        DecodingKey::from_secret(secret.expose_secret().as_bytes())
    } else {
        let path = config.public_key_file.as_ref().expect("checked above");
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        decoding_key_from_pem(algorithm, &pem).map_err(|e| format!("{}: {e}", path.display()))?
    };
    Ok(VerificationKey::new(
        config.kid.clone(),
        algorithm,
        key,
        &rules.for_issuer(config.issuer.as_deref()),
    ))
}

/// Parses a PEM public key for `algorithm`, refusing private keys and HMAC algorithms.
pub fn decoding_key_from_pem(algorithm: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_string())?;
    if text.contains("PRIVATE KEY") {
        return Err("holds a private key; give the public key".into());
    }
    let parsed = match algorithm.family() {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        AlgorithmFamily::Hmac => return Err("HMAC keys are secrets, not PEM files".into()),
    };
    parsed.map_err(|e| format!("not a {algorithm:?} public key in PEM: {e}"))
}

/// Turns one JWK into a verification key with a pinned algorithm, or says why it is skipped.
/// Symmetric (`oct`) keys are never taken from a URL.
pub fn key_from_jwk(
    jwk: &Jwk,
    rsa_default: Algorithm,
    rules: &ClaimRules,
) -> Result<VerificationKey, String> {
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err("not a signature key (`use` is not \"sig\")".into());
    }
    let by_shape = match &jwk.algorithm {
        // 2048 bits is 342 base64url characters; anything shorter is broken or weak.
        AlgorithmParameters::RSA(rsa) if rsa.n.len() < 342 || rsa.e.is_empty() => {
            return Err("RSA modulus shorter than 2048 bits".into());
        }
        AlgorithmParameters::RSA(_) => rsa_default,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are not accepted from a JWKS".into());
        }
        _ => return Err("unsupported key type".into()),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => by_shape,
        Some(declared) => {
            let algorithm = jwk_algorithm(declared).ok_or("unsupported `alg`")?;
            if algorithm.family() != by_shape.family()
                || algorithm.family() == AlgorithmFamily::Hmac
            {
                return Err("`alg` does not fit the key type".into());
            }
            if algorithm.family() == AlgorithmFamily::Ec && algorithm != by_shape {
                return Err("`alg` does not fit the curve".into());
            }
            algorithm
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(VerificationKey::new(
        jwk.common.key_id.clone(),
        algorithm,
        key,
        rules,
    ))
}

fn jwk_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
