//! The item rules every store shares ([`apply_items`]): how a chunk's items are applied
//! through a store's primitive writes ([`ItemWriter`]) and what each item reports — decided
//! items as decided, `skip_existing`, `stop_on_error`, `atomic`, and an item the store refuses
//! on its own failing alone ([`ApplyError::Item`]: the store rolls the chunk back and applies it
//! again with that item failed).

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::codes::{ItemErrorCode, StoreError, StoreErrorKind};
use crate::contract::{ItemResult, ItemStatus, Op, ProgressEvent};
use crate::request::{ItemBody, Key};
use crate::store::{Target, WriteChunk};

/// Result of [`ItemWriter::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The document was inserted.
    Inserted,
    /// A document with the key exists; nothing was written.
    Exists,
}

/// Why applying a chunk stopped.
#[derive(Debug, Clone)]
pub enum ApplyError {
    /// The chunk as a whole failed (the caller rolls back and retries by the error's kind).
    Chunk(StoreError),
    /// The store refused the item with this index on its own (a permanent error of its
    /// write): the caller rolls back and applies the chunk again with it failed.
    Item(usize, StoreError),
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Chunk(e)
    }
}

impl ApplyError {
    /// The store error, whichever it was.
    pub fn into_store_error(self) -> StoreError {
        match self {
            ApplyError::Chunk(e) | ApplyError::Item(_, e) => e,
        }
    }
}

/// The primitive writes of a store, inside its open transaction. An `Err` aborts the whole
/// chunk (the caller rolls back; see [`ApplyError`]).
///
/// Native `async fn`s, not `async_trait`: no future is boxed per item, and a writer need not be
/// `Send` — the SQLite writer holds a prepared statement of its connection and runs on the
/// writer thread; the futures of a `Send` writer (MongoDB's) are `Send` where they are used.
#[allow(async_fn_in_trait)] // implemented within the workspace, used with concrete types
pub trait ItemWriter {
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
    /// Deletes `key` and, with `cascade`, its children in `t.children`, recursively (a child
    /// matches when its parent field holds the key with the same type and value, as a lookup
    /// compares keys); `false` when absent.
    async fn delete(&mut self, t: &Target, key: &Key, cascade: bool) -> Result<bool, StoreError>;

    /// Writes anything buffered (a store may batch the inserts of a chunk); called once after
    /// the last item, still inside the transaction. An error it can pin on one item is
    /// [`ApplyError::Item`]. Default: nothing buffered.
    async fn flush(&mut self) -> Result<(), ApplyError> {
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

/// Whether a writer's error is the item's alone: permanent, and not about the transaction's
/// size (a too-large transaction is split by the store, not blamed on an item).
pub fn refuses_item(e: &StoreError) -> bool {
    e.kind == StoreErrorKind::Permanent && e.code != "transaction_too_large"
}

/// Applies a chunk's items through `w`, with the contract's rules: decided items are reported
/// as decided; `skip_existing` turns `exists` into `skipped`; after a failure, `stop_on_error`
/// makes later items `not_attempted` (`stopped`); in an `atomic` chunk any failure aborts the
/// chunk: failed items stay `failed`, all others become `not_attempted` (`aborted`).
pub async fn apply_items<W: ItemWriter>(
    chunk: &WriteChunk,
    w: &mut W,
) -> Result<Applied, ApplyError> {
    apply_items_with(chunk, w, false, &BTreeMap::new()).await
}

/// [`apply_items`] for a part of a chunk that a store had to split (e.g. a MongoDB transaction
/// too large for the cache): `failed_before` says whether an item of an earlier part failed,
/// so that `stop_on_error` stops the later parts exactly as it would have stopped the whole;
/// `refused` holds the items the store refused on an earlier try (they fail with
/// `store_error`, and are not written again).
pub async fn apply_items_with<W: ItemWriter>(
    chunk: &WriteChunk,
    w: &mut W,
    failed_before: bool,
    refused: &BTreeMap<usize, StoreError>,
) -> Result<Applied, ApplyError> {
    let req = &chunk.request;
    let opts = &req.options;
    let mut results = Vec::with_capacity(chunk.range.len());
    let mut failed = failed_before;
    for item in chunk.items() {
        if let Some(decided) = &item.decided {
            failed |= decided.status == ItemStatus::Failed;
            results.push((**decided).clone());
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
        if let Some(e) = refused.get(&item.index) {
            failed = true;
            results.push(ItemResult::failed(
                item.index,
                ItemErrorCode::StoreError,
                format!("the store refused this item ({}): {}", e.code, e.message),
            ));
            continue;
        }
        let key = item.key.as_ref().ok_or_else(|| {
            // Validate gives every undecided item a key; reaching here is a bug, not bad input.
            StoreError::permanent("internal", format!("item {} has no key", item.index))
        })?;
        let t = &chunk.target;
        let blame = |e: StoreError| {
            if refuses_item(&e) {
                ApplyError::Item(item.index, e)
            } else {
                ApplyError::Chunk(e)
            }
        };
        let result = match (req.op, &item.body) {
            (Op::Create, ItemBody::Doc(doc)) => match w.insert(t, key, doc).await.map_err(blame)? {
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
                w.upsert(t, key, doc).await.map_err(blame)?;
                ItemResult::status(item.index, ItemStatus::Ok)
            }
            (Op::Update, ItemBody::Update { set, unset }) => {
                if w.update(t, key, set, unset).await.map_err(blame)? {
                    ItemResult::status(item.index, ItemStatus::Ok)
                } else {
                    ItemResult::status(item.index, ItemStatus::NotFound)
                }
            }
            (Op::Delete, ItemBody::Key) => {
                if w.delete(t, key, opts.cascade).await.map_err(blame)? {
                    ItemResult::status(item.index, ItemStatus::Ok)
                } else {
                    ItemResult::status(item.index, ItemStatus::NotFound)
                }
            }
            (op, body) => {
                return Err(StoreError::permanent(
                    "internal",
                    format!("item {} of op {op:?} has body {body:?}", item.index),
                )
                .into())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::contract::Options;
    use crate::record::SourceRef;
    use crate::request::{Item, Request};

    /// A writer that refuses documents whose key is `bad`, and remembers what it wrote.
    #[derive(Default)]
    struct Picky(Vec<Key>);

    impl ItemWriter for Picky {
        async fn insert(
            &mut self,
            _: &Target,
            key: &Key,
            _: &RawValue,
        ) -> Result<Inserted, StoreError> {
            if *key == Key::Str("bad".into()) {
                return Err(StoreError::permanent(
                    "encode",
                    "cannot store this document",
                ));
            }
            self.0.push(key.clone());
            Ok(Inserted::Inserted)
        }
        async fn upsert(&mut self, _: &Target, _: &Key, _: &RawValue) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn update(
            &mut self,
            _: &Target,
            _: &Key,
            _: &Map<String, Value>,
            _: &[String],
        ) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn delete(&mut self, _: &Target, _: &Key, _: bool) -> Result<bool, StoreError> {
            unreachable!()
        }
    }

    fn chunk(keys: &[&str]) -> WriteChunk {
        let items = keys
            .iter()
            .enumerate()
            .map(|(index, k)| Item {
                index,
                key: Some(Key::Str(k.to_string())),
                body: ItemBody::Doc(
                    serde_json::value::to_raw_value(&serde_json::json!({"text": k})).unwrap(),
                ),
                bytes: 10,
                decided: None,
            })
            .collect();
        let request = Request {
            request_id: "r".into(),
            collection: "words".into(),
            op: Op::Create,
            items,
            options: Options::default(),
        };
        WriteChunk {
            request: Arc::new(request),
            index: 0,
            chunks: 1,
            range: 0..keys.len(),
            source: SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            target: Arc::new(Target {
                collection: "words".into(),
                key_field: "text".into(),
                children: vec![],
            }),
            window_secs: 0,
            generation: 1,
        }
    }

    #[tokio::test]
    async fn an_item_the_store_refuses_fails_alone_on_the_rerun() {
        let c = chunk(&["a", "bad", "c"]);
        let err = apply_items(&c, &mut Picky::default()).await.unwrap_err();
        let ApplyError::Item(index, e) = err else {
            panic!("blamed on the item: {err:?}")
        };
        assert_eq!(index, 1);
        let refused = BTreeMap::from([(index, e)]);
        let mut w = Picky::default();
        let applied = apply_items_with(&c, &mut w, false, &refused).await.unwrap();
        let statuses: Vec<ItemStatus> = applied.event.items.iter().map(|i| i.status).collect();
        assert_eq!(
            statuses,
            [ItemStatus::Ok, ItemStatus::Failed, ItemStatus::Ok]
        );
        let error = applied.event.items[1].error.as_ref().unwrap();
        assert_eq!(error.code, ItemErrorCode::StoreError);
        assert_eq!(
            w.0,
            [Key::Str("a".into()), Key::Str("c".into())],
            "not written again"
        );
    }
}
