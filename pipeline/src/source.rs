//! The `Source` trait: where records come from (a Kafka consumer, a JSON-lines file, stdin).

use async_trait::async_trait;

use crate::codes::SourceError;
use crate::record::RawRecord;

/// Yields records in order. The pipeline calls `next` only when the in-flight budget has
/// room, so a source never needs to buffer ahead. When the budget stays spent, the pipeline
/// calls `pause`, then drives `idle` until there is room again, then `resume`: backpressure
/// reaches the source (a Kafka consumer pauses its partitions but keeps polling, so it stays
/// in its group and serves rebalances).
#[async_trait]
pub trait Source: Send + 'static {
    /// The next record, or `None` at the end of a finite input. Must be cancel-safe enough
    /// that dropping the future at shutdown loses nothing that was not yet handed out.
    async fn next(&mut self) -> Result<Option<RawRecord>, SourceError>;

    /// The in-flight budget is spent: stop fetching. Default: nothing (a file is not read
    /// ahead).
    fn pause(&mut self) {}

    /// The budget has room again: fetch again.
    fn resume(&mut self) {}

    /// Housekeeping while paused; the pipeline drives it until the budget has room (dropping
    /// the future when it has). It may return at any time and is called again. A record it
    /// happens to receive must be kept for the next `next`. Default: waits forever.
    async fn idle(&mut self) {
        std::future::pending::<()>().await
    }
}
