//! Every metric sluice exports: names, units and help text, in one place.
//!
//! Conventions (Prometheus): `sluice_<what>_<unit>`, `_total` for counters, `_seconds` for
//! durations; labels are bounded sets only (`stage`, `op`, `outcome`, `status`, `error_code`,
//! `reason`, `kind`) — never request ids or messages. [`describe`] runs once at start-up.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};

use crate::codes::{DeadLetterCode, ItemErrorCode, RejectCode};
use crate::contract::{ItemStatus, Op};

/// Records read from the source. Labels: none.
pub const RECORDS_CONSUMED: &str = "sluice_records_consumed_total";
/// Requests by terminal outcome. Labels: `op` (or `none` for rejected/dead-lettered records
/// without a readable op), `outcome` = completed | rejected | duplicate.
pub const REQUESTS: &str = "sluice_requests_total";
/// Items by final status. Labels: `op`, `status`.
pub const ITEMS: &str = "sluice_items_total";
/// Failed and not-attempted items by code. Labels: `error_code`.
pub const ITEM_ERRORS: &str = "sluice_item_errors_total";
/// Rejections by code. Labels: `error_code`.
pub const REJECTIONS: &str = "sluice_rejections_total";
/// Dead-lettered records by reason. Labels: `reason`.
pub const DEAD_LETTERS: &str = "sluice_dead_letters_total";
/// Chunks executed against the store. Labels: `op`, `outcome` = applied | replayed | aborted | failed.
pub const CHUNKS: &str = "sluice_chunks_total";
/// Chunk transaction duration including retries. Labels: `op`.
pub const CHUNK_DURATION: &str = "sluice_chunk_duration_seconds";
/// Chunk retries. Labels: `reason` = transient | unavailable.
pub const CHUNK_RETRIES: &str = "sluice_chunk_retries_total";
/// `create` chunks on MongoDB whose optimistic insert met an existing key and ran again,
/// reading their keys first. Labels: none.
pub const CREATE_FALLBACKS: &str = "sluice_create_existing_key_reruns_total";
/// Writes (chunks, settlements, claim batches) one SQLite transaction carried: the store
/// group-commits what waits for its one writer. Its `_count` is the transactions. Labels: none.
pub const WRITES_PER_TRANSACTION: &str = "sluice_sqlite_writes_per_transaction";
/// WAL checkpoints of the SQLite store's checkpoint thread. Label `outcome`: `complete` (the
/// whole WAL copied: the next write starts it over), `partial` (a reader still needs the
/// rest), `busy` (another checkpoint was running), `error`.
pub const SQLITE_CHECKPOINTS: &str = "sluice_sqlite_checkpoints_total";
/// Chunks one MongoDB chunk transaction committed: small `create` chunks waiting at the same
/// time share one (group commit). Its `_count` is the transactions (a chunk too large for one
/// transaction, written in parts, counts as one). Labels: none.
pub const CHUNKS_PER_TRANSACTION: &str = "sluice_mongo_chunks_per_transaction";
/// Store errors. Labels: `kind`, `error_code`.
pub const STORE_ERRORS: &str = "sluice_store_errors_total";
/// Records waiting in the channel in front of a stage. Labels: `stage`.
pub const QUEUE_DEPTH: &str = "sluice_stage_queue_depth";
/// Time a stage spends on one input. Labels: `stage`.
pub const STAGE_DURATION: &str = "sluice_stage_duration_seconds";
/// Records between the source and the commit. Labels: none.
pub const IN_FLIGHT: &str = "sluice_in_flight_records";
/// Record read → terminal event committed. Labels: none.
pub const END_TO_END: &str = "sluice_end_to_end_latency_seconds";
/// Sink commits: Kafka transactions, or position checkpoints in embedded mode.
/// Labels: `outcome` = ok | retried (Kafka: the offsets commit raced a rebalance and was sent
/// again) | error.
pub const COMMITS: &str = "sluice_commits_total";
/// Time one sink commit takes (Kafka: offsets into the transaction and its commit; the
/// commit stage processes no record meanwhile). Labels: none.
pub const COMMIT_DURATION: &str = "sluice_commit_duration_seconds";
/// Input bytes between the source and the commit. Labels: none.
pub const IN_FLIGHT_BYTES: &str = "sluice_in_flight_bytes";
/// Records not yet read from the source (Kafka: high watermark − position; embedded file:
/// lines left in the input). Labels: `partition`.
pub const CONSUMER_LAG: &str = "sluice_consumer_lag_records";
/// Records after the consumer group's committed offset, per partition of the requests topic,
/// whoever owns the partition (Kafka: high watermark − the group's committed offset; embedded:
/// lines left in the input). Every instance reports the whole group. Labels: `partition`.
pub const GROUP_LAG: &str = "sluice_group_lag_records";
/// Partitions of the requests topic that no member of the consumer group owns, as its
/// coordinator reports (all of them while the group rebalances; always 0 in embedded mode).
/// Labels: none.
pub const GROUP_UNOWNED: &str = "sluice_group_unowned_partitions";
/// Members of the consumer group, as its coordinator reports (1 in embedded mode). Labels: none.
pub const GROUP_MEMBERS: &str = "sluice_group_members";
/// Times this instance left and rejoined its consumer group because the group left
/// partitions owned by nobody for longer than `kafka.unowned_timeout_ms`. Labels: none.
pub const GROUP_REJOINS: &str = "sluice_group_rejoins_total";
/// Consumer-group rebalances (Kafka; always 0 in embedded mode). Labels: `kind` = assign | revoke.
pub const REBALANCES: &str = "sluice_rebalances_total";
/// 1 while the source is paused because the in-flight budget is spent (Kafka: its
/// partitions are paused). Labels: none.
pub const SOURCE_PAUSED: &str = "sluice_source_paused";
/// Partition revocations, by how in-flight work was handled (Kafka). Labels: `outcome` =
/// drained (committed before the hand-over) | handed_over (a request still running past
/// `kafka.revoke_drain_ms`: what it published committed with its partial position, the rest
/// left to the new owner) | deadline, commit_failed (neither happened, or the run ended
/// first; aborted, restart from committed offsets) | lost (the partitions were already gone)
/// | reassigned (a partition handed over earlier in the run came back: the run restarts).
pub const REVOKE_DRAINS: &str = "sluice_revoke_drains_total";
/// Kafka runs that ended and started again (the process stays up). Labels: `reason` =
/// revoked (partitions revoked undrained, or one handed over came back) | rejoin (the
/// watchdog made the member rejoin) | error (another failure) | stopped (the pipeline ended
/// without a shutdown request).
pub const RUN_RESTARTS: &str = "sluice_kafka_run_restarts_total";
/// 1 when `/readyz` would answer ready. Labels: none.
pub const READY: &str = "sluice_ready";
/// 1 when the last store health check passed. Labels: none.
pub const STORE_UP: &str = "sluice_store_up";
/// Fatal pipeline errors (a stage or the source stopped). Labels: `component`.
pub const PIPELINE_ERRORS: &str = "sluice_pipeline_errors_total";
/// Warnings and errors reported by the Kafka client library. Labels: `level`.
pub const KAFKA_CLIENT_ERRORS: &str = "sluice_kafka_client_errors_total";
/// Health checks that started failing (transitions from healthy). Labels: `component`.
pub const HEALTH_FAILURES: &str = "sluice_health_check_failures_total";
/// Connections the HTTP listener closed or refused to protect itself. Labels: `reason`
/// (`refused`, `evicted`, `evicted_unread`, `header_timeout`, `timed_out`, `accept_failed`).
pub const HTTP_SHED: &str = "sluice_http_connections_shed_total";
/// Requests to the status API (`/v1/requests…` and the status page). Labels: `endpoint`
/// (`status`, `events`, `stream`, `list`, `page`), `outcome` (`ok`, `not_found`,
/// `bad_request`, `unauthorized`, `busy`, `error`).
pub const STATUS_REQUESTS: &str = "sluice_status_requests_total";
/// Progress streams (`/v1/requests/{id}/stream`) open now. Labels: none.
pub const STATUS_STREAMS: &str = "sluice_status_streams_open";
/// Progress streams the service closed before their end. Labels: `reason` (`slow_reader`:
/// the client did not take an event within the send timeout).
pub const STATUS_STREAMS_DROPPED: &str = "sluice_status_streams_dropped_total";
/// Warnings and errors not logged because of the log rate limit. Labels: none.
pub const LOGS_SUPPRESSED: &str = "sluice_logs_suppressed_total";
/// Always 1; carries the version. Labels: `version`.
pub const BUILD_INFO: &str = "sluice_build_info";
/// Seconds since the process started. Labels: none.
pub const UPTIME: &str = "sluice_uptime_seconds";

/// The `outcome` labels of [`STATUS_REQUESTS`].
pub const STATUS_OUTCOMES: [&str; 6] = [
    "ok",
    "not_found",
    "bad_request",
    "unauthorized",
    "busy",
    "error",
];

/// The stage names used as `stage` labels.
pub const STAGES: [&str; 5] = ["validate", "dedupe", "chunk", "execute", "commit"];

/// Histograms and their buckets (exporters set them explicitly from this list).
pub fn buckets() -> [(&'static str, &'static [f64]); 6] {
    [
        (WRITES_PER_TRANSACTION, GROUP_BUCKETS),
        (CHUNKS_PER_TRANSACTION, GROUP_BUCKETS),
        (CHUNK_DURATION, DURATION_BUCKETS),
        (STAGE_DURATION, DURATION_BUCKETS),
        (COMMIT_DURATION, DURATION_BUCKETS),
        (END_TO_END, LATENCY_BUCKETS),
    ]
}

/// Histogram buckets for chunk and stage durations (seconds).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Histogram buckets for writes per transaction (the group is at most 64).
pub const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Histogram buckets for end-to-end latency (seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Describes every metric once and creates the series of every bounded label combination at
/// zero, so dashboards and alerts see `0` (not "no data") before the first event.
pub fn register() {
    describe();
    counter!(RECORDS_CONSUMED).absolute(0);
    for op in Op::ALL {
        for outcome in ["completed", "rejected", "duplicate"] {
            counter!(REQUESTS, "op" => op.as_str(), "outcome" => outcome).absolute(0);
        }
        for outcome in ["applied", "replayed", "failed"] {
            counter!(CHUNKS, "op" => op.as_str(), "outcome" => outcome).absolute(0);
        }
        for status in ItemStatus::ALL {
            counter!(ITEMS, "op" => op.as_str(), "status" => status.as_str()).absolute(0);
        }
    }
    for outcome in ["rejected", "duplicate"] {
        counter!(REQUESTS, "op" => "none", "outcome" => outcome).absolute(0);
    }
    for code in ItemErrorCode::ALL {
        counter!(ITEM_ERRORS, "error_code" => code.as_str()).absolute(0);
    }
    for code in RejectCode::ALL {
        counter!(REJECTIONS, "error_code" => code.as_str()).absolute(0);
    }
    for code in DeadLetterCode::ALL {
        counter!(DEAD_LETTERS, "reason" => code.as_str()).absolute(0);
    }
    for reason in ["transient", "unavailable"] {
        counter!(CHUNK_RETRIES, "reason" => reason).absolute(0);
    }
    counter!(CREATE_FALLBACKS).absolute(0);
    for outcome in ["ok", "retried", "error"] {
        counter!(COMMITS, "outcome" => outcome).absolute(0);
    }
    for kind in ["assign", "revoke"] {
        counter!(REBALANCES, "kind" => kind).absolute(0);
    }
    for outcome in [
        "drained",
        "handed_over",
        "deadline",
        "commit_failed",
        "lost",
        "reassigned",
    ] {
        counter!(REVOKE_DRAINS, "outcome" => outcome).absolute(0);
    }
    for reason in ["revoked", "rejoin", "error", "stopped"] {
        counter!(RUN_RESTARTS, "reason" => reason).absolute(0);
    }
    for stage in STAGES {
        gauge!(QUEUE_DEPTH, "stage" => stage).set(0.0);
    }
    counter!(LOGS_SUPPRESSED).absolute(0);
    counter!(HEALTH_FAILURES, "component" => "store").absolute(0);
    for reason in [
        "refused",
        "evicted",
        "evicted_unread",
        "header_timeout",
        "timed_out",
        "accept_failed",
    ] {
        counter!(HTTP_SHED, "reason" => reason).absolute(0);
    }
    for endpoint in ["status", "events", "stream", "list", "page"] {
        for outcome in STATUS_OUTCOMES {
            counter!(STATUS_REQUESTS, "endpoint" => endpoint, "outcome" => outcome).absolute(0);
        }
    }
    gauge!(STATUS_STREAMS).set(0.0);
    counter!(STATUS_STREAMS_DROPPED, "reason" => "slow_reader").absolute(0);
    gauge!(IN_FLIGHT).set(0.0);
    gauge!(IN_FLIGHT_BYTES).set(0.0);
    gauge!(SOURCE_PAUSED).set(0.0);
    gauge!(GROUP_UNOWNED).set(0.0);
    counter!(GROUP_REJOINS).absolute(0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Describes every metric once, so exporters show help text and units.
pub fn describe() {
    describe_counter!(RECORDS_CONSUMED, "Records read from the source.");
    describe_counter!(REQUESTS, "Requests by op and terminal outcome.");
    describe_counter!(ITEMS, "Items by op and final status.");
    describe_counter!(ITEM_ERRORS, "Failed or not-attempted items by error code.");
    describe_counter!(REJECTIONS, "Request rejections by error code.");
    describe_counter!(
        DEAD_LETTERS,
        "Records sent to the dead-letter output, by reason."
    );
    describe_counter!(CHUNKS, "Chunks executed, by op and outcome.");
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Duration of one sink commit (Kafka transaction with its input offsets)."
    );
    describe_histogram!(
        CHUNK_DURATION,
        Unit::Seconds,
        "Chunk execution time, retries included."
    );
    describe_counter!(CHUNK_RETRIES, "Chunk retries by reason.");
    describe_counter!(
        CREATE_FALLBACKS,
        "Create chunks whose optimistic insert met an existing key and ran again (MongoDB)."
    );
    describe_histogram!(
        WRITES_PER_TRANSACTION,
        "Writes one SQLite transaction carried (group commit); _count is the transactions."
    );
    describe_counter!(
        SQLITE_CHECKPOINTS,
        "WAL checkpoints of the SQLite store's checkpoint thread, by outcome (complete, partial, busy, error)."
    );
    describe_histogram!(
        CHUNKS_PER_TRANSACTION,
        "Chunks one MongoDB chunk transaction committed (group commit); _count is the transactions (a chunk written in parts counts once)."
    );
    describe_counter!(STORE_ERRORS, "Store errors by kind and code.");
    describe_gauge!(QUEUE_DEPTH, "Records waiting in front of a stage.");
    describe_histogram!(
        STAGE_DURATION,
        Unit::Seconds,
        "Time a stage spends per input."
    );
    describe_gauge!(IN_FLIGHT, "Records read but not yet committed.");
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "Record read to terminal event committed."
    );
    describe_counter!(
        COMMITS,
        "Sink commits (Kafka transactions / embedded checkpoints) by outcome."
    );
    describe_gauge!(
        IN_FLIGHT_BYTES,
        Unit::Bytes,
        "Input bytes read but not yet committed."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records not yet read from the source, per partition."
    );
    describe_gauge!(
        GROUP_LAG,
        "Records after the consumer group's committed offset, per partition of the requests topic."
    );
    describe_gauge!(
        GROUP_UNOWNED,
        "Partitions of the requests topic owned by no member of the consumer group."
    );
    describe_gauge!(GROUP_MEMBERS, "Members of the consumer group.");
    describe_counter!(
        GROUP_REJOINS,
        "Rejoins of the consumer group to repair partitions left unowned."
    );
    describe_counter!(REBALANCES, "Consumer-group rebalances by kind (Kafka).");
    describe_gauge!(
        SOURCE_PAUSED,
        "1 while the source is paused because the in-flight budget is spent."
    );
    describe_counter!(
        REVOKE_DRAINS,
        "Partition revocations by outcome: drained, handed over mid-request, aborted, or lost (Kafka)."
    );
    describe_counter!(
        RUN_RESTARTS,
        "Kafka runs restarted within the process, by reason."
    );
    describe_gauge!(READY, "1 when the instance is ready (see /readyz).");
    describe_gauge!(STORE_UP, "1 when the last store health check passed.");
    describe_counter!(PIPELINE_ERRORS, "Fatal pipeline errors by component.");
    describe_counter!(
        HEALTH_FAILURES,
        "Health checks that went from passing to failing."
    );
    describe_counter!(
        HTTP_SHED,
        "Connections the metrics and health listener closed or refused to protect itself."
    );
    describe_counter!(
        STATUS_REQUESTS,
        "Status API requests by endpoint and outcome."
    );
    describe_gauge!(STATUS_STREAMS, "Progress streams open now.");
    describe_counter!(
        STATUS_STREAMS_DROPPED,
        "Progress streams closed by the service, by reason."
    );
    describe_counter!(
        LOGS_SUPPRESSED,
        "Warnings/errors dropped by the log rate limit."
    );
    describe_counter!(
        KAFKA_CLIENT_ERRORS,
        "Warnings and errors reported by librdkafka, by level."
    );
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1.");
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since the process started.");
}

/// The handles of one labelled counter, by label values, each looked up in the recorder once:
/// `counter!` with labels builds a key, hashes it and looks it up in the registry every time,
/// which hot paths (the commit stage, per event) cannot afford. Label values are the closed
/// sets of this module's conventions, so the cache is bounded by them.
pub struct CounterCache<const N: usize> {
    name: &'static str,
    labels: [&'static str; N],
    handles: Vec<([&'static str; N], metrics::Counter)>,
}

impl<const N: usize> CounterCache<N> {
    /// The counter `name` with label keys `labels`.
    pub fn new(name: &'static str, labels: [&'static str; N]) -> Self {
        CounterCache {
            name,
            labels,
            handles: Vec::new(),
        }
    }

    /// The counter whose labels have `values`, registered on first use (with the recorder
    /// installed then).
    pub fn get(&mut self, values: [&'static str; N]) -> &metrics::Counter {
        let i = match self.handles.iter().position(|(v, _)| *v == values) {
            Some(i) => i,
            None => {
                let labels: Vec<metrics::Label> = self
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(k, v)| metrics::Label::from_static_parts(k, v))
                    .collect();
                self.handles.push((values, counter!(self.name, labels)));
                self.handles.len() - 1
            }
        };
        &self.handles[i].1
    }
}

/// The chunk metrics of one op.
pub struct ChunkHandles {
    /// [`CHUNK_DURATION`].
    pub duration: metrics::Histogram,
    /// [`CHUNKS`] with outcome `applied`.
    pub applied: metrics::Counter,
    /// [`CHUNKS`] with outcome `replayed`.
    pub replayed: metrics::Counter,
    /// [`CHUNKS`] with outcome `failed`.
    pub failed: metrics::Counter,
}

/// [`ChunkHandles`] of every op, registered once (with the recorder installed then): the
/// execute stage records them for every chunk.
pub struct ChunkMetrics([ChunkHandles; Op::ALL.len()]);

impl ChunkMetrics {
    /// The handles, from the recorder installed now.
    pub fn new() -> Self {
        ChunkMetrics(Op::ALL.map(|op| {
            let op = op.as_str();
            ChunkHandles {
                duration: metrics::histogram!(CHUNK_DURATION, "op" => op),
                applied: counter!(CHUNKS, "op" => op, "outcome" => "applied"),
                replayed: counter!(CHUNKS, "op" => op, "outcome" => "replayed"),
                failed: counter!(CHUNKS, "op" => op, "outcome" => "failed"),
            }
        }))
    }

    /// The handles of `op`.
    pub fn of(&self, op: Op) -> &ChunkHandles {
        // The handles were made in `Op::ALL`'s order: found by the same list, so the two
        // cannot disagree.
        let i = Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("Op::ALL holds every op");
        &self.0[i]
    }
}

impl Default for ChunkMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Increments through the cache reach the series of their labels, as Prometheus scrapes
    /// them, and each label set is registered once.
    #[test]
    fn cached_counters_count_by_their_labels() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let scrape = recorder.handle();
        let mut requests = CounterCache::new(REQUESTS, ["op", "outcome"]);
        metrics::with_local_recorder(&recorder, || {
            requests.get(["create", "completed"]).increment(2);
            requests.get(["create", "completed"]).increment(1);
            requests.get(["none", "rejected"]).increment(1);
            requests.get(["update", "completed"]).increment(4);
        });
        assert_eq!(requests.handles.len(), 3, "one handle per label set");
        // Each op's chunk handles are its own series, named by the op itself, not by its
        // place in `Op::ALL`.
        let per_op = [
            (Op::Create, 1u64),
            (Op::Update, 2),
            (Op::Upsert, 3),
            (Op::Delete, 4),
            (Op::Lookup, 5),
        ];
        metrics::with_local_recorder(&recorder, || {
            let chunks = ChunkMetrics::new();
            for (op, n) in per_op {
                chunks.of(op).applied.increment(n);
            }
        });
        let text = scrape.render();
        let mut lines = vec![
            r#"sluice_requests_total{op="create",outcome="completed"} 3"#.to_string(),
            r#"sluice_requests_total{op="none",outcome="rejected"} 1"#.to_string(),
            r#"sluice_requests_total{op="update",outcome="completed"} 4"#.to_string(),
        ];
        for (op, n) in per_op {
            let op = op.as_str();
            lines.push(format!(
                r#"sluice_chunks_total{{op="{op}",outcome="applied"}} {n}"#
            ));
        }
        for line in lines {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
