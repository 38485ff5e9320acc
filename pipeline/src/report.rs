//! Live counters of a run, for the CLI's progress bar, its closing summary and the benchmark.
//! Bounded: fixed counters plus one fixed-size latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::contract::{ItemStatus, ResultEvent};

/// Counters updated by the commit stage as records are committed.
#[derive(Debug)]
pub struct RunStats {
    /// Records fully handled (all events published).
    pub records: AtomicU64,
    /// Requests completed.
    pub completed: AtomicU64,
    /// Requests rejected.
    pub rejected: AtomicU64,
    /// Duplicate requests.
    pub duplicates: AtomicU64,
    /// Dead letters.
    pub dead_letters: AtomicU64,
    /// Items reported in progress events.
    pub items: AtomicU64,
    /// Items with status `failed`.
    pub items_failed: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

impl Default for RunStats {
    fn default() -> Self {
        RunStats {
            records: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            items: AtomicU64::new(0),
            items_failed: AtomicU64::new(0),
            // 1 µs .. 1 h at 3 significant digits: a fixed ~200 KiB whatever the run length.
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
        }
    }
}

impl RunStats {
    /// Accounts one published event.
    pub fn event(&self, event: &ResultEvent) {
        match event {
            ResultEvent::Progress(p) => {
                self.items
                    .fetch_add(p.items.len() as u64, Ordering::Relaxed);
                let failed = p
                    .items
                    .iter()
                    .filter(|i| i.status == ItemStatus::Failed)
                    .count();
                self.items_failed
                    .fetch_add(failed as u64, Ordering::Relaxed);
            }
            ResultEvent::Completed(_) => {
                self.completed.fetch_add(1, Ordering::Relaxed);
            }
            ResultEvent::Rejected(_) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            ResultEvent::Duplicate(_) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Accounts one finished record and its end-to-end latency.
    pub fn record_done(&self, latency: Duration) {
        self.records.fetch_add(1, Ordering::Relaxed);
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Ok(mut h) = self.latency_us.lock() {
            let _ = h.record(us);
        }
    }

    /// Latency quantile (0..=1) of finished records.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        let us = self
            .latency_us
            .lock()
            .map(|h| h.value_at_quantile(q))
            .unwrap_or(0);
        Duration::from_micros(us)
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
