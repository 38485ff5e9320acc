//! Readiness: is this instance able to make progress? Fed by the health-check task (store,
//! broker), the source (partitions assigned) and the commit stage (progress), read by
//! `/readyz` and exported as `sluice_ready`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Shared readiness state.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    store_ok: AtomicBool,
    store_error: Mutex<String>,
    source_ok: AtomicBool,
    /// What is wrong with the consumer group as a whole (partitions left unowned).
    group_problem: Mutex<Option<String>>,
    /// Milliseconds since start of the last commit-stage progress.
    last_progress_ms: AtomicU64,
    in_flight: AtomicUsize,
    stall_after: Duration,
}

/// The readiness verdict with its reasons.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// True when every check passes.
    pub ready: bool,
    /// What is wrong, one line each (empty when ready).
    pub reasons: Vec<String>,
}

impl Health {
    /// Not ready until the first store check passes; stalled after `stall_after` without
    /// progress while records are in flight.
    pub fn new(stall_after: Duration) -> Self {
        Health {
            started: Instant::now(),
            store_ok: AtomicBool::new(false),
            store_error: Mutex::new("not checked yet".into()),
            source_ok: AtomicBool::new(true),
            group_problem: Mutex::new(None),
            last_progress_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            stall_after,
        }
    }

    /// Records the outcome of a store health check.
    pub fn set_store(&self, result: Result<(), String>) {
        let ok = result.is_ok();
        if let (Err(e), Ok(mut slot)) = (result, self.store_error.lock()) {
            *slot = e;
        }
        self.store_ok.store(ok, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STORE_UP).set(if ok { 1.0 } else { 0.0 });
    }

    /// Records whether the source can deliver (broker reachable, partitions assigned).
    pub fn set_source(&self, ok: bool) {
        self.source_ok.store(ok, Ordering::Relaxed);
    }

    /// Records what is wrong with the consumer group as a whole (`None`: nothing).
    pub fn set_group(&self, problem: Option<String>) {
        if let Ok(mut slot) = self.group_problem.lock() {
            *slot = problem;
        }
    }

    /// The commit stage finished a record.
    pub fn progress(&self) {
        self.last_progress_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Records between source and commit.
    pub fn set_in_flight(&self, n: usize) {
        if n > 0 && self.in_flight.load(Ordering::Relaxed) == 0 {
            // Work just arrived after an idle period: the stall clock starts now.
            self.progress();
        }
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// The current verdict (also exported as `sluice_ready`).
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if !self.store_ok.load(Ordering::Relaxed) {
            let e = self
                .store_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            reasons.push(format!("store unavailable: {e}"));
        }
        if !self.source_ok.load(Ordering::Relaxed) {
            reasons
                .push("source unavailable (broker unreachable or no partitions assigned)".into());
        }
        if let Some(p) = self.group_problem.lock().ok().and_then(|g| g.clone()) {
            reasons.push(p);
        }
        let idle = self.started.elapsed().as_millis() as u64
            - self.last_progress_ms.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) > 0 && idle > self.stall_after.as_millis() as u64
        {
            reasons.push(format!(
                "stalled: records in flight but nothing committed for {} s",
                idle / 1000
            ));
        }
        let ready = reasons.is_empty();
        metrics::gauge!(crate::metrics::READY).set(if ready { 1.0 } else { 0.0 });
        Readiness { ready, reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_the_store_and_progress() {
        let h = Health::new(Duration::from_secs(10));
        assert!(
            !h.readiness().ready,
            "not ready before the first store check"
        );
        h.set_store(Ok(()));
        assert!(h.readiness().ready);
        h.set_store(Err("database is locked".into()));
        let r = h.readiness();
        assert!(
            !r.ready && r.reasons[0].contains("database is locked"),
            "{r:?}"
        );
        h.set_store(Ok(()));
        h.set_source(false);
        assert!(!h.readiness().ready);
        h.set_source(true);
        assert!(h.readiness().ready);
    }

    #[test]
    fn in_flight_without_progress_is_a_stall() {
        let h = Health::new(Duration::from_millis(20));
        h.set_store(Ok(()));
        h.set_in_flight(3);
        assert!(h.readiness().ready);
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            !h.readiness().ready,
            "no commit for longer than stall_after"
        );
        h.progress();
        assert!(h.readiness().ready);
        h.set_in_flight(0);
        std::thread::sleep(Duration::from_millis(40));
        assert!(h.readiness().ready, "idle without work is not a stall");
    }

    #[test]
    fn a_group_problem_makes_every_instance_not_ready_until_repaired() {
        let h = Health::new(Duration::from_secs(60));
        h.set_store(Ok(()));
        h.set_group(Some(
            "consumer group: partitions [2] owned by no member for 61 s".into(),
        ));
        let r = h.readiness();
        assert!(
            !r.ready && r.reasons[0].contains("owned by no member"),
            "{r:?}"
        );
        h.set_group(None);
        assert!(h.readiness().ready);
    }
}
