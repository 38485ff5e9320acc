//! The MongoDB `ItemWriter`: primitive writes inside the chunk's transaction. Existing keys of
//! a `create` chunk are read once with `$in` before any write, because a failed write aborts a
//! MongoDB transaction: a duplicate must be detected, not provoked.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{ClientSession, Collection, Database};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_pipeline::contract::Op;
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{Inserted, ItemWriter, Target, WriteChunk};
use sluice_pipeline::StoreError;

use super::classify;

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
    keys: &'a HashMap<String, String>,
    /// Keys of the chunk's collection that exist (read at start, updated as items apply).
    existing: HashSet<Key>,
    /// Inserts of the chunk, written with one `insertMany` at `flush` (a create chunk only
    /// inserts, and the existence check above already decided each item's status).
    pending: Vec<Document>,
    pending_collection: Option<String>,
}

fn encode_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::permanent("encode", e.to_string())
}

impl<'a> MongoWriter<'a> {
    /// Reads, for a `create` chunk, which of its keys exist already.
    pub async fn new(
        db: &'a Database,
        session: &'a mut ClientSession,
        keys: &'a HashMap<String, String>,
        chunk: &WriteChunk,
    ) -> Result<Self, StoreError> {
        let mut existing = HashSet::new();
        if chunk.request.op == Op::Create {
            let t = &chunk.target;
            let wanted: Vec<Bson> = chunk
                .items()
                .iter()
                .filter(|i| i.decided.is_none())
                .filter_map(|i| i.key.as_ref())
                .map(key_bson)
                .collect();
            if !wanted.is_empty() {
                let coll: Collection<Document> = db.collection(&t.collection);
                let mut cursor = coll
                    .find(doc! {&t.key_field: {"$in": wanted}})
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
            pending: Vec::new(),
            pending_collection: None,
        })
    }

    fn coll(&self, name: &str) -> Result<Collection<Document>, StoreError> {
        if !self.keys.contains_key(name) {
            return Err(StoreError::permanent(
                "unknown_collection",
                format!("collection `{name}` is not configured"),
            ));
        }
        Ok(self.db.collection(name))
    }
}

fn to_document(doc: &RawValue) -> Result<Document, StoreError> {
    serde_json::from_str::<Document>(doc.get()).map_err(encode_err)
}

#[async_trait]
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
        self.coll(&t.collection)?;
        self.pending.push(to_document(doc)?);
        self.pending_collection = Some(t.collection.clone());
        self.existing.insert(key.clone());
        Ok(Inserted::Inserted)
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if let (Some(name), false) = (&self.pending_collection, self.pending.is_empty()) {
            let coll = self.coll(name)?;
            let docs = std::mem::take(&mut self.pending);
            // A duplicate here means another transaction inserted a key since our read: the
            // transaction is aborted and the chunk reruns (transient), seeing the key this time.
            coll.insert_many(docs)
                .session(&mut *self.session)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(())
    }

    async fn upsert(&mut self, t: &Target, key: &Key, doc: &RawValue) -> Result<(), StoreError> {
        let coll = self.coll(&t.collection)?;
        coll.replace_one(doc! {&t.key_field: key_bson(key)}, to_document(doc)?)
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
            update.insert("$set", mongodb::bson::to_document(set).map_err(encode_err)?);
        }
        if !unset.is_empty() {
            let fields: Document = unset
                .iter()
                .map(|f| (f.clone(), Bson::String(String::new())))
                .collect();
            update.insert("$unset", fields);
        }
        let r = coll
            .update_one(doc! {&t.key_field: key_bson(key)}, update)
            .session(&mut *self.session)
            .await
            .map_err(|e| classify(&e))?;
        Ok(r.matched_count > 0)
    }

    async fn delete(&mut self, t: &Target, key: &Key, cascade: bool) -> Result<bool, StoreError> {
        let coll = self.coll(&t.collection)?;
        let r = coll
            .delete_one(doc! {&t.key_field: key_bson(key)})
            .session(&mut *self.session)
            .await
            .map_err(|e| classify(&e))?;
        if r.deleted_count == 0 {
            return Ok(false);
        }
        self.existing.remove(key);
        if cascade {
            for (child, field) in &t.children {
                let c = self.coll(child)?;
                c.delete_many(doc! {field: key_bson(key)})
                    .session(&mut *self.session)
                    .await
                    .map_err(|e| classify(&e))?;
            }
        }
        Ok(true)
    }
}
