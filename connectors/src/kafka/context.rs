//! Client contexts. The consumer's counts rebalances and remembers revocations, which the sink
//! turns into an abort-and-restart (records of revoked partitions may be in flight). Both the
//! consumer's and the producer's route librdkafka's logs through sluice's counters and log
//! rate limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;
use sluice_pipeline::metrics::{KAFKA_CLIENT_ERRORS, REBALANCES};

/// The consumer type of the service.
pub type SluiceConsumer = StreamConsumer<SluiceContext>;

/// Shared rebalance state.
#[derive(Debug, Clone, Default)]
pub struct SluiceContext {
    revoked: Arc<AtomicBool>,
    assigned: Arc<AtomicBool>,
}

impl SluiceContext {
    /// Whether partitions were revoked since this consumer started.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Whether this member has been assigned partitions at least once.
    pub fn assigned(&self) -> bool {
        self.assigned.load(Ordering::SeqCst)
    }
}

impl ClientContext for SluiceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&error, reason);
    }
}

/// The producer's context: librdkafka's logs and errors go through the same counting and
/// rate limiting as the consumer's.
#[derive(Debug, Clone, Default)]
pub struct ClientLogs;

impl ClientContext for ClientLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&error, reason);
    }
}

/// librdkafka's own log lines: warnings and errors are counted and rate-limited (a broker
/// outage makes librdkafka report every failed connect), the rest go to debug.
fn log_client(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            metrics::counter!(KAFKA_CLIENT_ERRORS, "level" => "error").increment(1);
            if sluice_pipeline::logs::allow() {
                tracing::error!(target: "librdkafka", fac, message);
            }
        }
        RDKafkaLogLevel::Warning => {
            metrics::counter!(KAFKA_CLIENT_ERRORS, "level" => "warning").increment(1);
            if sluice_pipeline::logs::allow() {
                tracing::warn!(target: "librdkafka", fac, message);
            }
        }
        _ => tracing::debug!(target: "librdkafka", fac, message),
    }
}

fn client_error(error: &KafkaError, reason: &str) {
    metrics::counter!(KAFKA_CLIENT_ERRORS, "level" => "error").increment(1);
    if sluice_pipeline::logs::allow() {
        tracing::error!(target: "librdkafka", error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for SluiceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) if tpl.count() > 0 => {
                metrics::counter!(REBALANCES, "kind" => "revoke").increment(1);
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.revoked.store(true, Ordering::SeqCst);
            }
            Rebalance::Assign(tpl) => {
                metrics::counter!(REBALANCES, "kind" => "assign").increment(1);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.assigned.store(true, Ordering::SeqCst);
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
            }
            _ => {}
        }
    }
}
