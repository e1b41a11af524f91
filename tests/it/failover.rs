//! Redis failovers under load: the master is SIGKILLed during a stream of uploads through two
//! gateway replicas, and a Redis replica is promoted (by Sentinel, or by the Cluster itself).
//! Requests meanwhile get a prompt 503, never a wrong answer; the gateways recover by themselves;
//! no record, claim or settle that Redis acknowledged is lost, and no confirmation is forwarded
//! twice.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::{
    redis::{RedisCluster, RedisSentinel, SENTINEL_MASTER},
    *,
};

/// Generous budgets: the stream measures failover, not rate limits or quotas.
const LOAD: &str = "[presign]\nrate_limit_burst = 100000\nrate_limit_period = \"1s\"\n\
    [confirm]\nrate_limit_burst = 100000\nrate_limit_period = \"1s\"\n\
    [quotas.tiers.default]\nmax_outstanding = 200\n";

/// Every replica's stream user; the first one's keys live on the master that is killed.
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The bound on a 503: a presign's admit, record and WAIT each get `operation_timeout` (500ms
/// here), plus the stand-in's answer and scheduling on a shared machine.
const PROMPT: Duration = Duration::from_millis(2500);

#[derive(Debug, Clone)]
struct Step {
    user: &'static str,
    presign: u16,
    presign_took: Duration,
    issued: Option<Issued>,
    confirm: Option<(u16, bool, Duration)>,
    started_after_kill: bool,
}

/// Uploads (presign, then confirm) by each of [`USERS`], one after another per user, all users
/// at once, alternating between the gateways, until `stop`.
fn stream(
    gateways: &[Arc<TestGateway>],
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> (Arc<Mutex<Vec<Step>>>, Vec<tokio::task::JoinHandle<()>>) {
    let steps = Arc::new(Mutex::new(Vec::new()));
    let workers = USERS
        .iter()
        .enumerate()
        .map(|(i, &user)| {
            let gateways: Vec<_> = gateways.to_vec();
            let (killed, stop, done, steps) =
                (killed.clone(), stop.clone(), done.clone(), steps.clone());
            tokio::spawn(async move {
                let token = gateways[0].token(user);
                let mut turn = i;
                while !stop.load(Ordering::SeqCst) {
                    turn += 1;
                    let gw = &gateways[turn % gateways.len()];
                    let started_after_kill = killed.load(Ordering::SeqCst);
                    let started = Instant::now();
                    let response = gw.presign(&token).await;
                    let mut step = Step {
                        user,
                        presign: response.status().as_u16(),
                        presign_took: started.elapsed(),
                        issued: None,
                        confirm: None,
                        started_after_kill,
                    };
                    if step.presign == 200 {
                        let issued = Issued::from_answer(response.json().await.unwrap());
                        let started = Instant::now();
                        let confirmed = gw.confirm(&token, &issued).await;
                        let replayed = confirmed.headers().get("idempotent-replayed").is_some();
                        step.confirm =
                            Some((confirmed.status().as_u16(), replayed, started.elapsed()));
                        if confirmed.status() == 200 && i == 0 && started_after_kill {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        step.issued = Some(issued);
                    }
                    steps.lock().unwrap().push(step);
                }
            })
        })
        .collect();
    (steps, workers)
}

/// Polls `condition` until it holds or `deadline` passes; returns how long it took.
async fn eventually(deadline: Duration, what: &str, condition: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Runs the stream through `gateways`, calls `kill` (the master of [`USERS`]`[0]`) once some
/// uploads went through, then `revive` once the failover is seen; checks every promise.
async fn uploads_through_a_failover(
    gateways: Vec<TestGateway>,
    durable: bool,
    kill: impl FnOnce() + Send + 'static,
    promoted: impl Fn() -> bool + Send + Sync + 'static,
    revive: impl FnOnce() + Send + 'static,
) {
    let gateways: Vec<Arc<TestGateway>> = gateways.into_iter().map(Arc::new).collect();
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let recovered = Arc::new(AtomicUsize::new(0));
    let (steps, workers) = stream(&gateways, killed.clone(), stop.clone(), recovered.clone());

    let warm = steps.clone();
    eventually(
        Duration::from_secs(20),
        "uploads before the kill",
        move || {
            warm.lock()
                .unwrap()
                .iter()
                .filter(|s| s.confirm.is_some())
                .count()
                >= 9
        },
    )
    .await;
    tokio::task::spawn_blocking(kill).await.unwrap();
    killed.store(true, Ordering::SeqCst);
    let promoted = Arc::new(promoted);
    let promotion = {
        let promoted = promoted.clone();
        eventually(
            Duration::from_secs(30),
            "a replica is promoted",
            move || promoted(),
        )
        .await
    };
    tokio::task::spawn_blocking(revive).await.unwrap();
    let after_revive = {
        let recovered = recovered.clone();
        eventually(
            Duration::from_secs(30),
            "uploads succeed again after the failover",
            move || recovered.load(Ordering::SeqCst) >= 3,
        )
        .await
    };
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let steps = steps.lock().unwrap().clone();

    // During the failover: 200 or a prompt 503, nothing else.
    let mut unavailable = 0;
    let mut slowest_503 = Duration::ZERO;
    for step in &steps {
        match step.presign {
            200 => {}
            503 => {
                unavailable += 1;
                slowest_503 = slowest_503.max(step.presign_took);
            }
            other => panic!("presign answered {other}: {step:?}"),
        }
        if let Some((status, _, took)) = step.confirm {
            match status {
                200 => {}
                503 => {
                    unavailable += 1;
                    slowest_503 = slowest_503.max(took);
                }
                other => panic!("confirm answered {other}: {step:?}"),
            }
        }
    }
    assert!(slowest_503 < PROMPT, "a 503 took {slowest_503:?}");
    assert!(
        steps
            .iter()
            .any(|s| s.user == USERS[0] && s.started_after_kill && s.presign == 200),
        "the killed master's user uploads again"
    );

    eprintln!(
        "failover: {} uploads, {unavailable} answers 503 (slowest {slowest_503:?}), promotion seen after {promotion:?}, uploads again {after_revive:?} after the revive",
        steps.len()
    );
    if !durable {
        // Without WAIT, the last writes before the kill may be lost: what follows is not
        // promised (README, "Redis failover").
        return;
    }

    // Afterwards every issued upload confirms: none was lost. Those confirmed before answer the
    // kept answer (their consume was not lost), the others are forwarded now, once.
    let gw = &gateways[0];
    for step in &steps {
        let Some(issued) = &step.issued else { continue };
        let token = gw.token(step.user);
        let again = gw.confirm_while(&token, issued, &[409, 503]).await;
        assert_eq!(again.status(), 200, "{step:?}");
        if step.confirm.is_some_and(|(status, _, _)| status == 200) {
            assert_eq!(
                again.headers()["idempotent-replayed"],
                "true",
                "an acknowledged confirmation was lost: {step:?}"
            );
        }
    }
    let mut forwards: HashMap<String, usize> = HashMap::new();
    for request in gw.forwarded(SUCCESS) {
        let uuid = form_urlencoded::parse(&request.body)
            .find(|(name, _)| name == "uuid")
            .map(|(_, value)| value.into_owned())
            .unwrap();
        *forwards.entry(uuid).or_default() += 1;
    }
    let issued = steps.iter().filter(|s| s.issued.is_some()).count();
    assert_eq!(forwards.len(), issued, "every issued upload forwarded");
    assert!(
        forwards.values().all(|&n| n == 1),
        "a confirmation was forwarded twice: {forwards:?}"
    );
}

fn prefix() -> String {
    format!("failover-{}", uuid::Uuid::new_v4())
}

/// Both gateways of a test, each made by `store` (the Redis options), with [`LOAD`].
async fn two_gateways(
    store: impl Fn(TestGatewayBuilder) -> TestGatewayBuilder,
) -> Vec<TestGateway> {
    let a = store(TestGateway::builder())
        .with_config(LOAD)
        .start()
        .await;
    let b = store(TestGateway::builder())
        .with_config(LOAD)
        .sharing_upstream_with(&a)
        .start()
        .await;
    vec![a, b]
}

const WAIT_FOR_A_REPLICA: &str = "[store.redis]\nwait_for_replicas = 1\n";

/// Sentinel: one master, one replica, three sentinels (down after 1s). With
/// `wait_for_replicas = 1` the promoted master has no replica until the killed node comes back
/// as a replica, so the test restarts it under the new master, as an orchestrator would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_loses_nothing_and_forwards_nothing_twice() {
    let topology = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(RedisSentinel::start)
            .await
            .unwrap(),
    ));
    let (sentinels, old_master) = {
        let t = topology.lock().unwrap();
        (t.sentinel_urls(), t.master.port)
    };
    let prefix = prefix();
    let gateways = two_gateways(|builder| {
        builder
            .with_redis_sentinel(&sentinels, SENTINEL_MASTER, &prefix)
            .with_config(WAIT_FOR_A_REPLICA)
    })
    .await;
    let (kill, promoted, revive) = (topology.clone(), topology.clone(), topology.clone());
    uploads_through_a_failover(
        gateways,
        true,
        move || kill.lock().unwrap().master.kill(),
        move || {
            let t = promoted.lock().unwrap();
            t.master_port() == Some(t.replica.port) && t.replica.role().as_deref() == Some("master")
        },
        move || {
            let mut t = revive.lock().unwrap();
            let master = t.replica.port;
            t.master.start_again_as_replica_of(master);
        },
    )
    .await;
    let t = topology.lock().unwrap();
    assert_eq!(t.master_port(), Some(t.replica.port));
    assert_ne!(t.master_port(), Some(old_master));
}

/// A cluster of three masters with one replica each: the master holding the stream user's slot is
/// killed and its replica promotes itself (automatic failover, `cluster-node-timeout` 1s; no
/// `CLUSTER FAILOVER TAKEOVER`). Then the killed node is restarted: it rejoins as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_under_load_loses_nothing_and_forwards_nothing_twice() {
    let cluster = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(RedisCluster::start_with_replicas)
            .await
            .unwrap(),
    ));
    // The hash tag of USERS[0]'s keys ("alice", hex-encoded).
    let tag = "{u616c696365}";
    let (urls, victim) = {
        let c = cluster.lock().unwrap();
        (c.urls(), c.master_of(tag))
    };
    let prefix = prefix();
    let gateways = two_gateways(|builder| {
        builder
            .with_redis(&urls, true, &prefix)
            .with_config(WAIT_FOR_A_REPLICA)
    })
    .await;
    let (kill, promoted, revive) = (cluster.clone(), cluster.clone(), cluster.clone());
    uploads_through_a_failover(
        gateways,
        true,
        move || kill.lock().unwrap().nodes[victim].kill(),
        move || {
            let c = promoted.lock().unwrap();
            c.healthy() && c.master_of(tag) != victim
        },
        move || revive.lock().unwrap().nodes[victim].start_again(),
    )
    .await;
}

/// What `wait_for_replicas = 1` promises, shown without a failover: while the replica is frozen
/// (SIGSTOP: nothing reaches it), a claim is never forwarded and a presign never handed out, each
/// answered 503 within the operation timeout; once it runs again the upload confirms, forwarded
/// once: the unacknowledged claim was given back. Also measures what the WAITs cost per upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_for_replicas_nothing_is_forwarded_that_a_replica_does_not_hold() {
    let (master, replica) = tokio::task::spawn_blocking(|| {
        let master = crate::support::redis::RedisServer::start();
        let replica = crate::support::redis::RedisServer::start_replica_of(&master);
        replica.wait_until_synced();
        (master, replica)
    })
    .await
    .unwrap();
    let prefix = prefix();
    let gw = TestGateway::builder()
        .with_redis(&[master.url()], false, &prefix)
        .with_config(WAIT_FOR_A_REPLICA)
        .with_config(LOAD)
        .start()
        .await;
    let token = gw.token("alice");
    let issued = gw.issue(&token).await;

    replica.pause();
    let started = Instant::now();
    assert_problem(gw.confirm(&token, &issued).await, 503, "store_unavailable").await;
    assert_problem(gw.presign(&token).await, 503, "store_unavailable").await;
    assert!(started.elapsed() < 2 * PROMPT, "{:?}", started.elapsed());
    assert!(
        gw.forwarded(SUCCESS).is_empty(),
        "a claim no replica acknowledged was forwarded"
    );
    replica.resume();
    let confirmed = gw.confirm_while(&token, &issued, &[503]).await;
    assert_eq!(confirmed.status(), 200);
    assert!(
        confirmed.headers().get("idempotent-replayed").is_none(),
        "forwarded now, for the first time"
    );
    assert_eq!(gw.forwarded(SUCCESS).len(), 1);

    // The cost: the same uploads with and without the WAITs, on the same servers.
    let without = TestGateway::builder()
        .with_redis(&[master.url()], false, &prefix)
        .with_config(LOAD)
        .start()
        .await;
    let mut took = Vec::new();
    for gateway in [&without, &gw] {
        let started = Instant::now();
        for _ in 0..100 {
            let issued = gateway.issue(&token).await;
            assert_eq!(gateway.confirm(&token, &issued).await.status(), 200);
        }
        took.push(started.elapsed() / 100);
    }
    eprintln!(
        "per upload (presign + confirm): {:?} without WAIT, {:?} with wait_for_replicas = 1",
        took[0], took[1]
    );
}

/// Without `wait_for_replicas`, the gateways recover as soon as Sentinel has promoted the
/// replica: nothing else has to come back. (What may be lost then is in the README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_the_gateways_recover_by_themselves() {
    let topology = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(RedisSentinel::start)
            .await
            .unwrap(),
    ));
    let sentinels = topology.lock().unwrap().sentinel_urls();
    let prefix = prefix();
    let gateways =
        two_gateways(|builder| builder.with_redis_sentinel(&sentinels, SENTINEL_MASTER, &prefix))
            .await;
    let (kill, promoted) = (topology.clone(), topology.clone());
    uploads_through_a_failover(
        gateways,
        false,
        move || kill.lock().unwrap().master.kill(),
        move || {
            let t = promoted.lock().unwrap();
            t.master_port() == Some(t.replica.port) && t.replica.role().as_deref() == Some("master")
        },
        || {},
    )
    .await;
}

/// A planned failover (`SENTINEL FAILOVER`): the old master lives on as a read-only replica, so
/// the gateways' connections to it may answer `READONLY` rather than break; either way they must
/// ask the sentinels again. Nothing is lost and nothing restarted, with `wait_for_replicas = 1` (the
/// demoted master is the new master's replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_sentinel_failover_moves_the_gateways_to_the_new_master() {
    let topology = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(RedisSentinel::start)
            .await
            .unwrap(),
    ));
    let sentinels = topology.lock().unwrap().sentinel_urls();
    let prefix = prefix();
    let gateways = two_gateways(|builder| {
        builder
            .with_redis_sentinel(&sentinels, SENTINEL_MASTER, &prefix)
            .with_config(WAIT_FOR_A_REPLICA)
    })
    .await;
    let (failover, promoted) = (topology.clone(), topology.clone());
    uploads_through_a_failover(
        gateways,
        true,
        move || failover.lock().unwrap().failover(),
        move || {
            let t = promoted.lock().unwrap();
            t.master_port() == Some(t.replica.port)
                && t.replica.role().as_deref() == Some("master")
                && t.master.role().as_deref() == Some("slave")
        },
        || {},
    )
    .await;
}
