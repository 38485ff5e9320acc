//! How the pipeline runs: [`ExecuteConfig`] (concurrency, retries and deadlines of the execute
//! stage), [`PipelineConfig`] (channel capacities, in-flight budget, ordering, commit cadence
//! and shutdown) and [`DedupeConfig`] (the window in which a request_id is recognised).

use serde::{Deserialize, Serialize};

/// Concurrency, retries and deadlines of the execute stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExecuteConfig {
    /// Maximum write chunks executing at once, across all requests.
    pub write_concurrency: usize,
    /// Maximum lookup reads executing at once, across all requests.
    pub lookup_concurrency: usize,
    /// Attempts for a chunk whose store error is transient (including the first).
    pub max_attempts: u32,
    /// How long transient errors of one chunk are retried before its items fail with
    /// `store_error` (ms). Longer than MongoDB's 60 s transaction lifetime, so that an
    /// abandoned transaction of a crashed instance (which conflicts until it expires) cannot
    /// fail items.
    pub transient_retry_ms: u64,
    /// First retry backoff in milliseconds; doubled each attempt, with full jitter.
    pub backoff_initial_ms: u64,
    /// Cap on a single retry backoff in milliseconds.
    pub backoff_max_ms: u64,
    /// Deadline for requests that do not set `options.deadline_ms`; absent = none.
    pub default_deadline_ms: Option<u64>,
    /// Upper bound on `options.deadline_ms`; requests asking for more are rejected.
    pub max_deadline_ms: u64,
}

impl Default for ExecuteConfig {
    fn default() -> Self {
        ExecuteConfig {
            write_concurrency: 4,
            lookup_concurrency: 16,
            max_attempts: 200,
            transient_retry_ms: 120_000,
            backoff_initial_ms: 20,
            backoff_max_ms: 2_000,
            default_deadline_ms: None,
            max_deadline_ms: 3_600_000,
        }
    }
}

/// Channel capacities, ordering and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Capacity of each bounded channel between two stages (records).
    pub channel_capacity: usize,
    /// Maximum records between the source and the commit (the in-flight budget).
    pub max_in_flight_records: usize,
    /// Maximum bytes of input records between the source and the commit; the source waits
    /// (Kafka: pauses) when either budget is spent. Parsed requests take about three times
    /// their input size in memory, so this is most of the process's memory under load.
    /// Default 4 MiB: enough to keep the store busy (a larger budget only lengthens the queue
    /// in front of it — BENCHMARKS.md), and a record larger than the budget still goes
    /// alone.
    pub max_in_flight_bytes: usize,
    /// Treat the whole input as one ordered stream instead of keying by request_id.
    pub ordered: bool,
    /// How long a shutdown may take to drain in-flight work before it is abandoned
    /// (abandoned work is re-read on restart; nothing is lost).
    pub drain_deadline_ms: u64,
    /// Records per position checkpoint (embedded) or per Kafka transaction, at most. Under
    /// load, commits come every this many records; `commit_interval_ms` bounds how long results
    /// wait either way, so a larger value costs no latency, only a larger batch to redo (from
    /// the ledger, without re-executing) after a crash.
    pub commit_max_records: usize,
    /// Longest time between two checkpoints while records are flowing, in milliseconds.
    pub commit_interval_ms: u64,
    /// Shortest time between two checkpoints taken because the pipeline caught up (the
    /// commit stage has no record waiting and none executing: nothing is about to join the
    /// open unit), in milliseconds. At low load each record is then committed as soon as it
    /// is done, instead of waiting for `commit_interval_ms`. While records execute, the
    /// commit waits for them up to a quarter of `commit_interval_ms`; under load, commits
    /// batch by `commit_max_records` / `commit_interval_ms` as before. A twentieth of
    /// `commit_interval_ms` if that is longer; with a `commit_interval_ms` above 1 s (a
    /// request for few, large transactions) the stage commits on the interval only.
    pub commit_idle_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            channel_capacity: 64,
            max_in_flight_records: 256,
            max_in_flight_bytes: 4 * 1024 * 1024,
            ordered: false,
            drain_deadline_ms: 30_000,
            commit_max_records: 2000,
            commit_interval_ms: 200,
            commit_idle_ms: 10,
        }
    }
}

/// Recognition of already-processed requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// How long a request_id and its chunk ledger entries are remembered after the request's
    /// terminal event is published, in seconds (an unfinished request is never forgotten).
    pub window_secs: u64,
    /// Entries of the in-memory cache in front of the store's request ledger.
    pub cache_entries: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_secs: 7 * 24 * 3600,
            cache_entries: 100_000,
        }
    }
}
