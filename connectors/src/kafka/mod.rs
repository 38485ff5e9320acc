//! Kafka: a consumer-group member as the [`Source`](sluice_pipeline::Source), a transactional
//! producer as the [`Sink`](sluice_pipeline::Sink), and the admin calls around them.
//!
//! Exactly-once (DESIGN.md, KIP-447): result events and dead letters of a batch of records are
//! produced in one Kafka transaction together with the input offsets
//! (`send_offsets_to_transaction` with the consumer's group metadata). A zombie's transaction
//! cannot commit once the group has moved on. Anything that leaves the transaction in doubt —
//! fencing, a fatal producer error, partitions revoked while records were in flight — ends the
//! current run with an error: the service aborts, drops the consumer and producer, and starts
//! again from the committed offsets (re-read records are re-published from the store's ledger,
//! not re-executed).
//!
//! Parts: [`context`] (rebalance tracking), [`source`], [`sink`], [`admin`] (topics, health),
//! [`group`] (the group as its coordinator sees it: unowned partitions, group lag).

pub mod admin;
pub mod context;
pub mod group;
pub mod sink;
pub mod source;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use sluice_config::KafkaConfig;

pub use context::{ClientLogs, SluiceConsumer, SluiceContext};

/// The producer type of the service.
pub type SluiceProducer = rdkafka::producer::FutureProducer<ClientLogs>;
pub use sink::KafkaSink;
pub use source::KafkaSource;

/// Client settings shared by consumers, producers and admin clients: brokers plus the
/// pass-through properties (security).
pub fn base_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// The service's consumer settings: manual offsets, read_committed, cooperative-sticky.
pub fn consumer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(k);
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
        .set(
            "queued.max.messages.kbytes",
            k.queued_max_kbytes.to_string(),
        )
        .set("enable.partition.eof", "false");
    // The prefetch queue is bounded (`queued.max.messages.kbytes`, far below librdkafka's
    // 64 MiB default); when a partition's fetch finds it full, librdkafka postpones that
    // partition's next fetch by `fetch.queue.backoff.ms` — 1 s by default, which under load
    // starved the pipeline for ~60 % of every second once the queue had drained. A short
    // back-off refills the queue as soon as the pipeline has made room.
    if !k.properties.contains_key("fetch.queue.backoff.ms") {
        c.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string());
    }
    // No static membership (`group.instance.id`) unless asked for: a static member killed
    // between the two rounds of a cooperative rebalance and restarted at once gets its
    // round-one assignment back from a group the coordinator thinks is stable, and nobody
    // starts round two — the partitions it gave up stay owned by nobody (see README,
    // "Consumer group"). The watchdog in the service rejoins in that case.
    if let (Some(id), true) = (&k.instance_id, k.static_membership) {
        c.set("group.instance.id", id);
    }
    c
}

/// librdkafka's `fetch.queue.backoff.ms` for the service's consumer, unless the config's
/// pass-through properties set it.
pub const FETCH_QUEUE_BACKOFF_MS: u64 = 10;

/// The service's producer settings; `transactional_id` is `None` in at-least-once mode.
pub fn producer_config(k: &KafkaConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut c = base_config(k);
    c.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("acks", "all");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id).set(
            "transaction.timeout.ms",
            k.transaction_timeout_ms.to_string(),
        );
    }
    c
}

/// Timeout of broker operations.
pub fn op_timeout(k: &KafkaConfig) -> Duration {
    Duration::from_millis(k.operation_timeout_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_refetches_soon_after_its_bounded_queue_drains() {
        // librdkafka's default (1 s) starved a busy pipeline for most of every second once
        // the prefetch queue it had filled was consumed.
        let k = KafkaConfig::default();
        let c = consumer_config(&k);
        assert_eq!(
            c.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS.to_string().as_str())
        );
        const { assert!(FETCH_QUEUE_BACKOFF_MS <= 50) };
        // An operator's pass-through setting wins.
        let mut k = KafkaConfig::default();
        k.properties
            .insert("fetch.queue.backoff.ms".into(), "250".into());
        assert_eq!(
            consumer_config(&k).get("fetch.queue.backoff.ms"),
            Some("250")
        );
    }
}
