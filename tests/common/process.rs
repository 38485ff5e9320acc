//! Stopping the services a test started ([`stop`]), and killing those still running when it
//! fails ([`Reap`]). Services started by `Env` are registered with their log, so that a
//! service exiting badly shows why, and so that a pid already waited for (which the system
//! may have handed to another process since) is never signalled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Running services of this test binary and their log files.
static SPAWNED: Mutex<BTreeMap<u32, PathBuf>> = Mutex::new(BTreeMap::new());
/// Pids waited for: free for the system to reuse.
static WAITED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Registers a service just started, logging to `log`.
pub fn spawned(child: &Child, log: PathBuf) {
    WAITED.lock().unwrap().remove(&child.id());
    SPAWNED.lock().unwrap().insert(child.id(), log);
}

/// How `child` exited, if it does within `within` (polled every 50 ms); `None` while it runs.
pub fn exited_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then waits (up to 60 s) for a clean exit; a service that exits otherwise fails
/// the test with the end of its log.
pub fn stop(mut child: Child) {
    let pid = child.id();
    // SAFETY: kill(2) on our own child, not yet waited for, with a valid signal.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let Some(status) = exited_within(&mut child, Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        waited(pid);
        panic!("service did not stop after SIGTERM");
    };
    let log = waited(pid);
    assert!(
        status.success(),
        "service exits 0 on SIGTERM; it exited with {status}{}",
        log.map(|l| format!("\n{}", tail(&l, 60)))
            .unwrap_or_default()
    );
}

/// Marks `pid` waited for; its log, if `Env` started it.
fn waited(pid: u32) -> Option<PathBuf> {
    WAITED.lock().unwrap().insert(pid);
    SPAWNED.lock().unwrap().remove(&pid)
}

/// The last `n` lines of the log file `log`, under a header naming it.
pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last {n} lines)\n{}\n",
        log.file_name().unwrap_or_default().to_string_lossy(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

/// SIGKILLs the services it was given that still run when the test panics: a failed
/// assertion must not leave them running (`stop` is never reached then).
#[derive(Default)]
pub struct Reap(Mutex<Vec<u32>>);

impl Reap {
    pub fn add(&self, service: &Child) {
        self.0.lock().unwrap().push(service.id());
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let waited = WAITED.lock().unwrap_or_else(|p| p.into_inner());
        for pid in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !waited.contains(pid) {
                // SAFETY: kill(2) on a child this test spawned and has not waited for.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}
