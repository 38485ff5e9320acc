//! What a request may contain and how it is cut up: [`Limits`] (with per-op [`OpLimits`]),
//! enforced by the validate stage, and [`ChunkConfig`], which sizes the chunks (one chunk =
//! one store transaction).

use serde::{Deserialize, Serialize};

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
    /// Largest result event or dead letter sluice publishes, in bytes. Kafka refuses messages
    /// over the producer's `message.max.bytes` (1,000,000 by default) or the topic's
    /// `max.message.bytes` (1,048,588 by default): the service checks at start-up that both
    /// leave room. A lookup's documents that would not fit its progress event fail as
    /// `too_large` (retryable: look them up in a smaller request); a dead letter's original
    /// bytes are cut to fit (header `sluice.truncated` gives the original length).
    pub max_event_bytes: usize,
}

impl Limits {
    /// How many bytes of one line the embedded source reads: 4 × `max_record_bytes`, so that
    /// a record a little over the limit is still read whole and gets a rejection naming its
    /// `request_id`; a longer line is cut there and dead-lettered as `record_too_large`.
    pub fn read_cap(&self) -> usize {
        self.max_record_bytes.saturating_mul(4)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items: OpLimits::default(),
            max_record_bytes: 16 * 1024 * 1024,
            max_item_bytes: 256 * 1024,
            max_depth: 32,
            max_event_bytes: 900 * 1024,
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
