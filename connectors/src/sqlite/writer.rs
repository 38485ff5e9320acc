//! The SQLite `ItemWriter`: the primitive writes of one item inside an open transaction.
//! Keys are stored as their JSON text (`"sluice"`, `42`) so strings and integers never collide.

use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;
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

/// The SQL of one collection's table, built once at start-up.
#[derive(Debug, Clone)]
pub struct TableSql {
    insert: String,
    upsert: String,
    select: String,
    update: String,
    delete: String,
    /// Deletes this table's rows whose `field` holds a parent key: (field, SQL).
    delete_children: Vec<(String, String)>,
}

impl TableSql {
    /// The statements for `collection`; `parent_fields` are the fields cascades match on.
    pub fn new(collection: &str, parent_field: Option<&str>) -> Self {
        let t = table(collection);
        TableSql {
            insert: format!("INSERT INTO {t} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING"),
            upsert: format!(
                "INSERT INTO {t} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
            ),
            select: format!("SELECT doc FROM {t} WHERE key = ?1"),
            update: format!("UPDATE {t} SET doc = ?2 WHERE key = ?1"),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            delete_children: parent_field
                .map(|f| (f.to_string(), format!("DELETE FROM {t} WHERE json_extract(doc, '$.\"{f}\"') = ?1")))
                .into_iter()
                .collect(),
        }
    }

    /// `SELECT doc … WHERE key = ?1`.
    pub fn select(&self) -> &str {
        &self.select
    }
}

/// Writes through one connection that is inside a transaction.
pub struct SqlWriter<'a> {
    /// The connection, inside `BEGIN IMMEDIATE … SAVEPOINT items`.
    pub conn: &'a mut Connection,
    /// Statements by collection.
    pub sql: &'a HashMap<String, TableSql>,
}

impl SqlWriter<'_> {
    fn sql(&self, collection: &str) -> Result<&TableSql, StoreError> {
        self.sql.get(collection).ok_or_else(|| {
            StoreError::permanent(
                "unknown_collection",
                format!("no table for collection `{collection}`"),
            )
        })
    }
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
        doc: &RawValue,
    ) -> Result<Inserted, StoreError> {
        let sql = &self.sql(&t.collection)?.insert;
        let n = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params![key_text(key), doc.get()]))
            .map_err(classify)?;
        Ok(if n == 1 {
            Inserted::Inserted
        } else {
            Inserted::Exists
        })
    }

    async fn upsert(&mut self, t: &Target, key: &Key, doc: &RawValue) -> Result<(), StoreError> {
        let sql = &self.sql(&t.collection)?.upsert;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params![key_text(key), doc.get()]))
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
        let sql = self.sql(&t.collection)?;
        let doc: Option<String> = self
            .conn
            .prepare_cached(&sql.select)
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
        let text = encode(&doc)?;
        self.conn
            .prepare_cached(&sql.update)
            .and_then(|mut s| s.execute(params![k, text]))
            .map_err(classify)?;
        Ok(true)
    }

    async fn delete(&mut self, t: &Target, key: &Key, cascade: bool) -> Result<bool, StoreError> {
        let sql = &self.sql(&t.collection)?.delete;
        let n = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([key_text(key)]))
            .map_err(classify)?;
        if n == 0 {
            return Ok(false);
        }
        if cascade {
            for (child, field) in &t.children {
                let child_sql = self.sql(child)?;
                let Some((_, sql)) = child_sql.delete_children.iter().find(|(f, _)| f == field)
                else {
                    return Err(StoreError::permanent(
                        "schema",
                        format!("{child}.{field} is not a parent field"),
                    ));
                };
                let mut stmt = self.conn.prepare_cached(sql).map_err(classify)?;
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
