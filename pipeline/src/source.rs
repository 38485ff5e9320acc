//! The `Source` trait: where records come from (a Kafka consumer, a JSON-lines file, stdin).

use async_trait::async_trait;

use crate::codes::SourceError;
use crate::record::RawRecord;

/// Yields records in order. The pipeline calls `next` only when the in-flight budget has
/// room, so a source never needs to buffer ahead.
#[async_trait]
pub trait Source: Send + 'static {
    /// The next record, or `None` at the end of a finite input. Must be cancel-safe enough
    /// that dropping the future at shutdown loses nothing that was not yet handed out.
    async fn next(&mut self) -> Result<Option<RawRecord>, SourceError>;
}
