//! Real Redis servers for the tests: one node or a 3-master cluster, on free loopback ports,
//! persistence off, stopped when the test (or the whole test binary) ends.

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
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut args = vec![
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
        ];
        args.extend(self.extra.iter().cloned());
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

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        wait_until(Duration::from_secs(10), || !ping(self.port)).expect("redis-server stopped");
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

    /// Starts it again on the same port (its data is gone unless it was started persistent).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
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
        let nodes: Vec<RedisServer> = (0..3)
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
                        "2000".into(),
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
