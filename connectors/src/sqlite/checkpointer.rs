//! WAL checkpoints on a thread of their own.
//!
//! SQLite checkpoints on the connection that commits, once the WAL passes
//! `wal_autocheckpoint` pages (by default 1,000; the writer's is [`WRITER_PAGES`]): here that
//! is the one writer thread, so every write queued behind a checkpoint waited for the copy of the WAL into the database and its fsync —
//! 14 % of the writer's samples on 10000 × 10. Instead, after its commits the group writer wakes
//! this thread, which runs a passive checkpoint on a connection of its own, at most once per
//! [`EVERY`]: WAL mode lets a checkpoint copy the frames already committed while the writer
//! goes on. Durability is unchanged: a checkpoint only moves committed pages, and with
//! `synchronous = NORMAL` it syncs the WAL before it does.
//!
//! The writer keeps its own automatic checkpoint ([`WRITER_PAGES`]): it is what lets a busy
//! writer start the WAL over, since SQLite does that only when a write transaction begins
//! after a checkpoint has copied every frame, and a busy group writer begins its next
//! transaction before this thread is done. That checkpoint is cheap in CPU, as this thread has
//! copied most of the WAL already, but not in time: it syncs the WAL and then the database
//! (`synchronous = NORMAL`), and the writer waits for the disk meanwhile. On 1000 × 1000 at
//! SQLite's 1,000 pages the writer spent ~15 % of the run blocked in those syncs (`perf sched`:
//! `unixSync` under `walCheckpoint`). So the writer checkpoints every 4,000 pages, and this
//! thread runs every [`EVERY`] so that little is left unsynced when it does. The WAL stays
//! near 16 MiB: more by the commits made while this thread's checkpoint holds the checkpoint
//! lock (the writer's own is then skipped, and tried again after its next commit), and by
//! what readers holding an old snapshot keep. Writes outside the group (the embedded sink's
//! checkpoint row) do not wake the thread; the next group commit does.
//!
//! Outcomes are counted (`sluice_sqlite_checkpoints_total{outcome}`) and failures logged.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::counter;
use rusqlite::Connection;
use sluice_pipeline::metrics::SQLITE_CHECKPOINTS;
use sluice_pipeline::StoreError;

use super::{classify, connect};

/// Shortest time between two checkpoints: commits in between share the next one. At 20 ms
/// the writer's own checkpoints found more to sync (BENCHMARKS.md, embedded 1000 × 1000).
pub const EVERY: Duration = Duration::from_millis(5);

/// `wal_autocheckpoint` of the writer connection (SQLite's default is 1,000): how large the
/// WAL may grow, in pages, before the writer checkpoints and starts it over itself.
pub const WRITER_PAGES: i64 = 4000;

/// The checkpoint thread; it ends (after the checkpoint under way) when this is dropped.
pub struct Checkpointer {
    wake: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Checkpoints run so far (read by the tests; metrics count them for operators).
    #[cfg_attr(not(test), allow(dead_code))]
    runs: Arc<AtomicU64>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (a WAL-mode database whose writer is
    /// `writer`).
    pub fn start(path: &Path, busy: Duration, writer: &Connection) -> Result<Self, StoreError> {
        writer
            .pragma_update(None, "wal_autocheckpoint", WRITER_PAGES)
            .map_err(classify)?;
        let conn = connect(path, busy).map_err(classify)?;
        // One wake-up waiting at most: commits while a checkpoint runs share the next one.
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    checkpoint(&conn);
                    counted.fetch_add(1, Ordering::Release);
                    std::thread::sleep(EVERY);
                }
            })
            .map_err(|e| StoreError::permanent("thread", e.to_string()))?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
            runs,
        })
    }

    /// After a commit: a checkpoint soon (the next one, if one is due already).
    pub fn poke(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }

    /// Checkpoints run so far (shared: it goes on counting after this is moved).
    #[cfg(test)]
    pub fn runs(&self) -> Arc<AtomicU64> {
        self.runs.clone()
    }
}

/// One passive checkpoint: copies what no reader still needs, waits for nobody.
fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    let outcome = match result {
        Ok((busy, _, _)) if busy != 0 => "busy",
        Ok((_, log, copied)) if copied >= log => "complete",
        Ok(_) => "partial",
        Err(e) => {
            if sluice_pipeline::logs::allow() {
                tracing::warn!(
                    error = %e,
                    "a WAL checkpoint failed; the next one retries (the writer's own checkpoint \
                     bounds the WAL meanwhile)"
                );
            }
            "error"
        }
    };
    counter!(SQLITE_CHECKPOINTS, "outcome" => outcome).increment(1);
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

    /// Waits (up to 10 s) until the thread has run more than `seen` checkpoints.
    fn after(runs: &AtomicU64, seen: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = runs.load(Ordering::Acquire);
            if n > seen {
                return n;
            }
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A database with a table `t`, its writer and the checkpoint thread.
    struct Db {
        // Dropped in this order: the thread ends before its files go.
        ck: Checkpointer,
        writer: Connection,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn db() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let busy = Duration::from_secs(5);
        let writer = connect(&path, busy).unwrap();
        writer
            .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        let ck = Checkpointer::start(&path, busy, &writer).unwrap();
        Db {
            ck,
            writer,
            path,
            _dir: dir,
        }
    }

    impl Db {
        /// Commits transaction `t`: 1,024 rows of 1 KiB. Returns the WAL's size after it.
        fn commit_mib(&self, t: i64) -> u64 {
            let value = "x".repeat(1024);
            self.writer.execute_batch("BEGIN IMMEDIATE").unwrap();
            for i in 0..1024 {
                self.writer
                    .execute("INSERT INTO t VALUES (?1, ?2)", (t * 1024 + i, &value))
                    .unwrap();
            }
            self.writer.execute_batch("COMMIT").unwrap();
            wal_bytes(&self.path)
        }
    }

    /// A busy writer that never waits for the thread (as the group writer does not) keeps
    /// the WAL bounded by its own checkpoints: 64 transactions of 1,024 1 KiB rows (~1.4 MB
    /// of WAL each) leave a WAL of about [`WRITER_PAGES`] pages, not ~90 MB. The bound allows
    /// twice that, plus a few transactions: a writer's checkpoint is skipped while the
    /// thread's runs (slow disks), and tried again after the next commit.
    #[test]
    fn a_busy_writer_keeps_the_wal_bounded() {
        let db = db();
        let mut largest = 0;
        for t in 0..64 {
            largest = largest.max(db.commit_mib(t));
            db.ck.poke();
        }
        let page: i64 = db
            .writer
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let bound = (2 * WRITER_PAGES * page) as u64 + (4 << 20);
        assert!(
            largest < bound,
            "the WAL grew to {largest} bytes (bound {bound}): the writer did not start it over"
        );
    }

    /// 40 MiB committed in 1 MiB transactions on a writer that never checkpoints itself (its
    /// automatic checkpoint off, as a test-only setting): the thread alone keeps the WAL at
    /// about one transaction, each commit waiting for the checkpoint it woke.
    #[test]
    fn the_thread_checkpoints_what_the_writer_commits() {
        let db = db();
        db.writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .unwrap();
        let runs = db.ck.runs();
        let (mut largest, mut seen) = (0, 0);
        for t in 0..40 {
            largest = largest.max(db.commit_mib(t));
            db.ck.poke();
            seen = after(&runs, seen);
        }
        assert!(
            largest < 4 << 20,
            "the WAL grew to {largest} bytes: the checkpoints did not keep up"
        );
        let Db { writer, ck, .. } = db;
        drop(ck); // ends the thread (joined)
        let n: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 40 * 1024);
    }
}
