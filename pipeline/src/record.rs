//! What travels from a source into the pipeline: raw bytes with their coordinates.

use std::time::Instant;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use crate::contract::Counts;

/// Where a record came from: topic (or input name), partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct SourceRef {
    /// Kafka topic, or the input's name in embedded mode (`stdin` or the file name).
    pub topic: String,
    /// Kafka partition; always 0 in embedded mode.
    pub partition: i32,
    /// Kafka offset, or the 0-based line number in embedded mode.
    pub offset: i64,
}

/// One record as read by a [`crate::Source`].
#[derive(Debug)]
pub struct RawRecord {
    /// Coordinates of the record.
    pub source: SourceRef,
    /// Ordering key (Kafka record key). `None` means "key by request_id".
    pub key: Option<String>,
    /// The record's bytes, unchanged.
    pub payload: Bytes,
    /// Set when the source had to cut the record because it exceeded its hard read cap; the
    /// payload then holds only the first bytes.
    pub truncated: bool,
    /// Source-specific resume token: where reading continues once this record is committed
    /// (Kafka: offset + 1; file: byte offset after the line).
    pub resume_at: u64,
    /// The resume token that reads this record again (Kafka: its offset; file: the byte
    /// offset of its line): where reading continues when the record is committed unfinished.
    pub start_at: u64,
    /// Progress events of this record already published by an earlier run, whose unit committed
    /// while the record was unfinished (see [`crate::Sink::record_partial`]): the commit stage
    /// does not publish them again. 0 for a record read for the first time.
    pub skip_progress: usize,
    /// The item counts of those `skip_progress` events, when the position recorded them:
    /// the terminal event's counts start from them, so they equal what consumers received
    /// even where a replay would read differently (lookups are not in the ledger).
    pub skip_counts: Option<Counts>,
    /// When the record entered the pipeline (for latency figures).
    pub received: Instant,
    /// The record's share of the in-flight budget, released when it is committed.
    pub permit: Option<Budget>,
}

/// A record's share of the in-flight budget: one record and its size in KiB. Dropping it
/// returns both to the source.
#[derive(Debug)]
pub struct Budget {
    /// One of `pipeline.max_in_flight_records`.
    pub record: OwnedSemaphorePermit,
    /// The record's KiB of `pipeline.max_in_flight_bytes`.
    pub bytes: OwnedSemaphorePermit,
}

/// The part of a record every stage passes along unchanged until commit.
#[derive(Debug)]
pub struct Meta {
    /// Coordinates of the record.
    pub source: SourceRef,
    /// Ordering key given by the source, if any.
    pub key: Option<String>,
    /// Resume token (see [`RawRecord::resume_at`]).
    pub resume_at: u64,
    /// Resume token that re-reads the record (see [`RawRecord::start_at`]).
    pub start_at: u64,
    /// Progress events already published (see [`RawRecord::skip_progress`]).
    pub skip_progress: usize,
    /// Their item counts (see [`RawRecord::skip_counts`]).
    pub skip_counts: Option<Counts>,
    /// When the record entered the pipeline.
    pub received: Instant,
    /// In-flight budget share; dropped at commit.
    pub permit: Option<Budget>,
    /// The request's claim generation, once claimed: after its terminal event is committed,
    /// the commit stage releases the claim (its dedupe window starts then).
    pub generation: Option<i64>,
}

impl RawRecord {
    /// Splits the record into its payload and the metadata that travels with it.
    pub fn split(self) -> (Bytes, bool, Meta) {
        (
            self.payload,
            self.truncated,
            Meta {
                source: self.source,
                key: self.key,
                resume_at: self.resume_at,
                start_at: self.start_at,
                skip_progress: self.skip_progress,
                skip_counts: self.skip_counts,
                received: self.received,
                permit: self.permit,
                generation: None,
            },
        )
    }
}
