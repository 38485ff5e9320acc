//! Client contexts. The consumer's counts rebalances, pauses newly assigned partitions while
//! the source is paused, and on revocation drains: it holds the rebalance until every record
//! read from the revoked partitions is committed (the hand-over is then clean; records of the
//! partitions it keeps do not hold it up), or, past `kafka.revoke_drain_ms`, hands the
//! partition over mid-request ([`super::handover`]): the next commit covers what was
//! published of it, and nothing more of it is published this run. Only when that fails too
//! is the run marked revoked, which the sink turns into an abort-and-restart. Both the
//! consumer's and the producer's route librdkafka's logs through sluice's counters and log
//! rate limit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_pipeline::metrics::{KAFKA_CLIENT_ERRORS, REBALANCES, REVOKE_DRAINS};

use super::handover::Handover;

/// The consumer type of the service.
pub type SluiceConsumer = StreamConsumer<SluiceContext>;

/// Shared rebalance state.
#[derive(Debug, Clone, Default)]
pub struct SluiceContext {
    revoked: Arc<AtomicBool>,
    assigned: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    /// Partitions revoked since the source last looked ([`take_revocations`]); records it
    /// holds from them are dropped.
    ///
    /// [`take_revocations`]: SluiceContext::take_revocations
    revocations: Arc<Mutex<Vec<(String, i32)>>>,
    /// Partitions assigned whose first record has not been handed out yet: the source reads
    /// their committed offset's metadata first (a partial position, see
    /// [`take_fresh`](SluiceContext::take_fresh)).
    fresh: Arc<Mutex<HashSet<(String, i32)>>>,
    drain: Arc<Drain>,
    /// Partitions handed over mid-request ([`Handover`]).
    handover: Arc<Handover>,
}

/// What a revocation waits for: per partition, the position after the last record handed
/// to the pipeline vs. the committed position. Equal (or nothing read) means nothing of the
/// partition is in flight and everything read from it is committed.
#[derive(Debug, Default)]
struct Drain {
    /// topic → partition → progress.
    progress: Mutex<HashMap<String, HashMap<i32, Progress>>>,
    deadline: Duration,
    /// False once the run is over (the consumer's close revokes everything; nothing more
    /// will be committed then).
    open: AtomicBool,
    /// A commit failed or the sink is gone: the run is ending, nothing more will be committed.
    ended: AtomicBool,
    /// Held by a commit from its ownership check to its end, and by a revocation while it
    /// gives up on a drain: a commit either completes before the partitions are handed over
    /// or sees that they were revoked.
    commit: Mutex<()>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    read: i64,
    committed: i64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The run's hand-over state: the sink asks it before publishing.
    pub fn handover(&self) -> &Handover {
        &self.handover
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

    /// The partitions revoked since the last call. Revocations happen inside the consumer's
    /// poll (which may be cancelled before it returns a record), so a source that calls this
    /// before it hands out a held record and after every poll that returns drops records of a
    /// revoked partition before any record of a later assignment of it can arrive.
    pub fn take_revocations(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *lock(&self.revocations))
    }

    /// Whether `partition` was assigned since its last record was handed out (and forgets
    /// it): its first record may be a re-read of a partially committed request.
    pub fn take_fresh(&self, topic: &str, partition: i32) -> bool {
        let mut fresh = lock(&self.fresh);
        !fresh.is_empty() && fresh.remove(&(topic.to_string(), partition))
    }

    /// Records a revocation as the rebalance callback does (for tests of the source).
    #[cfg(test)]
    pub(crate) fn note_revocation(&self, topic: &str, partition: i32) {
        lock(&self.revocations).push((topic.to_string(), partition));
    }

    /// The source handed the pipeline a record of `partition`; `next` is the offset after it.
    pub fn record_read(&self, topic: &str, partition: i32, next: i64) {
        let mut progress = lock(&self.drain.progress);
        let partitions = match progress.get_mut(topic) {
            Some(p) => p,
            None => progress.entry(topic.to_string()).or_default(),
        };
        partitions.entry(partition).or_default().read = next;
    }

    /// Runs `commit` of `offsets` unless partitions were revoked undrained (`None` then),
    /// holding off any revocation meanwhile. On success, the drain learns the committed
    /// offsets. Blocking: call it off the async threads.
    pub fn commit_owned<T, E>(
        &self,
        offsets: &TopicPartitionList,
        commit: impl FnOnce() -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        let _held = lock(&self.drain.commit);
        if self.revoked() {
            return None;
        }
        let result = commit();
        if result.is_ok() {
            self.handover.committed();
            let mut progress = lock(&self.drain.progress);
            for e in offsets.elements() {
                let (Offset::Offset(next), Some(p)) = (
                    e.offset(),
                    progress
                        .get_mut(e.topic())
                        .and_then(|t| t.get_mut(&e.partition())),
                ) else {
                    continue;
                };
                p.committed = p.committed.max(next);
            }
        }
        Some(result)
    }

    /// Nothing more will be committed this run (a commit failed, or the sink is gone): a
    /// revocation stops waiting.
    pub fn commits_ended(&self) {
        self.drain.ended.store(true, Ordering::SeqCst);
    }

    /// The run is over: revocations from now on (the consumer's close) do not wait.
    pub fn close(&self) {
        self.drain.open.store(false, Ordering::SeqCst);
    }

    /// Marks the run revoked once no commit is in progress. It waits for a commit in
    /// progress — seconds when the coordinator is unreachable — so off the runtime (it runs
    /// in the rebalance callback, on a tokio worker).
    fn mark_revoked(&self) {
        off_the_runtime(|| {
            let _held = lock(&self.drain.commit);
            self.revoked.store(true, Ordering::SeqCst);
        })
    }

    /// Partitions assigned: their first records may be re-reads of partial positions. One
    /// handed over earlier in this run restarts the run: its old records may still be in
    /// flight here, indistinguishable from the new ones.
    fn on_assign(&self, assigned: Vec<(String, i32)>) {
        if self.handover.any_sealed(&assigned) {
            metrics::counter!(REVOKE_DRAINS, "outcome" => "reassigned").increment(1);
            tracing::warn!(
                "a partition handed over earlier in this run came back; restarting the run"
            );
            self.mark_revoked();
        }
        lock(&self.fresh).extend(assigned);
    }

    /// [`Self::on_assign`] as the rebalance callback calls it (for tests).
    #[cfg(test)]
    fn pre_assign_for_test(&self, assigned: &[(String, i32)]) {
        self.on_assign(assigned.to_vec());
    }

    /// Whether each of `partitions` is drained or handed over, and how (`handed_over` when
    /// any was).
    fn settled(&self, partitions: &[(String, i32)]) -> Option<&'static str> {
        let mut how = "drained";
        for p in partitions {
            if self.drained(std::slice::from_ref(p)) {
                continue;
            }
            if !self.handover.sealed(&p.0, p.1) {
                return None;
            }
            how = "handed_over";
        }
        Some(how)
    }

    /// Whether every record read from `partitions` is committed.
    fn drained(&self, partitions: &[(String, i32)]) -> bool {
        let progress = lock(&self.drain.progress);
        partitions.iter().all(|(topic, partition)| {
            progress
                .get(topic)
                .and_then(|t| t.get(partition))
                .is_none_or(|p| p.committed >= p.read)
        })
    }

    /// Blocks the rebalance (it runs inside the consumer's poll) until every record read
    /// from `partitions` is committed (`Ok("drained")`), or, past the deadline, until what
    /// was published of those still running is committed and they are sealed
    /// (`Ok("handed_over")`, see [`Handover`]); `Err(why)` when that fails too or commits end
    /// first — the run is then marked revoked, under the commit lock, so that no commit
    /// lands after the partitions have been handed over. The partitions' progress is
    /// forgotten either way (a later assignment starts from the committed offset).
    fn drain(&self, partitions: &[(String, i32)]) -> Result<&'static str, &'static str> {
        off_the_runtime(|| self.wait_drained(partitions))
    }

    /// [`drain`](SluiceContext::drain)'s wait, on whatever thread may block. A partition
    /// still not drained at the deadline is handed over once a commit covers what was
    /// published of it ([`Handover`]): the wait ends then, whatever its head request still
    /// has to do.
    fn wait_drained(&self, partitions: &[(String, i32)]) -> Result<&'static str, &'static str> {
        let d = &self.drain;
        let wait = |until: Instant| loop {
            if let Some(how) = self.settled(partitions) {
                break Ok(how);
            }
            // An earlier give-up (or lost assignment): no commit will be accepted any more.
            if self.revoked() || d.ended.load(Ordering::SeqCst) || !d.open.load(Ordering::SeqCst) {
                break Err("commit_failed");
            }
            if Instant::now() >= until {
                break Err("deadline");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut outcome = wait(Instant::now() + d.deadline);
        if outcome == Err("deadline") {
            // A head request outlives the deadline: hand its partition over instead — at once
            // when nothing of it is uncommitted, else after the next commit (within another
            // deadline; only then does the run give up and restart).
            let undrained: Vec<(String, i32)> = partitions
                .iter()
                .filter(|p| !self.drained(std::slice::from_ref(*p)))
                .cloned()
                .collect();
            self.handover.begin(&undrained);
            outcome = wait(Instant::now() + d.deadline);
        }
        let outcome = outcome.or_else(|why| {
            let _held = lock(&d.commit);
            // A commit that held the lock may have settled them after all.
            if let Some(how) = self.settled(partitions) {
                return Ok(how);
            }
            self.revoked.store(true, Ordering::SeqCst);
            Err(why)
        });
        // No partition waits for a seal any more (a give-up marked the run revoked, so no
        // commit can seal one later), and those that drained need no hand-over.
        self.handover.forget(partitions);
        for p in partitions {
            if self.drained(std::slice::from_ref(p)) {
                self.handover.unseal(p);
            }
        }
        let mut progress = lock(&d.progress);
        for (topic, partition) in partitions {
            if let Some(t) = progress.get_mut(topic) {
                t.remove(partition);
            }
        }
        outcome
    }
}

/// Runs `wait`, which blocks its thread, without starving the runtime it is called from. The
/// rebalance callback runs inside the consumer's poll, on a tokio worker: a task that worker
/// woke last sits in its LIFO slot, which no other worker may steal, so a drain waiting there
/// for that task (the commit that ends the drain) would wait until its deadline.
/// `block_in_place` hands the worker's tasks to another thread first.
fn off_the_runtime<T>(wait: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
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
                let revoked: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                lock(&self.revocations).extend(revoked.iter().cloned());
                {
                    let mut fresh = lock(&self.fresh);
                    for p in &revoked {
                        fresh.remove(p);
                    }
                }
                let partitions = revoked.len();
                if !self.drain.open.load(Ordering::SeqCst) {
                    // The run is over and the consumer closing: nothing to hand over.
                    self.mark_revoked();
                } else if consumer.assignment_lost() {
                    metrics::counter!(REVOKE_DRAINS, "outcome" => "lost").increment(1);
                    tracing::warn!(
                        partitions,
                        "partitions lost (session expired); restarting from the committed offsets"
                    );
                    self.mark_revoked();
                } else {
                    let started = Instant::now();
                    match self.drain(&revoked) {
                        Ok(how) => {
                            metrics::counter!(REVOKE_DRAINS, "outcome" => how).increment(1);
                            tracing::info!(
                                partitions,
                                how,
                                waited_ms = started.elapsed().as_millis() as u64,
                                "partitions revoked: what was published of them is committed before the hand-over"
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
                        }
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                metrics::counter!(REBALANCES, "kind" => "assign").increment(1);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                let assigned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                self.on_assign(assigned);
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

#[cfg(test)]
#[path = "context_runtime_tests.rs"]
mod runtime_tests;

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
