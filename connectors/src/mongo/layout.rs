//! How each configured collection keys its documents on MongoDB.
//!
//! A document's `_id` is its key value (`{"_id": "apple", "text": "apple", …}`): the key field
//! is kept as the user wrote it, and the `_id` index — which every collection has — is the
//! unique index on the key. Look-ups, existence reads, upserts, updates and deletes go through
//! it, and an insert maintains one index instead of two. (SecantusDB spent ~2.2× the CPU per
//! inserted document with an ObjectId `_id` plus a unique index on the key field; see
//! BENCHMARKS.md.) The top-level `_id` is reserved in requests, so no item can contradict it.
//!
//! Collections written by versions of sluice before this layout (an ObjectId `_id` and a unique
//! index `{key: 1}`) keep their layout: found at start-up by that index, or by a document with
//! an ObjectId `_id`, they are keyed by the field as before. A collection is decided once, when
//! sluice first sees it, and the decision is recorded in `sluice_collections`, so every
//! instance and every restart keys it the same way whatever appears in it later. A collection
//! keyed by `_id` cannot change its key field (its `_id`s hold the old key): start-up refuses.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use sluice_pipeline::request::Key;
use sluice_pipeline::StoreError;

use super::{classify, writer::key_bson};

/// How one collection's documents are keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// The configured key field (every document holds it, in both layouts).
    pub field: String,
    /// The `_id` is the key (false: an ObjectId `_id` and a unique index on `field`).
    pub by_id: bool,
}

impl Keyed {
    /// The field the store finds a key by: `_id`, or the key field in the older layout.
    pub fn lookup_field(&self) -> &str {
        if self.by_id {
            "_id"
        } else {
            &self.field
        }
    }

    /// The filter matching the document with `key`.
    pub fn filter(&self, key: &Key) -> Document {
        doc! {self.lookup_field(): key_bson(key)}
    }

    /// The filter matching the documents whose keys are in `keys`.
    pub fn filter_in(&self, keys: Vec<Bson>) -> Document {
        doc! {self.lookup_field(): {"$in": keys}}
    }

    /// The document to store for `doc` with `key`: with its `_id` first when keyed by it.
    pub fn stored(&self, key: &Key, doc: Document) -> Document {
        if !self.by_id {
            return doc;
        }
        let mut stored = Document::new();
        stored.insert("_id", key_bson(key));
        stored.extend(doc);
        stored
    }
}

/// Decides how `name` (keyed by `key`) keys its documents and creates the indexes that layout
/// needs: none for the key when it is the `_id`; the unique `{key: 1}` index for a collection
/// in the older layout. `parent_field` gets its (non-unique) index for cascades either way.
pub async fn prepare(
    db: &Database,
    name: &str,
    key: &str,
    parent_field: Option<&str>,
) -> Result<Keyed, StoreError> {
    let coll: Collection<Document> = db.collection(name);
    let by_id = recorded_layout(db, &coll, name, key).await?;
    let index = |keys: Document, unique: bool| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().unique(unique).build())
            .build()
    };
    if !by_id {
        coll.create_index(index(doc! {key: 1}, true))
            .await
            .map_err(|e| classify(&e))?;
    }
    if let Some(f) = parent_field {
        coll.create_index(index(doc! {f: 1}, false))
            .await
            .map_err(|e| classify(&e))?;
    }
    Ok(Keyed {
        field: key.to_string(),
        by_id,
    })
}

/// The collections' layouts, as first decided.
const LAYOUTS: &str = "sluice_collections";

/// Whether `name` is keyed by `_id`: as recorded, or decided now from what the collection
/// holds and recorded (the first instance to record it decides for all).
async fn recorded_layout(
    db: &Database,
    coll: &Collection<Document>,
    name: &str,
    key: &str,
) -> Result<bool, StoreError> {
    let layouts: Collection<Document> = db.collection(LAYOUTS);
    let recorded = match layouts
        .find_one(doc! {"_id": name})
        .await
        .map_err(|e| classify(&e))?
    {
        Some(d) => d,
        None => {
            let by_id = !older_layout(coll, key).await?;
            layouts
                .update_one(
                    doc! {"_id": name},
                    doc! {"$setOnInsert": {"by_id": by_id, "key": key}},
                )
                .upsert(true)
                .await
                .map_err(|e| classify(&e))?;
            layouts
                .find_one(doc! {"_id": name})
                .await
                .map_err(|e| classify(&e))?
                .ok_or_else(|| StoreError::transient("layout", "the recorded layout vanished"))?
        }
    };
    let by_id = recorded.get_bool("by_id").unwrap_or(false);
    let was = recorded.get_str("key").unwrap_or(key);
    if by_id && was != key {
        return Err(StoreError::permanent(
            "key_changed",
            format!(
                "collection `{name}` keys its documents' _id by `{was}`, but its key is now \
                 `{key}`: documents would not be found by the new key (restore the key, or \
                 migrate the collection and delete its entry in {LAYOUTS})"
            ),
        ));
    }
    if !by_id && was != key {
        layouts
            .update_one(doc! {"_id": name}, doc! {"$set": {"key": key}})
            .await
            .map_err(|e| classify(&e))?;
    }
    Ok(by_id)
}

/// Whether `coll` was written in the older layout: it has a unique index on exactly `{key: 1}`,
/// or a document with an ObjectId `_id` (a collection whose index was dropped by hand).
async fn older_layout(coll: &Collection<Document>, key: &str) -> Result<bool, StoreError> {
    let mut indexes = match coll.list_indexes().await {
        Ok(cursor) => cursor,
        // No such collection yet: it will be created in the new layout.
        Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 26) => {
            return Ok(false)
        }
        Err(e) => return Err(classify(&e)),
    };
    while let Some(index) = indexes.try_next().await.map_err(|e| classify(&e))? {
        let unique = index.options.as_ref().and_then(|o| o.unique) == Some(true);
        if unique && index.keys.len() == 1 && index.keys.contains_key(key) {
            return Ok(true);
        }
    }
    let legacy = coll
        .find_one(doc! {"_id": {"$type": "objectId"}})
        .projection(doc! {"_id": 1})
        .await
        .map_err(|e| classify(&e))?;
    Ok(legacy.is_some())
}
