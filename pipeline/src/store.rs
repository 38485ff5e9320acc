//! The `Store` trait: what the execute and dedupe stages need from a database. The
//! store-independent rules for applying a chunk's items are in [`crate::apply`], so that every
//! store reports statuses the same way.
//!
//! Exact replay rests on three things every store keeps: the request's claim (its owner, when
//! it was first claimed, and its chunk plan — [`Claimed`]), the chunk ledger keyed by
//! (request_id, claim generation, chunk), and an outcome in that ledger for every chunk,
//! whether it was applied or decided without the store (deadline, stop, store failure:
//! [`Store::settle`]). A replay reuses the plan and the claim time, and publishes what the
//! ledger holds.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::codes::StoreError;
use crate::contract::{ItemResult, ProgressEvent};
use crate::record::SourceRef;
use crate::request::{Item, Key, SharedRequest};

pub use crate::apply::{apply_items, apply_items_with, Applied, ApplyError, Inserted, ItemWriter};

/// The collection a chunk writes to, resolved from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Collection name.
    pub collection: String,
    /// Its unique key field.
    pub key_field: String,
    /// Collections whose documents name this collection's key: cascade targets, recursively.
    pub children: Vec<Child>,
}

/// A child collection for cascading deletes (config: `parent` + `parent_field`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// The child collection.
    pub collection: String,
    /// The child's field holding its parent's key (`parent_field`).
    pub field: String,
    /// The child's own key field (its children name it).
    pub key_field: String,
    /// The child's own children.
    pub children: Vec<Child>,
}

impl Target {
    /// The target `collection` of `config`, with its children to every declared depth
    /// (config refuses parent cycles; `depth` bounds the walk regardless).
    pub fn from_config(config: &sluice_config::Config, collection: &str) -> Target {
        fn children(config: &sluice_config::Config, parent: &str, depth: usize) -> Vec<Child> {
            if depth == 0 {
                return Vec::new();
            }
            config
                .children_of(parent)
                .map(|(child, field)| Child {
                    collection: child.to_string(),
                    field: field.to_string(),
                    key_field: config.collections[child].key.clone(),
                    children: children(config, child, depth - 1),
                })
                .collect()
        }
        Target {
            collection: collection.to_string(),
            key_field: config.collections[collection].key.clone(),
            children: children(config, collection, config.collections.len()),
        }
    }
}

/// What the first claim of a request recorded; every replay of the request reuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// When the request was first claimed (unix milliseconds). Deadlines count from here on
    /// every attempt; it is also the claim's generation, part of every ledger key, so that a
    /// request_id used again after its claim expired never replays the old request's chunks.
    pub claimed_at_ms: i64,
    /// The chunk plan (item ranges) made when the request was first claimed: a replay under a
    /// different `chunk` config still cuts the request the same way.
    pub plan: Vec<Range<usize>>,
    /// When the claim expires (unix seconds): `None` while the request is unfinished — an
    /// unfinished request never expires — and its terminal event's publication plus the
    /// dedupe window once [`Store::release`] recorded it.
    pub expires_at: Option<i64>,
}

/// Whether a request_id is this record's to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First seen from this record (or this record is being re-read after a restart).
    Owned(Claimed),
    /// Already seen from another record, within the dedupe window.
    DuplicateOf(SourceRef),
}

/// One claim of a [`Store::claim_many`] batch.
#[derive(Debug, Clone, Copy)]
pub struct ClaimInput<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// The record it was read from.
    pub source: &'a SourceRef,
    /// The chunk plan to record with a first claim.
    pub plan: &'a [Range<usize>],
    /// What the status API shows of the request, recorded with a first claim.
    pub about: About<'a>,
}

/// What a claim records for the status API (`crate::status`): not needed to execute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct About<'a> {
    /// Target collection (`""`: not recorded).
    pub collection: &'a str,
    /// Operation.
    pub op: Option<crate::contract::Op>,
    /// The request's own `options.deadline_ms`.
    pub deadline_ms: Option<u64>,
}

/// What bounds the chunk writes waiting on a store ([`Store::write_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteLimit {
    /// At most this many chunks, whatever their size.
    Chunks(usize),
    /// At most this many items in all (a bigger chunk waits until it is alone).
    Items(usize),
}

impl WriteLimit {
    /// Semaphore permits in all (within what a semaphore can hold).
    pub fn permits(self) -> usize {
        let n = match self {
            WriteLimit::Chunks(n) | WriteLimit::Items(n) => n,
        };
        n.clamp(
            1,
            (u32::MAX as usize).min(tokio::sync::Semaphore::MAX_PERMITS),
        )
    }

    /// Permits a chunk of `items` items takes: never more than [`WriteLimit::permits`], so
    /// a chunk bigger than the limit waits until it is alone, never forever.
    pub fn cost(self, items: usize) -> u32 {
        match self {
            WriteLimit::Chunks(_) => 1,
            WriteLimit::Items(_) => items.clamp(1, self.permits()) as u32,
        }
    }
}

/// A chunk plan as stored: the first item of each chunk, then the item count.
pub fn plan_bounds(plan: &[Range<usize>]) -> Vec<i64> {
    let mut bounds: Vec<i64> = plan.iter().map(|r| r.start as i64).collect();
    bounds.push(plan.last().map_or(0, |r| r.end as i64));
    bounds
}

/// The plan [`plan_bounds`] stored; `None` unless it is a well-formed cover of `0..n`.
pub fn plan_from_bounds(bounds: &[i64], n: usize) -> Option<Vec<Range<usize>>> {
    let b: Vec<usize> = bounds
        .iter()
        .map(|&x| usize::try_from(x).ok())
        .collect::<Option<_>>()?;
    let ok = b.len() >= 2
        && b[0] == 0
        && *b.last()? == n
        && b.windows(2)
            .all(|w| w[0] < w[1] || (n == 0 && w[0] == w[1]));
    ok.then(|| b.windows(2).map(|w| w[0]..w[1]).collect())
}

/// One document read by [`Store::lookup`].
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// The document.
    Doc(Value),
    /// No document has the key.
    Missing,
    /// The document exists, but with it the chunk's documents would exceed the byte budget
    /// (its JSON size is given): it is not returned.
    TooLarge(usize),
}

/// One write chunk: a slice of a request that runs as one transaction with its ledger entry,
/// keyed (request_id, generation, chunk index).
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
    /// The dedupe window (seconds). A chunk's ledger entries never expire while the request
    /// is unfinished ([`Store::release`] gives them the claim's expiry); the entries of a part
    /// of a split chunk, superseded once the chunk's own entry holds the whole event, expire
    /// this long after that.
    pub window_secs: i64,
    /// The request's claim generation ([`Claimed::claimed_at_ms`]), part of the ledger key.
    pub generation: i64,
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
    /// `serde_json` of `event`, when the store made it (for the ledger) in this call, e.g. not
    /// on a plain replay: the sink sends these bytes rather than serializing the event again.
    /// Whenever present it is exactly the JSON of `event`.
    pub json: Option<String>,
}

/// A request whose terminal event was published: [`Store::release`] starts its dedupe window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The request's id.
    pub request_id: String,
    /// Its claim's generation ([`Claimed::claimed_at_ms`]).
    pub generation: i64,
    /// Its number of chunks (the ledger entries to release).
    pub chunks: usize,
    /// The terminal event as published (JSON), kept for status queries.
    pub terminal: String,
}

/// A claim's and ledger's expiry while the request is unfinished: never (SQLite stores this
/// number; MongoDB leaves the field out, which its TTL index skips).
pub const NEVER: i64 = i64::MAX;

/// A database that executes chunks exactly once.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs (`sqlite`, `mongodb`).
    fn kind(&self) -> &'static str;

    /// How much chunk writing the execute stage may have waiting on the store at once, given
    /// `execute.write_concurrency` (`configured`). Default: `configured` chunks. A store that
    /// runs one transaction at a time and commits the writes waiting meanwhile together
    /// (SQLite) counts items instead: many small chunks are what it groups.
    fn write_limit(&self, configured: usize) -> WriteLimit {
        WriteLimit::Chunks(configured)
    }

    /// Checks the store answers (start-up and readiness).
    async fn health(&self) -> Result<(), StoreError>;

    /// Records that `request_id` belongs to the record at `source`, with `plan` and the time
    /// of this first claim, unless another record holds it. Idempotent for the same `source`:
    /// a re-read gets the first claim's [`Claimed`] back (its plan, not `plan`), however long
    /// it was away — a re-read is never a new request. A claim never expires while its request
    /// is unfinished; once [`Store::release`]d, it expires one dedupe window later, and then
    /// another record's claim replaces it (a new generation).
    async fn claim(
        &self,
        request_id: &str,
        source: &SourceRef,
        plan: &[Range<usize>],
    ) -> Result<Claim, StoreError>;

    /// [`Store::claim`] for each of `claims`, in order, as if one after another (a request_id
    /// repeated in the batch: the later record is a duplicate of the earlier), sharing store
    /// round trips where the store can. Default: one [`Store::claim`] after another.
    async fn claim_many(&self, claims: &[ClaimInput<'_>]) -> Result<Vec<Claim>, StoreError> {
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            out.push(self.claim(c.request_id, c.source, c.plan).await?);
        }
        Ok(out)
    }

    /// The terminal events of `finished` requests are published: from now on each request's
    /// claim and ledger entries expire after `window_secs` (until now they never did), and
    /// its terminal event is kept with the claim. Idempotent; a request whose claim is gone or
    /// belongs to another generation is left alone.
    async fn release(&self, finished: &[Finished], window_secs: i64) -> Result<(), StoreError>;

    /// In one transaction: if the ledger holds the chunk (request_id, generation, chunk), return
    /// its event unchanged; otherwise apply the chunk's items with [`apply_items`] and insert the
    /// ledger entry holding the resulting event. Two callers racing on one chunk: exactly one
    /// applies it, the other gets the stored event. An item the store refuses on its own fails
    /// alone (`store_error`); the rest of the chunk commits.
    async fn write_chunk(&self, chunk: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError>;

    /// Records `event` — an outcome decided without applying anything (deadline passed,
    /// stopped, store failure) — as the chunk's ledger entry, unless the ledger already holds
    /// one (an earlier attempt applied or decided the chunk): that one is returned instead
    /// (`replayed`). So a replay publishes what the first attempt did.
    async fn settle(
        &self,
        chunk: Arc<WriteChunk>,
        event: ProgressEvent,
    ) -> Result<ChunkCommit, StoreError>;

    /// Reads the documents with these keys, in order, returning at most `max_bytes` of
    /// documents (JSON size) in all: documents past the budget are [`Found::TooLarge`].
    async fn lookup(
        &self,
        target: &Target,
        keys: &[Key],
        max_bytes: usize,
    ) -> Result<Vec<Found>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::WriteLimit;

    #[test]
    fn write_limits_stay_within_a_semaphore() {
        assert_eq!(WriteLimit::Chunks(4).cost(500), 1);
        assert_eq!(WriteLimit::Items(2000).cost(10), 10);
        assert_eq!(
            WriteLimit::Items(2000).cost(5000),
            2000,
            "a huge chunk waits to be alone"
        );
        assert_eq!(WriteLimit::Items(0).permits(), 1);
        let absurd = WriteLimit::Items(usize::MAX);
        assert!(absurd.permits() <= tokio::sync::Semaphore::MAX_PERMITS);
        assert!(absurd.cost(usize::MAX) as usize <= absurd.permits());
        let _ = tokio::sync::Semaphore::new(absurd.permits());
    }
}
