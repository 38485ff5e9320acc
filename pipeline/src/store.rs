//! The `Store` trait: what the execute and dedupe stages need from a database, plus the
//! store-independent rules for applying a chunk's items ([`apply_items`]) so that every store
//! reports statuses the same way.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::codes::{ItemErrorCode, StoreError};
use crate::contract::{ItemResult, ItemStatus, Op, ProgressEvent};
use crate::record::SourceRef;
use crate::request::{Item, ItemBody, Key, SharedRequest};

/// The collection a chunk writes to, resolved from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Collection name.
    pub collection: String,
    /// Its unique key field.
    pub key_field: String,
    /// Child collections and the field holding this collection's key: cascade targets.
    pub children: Vec<(String, String)>,
}

/// Whether a request_id is this record's to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First seen from this record (or this record is being re-read after a restart).
    Owned,
    /// Already seen from another record, within the dedupe window.
    DuplicateOf(SourceRef),
}

/// One write chunk: a slice of a request that runs as one transaction with its ledger entry,
/// whose `_id` is (request_id, chunk index).
#[derive(Debug, Clone)]
pub struct WriteChunk {
    /// The whole request (shared, not copied).
    pub request: SharedRequest,
    /// Chunk index.
    pub index: usize,
    /// Number of chunks of the request.
    pub chunks: usize,
    /// The chunk's items: `request.items[range]`.
    pub range: Range<usize>,
    /// Where the request was read (part of the stored event).
    pub source: SourceRef,
    /// Where to write.
    pub target: Arc<Target>,
    /// When the ledger entry may be forgotten (unix seconds; the dedupe window).
    pub expires_at: i64,
}

impl WriteChunk {
    /// The chunk's items.
    pub fn items(&self) -> &[Item] {
        &self.request.items[self.range.clone()]
    }

    /// Builds the chunk's progress event from its item results.
    pub fn event(&self, items: Vec<ItemResult>) -> ProgressEvent {
        ProgressEvent {
            request_id: self.request.request_id.clone(),
            chunk: self.index,
            chunks: self.chunks,
            items,
            source: self.source.clone(),
        }
    }
}

/// What [`Store::write_chunk`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkCommit {
    /// The chunk's progress event (as stored in the ledger).
    pub event: ProgressEvent,
    /// True when the ledger already held the chunk: nothing was applied this time.
    pub replayed: bool,
}

/// A database that executes chunks exactly once.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs (`sqlite`, `mongodb`).
    fn kind(&self) -> &'static str;

    /// Checks the store answers (start-up and readiness).
    async fn health(&self) -> Result<(), StoreError>;

    /// Records that `request_id` belongs to the record at `source`, unless another record
    /// claimed it first (within the dedupe window). Idempotent for the same `source`.
    async fn claim(
        &self,
        request_id: &str,
        source: &SourceRef,
        expires_at: i64,
    ) -> Result<Claim, StoreError>;

    /// In one transaction: if the ledger holds (request_id, chunk) return its event unchanged;
    /// otherwise apply the chunk's items with [`apply_items`] and insert the ledger entry holding
    /// the resulting event. Two callers racing on one chunk: exactly one applies it, the other
    /// gets the stored event.
    async fn write_chunk(&self, chunk: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError>;

    /// Reads the documents with these keys (in order; `None` = not found).
    async fn lookup(&self, target: &Target, keys: &[Key])
        -> Result<Vec<Option<Value>>, StoreError>;
}

/// Result of [`ItemWriter::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The document was inserted.
    Inserted,
    /// A document with the key exists; nothing was written.
    Exists,
}

/// The primitive writes of a store, inside its open transaction. An `Err` aborts the whole
/// chunk (the caller rolls back and retries by the error's kind).
#[async_trait]
pub trait ItemWriter: Send {
    /// Inserts `doc` unless `key` exists.
    async fn insert(
        &mut self,
        t: &Target,
        key: &Key,
        doc: &RawValue,
    ) -> Result<Inserted, StoreError>;
    /// Inserts or replaces the document with `key`.
    async fn upsert(&mut self, t: &Target, key: &Key, doc: &RawValue) -> Result<(), StoreError>;
    /// Sets and unsets top-level fields; `false` when `key` does not exist.
    async fn update(
        &mut self,
        t: &Target,
        key: &Key,
        set: &Map<String, Value>,
        unset: &[String],
    ) -> Result<bool, StoreError>;
    /// Deletes `key` (and, with `cascade`, the children in `t.children`); `false` when absent.
    async fn delete(&mut self, t: &Target, key: &Key, cascade: bool) -> Result<bool, StoreError>;

    /// Writes anything buffered (a store may batch the inserts of a chunk); called once after
    /// the last item, still inside the transaction. Default: nothing buffered.
    async fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A chunk's outcome before the store commits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The event to store in the ledger and publish.
    pub event: ProgressEvent,
    /// True when the item writes must be rolled back (a failed `atomic` chunk); the ledger
    /// entry is still written so that a re-read reports the same outcome.
    pub rollback: bool,
}

/// Applies a chunk's items through `w`, with the contract's rules: decided items are reported
/// as decided; `skip_existing` turns `exists` into `skipped`; after a failure, `stop_on_error`
/// makes later items `not_attempted` (`stopped`); in an `atomic` chunk any failure aborts the
/// chunk: failed items stay `failed`, all others become `not_attempted` (`aborted`).
pub async fn apply_items<W: ItemWriter + ?Sized>(
    chunk: &WriteChunk,
    w: &mut W,
) -> Result<Applied, StoreError> {
    apply_items_after(chunk, w, false).await
}

/// [`apply_items`] for a part of a chunk that a store had to split (e.g. a MongoDB transaction
/// too large for the cache): `failed_before` says whether an item of an earlier part failed,
/// so that `stop_on_error` stops the later parts exactly as it would have stopped the whole.
pub async fn apply_items_after<W: ItemWriter + ?Sized>(
    chunk: &WriteChunk,
    w: &mut W,
    failed_before: bool,
) -> Result<Applied, StoreError> {
    let req = &chunk.request;
    let opts = &req.options;
    let mut results = Vec::with_capacity(chunk.range.len());
    let mut failed = failed_before;
    for item in chunk.items() {
        if let Some(decided) = &item.decided {
            failed |= decided.status == ItemStatus::Failed;
            results.push(decided.clone());
            continue;
        }
        if failed && (opts.stop_on_error || opts.atomic) {
            let (code, msg) = if opts.atomic {
                (
                    ItemErrorCode::Aborted,
                    "an earlier item of this atomic request failed",
                )
            } else {
                (
                    ItemErrorCode::Stopped,
                    "an earlier item failed and stop_on_error is set",
                )
            };
            results.push(ItemResult::error(
                item.index,
                ItemStatus::NotAttempted,
                code,
                msg,
                true,
            ));
            continue;
        }
        let key = item.key.as_ref().ok_or_else(|| {
            // Validate gives every undecided item a key; reaching here is a bug, not bad input.
            StoreError::permanent("internal", format!("item {} has no key", item.index))
        })?;
        let t = &chunk.target;
        let result = match (req.op, &item.body) {
            (Op::Create, ItemBody::Doc(doc)) => match w.insert(t, key, doc).await? {
                Inserted::Inserted => ItemResult::status(item.index, ItemStatus::Ok),
                Inserted::Exists if opts.skip_existing => {
                    ItemResult::status(item.index, ItemStatus::Skipped)
                }
                Inserted::Exists => ItemResult::failed(
                    item.index,
                    ItemErrorCode::Exists,
                    format!("{} {key} already exists in {}", t.key_field, t.collection),
                ),
            },
            (Op::Upsert, ItemBody::Doc(doc)) => {
                w.upsert(t, key, doc).await?;
                ItemResult::status(item.index, ItemStatus::Ok)
            }
            (Op::Update, ItemBody::Update { set, unset }) => {
                if w.update(t, key, set, unset).await? {
                    ItemResult::status(item.index, ItemStatus::Ok)
                } else {
                    ItemResult::status(item.index, ItemStatus::NotFound)
                }
            }
            (Op::Delete, ItemBody::Key) => {
                if w.delete(t, key, opts.cascade).await? {
                    ItemResult::status(item.index, ItemStatus::Ok)
                } else {
                    ItemResult::status(item.index, ItemStatus::NotFound)
                }
            }
            (op, body) => {
                return Err(StoreError::permanent(
                    "internal",
                    format!("item {} of op {op:?} has body {body:?}", item.index),
                ))
            }
        };
        failed |= result.status == ItemStatus::Failed;
        results.push(result);
    }
    w.flush().await?;
    let rollback = opts.atomic && failed;
    if rollback {
        for r in &mut results {
            if r.status != ItemStatus::Failed {
                *r = ItemResult::error(
                    r.index,
                    ItemStatus::NotAttempted,
                    ItemErrorCode::Aborted,
                    "another item of this atomic request failed; nothing was applied",
                    true,
                );
            }
        }
    }
    Ok(Applied {
        event: chunk.event(results),
        rollback,
    })
}
