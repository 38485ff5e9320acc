//! The Kafka source: a consumer-group member reading the requests topic (read_committed).
//! The pipeline asks for a record only while its in-flight budget has room, and librdkafka's
//! prefetch is bounded by `kafka.queued_max_kbytes`, so a slow store backs up into Kafka
//! instead of into memory.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::message::Message;
use sluice_pipeline::{RawRecord, Source, SourceError, SourceRef};

use super::SluiceConsumer;

/// Reads records from the subscribed topic.
pub struct KafkaSource {
    consumer: Arc<SluiceConsumer>,
}

impl KafkaSource {
    /// A source over an already subscribed consumer.
    pub fn new(consumer: Arc<SluiceConsumer>) -> Self {
        KafkaSource { consumer }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Option<RawRecord>, SourceError> {
        loop {
            match self.consumer.recv().await {
                Ok(m) => {
                    let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                    let key = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .map(str::to_owned);
                    return Ok(Some(RawRecord {
                        source: SourceRef {
                            topic: m.topic().to_string(),
                            partition: m.partition(),
                            offset: m.offset(),
                        },
                        key,
                        payload,
                        truncated: false,
                        resume_at: (m.offset() + 1) as u64,
                        received: Instant::now(),
                        permit: None,
                    }));
                }
                Err(e) => {
                    // Broker trouble is retried inside librdkafka; keep polling (and count it).
                    metrics::counter!(sluice_pipeline::metrics::PIPELINE_ERRORS, "component" => "kafka_consumer")
                        .increment(1);
                    if sluice_pipeline::logs::allow() {
                        tracing::warn!(error = %e, "consumer error");
                    }
                    if matches!(e, rdkafka::error::KafkaError::MessageConsumptionFatal(_)) {
                        return Err(SourceError(e.to_string()));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}
