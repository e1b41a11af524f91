//! The contract every `UploadStore` backend passes: record, claim, release, consume, expiry, caps,
//! quota counters and concurrent claims. A backend joins by adding one `contract_suite!` line:
//! the memory store, Redis on one node and a 3-master Redis Cluster all run the same cases.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use kizen_gateway::{
    rate_limit::RateLimit,
    store::{
        Admission, ClaimOutcome, ClaimRules, IssuedUpload, Lease, MAX_COUNTED_BYTES, MemoryStore,
        PresignRules, QuotaKind, RedisSettings, RedisStore, Settled, StoreError, StoreLimits,
        StoredResponse, UploadStore, Usage,
    },
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::support::redis::{RedisCluster, RedisServer};

const RULES: ClaimRules = ClaimRules {
    rate: RateLimit {
        burst: 1000,
        period: Duration::from_secs(60),
    },
    max_attempts: 3,
    attempt_backoff: Duration::from_secs(60),
    max_uploads_per_day: None,
    max_bytes_per_day: None,
};
const REMEMBER: Duration = Duration::from_secs(3600);

fn upload(user: &str, now: OffsetDateTime) -> IssuedUpload {
    let id = Uuid::new_v4();
    IssuedUpload {
        s3object_id: id,
        key: format!("uploads/{id}/file.png"),
        user: user.to_owned(),
        source: "field_value".into(),
        issued_at: now,
        window_end: now + Duration::from_secs(600),
    }
}

fn answer() -> StoredResponse {
    StoredResponse {
        status: 200,
        content_type: Some("application/json".into()),
        body: Bytes::from_static(b"{\"id\":1}"),
    }
}

/// The verdict of a claim, its budget aside.
async fn outcome(
    store: &Arc<dyn UploadStore>,
    user: &str,
    id: Uuid,
    key: &str,
    now: OffsetDateTime,
    rules: &ClaimRules,
) -> ClaimOutcome {
    store
        .claim(user, id, key, now, rules)
        .await
        .unwrap()
        .outcome
}

/// Claims `up` as `user`, which must succeed, and returns the lease.
async fn claim_lease(
    store: &Arc<dyn UploadStore>,
    user: &str,
    up: &IssuedUpload,
    now: OffsetDateTime,
) -> Lease {
    match outcome(store, user, up.s3object_id, &up.key, now, &RULES).await {
        ClaimOutcome::Claimed { lease, .. } => lease,
        other => panic!("the claim must succeed, got {other:?}"),
    }
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

pub async fn claim_takes_a_lease_once(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    let ClaimOutcome::Claimed {
        upload: claimed, ..
    } = outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await
    else {
        panic!("first claim must succeed")
    };
    assert_eq!(claimed, up);
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::InFlight
    );
}

pub async fn unknown_and_foreign_uploads_are_not_found(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    assert_eq!(
        outcome(&store, "alice", Uuid::new_v4(), &up.key, now, &RULES).await,
        ClaimOutcome::NotFound
    );
    assert_eq!(
        outcome(&store, "bob", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::NotFound
    );
    // A user id that is a prefix or a case variant of another is another user.
    assert_eq!(
        outcome(&store, "Alice", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::NotFound
    );
    assert_eq!(
        outcome(&store, "alic", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::NotFound
    );
}

pub async fn a_wrong_key_is_refused_and_claims_nothing(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, "other", now, &RULES).await,
        ClaimOutcome::KeyMismatch
    );
    assert!(matches!(
        outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::Claimed { .. }
    ));
}

pub async fn release_gives_the_upload_back(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    let lease = claim_lease(&store, "alice", &up, now).await;
    assert_eq!(
        store.release(&up, lease, now, &RULES).await.unwrap(),
        Settled::Done
    );
    assert!(matches!(
        outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::Claimed { .. }
    ));
}

pub async fn a_claim_never_lapses_and_only_its_lease_settles_it(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    let lease = claim_lease(&store, "alice", &up, now).await;
    // Long after any lease (the settle is late, or the replica died): the outcome may have
    // reached the upstream, so the upload is never claimable again by waiting.
    let later = up.window_end - Duration::from_secs(1);
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, &up.key, later, &RULES).await,
        ClaimOutcome::InFlight
    );
    let foreign = Lease(Uuid::new_v4());
    assert_eq!(
        store.release(&up, foreign, later, &RULES).await.unwrap(),
        Settled::Stale
    );
    assert_eq!(
        store
            .consume(&up, foreign, answer(), 7, later)
            .await
            .unwrap(),
        Settled::Stale
    );
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, &up.key, later, &RULES).await,
        ClaimOutcome::InFlight,
        "a foreign lease changed nothing"
    );
    assert_eq!(
        store.consume(&up, lease, answer(), 7, later).await.unwrap(),
        Settled::Done,
        "a late settle of the claim's own lease lands"
    );
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, &up.key, later, &RULES).await,
        ClaimOutcome::AlreadyConfirmed(Some(answer()))
    );
    assert_eq!(
        store.consume(&up, lease, answer(), 7, later).await.unwrap(),
        Settled::Done,
        "settling the same claim again (a retry after a timeout) is a no-op"
    );
    assert_eq!(
        store.release(&up, lease, later, &RULES).await.unwrap(),
        Settled::Stale,
        "a confirmed claim cannot be released"
    );
    assert_eq!(store.usage("alice", later).await.unwrap().uploads_today, 1);
}

pub async fn failed_attempts_back_off(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    for _ in 0..RULES.max_attempts {
        let lease = claim_lease(&store, "alice", &up, now).await;
        store.release(&up, lease, now, &RULES).await.unwrap();
    }
    let until = now + RULES.attempt_backoff;
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::BackingOff { until }
    );
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, "other", now, &RULES).await,
        ClaimOutcome::KeyMismatch,
        "the key is still checked first"
    );
    // Once the backoff has passed, one more attempt; its failure starts a new backoff.
    let lease = claim_lease(&store, "alice", &up, until).await;
    store.release(&up, lease, until, &RULES).await.unwrap();
    assert_eq!(
        store.release(&up, lease, until, &RULES).await.unwrap(),
        Settled::Done,
        "a repeated release of one claim counts once"
    );
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, &up.key, until, &RULES).await,
        ClaimOutcome::BackingOff {
            until: until + RULES.attempt_backoff
        }
    );
}

pub async fn daily_quotas_are_checked_again_at_claim(store: Arc<dyn UploadStore>) {
    let now = t0();
    let one_a_day = ClaimRules {
        max_uploads_per_day: Some(1),
        ..RULES
    };
    let first = upload("alice", now);
    let second = upload("alice", now);
    store.record(&first, 10, now).await.unwrap();
    store.record(&second, 10, now).await.unwrap();
    let ClaimOutcome::Claimed { lease, .. } = outcome(
        &store,
        "alice",
        first.s3object_id,
        &first.key,
        now,
        &one_a_day,
    )
    .await
    else {
        panic!("the first confirmation of the day is allowed")
    };
    store
        .consume(&first, lease, answer(), 300, now)
        .await
        .unwrap();
    assert_eq!(
        outcome(
            &store,
            "alice",
            second.s3object_id,
            &second.key,
            now,
            &one_a_day
        )
        .await,
        ClaimOutcome::DailyQuotaReached(QuotaKind::UploadsPerDay)
    );
    let bytes = ClaimRules {
        max_bytes_per_day: Some(300),
        ..RULES
    };
    assert_eq!(
        outcome(
            &store,
            "alice",
            second.s3object_id,
            &second.key,
            now,
            &bytes
        )
        .await,
        ClaimOutcome::DailyQuotaReached(QuotaKind::BytesPerDay)
    );
    // Refusals took nothing: without the quotas, the upload is still claimable; and tomorrow too.
    let tomorrow = now + Duration::from_secs(24 * 3600);
    let mut later = second.clone();
    later.window_end = tomorrow + Duration::from_secs(60);
    let other = IssuedUpload {
        s3object_id: Uuid::new_v4(),
        ..later
    };
    store.record(&other, 10, tomorrow).await.unwrap();
    assert!(matches!(
        outcome(
            &store,
            "alice",
            other.s3object_id,
            &other.key,
            tomorrow,
            &one_a_day
        )
        .await,
        ClaimOutcome::Claimed { .. }
    ));
    assert!(matches!(
        outcome(
            &store,
            "alice",
            second.s3object_id,
            &second.key,
            now,
            &RULES
        )
        .await,
        ClaimOutcome::Claimed { .. }
    ));
}

pub async fn a_huge_size_is_counted_capped(store: Arc<dyn UploadStore>) {
    let now = t0();
    for _ in 0..2 {
        let up = upload("alice", now);
        store.record(&up, 10, now).await.unwrap();
        let lease = claim_lease(&store, "alice", &up, now).await;
        assert_eq!(
            store
                .consume(&up, lease, answer(), u64::MAX, now)
                .await
                .unwrap(),
            Settled::Done
        );
        assert_eq!(
            outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await,
            ClaimOutcome::AlreadyConfirmed(Some(answer())),
            "the upload is confirmed whole, never halfway"
        );
    }
    let usage = store.usage("alice", now).await.unwrap();
    assert_eq!(
        (usage.uploads_today, usage.bytes_today),
        (2, MAX_COUNTED_BYTES)
    );
}

pub async fn consume_keeps_the_answer_for_the_same_key_only(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    let lease = claim_lease(&store, "alice", &up, now).await;
    store.consume(&up, lease, answer(), 7, now).await.unwrap();
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::AlreadyConfirmed(Some(answer()))
    );
    assert_eq!(
        outcome(&store, "alice", up.s3object_id, "other", now, &RULES).await,
        ClaimOutcome::AlreadyConfirmed(None)
    );
    assert_eq!(
        outcome(&store, "bob", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::NotFound
    );
    assert_eq!(
        store.usage("alice", now).await.unwrap().outstanding,
        0,
        "a consumed upload is not outstanding"
    );
}

pub async fn expiry_then_forgetting(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    assert!(
        matches!(
            outcome(
                &store,
                "alice",
                up.s3object_id,
                &up.key,
                up.window_end,
                &RULES
            )
            .await,
            ClaimOutcome::Claimed { .. }
        ),
        "the window's last instant is inside"
    );
    let other = upload("alice", now);
    store.record(&other, 10, now).await.unwrap();
    let closed = other.window_end + Duration::from_secs(1);
    assert_eq!(
        outcome(
            &store,
            "alice",
            other.s3object_id,
            &other.key,
            closed,
            &RULES
        )
        .await,
        ClaimOutcome::Expired
    );
    assert_eq!(
        store.usage("alice", closed).await.unwrap().outstanding,
        0,
        "expired uploads are not outstanding"
    );

    let remembered = other.window_end + REMEMBER - Duration::from_secs(1);
    assert!(store.purge(remembered).await.unwrap().is_empty());
    assert_eq!(
        outcome(
            &store,
            "alice",
            other.s3object_id,
            &other.key,
            remembered,
            &RULES
        )
        .await,
        ClaimOutcome::Expired
    );

    let forgotten = other.window_end + REMEMBER + Duration::from_secs(1);
    // Both were never confirmed (one claimed, never settled; one expired): both reported, as
    // recorded, and once.
    let mut purged = store.purge(forgotten).await.unwrap();
    purged.sort_by_key(|u| u.s3object_id);
    let mut expected = vec![up.clone(), other.clone()];
    expected.sort_by_key(|u| u.s3object_id);
    assert_eq!(purged, expected, "never-confirmed uploads are reported");
    assert!(store.purge(forgotten).await.unwrap().is_empty(), "once");
    assert_eq!(
        outcome(
            &store,
            "alice",
            other.s3object_id,
            &other.key,
            forgotten,
            &RULES
        )
        .await,
        ClaimOutcome::NotFound
    );
    assert_eq!(store.entry_count().await.unwrap(), Some(0));
}

/// Confirmed uploads are forgotten silently; `store_entries` counts every state until then.
pub async fn confirmed_uploads_are_forgotten_unreported(store: Arc<dyn UploadStore>) {
    let now = t0();
    let confirmed = upload("bob", now);
    store.record(&confirmed, 10, now).await.unwrap();
    let ClaimOutcome::Claimed {
        lease,
        upload: claimed,
    } = outcome(
        &store,
        "bob",
        confirmed.s3object_id,
        &confirmed.key,
        now,
        &RULES,
    )
    .await
    else {
        panic!("claims")
    };
    store
        .consume(&claimed, lease, answer(), 0, now)
        .await
        .unwrap();
    let mut open = upload("bob", now);
    open.window_end = now + 3 * REMEMBER;
    store.record(&open, 10, now).await.unwrap();
    assert_eq!(store.entry_count().await.unwrap(), Some(2));

    let forgotten = confirmed.window_end + REMEMBER + Duration::from_secs(1);
    assert!(store.purge(forgotten).await.unwrap().is_empty());
    assert_eq!(
        store.entry_count().await.unwrap(),
        Some(1),
        "the later upload is still held"
    );
}

pub async fn per_user_cap_counts_open_uploads_only(store: Arc<dyn UploadStore>) {
    let now = t0();
    let first = upload("alice", now);
    store.record(&first, 2, now).await.unwrap();
    store.record(&upload("alice", now), 2, now).await.unwrap();
    assert_eq!(store.usage("alice", now).await.unwrap().outstanding, 2);
    assert_eq!(
        store.record(&upload("alice", now), 2, now).await,
        Err(StoreError::UserCapReached { limit: 2 })
    );
    store.record(&upload("bob", now), 2, now).await.unwrap();

    let lease = claim_lease(&store, "alice", &first, now).await;
    assert_eq!(
        store.usage("alice", now).await.unwrap().outstanding,
        2,
        "a claimed upload is still open"
    );
    store
        .consume(&first, lease, answer(), 7, now)
        .await
        .unwrap();
    store.record(&upload("alice", now), 2, now).await.unwrap();
}

pub async fn concurrent_claims_have_one_winner(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (store, up) = (store.clone(), up.clone());
        tasks.push(tokio::spawn(async move {
            store
                .claim("alice", up.s3object_id, &up.key, now, &RULES)
                .await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap().unwrap().outcome {
            ClaimOutcome::Claimed { .. } => winners += 1,
            ClaimOutcome::InFlight => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
}

pub async fn hostile_user_ids_do_not_collide(store: Arc<dyn UploadStore>) {
    let now = t0();
    let users = [
        "a:b", "a", "a:b:c", "*", "a b", "ü", "", "a\nb", "{a}", "a}:{b",
    ];
    let mut uploads = Vec::new();
    for user in users {
        let up = upload(user, now);
        store.record(&up, 1, now).await.unwrap();
        uploads.push(up);
    }
    for (i, up) in uploads.iter().enumerate() {
        assert_eq!(
            store.usage(users[i], now).await.unwrap().outstanding,
            1,
            "{:?}",
            users[i]
        );
        for (j, other) in users.iter().enumerate() {
            if i != j {
                assert_eq!(
                    outcome(&store, other, up.s3object_id, &up.key, now, &RULES).await,
                    ClaimOutcome::NotFound
                );
            }
        }
    }
}

pub async fn a_repeated_upload_id_never_overwrites(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    let again = IssuedUpload {
        key: "other/key".into(),
        ..up.clone()
    };
    assert_eq!(
        store.record(&again, 10, now).await,
        Err(StoreError::Duplicate)
    );
    // Ids are per user in every backend: another user's upload with the same id is its own.
    let bobs = IssuedUpload {
        user: "bob".into(),
        key: "bob/key".into(),
        ..up.clone()
    };
    store.record(&bobs, 10, now).await.unwrap();
    assert!(matches!(
        outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await,
        ClaimOutcome::Claimed { .. }
    ));
    assert!(matches!(
        outcome(&store, "bob", bobs.s3object_id, &bobs.key, now, &RULES).await,
        ClaimOutcome::Claimed { .. }
    ));
}

pub async fn consumed_uploads_count_toward_the_day(store: Arc<dyn UploadStore>) {
    let now = t0();
    assert_eq!(store.usage("alice", now).await.unwrap(), Usage::default());
    for size in [100, 250] {
        let up = upload("alice", now);
        store.record(&up, 10, now).await.unwrap();
        let ClaimOutcome::Claimed { lease, .. } =
            outcome(&store, "alice", up.s3object_id, &up.key, now, &RULES).await
        else {
            panic!()
        };
        store
            .consume(&up, lease, answer(), size, now)
            .await
            .unwrap();
    }
    let released = upload("alice", now);
    store.record(&released, 10, now).await.unwrap();
    let lease = claim_lease(&store, "alice", &released, now).await;
    store.release(&released, lease, now, &RULES).await.unwrap();

    let usage = store.usage("alice", now).await.unwrap();
    assert_eq!(
        usage,
        Usage {
            outstanding: 1,
            uploads_today: 2,
            bytes_today: 350
        }
    );
    assert_eq!(store.usage("bob", now).await.unwrap(), Usage::default());
    let tomorrow = now + Duration::from_secs(24 * 3600);
    let next_day = store.usage("alice", tomorrow).await.unwrap();
    assert_eq!(
        (next_day.uploads_today, next_day.bytes_today),
        (0, 0),
        "counters are per UTC day"
    );
}

fn presign_rules(max_outstanding: usize, burst: u32) -> PresignRules {
    PresignRules {
        max_outstanding,
        max_uploads_per_day: None,
        max_bytes_per_day: None,
        rate: RateLimit {
            burst,
            period: Duration::from_secs(3600),
        },
    }
}

pub async fn admit_checks_quotas_then_spends_the_budget(store: Arc<dyn UploadStore>) {
    let now = t0();
    let rules = presign_rules(1, 2);
    let Admission::Admitted(first) = store.admit("alice", now, &rules).await.unwrap() else {
        panic!("a fresh user is admitted")
    };
    assert_eq!(
        (first.limit, first.remaining, first.retry_after),
        (2, 1, None)
    );
    let up = upload("alice", now);
    store.record(&up, 1, now).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            store.admit("alice", now, &rules).await.unwrap(),
            Admission::QuotaReached(QuotaKind::Outstanding),
            "a quota refusal spends no budget"
        );
    }
    let lease = claim_lease(&store, "alice", &up, now).await;
    store.consume(&up, lease, answer(), 1, now).await.unwrap();
    let Admission::Admitted(second) = store.admit("alice", now, &rules).await.unwrap() else {
        panic!("the second presign of the budget")
    };
    assert_eq!(second.remaining, 0);
    let Admission::RateLimited(spent) = store.admit("alice", now, &rules).await.unwrap() else {
        panic!("the budget is spent")
    };
    let wait = spent.retry_after.expect("a refusal says how long to wait");
    assert!(
        wait > Duration::from_secs(1700) && wait <= Duration::from_secs(1800),
        "{wait:?}"
    );
    assert!(
        matches!(
            store.admit("bob", now, &rules).await.unwrap(),
            Admission::Admitted(_)
        ),
        "budgets are per user"
    );
}

pub async fn admit_counts_open_uploads_toward_the_day(store: Arc<dyn UploadStore>) {
    let now = t0();
    let rules = PresignRules {
        max_uploads_per_day: Some(2),
        ..presign_rules(10, 100)
    };
    store.record(&upload("alice", now), 10, now).await.unwrap();
    assert!(matches!(
        store.admit("alice", now, &rules).await.unwrap(),
        Admission::Admitted(_)
    ));
    let confirmed = upload("alice", now);
    store.record(&confirmed, 10, now).await.unwrap();
    assert_eq!(
        store.admit("alice", now, &rules).await.unwrap(),
        Admission::QuotaReached(QuotaKind::UploadsPerDay),
        "one open and one more open reach two a day"
    );
    let lease = claim_lease(&store, "alice", &confirmed, now).await;
    store
        .consume(&confirmed, lease, answer(), 500, now)
        .await
        .unwrap();
    assert_eq!(
        store.admit("alice", now, &rules).await.unwrap(),
        Admission::QuotaReached(QuotaKind::UploadsPerDay),
        "one confirmed and one open still do"
    );
    let bytes = PresignRules {
        max_bytes_per_day: Some(500),
        ..presign_rules(10, 100)
    };
    assert_eq!(
        store.admit("alice", now, &bytes).await.unwrap(),
        Admission::QuotaReached(QuotaKind::BytesPerDay)
    );
}

pub async fn every_claim_spends_the_confirmation_budget(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(&up, 10, now).await.unwrap();
    let rules = ClaimRules {
        rate: RateLimit {
            burst: 2,
            period: Duration::from_secs(60),
        },
        ..RULES
    };
    let unknown = store
        .claim("alice", Uuid::new_v4(), "k", now, &rules)
        .await
        .unwrap();
    assert_eq!(unknown.outcome, ClaimOutcome::NotFound);
    assert_eq!((unknown.budget.limit, unknown.budget.remaining), (2, 1));
    let claimed = store
        .claim("alice", up.s3object_id, &up.key, now, &rules)
        .await
        .unwrap();
    assert!(matches!(claimed.outcome, ClaimOutcome::Claimed { .. }));
    assert_eq!(claimed.budget.remaining, 0);
    let limited = store
        .claim("alice", up.s3object_id, &up.key, now, &rules)
        .await
        .unwrap();
    assert_eq!(limited.outcome, ClaimOutcome::RateLimited);
    assert!(limited.budget.retry_after.is_some());
    // The presign budget is another one.
    assert!(matches!(
        store
            .admit("alice", now, &presign_rules(10, 1))
            .await
            .unwrap(),
        Admission::Admitted(_)
    ));
}

type MakeStore = fn(StoreLimits) -> Pin<Box<dyn Future<Output = Arc<dyn UploadStore>> + Send>>;

/// Generates one `#[tokio::test]` per contract case for a backend.
macro_rules! contract_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            contract_suite!(@cases $make;
                claim_takes_a_lease_once,
                unknown_and_foreign_uploads_are_not_found,
                a_wrong_key_is_refused_and_claims_nothing,
                release_gives_the_upload_back,
                a_claim_never_lapses_and_only_its_lease_settles_it,
                failed_attempts_back_off,
                daily_quotas_are_checked_again_at_claim,
                a_huge_size_is_counted_capped,
                admit_checks_quotas_then_spends_the_budget,
                admit_counts_open_uploads_toward_the_day,
                every_claim_spends_the_confirmation_budget,
                consume_keeps_the_answer_for_the_same_key_only,
                expiry_then_forgetting,
                confirmed_uploads_are_forgotten_unreported,
                per_user_cap_counts_open_uploads_only,
                consumed_uploads_count_toward_the_day,
                a_repeated_upload_id_never_overwrites,
                concurrent_claims_have_one_winner,
                hostile_user_ids_do_not_collide,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let make: MakeStore = $make;
                super::$case(make(limits()).await).await;
            }
        )*
    };
}

fn limits() -> StoreLimits {
    StoreLimits {
        max_uploads: 1000,
        max_uploads_per_user: 100,
        remember_expired: REMEMBER,
    }
}

/// One server (and one cluster) per test binary; each case gets its own key prefix.
fn redis_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn redis_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

async fn connect(urls: Vec<String>, cluster: bool, limits: StoreLimits) -> Arc<dyn UploadStore> {
    let settings = RedisSettings {
        urls,
        cluster,
        password: None,
        prefix: format!("contract-{}", Uuid::new_v4()),
        operation_timeout: Duration::from_secs(2),
        wait_for_replicas: 0,
        sentinel: None,
        sweep_grace: Duration::from_secs(120),
    };
    Arc::new(
        RedisStore::connect(&settings, limits)
            .await
            .expect("connects"),
    )
}

contract_suite!(memory, |limits| Box::pin(async move {
    Arc::new(MemoryStore::new(limits)) as Arc<dyn UploadStore>
}));
contract_suite!(redis, |limits| Box::pin(async move {
    let url = tokio::task::spawn_blocking(|| redis_server().url())
        .await
        .unwrap();
    connect(vec![url], false, limits).await
}));
contract_suite!(redis_cluster, |limits| Box::pin(async move {
    let urls = tokio::task::spawn_blocking(|| redis_cluster().urls())
        .await
        .unwrap();
    connect(urls, true, limits).await
}));

/// The memory store's own bound: Redis is bounded by its maxmemory and its keys' TTLs instead.
#[tokio::test]
async fn a_full_memory_store_evicts_settled_and_expired_entries_never_open_ones() {
    let store = MemoryStore::new(StoreLimits {
        max_uploads: 3,
        max_uploads_per_user: 100,
        remember_expired: REMEMBER,
    });
    let store: Arc<dyn UploadStore> = Arc::new(store);
    let now = t0();
    let live: Vec<_> = (0..3).map(|i| upload(&format!("user{i}"), now)).collect();
    for up in &live {
        store.record(up, 10, now).await.unwrap();
    }
    assert_eq!(
        store.record(&upload("late", now), 10, now).await,
        Err(StoreError::Full),
        "every entry is open: nothing may be evicted"
    );
    // A confirmation in flight is not evicted either.
    let _held = claim_lease(&store, "user0", &live[0], now).await;
    assert_eq!(
        store.record(&upload("late", now), 10, now).await,
        Err(StoreError::Full)
    );
    // A confirmed entry goes first, however recent.
    let lease = claim_lease(&store, "user1", &live[1], now).await;
    store
        .consume(&live[1], lease, answer(), 1, now)
        .await
        .unwrap();
    let late = upload("late", now);
    store.record(&late, 10, now).await.unwrap();
    assert_eq!(
        outcome(
            &store,
            "user1",
            live[1].s3object_id,
            &live[1].key,
            now,
            &RULES
        )
        .await,
        ClaimOutcome::NotFound,
        "the confirmed entry made room"
    );
    assert_eq!(store.entry_count().await.unwrap(), Some(3));
    // Then expired ones: past the windows, a new upload takes the place of an expired one, not
    // of the one still held by its confirmation.
    let closed = live[2].window_end + Duration::from_secs(1);
    store
        .record(&upload("later", closed), 10, closed)
        .await
        .unwrap();
    assert_eq!(
        outcome(
            &store,
            "user0",
            live[0].s3object_id,
            &live[0].key,
            closed,
            &RULES
        )
        .await,
        ClaimOutcome::InFlight,
        "the claimed upload survived"
    );
    assert_eq!(store.entry_count().await.unwrap(), Some(3));
}

#[tokio::test]
async fn one_user_cannot_crowd_the_memory_store() {
    let store: Arc<dyn UploadStore> = Arc::new(MemoryStore::new(StoreLimits {
        max_uploads: 10,
        max_uploads_per_user: 3,
        remember_expired: REMEMBER,
    }));
    let now = t0();
    let mut confirmed = Vec::new();
    for i in 0..8 {
        let mut up = upload("mallory", now);
        up.window_end += Duration::from_secs(i);
        store.record(&up, 2, now).await.unwrap();
        let lease = claim_lease(&store, "mallory", &up, now).await;
        store.consume(&up, lease, answer(), 1, now).await.unwrap();
        confirmed.push(up);
    }
    assert_eq!(
        store.entry_count().await.unwrap(),
        Some(3),
        "mallory holds at most her own bound"
    );
    assert_eq!(
        outcome(
            &store,
            "mallory",
            confirmed[0].s3object_id,
            &confirmed[0].key,
            now,
            &RULES
        )
        .await,
        ClaimOutcome::NotFound,
        "her confirmed entry due to be forgotten soonest went first"
    );
    assert_eq!(
        outcome(
            &store,
            "mallory",
            confirmed[7].s3object_id,
            &confirmed[7].key,
            now,
            &RULES
        )
        .await,
        ClaimOutcome::AlreadyConfirmed(Some(answer()))
    );
    assert_eq!(
        store.usage("mallory", now).await.unwrap().uploads_today,
        8,
        "forgetting entries early never forgets the day's count"
    );
    for i in 0..7 {
        store
            .record(&upload(&format!("user{i}"), now), 2, now)
            .await
            .unwrap();
    }
}
