//! A SecantusDB of a test's own (`scripts/secantus.sh`), for cases the shared server cannot
//! host: server settings of their own, or a server the test freezes.

use std::process::Command;

/// A SecantusDB on a free port, stopped on drop.
pub struct OwnServer {
    port: String,
    pid: String,
    pub uri: String,
}

impl OwnServer {
    /// Starts one with `args` (SecantusDB's own options, e.g. `--cache-size 24M`).
    pub fn start(args: &str) -> OwnServer {
        // Gated like the suite: SLUICE_TEST_MONGO says SecantusDB is installed here.
        crate::mongo_uri();
        let port = free_port().to_string();
        secantus(&["start", &port], &[("SECANTUS_ARGS", args)]);
        let uri = secantus(&["uri", &port], &[]);
        let pid = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../.cache/secantus/secantus-{port}.pid")),
        )
        .expect("secantus.sh writes the server's pid")
        .trim()
        .to_string();
        OwnServer { port, pid, uri }
    }

    /// Freezes (`true`) or thaws the server: an outage in which connections stay open and
    /// every operation waits.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &self.pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.pid);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid]).status();
        let _ = secantus(&["stop", &self.port], &[]);
    }
}

fn secantus(args: &[&str], env: &[(&str, &str)]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/secantus.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "secantus.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A free port below the kernel's ephemeral range (32768 and up), as the end-to-end tests'
/// `free_port`: a port from `bind(0)` can be taken by an outgoing connection before the
/// server binds it, which once failed a server's start under load.
fn free_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    (0..12_000u32)
        .map(|i| 20_000 + (seed.wrapping_add(i.wrapping_mul(7_919)) % 12_000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port between 20000 and 31999")
}
