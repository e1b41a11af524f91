//! The contract every `UploadStore` backend passes: record, claim, release, consume, expiry, caps,
//! quota counters and concurrent claims. A backend joins by adding one `contract_suite!` line:
//! the memory store, Redis on one node and a 3-master Redis Cluster all run the same cases.

mod common;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use common::redis::{RedisCluster, RedisServer};
use kizen_gateway::store::{RedisSettings, RedisStore, Usage};

use bytes::Bytes;
use kizen_gateway::store::{
    ClaimOutcome, IssuedUpload, Lease, MemoryStore, StoreError, StoreLimits, StoredResponse,
    UploadStore,
};
use time::OffsetDateTime;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);
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

/// Claims `up` as `user`, which must succeed, and returns the lease.
async fn claim_lease(
    store: &Arc<dyn UploadStore>,
    user: &str,
    up: &IssuedUpload,
    now: OffsetDateTime,
) -> Lease {
    match store
        .claim(user, up.s3object_id, &up.key, now, LEASE)
        .await
        .unwrap()
    {
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
    store.record(up.clone(), 10, now).await.unwrap();
    let ClaimOutcome::Claimed {
        upload: claimed, ..
    } = store
        .claim("alice", up.s3object_id, &up.key, now, LEASE)
        .await
        .unwrap()
    else {
        panic!("first claim must succeed")
    };
    assert_eq!(claimed, up);
    assert_eq!(
        store
            .claim("alice", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::InFlight
    );
}

pub async fn unknown_and_foreign_uploads_are_not_found(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(up.clone(), 10, now).await.unwrap();
    assert_eq!(
        store
            .claim("alice", Uuid::new_v4(), &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::NotFound
    );
    assert_eq!(
        store
            .claim("bob", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::NotFound
    );
    // A user id that is a prefix or a case variant of another is another user.
    assert_eq!(
        store
            .claim("Alice", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::NotFound
    );
    assert_eq!(
        store
            .claim("alic", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::NotFound
    );
}

pub async fn a_wrong_key_is_refused_and_claims_nothing(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(up.clone(), 10, now).await.unwrap();
    assert_eq!(
        store
            .claim("alice", up.s3object_id, "other", now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::KeyMismatch
    );
    assert!(matches!(
        store
            .claim("alice", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::Claimed { .. }
    ));
}

pub async fn release_gives_the_upload_back(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(up.clone(), 10, now).await.unwrap();
    let lease = claim_lease(&store, "alice", &up, now).await;
    store.release(&up, lease).await.unwrap();
    assert!(matches!(
        store
            .claim("alice", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::Claimed { .. }
    ));
}

pub async fn a_stale_lease_cannot_release_or_consume(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(up.clone(), 10, now).await.unwrap();
    let old = claim_lease(&store, "alice", &up, now).await;
    // The lease lapses (a replica died mid-confirmation); someone else claims.
    let later = now + LEASE + Duration::from_secs(1);
    let new = claim_lease(&store, "alice", &up, later).await;
    assert_ne!(old, new);
    store.release(&up, old).await.unwrap();
    store.consume(&up, old, answer(), 7, now).await.unwrap();
    assert_eq!(
        store
            .claim("alice", up.s3object_id, &up.key, later, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::InFlight
    );
    store.consume(&up, new, answer(), 7, now).await.unwrap();
    assert_eq!(
        store
            .claim("alice", up.s3object_id, &up.key, later, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::AlreadyConfirmed(Some(answer()))
    );
}

pub async fn consume_keeps_the_answer_for_the_same_key_only(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(up.clone(), 10, now).await.unwrap();
    let lease = claim_lease(&store, "alice", &up, now).await;
    store.consume(&up, lease, answer(), 7, now).await.unwrap();
    assert_eq!(
        store
            .claim("alice", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::AlreadyConfirmed(Some(answer()))
    );
    assert_eq!(
        store
            .claim("alice", up.s3object_id, "other", now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::AlreadyConfirmed(None)
    );
    assert_eq!(
        store
            .claim("bob", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
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
    store.record(up.clone(), 10, now).await.unwrap();
    assert!(
        matches!(
            store
                .claim("alice", up.s3object_id, &up.key, up.window_end, LEASE)
                .await
                .unwrap(),
            ClaimOutcome::Claimed { .. }
        ),
        "the window's last instant is inside"
    );
    let other = upload("alice", now);
    store.record(other.clone(), 10, now).await.unwrap();
    let closed = other.window_end + Duration::from_secs(1);
    assert_eq!(
        store
            .claim("alice", other.s3object_id, &other.key, closed, LEASE)
            .await
            .unwrap(),
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
        store
            .claim("alice", other.s3object_id, &other.key, remembered, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::Expired
    );

    let forgotten = other.window_end + REMEMBER + Duration::from_secs(1);
    // Backends that expire keys by themselves report nothing; what is reported must be right.
    let purged = store.purge(forgotten).await.unwrap();
    assert!(
        purged.is_empty() || purged.iter().any(|u| u.s3object_id == other.s3object_id),
        "never-confirmed uploads are reported"
    );
    assert_eq!(
        store
            .claim("alice", other.s3object_id, &other.key, forgotten, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::NotFound
    );
    assert!(matches!(store.entry_count().await.unwrap(), None | Some(0)));
}

pub async fn per_user_cap_counts_open_uploads_only(store: Arc<dyn UploadStore>) {
    let now = t0();
    let first = upload("alice", now);
    store.record(first.clone(), 2, now).await.unwrap();
    store.record(upload("alice", now), 2, now).await.unwrap();
    assert_eq!(store.usage("alice", now).await.unwrap().outstanding, 2);
    assert_eq!(
        store.record(upload("alice", now), 2, now).await,
        Err(StoreError::UserCapReached { limit: 2 })
    );
    store.record(upload("bob", now), 2, now).await.unwrap();

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
    store.record(upload("alice", now), 2, now).await.unwrap();
}

pub async fn concurrent_claims_have_one_winner(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(up.clone(), 10, now).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (store, up) = (store.clone(), up.clone());
        tasks.push(tokio::spawn(async move {
            store
                .claim("alice", up.s3object_id, &up.key, now, LEASE)
                .await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
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
        store.record(up.clone(), 1, now).await.unwrap();
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
                    store
                        .claim(other, up.s3object_id, &up.key, now, LEASE)
                        .await
                        .unwrap(),
                    ClaimOutcome::NotFound
                );
            }
        }
    }
}

pub async fn a_repeated_upload_id_never_overwrites(store: Arc<dyn UploadStore>) {
    let now = t0();
    let up = upload("alice", now);
    store.record(up.clone(), 10, now).await.unwrap();
    let again = IssuedUpload {
        key: "other/key".into(),
        ..up.clone()
    };
    assert_eq!(
        store.record(again, 10, now).await,
        Err(StoreError::Duplicate)
    );
    assert!(matches!(
        store
            .claim("alice", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap(),
        ClaimOutcome::Claimed { .. }
    ));
}

pub async fn consumed_uploads_count_toward_the_day(store: Arc<dyn UploadStore>) {
    let now = t0();
    assert_eq!(store.usage("alice", now).await.unwrap(), Usage::default());
    for size in [100, 250] {
        let up = upload("alice", now);
        store.record(up.clone(), 10, now).await.unwrap();
        let ClaimOutcome::Claimed { lease, .. } = store
            .claim("alice", up.s3object_id, &up.key, now, LEASE)
            .await
            .unwrap()
        else {
            panic!()
        };
        store
            .consume(&up, lease, answer(), size, now)
            .await
            .unwrap();
    }
    let released = upload("alice", now);
    store.record(released.clone(), 10, now).await.unwrap();
    let lease = claim_lease(&store, "alice", &released, now).await;
    store.release(&released, lease).await.unwrap();

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
                a_stale_lease_cannot_release_or_consume,
                consume_keeps_the_answer_for_the_same_key_only,
                expiry_then_forgetting,
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
async fn a_full_memory_store_refuses_and_never_evicts_live_uploads() {
    let store = MemoryStore::new(StoreLimits {
        max_uploads: 3,
        remember_expired: REMEMBER,
    });
    let now = t0();
    let live: Vec<_> = (0..3).map(|i| upload(&format!("user{i}"), now)).collect();
    for up in &live {
        store.record(up.clone(), 10, now).await.unwrap();
    }
    assert_eq!(
        store.record(upload("late", now), 10, now).await,
        Err(StoreError::Full)
    );
    for up in &live {
        assert!(matches!(
            store
                .claim(&up.user, up.s3object_id, &up.key, now, LEASE)
                .await
                .unwrap(),
            ClaimOutcome::Claimed { .. }
        ));
    }
    // Once entries are past their memory, room is made by forgetting them, and they are reported.
    let much_later = now + Duration::from_secs(600) + REMEMBER + Duration::from_secs(1);
    store
        .record(upload("late", much_later), 10, much_later)
        .await
        .unwrap();
    let reported = store
        .purge(much_later + REMEMBER + Duration::from_secs(700))
        .await
        .unwrap();
    assert_eq!(
        reported.len(),
        1,
        "the late upload, never confirmed, is reported when forgotten"
    );
}
