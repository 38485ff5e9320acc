//! The SQLite store: one database file holds the documents (a table per collection), the
//! request ledger (`requests`: owner, first-claim time and chunk plan of each request_id), the
//! chunk ledger (`chunk_ledger`, keyed by request_id, claim generation and chunk) and, for the
//! embedded sink, the input/output checkpoints.
//!
//! One writer connection executes chunks (SQLite has one writer), group-committed: writes that
//! arrive while it is busy share its next transaction, each in a savepoint ([`group`]); WAL
//! checkpoints run beside it on a thread of their own ([`checkpointer`]); lookups use a small
//! pool of reader connections, which WAL mode lets run concurrently with the writer. All
//! SQLite calls run on tokio's blocking pool. The status API reads the file on read-only
//! connections of its own ([`status`], [`SqliteStatus`]).

mod checkpointer;
mod claims;
mod group;
mod migrate;
mod status;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use sluice_config::Config;
use sluice_pipeline::contract::ProgressEvent;
use sluice_pipeline::dedupe::unix_now;
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{
    apply_items_with, ApplyError, ChunkCommit, Claim, ClaimInput, Finished, Found, Target,
    WriteChunk, WriteLimit, NEVER,
};
use sluice_pipeline::{SourceRef, Store, StoreError};

pub use status::SqliteStatus;
pub use writer::{json_path, key_text, quote_ident, table, TableSql};

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    sql: Arc<HashMap<String, TableSql>>,
    writer: Arc<Mutex<Connection>>,
    /// Chunks, settlements and claims: group-committed on `writer`.
    group: group::Group,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// Claims made, to purge expired rows every [`PURGE_EVERY`] of them.
    claims: AtomicUsize,
    /// Where the next [`claims::sweep`] of the ledger goes on from (a rowid; only the writer
    /// thread uses it). A sweep rolled back with its transaction is not repeated before the
    /// next pass over the ledger.
    swept: Arc<AtomicI64>,
}

/// Claims between two purges of expired ledger rows and claims (and the batch size).
const PURGE_EVERY: usize = 1000;

/// Opens a connection with the settings every sluice connection uses; `busy` is how long a
/// statement waits for another process's lock.
pub fn connect(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy)?;
    // WAL: readers do not block the writer; NORMAL sync is durable against process crashes
    // (what kill -9 tests), the WAL is synced at checkpoints.
    wal_mode(&conn, busy)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Every statement of the write path stays compiled: per collection its insert, update,
    // delete and two selects, plus the ledger's, the claims' and the savepoints' (rusqlite's
    // default of 16 would evict some of them with a few collections and recompile them).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Puts the database in WAL mode. Changing a new file's journal mode needs its exclusive
/// lock, and SQLite answers "database is locked" at once, without the busy handler, when
/// another connection holds a lock meanwhile: instances sharing a new state file and starting
/// together (or a store and its checkpoint thread) would then refuse to start. So this
/// retries for up to `busy`.
fn wal_mode(conn: &Connection, busy: Duration) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + busy;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Compiled statements one connection keeps.
const STATEMENT_CACHE: usize = 128;

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
    /// and forgets the claims past their dedupe window, with their ledger entries.
    pub fn open(path: &Path, config: &Config) -> Result<Self, StoreError> {
        let busy = Duration::from_millis(config.embedded.busy_timeout_ms);
        let writer = connect(path, busy).map_err(classify)?;
        migrate::migrate(&writer).map_err(classify)?;
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
                        "CREATE INDEX IF NOT EXISTS {idx} ON {t} (json_extract(doc, {path}));",
                        idx = table(&format!("{name}_by_{field}")),
                        t = table(name),
                        path = json_path(field),
                    ))
                    .map_err(classify)?;
            }
        }
        claims::purge_all(&writer)?;
        let readers = (0..config.execute.lookup_concurrency.clamp(1, 4))
            .map(|_| connect(path, busy).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        let sql = config
            .collections
            .iter()
            .map(|(name, c)| (name.clone(), TableSql::new(name, c.parent_field.as_deref())))
            .collect();
        let checkpoints = checkpointer::Checkpointer::start(path, busy, &writer)?;
        let writer = Arc::new(Mutex::new(writer));
        Ok(SqliteStore {
            path: path.to_path_buf(),
            sql: Arc::new(sql),
            group: group::Group::new(writer.clone(), Some(checkpoints))?,
            writer,
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            claims: AtomicUsize::new(1),
            swept: Arc::new(AtomicI64::new(0)),
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

    /// One transaction runs at a time whatever the setting, and the chunk writes waiting
    /// meanwhile share the next commit: the limit is `write_concurrency` chunks of the default
    /// size (500 items) — as many big chunks as configured, many more small ones.
    fn write_limit(&self, configured: usize) -> WriteLimit {
        WriteLimit::Items(configured.saturating_mul(500).max(group::MAX_GROUP_ITEMS))
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
        plan: &[Range<usize>],
    ) -> Result<Claim, StoreError> {
        let input = ClaimInput {
            request_id,
            source,
            plan,
            about: Default::default(),
        };
        let mut claims = self.claim_many(&[input]).await?;
        claims
            .pop()
            .ok_or_else(|| StoreError::permanent("claim", "no claim answered"))
    }

    async fn claim_many(&self, claims: &[ClaimInput<'_>]) -> Result<Vec<Claim>, StoreError> {
        let claims = claims::OwnedClaim::all(claims)?;
        let made = self.claims.fetch_add(claims.len(), Ordering::Relaxed);
        let purge = made / PURGE_EVERY != (made + claims.len()) / PURGE_EVERY;
        let items = claims.len();
        let swept = self.swept.clone();
        self.group
            .run(items, move |c| {
                if purge {
                    claims::purge(c)?;
                    let from = swept.load(Ordering::Relaxed);
                    swept.store(claims::sweep(c, from)?, Ordering::Relaxed);
                }
                claims
                    .iter()
                    .map(|claim| claims::claim_in(c, claim))
                    .collect()
            })
            .await
    }

    async fn release(&self, finished: &[Finished], window_secs: i64) -> Result<(), StoreError> {
        if finished.is_empty() {
            return Ok(());
        }
        let finished = finished.to_vec();
        let expires_at = unix_now().saturating_add(window_secs);
        self.group
            .run(finished.len(), move |c| {
                claims::release_in(c, &finished, expires_at)
            })
            .await
    }

    async fn write_chunk(&self, chunk: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError> {
        let sql = self.sql.clone();
        self.group
            .run(chunk.range.len(), move |c| {
                write_in_transaction(c, &sql, &chunk)
            })
            .await
    }

    async fn settle(
        &self,
        chunk: Arc<WriteChunk>,
        event: ProgressEvent,
    ) -> Result<ChunkCommit, StoreError> {
        self.group
            .run(1, move |c| {
                if let Some(event) = stored_event(c, &chunk)? {
                    return Ok(ChunkCommit {
                        event,
                        replayed: true,
                        json: None,
                    });
                }
                let json = insert_event(c, &chunk, &event)?;
                Ok(ChunkCommit {
                    event,
                    replayed: false,
                    json: Some(json),
                })
            })
            .await
    }

    async fn lookup(
        &self,
        target: &Target,
        keys: &[Key],
        max_bytes: usize,
    ) -> Result<Vec<Found>, StoreError> {
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
            let mut used = 0usize;
            keys.iter()
                .map(|k| {
                    let doc: Option<String> = stmt
                        .query_row([k], |r| r.get(0))
                        .optional()
                        .map_err(classify)?;
                    let Some(doc) = doc else {
                        return Ok(Found::Missing);
                    };
                    if used + doc.len() > max_bytes {
                        return Ok(Found::TooLarge(doc.len()));
                    }
                    used += doc.len();
                    serde_json::from_str(&doc)
                        .map(Found::Doc)
                        .map_err(|e| StoreError::permanent("corrupt", e.to_string()))
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::permanent("join", e.to_string()))?
    }
}

/// The chunk's ledger entry, if any.
fn stored_event(c: &Connection, chunk: &WriteChunk) -> Result<Option<ProgressEvent>, StoreError> {
    let stored: Option<String> = c
        .prepare_cached(
            "SELECT event FROM chunk_ledger WHERE request_id = ?1 AND generation = ?2 AND chunk = ?3",
        )
        .and_then(|mut s| {
            s.query_row(
                params![chunk.request.request_id, chunk.generation, chunk.index as i64],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(classify)?;
    stored
        .map(|e| {
            serde_json::from_str(&e).map_err(|e| StoreError::permanent("corrupt", e.to_string()))
        })
        .transpose()
}

/// Writes a chunk's ledger entry; returns the event's text as stored.
fn insert_event(
    c: &Connection,
    chunk: &WriteChunk,
    event: &ProgressEvent,
) -> Result<String, StoreError> {
    let text =
        serde_json::to_string(event).map_err(|e| StoreError::permanent("encode", e.to_string()))?;
    c.prepare_cached(
        "INSERT INTO chunk_ledger (request_id, generation, chunk, event, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            chunk.request.request_id,
            chunk.generation,
            chunk.index as i64,
            &text,
            NEVER
        ])
    })
    .map_err(classify)?;
    Ok(text)
}

/// The body of a chunk transaction: ledger look-up, item writes, ledger entry. An item the
/// database refuses on its own is rolled back and the chunk applied again with it failed
/// (at most once per item).
fn write_in_transaction(
    c: &mut Connection,
    sql: &HashMap<String, TableSql>,
    chunk: &WriteChunk,
) -> Result<ChunkCommit, StoreError> {
    if let Some(event) = stored_event(c, chunk)? {
        return Ok(ChunkCommit {
            event,
            replayed: true,
            json: None,
        });
    }
    let mut refused = BTreeMap::new();
    // The write runs inside its own savepoint ([`group`]): undoing it there undoes the items
    // written so far, and the chunk goes on from the start.
    let applied = loop {
        let result = {
            let mut w = writer::SqlWriter::new(c, sql);
            futures::executor::block_on(apply_items_with(chunk, &mut w, false, &refused))
        };
        match result {
            Ok(applied) => {
                if applied.rollback {
                    group::undo(c).map_err(classify)?;
                }
                break applied;
            }
            Err(e) => {
                group::undo(c).map_err(classify)?;
                match e {
                    ApplyError::Item(index, e) if !refused.contains_key(&index) => {
                        tracing::warn!(item = index, error = %e, "the database refused one item; it fails alone");
                        refused.insert(index, e);
                    }
                    other => return Err(other.into_store_error()),
                }
            }
        }
    };
    let json = insert_event(c, chunk, &applied.event)?;
    Ok(ChunkCommit {
        event: applied.event,
        replayed: false,
        json: Some(json),
    })
}
