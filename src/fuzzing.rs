//! Entry points for the fuzz targets of `fuzz/` and for the corpus replay test
//! (`tests/it/fuzz_corpus.rs`), behind the `fuzzing` cargo feature: one function per target,
//! taking libFuzzer's bytes, calling the gateway's own code path for that input and panicking when
//! an invariant of the answer does not hold. "Did not panic" is not the only check: each function
//! asserts what an accepted input guarantees to the rest of the gateway.
//!
//! A feature rather than an always-built module: the fixed test keys (private halves included),
//! figment's `Jail` (which swaps the process environment) and the signing code stay out of every
//! production build. `cargo test` turns the feature on through the crate's dev-dependency on
//! itself, so that the stable test run replays the corpus through these same functions.

use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{Method, header};
use jsonwebtoken::{Algorithm, EncodingKey};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::{
    auth::{AuthFailure, AuthenticatedUser, Verifier, jwks, keys::ClaimRules},
    config::{AuthConfig, Config, Overrides, PresignConfig, ServerConfig},
    http_guard,
    observability::metrics::Metrics,
    paths::{PRESIGN_PATH, SUCCESS_PATH},
    routes::{confirm::reported_size, presign::PresignAnswer},
    secrets::SecretSource,
    upstream::{echo::names_any, presign_query as upstream_presign_query},
    validate::{self, ConfirmInput, FieldError},
};

/// The audience every fuzzed token is checked against.
pub const AUDIENCE: &str = "kizen-fuzz";
/// The HS256 secret of the bearer target (a test key, like those of `tests/fixtures/keys`).
pub const HS256_SECRET: &str = "fuzz-hs256-secret-0123456789abcdef0123";
/// The claim the bearer target's verifier sends upstream as X-USER-ID.
pub const UPSTREAM_USER_ID_CLAIM: &str = "uid";
/// The secrets the echo check of the upstream-answer target looks for.
pub const ECHO_SECRETS: [&str; 2] = ["sk_live/Fuzz+Key 9\u{e9}", "biz-4242"];

const RSA_PRIVATE_PEM: &str = include_str!("../tests/fixtures/keys/rsa-private.pem");
const EC256_PRIVATE_PEM: &str = include_str!("../tests/fixtures/keys/ec256-private.pem");

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

fn fixture_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
        Config::from_toml(&format!(
            r#"
[upstream]
base_url = "http://127.0.0.1:9"
api_key = "value:fuzz-api-key"
business_id = "value:fuzz-business"
user_id = "value:fuzz-user"

[auth]
audiences = ["{AUDIENCE}"]

[[auth.keys]]
algorithm = "HS256"
secret = "value:{HS256_SECRET}"

[[auth.keys]]
algorithm = "RS256"
public_key_file = "{keys}/rsa-public.pem"

[[auth.keys]]
algorithm = "ES256"
public_key_file = "{keys}/ec256-public.pem"

[presign]
allowed_content_types = ["image/*", "application/pdf", "text/plain"]
allowed_sources = ["field_value", "public_image", "record_import"]
"#
        ))
        .expect("the fuzz fixture configuration is valid")
    })
}

/// The fixture's `[auth]`: HS256, RS256 and ES256 test keys, audience [`AUDIENCE`].
fn auth_config() -> &'static AuthConfig {
    &fixture_config().auth
}

/// The fixture's `[presign]`: a few content-type patterns and three sources.
fn presign_config() -> &'static PresignConfig {
    &fixture_config().presign
}

/// `alg`, key and header for a signing mode of the bearer target.
fn signing_key(mode: u8) -> (Algorithm, &'static EncodingKey) {
    static KEYS: OnceLock<[EncodingKey; 3]> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        [
            EncodingKey::from_secret(HS256_SECRET.as_bytes()),
            EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test RSA key"),
            EncodingKey::from_ec_pem(EC256_PRIVATE_PEM.as_bytes()).expect("test EC key"),
        ]
    });
    match mode {
        1 => (Algorithm::HS256, &keys[0]),
        2 => (Algorithm::RS256, &keys[1]),
        _ => (Algorithm::ES256, &keys[2]),
    }
}

/// `header.payload.signature`, signed with a fixture key: the payload bytes as given (they need
/// not be JSON), so that the claims checks behind a valid signature are reached.
pub fn sign_token(mode: u8, payload: &[u8]) -> String {
    let (algorithm, key) = signing_key(mode);
    let header = format!(r#"{{"alg":"{algorithm:?}","typ":"JWT"}}"#);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, algorithm)
        .expect("signing with a fixture key");
    format!("{message}.{signature}")
}

/// The bearer-token path: the size and shape pre-check, then verification against the fixture's
/// HS256, RS256 and ES256 keys. The first byte picks the mode: 0 takes the rest as the token;
/// 1, 2 and 3 sign the rest as the claims with the HS256, RS256 or ES256 test key.
///
/// Invariants: verifying twice (the second time through the verified-token cache) gives the same
/// answer; an accepted token is within the size cap, has three base64url segments, names a
/// non-empty identity of at most 256 bytes that is its `sub` claim, carries a numeric `exp` and
/// the fixture's audience, and its X-USER-ID claim (when present) is visible ASCII.
pub fn bearer_token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 4 {
        0 => match std::str::from_utf8(rest) {
            Ok(token) => token.to_owned(),
            Err(_) => return,
        },
        mode => sign_token(mode, rest),
    };
    let auth = auth_config();
    // A fresh verifier per input: the token cache of one input never answers another.
    let verifier = Verifier::new(
        auth,
        Some(UPSTREAM_USER_ID_CLAIM.to_owned()),
        Some("tier".to_owned()),
        Arc::new(Metrics::new()),
    )
    .expect("the fixture keys load");
    let first = runtime().block_on(verifier.verify(&token));
    let second = runtime().block_on(verifier.verify(&token));
    assert_eq!(
        outcome(&first),
        outcome(&second),
        "a second verification (through the cache) changed the answer"
    );
    let Ok(user) = first else { return };

    assert!(token.len() <= auth.max_token_bytes, "an oversized token");
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "accepted a token without three segments");
    assert!(
        segments.iter().all(|s| !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
        "accepted a segment that is not base64url"
    );
    assert!(!user.id.is_empty() && user.id.len() <= 256, "bad user id");
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(segments[1])
            .expect("an accepted payload decodes"),
    )
    .expect("an accepted payload is JSON");
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(user.id.as_str()),
        "the user is not the token's sub"
    );
    assert!(
        claims.get("exp").is_some_and(Value::is_number),
        "accepted a token without a numeric exp"
    );
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(audience_ok, "accepted a token for another audience");
    if let Some(uid) = &user.upstream_user_id {
        assert!(
            !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_graphic()),
            "an X-USER-ID that is not visible ASCII"
        );
    }
}

fn outcome(result: &Result<AuthenticatedUser, AuthFailure>) -> String {
    match result {
        Ok(user) => format!(
            "ok {:?} {:?} {:?}",
            user.id, user.upstream_user_id, user.tier
        ),
        Err(failure) => format!("err {failure:?}"),
    }
}

/// Checks what validation promises about reported fields: named, printable, short.
fn assert_field_errors(errors: &[FieldError]) {
    assert!(!errors.is_empty(), "a refusal without a field error");
    for error in errors {
        assert!(
            error.field.chars().count() <= 64
                && !error.field.chars().any(|c| c.is_control() || is_bidi(c)),
            "an unprintable or long field name in an error: {:?}",
            error.field
        );
    }
}

fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// What a validated file name never is or holds.
fn assert_file_name(name: &str) {
    assert!(!name.is_empty() && name.len() <= 255, "file name length");
    assert!(name != "." && name != "..", "a dot name");
    assert!(!name.contains(['/', '\\']), "a separator in a file name");
    assert!(
        !name.chars().any(|c| c.is_control() || is_bidi(c)),
        "a control or bidi character in a file name"
    );
}

/// Presign query validation ([`validate::presign`]) with the fixture's `[presign]`.
///
/// Invariants: an accepted query has a clean file name, an allowed media type and source, and
/// re-encoded as it is forwarded upstream ([`crate::upstream::presign_query`]) validates to the
/// same values; a refused one names each bad field printably.
pub fn presign_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let config = presign_config();
    match validate::presign(Some(query), config) {
        Ok(input) => {
            assert_file_name(&input.filename);
            assert!(
                crate::config::values::is_media_type(&input.contenttype)
                    && config
                        .allowed_content_types
                        .iter()
                        .any(|p| p.matches(&input.contenttype)),
                "a content type outside the allowed ones"
            );
            assert!(
                config
                    .allowed_sources
                    .iter()
                    .any(|s| s.as_str() == input.source),
                "a source outside the allowed ones"
            );
            let forwarded = upstream_presign_query(&input);
            assert_eq!(
                validate::presign(Some(&forwarded), config).as_ref(),
                Ok(&input),
                "the forwarded query does not validate to the same values"
            );
        }
        Err(errors) => assert_field_errors(&errors),
    }
}

/// Confirmation form parsing ([`validate::confirm`]).
///
/// Invariants: an accepted form has a clean display name, a key of at most 1024 bytes without
/// control characters, an ETag of visible ASCII, and re-encoded validates to the same values; a
/// refused one names each bad field printably.
pub fn confirm_form(data: &[u8]) {
    match validate::confirm(data) {
        Ok(input) => {
            assert_file_name(&input.name);
            assert!(
                !input.key.is_empty()
                    && input.key.len() <= 1024
                    && !input.key.chars().any(char::is_control),
                "a bad key"
            );
            assert!(
                !input.etag.is_empty()
                    && input.etag.len() <= 256
                    && input.etag.bytes().all(|b| b.is_ascii_graphic()),
                "a bad etag"
            );
            let again = form_of(&input);
            assert_eq!(
                validate::confirm(again.as_bytes()).as_ref(),
                Ok(&input),
                "the re-encoded form does not validate to the same values"
            );
        }
        Err(errors) => assert_field_errors(&errors),
    }
}

fn form_of(input: &ConfirmInput) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("uuid", &input.uuid.to_string())
        .append_pair("key", &input.key)
        .append_pair("name", &input.name)
        .append_pair("etag", &input.etag)
        .append_pair("is_public", if input.is_public { "true" } else { "false" })
        .finish()
}

/// How Kizen's answers are read. The first byte picks the part: 0 the presign answer
/// ([`PresignAnswer::parse`]), 1 the success answer's reported size, 2 and 3 the echo check of
/// answers for a leaked secret ([`crate::upstream`]'s `names_any`, with [`ECHO_SECRETS`]).
///
/// Invariants: a parsed presign answer has a non-empty key and, written back as JSON, parses to
/// the same upload; a reported size is the answer's `size_bytes`; the echo check finds a secret
/// as is and in every encoding it claims to decode, wherever it is put in the fuzzed bytes.
pub fn upstream_answer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(answer) = PresignAnswer::parse(rest) else {
                return;
            };
            assert!(!answer.key.is_empty(), "an empty key");
            let expires_at = answer
                .expires_at
                .format(&time::format_description::well_known::Rfc3339)
                .expect("a parsed date formats");
            let again = serde_json::json!({
                "s3object_id": answer.s3object_id.to_string(),
                "fields": { "key": answer.key },
                "expires_at": expires_at,
            });
            let reparsed = PresignAnswer::parse(again.to_string().as_bytes())
                .expect("a parsed answer written back parses");
            assert_eq!(reparsed.s3object_id, answer.s3object_id);
            assert_eq!(reparsed.key, answer.key);
            assert_eq!(reparsed.expires_at, answer.expires_at);
        }
        1 => {
            let size = reported_size(rest);
            if size > 0 {
                let value: Value =
                    serde_json::from_slice(rest).expect("a size comes from a JSON document");
                assert!(value.is_object(), "a size read from a non-object");
                assert_eq!(
                    value.get("size_bytes").and_then(Value::as_u64),
                    Some(size),
                    "the reported size is not the answer's size_bytes"
                );
            }
        }
        _ => echo_check(rest),
    }
}

/// The encodings of a secret an upstream answer may carry that the echo check must see through.
fn encodings(secret: &str) -> Vec<String> {
    let percent_all = |upper: bool| -> String {
        secret
            .bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    };
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let json_unicode: String = secret
        .encode_utf16()
        .map(|unit| format!("\\u{unit:04x}"))
        .collect();
    let json_escaped = serde_json::to_string(secret)
        .expect("a string serializes")
        .trim_matches('"')
        .replace('/', "\\/");
    // A percent-encoded secret inside a JSON string whose `%` is escaped too.
    let nested = percent_all(true).replace('%', "\\u0025");
    vec![
        secret.to_owned(),
        percent_all(true),
        percent_all(false),
        form,
        json_unicode,
        json_escaped,
        nested,
    ]
}

fn echo_check(rest: &[u8]) {
    let secrets: Vec<&[u8]> = ECHO_SECRETS.iter().map(|s| s.as_bytes()).collect();
    let found = names_any(rest, &secrets);
    if secrets
        .iter()
        .any(|secret| memchr::memmem::find(rest, secret).is_some())
    {
        assert!(found, "a secret as is was missed");
    }
    assert!(!names_any(rest, &[]), "no secret, yet a match");
    assert!(!names_any(rest, &[b""]), "an empty secret matched");
    // The secret, encoded, put between spaces somewhere in the fuzzed bytes: spaces end any
    // escape of the surrounding bytes, so the encoded secret stands on its own.
    let Some((&pick, rest)) = rest.split_first() else {
        return;
    };
    let secret = ECHO_SECRETS[usize::from(pick) % ECHO_SECRETS.len()];
    let forms = encodings(secret);
    let form = &forms[usize::from(pick / 2) % forms.len()];
    let at = if rest.is_empty() {
        0
    } else {
        usize::from(pick) * 7 % (rest.len() + 1)
    };
    let mut haystack = Vec::with_capacity(rest.len() + form.len() + 2);
    haystack.extend_from_slice(&rest[..at]);
    haystack.push(b' ');
    haystack.extend_from_slice(form.as_bytes());
    haystack.push(b' ');
    haystack.extend_from_slice(&rest[at..]);
    assert!(
        names_any(&haystack, &secrets),
        "an encoded secret was missed: {form:?}"
    );
}

/// The JWKS document, as [`jwks::JwksCache`] reads one it fetched (RS256 for RSA keys without
/// `alg`, the fixture's claim rules).
///
/// Invariants: an accepted document yields at least one key, one usable JWK in the fingerprint
/// per key, never a symmetric key, and the same fingerprint when read again.
pub fn jwks_document(data: &[u8]) {
    let rules = ClaimRules::from_config(auth_config());
    let Ok((keys, fingerprint)) = jwks::parse_document(data, Algorithm::RS256, &rules) else {
        return;
    };
    assert!(!keys.is_empty(), "a document accepted without keys");
    let usable: Vec<Value> =
        serde_json::from_str(&fingerprint).expect("the fingerprint is a JSON array");
    assert_eq!(usable.len(), keys.len(), "fingerprint and key set differ");
    for jwk in &usable {
        assert_ne!(
            jwk.get("kty").and_then(Value::as_str),
            Some("oct"),
            "a symmetric key taken from a JWKS"
        );
    }
    let (_, again) =
        jwks::parse_document(data, Algorithm::RS256, &rules).expect("accepted once, accepted");
    assert_eq!(fingerprint, again, "the fingerprint is not stable");
}

/// Option names whose values are secrets: an error message must never repeat them.
const SECRET_OPTIONS: [&str; 5] = ["api_key", "business_id", "user_id", "secret", "password"];

/// Config loading ([`Config::load`]): the input up to the first NUL byte is the TOML file, the
/// rest `NAME=value` lines of environment (prefixed `KIZEN_GATEWAY_` when not already), set in a
/// jailed, otherwise empty environment.
///
/// Invariants: loading is deterministic; a loaded configuration validates again and shows no
/// literal upstream secret in its Debug form; an error is one line, starts with `config: ` and
/// never repeats the value of a secret option given in the environment.
#[expect(
    clippy::result_large_err,
    reason = "figment's Jail fixes the closure's error type"
)]
pub fn config_load(data: &[u8]) {
    let (toml, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(toml) = std::str::from_utf8(toml) else {
        return;
    };
    let env = String::from_utf8_lossy(env);
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            let name = name.trim().to_ascii_uppercase();
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || value.contains('\0')
            {
                return None;
            }
            let name = match name.starts_with(crate::config::ENV_PREFIX) {
                true => name,
                false => format!("{}{name}", crate::config::ENV_PREFIX),
            };
            Some((name, value.to_owned()))
        })
        .collect();

    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("gateway.toml", toml)?;
        for (name, value) in &vars {
            jail.set_env(name, value);
        }
        let path = Path::new("gateway.toml");
        let first = Config::load(Some(path), &Overrides::default());
        let second = Config::load(Some(path), &Overrides::default());
        assert_eq!(
            first
                .as_ref()
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.0.clone()),
            second
                .as_ref()
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.0.clone()),
            "loading the same input twice differs"
        );
        match first {
            Ok(config) => {
                config.validate().expect("a loaded configuration validates");
                let shown = format!("{config:?}");
                for source in [
                    &config.upstream.api_key,
                    &config.upstream.business_id,
                    &config.upstream.user_id,
                ] {
                    if let SecretSource::Value(secret) = source {
                        let secret = secret.expose_secret();
                        assert!(
                            secret.len() < 4 || !shown.contains(secret),
                            "a literal secret in the configuration's Debug form"
                        );
                    }
                }
            }
            Err(error) => {
                let message = error.to_string();
                assert!(message.starts_with("config: "), "{message}");
                assert!(
                    !message.contains(['\n', '\r']),
                    "a multi-line error: {message:?}"
                );
                for (name, value) in &vars {
                    let option = name.to_ascii_lowercase();
                    let value = value.trim();
                    let secret = SECRET_OPTIONS.iter().any(|o| option.ends_with(o))
                        && value.len() >= 8
                        && !option.contains(&value.to_ascii_lowercase());
                    assert!(
                        !secret || !message.contains(value),
                        "the error repeats the secret of {name}: {message:?}"
                    );
                }
            }
        }
        Ok(())
    });
}

/// The request-head guard ([`crate::http_guard`]) behind hyper's HTTP/1.1 parser, configured as
/// the server's connections are ([`crate::server::connection_builder`] with the default
/// `[server]`): the bytes are one client connection's input. Each request is checked by both
/// guards: the innermost one and the one in front of the CORS layer.
///
/// Invariants: every request a guard accepts is in origin form, within the head limits, with one
/// `Host` (HTTP/1.1), for the presign path or the success path, and either that route's method
/// (`Transfer-Encoding` only as a confirmation's single `chunked`) or, for the preflight guard
/// only, an `OPTIONS` preflight with `Origin` and `Access-Control-Request-Method`; every refusal
/// is a 4xx.
pub fn request_head(data: &[u8]) {
    use http_body_util::Empty;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server: &ServerConfig = &fixture_config().server;
    let builder = crate::server::connection_builder(server);
    runtime().block_on(async {
        let (mut client, server_side) = tokio::io::duplex(64 * 1024);
        let service = service_fn(|request: http::Request<hyper::body::Incoming>| async move {
            let request = request.map(axum::body::Body::new);
            for (guard, preflights) in [
                (http_guard::Guard::new(server), false),
                (http_guard::Guard::for_preflights(server), true),
            ] {
                match http_guard::check(&request, &guard) {
                    Ok(()) => assert_accepted(&request, server, preflights),
                    Err(error) => {
                        let status = axum::response::IntoResponse::into_response(error).status();
                        assert!(status.is_client_error(), "a refusal answered {status}");
                    }
                }
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<bytes::Bytes>::new()))
        });
        let connection =
            builder.serve_connection(hyper_util::rt::TokioIo::new(server_side), service);
        let feed = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answers = Vec::new();
            let _ = client.read_to_end(&mut answers).await;
        };
        let (served, ()) = tokio::join!(connection, feed);
        // Malformed input ends the connection with an error: that is the parser's verdict.
        let _ = served;
    });
}

fn assert_accepted(request: &axum::extract::Request, server: &ServerConfig, preflights: bool) {
    let uri = request.uri();
    assert!(
        uri.scheme().is_none() && uri.authority().is_none() && uri.path() != "*",
        "accepted a target not in origin form"
    );
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    assert!(
        target <= http_guard::MAX_TARGET_BYTES.min(server.max_header_bytes)
            && request.headers().len() <= server.max_headers,
        "accepted a head over the limits"
    );
    let allowed = match uri.path() {
        PRESIGN_PATH => Method::GET,
        SUCCESS_PATH => Method::POST,
        other => panic!("accepted a request for {other:?}"),
    };
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    assert!(
        hosts == 1 || (hosts == 0 && request.version() != http::Version::HTTP_11),
        "accepted {hosts} Host headers"
    );
    if request.method() == Method::OPTIONS && allowed != Method::OPTIONS {
        assert!(
            preflights
                && headers.contains_key(header::ORIGIN)
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD),
            "accepted an OPTIONS that is not a preflight, or past the innermost guard"
        );
        return;
    }
    assert_eq!(request.method(), allowed, "accepted a wrong method");
    let encodings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    assert!(
        encodings.is_empty()
            || (allowed == Method::POST
                && encodings.len() == 1
                && encodings[0]
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked")),
        "accepted a Transfer-Encoding other than a confirmation's chunked"
    );
}

/// A fuzz target's entry point: libFuzzer's bytes in, a panic when an invariant breaks.
pub type Entry = fn(&[u8]);

/// Every target's name (its `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`) and entry
/// point.
pub const TARGETS: [(&str, Entry); 7] = [
    ("bearer_token", bearer_token),
    ("presign_query", presign_query),
    ("confirm_form", confirm_form),
    ("upstream_answer", upstream_answer),
    ("jwks_document", jwks_document),
    ("config_load", config_load),
    ("request_head", request_head),
];
