//! Services a test runs for itself (so that stopping or freezing them disturbs no other
//! test): a Kafka broker (`scripts/kafka.sh`) and a SecantusDB (`scripts/secantus.sh`) on free
//! ports, stopped when dropped; and the MongoDB store settings for tests.

use std::net::TcpListener;
use std::process::Command;

use super::root;

/// The MongoDB-wire server of the tests: `SLUICE_TEST_MONGODB_URI` (a real replica set) or
/// `SLUICE_TEST_MONGO` (SecantusDB, which `scripts/test-all.sh` starts). Tests that need it
/// are `#[ignore]`d; run with `--include-ignored`, a missing server is an error.
pub fn mongo() -> String {
    std::env::var("SLUICE_TEST_MONGODB_URI")
        .or_else(|_| std::env::var("SLUICE_TEST_MONGO"))
        .expect(
            "this test needs a MongoDB-wire server: run scripts/test-all.sh, or set \
             SLUICE_TEST_MONGO (scripts/secantus.sh start; scripts/secantus.sh uri)",
        )
}

/// A `[mongo]` section with a database of its own.
pub fn mongo_section(uri: &str) -> String {
    format!(
        "[mongo]\nuri = \"{uri}\"\ndatabase = \"t_{:08x}\"\nserver_selection_timeout_ms = 2000\n",
        rand::random::<u32>()
    )
}

/// Runs `bash scripts/<script> args…`, asserting success; returns its stdout.
pub fn script(script: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(root().join("scripts").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A free local port for a server a test starts (a SecantusDB, a metrics listener).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// A free port whose successor (a broker's controller port) is free too.
pub fn free_port_pair() -> u16 {
    free_ports(2)
}

/// The first of `n` consecutive free ports. Below the kernel's ephemeral range (32768 and
/// up on Linux): no client connection is ever given one of these as its source port, so a
/// server started (or restarted) on it a moment later can bind it. Ports from the ephemeral
/// range (`bind(0)`) once failed a chaos run's broker restart ("Address already in use" on
/// the controller port, taken meanwhile by an outgoing connection) and, under load, the
/// start of a conformance test's own SecantusDB. `SLUICE_TEST_PORTS=LO-HI` keeps them in
/// LO..HI instead (several people testing on one machine, each in a range of their own).
fn free_ports(n: u16) -> u16 {
    if let Some((lo, hi)) = std::env::var("SLUICE_TEST_PORTS").ok().and_then(|r| {
        let (lo, hi) = r.split_once('-')?;
        Some((lo.parse().ok()?, hi.parse().ok()?))
    }) {
        return free_ports_in(lo..hi, n);
    }
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if (port..port + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return port;
        }
    }
}

/// A Kafka broker of the test's own.
pub struct OwnBroker {
    pub port: String,
}

impl OwnBroker {
    pub fn start() -> OwnBroker {
        let port = free_port_pair().to_string();
        script("kafka.sh", &["start", &port]);
        OwnBroker { port }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&self) {
        script("kafka.sh", &["stop", &self.port]);
    }

    /// Starts it again on its data (a broker restart, not a new cluster).
    pub fn resume(&self) {
        script("kafka.sh", &["resume", &self.port]);
    }

    /// Freezes (`true`) or thaws the broker: it stops answering while every connection to it
    /// stays open (a coordinator that is unreachable, not gone).
    pub fn freeze(&self, frozen: bool) {
        let pid_file = root().join(format!(".cache/kafka/kafka-{}.pid", self.port));
        let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            assert!(!frozen, "no pid file for the broker on {}", self.port);
            return;
        };
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a signal to the broker process this test started.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = Command::new("bash")
            .arg(root().join("scripts/kafka.sh"))
            .args(["stop", &self.port])
            .output();
    }
}

/// A SecantusDB of the test's own.
pub struct OwnSecantus {
    pub port: String,
    pub uri: String,
    pub pid: i32,
}

impl OwnSecantus {
    pub fn start() -> OwnSecantus {
        Self::start_on(free_port())
    }

    /// A SecantusDB of the test's own on `port`.
    fn start_on(port: u16) -> OwnSecantus {
        let port = port.to_string();
        script("secantus.sh", &["start", &port]);
        let uri = script("secantus.sh", &["uri", &port]);
        let pid =
            std::fs::read_to_string(root().join(format!(".cache/secantus/secantus-{port}.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        OwnSecantus { port, uri, pid }
    }

    /// Freezes (`true`) or thaws the server: an outage in which connections stay open.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a signal to the server process this test started.
        unsafe { libc::kill(self.pid, sig) };
    }
}

impl Drop for OwnSecantus {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = Command::new("bash")
            .arg(root().join("scripts/secantus.sh"))
            .args(["stop", &self.port])
            .output();
    }
}

impl OwnBroker {
    /// [`OwnBroker::start`] with `env` for `scripts/kafka.sh` (e.g. the `KAFKA_SSL_*` listener
    /// settings). `resume` does not pass them again.
    pub fn start_with_env(env: &[(&str, String)]) -> OwnBroker {
        let port = free_port_pair().to_string();
        let out = Command::new("bash")
            .arg(root().join("scripts/kafka.sh"))
            .args(["start", &port])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka.sh start {port} with {:?}: {}",
            env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        OwnBroker { port }
    }
}

/// The first of `n` consecutive free ports in `range` (a range set aside for one kind of
/// server, so that parallel test sessions on one machine stay apart).
pub fn free_ports_in(range: std::ops::Range<u16>, n: u16) -> u16 {
    for _ in 0..1000 {
        let port = range.start + rand::random::<u16>() % (range.len() as u16 - n);
        if (port..port + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return port;
        }
    }
    panic!("no {n} consecutive free ports in {range:?}");
}

/// A three-node Kafka cluster of the test's own (`scripts/kafka.sh cluster-start`): each node
/// broker and controller, replication 3, `min.insync.replicas` 2, internal topics replicated
/// 3. Its nodes can be killed, frozen and restarted one at a time; stopped when dropped.
pub struct OwnCluster {
    /// Node 1's broker port; node N listens on `base + 2(N-1)`, its controller one above.
    pub base: String,
    /// `bootstrap.servers` for all three nodes.
    pub bootstrap: String,
}

impl OwnCluster {
    /// Starts a fresh cluster on six free ports of 21100..21200 (where this machine's test
    /// clusters live).
    pub fn start() -> OwnCluster {
        let base = free_ports_in(21100..21200, 6).to_string();
        let bootstrap = script("kafka.sh", &["cluster-start", &base]);
        OwnCluster { base, bootstrap }
    }

    /// SIGKILL node `n` (1..=3).
    pub fn kill(&self, n: u8) {
        script("kafka.sh", &["cluster-kill", &self.base, &n.to_string()]);
    }

    /// SIGSTOP (`true`) or SIGCONT node `n`.
    pub fn freeze(&self, n: u8, frozen: bool) {
        let cmd = if frozen {
            "cluster-freeze"
        } else {
            "cluster-thaw"
        };
        script("kafka.sh", &[cmd, &self.base, &n.to_string()]);
    }

    /// Starts node `n` again on its data; returns once it serves.
    pub fn restart(&self, n: u8) {
        script("kafka.sh", &["cluster-restart", &self.base, &n.to_string()]);
    }

    /// The node that coordinates `id`, as the cluster answers FindCoordinator: `kind` is
    /// `"transaction"` (a transactional.id) or `"group"` (a consumer group).
    pub fn coordinator(&self, kind: &str, id: &str) -> u8 {
        let out = script("kafka.sh", &["coordinator", &self.base, kind, id]);
        out.parse()
            .unwrap_or_else(|_| panic!("coordinator of {kind} {id}: {out:?}"))
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/kafka.sh"))
            .args(["cluster-stop", &self.base])
            .output();
    }
}

impl OwnSecantus {
    /// [`OwnSecantus::start`] on a free port of `range`.
    pub fn start_in(range: std::ops::Range<u16>) -> OwnSecantus {
        Self::start_on(free_ports_in(range, 1))
    }
}
