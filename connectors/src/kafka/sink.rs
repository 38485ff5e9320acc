//! The Kafka sink. Exactly-once: between two commits it holds one open transaction with the
//! result events and dead letters of the records done so far; `commit` adds their input
//! offsets (`send_offsets_to_transaction` with the consumer's group metadata) and commits — so
//! results and input position become visible together, or not at all.
//!
//! Kafka allows one open transaction per producer, and a commit takes several round trips, so
//! the sink has two transactional producers and commits overlap the next transaction: `commit`
//! waits until the sealed transaction's messages are in the log (a request's events that
//! straddle two transactions keep their order), hands its commit to a task, and the next
//! transaction fills on the other producer meanwhile. Transactions commit strictly in order:
//! the next is sealed only once the previous committed, and if the previous fails, the next
//! is aborted with it. A previous commit that lost a race with a rebalance is retried in
//! order — this transaction is aborted, the previous one's messages are sent and committed
//! again, then this one's are sent again — and a failure is reported by the next `commit`
//! or [`Sink::flush`], which the commit stage calls when it has nothing to commit.

mod txn;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use sluice_config::{Delivery, KafkaTopics};
use sluice_pipeline::contract::{DeadLetter, ResultEvent};
use sluice_pipeline::fit::{cap_message, MESSAGE_MAX};
use sluice_pipeline::{Sink, SinkError, SourceRef};
use tokio::task::JoinHandle;

use super::{SluiceConsumer, SluiceProducer};
use txn::{before_retry, err, revoked, Failed, Shared, Txn};

/// Publishes to the results and dead-letter topics and commits input offsets.
pub struct KafkaSink {
    shared: Shared,
    topics: KafkaTopics,
    delivery: Delivery,
    /// The transaction being filled (at-least-once: the deliveries since the last commit).
    open: Txn,
    /// The second producer (exactly-once with two producers).
    other: Other,
    buf: Vec<u8>,
    /// `limits.max_event_bytes`: the largest message this sink sends.
    max_event_bytes: usize,
}

/// The producer that is not filling the open transaction.
enum Other {
    /// One producer only (at-least-once).
    None,
    Idle(Txn),
    /// Committing the previous transaction; the task gives the producer back.
    Committing(JoinHandle<(Txn, Result<(), Failed>)>),
}

/// Room kept in a dead letter for its headers and the record's framing.
const DLQ_HEADROOM: usize = 4096;

impl KafkaSink {
    /// A sink over `producer` (transactions already initialised in exactly-once mode) that
    /// sends nothing larger than `max_event_bytes`. With `second` (exactly-once, its
    /// transactions initialised too), commits overlap the next transaction.
    pub fn new(
        producer: SluiceProducer,
        second: Option<SluiceProducer>,
        consumer: Arc<SluiceConsumer>,
        topics: KafkaTopics,
        delivery: Delivery,
        timeout: Duration,
        max_event_bytes: usize,
    ) -> Self {
        let transactional = delivery == Delivery::ExactlyOnce;
        KafkaSink {
            shared: Shared { consumer, timeout },
            topics,
            delivery,
            open: Txn::new(producer, transactional),
            other: match second {
                Some(p) if transactional => Other::Idle(Txn::new(p, true)),
                _ => Other::None,
            },
            buf: Vec::with_capacity(1024),
            max_event_bytes,
        }
    }

    /// Exactly-once: seals the open transaction and commits it — in a task when there is a
    /// second producer, after the previous transaction committed.
    async fn commit_transaction(&mut self) -> Result<(), SinkError> {
        if matches!(self.other, Other::None) {
            return self.open.commit(&self.shared, 1).await;
        }
        self.settle().await?;
        // Its messages in the log before the next transaction sends any (after `settle`: a
        // retry there sends them again).
        if let Err(e) = self.open.delivered(&self.shared).await {
            self.abort_all().await;
            return Err(e);
        }
        let Other::Idle(next) = std::mem::replace(&mut self.other, Other::None) else {
            unreachable!("settled");
        };
        let mut sealed = std::mem::replace(&mut self.open, next);
        let shared = self.shared.clone();
        self.other = Other::Committing(tokio::spawn(async move {
            let started = Instant::now();
            let result = sealed.try_commit(&shared).await;
            tracing::trace!(
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                ok = result.is_ok(),
                "transaction committed in the background"
            );
            (sealed, result)
        }));
        Ok(())
    }

    /// Waits for the previous transaction's commit: on success its producer is idle again;
    /// a lost rebalance race is retried in order; any other failure aborts the open
    /// transaction too.
    async fn settle(&mut self) -> Result<(), SinkError> {
        let Other::Committing(task) = &mut self.other else {
            return Ok(());
        };
        let joined = task.await;
        self.other = Other::None;
        let (mut prev, result) = match joined {
            Ok(done) => done,
            Err(e) => {
                self.open.abort(&self.shared).await;
                return Err(SinkError(format!("transaction commit task failed: {e}")));
            }
        };
        let s = &self.shared;
        match result {
            Ok(()) => {}
            Err(Failed::Revoked) => {
                prev.abort(s).await;
                self.open.abort(s).await;
                self.other = Other::Idle(prev);
                return Err(revoked());
            }
            Err(Failed::Other(e)) => {
                prev.abort(s).await;
                self.open.abort(s).await;
                self.other = Other::Idle(prev);
                return Err(e);
            }
            Err(Failed::Kafka(e)) => {
                if !(prev.retryable(&e, 1, s) && self.open.kept_all()) {
                    prev.abort(s).await;
                    self.open.abort(s).await;
                    self.other = Other::Idle(prev);
                    return Err(err("transaction", e));
                }
                // In order: the previous transaction's messages again, then this one's.
                self.open.abort_open(s).await;
                before_retry(&e, 1).await;
                let retried = async {
                    if !prev.resend().await? {
                        return Err(err("transaction", e));
                    }
                    prev.commit(s, 2).await?;
                    self.open.resend().await?;
                    Ok(())
                };
                if let Err(e) = retried.await {
                    prev.abort(s).await;
                    self.open.abort(s).await;
                    self.other = Other::Idle(prev);
                    return Err(e);
                }
            }
        }
        self.other = Other::Idle(prev);
        Ok(())
    }

    /// Aborts the open transaction and, once its commit ends, the previous one's leftovers.
    async fn abort_all(&mut self) {
        if let Other::Committing(task) = &mut self.other {
            if let Ok((mut prev, _)) = task.await {
                prev.abort(&self.shared).await;
                self.other = Other::Idle(prev);
            } else {
                self.other = Other::None;
            }
        }
        self.open.abort(&self.shared).await;
    }
}

/// The committed offset's metadata of a partial position: the record at the offset has its
/// first `published` progress events committed.
pub fn partial_metadata(published: usize) -> String {
    format!("{PARTIAL_PREFIX}{published}")
}

/// Reads [`partial_metadata`]; 0 for anything else (no metadata, another tool's).
pub fn published_in(metadata: &str) -> usize {
    metadata
        .strip_prefix(PARTIAL_PREFIX)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

const PARTIAL_PREFIX: &str = "sluice:v1:published=";

#[async_trait]
impl Sink for KafkaSink {
    async fn publish(&mut self, event: &ResultEvent) -> Result<(), SinkError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        serde_json::to_writer(&mut buf, event).map_err(|e| SinkError(e.to_string()))?;
        if buf.len() > self.max_event_bytes {
            // The execute stage fits every event (`sluice_pipeline::fit`): this is a bug.
            return Err(SinkError(format!(
                "a {} event of {} bytes exceeds limits.max_event_bytes ({})",
                event.kind(),
                buf.len(),
                self.max_event_bytes
            )));
        }
        let topic = self.topics.results.clone();
        let r = self
            .open
            .send(&topic, Some(event.request_id()), &buf, None)
            .await;
        self.buf = buf;
        r
    }

    async fn dead_letter(&mut self, raw: &[u8], letter: &DeadLetter) -> Result<(), SinkError> {
        let s = &letter.source;
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
        self.open.send(&topic, None, payload, Some(headers)).await
    }

    async fn record_done(&mut self, source: &SourceRef, resume_at: u64) -> Result<(), SinkError> {
        self.open.offsets.insert(
            (source.topic.clone(), source.partition),
            (resume_at as i64, 0),
        );
        Ok(())
    }

    async fn record_partial(
        &mut self,
        source: &SourceRef,
        start_at: u64,
        published: usize,
    ) -> Result<(), SinkError> {
        self.open.offsets.insert(
            (source.topic.clone(), source.partition),
            (start_at as i64, published),
        );
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), SinkError> {
        if self.shared.consumer.context().revoked() {
            // Partitions were revoked before their records could be drained (deadline, lost
            // assignment): such records may be in this transaction, and their new owner will
            // redo them. Abort everything and let the service restart from committed offsets.
            self.abort_all().await;
            return Err(revoked());
        }
        if self.open.is_empty() {
            return Ok(());
        }
        let committed = match self.delivery {
            Delivery::ExactlyOnce => self.commit_transaction().await,
            Delivery::AtLeastOnce => self.open.commit_offsets(&self.shared).await,
        };
        if committed.is_err() {
            // A revocation waiting for this commit need not wait for its deadline.
            self.shared.consumer.context().commits_ended();
        }
        committed
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let settled = self.settle().await;
        if settled.is_err() {
            self.shared.consumer.context().commits_ended();
        }
        settled
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // The run is over (or a stage failed and took the sink down): a revocation waiting
        // for records still in flight need not wait for its deadline.
        self.shared.consumer.context().commits_ended();
        // A commit still running in the background (the run ended on an error) must not keep
        // this run's consumer alive: its transaction is either committed already or left open,
        // and the next run's producers abort it (init_transactions) before reading.
        if let Other::Committing(task) = &self.other {
            task.abort();
        }
    }
}
