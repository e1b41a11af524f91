//! Many replicas, one truth: gateways sharing a real Redis (one node or a cluster) agree on
//! issued uploads, rate limits and quotas; Redis faults fail closed and heal by themselves.

use std::time::Duration;

use kizen_gateway::standin::{Endpoint, Scripted};
use serde_json::{Value, json};

use crate::support::{
    redis::{RedisCluster, RedisServer},
    *,
};

fn prefix() -> String {
    format!("replicas-{}", uuid::Uuid::new_v4())
}

/// Two gateways on one Redis, in front of one upstream.
async fn two_replicas(redis: &RedisServer, extra: &str) -> (TestGateway, TestGateway) {
    let prefix = prefix();
    let a = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .with_config(extra)
        .start()
        .await;
    let b = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .with_config(extra)
        .sharing_upstream_with(&a)
        .start()
        .await;
    (a, b)
}

#[tokio::test]
async fn presign_on_one_replica_confirm_on_the_other() {
    let redis = RedisServer::start();
    let (a, b) = two_replicas(&redis, "").await;
    let token = a.token("alice");
    let issued = a.issue(&token).await;

    assert_problem(
        b.confirm(&b.token("bob"), &issued).await,
        404,
        "upload_not_found",
    )
    .await;
    let confirmed = b.confirm(&token, &issued).await;
    assert_eq!(confirmed.status(), 200);
    let repeat = a.confirm(&token, &issued).await;
    assert_eq!(repeat.status(), 200);
    assert_eq!(
        repeat.headers()["idempotent-replayed"],
        "true",
        "replica A knows B's confirmation"
    );
    assert_eq!(a.forwarded(SUCCESS).len(), 1);
}

#[tokio::test]
async fn twenty_concurrent_confirmations_across_two_replicas_forward_exactly_one() {
    let redis = RedisServer::start();
    let (a, b) = two_replicas(&redis, "").await;
    let token = a.token("alice");
    let issued = a.issue(&token).await;

    let attempts: Vec<_> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                a.confirm_task(&token, &issued)
            } else {
                b.confirm_task(&token, &issued)
            }
        })
        .collect();
    let mut fresh = 0;
    for attempt in attempts {
        let response = attempt.await.unwrap();
        match response.status().as_u16() {
            200 if response.headers().get("idempotent-replayed").is_none() => fresh += 1,
            200 | 409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(
        a.forwarded(SUCCESS).len(),
        1,
        "exactly one confirmation reached upstream"
    );
}

#[tokio::test]
async fn the_rate_limit_is_shared_across_replicas() {
    let redis = RedisServer::start();
    let (a, b) = two_replicas(
        &redis,
        "[presign]\nrate_limit_burst = 4\nrate_limit_period = \"1h\"\n",
    )
    .await;
    let token = a.token("alice");
    let mut remaining = Vec::new();
    for i in 0..4 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let response = gateway.presign(&token).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "4");
        remaining.push(
            response.headers()["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["3", "2", "1", "0"]);
    for gateway in [&a, &b] {
        let refused = gateway.presign(&token).await;
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        assert_eq!(refused.headers()["ratelimit-remaining"], "0");
        let reset: u64 = refused.headers()["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset >= retry_after);
        assert_problem(refused, 429, "rate_limited").await;
    }
    assert_eq!(
        a.forwarded(PRESIGN).len(),
        4,
        "N across both replicas, not 2N"
    );
    assert_eq!(
        b.presign(&b.token("bob")).await.status(),
        200,
        "another user has a budget of their own"
    );
}

#[tokio::test]
async fn an_upload_survives_a_gateway_restart() {
    let redis = RedisServer::start();
    let prefix = prefix();
    let first = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .start()
        .await;
    let token = first.token("alice");
    let issued = first.issue(&token).await;
    let second = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .sharing_upstream_with(&first)
        .start()
        .await;
    let standin_requests = first.standin.clone();
    first.stop().await.unwrap();

    assert_eq!(second.confirm(&token, &issued).await.status(), 200);
    assert_eq!(standin_requests.requests_to(SUCCESS).len(), 1);
}

#[tokio::test]
async fn redis_down_fails_closed_and_the_gateway_heals_when_it_returns() {
    let mut redis = RedisServer::start();
    let gw = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix())
        .start()
        .await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    assert_eq!(gw.forwarded(PRESIGN).len(), 1);

    redis.stop();
    let presign = gw.presign(&token).await;
    assert_eq!(presign.headers()["retry-after"], "5");
    assert_problem(presign, 503, "store_unavailable").await;
    assert_problem(gw.confirm(&token, &issued).await, 503, "store_unavailable").await;
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        1,
        "a presign that cannot be recorded is never forwarded"
    );
    assert!(
        gw.forwarded(SUCCESS).is_empty(),
        "a confirmation that cannot be checked is never sent"
    );

    // Back, empty (persistence is off): the very next presign and confirm work, no restart.
    redis.restart();
    let issued = gw.issue(&token).await;
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
}

#[tokio::test]
async fn a_redis_cluster_carries_the_whole_flow() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let prefix = prefix();
    let config = "[presign]\nrate_limit_burst = 3\nrate_limit_period = \"1h\"\n";
    let a = TestGateway::builder()
        .with_redis(&cluster.urls(), true, &prefix)
        .with_config(config)
        .start()
        .await;
    let b = TestGateway::builder()
        .with_redis(&cluster.urls(), true, &prefix)
        .with_config(config)
        .sharing_upstream_with(&a)
        .start()
        .await;
    // Users whose keys land in different slots, hostile characters included.
    for user in ["alice", "bob:{x}", "ü *"] {
        let token = a.token(user);
        let issued = a.issue(&token).await;
        assert_eq!(b.confirm(&token, &issued).await.status(), 200, "{user}");
        assert_eq!(b.presign(&token).await.status(), 200);
        assert_eq!(a.presign(&token).await.status(), 200);
        assert_problem(b.presign(&token).await, 429, "rate_limited").await;
    }
}

/// Quotas: the same rules on the memory store and on Redis.
async fn quotas_by_count_and_bytes_per_tier(gw: TestGateway) {
    let basic = gw.token("basic-user");
    for _ in 0..2 {
        let issued = gw.issue(&basic).await;
        assert_eq!(gw.confirm(&basic, &issued).await.status(), 200);
    }
    let refused = gw.presign(&basic).await;
    assert!(
        refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body = assert_problem(refused, 429, "daily_upload_quota_exceeded").await;
    assert_eq!(body["quota"]["name"], "max_uploads_per_day");
    assert_eq!(body["quota"]["tier"], "default");
    assert_eq!(body["quota"]["limit"], 2);
    assert!(body["quota"]["resets_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        gw.forwarded(PRESIGN).len(),
        2,
        "refused before calling upstream"
    );

    // The pro tier counts bytes (Kizen's size_bytes), not uploads.
    let pro =
        hs256(&json!({ "sub": "pro-user", "plan": "pro", "iat": now(), "exp": now() + 3600 }));
    for _ in 0..2 {
        let issued = gw.issue(&pro).await;
        gw.standin.script(
            Endpoint::Success,
            Scripted::Respond {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: json!({ "id": issued.s3object_id, "key": issued.key, "size_bytes": 15 })
                    .to_string(),
            },
        );
        assert_eq!(gw.confirm(&pro, &issued).await.status(), 200);
    }
    let body = assert_problem(gw.presign(&pro).await, 429, "daily_byte_quota_exceeded").await;
    assert_eq!(body["quota"]["tier"], "pro");
    assert_eq!(body["quota"]["limit"], 20);

    // An unknown tier is the default tier; open uploads are capped per tier too.
    let gold =
        hs256(&json!({ "sub": "gold-user", "plan": "gold", "iat": now(), "exp": now() + 3600 }));
    gw.issue(&gold).await;
    gw.issue(&gold).await;
    let body: Value =
        assert_problem(gw.presign(&gold).await, 429, "too_many_outstanding_uploads").await;
    assert_eq!(body["quota"]["name"], "max_outstanding");

    // A new UTC day resets the daily counters.
    gw.clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(gw.presign(&basic).await.status(), 200);
    assert_eq!(gw.presign(&pro).await.status(), 200);
}

const QUOTAS: &str = r#"
[quotas]
tier_claim = "plan"
[quotas.tiers.default]
max_outstanding = 2
max_uploads_per_day = 2
[quotas.tiers.pro]
max_outstanding = 10
max_bytes_per_day = 20
"#;

#[tokio::test]
async fn quotas_on_the_memory_store() {
    quotas_by_count_and_bytes_per_tier(TestGateway::builder().with_config(QUOTAS).start().await)
        .await;
}

#[tokio::test]
async fn quotas_on_redis_survive_a_gateway_restart() {
    let redis = RedisServer::start();
    let prefix = prefix();
    let gw = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .with_config(QUOTAS)
        .start()
        .await;
    let token = gw.token("basic-user");
    for _ in 0..2 {
        let issued = gw.issue(&token).await;
        assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
    }
    let restarted = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .with_config(QUOTAS)
        .sharing_upstream_with(&gw)
        .start()
        .await;
    gw.stop().await.unwrap();
    assert_problem(
        restarted.presign(&token).await,
        429,
        "daily_upload_quota_exceeded",
    )
    .await;

    let fresh = TestGateway::builder()
        .with_redis(&[redis.url()], false, &self::prefix())
        .with_config(QUOTAS)
        .start()
        .await;
    quotas_by_count_and_bytes_per_tier(fresh).await;
}

#[tokio::test]
async fn a_presign_refused_by_a_quota_spends_no_rate_budget() {
    let gw = TestGateway::builder()
        .with_rate_limit(2, "1h")
        .with_config("[quotas.tiers.default]\nmax_outstanding = 1\n")
        .start()
        .await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;
    for _ in 0..3 {
        assert_problem(
            gw.presign(&token).await,
            429,
            "too_many_outstanding_uploads",
        )
        .await;
    }
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
    let response = gw.presign(&token).await;
    assert_eq!(
        response.status(),
        200,
        "the budget of 2 was not spent by the refusals"
    );
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
}

/// Alice confirms on replica A; `fail` breaks Redis after Kizen received the call and before it
/// answers. The client must still hear 200, and replica B a prompt 503, never a second forward.
/// Then `heal` brings Redis back, the clocks move on by `later`, and the confirmation must end
/// recorded once: replayed, with Kizen having seen one call.
async fn kizen_accepts_while_redis_fails(
    redis: &mut RedisServer,
    fail: fn(&mut RedisServer),
    heal: fn(&mut RedisServer),
    later: Duration,
) {
    let (a, b) = two_replicas(redis, "").await;
    let token = a.token("alice");
    let issued = a.issue(&token).await;
    let kizen_answers = std::sync::Arc::new(tokio::sync::Notify::new());
    a.standin.script(
        Endpoint::Success,
        Scripted::AfterSignal(kizen_answers.clone()),
    );
    let first = a.confirm_task(&token, &issued);
    a.standin.wait_for_requests(SUCCESS, 1).await;
    fail(redis);
    kizen_answers.notify_one();
    assert_eq!(first.await.unwrap().status(), 200);

    let started = std::time::Instant::now();
    assert_problem(b.confirm(&token, &issued).await, 503, "store_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails closed, promptly"
    );
    assert_eq!(a.forwarded(SUCCESS).len(), 1);

    heal(redis);
    a.clock.advance(later);
    b.clock.advance(later);
    let replay = b.confirm_while(&token, &issued, &[409, 503]).await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(a.forwarded(SUCCESS).len(), 1, "Kizen saw one call");
}

/// Redis freezes (SIGSTOP) before the gateway records Kizen's answer: once it runs again, the
/// background retry (or the timed-out write itself, which Redis executes on waking) records the
/// outcome exactly once.
#[tokio::test]
async fn a_redis_pause_between_kizens_answer_and_the_settle_never_forwards_twice() {
    let mut redis = RedisServer::start();
    kizen_accepts_while_redis_fails(&mut redis, |r| r.pause(), |r| r.resume(), Duration::ZERO)
        .await;
}

/// Redis goes down before the gateway records Kizen's answer. Before this was fixed the claim
/// lapsed with its lease and a retry was forwarded again; now the claim holds until its own
/// settle lands, which the gateway retries until Redis is back, however late.
#[tokio::test]
async fn a_redis_outage_between_kizens_answer_and_the_settle_never_forwards_twice() {
    let mut redis = RedisServer::start_persistent();
    let past_the_lease = Duration::from_secs(300);
    kizen_accepts_while_redis_fails(
        &mut redis,
        |r| r.stop(),
        |r| r.start_again(),
        past_the_lease,
    )
    .await;
}

/// Redis work per upload: a presign is two round trips (quotas and budget in one script, then the
/// record), a confirmation two (budget and claim, then the settle).
#[tokio::test]
async fn a_presign_and_a_confirmation_are_two_redis_round_trips_each() {
    let redis = RedisServer::start();
    let gw = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix())
        .start()
        .await;
    let token = gw.token("alice");
    // The first use loads the scripts.
    let warm = gw.issue(&token).await;
    assert_eq!(gw.confirm(&token, &warm).await.status(), 200);

    let before = redis.script_calls();
    let zadds = redis.command_calls("zadd");
    let issued = gw.issue(&token).await;
    let after_presign = redis.script_calls();
    assert_eq!(gw.confirm(&token, &issued).await.status(), 200);
    let after_confirm = redis.script_calls();
    assert_eq!(after_presign - before, 2, "presign: admit, record");
    assert_eq!(after_confirm - after_presign, 2, "confirm: claim, consume");
    // Besides: the expiry index's entry (sent with the record, no round trip of its own) and the
    // record script's ZADD into the user's open set.
    assert_eq!(
        redis.command_calls("zadd") - zadds,
        2,
        "one index entry per upload"
    );
}

/// Lifecycle parity: an upload forgotten unconfirmed is counted in `uploads_expired` (and
/// audited `upload_expired`) once, whichever replica sweeps it; a confirmed one is forgotten
/// silently; `store_entries` counts what is held.
async fn expired_uploads_are_reported_once(gateways: &[TestGateway]) {
    const EXPIRED: &str = "kizen_gateway_uploads_expired_total";
    const ENTRIES: &str = "kizen_gateway_store_entries";
    let gw = &gateways[0];
    let token = gw.token("alice");
    gw.issue(&token).await;
    let confirmed = gw.issue(&token).await;
    assert_eq!(gw.confirm(&token, &confirmed).await.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(gw, ENTRIES).await != 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "store_entries counts both uploads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Past the window (at most a day) and the memory of it (1h).
    gw.clock.advance(Duration::from_secs(26 * 3600));
    loop {
        let mut entries = 0.0;
        for gateway in gateways {
            entries += metric(gateway, ENTRIES).await;
        }
        if entries == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeps forget both uploads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reported = 0.0;
    for gateway in gateways {
        reported += metric(gateway, EXPIRED).await;
    }
    assert_eq!(
        reported, 1.0,
        "the unconfirmed upload, reported once in all"
    );
}

const QUICK_SWEEPS: &str = "[store]\nsweep_interval = \"20ms\"\n";

#[tokio::test]
async fn expired_uploads_are_reported_once_by_the_memory_store() {
    let gw = TestGateway::builder()
        .with_config(QUICK_SWEEPS)
        .with_admin()
        .start()
        .await;
    expired_uploads_are_reported_once(&[gw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_uploads_are_reported_once_across_redis_replicas() {
    let redis = RedisServer::start();
    let prefix = prefix();
    let a = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .with_config(QUICK_SWEEPS)
        .with_admin()
        .start()
        .await;
    let b = TestGateway::builder()
        .with_redis(&[redis.url()], false, &prefix)
        .with_config(QUICK_SWEEPS)
        .with_admin()
        .sharing_upstream_with(&a)
        .start()
        .await;
    expired_uploads_are_reported_once(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_uploads_are_reported_once_across_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let prefix = prefix();
    let a = TestGateway::builder()
        .with_redis(&cluster.urls(), true, &prefix)
        .with_config(QUICK_SWEEPS)
        .with_admin()
        .start()
        .await;
    let b = TestGateway::builder()
        .with_redis(&cluster.urls(), true, &prefix)
        .with_config(QUICK_SWEEPS)
        .with_admin()
        .sharing_upstream_with(&a)
        .start()
        .await;
    expired_uploads_are_reported_once(&[a, b]).await;
}
