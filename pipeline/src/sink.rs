//! The `Sink` trait: where result events and dead letters go, and how the source position
//! advances together with them.

use async_trait::async_trait;

use crate::codes::SinkError;
use crate::contract::{DeadLetter, ResultEvent};
use crate::record::SourceRef;

/// Publishes events and advances the source position atomically with them. Between two
/// [`Sink::commit`] calls everything published and every position marked done forms one unit:
/// after a crash either all of it is visible or none of it is.
#[async_trait]
pub trait Sink: Send + 'static {
    /// Publishes a result event (part of the current unit).
    async fn publish(&mut self, event: &ResultEvent) -> Result<(), SinkError>;

    /// Publishes a dead letter: `raw` is the record's original bytes.
    async fn dead_letter(&mut self, raw: &[u8], letter: &DeadLetter) -> Result<(), SinkError>;

    /// Every event of the record at `source` has been published; reading resumes at
    /// `resume_at` once the unit commits. Called in source order per partition.
    async fn record_done(&mut self, source: &SourceRef, resume_at: u64) -> Result<(), SinkError>;

    /// Makes the current unit durable: its events, dead letters and positions together.
    async fn commit(&mut self) -> Result<(), SinkError>;
}
