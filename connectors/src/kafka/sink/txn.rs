//! One producer's side of the sink: the messages and input offsets of its open transaction
//! (exactly-once) or of the deliveries since the last offset commit (at-least-once), and how
//! they are committed, retried after a lost rebalance race, or aborted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_pipeline::SinkError;

use super::partial_metadata;
use crate::kafka::{SluiceConsumer, SluiceProducer};

/// What every transaction of a sink shares: the consumer whose offsets it commits (and whose
/// group metadata fences zombies), and the timeout of broker operations.
#[derive(Clone)]
pub(super) struct Shared {
    pub consumer: Arc<SluiceConsumer>,
    pub timeout: Duration,
}

/// Bound of what a transaction keeps to be sent again (beyond it, a lost race restarts the
/// run from the committed offsets instead).
const RESEND_MAX_BYTES: usize = 32 << 20;
/// Attempts to commit a transaction whose offsets lost a race with a rebalance.
pub(super) const COMMIT_ATTEMPTS: u32 = 4;

pub(super) fn revoked() -> SinkError {
    SinkError("partitions were revoked; restarting from the committed offsets".into())
}

pub(super) fn err(what: &str, e: KafkaError) -> SinkError {
    SinkError(format!("{what}: {e}"))
}

/// An offset commit that raced a rebalance: the group moved to a new generation (or was
/// rebalancing) between reading the group metadata and the commit. Retrying with fresh
/// metadata is safe: the member still owns what it has not been told to revoke.
pub(super) fn lost_rebalance_race(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress)
    )
}

/// Counts and logs a commit retried after [`lost_rebalance_race`], and lets the rebalance
/// settle (growing pause) before the next attempt.
pub(super) async fn before_retry(e: &KafkaError, attempt: u32) {
    metrics::counter!(sluice_pipeline::metrics::COMMITS, "outcome" => "retried").increment(1);
    tracing::info!(error = %e, attempt, "offsets commit raced a rebalance; retrying");
    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
}

/// Why one commit attempt did not commit (its transaction is aborted, its messages and
/// offsets kept for a retry).
pub(super) enum Failed {
    /// Partitions were revoked before their in-flight records could be committed.
    Revoked,
    Kafka(KafkaError),
    /// Not even sent: undelivered messages, a failed producer, no group metadata.
    Other(SinkError),
}

/// One message of the open transaction.
struct Sent {
    topic: String,
    key: Option<String>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

/// A producer and what it holds since its last commit.
pub(super) struct Txn {
    producer: SluiceProducer,
    transactional: bool,
    in_txn: bool,
    /// Per (topic, partition) of the records done since the last commit: where reading
    /// resumes, and how many progress events of the record there are already published (a
    /// partial position, committed as the offset's metadata; see [`partial_metadata`]).
    pub offsets: BTreeMap<(String, i32), (i64, usize)>,
    /// At-least-once: deliveries to await before committing offsets.
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
    /// Exactly-once: what the open transaction holds, to send again if its offsets commit
    /// loses a race with a rebalance (`None` once past [`RESEND_MAX_BYTES`]).
    sent: Option<Vec<Sent>>,
    sent_bytes: usize,
}

impl Txn {
    /// `transactional`: the producer's transactions are initialised (exactly-once).
    pub fn new(producer: SluiceProducer, transactional: bool) -> Self {
        Txn {
            producer,
            transactional,
            in_txn: false,
            offsets: BTreeMap::new(),
            deliveries: Vec::new(),
            sent: Some(Vec::new()),
            sent_bytes: 0,
        }
    }

    /// Nothing sent and no position recorded since the last commit.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty() && !self.in_txn
    }

    /// Whether every message of the open transaction is kept for a resend.
    pub fn kept_all(&self) -> bool {
        self.sent.is_some()
    }

    fn begin(&mut self) -> Result<(), SinkError> {
        if self.transactional && !self.in_txn {
            self.producer
                .begin_transaction()
                .map_err(|e| err("begin transaction", e))?;
            self.in_txn = true;
        }
        Ok(())
    }

    pub async fn send(
        &mut self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), SinkError> {
        self.begin()?;
        loop {
            let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(h) = headers.clone() {
                record = record.headers(h);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    if self.transactional {
                        self.keep(topic, key, payload, headers);
                    } else {
                        self.deliveries.push(delivery);
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The producer's queue is bounded: wait for deliveries to drain it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(err("produce", e)),
            }
        }
    }

    /// Keeps a sent message for [`resend`](Self::resend), within [`RESEND_MAX_BYTES`].
    fn keep(
        &mut self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) {
        let Some(sent) = self.sent.as_mut() else {
            return;
        };
        // Everything the copy holds, not only the payload.
        self.sent_bytes +=
            std::mem::size_of::<Sent>() + topic.len() + key.map_or(0, str::len) + payload.len();
        if self.sent_bytes > RESEND_MAX_BYTES {
            self.sent = None;
            return;
        }
        sent.push(Sent {
            topic: topic.to_string(),
            key: key.map(str::to_string),
            payload: payload.to_vec(),
            headers,
        });
    }

    fn forget_sent(&mut self) {
        match &mut self.sent {
            // Keeps a modest capacity for the next transaction, not a burst's.
            Some(sent) if sent.capacity() <= 4096 => sent.clear(),
            _ => self.sent = Some(Vec::new()),
        }
        self.sent_bytes = 0;
    }

    /// After an abort: a new transaction with the same messages. `false` when they were not
    /// all kept.
    pub async fn resend(&mut self) -> Result<bool, SinkError> {
        let Some(sent) = self.sent.take() else {
            return Ok(false);
        };
        let bytes = self.sent_bytes;
        self.forget_sent();
        for m in &sent {
            self.send(&m.topic, m.key.as_deref(), &m.payload, m.headers.clone())
                .await?;
        }
        debug_assert_eq!(self.sent_bytes, bytes);
        Ok(true)
    }

    /// Waits until the producer's polling thread has delivered everything sent (bounded by the
    /// operation timeout). The transaction commit flushes first, and rdkafka's flush, finding
    /// messages outstanding, polls the event queue for up to 100 ms at a time — while the
    /// delivery reports go to the polling thread. Waiting here keeps a commit at a few ms.
    pub async fn delivered(&self, s: &Shared) -> Result<(), SinkError> {
        let until = Instant::now() + s.timeout;
        while self.producer.in_flight_count() > 0 {
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return Err(SinkError(format!("producer failed: {code}: {reason}")));
            }
            if Instant::now() >= until {
                return Err(SinkError(format!(
                    "{} message(s) not delivered within {} ms",
                    self.producer.in_flight_count(),
                    s.timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Exactly-once, one attempt: offsets into the open transaction, then commit. On failure
    /// the transaction is aborted and its messages and offsets are kept.
    pub async fn try_commit(&mut self, s: &Shared) -> Result<(), Failed> {
        let t = s.timeout;
        let prepared = async {
            self.begin()?;
            self.delivered(s).await?;
            let tpl = self.offsets_list()?;
            let meta = s
                .consumer
                .group_metadata()
                .ok_or_else(|| SinkError("consumer has no group metadata".into()))?;
            Ok::<_, SinkError>((tpl, meta))
        };
        let (tpl, meta) = match prepared.await {
            Ok(p) => p,
            Err(e) => {
                self.abort_open(s).await;
                return Err(Failed::Other(e));
            }
        };
        let ctx = s.consumer.context().clone();
        let result = self
            .blocking(move |p| {
                Ok(ctx.commit_owned(&tpl, || {
                    p.send_offsets_to_transaction(&tpl, &meta, t)?;
                    p.commit_transaction(t)
                }))
            })
            .await;
        let failed = match result {
            Ok(Some(Ok(()))) => {
                self.in_txn = false;
                self.offsets.clear();
                self.forget_sent();
                return Ok(());
            }
            Ok(None) => Failed::Revoked,
            Ok(Some(Err(e))) | Err(e) => Failed::Kafka(e),
        };
        self.abort_open(s).await;
        Err(failed)
    }

    /// Whether a commit that failed with `e` may be retried: a lost race, every message kept,
    /// and every partition whose offsets are pending still assigned and not revoked undrained
    /// (never retried for partitions this member no longer owns: their new owner redoes them).
    pub fn retryable(&self, e: &KafkaError, attempt: u32, s: &Shared) -> bool {
        attempt < COMMIT_ATTEMPTS
            && lost_rebalance_race(e)
            && self.sent.is_some()
            && !s.consumer.context().revoked()
            && s.consumer.assignment().is_ok_and(|assigned| {
                self.offsets
                    .keys()
                    .all(|(t, p)| assigned.find_partition(t, *p).is_some())
            })
    }

    /// Exactly-once: commits, retrying an offsets commit that lost a race with a rebalance
    /// (send the transaction's messages again, fresh group metadata) from `attempt` on,
    /// before giving up. Nothing may have been sent after this transaction's messages.
    pub async fn commit(&mut self, s: &Shared, mut attempt: u32) -> Result<(), SinkError> {
        loop {
            let e = match self.try_commit(s).await {
                Ok(()) => return Ok(()),
                Err(Failed::Revoked) => {
                    self.abort(s).await;
                    return Err(revoked());
                }
                Err(Failed::Other(e)) => {
                    self.abort(s).await;
                    return Err(e);
                }
                Err(Failed::Kafka(e)) => e,
            };
            if !self.retryable(&e, attempt, s) {
                self.abort(s).await;
                return Err(err("transaction", e));
            }
            before_retry(&e, attempt).await;
            if !self.resend().await? {
                self.abort(s).await;
                return Err(err("transaction", e));
            }
            attempt += 1;
        }
    }

    /// At-least-once: offsets committed by the consumer once every delivery is confirmed;
    /// a commit that raced a rebalance is retried.
    pub async fn commit_offsets(&mut self, s: &Shared) -> Result<(), SinkError> {
        for d in self.deliveries.drain(..) {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(err("delivery", e)),
                Err(_) => return Err(SinkError("delivery canceled".into())),
            }
        }
        let mut attempt = 1;
        loop {
            let (consumer, tpl) = (s.consumer.clone(), self.offsets_list()?);
            let result = tokio::task::spawn_blocking(move || {
                consumer.context().commit_owned(&tpl, || {
                    consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                })
            })
            .await
            .map_err(|e| SinkError(e.to_string()))?;
            match result.ok_or_else(revoked)? {
                Ok(()) => {
                    self.offsets.clear();
                    return Ok(());
                }
                Err(e) if attempt < COMMIT_ATTEMPTS && lost_rebalance_race(&e) => {
                    before_retry(&e, attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(err("offset commit", e)),
            }
        }
    }

    /// Runs a blocking producer call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(SluiceProducer) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, KafkaError> {
        let p = self.producer.clone();
        tokio::task::spawn_blocking(move || f(p))
            .await
            .unwrap_or_else(|e| {
                Err(KafkaError::Canceled)
                    .inspect_err(|_| tracing::error!(error = %e, "producer task failed"))
            })
    }

    /// Aborts the open transaction and forgets what it held.
    pub async fn abort(&mut self, s: &Shared) {
        self.abort_open(s).await;
        self.offsets.clear();
        self.forget_sent();
    }

    /// Aborts the open Kafka transaction, keeping the offsets and messages it held (a retry
    /// sends them again).
    pub async fn abort_open(&mut self, s: &Shared) {
        if self.in_txn {
            let t = s.timeout;
            if let Err(e) = self.blocking(move |p| p.abort_transaction(t)).await {
                tracing::warn!(error = %e, "abort_transaction failed");
            }
            self.in_txn = false;
        }
    }

    fn offsets_list(&self) -> Result<TopicPartitionList, SinkError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), &(next, published)) in &self.offsets {
            let mut e = tpl.add_partition(topic, *partition);
            e.set_offset(Offset::Offset(next))
                .map_err(|e| err("offsets", e))?;
            if published > 0 {
                e.set_metadata(partial_metadata(published));
            }
        }
        Ok(tpl)
    }
}
