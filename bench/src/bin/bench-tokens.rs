//! Mints benchmark JWTs, one per line, fast (every core signs a share).
//!
//! Token `i` (0-based) is for user `<prefix><first-user + i % users>` (five digits), carries a
//! `jti` unique to it, `iat` = now and `exp` = now + ttl, and `aud`/`iss` when given. So
//! `--count` = `--users` gives one token per user, and a larger `--count` gives every user
//! several distinct tokens (no two tokens of the file are equal, whatever the count).
//!
//! RS256 signs with a PKCS#8 PEM private key (`openssl genpkey` writes one); HS256 uses the
//! bytes of the secret file, one trailing newline dropped (as the gateway reads `file:` secrets).

use std::{io::Write as _, num::NonZeroUsize};

use aws_lc_rs::{hmac, rand::SystemRandom, signature};
use base64::{
    Engine as _, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD,
};
use bench::{Options, fail};

const PROGRAM: &str = "bench-tokens";
const USAGE: &str = "--alg RS256|HS256 --key FILE --count N --out FILE [--users N] [--first-user N] \
                     [--user-prefix user-] [--aud AUD] [--iss ISS] [--ttl SECONDS] [--jti-prefix P]";

enum Signer {
    Rs256(signature::RsaKeyPair, SystemRandom),
    Hs256(Box<hmac::Key>),
}

impl Signer {
    fn load(alg: &str, key_file: &str) -> Self {
        let bytes = std::fs::read(key_file)
            .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot read {key_file}: {e}")));
        match alg {
            "RS256" => {
                let pem = String::from_utf8(bytes)
                    .unwrap_or_else(|_| fail(PROGRAM, "the RSA key is not a PEM file"));
                let der: String = pem
                    .lines()
                    .filter(|line| !line.starts_with("-----"))
                    .collect();
                let der = STANDARD
                    .decode(der.trim())
                    .unwrap_or_else(|_| fail(PROGRAM, "the RSA key is not a PEM file"));
                let key = signature::RsaKeyPair::from_pkcs8(&der).unwrap_or_else(|e| {
                    fail(PROGRAM, &format!("not a PKCS#8 RSA private key: {e}"))
                });
                Self::Rs256(key, SystemRandom::new())
            }
            "HS256" => {
                let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                Self::Hs256(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret)))
            }
            other => fail(PROGRAM, &format!("--alg {other}: RS256 or HS256")),
        }
    }

    fn header(&self) -> &'static str {
        match self {
            Self::Rs256(..) => r#"{"alg":"RS256","typ":"JWT"}"#,
            Self::Hs256(_) => r#"{"alg":"HS256","typ":"JWT"}"#,
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Rs256(key, rng) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, rng, message, &mut signature)
                    .unwrap_or_else(|_| fail(PROGRAM, "RSA signing failed"));
                signature
            }
            Self::Hs256(key) => hmac::sign(key, message).as_ref().to_vec(),
        }
    }
}

struct Claims {
    users: usize,
    first_user: usize,
    user_prefix: String,
    aud: Option<String>,
    iss: Option<String>,
    iat: u64,
    exp: u64,
    jti_prefix: String,
}

impl Claims {
    fn token(&self, signer: &Signer, header: &str, i: usize) -> String {
        let mut claims = serde_json::json!({
            "sub": format!("{}{:05}", self.user_prefix, self.first_user + i % self.users),
            "iat": self.iat,
            "exp": self.exp,
            "jti": format!("{}{i}", self.jti_prefix),
        });
        if let Some(aud) = &self.aud {
            claims["aud"] = aud.as_str().into();
        }
        if let Some(iss) = &self.iss {
            claims["iss"] = iss.as_str().into();
        }
        let mut token = header.to_owned();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = signer.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        token
    }
}

fn main() {
    let options = Options::parse(
        PROGRAM,
        USAGE,
        &[
            "alg",
            "key",
            "count",
            "out",
            "users",
            "first-user",
            "user-prefix",
            "aud",
            "iss",
            "ttl",
            "jti-prefix",
        ],
    );
    let signer = Signer::load(options.required("alg"), options.required("key"));
    let count: usize = options.parsed("count", 1000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        users: options.parsed::<usize>("users", count).max(1),
        first_user: options.parsed("first-user", 0),
        user_prefix: options.get("user-prefix").unwrap_or("user-").to_owned(),
        aud: options.get("aud").map(str::to_owned),
        iss: options.get("iss").map(str::to_owned),
        iat: now,
        exp: now + options.parsed::<u64>("ttl", 7200),
        jti_prefix: options
            .get("jti-prefix")
            .map_or_else(|| format!("{now}-"), str::to_owned),
    };
    let header = URL_SAFE_NO_PAD.encode(signer.header());

    let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let chunk = count.div_ceil(threads).max(1);
    let parts: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let (signer, claims, header) = (&signer, &claims, &header);
                scope.spawn(move || {
                    let mut out = String::new();
                    for i in start..(start + chunk).min(count) {
                        out.push_str(&claims.token(signer, header, i));
                        out.push('\n');
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| fail(PROGRAM, "a signer panicked"))
            })
            .collect()
    });

    let out = options.required("out");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out)
            .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot create {out}: {e}"))),
    );
    for part in &parts {
        file.write_all(part.as_bytes())
            .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot write {out}: {e}")));
    }
    file.flush()
        .unwrap_or_else(|e| fail(PROGRAM, &format!("cannot write {out}: {e}")));
}
