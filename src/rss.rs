//! Peak resident set size of this process (Linux), for the benchmarks' memory column (the
//! embedded one, `bench`, and the Kafka one, `bench_kafka`), and its CPU and wall time over a
//! measured stretch ([`Cost`], both).

use std::time::Instant;

/// Resets this process's peak resident set size (Linux ≥ 4.0), so that the next
/// [`peak_rss_kib`] covers what ran since.
/// `false` when the kernel refused (the peak then covers the whole process lifetime).
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size of this process in KiB (Linux `VmHWM`).
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system, all threads) this process has used so far (0 where
/// `getrusage` does not exist).
#[cfg(unix)]
pub(crate) fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(not(unix))]
pub(crate) fn cpu_secs() -> f64 {
    0.0
}

/// The process's CPU time (all threads) and the wall time over a measured stretch.
pub(crate) struct Cost {
    pub cpu_secs: f64,
    pub wall_secs: f64,
}

/// A [`Cost`] being measured.
pub(crate) struct Started {
    cpu: f64,
    at: Instant,
}

impl Cost {
    pub fn start() -> Started {
        Started {
            cpu: cpu_secs(),
            at: Instant::now(),
        }
    }
}

impl Started {
    pub fn end(self) -> Cost {
        Cost {
            cpu_secs: cpu_secs() - self.cpu,
            wall_secs: self.at.elapsed().as_secs_f64(),
        }
    }
}
