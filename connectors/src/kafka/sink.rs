//! The Kafka sink: one transactional producer per run. Between two commits it holds one open
//! transaction with the result events and dead letters of the records done so far; `commit`
//! adds their input offsets (`send_offsets_to_transaction` with the consumer's group metadata)
//! and commits — so results and input position become visible together, or not at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_config::{Delivery, KafkaTopics};
use sluice_pipeline::contract::{Counts, DeadLetter, ResultEvent};

pub use super::position::{partial_metadata, published_in};
pub use super::txn_clock::TxnClock;

/// What a partial position records: progress events published and their item counts.
type Published = (usize, Counts);
use sluice_pipeline::fit::{cap_message, MESSAGE_MAX};
use sluice_pipeline::{Sink, SinkError, SourceRef};

use super::{SluiceConsumer, SluiceProducer};

/// Publishes to the results and dead-letter topics and commits input offsets.
pub struct KafkaSink {
    producer: SluiceProducer,
    consumer: Arc<SluiceConsumer>,
    topics: KafkaTopics,
    delivery: Delivery,
    timeout: Duration,
    in_txn: bool,
    /// When the open transaction began (see [`TxnClock`]).
    clock: TxnClock,
    /// Per (topic, partition) of the records done since the last commit: where reading
    /// resumes, and for a partial position how many progress events of the record there are
    /// already published and their item counts (the offset's metadata; see
    /// [`partial_metadata`]).
    offsets: BTreeMap<(String, i32), (i64, Option<Published>)>,
    /// At-least-once: deliveries to await before committing offsets.
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
    /// Exactly-once: what the open transaction holds, to send again if its offsets commit
    /// loses a race with a rebalance (`None` once past [`RESEND_MAX_BYTES`]).
    sent: Option<Vec<Sent>>,
    sent_bytes: usize,
    /// `limits.max_event_bytes`: the largest message this sink sends.
    max_event_bytes: usize,
}

/// One message of the open transaction.
struct Sent {
    topic: String,
    key: Option<String>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

/// Bound of what the sink keeps to resend a transaction (beyond it, a lost race restarts the
/// run from the committed offsets instead).
const RESEND_MAX_BYTES: usize = 32 << 20;
/// Room kept in a dead letter for its headers and the record's framing.
const DLQ_HEADROOM: usize = 4096;
/// Attempts to commit a transaction whose offsets lost a race with a rebalance.
const COMMIT_ATTEMPTS: u32 = 4;

fn revoked() -> SinkError {
    SinkError("partitions were revoked; restarting from the committed offsets".into())
}

fn err(what: &str, e: KafkaError) -> SinkError {
    SinkError(format!("{what}: {e}"))
}

/// An offset commit that raced a rebalance: the group moved to a new generation (or was
/// rebalancing) between reading the group metadata and the commit. Retrying with fresh
/// metadata is safe: the member still owns what it has not been told to revoke.
fn lost_rebalance_race(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress)
    )
}

/// Counts and logs a commit retried after [`lost_rebalance_race`], and lets the rebalance
/// settle (growing pause) before the next attempt.
async fn before_retry(e: &KafkaError, attempt: u32) {
    metrics::counter!(sluice_pipeline::metrics::COMMITS, "outcome" => "retried").increment(1);
    tracing::info!(error = %e, attempt, "offsets commit raced a rebalance; retrying");
    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
}

impl KafkaSink {
    /// A sink over `producer` (transactions already initialised in exactly-once mode) that
    /// sends nothing larger than `max_event_bytes`.
    pub fn new(
        producer: SluiceProducer,
        consumer: Arc<SluiceConsumer>,
        topics: KafkaTopics,
        delivery: Delivery,
        timeout: Duration,
        max_event_bytes: usize,
    ) -> Self {
        KafkaSink {
            producer,
            consumer,
            topics,
            delivery,
            timeout,
            in_txn: false,
            clock: TxnClock::default(),
            offsets: BTreeMap::new(),
            deliveries: Vec::new(),
            sent: Some(Vec::new()),
            sent_bytes: 0,
            max_event_bytes,
        }
    }

    /// The clock of this sink's transactions (shared: it outlives the sink).
    pub fn transaction_clock(&self) -> TxnClock {
        self.clock.clone()
    }

    fn begin(&mut self) -> Result<(), SinkError> {
        if self.delivery == Delivery::ExactlyOnce && !self.in_txn {
            self.clock.set(Some(Instant::now()));
            self.producer
                .begin_transaction()
                .map_err(|e| err("begin transaction", e))?;
            self.in_txn = true;
        }
        Ok(())
    }

    async fn send(
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
                    if self.delivery == Delivery::AtLeastOnce {
                        self.deliveries.push(delivery);
                    } else {
                        self.keep(topic, key, payload, headers);
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

    /// Whether every partition whose offsets are pending is still assigned and none was
    /// revoked before it could be drained.
    fn still_owns_offsets(&self) -> bool {
        if self.consumer.context().revoked() {
            return false;
        }
        let Ok(assigned) = self.consumer.assignment() else {
            return false;
        };
        self.offsets
            .keys()
            .all(|(t, p)| assigned.find_partition(t, *p).is_some())
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
    async fn resend(&mut self) -> Result<bool, SinkError> {
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
    async fn delivered(&self) -> Result<(), SinkError> {
        let until = Instant::now() + self.timeout;
        while self.producer.in_flight_count() > 0 {
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return Err(SinkError(format!("producer failed: {code}: {reason}")));
            }
            if Instant::now() >= until {
                return Err(SinkError(format!(
                    "{} message(s) not delivered within {} ms",
                    self.producer.in_flight_count(),
                    self.timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Exactly-once: offsets into the open transaction, then commit. An offsets commit that
    /// lost a race with a rebalance is retried (abort, send the transaction's messages again,
    /// fresh group metadata) a few times before the run gives up and restarts.
    async fn commit_transaction(&mut self) -> Result<(), SinkError> {
        let t = self.timeout;
        let mut attempt = 1;
        loop {
            self.begin()?;
            self.delivered().await?;
            let tpl = self.offsets_list()?;
            let meta = self
                .consumer
                .group_metadata()
                .ok_or_else(|| SinkError("consumer has no group metadata".into()))?;
            let ctx = self.consumer.context().clone();
            let result = self
                .blocking(move |p| {
                    Ok(ctx.commit_owned(&tpl, || {
                        p.send_offsets_to_transaction(&tpl, &meta, t)?;
                        p.commit_transaction(t)
                    }))
                })
                .await;
            let e = match result {
                Ok(Some(Ok(()))) => {
                    self.in_txn = false;
                    self.clock.set(None);
                    self.forget_sent();
                    return Ok(());
                }
                Ok(None) => {
                    self.abort().await;
                    return Err(revoked());
                }
                Ok(Some(Err(e))) | Err(e) => {
                    self.clock.fail();
                    e
                }
            };
            // Never retry for partitions this member no longer owns (revoked undrained, lost):
            // their new owner redoes them.
            let retry = attempt < COMMIT_ATTEMPTS
                && lost_rebalance_race(&e)
                && self.sent.is_some()
                && self.still_owns_offsets();
            if !retry {
                self.abort().await;
                return Err(err("transaction", e));
            }
            self.abort_open().await;
            before_retry(&e, attempt).await;
            if !self.resend().await? {
                self.abort().await;
                return Err(err("transaction", e));
            }
            attempt += 1;
        }
    }

    /// At-least-once: offsets committed by the consumer once every delivery is confirmed;
    /// a commit that raced a rebalance is retried.
    async fn commit_offsets(&mut self) -> Result<(), SinkError> {
        for d in self.deliveries.drain(..) {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(err("delivery", e)),
                Err(_) => return Err(SinkError("delivery canceled".into())),
            }
        }
        let mut attempt = 1;
        loop {
            let (consumer, tpl) = (self.consumer.clone(), self.offsets_list()?);
            let result = tokio::task::spawn_blocking(move || {
                consumer.context().commit_owned(&tpl, || {
                    consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                })
            })
            .await
            .map_err(|e| SinkError(e.to_string()))?;
            match result.ok_or_else(revoked)? {
                Ok(()) => return Ok(()),
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
    async fn abort(&mut self) {
        self.abort_open().await;
        self.offsets.clear();
        self.forget_sent();
    }

    /// Aborts the open Kafka transaction, keeping the offsets and messages it held (a retry
    /// sends them again).
    async fn abort_open(&mut self) {
        if self.in_txn {
            let t = self.timeout;
            match self.blocking(move |p| p.abort_transaction(t)).await {
                Ok(()) => self.clock.set(None),
                Err(e) => {
                    self.clock.fail();
                    tracing::warn!(error = %e, "abort_transaction failed");
                }
            }
            self.in_txn = false;
        }
    }

    fn offsets_list(&self) -> Result<TopicPartitionList, SinkError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), (next, partial)) in &self.offsets {
            let mut e = tpl.add_partition(topic, *partition);
            e.set_offset(Offset::Offset(*next))
                .map_err(|e| err("offsets", e))?;
            if let Some((published, counts)) = partial.as_ref().filter(|(n, _)| *n > 0) {
                e.set_metadata(partial_metadata(*published, counts));
            }
        }
        Ok(tpl)
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn publish(&mut self, event: &ResultEvent, json: &[u8]) -> Result<(), SinkError> {
        if !self.admit(event.source()) {
            return Ok(());
        }
        if json.len() > self.max_event_bytes {
            // The execute stage fits every event (`sluice_pipeline::fit`), a progress event
            // down to its items' statuses: only a chunk planned under a far larger limit gets
            // here (anything else is a bug).
            let why = match event {
                ResultEvent::Progress(_) => format!(
                    " with its items' statuses alone: request {} was planned, when first \
                     claimed, with larger chunks than this limit carries; raise it to {} or \
                     more until the request has finished",
                    event.request_id(),
                    json.len()
                ),
                _ => String::new(),
            };
            return Err(SinkError(format!(
                "a {} event of {} bytes exceeds limits.max_event_bytes ({}){why}",
                event.kind(),
                json.len(),
                self.max_event_bytes,
            )));
        }
        let topic = self.topics.results.clone();
        self.send(&topic, Some(event.request_id()), json, None)
            .await
    }

    async fn dead_letter(&mut self, raw: &[u8], letter: &DeadLetter) -> Result<(), SinkError> {
        let s = &letter.source;
        if !self.admit(s) {
            return Ok(());
        }
        let mut fields = vec![
            ("sluice.error.code", letter.error.code.as_str().to_string()),
            (
                "sluice.error.message",
                cap_message(letter.error.message.clone(), MESSAGE_MAX),
            ),
            ("sluice.source.topic", s.topic.clone()),
            ("sluice.source.partition", s.partition.to_string()),
            ("sluice.source.offset", s.offset.to_string()),
        ];
        // The original bytes, cut to fit one message: a record the broker took on the requests
        // topic may still be refused on the dead-letter topic, and a refused dead letter would
        // end the run on every restart.
        let room = self.max_event_bytes.saturating_sub(DLQ_HEADROOM);
        let payload = if raw.len() > room {
            fields.push(("sluice.truncated", raw.len().to_string()));
            &raw[..room]
        } else {
            raw
        };
        let mut headers = OwnedHeaders::new();
        for (key, value) in &fields {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let topic = self.topics.dlq.clone();
        self.send(&topic, None, payload, Some(headers)).await
    }

    async fn record_done(&mut self, source: &SourceRef, resume_at: u64) -> Result<(), SinkError> {
        if !self.admit(source) {
            return Ok(());
        }
        self.offsets.insert(
            (source.topic.clone(), source.partition),
            (resume_at as i64, None),
        );
        Ok(())
    }

    async fn record_partial(
        &mut self,
        source: &SourceRef,
        start_at: u64,
        published: usize,
        counts: &Counts,
    ) -> Result<(), SinkError> {
        if !self.admit(source) {
            return Ok(());
        }
        self.offsets.insert(
            (source.topic.clone(), source.partition),
            (start_at as i64, Some((published, counts.clone()))),
        );
        Ok(())
    }

    fn owns(&self, source: &SourceRef) -> bool {
        !self
            .consumer
            .context()
            .handover()
            .sealed(&source.topic, source.partition)
    }

    async fn commit(&mut self) -> Result<(), SinkError> {
        if self.consumer.context().revoked() {
            // Partitions were revoked before their records could be drained (deadline, lost
            // assignment): such records may be in this transaction, and their new owner will
            // redo them. Abort everything and let the service restart from committed offsets.
            self.abort().await;
            return Err(revoked());
        }
        if self.offsets.is_empty() && !self.in_txn {
            return Ok(());
        }
        let committed = match self.delivery {
            Delivery::ExactlyOnce => self.commit_transaction().await,
            Delivery::AtLeastOnce => self.commit_offsets().await,
        };
        if committed.is_err() {
            // A revocation waiting for this commit need not wait for its deadline.
            self.consumer.context().commits_ended();
        }
        committed?;
        self.offsets.clear();
        Ok(())
    }
}

impl KafkaSink {
    /// Whether the record at `source` may still put events and positions in the unit: not
    /// once its partition was handed over mid-run ([`super::handover`]).
    fn admit(&self, source: &SourceRef) -> bool {
        let admitted = self
            .consumer
            .context()
            .handover()
            .admit(&source.topic, source.partition);
        if !admitted {
            tracing::debug!(
                partition = source.partition,
                offset = source.offset,
                "partition handed over: its late output is dropped (its new owner publishes it)"
            );
        }
        admitted
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // The run is over (or a stage failed and took the sink down): a revocation waiting
        // for records still in flight need not wait for its deadline.
        self.consumer.context().commits_ended();
    }
}
