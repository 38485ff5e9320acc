//! Client contexts. The consumer's counts rebalances, pauses newly assigned partitions while
//! the source is paused, and on revocation drains: it holds the rebalance until every record
//! read so far is committed (the hand-over is then clean), or, past `kafka.revoke_drain_ms`,
//! marks the run as revoked, which the sink turns into an abort-and-restart. Both the
//! consumer's and the producer's route librdkafka's logs through sluice's counters and log
//! rate limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;
use sluice_pipeline::metrics::{KAFKA_CLIENT_ERRORS, REBALANCES, REVOKE_DRAINS};

/// The consumer type of the service.
pub type SluiceConsumer = StreamConsumer<SluiceContext>;

/// Shared rebalance state.
#[derive(Debug, Clone, Default)]
pub struct SluiceContext {
    revoked: Arc<AtomicBool>,
    assigned: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    /// Partitions revoked while the source was paused, since it last held no record received
    /// during a pause (a held record from one of them is dropped).
    revoked_while_paused: Arc<Mutex<Vec<(String, i32)>>>,
    drain: Arc<Drain>,
}

/// What a revocation waits for: records handed to the pipeline vs. records whose offsets
/// were committed. Equal means nothing is in flight and everything read is committed.
#[derive(Debug, Default)]
struct Drain {
    read: AtomicU64,
    committed: AtomicU64,
    deadline: Duration,
    /// False once the run is over (the consumer's close revokes everything; nothing more
    /// will be committed then).
    open: AtomicBool,
    /// A commit failed: the run is ending, nothing more will be committed.
    failed: AtomicBool,
}

impl SluiceContext {
    /// The service's consumer context: revocations wait up to `drain_deadline` for the
    /// in-flight records to be committed.
    pub fn new(drain_deadline: Duration) -> Self {
        SluiceContext {
            drain: Arc::new(Drain {
                deadline: drain_deadline,
                open: AtomicBool::new(true),
                ..Drain::default()
            }),
            ..SluiceContext::default()
        }
    }

    /// Whether partitions were revoked before their in-flight records could be committed.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Whether this member has been assigned partitions at least once.
    pub fn assigned(&self) -> bool {
        self.assigned.load(Ordering::SeqCst)
    }

    /// The source paused (or resumed) its partitions; partitions assigned meanwhile are
    /// paused as they arrive.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Forgets the partitions revoked during earlier pauses (the source holds no record
    /// received then).
    pub fn forget_revocations(&self) {
        self.revoked_while_paused().clear();
    }

    /// Whether `partition` of `topic` was revoked during a pause since the last
    /// [`forget_revocations`](Self::forget_revocations).
    pub fn was_revoked_while_paused(&self, topic: &str, partition: i32) -> bool {
        self.revoked_while_paused()
            .iter()
            .any(|(t, p)| t == topic && *p == partition)
    }

    fn revoked_while_paused(&self) -> std::sync::MutexGuard<'_, Vec<(String, i32)>> {
        self.revoked_while_paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The source handed a record to the pipeline.
    pub fn record_read(&self) {
        self.drain.read.fetch_add(1, Ordering::SeqCst);
    }

    /// The sink committed the offsets of `n` records.
    pub fn records_committed(&self, n: u64) {
        self.drain.committed.fetch_add(n, Ordering::SeqCst);
    }

    /// A commit failed (the run restarts): a revocation stops waiting for it.
    pub fn commit_failed(&self) {
        self.drain.failed.store(true, Ordering::SeqCst);
    }

    /// The run is over: revocations from now on (the consumer's close) do not wait.
    pub fn close(&self) {
        self.drain.open.store(false, Ordering::SeqCst);
    }

    /// Blocks the rebalance (it runs inside the consumer's poll) until every record read is
    /// committed; `Err(why)` when the deadline passes or a commit fails first.
    fn drain(&self) -> Result<(), &'static str> {
        let d = &self.drain;
        let until = Instant::now() + d.deadline;
        loop {
            if d.committed.load(Ordering::SeqCst) == d.read.load(Ordering::SeqCst) {
                return Ok(());
            }
            if d.failed.load(Ordering::SeqCst) || !d.open.load(Ordering::SeqCst) {
                return Err("commit_failed");
            }
            if Instant::now() >= until {
                return Err("deadline");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl ClientContext for SluiceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&error, reason);
    }
}

/// The producer's context: librdkafka's logs and errors go through the same counting and
/// rate limiting as the consumer's.
#[derive(Debug, Clone, Default)]
pub struct ClientLogs;

impl ClientContext for ClientLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&error, reason);
    }
}

/// librdkafka's own log lines: warnings and errors are counted and rate-limited (a broker
/// outage makes librdkafka report every failed connect), the rest go to debug.
fn log_client(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            metrics::counter!(KAFKA_CLIENT_ERRORS, "level" => "error").increment(1);
            if sluice_pipeline::logs::allow() {
                tracing::error!(target: "librdkafka", fac, message);
            }
        }
        RDKafkaLogLevel::Warning => {
            metrics::counter!(KAFKA_CLIENT_ERRORS, "level" => "warning").increment(1);
            if sluice_pipeline::logs::allow() {
                tracing::warn!(target: "librdkafka", fac, message);
            }
        }
        _ => tracing::debug!(target: "librdkafka", fac, message),
    }
}

fn client_error(error: &KafkaError, reason: &str) {
    metrics::counter!(KAFKA_CLIENT_ERRORS, "level" => "error").increment(1);
    if sluice_pipeline::logs::allow() {
        tracing::error!(target: "librdkafka", error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for SluiceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) if tpl.count() > 0 => {
                metrics::counter!(REBALANCES, "kind" => "revoke").increment(1);
                let partitions = tpl.count();
                if self.paused.load(Ordering::SeqCst) {
                    self.revoked_while_paused().extend(
                        tpl.elements()
                            .iter()
                            .map(|e| (e.topic().to_string(), e.partition())),
                    );
                }
                if !self.drain.open.load(Ordering::SeqCst) {
                    // The run is over and the consumer closing: nothing to hand over.
                    self.revoked.store(true, Ordering::SeqCst);
                } else if consumer.assignment_lost() {
                    metrics::counter!(REVOKE_DRAINS, "outcome" => "lost").increment(1);
                    tracing::warn!(
                        partitions,
                        "partitions lost (session expired); restarting from the committed offsets"
                    );
                    self.revoked.store(true, Ordering::SeqCst);
                } else {
                    let started = Instant::now();
                    match self.drain() {
                        Ok(()) => {
                            metrics::counter!(REVOKE_DRAINS, "outcome" => "drained").increment(1);
                            tracing::info!(
                                partitions,
                                waited_ms = started.elapsed().as_millis() as u64,
                                "partitions revoked: in-flight records drained and committed before the hand-over"
                            );
                        }
                        Err(why) => {
                            metrics::counter!(REVOKE_DRAINS, "outcome" => why).increment(1);
                            tracing::warn!(
                                partitions,
                                why,
                                waited_ms = started.elapsed().as_millis() as u64,
                                "partitions revoked before their in-flight records were committed; aborting and restarting from the committed offsets"
                            );
                            self.revoked.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                metrics::counter!(REBALANCES, "kind" => "assign").increment(1);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.assigned.store(true, Ordering::SeqCst);
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
            }
            _ => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if self.paused.load(Ordering::SeqCst) && tpl.count() > 0 {
                // The source is paused for backpressure: new partitions wait too.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "could not pause newly assigned partitions");
                }
            }
        }
    }
}
