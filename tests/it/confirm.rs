//! The confirmation rules: only the user an upload was issued to, only with its exact key, only
//! within its window, exactly once.

use std::time::Duration;

use kizen_gateway::{
    clock::Clock,
    standin::{Endpoint, Scripted},
};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn presign_then_confirm_forwards_once_with_server_held_business_id() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;

    let response = gw
        .confirm_form(
            &token,
            &[
                ("uuid", &issued.s3object_id),
                ("key", &issued.key),
                ("name", "photo.png"),
                ("etag", "\"abc\""),
                ("business_id", "someone-elses-business"),
                ("is_public", "true"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], issued.s3object_id.as_str());

    let forwarded = gw.forwarded(SUCCESS);
    assert_eq!(forwarded.len(), 1);
    let form = forwarded[0].form();
    assert_eq!(form["business_id"], BUSINESS_ID);
    assert_eq!(form["uuid"], issued.s3object_id);
    assert_eq!(form["key"], issued.key);
    assert_eq!(form["name"], "photo.png");
    assert_eq!(form["etag"], "\"abc\"");
    // field_value is not a public source: the client's is_public=true is overridden.
    assert_eq!(form["is_public"], "false");
    assert_eq!(
        forwarded[0].query_pairs(),
        vec![("source".to_owned(), "field_value".to_owned())]
    );
}

#[tokio::test]
async fn is_public_is_kept_only_for_configured_public_sources() {
    let gw = TestGateway::builder()
        .with_config("[confirm]\npublic_sources = [\"public_image\"]\n")
        .start()
        .await;
    let token = gw.token("alice");
    let response = gw
        .presign_query(
            &token,
            "contenttype=image%2Fpng&filename=logo.png&source=public_image",
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let uuid = body["s3object_id"].as_str().unwrap();
    let key = body["fields"]["key"].as_str().unwrap();
    let response = gw
        .confirm_form(
            &token,
            &[
                ("uuid", uuid),
                ("key", key),
                ("name", "logo.png"),
                ("etag", "e"),
                ("is_public", "true"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS)[0].form()["is_public"], "true");
    assert_eq!(gw.forwarded(SUCCESS)[0].query_pairs()[0].1, "public_image");
}

#[tokio::test]
async fn a_repeat_of_a_successful_confirmation_is_answered_from_memory() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    let first = gw.confirm(&token, &issued).await;
    assert_eq!(first.status(), 200);
    let first_body = first.bytes().await.unwrap();

    let repeat = gw.confirm(&token, &issued).await;
    assert_eq!(repeat.status(), 200);
    assert_eq!(repeat.headers()["idempotent-replayed"], "true");
    assert_eq!(repeat.headers()["content-type"], "application/json");
    assert_eq!(repeat.headers()["cache-control"], "no-store");
    assert_eq!(repeat.bytes().await.unwrap(), first_body);
    assert_eq!(
        gw.forwarded(SUCCESS).len(),
        1,
        "the repeat never reaches upstream"
    );

    // Anything else on a consumed upload is a conflict.
    let other_key = gw
        .confirm_form(
            &token,
            &[
                ("uuid", &issued.s3object_id),
                ("key", "other"),
                ("name", "a"),
                ("etag", "e"),
            ],
        )
        .await;
    assert_problem(other_key, 409, "already_confirmed").await;
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
}

#[tokio::test]
async fn another_users_upload_looks_exactly_like_an_unknown_one() {
    let gw = TestGateway::start().await;
    let alice = gw.token("alice");
    let bob = gw.token("bob");
    let issued = gw.issue(&alice).await;

    let cross_user = assert_problem(gw.confirm(&bob, &issued).await, 404, "upload_not_found").await;
    let unknown = Issued {
        s3object_id: uuid::Uuid::new_v4().to_string(),
        ..issued.clone()
    };
    let unknown = assert_problem(gw.confirm(&bob, &unknown).await, 404, "upload_not_found").await;
    assert_eq!(cross_user, unknown, "no oracle: the same answer");
    assert!(gw.forwarded(SUCCESS).is_empty());

    // Bob's attempt did not spend alice's upload.
    assert_eq!(gw.confirm(&alice, &issued).await.status(), 200);
}

#[tokio::test]
async fn the_key_must_be_exactly_the_issued_one() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    for wrong in [
        format!("{}x", issued.key),
        issued.key.to_uppercase(),
        format!("{} ", issued.key),
        "k".into(),
    ] {
        let response = gw
            .confirm_form(
                &token,
                &[
                    ("uuid", &issued.s3object_id),
                    ("key", &wrong),
                    ("name", "a"),
                    ("etag", "e"),
                ],
            )
            .await;
        assert_problem(response, 403, "key_mismatch").await;
    }
    assert!(gw.forwarded(SUCCESS).is_empty());
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
}

#[tokio::test]
async fn invalid_confirmations_list_every_field_and_change_nothing() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    let response = gw
        .confirm_form(
            &token,
            &[
                ("uuid", "not-a-uuid"),
                ("is_public", "maybe"),
                ("extra", "1"),
            ],
        )
        .await;
    let body = assert_problem(response, 400, "invalid_input").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in ["uuid", "key", "name", "etag", "is_public", "extra"] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
    let duplicate = gw
        .confirm_form(
            &token,
            &[
                ("uuid", &issued.s3object_id),
                ("key", &issued.key),
                ("key", "x"),
                ("name", "a"),
                ("etag", "e"),
            ],
        )
        .await;
    let body = assert_problem(duplicate, 400, "invalid_input").await;
    assert_eq!(body["errors"][0]["code"], "duplicate");
    assert!(gw.forwarded(SUCCESS).is_empty());
    assert_eq!(
        gw.confirm(&token, &issued).await.status(),
        200,
        "the upload is intact"
    );
}

#[tokio::test]
async fn the_window_closes_at_expires_at_plus_grace() {
    let gw = TestGateway::builder()
        .with_config("[confirm]\ngrace = \"1m\"\n")
        .start()
        .await;
    let token = gw.token("alice");
    let early = gw.issue(&token).await;
    let late = gw.issue(&token).await;

    // The stand-in's presigned POST expires in 5 minutes; one more minute of grace.
    gw.clock.advance(Duration::from_secs(5 * 60 + 30));
    assert_eq!(
        gw.confirm(&token, &early).await.status(),
        200,
        "inside the grace"
    );

    gw.clock.advance(Duration::from_secs(60));
    assert_problem(gw.confirm(&token, &late).await, 410, "upload_expired").await;
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
}

#[tokio::test]
async fn an_upstream_clock_cannot_stretch_the_window() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let id = uuid::Uuid::new_v4().to_string();
    gw.standin.script(
        Endpoint::Presign,
        Scripted::Respond {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({
                "url": "http://s3.invalid/upload", "fields": {"key": "far/future"}, "s3object_id": id,
                "max_file_size": 10, "expires_at": "2099-01-01T00:00:00Z"
            })
            .to_string(),
        },
    );
    let issued = gw.issue(&token).await;
    assert_eq!(issued.s3object_id, id);

    // Default max_window is 2 hours after the presign, whatever expires_at says.
    gw.clock.advance(Duration::from_secs(2 * 3600 + 1));
    assert_problem(gw.confirm(&token, &issued).await, 410, "upload_expired").await;
    assert!(gw.forwarded(SUCCESS).is_empty());
}

#[tokio::test]
async fn an_expired_upload_is_remembered_for_an_hour_then_forgotten() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    // Default grace 1h: the window ends 1h05m after the presign.
    gw.clock.advance(Duration::from_secs(65 * 60 + 1));
    assert_problem(gw.confirm(&token, &issued).await, 410, "upload_expired").await;
    gw.clock.advance(Duration::from_secs(59 * 60));
    assert_problem(gw.confirm(&token, &issued).await, 410, "upload_expired").await;
    gw.clock.advance(Duration::from_secs(60));
    assert_problem(gw.confirm(&token, &issued).await, 404, "upload_not_found").await;
}

#[tokio::test]
async fn twenty_concurrent_confirmations_forward_exactly_one() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;

    let attempts: Vec<_> = (0..20).map(|_| gw.confirm_task(&token, &issued)).collect();
    let mut responses = Vec::new();
    for attempt in attempts {
        responses.push(attempt.await.unwrap());
    }

    let mut fresh = 0;
    for response in responses {
        match response.status().as_u16() {
            200 if response.headers().get("idempotent-replayed").is_none() => fresh += 1,
            200 => {}
            409 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "confirmation_in_progress");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        fresh, 1,
        "exactly one confirmation was forwarded and answered fresh"
    );
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
}

#[tokio::test]
async fn a_confirmation_in_flight_makes_the_others_wait_with_409() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    gw.standin.script(
        Endpoint::Success,
        Scripted::Delay(Duration::from_millis(500)),
    );

    let first = gw.confirm_task(&token, &issued);
    gw.standin.wait_for_requests(SUCCESS, 1).await;
    let second = gw.confirm(&token, &issued).await;
    assert_eq!(second.headers()["retry-after"], "1");
    assert_problem(second, 409, "confirmation_in_progress").await;
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_confirmation_does_not_strand_the_upload() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    gw.standin.script(
        Endpoint::Success,
        Scripted::Delay(Duration::from_millis(300)),
    );

    let abandoned = gw.confirm_task(&token, &issued);
    gw.standin.wait_for_requests(SUCCESS, 1).await;
    abandoned.abort();

    // The forward finishes without the client; the upload ends confirmed, and the client's
    // retry is answered from memory (after the in-flight window) with no second forward.
    // Polling for the outcome: 409 while the orphaned forward is still in flight.
    let status = gw.confirm_while(&token, &issued, &[409]).await;
    assert_eq!(status.status(), 200);
    assert_eq!(status.headers()["idempotent-replayed"], "true");
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
}

#[tokio::test]
async fn an_upstream_failure_releases_the_claim_for_a_retry() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    gw.standin.script(
        Endpoint::Success,
        Scripted::Respond {
            status: 500,
            headers: vec![],
            body: "boom".into(),
        },
    );
    assert_problem(gw.confirm(&token, &issued).await, 502, "upstream_error").await;
    gw.standin.script(
        Endpoint::Success,
        Scripted::Respond {
            status: 400,
            headers: vec![],
            body: r#"{"detail":{"etag":"bad"}}"#.into(),
        },
    );
    let rejected = gw.confirm(&token, &issued).await;
    assert_eq!(rejected.status(), 400);
    assert_eq!(
        rejected.text().await.unwrap(),
        r#"{"detail":{"etag":"bad"}}"#
    );
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 3);
}

#[tokio::test]
async fn a_confirmation_kizen_accepted_is_never_forwarded_again_while_the_store_fails_to_record_it()
{
    use std::sync::{Arc, atomic::Ordering};
    let store = Arc::new(crate::support::faulty_store::FaultyStore::new());
    let gw = TestGateway::builder()
        .with_store(store.clone())
        .start()
        .await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;

    // Kizen accepts; recording that fails, and keeps failing for now.
    store.failing_settles.store(usize::MAX, Ordering::SeqCst);
    let first = gw.confirm(&token, &issued).await;
    assert_eq!(
        first.status(),
        200,
        "Kizen accepted it: the client hears so"
    );
    assert!(store.failed_settles.load(Ordering::SeqCst) >= 1);

    // Meanwhile a repeat is refused, never forwarded; the lease lapsing changes nothing.
    gw.clock.advance(Duration::from_secs(120));
    let repeat = gw.confirm(&token, &issued).await;
    assert_problem(repeat, 409, "confirmation_in_progress").await;
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);

    // The store recovers: the background retry records the outcome, and repeats are replayed.
    store.failing_settles.store(0, Ordering::SeqCst);
    let replayed = gw.confirm_while(&token, &issued, &[409]).await;
    assert_eq!(replayed.status(), 200);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(gw.forwarded(SUCCESS).len(), 1, "Kizen saw one call");
    let usage = kizen_gateway::store::UploadStore::usage(&*store, "alice", gw.clock.now())
        .await
        .unwrap();
    assert_eq!(
        usage.uploads_today, 1,
        "the confirmation counts toward the day"
    );
}

#[tokio::test]
async fn a_failed_confirmation_whose_release_fails_is_retried_later_not_lost() {
    use std::sync::{Arc, atomic::Ordering};
    let store = Arc::new(crate::support::faulty_store::FaultyStore::new());
    let gw = TestGateway::builder()
        .with_store(store.clone())
        .start()
        .await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    gw.standin.script(
        Endpoint::Success,
        Scripted::Respond {
            status: 500,
            headers: vec![],
            body: "boom".into(),
        },
    );
    store.failing_settles.store(2, Ordering::SeqCst);
    assert_problem(gw.confirm(&token, &issued).await, 502, "upstream_error").await;
    // Until the release lands the upload is held (409); then the user may retry, once.
    let retried = gw.confirm_while(&token, &issued, &[409]).await;
    assert_eq!(retried.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
}

#[tokio::test]
async fn confirmations_are_rate_limited_per_user() {
    let gw = TestGateway::builder()
        .with_config("[confirm]\nrate_limit_burst = 2\nrate_limit_period = \"1m\"\n")
        .start()
        .await;
    let alice = gw.token("alice");
    let issued = gw.issue(&alice).await;
    let first = gw.confirm(&alice, &issued).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_eq!(gw.confirm(&alice, &issued).await.status(), 200);
    let limited = gw.confirm(&alice, &issued).await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    let body = assert_problem(limited, 429, "rate_limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("confirmations"),
        "{body}"
    );
    // Another user has a budget of their own.
    let bob = gw.token("bob");
    let theirs = gw.issue(&bob).await;
    assert_eq!(gw.confirm(&bob, &theirs).await.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 2);
}

#[tokio::test]
async fn an_upload_that_keeps_failing_backs_off_instead_of_calling_kizen_again() {
    let gw = TestGateway::builder()
        .with_config("[confirm]\nmax_attempts = 2\nattempt_backoff = \"1m\"\n")
        .start()
        .await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    for _ in 0..2 {
        gw.standin.script(
            Endpoint::Success,
            Scripted::Respond {
                status: 400,
                headers: vec![],
                body: r#"{"detail":{"etag":"bad"}}"#.into(),
            },
        );
        assert_eq!(gw.confirm(&token, &issued).await.status(), 400);
    }
    let refused = gw.confirm(&token, &issued).await;
    assert_eq!(refused.headers()["retry-after"], "60");
    assert_problem(refused, 429, "confirmation_attempts_exhausted").await;
    assert_eq!(
        gw.forwarded(SUCCESS).len(),
        2,
        "the third attempt never left"
    );

    gw.clock.advance(Duration::from_secs(60));
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
    assert_eq!(gw.forwarded(SUCCESS).len(), 3);
}

#[tokio::test]
async fn the_daily_upload_quota_counts_open_uploads_and_is_checked_again_at_confirmation() {
    let gw = TestGateway::builder()
        .with_config(
            "[quotas]\ntier_claim = \"plan\"\n[quotas.tiers.default]\nmax_outstanding = 5\nmax_uploads_per_day = 1\n[quotas.tiers.roomy]\nmax_outstanding = 5\n",
        )
        .start()
        .await;
    let alice = gw.token("alice");
    let first = gw.issue(&alice).await;
    // One open upload already uses the day's one upload.
    assert_problem(gw.presign(&alice).await, 429, "daily_upload_quota_exceeded").await;

    // Two uploads issued under a roomier tier, confirmed under the strict one: the second is
    // refused at confirmation, before Kizen is called.
    let roomy = hs256(&json!({"sub": "alice", "plan": "roomy", "iat": now(), "exp": now() + 3600}));
    let second = gw.issue(&roomy).await;
    assert_eq!(gw.confirm(&alice, &first).await.status(), 200);
    let refused = gw.confirm(&alice, &second).await;
    assert!(refused.headers().contains_key("retry-after"));
    let body = assert_problem(refused, 429, "daily_upload_quota_exceeded").await;
    assert_eq!(body["quota"]["limit"], 1);
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);
    // The upload stays issued: under the roomy tier it confirms.
    assert_eq!(gw.confirm(&roomy, &second).await.status(), 200);
}

/// The settler on its own, on paused time: what it does when the store keeps failing.
mod settler {
    use std::{
        sync::{Arc, atomic::Ordering},
        time::Duration,
    };

    use kizen_gateway::{
        observability::metrics::Metrics,
        rate_limit::RateLimit,
        settle::{Settlement, Settler},
        store::{ClaimOutcome, ClaimRules, IssuedUpload, Lease, StoredResponse, UploadStore},
    };
    use time::OffsetDateTime;
    use tokio::time::Instant;
    use uuid::Uuid;

    use crate::support::faulty_store::FaultyStore;

    const RULES: ClaimRules = ClaimRules {
        rate: RateLimit {
            burst: 100,
            period: Duration::from_secs(60),
        },
        max_attempts: 5,
        attempt_backoff: Duration::from_secs(60),
        max_uploads_per_day: None,
        max_bytes_per_day: None,
    };

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn answer() -> StoredResponse {
        StoredResponse {
            status: 200,
            content_type: None,
            body: bytes::Bytes::from_static(b"{}"),
        }
    }

    /// A store holding one claimed upload of alice's, whose next `failing` settles fail.
    async fn claimed(failing: usize) -> (Arc<FaultyStore>, IssuedUpload, Lease) {
        let store = Arc::new(FaultyStore::new());
        let id = Uuid::new_v4();
        let upload = IssuedUpload {
            s3object_id: id,
            key: format!("uploads/{id}"),
            user: "alice".into(),
            source: "field_value".into(),
            issued_at: now(),
            window_end: now() + Duration::from_secs(3600),
        };
        store.record(&upload, 5, now()).await.unwrap();
        let ClaimOutcome::Claimed { lease, .. } = store
            .claim("alice", id, &upload.key, now(), &RULES)
            .await
            .unwrap()
            .outcome
        else {
            panic!("claims")
        };
        store.failing_settles.store(failing, Ordering::SeqCst);
        (store, upload, lease)
    }

    fn confirmed() -> Settlement {
        Settlement::Confirmed {
            response: answer(),
            size_bytes: 1,
            at: now(),
        }
    }

    async fn claim_again(store: &FaultyStore, upload: &IssuedUpload) -> ClaimOutcome {
        store
            .claim("alice", upload.s3object_id, &upload.key, now(), &RULES)
            .await
            .unwrap()
            .outcome
    }

    fn counted(metrics: &Metrics, result: &str) -> bool {
        metrics.render().contains(&format!(
            "confirmation_settles_total{{result=\"{result}\"}} 1"
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_settle_is_retried_until_the_store_takes_it() {
        let (store, upload, lease) = claimed(4).await;
        let metrics = Arc::new(Metrics::new());
        let settler = Settler::new(store.clone(), metrics.clone(), Duration::from_secs(60));
        let landed = settler
            .settle(&upload, lease, confirmed(), Instant::now())
            .await;
        assert!(!landed, "the first attempt failed");
        while settler.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(store.failed_settles.load(Ordering::SeqCst), 4);
        assert_eq!(
            claim_again(&store, &upload).await,
            ClaimOutcome::AlreadyConfirmed(Some(answer()))
        );
        assert!(counted(&metrics, "settled"), "{}", metrics.render());
    }

    #[tokio::test(start_paused = true)]
    async fn a_settle_that_never_lands_is_given_up_at_the_end_of_the_lease() {
        let (store, upload, lease) = claimed(usize::MAX).await;
        let metrics = Arc::new(Metrics::new());
        let settler = Settler::new(store.clone(), metrics.clone(), Duration::from_secs(60));
        let started = Instant::now();
        settler.settle(&upload, lease, confirmed(), started).await;
        while settler.pending() > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(started.elapsed() <= Duration::from_secs(61));
        assert!(counted(&metrics, "abandoned"), "{}", metrics.render());
        // The upload stays held: never claimable again, so never forwarded twice.
        store.failing_settles.store(0, Ordering::SeqCst);
        assert_eq!(claim_again(&store, &upload).await, ClaimOutcome::InFlight);
    }

    #[tokio::test]
    async fn a_settle_for_a_claim_not_held_is_counted_as_an_error() {
        let (store, upload, _lease) = claimed(0).await;
        let metrics = Arc::new(Metrics::new());
        let settler = Settler::new(store, metrics.clone(), Duration::from_secs(60));
        let foreign = Lease(Uuid::new_v4());
        let failed = Settlement::Failed {
            at: now(),
            rules: RULES,
        };
        assert!(
            settler
                .settle(&upload, foreign, failed, Instant::now())
                .await
        );
        assert!(counted(&metrics, "stale"), "{}", metrics.render());
        assert!(metrics.render().contains("store_errors_total 1"));
    }
}
