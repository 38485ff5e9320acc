//! The consumer context: counts rebalances and remembers revocations, which the sink turns
//! into an abort-and-restart (records of revoked partitions may be in flight).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::ClientContext;
use sluice_pipeline::metrics::REBALANCES;

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

impl ClientContext for SluiceContext {}

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
