//! WAL checkpoints on a thread of their own.
//!
//! SQLite checkpoints on the connection that commits, once the WAL passes
//! `wal_autocheckpoint` pages (1,000 by default): here that is the one writer thread, so every
//! write queued behind a checkpoint waited for the copy of the WAL into the database and its
//! fsync — 14 % of the writer's samples on 10000 × 10. Instead, the writer's automatic
//! checkpoint is raised to a backstop ([`BACKSTOP_PAGES`]), and after its commits the writer
//! wakes this thread, which runs a passive checkpoint on a connection of its own, at most once
//! per [`EVERY`]. WAL mode lets a checkpoint run beside a writer: it copies the frames already
//! committed, and once it has copied them all the next write transaction starts the WAL from
//! its beginning again, as with SQLite's own checkpoints. Durability is unchanged (a checkpoint
//! only moves committed pages; `synchronous = NORMAL` syncs the WAL before it does).
//!
//! The backstop bounds the WAL if this thread falls behind (or a checkpoint fails): the writer
//! then checkpoints itself, as before.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use sluice_pipeline::StoreError;

use super::{classify, connect};

/// Shortest time between two checkpoints: commits in between share the next one.
pub const EVERY: Duration = Duration::from_millis(20);

/// `wal_autocheckpoint` of the writer connection: the WAL size (pages) at which the writer
/// checkpoints itself, when this thread has not kept it smaller.
pub const BACKSTOP_PAGES: i64 = 10_000;

/// The checkpoint thread; it ends (after the checkpoint under way) when this is dropped.
pub struct Checkpointer {
    wake: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (a WAL-mode database whose writer is
    /// `writer`, which gets the backstop).
    pub fn start(path: &Path, busy: Duration, writer: &Connection) -> Result<Self, StoreError> {
        writer
            .pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)
            .map_err(classify)?;
        let conn = connect(path, busy).map_err(classify)?;
        // One wake-up waiting at most: commits while a checkpoint runs share the next one.
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    checkpoint(&conn);
                    std::thread::sleep(EVERY);
                }
            })
            .map_err(|e| StoreError::permanent("thread", e.to_string()))?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// After a commit: a checkpoint soon (the next one, if one is due already).
    pub fn poke(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

/// One passive checkpoint: copies what no reader still needs, waits for nobody. A failure is
/// left to the next one (and to the writer's backstop).
fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    if let Err(e) = result {
        tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_bytes(path: &Path) -> u64 {
        std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    /// 40 MiB committed in 1 MiB transactions on a writer whose own checkpoint would wait for
    /// 10,000 pages (40 MiB): the thread keeps the WAL at a few transactions.
    #[test]
    fn the_thread_keeps_the_wal_small_while_the_writer_does_not_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let busy = Duration::from_secs(5);
        let writer = connect(&path, busy).unwrap();
        writer
            .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        let ck = Checkpointer::start(&path, busy, &writer).unwrap();
        let pages: i64 = writer
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(pages, BACKSTOP_PAGES);
        let value = "x".repeat(1024);
        let mut largest = 0;
        for t in 0..40 {
            writer.execute_batch("BEGIN IMMEDIATE").unwrap();
            for i in 0..1024 {
                writer
                    .execute("INSERT INTO t VALUES (?1, ?2)", (t * 1024 + i, &value))
                    .unwrap();
            }
            writer.execute_batch("COMMIT").unwrap();
            ck.poke();
            // The pace of a busy writer, with time for the thread to run.
            std::thread::sleep(EVERY * 2);
            largest = largest.max(wal_bytes(&path));
        }
        assert!(
            largest < 12 << 20,
            "the WAL grew to {largest} bytes: nothing checkpointed it"
        );
        drop(ck); // ends the thread (joined)
        let n: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 40 * 1024);
    }
}
