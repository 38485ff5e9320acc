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
//! Parts: [`context`] (rebalance tracking), [`source`], [`sink`], [`position`] (partial
//! positions in the committed offsets' metadata), [`admin`] (topics, health),
//! [`group`] (the group as its coordinator sees it: unowned partitions, group lag).

pub mod admin;
pub mod context;
pub mod group;
pub mod handover;
pub mod position;
pub mod sink;
pub mod source;
pub mod txn_clock;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use sluice_config::KafkaConfig;

pub use context::{ClientLogs, SluiceConsumer, SluiceContext};

/// The producer type of the service.
pub type SluiceProducer = rdkafka::producer::FutureProducer<ClientLogs>;
pub use sink::{KafkaSink, TxnClock};
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

/// The service's producer settings; `transactional_id` is `None` in at-least-once mode.
/// `linger.ms` is 5 unless `kafka.properties` sets it (a tuning knob: what the delivery
/// guarantee rests on — idempotence, acks — is not).
pub fn producer_config(k: &KafkaConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut c = base_config(k);
    if !k.properties.contains_key("linger.ms") {
        c.set("linger.ms", "5");
    }
    c.set("enable.idempotence", "true").set("acks", "all");
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
