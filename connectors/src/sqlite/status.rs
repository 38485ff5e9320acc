//! The status API's reads of the SQLite store ([`StatusReader`]): claims from `requests`, chunk
//! events from `chunk_ledger`, on read-only connections of their own — so `sluice status` can
//! read the state file while a `sluice run` writes it (WAL: readers never block the writer,
//! nor it them), and the service's status API never waits on its own writer.
//!
//! Columns a claim gained later (`terminal`, `collection`, `op`, `deadline_ms`) are read when
//! the file has them and taken as absent when it does not.
//!
//! The in-flight list reads the partial index `requests_in_flight (claimed_at, request_id)
//! WHERE terminal IS NULL`, which [`SqliteStatus::ensure_index`] creates: it holds only the
//! unfinished claims, so it costs each claim one index entry (its time, its id and a rowid,
//! some 40–60 bytes) from its claim to its terminal event, and a page is a range scan of
//! `limit` entries however many finished claims the file holds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use sluice_pipeline::status::{ClaimRecord, Cursor, StatusReader};
use sluice_pipeline::{SourceRef, StoreError};

use super::classify;

/// Read-only connections kept for status reads.
const CONNECTIONS: usize = 2;

/// The optional claim columns, and what stands for each when the file lacks it.
const OPTIONAL: [(&str, &str); 4] = [
    ("terminal", "NULL"),
    ("collection", "NULL"),
    ("op", "NULL"),
    ("deadline_ms", "NULL"),
];

/// Status reads of one SQLite state file.
pub struct SqliteStatus {
    path: PathBuf,
    conns: Arc<Vec<Mutex<Connection>>>,
    /// `SELECT … FROM requests` with every column [`claim_of`] reads, in its order.
    select: Arc<String>,
    /// Whether the file has the `terminal` column (else nothing is ever finished).
    has_terminal: bool,
}

impl SqliteStatus {
    /// Opens `path` read-only (it must exist: a missing file is an error, not an empty store).
    pub fn open(path: &Path, busy: Duration) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::permanent(
                "no_state",
                format!("no SQLite state file at {}", path.display()),
            ));
        }
        let conns = (0..CONNECTIONS)
            .map(|_| {
                let c = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(busy)?;
                Ok(Mutex::new(c))
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(classify)?;
        let mut columns = Vec::new();
        let mut has_terminal = false;
        {
            let c = conns[0]
                .lock()
                .map_err(|_| StoreError::permanent("poisoned", "status connection"))?;
            for (name, absent) in OPTIONAL {
                let has = has_column(&c, name).map_err(classify)?;
                has_terminal |= has && name == "terminal";
                columns.push(if has { name } else { absent });
            }
        }
        let select = format!(
            "SELECT request_id, topic, partition, \"offset\", claimed_at, plan, expires_at, {} \
             FROM requests",
            columns.join(", ")
        );
        Ok(SqliteStatus {
            path: path.to_path_buf(),
            conns: Arc::new(conns),
            select: Arc::new(select),
            has_terminal,
        })
    }

    /// Creates the in-flight index (see the module) on a write connection of its own; a file
    /// without the `terminal` column gets none.
    pub fn ensure_index(path: &Path, busy: Duration) -> Result<(), StoreError> {
        let c = Connection::open(path).map_err(classify)?;
        c.busy_timeout(busy).map_err(classify)?;
        if has_column(&c, "terminal").map_err(classify)? {
            c.execute_batch(
                "CREATE INDEX IF NOT EXISTS requests_in_flight ON requests(claimed_at, request_id)
                 WHERE terminal IS NULL",
            )
            .map_err(classify)?;
        }
        Ok(())
    }

    /// The state file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on one of the connections, on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conns, select) = (self.conns.clone(), self.select.clone());
        tokio::task::spawn_blocking(move || {
            // The first free connection, else wait for the first.
            let guard = conns
                .iter()
                .find_map(|c| c.try_lock().ok())
                .map_or_else(|| conns[0].lock(), Ok)
                .map_err(|_| StoreError::permanent("poisoned", "status connection"))?;
            f(&guard, &select).map_err(classify)
        })
        .await
        .map_err(|e| StoreError::permanent("join", e.to_string()))?
    }
}

fn has_column(c: &Connection, column: &str) -> rusqlite::Result<bool> {
    c.prepare("SELECT 1 FROM pragma_table_info('requests') WHERE name = ?1")?
        .exists([column])
}

/// A claim row of [`SqliteStatus::select`]'s shape.
fn claim_of(r: &Row<'_>) -> rusqlite::Result<ClaimRecord> {
    let plan: Option<String> = r.get(5)?;
    let expires_at: i64 = r.get(6)?;
    let claimed_at: i64 = r.get(4)?;
    Ok(ClaimRecord {
        request_id: r.get(0)?,
        source: SourceRef {
            topic: r.get(1)?,
            partition: r.get(2)?,
            offset: r.get(3)?,
        },
        claimed_at_ms: claimed_at,
        plan: plan
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default(),
        // An unfinished claim never expires (stored as i64::MAX).
        expires_at: (expires_at != i64::MAX).then_some(expires_at),
        terminal: r.get(7)?,
        collection: r.get(8)?,
        op: r.get(9)?,
        deadline_at_ms: r
            .get::<_, Option<i64>>(10)?
            .map(|ms| claimed_at.saturating_add(ms)),
    })
}

#[async_trait]
impl StatusReader for SqliteStatus {
    async fn claim(&self, request_id: &str) -> Result<Option<ClaimRecord>, StoreError> {
        let id = request_id.to_string();
        self.read(move |c, select| {
            c.prepare_cached(&format!("{select} WHERE request_id = ?1"))?
                .query_row([id], claim_of)
                .optional()
        })
        .await
    }

    async fn ledger(
        &self,
        request_id: &str,
        generation: i64,
        from: usize,
        to: usize,
    ) -> Result<Vec<(usize, String)>, StoreError> {
        let id = request_id.to_string();
        self.read(move |c, _| {
            let mut s = c.prepare_cached(
                "SELECT chunk, event FROM chunk_ledger
                 WHERE request_id = ?1 AND generation = ?2 AND chunk >= ?3 AND chunk < ?4
                 ORDER BY chunk",
            )?;
            let rows = s.query_map(params![id, generation, from as i64, to as i64], |r| {
                Ok((r.get::<_, i64>(0)? as usize, r.get(1)?))
            })?;
            rows.collect()
        })
        .await
    }

    async fn chunks_done(&self, request_id: &str, generation: i64) -> Result<usize, StoreError> {
        let id = request_id.to_string();
        self.read(move |c, _| {
            c.prepare_cached(
                "SELECT count(*) FROM chunk_ledger WHERE request_id = ?1 AND generation = ?2",
            )?
            .query_row(params![id, generation], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
        })
        .await
    }

    async fn in_flight(
        &self,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<ClaimRecord>, StoreError> {
        let (at, id) = after.map_or((i64::MIN, String::new()), |c| {
            (c.claimed_at_ms, c.request_id.clone())
        });
        let unfinished = if self.has_terminal {
            "terminal IS NULL"
        } else {
            "1"
        };
        self.read(move |c, select| {
            let mut s = c.prepare_cached(&format!(
                "{select} WHERE {unfinished} AND (claimed_at, request_id) > (?1, ?2)
                 ORDER BY claimed_at, request_id LIMIT ?3"
            ))?;
            let rows = s.query_map(params![at, id, limit as i64], claim_of)?;
            rows.collect()
        })
        .await
    }
}
