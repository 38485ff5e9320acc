//! The Kafka source: a consumer-group member reading the requests topic (read_committed).
//! The pipeline asks for a record only while its in-flight budget has room; when the budget
//! stays spent it pauses every assigned partition (librdkafka stops fetching them) and keeps
//! polling meanwhile, so the instance stays in its group and serves rebalances; it resumes
//! them when the budget drains. librdkafka's prefetch is bounded by `kafka.queued_max_kbytes`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use sluice_pipeline::{RawRecord, Source, SourceError, SourceRef};

use super::SluiceConsumer;

/// Reads records from the subscribed topic.
pub struct KafkaSource {
    consumer: Arc<SluiceConsumer>,
    /// Records that arrived while paused (fetched before the pause took effect), in order;
    /// at most what librdkafka had prefetched (`kafka.queued_max_kbytes` per partition).
    pending: VecDeque<RawRecord>,
    /// A fatal consumer error seen while paused, reported by the next `next`.
    fatal: Option<SourceError>,
}

impl KafkaSource {
    /// A source over an already subscribed consumer.
    pub fn new(consumer: Arc<SluiceConsumer>) -> Self {
        KafkaSource {
            consumer,
            pending: VecDeque::new(),
            fatal: None,
        }
    }

    /// One poll: a record, or `None` after a (counted, logged) non-fatal error.
    async fn poll(&self) -> Result<Option<RawRecord>, SourceError> {
        match self.consumer.recv().await {
            Ok(m) => Ok(Some(raw(&m))),
            Err(e) => {
                // Broker trouble is retried inside librdkafka; keep polling (and count it).
                metrics::counter!(sluice_pipeline::metrics::PIPELINE_ERRORS, "component" => "kafka_consumer")
                    .increment(1);
                if sluice_pipeline::logs::allow() {
                    tracing::warn!(error = %e, "consumer error");
                }
                if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                    return Err(SourceError(e.to_string()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(None)
            }
        }
    }

    fn pause_all(&self, pause: bool) {
        let assigned = match self.consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(error = %e, "reading the assignment failed");
                return;
            }
        };
        let ctx = self.consumer.context();
        if pause && self.pending.is_empty() {
            ctx.forget_revocations();
        }
        ctx.set_paused(pause);
        let result = if pause {
            self.consumer.pause(&assigned)
        } else {
            self.consumer.resume(&assigned)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "pausing/resuming partitions failed");
        } else {
            tracing::debug!(
                partitions = assigned.count(),
                pause,
                "partitions paused/resumed"
            );
        }
    }
}

fn raw(m: &BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        source: SourceRef {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        },
        key: m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        truncated: false,
        resume_at: (m.offset() + 1) as u64,
        received: Instant::now(),
        permit: None,
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Option<RawRecord>, SourceError> {
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        let ctx = self.consumer.context();
        let held = std::iter::from_fn(|| self.pending.pop_front())
            // Its partition was revoked while it waited: whoever owns it now (maybe this
            // member again) reads it from the committed offset.
            .find(|r| !ctx.was_revoked_while_paused(&r.source.topic, r.source.partition));
        let record = match held {
            Some(r) => r,
            None => loop {
                if let Some(r) = self.poll().await? {
                    break r;
                }
            },
        };
        self.consumer.context().record_read();
        Ok(Some(record))
    }

    fn pause(&mut self) {
        self.pause_all(true);
    }

    fn resume(&mut self) {
        self.pause_all(false);
    }

    async fn idle(&mut self) {
        if self.fatal.is_some() {
            return std::future::pending().await;
        }
        // Keep polling: the group sees a live member and rebalances are served.
        match self.poll().await {
            Ok(r) => self.pending.extend(r),
            Err(e) => self.fatal = Some(e),
        }
    }
}
