//! The Kafka section (`[kafka]`): connection, topics, the [`Delivery`] guarantee and
//! pass-through librdkafka properties (those [`crate::is_secret`] marks are masked when
//! printed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Delivery guarantee of the Kafka sink.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Results and input offsets commit in one Kafka transaction (the default).
    #[default]
    ExactlyOnce,
    /// Results are flushed, then offsets committed: duplicates possible after a crash. For
    /// measuring the cost of exactly-once, not for production.
    AtLeastOnce,
}

/// Kafka topics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTopics {
    /// Input topic of batch requests.
    pub requests: String,
    /// Output topic of result events (key = request_id).
    pub results: String,
    /// Dead-letter topic: unusable records, unchanged, with error headers.
    pub dlq: String,
}

impl Default for KafkaTopics {
    fn default() -> Self {
        KafkaTopics {
            requests: "sluice.requests".into(),
            results: "sluice.results".into(),
            dlq: "sluice.dlq".into(),
        }
    }
}

/// Kafka connection and behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Consumer group of the service's instances.
    pub group_id: String,
    /// Prefix of the transactional id; each process appends a unique suffix.
    pub transactional_id_prefix: String,
    /// Stable identity of this instance (e.g. the pod name). Gives a stable transactional id
    /// (a restart fences its previous incarnation's producer and aborts its open transaction at
    /// once) and, with the MongoDB store, lets a restart end its previous incarnation's
    /// sessions (their open transactions would otherwise block chunks for up to a minute).
    /// Two live processes must never share it: a process whose producer is fenced by another
    /// with the same id stops (exit status 1) instead of fencing it back. Without it each
    /// process start gets a random transactional id, and a crashed instance's open transaction
    /// holds back read_committed consumers until `transaction_timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Also use `instance_id` as the static group membership id (`group.instance.id`): a
    /// restart within `session_timeout_ms` gets its partitions back without a rebalance.
    /// Off by default: with cooperative rebalancing, a static member killed between the two
    /// rounds of a rebalance and restarted at once leaves the partitions it gave up owned by
    /// nobody (a coordinator behaviour); the unowned-partition watchdog
    /// (`unowned_timeout_ms`) then has to rejoin the group to repair it.
    pub static_membership: bool,
    /// How long the group may leave partitions of the requests topic owned by no member
    /// before this instance reports not ready and rejoins the group (leaving makes the
    /// coordinator rebalance, which assigns every partition), in milliseconds. Normal
    /// rebalances leave partitions unowned for up to `session_timeout_ms` plus
    /// `revoke_drain_ms`. Also caps how long (30 s by default) this instance's consumer may
    /// reach no broker while a fresh client reaches one before it rejoins with fresh clients
    /// (librdkafka can drop every broker it knows when a single broker shuts down, and never
    /// reconnect).
    pub unowned_timeout_ms: u64,
    /// Topic names.
    pub topics: KafkaTopics,
    /// `exactly_once` (default) or `at_least_once`.
    pub delivery: Delivery,
    /// Partitions of topics made by `sluice topics create`.
    pub partitions: i32,
    /// Replication factor of topics made by `sluice topics create`; `-1` (the default) takes
    /// the cluster's `default.replication.factor`. The default is the broker's, not a fixed
    /// number, because a fixed 1 would quietly create unreplicated topics on a production
    /// cluster, where one dead broker then stops the service, while a fixed 3 fails on a
    /// single development broker; the cluster's operator has already chosen. Set it (e.g. 3,
    /// with `min.insync.replicas` 2 on the brokers) to insist. Existing topics are left as
    /// they are.
    pub replication: i32,
    /// Consumer session timeout (ms): how fast a dead instance's partitions move.
    pub session_timeout_ms: u64,
    /// Longest gap between two polls before the group evicts this instance (ms).
    pub max_poll_interval_ms: u64,
    /// Kafka transaction timeout (ms).
    pub transaction_timeout_ms: u64,
    /// Timeout of broker operations (transaction commit, metadata, init) in milliseconds.
    pub operation_timeout_ms: u64,
    /// librdkafka's prefetch buffer per partition, in KiB (bounds memory below the budget).
    pub queued_max_kbytes: u64,
    /// When partitions are revoked (a rebalance), how long the instance may take to finish
    /// and commit its in-flight records before handing them over (ms). Past it, the open
    /// transaction is aborted and the instance restarts from the committed offsets.
    pub revoke_drain_ms: u64,
    /// Extra librdkafka properties, passed through (e.g. `security.protocol`, `sasl.*`,
    /// `ssl.*`). Values of keys naming passwords, secrets or keys are masked when printed.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "sluice".into(),
            transactional_id_prefix: "sluice".into(),
            instance_id: None,
            static_membership: false,
            unowned_timeout_ms: 60_000,
            topics: KafkaTopics::default(),
            delivery: Delivery::ExactlyOnce,
            partitions: 6,
            replication: -1,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 600_000,
            transaction_timeout_ms: 60_000,
            operation_timeout_ms: 30_000,
            queued_max_kbytes: 8 * 1024,
            revoke_drain_ms: 10_000,
            properties: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::from_toml_str;

    #[test]
    fn kafka_secrets_are_masked() {
        let c = from_toml_str(
            "[kafka]\nbrokers='b:9092'\n[kafka.properties]\n'sasl.password'='hunter2'\n'security.protocol'='SASL_SSL'\n",
        )
        .unwrap();
        let printed = c.masked();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("SASL_SSL"));
        let err = from_toml_str("[kafka.properties]\n'group.id'='x'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.properties.group.id"), "{err}");
    }
}
