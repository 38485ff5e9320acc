//! Typed, layered, validated configuration for sluice.
//!
//! Parts:
//! - [`Config`] and its sections: every field has a doc comment and a default in exactly one
//!   place (the `Default` impls below).
//! - [`load`]: built-in defaults → optional TOML file → `SLUICE__…` environment variables
//!   (`SLUICE__LIMITS__MAX_RECORD_BYTES=2048`, sections split by a double underscore).
//! - [`Config::validate`]: rejects contradictions at start-up with a message naming the field.
//! - [`Config::masked`]: the printable form, with secrets replaced by `***`.
//!
//! Unknown fields are rejected everywhere (`deny_unknown_fields`), so a typo fails at start-up
//! instead of being silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A configuration problem, naming the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed into the typed config.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value or a combination of values is not allowed.
    #[error("invalid configuration: `{field}`: {message}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `chunk.max_items`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole sluice configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Request limits enforced by the validate stage.
    pub limits: Limits,
    /// How requests are cut into chunks (one chunk = one store transaction).
    pub chunk: ChunkConfig,
    /// Concurrency, retries and deadlines of the execute stage.
    pub execute: ExecuteConfig,
    /// Channel capacities, ordering and shutdown of the pipeline as a whole.
    pub pipeline: PipelineConfig,
    /// Recognition of requests already processed (the dedupe window).
    pub dedupe: DedupeConfig,
    /// Collections requests may name, by name. Each declares its unique key field.
    pub collections: BTreeMap<String, CollectionConfig>,
    /// The embedded default: JSON-lines input/output and a SQLite store.
    pub embedded: EmbeddedConfig,
    /// Metrics, health endpoints and logs.
    pub observability: ObservabilityConfig,
    /// Kafka source and sink. When present, `sluice run` is the Kafka service; when absent,
    /// it runs the embedded default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConfig>,
    /// MongoDB store. When present it replaces the SQLite store (which remains the home of
    /// the embedded checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mongo: Option<MongoConfig>,
}

/// MongoDB connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Connection string of a replica set (TLS and auth options go here too); masked when
    /// printed. `SLUICE__MONGO__URI` sets it from the environment.
    pub uri: String,
    /// Database holding the collections and the ledgers.
    pub database: String,
    /// Connection pool size.
    pub max_pool_size: u32,
    /// How long to wait for a usable server before an operation fails (ms).
    pub server_selection_timeout_ms: u64,
    /// TCP connect timeout (ms).
    pub connect_timeout_ms: u64,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri: "mongodb://127.0.0.1:27017/?replicaSet=rs0".into(),
            database: "sluice".into(),
            max_pool_size: 16,
            server_selection_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// A connection string with its password replaced by `***`.
pub fn mask_uri(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &uri[..scheme + 3],
                    &creds[..colon],
                    &uri[at..]
                ),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

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
    /// Stable identity of this instance (e.g. the pod name). Sets static group membership
    /// (`group.instance.id`: a restarted instance gets its partitions back without a
    /// rebalance) and a stable transactional id (a restart fences its previous incarnation and
    /// aborts its open transaction at once). Without it each process start is a new member with
    /// a random transactional id, and a crashed instance's open transaction holds back
    /// read_committed consumers until `transaction_timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Topic names.
    pub topics: KafkaTopics,
    /// `exactly_once` (default) or `at_least_once`.
    pub delivery: Delivery,
    /// Partitions of topics made by `sluice topics create`.
    pub partitions: i32,
    /// Replication factor of topics made by `sluice topics create`.
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
            topics: KafkaTopics::default(),
            delivery: Delivery::ExactlyOnce,
            partitions: 6,
            replication: 1,
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

/// Whether a librdkafka property (or similar key) holds a secret.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "ssl.key",
        "token",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Metrics, health endpoints and logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// Address of the HTTP listener serving `/metrics`, `/healthz` and `/readyz`
    /// (e.g. `127.0.0.1:9464`); absent = no listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Log format on stderr.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); `SLUICE_LOG` overrides it.
    pub log_filter: String,
    /// How often the store (and broker) health checks run, in milliseconds.
    pub health_interval_ms: u64,
    /// How long one health check may take before it counts as failed, in milliseconds.
    pub health_timeout_ms: u64,
    /// Not ready when records are in flight but none was committed for this long (ms).
    pub stall_after_ms: u64,
    /// At most this many repeated warnings/errors are logged per second (the rest are counted
    /// in `sluice_logs_suppressed_total`).
    pub max_error_logs_per_sec: u32,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            listen: None,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            health_interval_ms: 2_000,
            health_timeout_ms: 1_000,
            stall_after_ms: 60_000,
            max_error_logs_per_sec: 10,
        }
    }
}

/// Per-op item limits. Nothing about request size is hard-coded: all of it lives here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpLimits {
    /// Maximum items in one `create` request.
    pub create: usize,
    /// Maximum items in one `update` request.
    pub update: usize,
    /// Maximum items in one `upsert` request.
    pub upsert: usize,
    /// Maximum items in one `delete` request.
    pub delete: usize,
    /// Maximum items in one `lookup` request.
    pub lookup: usize,
}

impl Default for OpLimits {
    fn default() -> Self {
        OpLimits {
            create: 10_000,
            update: 10_000,
            upsert: 10_000,
            delete: 10_000,
            lookup: 1_000,
        }
    }
}

/// Limits on what a request may contain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum items per request, per op.
    pub max_items: OpLimits,
    /// Maximum size of one input record in bytes. Larger records are rejected (or dead-lettered
    /// when no request_id can be read from them).
    pub max_record_bytes: usize,
    /// Maximum size of one item (its JSON encoding) in bytes; larger items fail as `too_large`.
    pub max_item_bytes: usize,
    /// Maximum JSON nesting depth of a record (objects and arrays).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items: OpLimits::default(),
            max_record_bytes: 16 * 1024 * 1024,
            max_item_bytes: 256 * 1024,
            max_depth: 32,
        }
    }
}

/// How requests are cut into chunks. MongoDB advises at most 1,000 documents per transaction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkConfig {
    /// Maximum items in one chunk.
    pub max_items: usize,
    /// Maximum total item bytes in one chunk.
    pub max_bytes: usize,
    /// Maximum items in an `atomic: true` request (it must fit in one transaction).
    pub atomic_max_items: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            max_items: 500,
            max_bytes: 4 * 1024 * 1024,
            atomic_max_items: 1_000,
        }
    }
}

/// Concurrency, retries and deadlines of the execute stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExecuteConfig {
    /// Maximum write chunks executing at once, across all requests.
    pub write_concurrency: usize,
    /// Maximum lookup reads executing at once, across all requests.
    pub lookup_concurrency: usize,
    /// Attempts for a chunk whose store error is transient (including the first).
    pub max_attempts: u32,
    /// How long transient errors of one chunk are retried before its items fail with
    /// `store_error` (ms). Longer than MongoDB's 60 s transaction lifetime, so that an
    /// abandoned transaction of a crashed instance (which conflicts until it expires) cannot
    /// fail items.
    pub transient_retry_ms: u64,
    /// First retry backoff in milliseconds; doubled each attempt, with full jitter.
    pub backoff_initial_ms: u64,
    /// Cap on a single retry backoff in milliseconds.
    pub backoff_max_ms: u64,
    /// Deadline for requests that do not set `options.deadline_ms`; absent = none.
    pub default_deadline_ms: Option<u64>,
    /// Upper bound on `options.deadline_ms`; requests asking for more are rejected.
    pub max_deadline_ms: u64,
}

impl Default for ExecuteConfig {
    fn default() -> Self {
        ExecuteConfig {
            write_concurrency: 4,
            lookup_concurrency: 16,
            max_attempts: 200,
            transient_retry_ms: 120_000,
            backoff_initial_ms: 20,
            backoff_max_ms: 2_000,
            default_deadline_ms: None,
            max_deadline_ms: 3_600_000,
        }
    }
}

/// Channel capacities, ordering and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Capacity of each bounded channel between two stages (records).
    pub channel_capacity: usize,
    /// Maximum records between the source and the commit (the in-flight budget).
    pub max_in_flight_records: usize,
    /// Maximum bytes of input records between the source and the commit; the source waits
    /// (Kafka: pauses) when either budget is spent. Parsed requests take a few times their
    /// input size in memory.
    pub max_in_flight_bytes: usize,
    /// Treat the whole input as one ordered stream instead of keying by request_id.
    pub ordered: bool,
    /// How long a shutdown may take to drain in-flight work before it is abandoned
    /// (abandoned work is re-read on restart; nothing is lost).
    pub drain_deadline_ms: u64,
    /// Records per position checkpoint (embedded) or per Kafka transaction, at most. Under
    /// load, commits come every this many records; `commit_interval_ms` bounds how long results
    /// wait either way, so a larger value costs no latency, only a larger batch to redo (from
    /// the ledger, without re-executing) after a crash.
    pub commit_max_records: usize,
    /// Longest time between two checkpoints while records are flowing, in milliseconds.
    pub commit_interval_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            channel_capacity: 64,
            max_in_flight_records: 256,
            max_in_flight_bytes: 16 * 1024 * 1024,
            ordered: false,
            drain_deadline_ms: 30_000,
            commit_max_records: 2000,
            commit_interval_ms: 200,
        }
    }
}

/// Recognition of already-processed requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// How long a request_id and its chunk ledger entries are remembered, in seconds.
    pub window_secs: u64,
    /// Entries of the in-memory cache in front of the store's request ledger.
    pub cache_entries: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_secs: 7 * 24 * 3600,
            cache_entries: 100_000,
        }
    }
}

/// One collection requests may target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// The unique key field of the collection's documents (e.g. `text` for words).
    pub key: String,
    /// The parent collection, for cascading deletes (e.g. `words`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The field of this collection's documents that holds the parent's key (e.g. `word`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_field: Option<String>,
}

/// The embedded default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// SQLite database holding the documents, the ledger and the input/output positions.
    pub state: PathBuf,
    /// How long a SQLite statement waits for a lock held by another process before failing
    /// with a transient `busy` error (then retried by `[execute]`), in milliseconds.
    pub busy_timeout_ms: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            state: PathBuf::from("sluice.db"),
            busy_timeout_ms: 5_000,
        }
    }
}

/// Prefix of environment variables that override the file, e.g.
/// `SLUICE__PIPELINE__CHANNEL_CAPACITY=128`.
pub const ENV_PREFIX: &str = "SLUICE__";

/// Loads the configuration: defaults, then `file` (if given), then `SLUICE__…` variables,
/// then validates it.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Parse(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    from_figment(figment)
}

/// Parses and validates a TOML document (no environment), e.g. for tests and `config check`.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    from_figment(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
}

fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

fn positive(field: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(field, "must be at least 1"));
    }
    Ok(())
}

impl Config {
    /// Rejects values and combinations that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (op, v) in [
            ("create", l.max_items.create),
            ("update", l.max_items.update),
            ("upsert", l.max_items.upsert),
            ("delete", l.max_items.delete),
            ("lookup", l.max_items.lookup),
        ] {
            positive(&format!("limits.max_items.{op}"), v)?;
        }
        positive("limits.max_record_bytes", l.max_record_bytes)?;
        positive("limits.max_item_bytes", l.max_item_bytes)?;
        if l.max_item_bytes > l.max_record_bytes {
            return Err(ConfigError::invalid(
                "limits.max_item_bytes",
                format!(
                    "{} exceeds limits.max_record_bytes ({})",
                    l.max_item_bytes, l.max_record_bytes
                ),
            ));
        }
        if l.max_depth < 3 || l.max_depth > 128 {
            return Err(ConfigError::invalid(
                "limits.max_depth",
                "must be between 3 (request → items → item) and 128",
            ));
        }
        positive("chunk.max_items", self.chunk.max_items)?;
        positive("chunk.atomic_max_items", self.chunk.atomic_max_items)?;
        if self.chunk.max_bytes < l.max_item_bytes {
            return Err(ConfigError::invalid(
                "chunk.max_bytes",
                format!(
                    "{} is smaller than limits.max_item_bytes ({}): a valid item would not fit a chunk",
                    self.chunk.max_bytes, l.max_item_bytes
                ),
            ));
        }
        positive("execute.write_concurrency", self.execute.write_concurrency)?;
        positive(
            "execute.lookup_concurrency",
            self.execute.lookup_concurrency,
        )?;
        if self.execute.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "execute.max_attempts",
                "must be at least 1",
            ));
        }
        if self.execute.backoff_initial_ms > self.execute.backoff_max_ms {
            return Err(ConfigError::invalid(
                "execute.backoff_initial_ms",
                "must not exceed execute.backoff_max_ms",
            ));
        }
        if let Some(d) = self.execute.default_deadline_ms {
            if d == 0 || d > self.execute.max_deadline_ms {
                return Err(ConfigError::invalid(
                    "execute.default_deadline_ms",
                    "must be between 1 and execute.max_deadline_ms",
                ));
            }
        }
        positive("pipeline.channel_capacity", self.pipeline.channel_capacity)?;
        positive(
            "pipeline.max_in_flight_records",
            self.pipeline.max_in_flight_records,
        )?;
        positive(
            "pipeline.commit_max_records",
            self.pipeline.commit_max_records,
        )?;
        let o = &self.observability;
        if let Some(listen) = &o.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::invalid(
                    "observability.listen",
                    format!("`{listen}` is not an address like 127.0.0.1:9464"),
                ));
            }
        }
        if o.health_interval_ms == 0 || o.health_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "observability.health_interval_ms",
                "health interval and timeout must be at least 1 ms",
            ));
        }
        if o.health_timeout_ms > o.health_interval_ms {
            return Err(ConfigError::invalid(
                "observability.health_timeout_ms",
                "must not exceed observability.health_interval_ms",
            ));
        }
        if let Some(k) = &self.kafka {
            for (field, v) in [
                ("kafka.brokers", &k.brokers),
                ("kafka.group_id", &k.group_id),
                ("kafka.transactional_id_prefix", &k.transactional_id_prefix),
                ("kafka.topics.requests", &k.topics.requests),
                ("kafka.topics.results", &k.topics.results),
                ("kafka.topics.dlq", &k.topics.dlq),
            ] {
                if v.trim().is_empty() {
                    return Err(ConfigError::invalid(field, "must not be empty"));
                }
            }
            let t = &k.topics;
            if t.requests == t.results || t.requests == t.dlq || t.results == t.dlq {
                return Err(ConfigError::invalid(
                    "kafka.topics",
                    "requests, results and dlq must be three different topics",
                ));
            }
            if k.partitions < 1 || k.replication < 1 {
                return Err(ConfigError::invalid(
                    "kafka.partitions",
                    "partitions and replication must be at least 1",
                ));
            }
            if k.transaction_timeout_ms < self.pipeline.commit_interval_ms * 2 {
                return Err(ConfigError::invalid(
                    "kafka.transaction_timeout_ms",
                    "must be at least twice pipeline.commit_interval_ms",
                ));
            }
            // The drain runs inside a poll; giving up waits for a commit in progress (offsets,
            // flush, commit: up to three operation timeouts).
            if k.revoke_drain_ms + 3 * k.operation_timeout_ms >= k.max_poll_interval_ms {
                return Err(ConfigError::invalid(
                    "kafka.revoke_drain_ms",
                    "plus 3 × kafka.operation_timeout_ms must be less than kafka.max_poll_interval_ms \
                     (a revocation drains inside the consumer's poll and may wait for a commit in progress)",
                ));
            }
            for key in k.properties.keys() {
                if [
                    "bootstrap.servers",
                    "group.id",
                    "transactional.id",
                    "enable.auto.commit",
                    "isolation.level",
                ]
                .contains(&key.as_str())
                {
                    return Err(ConfigError::invalid(
                        format!("kafka.properties.{key}"),
                        "is set by sluice itself (use the typed kafka.* fields)",
                    ));
                }
            }
        }
        if self.dedupe.window_secs == 0 {
            return Err(ConfigError::invalid(
                "dedupe.window_secs",
                "must be at least 1",
            ));
        }
        for (name, c) in &self.collections {
            let field = |f: &str| format!("collections.{name}.{f}");
            if !valid_name(name) {
                return Err(ConfigError::invalid(
                    format!("collections.{name}"),
                    "collection names are 1-64 chars of [A-Za-z0-9_]",
                ));
            }
            if c.key.is_empty() || c.key.starts_with('$') || c.key.contains('.') {
                return Err(ConfigError::invalid(
                    field("key"),
                    "must be a top-level field name (not empty, no '.', no leading '$')",
                ));
            }
            match (&c.parent, &c.parent_field) {
                (None, None) => {}
                (Some(p), Some(pf)) => {
                    if !self.collections.contains_key(p) {
                        return Err(ConfigError::invalid(
                            field("parent"),
                            format!("names collection `{p}`, which is not declared"),
                        ));
                    }
                    if p == name {
                        return Err(ConfigError::invalid(field("parent"), "cannot be itself"));
                    }
                    if pf.is_empty() || pf.contains('.') || pf.starts_with('$') {
                        return Err(ConfigError::invalid(
                            field("parent_field"),
                            "must be a top-level field name",
                        ));
                    }
                }
                (Some(_), None) => {
                    return Err(ConfigError::invalid(
                        field("parent_field"),
                        "is required when `parent` is set",
                    ))
                }
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        field("parent"),
                        "is required when `parent_field` is set",
                    ))
                }
            }
        }
        // Cascades follow one level of children; a cycle would make them ambiguous.
        for (name, c) in &self.collections {
            if let Some(p) = &c.parent {
                if self.collections.get(p).and_then(|pc| pc.parent.as_ref()) == Some(name) {
                    return Err(ConfigError::invalid(
                        format!("collections.{name}.parent"),
                        format!("`{name}` and `{p}` are each other's parent"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The children of `collection`: (child name, child's parent field).
    pub fn children_of<'a>(
        &'a self,
        collection: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.collections
            .iter()
            .filter_map(move |(name, c)| match (&c.parent, &c.parent_field) {
                (Some(p), Some(pf)) if p == collection => Some((name.as_str(), pf.as_str())),
                _ => None,
            })
    }

    /// The config as TOML with secrets masked, for `sluice config check` and start-up logs.
    pub fn masked(&self) -> String {
        let mut c = self.clone();
        if let Some(m) = c.mongo.as_mut() {
            m.uri = mask_uri(&m.uri);
        }
        if let Some(k) = c.kafka.as_mut() {
            for (key, value) in k.properties.iter_mut() {
                if is_secret(key) {
                    *value = "***".into();
                }
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
    }
}

/// Whether `name` is usable as a collection (and SQLite table / MongoDB collection) name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_field_is_named() {
        let err = from_toml_str("[chunk]\nmax_itemz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_itemz"), "{err}");
    }

    #[test]
    fn contradiction_names_the_field() {
        let err = from_toml_str("[limits]\nmax_item_bytes = 100\nmax_record_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`limits.max_item_bytes`"), "{err}");
        let err = from_toml_str(
            "[collections.definitions]\nkey='id'\nparent='words'\nparent_field='word'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`collections.definitions.parent`"), "{err}");
        let err = from_toml_str("[chunk]\nmax_items = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`chunk.max_items`"), "{err}");
    }

    #[test]
    fn a_revoke_drain_that_could_outlast_the_poll_interval_is_refused() {
        let ok = "[kafka]\nmax_poll_interval_ms = 100000\noperation_timeout_ms = 20000\nrevoke_drain_ms = 39000\n";
        from_toml_str(ok).unwrap();
        let err = from_toml_str(&ok.replace("39000", "40000"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`kafka.revoke_drain_ms`"), "{err}");
        assert!(err.contains("max_poll_interval_ms"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "[chunk]\nmax_items = 7\n")?;
            jail.set_env("SLUICE__CHUNK__MAX_BYTES", "9999999");
            let c = load(Some(Path::new("s.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.chunk.max_items, 7);
            assert_eq!(c.chunk.max_bytes, 9_999_999);
            Ok(())
        });
    }

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

    #[test]
    fn mongo_uri_password_is_masked() {
        assert_eq!(
            mask_uri("mongodb://u:pw@h:1/?x=1"),
            "mongodb://u:***@h:1/?x=1"
        );
        assert_eq!(mask_uri("mongodb://h:1/"), "mongodb://h:1/");
        let c = from_toml_str("[mongo]\nuri='mongodb+srv://app:s3cret@db.example/'\n").unwrap();
        assert!(!c.masked().contains("s3cret"));
    }

    #[test]
    fn children_are_found() {
        let c = from_toml_str(
            "[collections.words]\nkey='text'\n[collections.definitions]\nkey='id'\nparent='words'\nparent_field='word'\n",
        )
        .unwrap();
        let kids: Vec<_> = c.children_of("words").collect();
        assert_eq!(kids, vec![("definitions", "word")]);
    }
}
