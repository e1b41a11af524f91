//! End-user authentication over real sockets: which tokens the gateway accepts, and that every
//! refusal is a 401 with a `Bearer error="invalid_token"` challenge and a problem body that names
//! the class of failure, never echoes the token, and forwards nothing upstream.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::support::*;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "kizen-gw";

/// Claims valid for an hour, for `sub`.
fn rs256(claims: &Value) -> String {
    signed(Algorithm::RS256, "rsa-private.pem", None, claims)
}

/// The same token with its header replaced (payload and signature untouched).
fn with_header(token: &str, header: &Value) -> String {
    let (_, rest) = token.split_once('.').unwrap();
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
    format!("{header}.{rest}")
}

/// The same token with its payload replaced (header and signature untouched).
fn with_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// A presign with a raw `Authorization` value (or none), the way a client could send it.
async fn presign_with_authorization(gw: &TestGateway, value: Option<&str>) -> reqwest::Response {
    let mut request = gw
        .client
        .get(format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.url));
    if let Some(value) = value {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_configured_algorithm_is_accepted_and_forwarded() {
    let gw = TestGateway::start().await;
    let cases = [
        (Algorithm::HS256, None, None),
        (Algorithm::RS256, Some("rsa-private.pem"), None),
        (Algorithm::PS256, Some("rsa2-private.pem"), Some("ps-key")),
        (Algorithm::ES256, Some("ec256-private.pem"), None),
        (Algorithm::ES384, Some("ec384-private.pem"), None),
        (Algorithm::EdDSA, Some("ed25519-private.pem"), None),
    ];
    for (i, (algorithm, file, kid)) in cases.into_iter().enumerate() {
        let claims = claims(&format!("user-{algorithm:?}"));
        let token = match file {
            None => hs256(&claims),
            Some(file) => signed(algorithm, file, kid, &claims),
        };
        let response = gw.presign(&token).await;
        assert_eq!(response.status(), 200, "{algorithm:?} token refused");
        let body: Value = response.json().await.unwrap();
        assert!(body["s3object_id"].is_string(), "{algorithm:?}: {body}");

        let forwarded = gw.forwarded(PRESIGN);
        assert_eq!(
            forwarded.len(),
            i + 1,
            "{algorithm:?}: one presign forwarded"
        );
        let request = &forwarded[i];
        assert_eq!(request.header_values("x-user-id"), [KIZEN_USER_ID]);
        assert!(
            request.header_values("authorization").is_empty(),
            "the end user's token is not forwarded"
        );
        for (name, value) in &request.headers {
            assert!(!value.contains(&token), "header {name} carries the token");
        }
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = presign_with_authorization(&gw, Some(&format!("{scheme} {token}"))).await;
        assert_eq!(response.status(), 200, "scheme {scheme:?}");
    }
    assert_eq!(gw.forwarded(PRESIGN).len(), 3);
}

#[tokio::test]
async fn missing_authorization_header_is_token_missing() {
    let gw = TestGateway::start().await;
    let response = presign_with_authorization(&gw, None).await;
    assert_unauthorized(response, &["token_missing"], "").await;

    let response = gw
        .client
        .post(format!("{}{SUCCESS}", gw.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("uuid=00000000-0000-4000-8000-000000000000&key=k&name=n&etag=e")
        .send()
        .await
        .unwrap();
    assert_unauthorized(response, &["token_missing"], "").await;

    assert!(gw.forwarded(PRESIGN).is_empty());
    assert!(gw.forwarded(SUCCESS).is_empty());
}

#[tokio::test]
async fn non_bearer_schemes_are_rejected() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    // A valid token under another scheme is still no bearer token.
    for value in [
        "Basic YWxpY2U6c2VjcmV0".to_owned(),
        format!("Token {token}"),
        format!("JWT {token}"),
        format!("Bearer: {token}"),
    ] {
        let response = presign_with_authorization(&gw, Some(&value)).await;
        assert_unauthorized(response, &["token_missing"], &token).await;
    }
    // No scheme at all: not a credential the gateway can read.
    for value in [token.clone(), format!("Bearer{token}")] {
        let response = presign_with_authorization(&gw, Some(&value)).await;
        assert_unauthorized(response, &["token_malformed"], &token).await;
    }
    assert!(gw.forwarded(PRESIGN).is_empty());
}

#[tokio::test]
async fn token_in_query_string_or_cookie_is_ignored() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");

    for name in ["access_token", "token", "jwt", "authorization"] {
        let response = gw
            .client
            .get(format!(
                "{}{PRESIGN}?{DEFAULT_QUERY}&{name}={token}",
                gw.url
            ))
            .send()
            .await
            .unwrap();
        assert_unauthorized(response, &["token_missing"], &token).await;
    }

    let response = gw
        .client
        .get(format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.url))
        .header(
            "cookie",
            format!(
                "access_token={token}; token={token}; jwt={token}; Authorization=Bearer%20{token}"
            ),
        )
        .send()
        .await
        .unwrap();
    assert_unauthorized(response, &["token_missing"], &token).await;

    assert!(gw.forwarded(PRESIGN).is_empty());
}

#[tokio::test]
async fn two_authorization_headers_are_rejected() {
    let gw = TestGateway::start().await;
    let alice = gw.token("alice");
    let bob = gw.token("bob");

    for (first, second) in [
        (format!("Bearer {alice}"), format!("Bearer {bob}")),
        (format!("Bearer {alice}"), format!("Bearer {alice}")),
        (
            format!("Bearer {alice}"),
            "Basic YWxpY2U6c2VjcmV0".to_owned(),
        ),
    ] {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append("authorization", first.parse().unwrap());
        headers.append("authorization", second.parse().unwrap());
        let response = gw
            .client
            .get(format!("{}{PRESIGN}?{DEFAULT_QUERY}", gw.url))
            .headers(headers)
            .send()
            .await
            .unwrap();
        let body = assert_unauthorized(response, &["token_malformed"], &alice).await;
        assert!(!body.to_string().contains(&bob), "the body echoes a token");
    }
    assert!(gw.forwarded(PRESIGN).is_empty());

    // Either token alone is fine: the refusal is about the duplicate.
    accepted(&gw, &alice).await;
    accepted(&gw, &bob).await;
}

#[tokio::test]
async fn alg_none_is_rejected_in_every_spelling() {
    let gw = TestGateway::start().await;
    for spelling in ["none", "None", "NONE", "nOnE"] {
        let header = json!({ "alg": spelling, "typ": "JWT" });
        let unsigned = raw_token(&header, &claims("mallory"), None);
        assert!(unsigned.ends_with('.'), "an empty signature");
        rejected_any(&gw, &unsigned, &["token_unsupported", "token_malformed"]).await;

        let with_signature = raw_token(&header, &claims("mallory"), Some(HS256_SECRET.as_bytes()));
        rejected_any(
            &gw,
            &with_signature,
            &["token_unsupported", "token_malformed"],
        )
        .await;
    }
    assert!(gw.forwarded(PRESIGN).is_empty());

    // The same claims under a real algorithm pass: the refusal is the `alg`.
    let header = json!({ "alg": "HS256", "typ": "JWT" });
    accepted(
        &gw,
        &raw_token(&header, &claims("mallory"), Some(HS256_SECRET.as_bytes())),
    )
    .await;
}

#[tokio::test]
async fn hmac_token_keyed_with_an_rsa_public_key_is_rejected() {
    let rsa_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let rsa2_pem = std::fs::read(fixture("rsa2-public.pem")).unwrap();
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa_pem),
        None,
        &claims("mallory"),
    );
    let forged_with_kid = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa2_pem),
        Some("ps-key"),
        &claims("mallory"),
    );

    // The harness gateway trusts an HS256 secret too: only that secret verifies HS256.
    let gw = TestGateway::start().await;
    rejected(&gw, &forged, "token_bad_signature").await;
    rejected(&gw, &forged_with_kid, "token_bad_signature").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    // A gateway that trusts only the RSA public key has no HS256 key at all.
    let rsa_only = TestGateway::builder()
        .without_static_keys()
        .with_config(&format!(
            "[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
            fixture("rsa-public.pem").display()
        ))
        .start()
        .await;
    rejected(&rsa_only, &forged, "token_unknown_key").await;
    assert!(rsa_only.forwarded(PRESIGN).is_empty());
    // The key itself works for RS256.
    accepted(&rsa_only, &rs256(&claims("alice"))).await;
}

#[tokio::test]
async fn rs256_signature_relabelled_as_another_rsa_algorithm_is_rejected() {
    let gw = TestGateway::start().await;
    let original = rs256(&claims("alice"));

    let as_rs384 = with_header(&original, &json!({ "alg": "RS384", "typ": "JWT" }));
    rejected(&gw, &as_rs384, "token_unknown_key").await;
    let as_ps256 = with_header(&original, &json!({ "alg": "PS256", "typ": "JWT" }));
    rejected(&gw, &as_ps256, "token_unknown_key").await;
    let as_ps256_with_kid = with_header(
        &original,
        &json!({ "alg": "PS256", "typ": "JWT", "kid": "ps-key" }),
    );
    rejected(&gw, &as_ps256_with_kid, "token_bad_signature").await;

    // Genuinely signed with the trusted RSA key, but with algorithms the key is not pinned to.
    let rs384 = signed(Algorithm::RS384, "rsa-private.pem", None, &claims("alice"));
    rejected(&gw, &rs384, "token_unknown_key").await;
    let ps256 = signed(Algorithm::PS256, "rsa-private.pem", None, &claims("alice"));
    rejected(&gw, &ps256, "token_unknown_key").await;
    let ps256_kid = signed(
        Algorithm::PS256,
        "rsa-private.pem",
        Some("ps-key"),
        &claims("alice"),
    );
    rejected(&gw, &ps256_kid, "token_bad_signature").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    accepted(&gw, &original).await;
}

#[tokio::test]
async fn ps256_key_serves_only_its_kid() {
    let gw = TestGateway::start().await;
    let wrong_kid = signed(
        Algorithm::PS256,
        "rsa2-private.pem",
        Some("other-key"),
        &claims("alice"),
    );
    rejected(&gw, &wrong_kid, "token_unknown_key").await;
    let no_kid = signed(Algorithm::PS256, "rsa2-private.pem", None, &claims("alice"));
    rejected(&gw, &no_kid, "token_unknown_key").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    let right_kid = signed(
        Algorithm::PS256,
        "rsa2-private.pem",
        Some("ps-key"),
        &claims("alice"),
    );
    accepted(&gw, &right_kid).await;
}

#[tokio::test]
async fn expiry_is_enforced_with_the_leeway() {
    let gw = TestGateway::start().await;
    let expired = hs256(&json!({ "sub": "alice", "iat": now() - 7200, "exp": now() - 120 }));
    rejected(&gw, &expired, "token_expired").await;
    let long_expired = hs256(&json!({ "sub": "alice", "exp": now() - 86_400 }));
    rejected(&gw, &long_expired, "token_expired").await;
    let expired_rs256 = rs256(&json!({ "sub": "alice", "exp": now() - 120 }));
    rejected(&gw, &expired_rs256, "token_expired").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    // Within the default 30 s leeway.
    let just_expired = hs256(&json!({ "sub": "alice", "iat": now() - 3600, "exp": now() - 10 }));
    accepted(&gw, &just_expired).await;
}

#[tokio::test]
async fn missing_or_non_numeric_exp_is_token_missing_claim() {
    let gw = TestGateway::start().await;
    rejected(
        &gw,
        &hs256(&json!({ "sub": "alice", "iat": now() })),
        "token_missing_claim",
    )
    .await;
    rejected(
        &gw,
        &rs256(&json!({ "sub": "alice", "iat": now() })),
        "token_missing_claim",
    )
    .await;
    rejected(
        &gw,
        &hs256(&json!({ "sub": "alice", "exp": "tomorrow" })),
        "token_missing_claim",
    )
    .await;
    assert!(gw.forwarded(PRESIGN).is_empty());
}

#[tokio::test]
async fn nbf_in_the_future_is_not_yet_valid() {
    let gw = TestGateway::start().await;
    let future = hs256(&json!({ "sub": "alice", "nbf": now() + 3600, "exp": now() + 7200 }));
    rejected(&gw, &future, "token_not_yet_valid").await;
    let future_es256 = signed(
        Algorithm::ES256,
        "ec256-private.pem",
        None,
        &json!({ "sub": "alice", "nbf": now() + 120, "exp": now() + 7200 }),
    );
    rejected(&gw, &future_es256, "token_not_yet_valid").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    // Within the leeway.
    let almost = hs256(&json!({ "sub": "alice", "nbf": now() + 10, "exp": now() + 3600 }));
    accepted(&gw, &almost).await;
}

#[tokio::test]
async fn iat_in_the_future_beyond_the_leeway_is_not_yet_valid() {
    let gw = TestGateway::start().await;
    let future = hs256(&json!({ "sub": "alice", "iat": now() + 3600, "exp": now() + 7200 }));
    rejected(&gw, &future, "token_not_yet_valid").await;
    let future = hs256(&json!({ "sub": "alice", "iat": now() + 120, "exp": now() + 7200 }));
    rejected(&gw, &future, "token_not_yet_valid").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    // Within the leeway.
    let skewed = hs256(&json!({ "sub": "alice", "iat": now() + 10, "exp": now() + 3600 }));
    accepted(&gw, &skewed).await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let gw = TestGateway::builder()
        .with_config(&format!(
            "[auth]\nissuers = [\"{ISSUER}\"]\naudiences = [\"{AUDIENCE}\"]\n"
        ))
        .start()
        .await;
    let token = |claims: Value| {
        let mut all = json!({ "sub": "alice", "iat": now(), "exp": now() + 3600 });
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        hs256(&all)
    };

    let cases = [
        (
            json!({ "iss": "https://evil.example", "aud": AUDIENCE }),
            "token_wrong_issuer",
        ),
        (
            json!({ "iss": "https://idp.example/", "aud": AUDIENCE }),
            "token_wrong_issuer",
        ),
        (json!({ "aud": AUDIENCE }), "token_wrong_issuer"),
        (
            json!({ "iss": [ISSUER], "aud": AUDIENCE }),
            "token_wrong_issuer",
        ),
        (
            json!({ "iss": ["https://evil.example", ISSUER], "aud": AUDIENCE }),
            "token_wrong_issuer",
        ),
        (
            json!({ "iss": ISSUER, "aud": "other-service" }),
            "token_wrong_audience",
        ),
        (
            json!({ "iss": ISSUER, "aud": ["other-service", "another"] }),
            "token_wrong_audience",
        ),
        (json!({ "iss": ISSUER }), "token_wrong_audience"),
    ];
    for (claims, code) in cases {
        rejected(&gw, &token(claims), code).await;
    }
    // Signed with an asymmetric key the same rules hold.
    let rs = rs256(&json!({
        "sub": "alice", "exp": now() + 3600, "iss": "https://evil.example", "aud": AUDIENCE
    }));
    rejected(&gw, &rs, "token_wrong_issuer").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    accepted(&gw, &token(json!({ "iss": ISSUER, "aud": AUDIENCE }))).await;
    accepted(
        &gw,
        &token(json!({ "iss": ISSUER, "aud": ["other-service", AUDIENCE] })),
    )
    .await;
    accepted(
        &gw,
        &rs256(&json!({ "sub": "bob", "exp": now() + 3600, "iss": ISSUER, "aud": AUDIENCE })),
    )
    .await;
}

#[tokio::test]
async fn without_configured_issuers_iss_and_aud_are_not_required() {
    let gw = TestGateway::start().await;
    accepted(
        &gw,
        &hs256(&json!({ "sub": "alice", "exp": now() + 3600, "iss": "anyone", "aud": "any" })),
    )
    .await;
}

#[tokio::test]
async fn crit_header_is_unsupported() {
    let gw = TestGateway::start().await;
    let secret = Some(HS256_SECRET.as_bytes());
    for crit in [json!(["exp"]), json!(["b64"]), json!([])] {
        let token = raw_token(
            &json!({ "alg": "HS256", "typ": "JWT", "crit": crit }),
            &claims("alice"),
            secret,
        );
        rejected(&gw, &token, "token_unsupported").await;
    }
    assert!(gw.forwarded(PRESIGN).is_empty());

    // The same token without `crit` verifies: the refusal is the header.
    let token = raw_token(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims("alice"),
        secret,
    );
    accepted(&gw, &token).await;
}

#[tokio::test]
async fn oversized_token_is_malformed() {
    let gw = TestGateway::start().await;
    let big = hs256(&json!({
        "sub": "alice", "exp": now() + 3600, "pad": "x".repeat(9000)
    }));
    assert!(big.len() > 8192);
    rejected(&gw, &big, "token_malformed").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    // A large token under the limit is fine: the limit is the size.
    let large = hs256(&json!({
        "sub": "alice", "exp": now() + 3600, "pad": "x".repeat(5000)
    }));
    assert!(large.len() < 8192);
    accepted(&gw, &large).await;
}

#[tokio::test]
async fn garbage_tokens_are_malformed() {
    let gw = TestGateway::start().await;
    let valid = gw.token("alice");
    let mut parts = valid.split('.');
    let (header, payload, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let garbage = [
        "abc".to_owned(),
        "a.b".to_owned(),
        "a.b.c".to_owned(),
        "a.b.c.d".to_owned(),
        "..".to_owned(),
        format!("{valid}.{signature}"),
        format!("{header}.{payload}"),
        format!("{header}..{signature}"),
        format!("{valid}="),
        format!("{header}.{payload}.{signature}$"),
        format!("{header}+.{payload}.{signature}"),
        format!("{header}.{payload}/.{signature}"),
        format!("{header}.{payload}.{signature}%3D"),
    ];
    for token in &garbage {
        rejected(&gw, token, "token_malformed").await;
    }
    assert!(gw.forwarded(PRESIGN).is_empty());
    accepted(&gw, &valid).await;
}

#[tokio::test]
async fn tampered_tokens_are_bad_signature() {
    let gw = TestGateway::start().await;
    let alice = claims("alice");
    let mallory = claims("mallory");

    let hs = hs256(&alice);
    rejected(&gw, &with_payload(&hs, &mallory), "token_bad_signature").await;
    let rs = rs256(&alice);
    rejected(&gw, &with_payload(&rs, &mallory), "token_bad_signature").await;
    let es = signed(Algorithm::ES256, "ec256-private.pem", None, &alice);
    rejected(&gw, &with_payload(&es, &mallory), "token_bad_signature").await;
    let ed = signed(Algorithm::EdDSA, "ed25519-private.pem", None, &alice);
    rejected(&gw, &with_payload(&ed, &mallory), "token_bad_signature").await;

    // Alice's signature on Mallory's header and claims.
    let mallory_token = hs256(&mallory);
    let hs_signature = hs.rsplit('.').next().unwrap();
    let (mallory_message, _) = mallory_token.rsplit_once('.').unwrap();
    rejected(
        &gw,
        &format!("{mallory_message}.{hs_signature}"),
        "token_bad_signature",
    )
    .await;

    // Signed with a key the gateway does not trust (same algorithm, no kid).
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes-long"),
        None,
        &alice,
    );
    rejected(&gw, &other_secret, "token_bad_signature").await;
    let other_rsa = signed(Algorithm::RS256, "rsa2-private.pem", None, &alice);
    rejected(&gw, &other_rsa, "token_bad_signature").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    accepted(&gw, &hs).await;
    accepted(&gw, &rs).await;
}

#[tokio::test]
async fn identity_claim_must_be_a_non_empty_string() {
    let gw = TestGateway::start().await;
    let with_sub = |sub: Option<Value>| {
        let mut claims = json!({ "iat": now(), "exp": now() + 3600 });
        if let Some(sub) = sub {
            claims["sub"] = sub;
        }
        claims
    };
    for sub in [
        None,
        Some(json!("")),
        Some(json!(42)),
        Some(json!(null)),
        Some(json!("x".repeat(300))),
    ] {
        let claims = with_sub(sub);
        rejected(&gw, &hs256(&claims), "token_missing_claim").await;
        rejected(&gw, &rs256(&claims), "token_missing_claim").await;
    }
    // jsonwebtoken fails to parse the whole claims set when `sub` is an array or an object (its
    // `sub` is read as a string), so these are refused a step earlier, as malformed.
    for sub in [json!(["alice"]), json!({ "id": "alice" })] {
        let claims = with_sub(Some(sub));
        rejected_any(
            &gw,
            &hs256(&claims),
            &["token_missing_claim", "token_malformed"],
        )
        .await;
    }
    assert!(gw.forwarded(PRESIGN).is_empty());

    // The longest accepted identity is 256 bytes.
    accepted(&gw, &hs256(&with_sub(Some(json!("x".repeat(256)))))).await;
}

#[tokio::test]
async fn user_claim_names_the_identity() {
    let gw = TestGateway::builder()
        .with_config("[auth]\nuser_claim = \"email\"\n")
        .start()
        .await;
    let with_email = |sub: &str, email: &str| {
        hs256(&json!({ "sub": sub, "email": email, "iat": now(), "exp": now() + 3600 }))
    };

    // Without the configured claim a token names nobody, `sub` or not.
    rejected(&gw, &gw.token("alice"), "token_missing_claim").await;
    rejected(
        &gw,
        &hs256(&json!({ "sub": "alice", "email": "", "exp": now() + 3600 })),
        "token_missing_claim",
    )
    .await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    // Two subjects sharing one email are one user: an upload issued to one is confirmed by the
    // other, and not by a third with another email.
    let first = with_email("subject-1", "shared@example.com");
    let second = with_email("subject-2", "shared@example.com");
    let stranger = with_email("subject-1", "other@example.com");
    let issued = gw.issue(&first).await;

    let response = gw.confirm(&stranger, &issued).await;
    assert_eq!(response.status(), 404, "another email is another user");
    assert!(gw.forwarded(SUCCESS).is_empty());

    let response = gw.confirm(&second, &issued).await;
    assert_eq!(response.status(), 200, "the same email is the same user");
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);

    // A token with only the email (no `sub`) is fine.
    accepted(
        &gw,
        &hs256(&json!({ "email": "solo@example.com", "exp": now() + 3600 })),
    )
    .await;
}

#[tokio::test]
async fn upstream_user_id_comes_from_the_configured_claim() {
    let gw = TestGateway::builder()
        .with_config("[upstream]\nuser_id_claim = \"kizen_uid\"\n")
        .start()
        .await;
    let token = |sub: &str, uid: Value| {
        hs256(&json!({ "sub": sub, "kizen_uid": uid, "iat": now(), "exp": now() + 3600 }))
    };

    accepted(&gw, &token("alice", json!("kz-alice-1001"))).await;
    accepted(&gw, &token("bob", json!("kz-bob-2002"))).await;
    let forwarded = gw.forwarded(PRESIGN);
    assert_eq!(forwarded[0].header_values("x-user-id"), ["kz-alice-1001"]);
    assert_eq!(forwarded[1].header_values("x-user-id"), ["kz-bob-2002"]);
    for request in &forwarded {
        assert!(
            !request.header_values("x-user-id").contains(&KIZEN_USER_ID),
            "the configured constant is not used"
        );
    }

    // No usable claim: no upstream identity, so no request at all.
    let without = hs256(&json!({ "sub": "carol", "iat": now(), "exp": now() + 3600 }));
    rejected(&gw, &without, "token_missing_claim").await;
    for uid in [
        json!(""),
        json!(1234),
        json!("has space"),
        json!("line\nbreak"),
    ] {
        rejected(&gw, &token("carol", uid), "token_missing_claim").await;
    }
    assert_eq!(gw.forwarded(PRESIGN).len(), 2);
}

const IDP_A: &str = "https://idp-a.example";
const IDP_B: &str = "https://idp-b.example";

/// Claims of `sub` at `iss`, for this gateway's audience, valid for an hour.
fn claims_at(iss: &str, sub: &str) -> Value {
    json!({ "sub": sub, "iss": iss, "aud": AUDIENCE, "iat": now(), "exp": now() + 3600 })
}

/// Tokens of issuer A are signed with the RSA key, those of issuer B with the P-256 key.
fn signed_by_a(claims: &Value) -> String {
    rs256(claims)
}

fn signed_by_b(claims: &Value) -> String {
    signed(Algorithm::ES256, "ec256-private.pem", None, claims)
}

/// A gateway that trusts two issuers, each with its own key, and checks the audience.
async fn two_issuer_gateway() -> TestGateway {
    two_issuer_builder().start().await
}

fn two_issuer_builder() -> TestGatewayBuilder {
    TestGateway::builder()
        .without_static_keys()
        .with_config(&format!(
            r#"
[auth]
issuers = ["{IDP_A}", "{IDP_B}"]
audiences = ["{AUDIENCE}"]
allow_any_audience = false

[[auth.keys]]
algorithm = "RS256"
public_key_file = "{rsa}"
issuer = "{IDP_A}"

[[auth.keys]]
algorithm = "ES256"
public_key_file = "{ec}"
issuer = "{IDP_B}"
"#,
            rsa = fixture("rsa-public.pem").display(),
            ec = fixture("ec256-public.pem").display(),
        ))
}

#[tokio::test]
async fn a_key_tied_to_an_issuer_verifies_only_that_issuers_tokens() {
    let gw = two_issuer_gateway().await;

    // Issuer A's key signing for B's users, and the other way round: both names are accepted
    // issuers, but not for the key that verified the token.
    rejected(
        &gw,
        &signed_by_a(&claims_at(IDP_B, "alice")),
        "token_wrong_issuer",
    )
    .await;
    rejected(
        &gw,
        &signed_by_b(&claims_at(IDP_A, "alice")),
        "token_wrong_issuer",
    )
    .await;
    // No `iss`, or an array holding the key's issuer: no single issuer named.
    let mut without_iss = claims_at(IDP_A, "alice");
    without_iss.as_object_mut().unwrap().remove("iss");
    rejected(&gw, &signed_by_a(&without_iss), "token_wrong_issuer").await;
    let mut array_iss = claims_at(IDP_A, "alice");
    array_iss["iss"] = json!([IDP_A]);
    rejected(&gw, &signed_by_a(&array_iss), "token_wrong_issuer").await;
    // The audience is checked with each key as well.
    let mut other_app = claims_at(IDP_B, "alice");
    other_app["aud"] = json!("another-application");
    rejected(&gw, &signed_by_b(&other_app), "token_wrong_audience").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    accepted(&gw, &signed_by_a(&claims_at(IDP_A, "alice"))).await;
    accepted(&gw, &signed_by_b(&claims_at(IDP_B, "alice"))).await;
}

#[tokio::test]
async fn a_key_issuer_binds_without_an_issuer_list() {
    // One key tied to an issuer and no auth.issuers: that key still takes that issuer only.
    let gw = TestGateway::builder()
        .without_static_keys()
        .with_config(&format!(
            "[auth]\naudiences = [\"{AUDIENCE}\"]\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\nissuer = \"{IDP_A}\"\n",
            fixture("rsa-public.pem").display()
        ))
        .start()
        .await;
    rejected(
        &gw,
        &rs256(&claims_at(IDP_B, "alice")),
        "token_wrong_issuer",
    )
    .await;
    let mut without_iss = claims_at(IDP_A, "alice");
    without_iss.as_object_mut().unwrap().remove("iss");
    rejected(&gw, &rs256(&without_iss), "token_wrong_issuer").await;
    assert!(gw.forwarded(PRESIGN).is_empty());

    // One issuer: the user is the bare `sub`, so an upload issued by one token is confirmed by
    // another token of the same subject.
    let issued = gw.issue(&rs256(&claims_at(IDP_A, "alice"))).await;
    let response = gw
        .confirm(&rs256(&claims_at(IDP_A, "alice")), &issued)
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_same_subject_at_two_issuers_is_two_users() {
    let gw = two_issuer_gateway().await;
    let alice_at_a = signed_by_a(&claims_at(IDP_A, "alice"));
    let alice_at_b = signed_by_b(&claims_at(IDP_B, "alice"));

    // Alice at B cannot confirm Alice at A's upload: for her it does not exist.
    let issued = gw.issue(&alice_at_a).await;
    let response = gw.confirm(&alice_at_b, &issued).await;
    assert_problem(response, 404, "upload_not_found").await;
    assert!(gw.forwarded(SUCCESS).is_empty());

    // A's other token for the same subject is the same user.
    let again_at_a = signed_by_a(&json!({
        "sub": "alice", "iss": IDP_A, "aud": AUDIENCE, "iat": now() - 60, "exp": now() + 600
    }));
    let response = gw.confirm(&again_at_a, &issued).await;
    assert_eq!(response.status(), 200, "the same issuer and subject");
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);

    // And the other way round.
    let issued = gw.issue(&alice_at_b).await;
    let response = gw.confirm(&alice_at_a, &issued).await;
    assert_problem(response, 404, "upload_not_found").await;
    let response = gw.confirm(&alice_at_b, &issued).await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
}

#[tokio::test]
async fn two_issuers_have_separate_rate_limits_for_one_subject() {
    let gw = TestGateway::builder()
        .with_rate_limit(1, "1h")
        .start()
        .await;
    // Harness gateway, one issuer or none: `sub` alone is the user, one budget.
    accepted(&gw, &rs256(&claims("alice"))).await;
    let response = gw.presign(&gw.token("alice")).await;
    assert_eq!(
        response.status(),
        429,
        "one user across keys without issuers"
    );
    drop(gw);

    let gw = two_issuer_builder().with_rate_limit(1, "1h").start().await;
    accepted(&gw, &signed_by_a(&claims_at(IDP_A, "alice"))).await;
    accepted(&gw, &signed_by_b(&claims_at(IDP_B, "alice"))).await;
    let response = gw.presign(&signed_by_a(&claims_at(IDP_A, "alice"))).await;
    assert_eq!(response.status(), 429, "Alice at A spent her budget");
}

// The verified-token cache: a token that verified is served from memory on its next requests,
// never a refusal, never a token that differs in a byte. (Expiry, `nbf` and the bound while
// cached are unit tests in src/auth, where the verifier's clock can be moved.)

async fn cache_counts(gw: &TestGateway) -> (f64, f64) {
    (
        metric(gw, TOKEN_CACHE_HITS).await,
        metric(gw, TOKEN_CACHE_MISSES).await,
    )
}

#[tokio::test]
async fn a_verified_token_is_served_from_the_cache_and_counted() {
    let gw = TestGateway::builder().with_admin().start().await;
    assert_eq!(cache_counts(&gw).await, (0.0, 0.0));
    let token = rs256(&claims("alice"));
    for _ in 0..3 {
        accepted(&gw, &token).await;
    }
    assert_eq!(cache_counts(&gw).await, (2.0, 1.0), "one miss, then hits");

    // Refusals are never cached: each of these is verified (and refused) every time.
    let expired = rs256(&json!({ "sub": "alice", "exp": now() - 120 }));
    let not_yet = rs256(&json!({ "sub": "alice", "nbf": now() + 120, "exp": now() + 3600 }));
    let forged = with_payload(&token, &claims("mallory"));
    for _ in 0..2 {
        rejected(&gw, &expired, "token_expired").await;
        rejected(&gw, &not_yet, "token_not_yet_valid").await;
        rejected(&gw, &forged, "token_bad_signature").await;
    }
    assert_eq!(cache_counts(&gw).await, (2.0, 7.0));
    accepted(&gw, &token).await;
    assert_eq!(cache_counts(&gw).await, (3.0, 7.0));
}

#[tokio::test]
async fn with_the_token_cache_off_nothing_is_cached() {
    let gw = TestGateway::builder()
        .with_admin()
        .with_config("[auth.token_cache]\nenabled = false\n")
        .start()
        .await;
    let token = rs256(&claims("alice"));
    for _ in 0..3 {
        accepted(&gw, &token).await;
    }
    rejected(
        &gw,
        &with_payload(&token, &claims("mallory")),
        "token_bad_signature",
    )
    .await;
    assert_eq!(cache_counts(&gw).await, (0.0, 0.0));
}

#[tokio::test]
async fn a_token_that_differs_in_one_byte_is_not_a_cache_hit() {
    let gw = TestGateway::builder().with_admin().start().await;
    let token = rs256(&claims("alice"));
    accepted(&gw, &token).await;
    accepted(&gw, &token).await;
    assert_eq!(cache_counts(&gw).await, (1.0, 1.0));

    // The 256-byte signature ends in a character with 4 unused bits: another character with other
    // unused bits spells the same signature bytes. Not the cached token.
    let last = token.chars().last().unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let position = alphabet.iter().position(|&c| c == last as u8).unwrap();
    let respelled = format!(
        "{}{}",
        &token[..token.len() - 1],
        alphabet[position ^ 1] as char
    );
    assert_ne!(respelled, token);
    rejected_any(&gw, &respelled, &["token_malformed", "token_bad_signature"]).await;
    // The same claims, encoded otherwise (members in another order), under the same signature.
    let (_, rest) = token.split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let decoded: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let reordered = format!(
        "{{\"sub\":{},\"exp\":{},\"iat\":{}}}",
        decoded["sub"], decoded["exp"], decoded["iat"]
    );
    let reencoded = token.replace(payload, &URL_SAFE_NO_PAD.encode(reordered));
    assert_ne!(reencoded, token);
    rejected(&gw, &reencoded, "token_bad_signature").await;
    // Padding is not base64url as JWS spells it: refused before the cache is asked.
    rejected(&gw, &format!("{token}="), "token_malformed").await;
    assert_eq!(
        cache_counts(&gw).await,
        (1.0, 3.0),
        "no hit for a near miss"
    );

    accepted(&gw, &token).await;
    assert_eq!(cache_counts(&gw).await, (2.0, 3.0));
}
