//! The observability section (`[observability]`): the metrics and health listener, health
//! check cadence, readiness stall detection, and the [`LogFormat`] and rate of logs.

use serde::{Deserialize, Serialize};

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
    /// (e.g. `127.0.0.1:9464`); absent = no listener. The endpoints need no credentials:
    /// `127.0.0.1` keeps them on the machine; `0.0.0.0` (what a container needs for its probes
    /// and scrapes) exposes them to every network the host is on — metric values and readiness
    /// reasons, never a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The listener closes a connection that has not sent its request headers within this
    /// many milliseconds (slow and idle clients).
    pub http_header_timeout_ms: u64,
    /// The listener closes any connection after this many milliseconds.
    pub http_connection_timeout_ms: u64,
    /// At most this many connections to the listener at once; beyond it, the oldest connection
    /// still waiting for its request (else the oldest whose response has gone unread for 1 s)
    /// is closed to make room, and when there is none the new one gets an immediate 503.
    pub http_max_connections: usize,
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
            http_header_timeout_ms: 5_000,
            http_connection_timeout_ms: 30_000,
            http_max_connections: 64,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            health_interval_ms: 2_000,
            health_timeout_ms: 1_000,
            stall_after_ms: 60_000,
            max_error_logs_per_sec: 10,
        }
    }
}
