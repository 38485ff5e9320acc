//! The SQLite `ItemWriter`: the primitive writes of one item inside an open transaction.
//! Keys are stored as their JSON text (`"sluice"`, `42`) so strings and integers never collide.

use std::collections::HashMap;

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{Child, Inserted, ItemWriter, Target};
use sluice_pipeline::StoreError;

use super::classify;

/// A quoted SQL identifier (config validates names to `[A-Za-z_][A-Za-z0-9_]*`; the quoting
/// holds whatever they are).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The quoted table name of a collection.
pub fn table(collection: &str) -> String {
    quote_ident(&format!("doc_{collection}"))
}

/// A SQL string literal holding the JSON path of a top-level field.
pub fn json_path(field: &str) -> String {
    let path = format!("$.\"{}\"", field.replace('\\', "\\\\").replace('"', "\\\""));
    format!("'{}'", path.replace('\'', "''"))
}

/// A key as stored in the `key` column.
pub fn key_text(key: &Key) -> String {
    let mut text = String::new();
    write_key_text(&mut text, key);
    text
}

/// [`key_text`] into `out`, replacing what it held. Written directly, with no `Value` in
/// between and no allocation once `out` is large enough: this runs on the writer thread for
/// every item (`tests::key_text_is_the_keys_json`).
pub fn write_key_text(out: &mut String, key: &Key) {
    use std::fmt::Write;
    out.clear();
    match key {
        Key::Str(s) => {
            let mut bytes = std::mem::take(out).into_bytes();
            serde_json::to_writer(&mut bytes, s).expect("a string always serializes");
            // serde_json writes UTF-8 only; the check is a pass over a short key.
            *out = String::from_utf8(bytes).expect("serde_json writes UTF-8");
        }
        Key::Int(i) => write!(out, "{i}").expect("writing to a String cannot fail"),
    }
}

/// The JSON type a field must have to match `key` (`json_type`): a key matches its own type
/// only, as lookups compare keys — `"1"` never matches `1`, `1.0` never matches `1`, and an
/// object or array never matches.
fn key_type(key: &Key) -> &'static str {
    match key {
        Key::Str(_) => "text",
        Key::Int(_) => "integer",
    }
}

/// The statements that find a parent's children in one table by its parent field.
#[derive(Debug, Clone)]
pub struct ChildSql {
    /// `SELECT key …` of the rows whose field holds the parent key (?1) with its type (?2).
    select_keys: String,
    /// `DELETE …` of the same rows.
    delete: String,
}

/// The SQL of one collection's table, built once at start-up.
#[derive(Debug, Clone)]
pub struct TableSql {
    insert: String,
    upsert: String,
    select: String,
    update: String,
    delete: String,
    /// By parent field: the statements cascades use on this table.
    children: HashMap<String, ChildSql>,
}

impl TableSql {
    /// The statements for `collection`; `parent_field` is the field cascades match on.
    pub fn new(collection: &str, parent_field: Option<&str>) -> Self {
        let t = table(collection);
        let children = parent_field
            .map(|f| {
                let m = format!(
                    "json_type(doc, {p}) = ?2 AND json_extract(doc, {p}) = ?1",
                    p = json_path(f)
                );
                let sql = ChildSql {
                    select_keys: format!("SELECT key FROM {t} WHERE {m}"),
                    delete: format!("DELETE FROM {t} WHERE {m}"),
                };
                (f.to_string(), sql)
            })
            .into_iter()
            .collect();
        TableSql {
            insert: format!("INSERT INTO {t} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING"),
            upsert: format!(
                "INSERT INTO {t} (key, doc) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
            ),
            select: format!("SELECT doc FROM {t} WHERE key = ?1"),
            update: format!("UPDATE {t} SET doc = ?2 WHERE key = ?1"),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            children,
        }
    }

    /// `SELECT doc … WHERE key = ?1`.
    pub fn select(&self) -> &str {
        &self.select
    }
}

/// Writes through one connection that is inside a transaction.
pub struct SqlWriter<'a> {
    /// The connection, inside a group's transaction and the write's savepoint.
    conn: &'a Connection,
    /// Statements by collection.
    sql: &'a HashMap<String, TableSql>,
    /// The last insert or upsert statement used, with its SQL: a chunk writes to one table,
    /// so the statement cache (a hash of the SQL text and an LRU move, twice per item) is
    /// consulted once per chunk rather than once per item.
    held: Option<(&'a str, CachedStatement<'a>)>,
    /// The key's text, reused from item to item.
    key: String,
    /// The last collection looked up, with its statements (a chunk writes to one collection).
    table: Option<(String, &'a TableSql)>,
}

impl<'a> SqlWriter<'a> {
    /// A writer on `conn`, which is inside a transaction.
    pub fn new(conn: &'a Connection, sql: &'a HashMap<String, TableSql>) -> Self {
        SqlWriter {
            conn,
            sql,
            held: None,
            key: String::new(),
            table: None,
        }
    }

    fn sql(&mut self, collection: &str) -> Result<&'a TableSql, StoreError> {
        if let Some((name, sql)) = &self.table {
            if name == collection {
                return Ok(sql);
            }
        }
        let all: &'a HashMap<String, TableSql> = self.sql;
        let sql = all.get(collection).ok_or_else(|| {
            StoreError::permanent(
                "unknown_collection",
                format!("no table for collection `{collection}`"),
            )
        })?;
        self.table = Some((collection.to_string(), sql));
        Ok(sql)
    }

    /// Executes `sql` (an insert or upsert of `?1` key, `?2` document) with `key` and `doc`.
    fn write(&mut self, sql: &'a str, key: &Key, doc: &str) -> Result<usize, StoreError> {
        if !matches!(&self.held, Some((held, _)) if std::ptr::eq(*held, sql)) {
            self.held = None;
            let stmt = self.conn.prepare_cached(sql).map_err(classify)?;
            self.held = Some((sql, stmt));
        }
        let Some((_, stmt)) = self.held.as_mut() else {
            unreachable!("a statement was just held")
        };
        write_key_text(&mut self.key, key);
        stmt.execute(params![self.key.as_str(), doc])
            .map_err(classify)
    }
}

fn encode(doc: &Map<String, Value>) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(|e| StoreError::permanent("encode", e.to_string()))
}

impl ItemWriter for SqlWriter<'_> {
    async fn insert(
        &mut self,
        t: &Target,
        key: &Key,
        doc: &RawValue,
    ) -> Result<Inserted, StoreError> {
        let sql = &self.sql(&t.collection)?.insert;
        let n = self.write(sql, key, doc.get())?;
        Ok(if n == 1 {
            Inserted::Inserted
        } else {
            Inserted::Exists
        })
    }

    async fn upsert(&mut self, t: &Target, key: &Key, doc: &RawValue) -> Result<(), StoreError> {
        let sql = &self.sql(&t.collection)?.upsert;
        self.write(sql, key, doc.get())?;
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
            self.delete_children(&t.children, key)?;
        }
        Ok(true)
    }
}

impl SqlWriter<'_> {
    /// Deletes the documents of `children` whose parent field holds `key` (same type and
    /// value), and theirs, to every declared depth.
    fn delete_children(&mut self, children: &[Child], key: &Key) -> Result<(), StoreError> {
        for child in children {
            let sql = self
                .sql(&child.collection)?
                .children
                .get(&child.field)
                .ok_or_else(|| {
                    StoreError::permanent(
                        "schema",
                        format!("{}.{} is not a parent field", child.collection, child.field),
                    )
                })?
                .clone();
            let value = match key {
                Key::Str(s) => rusqlite::types::Value::Text(s.clone()),
                Key::Int(i) => rusqlite::types::Value::Integer(*i),
            };
            let grandchildren: Vec<Key> = if child.children.is_empty() {
                Vec::new()
            } else {
                let mut stmt = self
                    .conn
                    .prepare_cached(&sql.select_keys)
                    .map_err(classify)?;
                let texts = stmt
                    .query_map(params![value, key_type(key)], |r| r.get::<_, String>(0))
                    .map_err(classify)?
                    .collect::<Result<Vec<String>, _>>()
                    .map_err(classify)?;
                texts
                    .iter()
                    .filter_map(|t| serde_json::from_str::<Value>(t).ok())
                    .filter_map(|v| Key::from_json(&v))
                    .collect()
            };
            self.conn
                .prepare_cached(&sql.delete)
                .and_then(|mut s| s.execute(params![value, key_type(key)]))
                .map_err(classify)?;
            for k in &grandchildren {
                self.delete_children(&child.children, k)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `key` column holds the key's JSON text, as rows written before this form hold it.
    #[test]
    fn key_text_is_the_keys_json() {
        for key in [
            Key::Str(String::new()),
            Key::Str("plain".into()),
            Key::Str("q\"uote\\ back\u{0}\u{1f}\u{7f}é\u{10348}".into()),
            Key::Int(0),
            Key::Int(-1),
            Key::Int(i64::MIN),
            Key::Int(i64::MAX),
        ] {
            assert_eq!(key_text(&key), key.to_json().to_string(), "{key:?}");
        }
    }
}
