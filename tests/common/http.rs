//! A running `sluice run --follow` with its HTTP listener, and plain HTTP helpers.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub use super::services::free_port;

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET → (status, body); `None` while nothing listens yet.
pub fn get(url: &str, query: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut req = agent().get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    let mut resp = req.call().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.body_mut().read_to_string().ok()?))
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `sluice run --follow` on an input file the test appends to.
pub struct Sluice {
    pub child: Child,
    pub input: std::fs::File,
    pub port: u16,
}

impl Sluice {
    /// Starts sluice with `extra_config` appended to a config with a listener.
    pub fn start(dir: &Path, extra_config: &str) -> Sluice {
        Sluice::start_with(dir, "", extra_config)
    }

    /// [`Sluice::start`] with more `[observability]` settings.
    pub fn start_with(dir: &Path, observability: &str, extra_config: &str) -> Sluice {
        let port = free_port();
        let cfg = write_config(
            dir,
            &format!(
                "[observability]\nlisten = \"127.0.0.1:{port}\"\nhealth_interval_ms = 300\nhealth_timeout_ms = 250\n{observability}\
                 [embedded]\nbusy_timeout_ms = 100\n[collections.words]\nkey = \"text\"\n\
                 [collections.definitions]\nkey = \"id\"\nparent = \"words\"\nparent_field = \"word\"\n{extra_config}"
            ),
        );
        let input = dir.join("in.jsonl");
        let file = std::fs::File::create(&input).unwrap();
        let child = sluice()
            .args(["run", "--follow"])
            .args(run_args(
                &cfg,
                &input,
                &dir.join("out.jsonl"),
                None,
                &dir.join("s.db"),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Sluice {
            child,
            input: file,
            port,
        };
        wait_for("/healthz", Duration::from_secs(30), || {
            s.get("/healthz").is_some_and(|(c, _)| c == 200)
        });
        s
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&format!("http://127.0.0.1:{}{path}", self.port), &[])
    }

    pub fn send(&mut self, line: &str) {
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.input.flush().unwrap();
    }

    pub fn send_creates(&mut self, prefix: &str, n: usize) {
        for i in 0..n {
            let items: Vec<_> = (0..5)
                .map(|j| serde_json::json!({"text": format!("{prefix}{i}-{j}")}))
                .collect();
            let r = serde_json::json!({"request_id": format!("{prefix}{i}"), "collection": "words", "op": "create", "items": items});
            self.send(&r.to_string());
        }
    }

    /// SIGTERM, and a clean exit.
    pub fn finish(mut self) {
        // SAFETY: kill(2) on the child we spawned, with a valid signal; no memory effects.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "sluice exited with {status} after SIGTERM"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
