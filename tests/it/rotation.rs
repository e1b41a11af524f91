//! Rotation without restart: key and secret files re-read when they change, all or nothing; a
//! broken new file keeps the old values and is reported.

use std::{path::Path, time::Duration};

use jsonwebtoken::{Algorithm, EncodingKey};

use crate::support::*;

/// Replaces a file the way a Kubernetes Secret update does: a new file renamed over the old.
fn replace(path: &Path, content: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, content).unwrap();
    std::fs::rename(staged, path).unwrap();
}

/// Polls `condition` until it holds: the reload runs on its own schedule (every 50 ms here).
async fn eventually<F: std::future::Future<Output = bool>>(
    mut condition: impl FnMut() -> F,
) -> bool {
    for _ in 0..300 {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn reload_failures(gw: &TestGateway) -> f64 {
    metric(
        gw,
        r#"kizen_gateway_reloads_total{source="file",result="failure"}"#,
    )
    .await
}

#[tokio::test]
async fn a_rotated_hmac_secret_file_is_picked_up_and_a_broken_one_ignored() {
    let dir = temp_dir("rotation");
    let secret_file = dir.join("jwt-secret");
    let old_secret = "old-secret-0123456789abcdef0123456789abcdef";
    let new_secret = "new-secret-0123456789abcdef0123456789abcdef";
    std::fs::write(&secret_file, format!("{old_secret}\n")).unwrap();
    let gw = TestGateway::builder()
        .without_static_keys()
        .with_admin()
        .with_config(&format!(
            "[reload]\ninterval = \"50ms\"\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret = \"file:{}\"\n",
            secret_file.display()
        ))
        .start()
        .await;
    let old_token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(old_secret.as_bytes()),
        None,
        &claims("alice"),
    );
    let new_token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(new_secret.as_bytes()),
        None,
        &claims("alice"),
    );
    assert_eq!(gw.presign(&old_token).await.status(), 200);
    assert_eq!(gw.presign(&new_token).await.status(), 401);

    replace(&secret_file, format!("{new_secret}\n").as_bytes());
    assert!(
        eventually(|| async { gw.presign(&new_token).await.status() == 200 }).await,
        "new key in force"
    );
    assert_eq!(
        gw.presign(&old_token).await.status(),
        401,
        "old key retired"
    );

    // Too short to be an HMAC secret: refused, the new key stays in force, the failure counted.
    replace(&secret_file, b"short\n");
    assert!(
        eventually(|| async { reload_failures(&gw).await == 1.0 }).await,
        "the failure is reported"
    );
    assert_eq!(
        gw.presign(&new_token).await.status(),
        200,
        "the last good key is kept"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_rotated_public_key_file_is_picked_up_and_a_broken_one_ignored() {
    let dir = temp_dir("rotation");
    let key_file = dir.join("jwt-public.pem");
    std::fs::copy(fixture("rsa-public.pem"), &key_file).unwrap();
    let gw = TestGateway::builder()
        .without_static_keys()
        .with_admin()
        .with_config(&format!(
            "[reload]\ninterval = \"50ms\"\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
            key_file.display()
        ))
        .start()
        .await;
    let first = sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa-private.pem"),
        None,
        &claims("alice"),
    );
    let second = sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa2-private.pem"),
        None,
        &claims("alice"),
    );
    assert_eq!(gw.presign(&first).await.status(), 200);

    replace(
        &key_file,
        &std::fs::read(fixture("rsa2-public.pem")).unwrap(),
    );
    assert!(eventually(|| async { gw.presign(&second).await.status() == 200 }).await);
    assert_eq!(gw.presign(&first).await.status(), 401);

    replace(
        &key_file,
        b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    );
    assert!(eventually(|| async { reload_failures(&gw).await == 1.0 }).await);
    assert_eq!(gw.presign(&second).await.status(), 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_rotated_api_key_file_is_used_for_the_next_upstream_call() {
    let dir = temp_dir("rotation");
    let api_key_file = dir.join("api-key");
    std::fs::write(&api_key_file, API_KEY).unwrap();
    let gw = TestGateway::builder()
        .with_admin()
        .with_config(&format!(
            "[reload]\ninterval = \"50ms\"\n[upstream]\napi_key = \"file:{}\"\n",
            api_key_file.display()
        ))
        .start()
        .await;
    let token = gw.token("alice");
    assert_eq!(gw.presign(&token).await.status(), 200);

    replace(&api_key_file, b"rotated-api-key-7f3e");
    assert!(
        eventually(|| async {
            gw.presign(&token).await;
            gw.forwarded(PRESIGN)
                .last()
                .unwrap()
                .header_values("x-api-key")
                == ["rotated-api-key-7f3e"]
        })
        .await,
        "upstream receives the rotated key"
    );
    // An empty file is not a key: the rotated one stays.
    replace(&api_key_file, b"");
    assert!(eventually(|| async { reload_failures(&gw).await == 1.0 }).await);
    gw.presign(&token).await;
    assert_eq!(
        gw.forwarded(PRESIGN)
            .last()
            .unwrap()
            .header_values("x-api-key"),
        ["rotated-api-key-7f3e"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_cached_token_of_a_rotated_out_key_is_refused() {
    let dir = temp_dir("rotation");
    let key_file = dir.join("jwt-public.pem");
    std::fs::copy(fixture("rsa-public.pem"), &key_file).unwrap();
    let gw = TestGateway::builder()
        .without_static_keys()
        .with_admin()
        .with_config(&format!(
            "[reload]\ninterval = \"50ms\"\n[[auth.keys]]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
            key_file.display()
        ))
        .start()
        .await;
    let old = sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa-private.pem"),
        None,
        &claims("alice"),
    );
    let new = sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa2-private.pem"),
        None,
        &claims("bob"),
    );
    accepted(&gw, &old).await;
    accepted(&gw, &old).await;
    assert_eq!(
        metric(&gw, TOKEN_CACHE_HITS).await,
        1.0,
        "the old token is cached"
    );

    replace(
        &key_file,
        &std::fs::read(fixture("rsa2-public.pem")).unwrap(),
    );
    assert!(eventually(|| async { gw.presign(&new).await.status() == 200 }).await);
    let hits = metric(&gw, TOKEN_CACHE_HITS).await;
    rejected(&gw, &old, "token_bad_signature").await;
    rejected(&gw, &old, "token_bad_signature").await;
    assert_eq!(
        metric(&gw, TOKEN_CACHE_HITS).await,
        hits,
        "the rotated-out key's token is never served from the cache"
    );
    let _ = std::fs::remove_dir_all(dir);
}
