//! Real Redis servers for the tests: one node, a 3-master cluster (with or without one replica
//! per master), or a master, a replica and three sentinels; on free loopback ports, persistence
//! off, stopped when the test (or the whole test binary) ends.

use std::{
    net::TcpListener as StdListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::temp_dir;

/// A `redis-server` child. It is started under a shell that kills it when its stdin closes, so
/// that a server outliving its test binary (a static, a panic) still goes away.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    pid: String,
    dir: PathBuf,
    extra: Vec<String>,
    /// A sentinel: started from this config file (which it rewrites) in sentinel mode.
    sentinel_conf: Option<PathBuf>,
}

/// A port that is free now, and whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && StdListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(free_port(), Vec::new())
    }

    /// A server that keeps its data across [`RedisServer::restart`] (append-only file, synced on
    /// every write).
    pub fn start_persistent() -> Self {
        let extra = ["--appendonly", "yes", "--appendfsync", "always"];
        Self::start_with(free_port(), extra.map(str::to_owned).to_vec())
    }

    fn start_with(port: u16, extra: Vec<String>) -> Self {
        let dir = temp_dir(&format!("redis-{port}"));
        let mut server = Self {
            port,
            child: None,
            pid: String::new(),
            dir,
            extra,
            sentinel_conf: None,
        };
        server.spawn();
        server
    }

    /// A replica of `master`.
    pub fn start_replica_of(master: &RedisServer) -> Self {
        let extra = ["--replicaof", "127.0.0.1", &master.port.to_string()];
        Self::start_with(free_port(), extra.map(str::to_owned).to_vec())
    }

    /// A sentinel watching `master` as `name`, quick to act: the master is deemed down after
    /// 1s of silence (shorter deems a busy master on a loaded machine down), and a failover is
    /// retried after 2s.
    pub fn start_sentinel(master: &RedisServer, name: &str) -> Self {
        let port = free_port();
        let dir = temp_dir(&format!("sentinel-{port}"));
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 2000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.display(),
                master.port
            ),
        )
        .unwrap();
        let mut server = Self {
            port,
            child: None,
            pid: String::new(),
            dir,
            extra: Vec::new(),
            sentinel_conf: Some(conf),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut args = match &self.sentinel_conf {
            Some(conf) => vec![conf.display().to_string(), "--sentinel".to_owned()],
            None => self.server_args(),
        };
        args.extend(self.extra.iter().cloned());
        self.spawn_with(&args);
    }

    fn server_args(&self) -> Vec<String> {
        vec![
            "--port".to_owned(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            self.dir.display().to_string(),
        ]
    }

    fn spawn_with(&mut self, args: &[String]) {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "redis-server {} >/dev/null 2>&1 & pid=$!; read -r _; kill $pid; wait $pid",
            quoted.join(" ")
        );
        let child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), || ping(self.port)).expect("redis-server answers PING");
        self.pid = redis_cli(self.port, &["INFO", "server"])
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("process_id:").map(|p| p.trim().to_owned()))
            })
            .expect("redis-server reports its pid");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a stopped server again on the same port and folder.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts a stopped (data-less) server again as a replica of the node on `master_port`, as an
    /// orchestrator brings a failed Redis pod back under the current master: started as a
    /// master instead, it would be an empty master until Sentinel converts it, and a second
    /// failover meanwhile could promote it and wipe the data.
    pub fn start_again_as_replica_of(&mut self, master_port: u16) {
        self.extra.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master_port.to_string(),
        ]);
        self.spawn();
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        wait_until(Duration::from_secs(10), || !ping(self.port)).expect("redis-server stopped");
    }

    /// Kills the server outright (SIGKILL: no shutdown, no last words to its replicas or
    /// clients beyond the kernel closing its sockets) and waits until it is gone.
    pub fn kill(&mut self) {
        self.signal("KILL");
        wait_until(Duration::from_secs(10), || !ping(self.port)).expect("redis-server killed");
    }

    /// Waits until this replica has synced with its master.
    pub fn wait_until_synced(&self) {
        wait_until(Duration::from_secs(20), || {
            redis_cli(self.port, &["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        })
        .expect("the replica syncs");
    }

    /// `master` or `slave`, as the server reports its role now.
    pub fn role(&self) -> Option<String> {
        let info = redis_cli(self.port, &["INFO", "replication"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("role:").map(|r| r.trim().to_owned()))
    }

    /// Freezes the server (SIGSTOP): connections stay open, commands wait unanswered, as in a
    /// long GC-like stall or a VM pause.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server run again (SIGCONT); it then executes what was sent meanwhile.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// Scripts the server has been asked to run so far (EVAL and EVALSHA): what the gateway
    /// sends on its request path, one per round trip (commands a script runs count apart).
    pub fn script_calls(&self) -> u64 {
        let stats = redis_cli(self.port, &["INFO", "commandstats"]).expect("INFO answers");
        stats
            .lines()
            .filter(|line| {
                line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:")
            })
            .filter_map(|line| {
                let calls = line.split("calls=").nth(1)?.split(',').next()?;
                calls.parse::<u64>().ok()
            })
            .sum()
    }

    /// Calls of one command the server has answered so far, scripts' own calls included (e.g.
    /// `zadd`).
    pub fn command_calls(&self, command: &str) -> u64 {
        let stats = redis_cli(self.port, &["INFO", "commandstats"]).expect("INFO answers");
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Starts it again on the same port (its data is gone unless it was started persistent).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A server left paused by a failing test would ignore the shell's SIGTERM forever.
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid])
                .stderr(Stdio::null())
                .status();
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `condition` (a readiness probe of a process we started) until it holds.
fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(())
}

fn ping(port: u16) -> bool {
    redis_cli(port, &["PING"]).is_some_and(|out| out.trim() == "PONG")
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Three masters, no replicas, every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(0, 2000)
    }

    /// Three masters with one replica each; a replica takes over its master's slots by itself
    /// 1s (`cluster-node-timeout`) plus its election delay after the master fell silent.
    pub fn start_with_replicas() -> Self {
        Self::start_with(1, 1000)
    }

    fn start_with(replicas: usize, node_timeout_ms: u64) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                let port = free_port();
                RedisServer::start_with(
                    port,
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        format!("nodes-{port}.conf"),
                        "--cluster-node-timeout".into(),
                        node_timeout_ms.to_string(),
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed");
        assert!(created.success(), "redis-cli --cluster create");
        for node in &nodes {
            wait_until(Duration::from_secs(20), || {
                redis_cli(node.port, &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            })
            .expect("the cluster converges");
        }
        let cluster = Self { nodes };
        if replicas > 0 {
            // Every replica has synced with its master: a failover then has data to promote.
            for node in &cluster.nodes {
                wait_until(Duration::from_secs(20), || {
                    redis_cli(node.port, &["INFO", "replication"]).is_some_and(|info| {
                        info.contains("role:master") && info.contains("connected_slaves:1")
                            || info.contains("master_link_status:up")
                    })
                })
                .expect("the replicas sync");
            }
        }
        cluster
    }

    /// The master that serves the slot of `key` now, by `CLUSTER NODES` as any live node sees it.
    pub fn master_of(&self, key: &str) -> usize {
        let (slot, nodes) = self
            .nodes
            .iter()
            .find_map(|n| {
                let slot = redis_cli(n.port, &["CLUSTER", "KEYSLOT", key])?;
                Some((
                    slot.trim().parse::<u16>().ok()?,
                    redis_cli(n.port, &["CLUSTER", "NODES"])?,
                ))
            })
            .expect("a node answers");
        let port = nodes
            .lines()
            .filter(|line| line.split(' ').nth(2).is_some_and(|f| f.contains("master")))
            .find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let serves = fields[8..].iter().any(|range| {
                    let mut ends = range.split('-').map(|n| n.parse::<u16>().ok());
                    match (ends.next().flatten(), ends.next()) {
                        (Some(start), Some(Some(end))) => (start..=end).contains(&slot),
                        (Some(single), None) => single == slot,
                        _ => false,
                    }
                });
                serves.then(|| fields[1].split(['@', ':']).nth(1)?.parse::<u16>().ok())?
            })
            .expect("a master serves the slot");
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// Whether every live node reports every slot served (`cluster_state:ok`).
    pub fn healthy(&self) -> bool {
        self.nodes.iter().all(|n| {
            !ping(n.port)
                || redis_cli(n.port, &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
        })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// One master, one replica and three sentinels (quorum 2) watching them as `mymaster`.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinel {
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = RedisServer::start_replica_of(&master);
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_sentinel(&master, SENTINEL_MASTER))
            .collect();
        // Until the sentinels know the replica and one another, they could not fail over.
        for sentinel in &sentinels {
            wait_until(Duration::from_secs(30), || {
                redis_cli(sentinel.port, &["SENTINEL", "MASTER", SENTINEL_MASTER]).is_some_and(
                    |info| {
                        let fields: Vec<&str> = info.lines().map(str::trim).collect();
                        let value = |name: &str| {
                            fields
                                .iter()
                                .position(|f| *f == name)
                                .and_then(|i| fields.get(i + 1).copied())
                        };
                        value("num-slaves") == Some("1")
                            && value("num-other-sentinels") == Some("2")
                    },
                )
            })
            .expect("the sentinels discover the replica and one another");
        }
        wait_until(Duration::from_secs(20), || {
            redis_cli(replica.port, &["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        })
        .expect("the replica syncs");
        Self {
            master,
            replica,
            sentinels,
        }
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// A graceful failover (`SENTINEL FAILOVER`): the master lives on, demoted to a replica.
    pub fn failover(&self) {
        let answer = redis_cli(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", SENTINEL_MASTER],
        );
        assert_eq!(
            answer.as_deref().map(str::trim),
            Some("OK"),
            "SENTINEL FAILOVER"
        );
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let answer = redis_cli(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
            )?;
            answer.lines().nth(1)?.trim().parse().ok()
        })
    }
}
