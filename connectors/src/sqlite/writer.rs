//! The SQLite `ItemWriter`: the primitive writes of one item inside an open transaction.
//! Keys are stored as their JSON text (`"sluice"`, `42`) so strings and integers never collide.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{Inserted, ItemWriter, Target};
use sluice_pipeline::StoreError;

use super::classify;

/// The quoted table name of a collection (names are validated by config to `[A-Za-z0-9_]`).
pub fn table(collection: &str) -> String {
    format!("\"doc_{collection}\"")
}

/// A key as stored in the `key` column.
pub fn key_text(key: &Key) -> String {
    key.to_json().to_string()
}

/// Writes through one connection that is inside a transaction.
pub struct SqlWriter<'a> {
    /// The connection, inside `BEGIN IMMEDIATE … SAVEPOINT items`.
    pub conn: &'a mut Connection,
}

fn encode(doc: &Map<String, Value>) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(|e| StoreError::permanent("encode", e.to_string()))
}

#[async_trait]
impl ItemWriter for SqlWriter<'_> {
    async fn insert(
        &mut self,
        t: &Target,
        key: &Key,
        doc: &Map<String, Value>,
    ) -> Result<Inserted, StoreError> {
        let sql = format!(
            "INSERT INTO {} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            table(&t.collection)
        );
        let text = encode(doc)?;
        let n = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(params![key_text(key), text]))
            .map_err(classify)?;
        Ok(if n == 1 {
            Inserted::Inserted
        } else {
            Inserted::Exists
        })
    }

    async fn upsert(
        &mut self,
        t: &Target,
        key: &Key,
        doc: &Map<String, Value>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
            table(&t.collection)
        );
        let text = encode(doc)?;
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(params![key_text(key), text]))
            .map_err(classify)?;
        Ok(())
    }

    async fn update(
        &mut self,
        t: &Target,
        key: &Key,
        set: &Map<String, Value>,
        unset: &[String],
    ) -> Result<bool, StoreError> {
        let k = key_text(key);
        let select = format!("SELECT doc FROM {} WHERE key = ?1", table(&t.collection));
        let doc: Option<String> = self
            .conn
            .prepare_cached(&select)
            .and_then(|mut s| s.query_row([&k], |r| r.get(0)).optional())
            .map_err(classify)?;
        let Some(doc) = doc else { return Ok(false) };
        let mut doc: Map<String, Value> = serde_json::from_str(&doc)
            .map_err(|e| StoreError::permanent("corrupt", e.to_string()))?;
        for (f, v) in set {
            doc.insert(f.clone(), v.clone());
        }
        for f in unset {
            doc.remove(f);
        }
        let update = format!(
            "UPDATE {} SET doc = ?2 WHERE key = ?1",
            table(&t.collection)
        );
        let text = encode(&doc)?;
        self.conn
            .prepare_cached(&update)
            .and_then(|mut s| s.execute(params![k, text]))
            .map_err(classify)?;
        Ok(true)
    }

    async fn delete(&mut self, t: &Target, key: &Key, cascade: bool) -> Result<bool, StoreError> {
        let sql = format!("DELETE FROM {} WHERE key = ?1", table(&t.collection));
        let n = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute([key_text(key)]))
            .map_err(classify)?;
        if n == 0 {
            return Ok(false);
        }
        if cascade {
            for (child, field) in &t.children {
                let sql = format!(
                    "DELETE FROM {} WHERE json_extract(doc, '$.\"{field}\"') = ?1",
                    table(child)
                );
                let mut stmt = self.conn.prepare_cached(&sql).map_err(classify)?;
                match key {
                    Key::Str(s) => stmt.execute([s]),
                    Key::Int(i) => stmt.execute([i]),
                }
                .map_err(classify)?;
            }
        }
        Ok(true)
    }
}
