//! The MongoDB `ItemWriter`: primitive writes inside the chunk's transaction. A `create`
//! chunk is first tried optimistically: one `insertMany`, no read — the common case, a chunk
//! of new keys, costs the store no look-up of its keys. A duplicate aborts the transaction
//! (a failed write aborts a MongoDB transaction), so the chunk then runs again pessimistically
//! ([`EXISTING_KEYS`]): the existing keys are read once with `$in` before any write, and those
//! items get `exists`. Cascades match a child's
//! parent field by the key's type and value, as lookups compare keys (`{"$eq": k}` alone would
//! also match `1.0` for `1` and arrays holding `k`).

use std::collections::{HashMap, HashSet};

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::{ClientSession, Collection, Database};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_pipeline::apply::refuses_item;
use sluice_pipeline::contract::Op;
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{ApplyError, Child, Inserted, ItemWriter, Target, WriteChunk};
use sluice_pipeline::StoreError;

use super::layout::Keyed;
use super::{classify, convert, is_duplicate_key};

/// The code of the error that ends an optimistic `create` transaction which met an existing
/// key: the chunk runs again at once, reading its existing keys first.
pub const EXISTING_KEYS: &str = "existing_keys";

/// A key as a BSON value.
pub fn key_bson(key: &Key) -> Bson {
    match key {
        Key::Str(s) => Bson::String(s.clone()),
        Key::Int(i) => Bson::Int64(*i),
    }
}

/// Writes through one session inside its transaction.
pub struct MongoWriter<'a> {
    db: &'a Database,
    session: &'a mut ClientSession,
    keys: &'a HashMap<String, Keyed>,
    /// Keys of the chunk's collection that exist (read at start, updated as items apply).
    existing: HashSet<Key>,
    /// The chunk's items by key (the first with each key), to name a refused insert's item.
    items: HashMap<Key, usize>,
    /// Inserts of the chunk, written with one `insertMany` at `flush` (a create chunk only
    /// inserts, and the existence check above already decided each item's status) or left to
    /// the chunk's group ([`MongoWriter::defer_inserts`]), with the index of the item each
    /// came from, and (deferred) its key.
    pending: Vec<Document>,
    pending_items: Vec<usize>,
    pending_keys: Vec<Key>,
    pending_collection: Option<String>,
    /// Existing keys were not read: a duplicate on insert is [`EXISTING_KEYS`].
    optimistic: bool,
    /// `flush` leaves the inserts for [`MongoWriter::take_inserts`] (a group transaction
    /// writes every chunk's inserts with one `insertMany`).
    deferred: bool,
}

/// The inserts a chunk left for its group: the collection, the documents and their keys.
pub struct Inserts {
    pub collection: String,
    pub docs: Vec<Document>,
    pub keys: Vec<Key>,
}

/// What a failed `insertMany` was about.
pub struct InsertFailed {
    /// The index (in the whole `insertMany` input) of the document the server named, when it
    /// is that document's own failure: a duplicate key, or a document the server refuses
    /// ([`refused`](Self::refused)).
    pub doc: Option<usize>,
    /// The document itself is refused: its item fails alone.
    pub refused: bool,
    pub error: StoreError,
}

/// Reads a failed `insertMany` of a `create`: a duplicate key is [`EXISTING_KEYS`] when the
/// existing keys were not read (`optimistic`), else `duplicate_key` (another transaction
/// inserted one since the read); both transient, since the transaction is aborted and the
/// chunk runs again.
pub fn insert_failed(e: &mongodb::error::Error, optimistic: bool) -> InsertFailed {
    let mut write_errors = match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => m.write_errors.as_deref().unwrap_or_default(),
        _ => &[],
    }
    .iter();
    if is_duplicate_key(e) {
        let code = if optimistic {
            EXISTING_KEYS
        } else {
            "duplicate_key"
        };
        return InsertFailed {
            doc: write_errors.find(|w| w.code == 11000).map(|w| w.index),
            refused: false,
            error: StoreError::transient(code, e.to_string()),
        };
    }
    let error = classify(e);
    let doc = write_errors
        .find(|w| w.code != 11000)
        .filter(|_| refuses_item(&error))
        .map(|w| w.index);
    InsertFailed {
        doc,
        refused: doc.is_some(),
        error,
    }
}

impl<'a> MongoWriter<'a> {
    /// Reads, for a `create` chunk that is not `optimistic`, which of its keys exist already.
    pub async fn new(
        db: &'a Database,
        session: &'a mut ClientSession,
        keys: &'a HashMap<String, Keyed>,
        chunk: &WriteChunk,
        optimistic: bool,
    ) -> Result<Self, StoreError> {
        let mut existing = HashSet::new();
        let mut items = HashMap::new();
        for item in chunk.items().iter().filter(|i| i.decided.is_none()) {
            if let Some(k) = &item.key {
                items.entry(k.clone()).or_insert(item.index);
            }
        }
        // `skip_existing` says the producer expects existing keys: read them first.
        let optimistic =
            optimistic && chunk.request.op == Op::Create && !chunk.request.options.skip_existing;
        if chunk.request.op == Op::Create && !optimistic {
            let t = &chunk.target;
            let wanted: Vec<Bson> = chunk
                .items()
                .iter()
                .filter(|i| i.decided.is_none())
                .filter_map(|i| i.key.as_ref())
                .map(key_bson)
                .collect();
            // Not configured: nothing exists; its writes fail with `unknown_collection`.
            if let (false, Some(keyed)) = (wanted.is_empty(), keys.get(&t.collection)) {
                let coll: Collection<Document> = db.collection(&t.collection);
                let mut cursor = coll
                    .find(keyed.filter_in(wanted))
                    .projection(doc! {&t.key_field: 1, "_id": 0})
                    .session(&mut *session)
                    .await
                    .map_err(|e| classify(&e))?;
                while let Some(d) = cursor.next(&mut *session).await {
                    let d = d.map_err(|e| classify(&e))?;
                    if let Some(k) = d
                        .get(&t.key_field)
                        .and_then(|b| Key::from_json(&b.clone().into_relaxed_extjson()))
                    {
                        existing.insert(k);
                    }
                }
            }
        }
        Ok(MongoWriter {
            db,
            session,
            keys,
            existing,
            items,
            pending: Vec::new(),
            pending_items: Vec::new(),
            pending_keys: Vec::new(),
            pending_collection: None,
            optimistic,
            deferred: false,
        })
    }

    /// Leaves the chunk's inserts to the caller instead of writing them at `flush`.
    pub fn defer_inserts(&mut self) {
        self.deferred = true;
    }

    /// Counts `keys` as existing: inserted earlier in this transaction (by the chunks before
    /// this one in its group), though not yet sent to the server.
    pub fn also_existing<'k>(&mut self, keys: impl IntoIterator<Item = &'k Key>) {
        self.existing.extend(keys.into_iter().cloned());
    }

    /// The inserts `flush` left (see [`MongoWriter::defer_inserts`]).
    pub fn take_inserts(&mut self) -> Option<Inserts> {
        let collection = self.pending_collection.take()?;
        self.pending_items.clear();
        Some(Inserts {
            collection,
            docs: std::mem::take(&mut self.pending),
            keys: std::mem::take(&mut self.pending_keys),
        })
        .filter(|i| !i.docs.is_empty())
    }

    fn coll(&self, name: &str) -> Result<Collection<Document>, StoreError> {
        self.keyed(name)?;
        Ok(self.db.collection(name))
    }

    /// How the configured collection `name` keys its documents.
    fn keyed(&self, name: &str) -> Result<&'a Keyed, StoreError> {
        self.keys.get(name).ok_or_else(|| {
            StoreError::permanent(
                "unknown_collection",
                format!("collection `{name}` is not configured"),
            )
        })
    }
}

fn to_document(doc: &RawValue) -> Result<Document, StoreError> {
    convert::document(doc.get())
}

/// The filter matching documents whose `field` holds `key` with its type: a string, or a
/// 64-bit integer (JSON integers are stored as such), never an array holding it.
pub fn key_match(field: &str, key: &Key) -> Document {
    let ty = match key {
        Key::Str(_) => "string",
        Key::Int(_) => "long",
    };
    doc! {field: {"$eq": key_bson(key), "$type": ty, "$not": {"$type": "array"}}}
}

impl ItemWriter for MongoWriter<'_> {
    async fn insert(
        &mut self,
        t: &Target,
        key: &Key,
        doc: &RawValue,
    ) -> Result<Inserted, StoreError> {
        if self.existing.contains(key) {
            return Ok(Inserted::Exists);
        }
        let stored = self.keyed(&t.collection)?.stored(key, to_document(doc)?);
        self.pending.push(stored);
        self.pending_items
            .push(self.items.get(key).copied().unwrap_or(usize::MAX));
        if self.deferred {
            self.pending_keys.push(key.clone());
        }
        self.pending_collection = Some(t.collection.clone());
        self.existing.insert(key.clone());
        Ok(Inserted::Inserted)
    }

    async fn flush(&mut self) -> Result<(), ApplyError> {
        if self.deferred {
            return Ok(());
        }
        if let (Some(name), false) = (&self.pending_collection, self.pending.is_empty()) {
            let coll = self.coll(name)?;
            let docs = std::mem::take(&mut self.pending);
            let items = std::mem::take(&mut self.pending_items);
            if let Err(e) = coll.insert_many(docs).session(&mut *self.session).await {
                let failed = insert_failed(&e, self.optimistic);
                // A document the server refuses on its own fails alone.
                let item = failed.doc.and_then(|d| items.get(d)).copied();
                if let (true, Some(item)) = (failed.refused, item.filter(|i| *i != usize::MAX)) {
                    return Err(ApplyError::Item(item, failed.error));
                }
                return Err(failed.error.into());
            }
        }
        Ok(())
    }

    async fn upsert(&mut self, t: &Target, key: &Key, doc: &RawValue) -> Result<(), StoreError> {
        let coll = self.coll(&t.collection)?;
        let keyed = self.keyed(&t.collection)?;
        coll.replace_one(keyed.filter(key), keyed.stored(key, to_document(doc)?))
            .upsert(true)
            .session(&mut *self.session)
            .await
            .map_err(|e| classify(&e))?;
        self.existing.insert(key.clone());
        Ok(())
    }

    async fn update(
        &mut self,
        t: &Target,
        key: &Key,
        set: &Map<String, Value>,
        unset: &[String],
    ) -> Result<bool, StoreError> {
        let coll = self.coll(&t.collection)?;
        let mut update = Document::new();
        if !set.is_empty() {
            let mut fields = Document::new();
            for (k, v) in set {
                fields.insert(k.clone(), convert::bson(v)?);
            }
            update.insert("$set", fields);
        }
        if !unset.is_empty() {
            let fields: Document = unset
                .iter()
                .map(|f| (f.clone(), Bson::String(String::new())))
                .collect();
            update.insert("$unset", fields);
        }
        let r = coll
            .update_one(self.keyed(&t.collection)?.filter(key), update)
            .session(&mut *self.session)
            .await
            .map_err(|e| classify(&e))?;
        Ok(r.matched_count > 0)
    }

    async fn delete(&mut self, t: &Target, key: &Key, cascade: bool) -> Result<bool, StoreError> {
        let coll = self.coll(&t.collection)?;
        let r = coll
            .delete_one(self.keyed(&t.collection)?.filter(key))
            .session(&mut *self.session)
            .await
            .map_err(|e| classify(&e))?;
        if r.deleted_count == 0 {
            return Ok(false);
        }
        self.existing.remove(key);
        if cascade {
            self.delete_children(&t.children, key).await?;
        }
        Ok(true)
    }
}

impl MongoWriter<'_> {
    /// Deletes the documents of `children` whose parent field holds `key` (same type and
    /// value), and theirs, to every declared depth, in the chunk's transaction.
    fn delete_children<'s>(
        &'s mut self,
        children: &'s [Child],
        key: &'s Key,
    ) -> futures::future::BoxFuture<'s, Result<(), StoreError>> {
        Box::pin(async move {
            for child in children {
                let coll = self.coll(&child.collection)?;
                let filter = key_match(&child.field, key);
                let mut grandchildren = Vec::new();
                if !child.children.is_empty() {
                    let mut cursor = coll
                        .find(filter.clone())
                        .projection(doc! {&child.key_field: 1, "_id": 0})
                        .session(&mut *self.session)
                        .await
                        .map_err(|e| classify(&e))?;
                    while let Some(d) = cursor.next(&mut *self.session).await {
                        let d = d.map_err(|e| classify(&e))?;
                        if let Some(k) = d
                            .get(&child.key_field)
                            .and_then(|b| Key::from_json(&b.clone().into_relaxed_extjson()))
                        {
                            grandchildren.push(k);
                        }
                    }
                }
                coll.delete_many(filter)
                    .session(&mut *self.session)
                    .await
                    .map_err(|e| classify(&e))?;
                for k in &grandchildren {
                    self.delete_children(&child.children, k).await?;
                }
            }
            Ok(())
        })
    }
}
