//! The `Sink` trait: where result events and dead letters go, and how the source position
//! advances together with them.

use async_trait::async_trait;

use crate::codes::SinkError;
use crate::contract::{Counts, DeadLetter, ResultEvent};
use crate::record::SourceRef;

/// Publishes events and advances the source position atomically with them. Between two
/// [`Sink::commit`] calls everything published and every position recorded forms one unit:
/// after a crash either all of it is visible or none of it is.
#[async_trait]
pub trait Sink: Send + 'static {
    /// Publishes a result event (part of the current unit); `json` is its serialization, the
    /// bytes to send (made once by the commit stage, which also keeps a terminal event's).
    async fn publish(&mut self, event: &ResultEvent, json: &[u8]) -> Result<(), SinkError>;

    /// Publishes a dead letter: `raw` is the record's original bytes.
    async fn dead_letter(&mut self, raw: &[u8], letter: &DeadLetter) -> Result<(), SinkError>;

    /// Every event of the record at `source` has been published; reading resumes at
    /// `resume_at` once the unit commits. Called in source order per partition.
    async fn record_done(&mut self, source: &SourceRef, resume_at: u64) -> Result<(), SinkError>;

    /// The record at `source` is unfinished, but its first `published` progress events are
    /// in the unit: once it commits, reading resumes at the record itself (`start_at`, see
    /// [`crate::RawRecord::start_at`]) and the source hands it out again with
    /// `skip_progress = published`, so a re-read publishes only what follows. This lets a
    /// long request's events commit while it runs (a unit never waits for a whole request)
    /// and an abandoned request keep what it published. Called in source order per
    /// partition, after the partition's last `record_done` of the unit. `counts` are the item
    /// counts of those `published` events, handed back as `skip_counts`.
    async fn record_partial(
        &mut self,
        source: &SourceRef,
        start_at: u64,
        published: usize,
        counts: &Counts,
    ) -> Result<(), SinkError>;

    /// Makes the current unit durable: its events, dead letters and positions together.
    async fn commit(&mut self) -> Result<(), SinkError>;

    /// Whether what this run publishes for the record at `source` still reaches consumers:
    /// `false` once its partition was handed over to another consumer mid-run (the sink
    /// then drops its events and positions). Default: always.
    fn owns(&self, _source: &SourceRef) -> bool {
        true
    }
}
