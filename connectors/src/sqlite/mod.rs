//! The SQLite store: one database file holds the documents (a table per collection), the
//! request ledger (`requests`), the chunk ledger (`ledger`) and, for the embedded sink, the
//! input/output checkpoints.
//!
//! One writer connection executes chunks one transaction at a time (SQLite has one writer);
//! lookups use a small pool of reader connections, which WAL mode lets run concurrently with
//! the writer. All SQLite calls run on tokio's blocking pool.

mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde_json::Value;
use sluice_config::Config;
use sluice_pipeline::contract::ProgressEvent;
use sluice_pipeline::dedupe::unix_now;
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{apply_items, ChunkCommit, Claim, Target, WriteChunk};
use sluice_pipeline::{SourceRef, Store, StoreError};

pub use writer::{key_text, table, TableSql};

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    sql: Arc<HashMap<String, TableSql>>,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
}

/// Opens a connection with the settings every sluice connection uses; `busy` is how long a
/// statement waits for another process's lock.
pub fn connect(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy)?;
    // WAL: readers do not block the writer; NORMAL sync is durable against process crashes
    // (what kill -9 tests), the WAL is synced at checkpoints.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Maps a SQLite error to the store error classification.
pub fn classify(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                StoreError::transient("busy", e.to_string())
            }
            ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => {
                StoreError::unavailable("io", e.to_string())
            }
            _ => StoreError::permanent("sqlite", e.to_string()),
        },
        _ => StoreError::permanent("sqlite", e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with tables for `config`'s collections,
    /// and forgets ledger entries older than the dedupe window.
    pub fn open(path: &Path, config: &Config) -> Result<Self, StoreError> {
        let busy = Duration::from_millis(config.embedded.busy_timeout_ms);
        let writer = connect(path, busy).map_err(classify)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS requests (
                    request_id TEXT PRIMARY KEY, topic TEXT NOT NULL, partition INTEGER NOT NULL,
                    \"offset\" INTEGER NOT NULL, expires_at INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS ledger (
                    request_id TEXT NOT NULL, chunk INTEGER NOT NULL, event TEXT NOT NULL,
                    expires_at INTEGER NOT NULL, PRIMARY KEY (request_id, chunk));
                 CREATE INDEX IF NOT EXISTS ledger_expiry ON ledger(expires_at);
                 CREATE INDEX IF NOT EXISTS requests_expiry ON requests(expires_at);",
            )
            .map_err(classify)?;
        for (name, c) in &config.collections {
            writer
                .execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;",
                    t = table(name)
                ))
                .map_err(classify)?;
            if let Some(field) = &c.parent_field {
                // Cascades find children by the parent's key: index that JSON field.
                writer
                    .execute_batch(&format!(
                        "CREATE INDEX IF NOT EXISTS {idx} ON {t} (json_extract(doc, '$.\"{field}\"'));",
                        idx = table(&format!("{name}_by_{field}")),
                        t = table(name),
                    ))
                    .map_err(classify)?;
            }
        }
        let now = unix_now();
        writer
            .execute("DELETE FROM ledger WHERE expires_at < ?1", [now])
            .and_then(|_| writer.execute("DELETE FROM requests WHERE expires_at < ?1", [now]))
            .map_err(classify)?;
        let readers = (0..config.execute.lookup_concurrency.clamp(1, 4))
            .map(|_| connect(path, busy).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        let sql = config
            .collections
            .iter()
            .map(|(name, c)| (name.clone(), TableSql::new(name, c.parent_field.as_deref())))
            .collect();
        Ok(SqliteStore {
            path: path.to_path_buf(),
            sql: Arc::new(sql),
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer connection, for other state kept in the same database (the embedded
    /// checkpoint): sharing it avoids SQLite lock contention between two writers.
    pub fn writer(&self) -> Arc<Mutex<Connection>> {
        self.writer.clone()
    }

    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer
                .lock()
                .map_err(|_| StoreError::permanent("poisoned", "writer lock poisoned"))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::permanent("join", e.to_string()))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn health(&self) -> Result<(), StoreError> {
        // A write probe: reads keep working while another process holds the write lock, but
        // chunks cannot commit, and readiness is about being able to commit.
        self.with_writer(|c| {
            c.execute_batch("BEGIN IMMEDIATE").map_err(classify)?;
            c.execute_batch("ROLLBACK").map_err(classify)
        })
        .await
    }

    async fn claim(
        &self,
        request_id: &str,
        source: &SourceRef,
        expires_at: i64,
    ) -> Result<Claim, StoreError> {
        let (id, src) = (request_id.to_string(), source.clone());
        self.with_writer(move |c| {
            let now = unix_now();
            // A claim older than the dedupe window is replaced, as if it had been purged.
            c.execute(
                "INSERT INTO requests (request_id, topic, partition, \"offset\", expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (request_id) DO UPDATE SET topic = excluded.topic,
                   partition = excluded.partition, \"offset\" = excluded.\"offset\",
                   expires_at = excluded.expires_at
                 WHERE requests.expires_at < ?6",
                params![id, src.topic, src.partition, src.offset, expires_at, now],
            )
            .map_err(classify)?;
            let owner = c
                .query_row(
                    "SELECT topic, partition, \"offset\" FROM requests WHERE request_id = ?1",
                    [&id],
                    |r| {
                        Ok(SourceRef {
                            topic: r.get(0)?,
                            partition: r.get(1)?,
                            offset: r.get(2)?,
                        })
                    },
                )
                .map_err(classify)?;
            Ok(if owner == src {
                Claim::Owned
            } else {
                Claim::DuplicateOf(owner)
            })
        })
        .await
    }

    async fn write_chunk(&self, chunk: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError> {
        let sql = self.sql.clone();
        self.with_writer(move |c| {
            c.execute_batch("BEGIN IMMEDIATE").map_err(classify)?;
            let result = write_in_transaction(c, &sql, &chunk);
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            match (result, c.execute_batch(end).map_err(classify)) {
                (Ok(commit), Ok(())) => Ok(commit),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => {
                    let _ = c.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })
        .await
    }

    async fn lookup(
        &self,
        target: &Target,
        keys: &[Key],
    ) -> Result<Vec<Option<Value>>, StoreError> {
        let readers = self.readers.clone();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        let sql = format!(
            "SELECT doc FROM {} WHERE key = ?1",
            table(&target.collection)
        );
        let keys: Vec<String> = keys.iter().map(key_text).collect();
        tokio::task::spawn_blocking(move || {
            let conn = readers[i]
                .lock()
                .map_err(|_| StoreError::permanent("poisoned", "reader lock poisoned"))?;
            let mut stmt = conn.prepare_cached(&sql).map_err(classify)?;
            keys.iter()
                .map(|k| {
                    let doc: Option<String> = stmt
                        .query_row([k], |r| r.get(0))
                        .optional()
                        .map_err(classify)?;
                    doc.map(|d| {
                        serde_json::from_str(&d)
                            .map_err(|e| StoreError::permanent("corrupt", e.to_string()))
                    })
                    .transpose()
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::permanent("join", e.to_string()))?
    }
}

/// The body of a chunk transaction: ledger look-up, item writes, ledger entry.
fn write_in_transaction(
    c: &mut Connection,
    sql: &HashMap<String, TableSql>,
    chunk: &WriteChunk,
) -> Result<ChunkCommit, StoreError> {
    let id = &chunk.request.request_id;
    let stored: Option<String> = c
        .prepare_cached("SELECT event FROM ledger WHERE request_id = ?1 AND chunk = ?2")
        .and_then(|mut s| {
            s.query_row(params![id, chunk.index as i64], |r| r.get(0))
                .optional()
        })
        .map_err(classify)?;
    if let Some(event) = stored {
        let event: ProgressEvent = serde_json::from_str(&event)
            .map_err(|e| StoreError::permanent("corrupt", e.to_string()))?;
        return Ok(ChunkCommit {
            event,
            replayed: true,
        });
    }
    c.execute_batch("SAVEPOINT items").map_err(classify)?;
    let applied = {
        let mut w = writer::SqlWriter { conn: c, sql };
        futures::executor::block_on(apply_items(chunk, &mut w))?
    };
    if applied.rollback {
        c.execute_batch("ROLLBACK TO items").map_err(classify)?;
    }
    c.execute_batch("RELEASE items").map_err(classify)?;
    let text = serde_json::to_string(&applied.event)
        .map_err(|e| StoreError::permanent("encode", e.to_string()))?;
    c.prepare_cached(
        "INSERT INTO ledger (request_id, chunk, event, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![id, chunk.index as i64, text, chunk.expires_at]))
    .map_err(classify)?;
    Ok(ChunkCommit {
        event: applied.event,
        replayed: false,
    })
}
