//! Group commit on the one SQLite writer: writes that arrive while the writer is busy share
//! the next transaction, each inside its own savepoint.
//!
//! A caller queues its write for the writer thread, which takes the first write waiting and
//! every write queued behind it (up to [`MAX_GROUP`]) between one `BEGIN IMMEDIATE` and one
//! `COMMIT`, and answers each caller only once that transaction has ended. So a caller never
//! waits for writes that arrive after it, small requests' claims and chunks share commits
//! instead of paying one each, and each write is still atomic: a write
//! that fails is rolled back to its savepoint alone and its caller gets its error, while the
//! others commit. A failed `COMMIT` (or a failure that undid the whole transaction) fails every
//! write of the group, as if each had run alone; their callers retry as for any store error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use metrics::histogram;
use rusqlite::Connection;
use sluice_pipeline::metrics::WRITES_PER_TRANSACTION;
use sluice_pipeline::StoreError;
use tokio::sync::oneshot;

use super::checkpointer::Checkpointer;
use super::classify;

/// Writes one transaction holds at most: bounds how long one commit keeps later writes waiting.
pub const MAX_GROUP: usize = 64;

/// Items (documents written, claims) one transaction takes at most, unless a single write
/// brings more: a big transaction keeps the writes behind it waiting and grows SQLite's cache
/// and WAL (the raw-insert baseline commits every 500).
pub const MAX_GROUP_ITEMS: usize = 1000;

/// A queued write with its weight in items.
type Queued = (usize, Box<dyn Job>);

/// A queued write, type-erased.
trait Job: Send {
    /// Runs the write inside the open transaction; false if it failed (to be rolled back).
    fn run(&mut self, conn: &mut Connection) -> bool;
    /// Answers the caller once the transaction has ended (`ended`: how).
    fn finish(self: Box<Self>, ended: Result<(), StoreError>);
}

struct Typed<T, F> {
    write: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &mut Connection) -> bool {
        let Some(write) = self.write.take() else {
            return false;
        };
        // A panic (a bug) fails this write alone, not the writer thread: its caller's answer
        // is dropped, and the savepoint rolled back.
        match catch_unwind(AssertUnwindSafe(|| write(conn))) {
            Ok(result) => {
                let ok = result.is_ok();
                self.result = Some(result);
                ok
            }
            Err(_) => false,
        }
    }

    fn finish(self: Box<Self>, ended: Result<(), StoreError>) {
        let answer = match (self.result, ended) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(e),
            // It panicked: dropping the reply tells its caller.
            (None, Ok(())) => return,
        };
        // The caller may have gone (its task was aborted): nothing to answer.
        let _ = self.reply.send(answer);
    }
}

/// The writer connection's queue of writes, and the thread that commits them.
pub struct Group {
    queue: mpsc::Sender<Queued>,
    /// Writes sent and not yet answered.
    pending: Arc<AtomicUsize>,
    /// Transactions run so far (committed or not).
    #[cfg(test)]
    transactions: Arc<AtomicU64>,
}

impl Group {
    /// Group commit over `writer`, on a thread of its own (other users of the connection —
    /// the embedded checkpoint — lock it as before, between two transactions of the group);
    /// each commit wakes `checkpoints`, which the thread owns (and stops when it ends).
    pub fn new(
        writer: Arc<Mutex<Connection>>,
        checkpoints: Option<Checkpointer>,
    ) -> Result<Self, StoreError> {
        let (queue, jobs) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let transactions = Arc::new(AtomicU64::new(0));
        let (p, t) = (pending.clone(), transactions.clone());
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(&writer, &jobs, &p, &t, checkpoints.as_ref()))
            .map_err(|e| StoreError::permanent("thread", e.to_string()))?;
        Ok(Group {
            queue,
            pending,
            #[cfg(test)]
            transactions,
        })
    }

    /// Transactions the group has run so far: fewer than writes when writes were grouped.
    #[cfg(test)]
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Runs `write` (of `items` documents or claims) in a transaction shared with the writes
    /// queued beside it, and returns its result once that transaction has committed. `write` must
    /// not begin or end transactions; it may use savepoints of its own, and [`undo`] its
    /// changes so far.
    pub async fn run<T, F>(&self, items: usize, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Typed {
            write: Some(write),
            result: None,
            reply,
        };
        // Unbounded in type, bounded in fact: one write per caller waiting here, and callers
        // are bounded (execute.write_concurrency chunks, one claim batch, settlements).
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.queue.send((items, Box::new(job))).map_err(|_| {
            StoreError::permanent("writer_stopped", "the SQLite writer thread has stopped")
        })?;
        answer.await.map_err(|_| {
            StoreError::permanent("writer_panicked", "the write panicked in the SQLite writer")
        })?
    }
}

/// Until every [`Group`] handle is gone: waits for a write, then takes the writer and every
/// write queued meanwhile (up to [`MAX_GROUP`] writes and [`MAX_GROUP_ITEMS`] items) into one
/// transaction.
fn writer_loop(
    writer: &Mutex<Connection>,
    jobs: &mpsc::Receiver<Queued>,
    pending: &AtomicUsize,
    transactions: &AtomicU64,
    checkpoints: Option<&Checkpointer>,
) {
    let mut carried: Option<Queued> = None;
    while let Some((mut items, first)) = carried.take().or_else(|| jobs.recv().ok()) {
        let conn = writer.lock();
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let Ok((more, job)) = jobs.try_recv() else {
                break;
            };
            if items + more > MAX_GROUP_ITEMS {
                carried = Some((more, job));
                break;
            }
            items += more;
            group.push(job);
        }
        let n = group.len();
        match conn {
            Ok(mut conn) => {
                histogram!(WRITES_PER_TRANSACTION).record(n as f64);
                let ended = run_all(&mut conn, group.iter_mut());
                drop(conn);
                if let (Ok(()), Some(c)) = (&ended, checkpoints) {
                    c.poke();
                }
                transactions.fetch_add(1, Ordering::Relaxed);
                group.into_iter().for_each(|j| j.finish(ended.clone()));
            }
            Err(_) => {
                let e = StoreError::permanent("poisoned", "writer lock poisoned");
                group.into_iter().for_each(|j| j.finish(Err(e.clone())));
            }
        }
        pending.fetch_sub(n, Ordering::Relaxed);
    }
}

/// `BEGIN IMMEDIATE`, each job in a savepoint, `COMMIT`: how the transaction ended.
fn run_all<'a>(
    conn: &mut Connection,
    jobs: impl Iterator<Item = &'a mut Box<dyn Job>>,
) -> Result<(), StoreError> {
    exec(conn, "BEGIN IMMEDIATE").map_err(classify)?;
    for job in jobs {
        let step = exec(conn, "SAVEPOINT job").and_then(|()| {
            if !job.run(conn) {
                exec(conn, "ROLLBACK TO job")?;
            }
            exec(conn, "RELEASE job")
        });
        if let Err(e) = step {
            // The transaction is gone or unusable (SQLite undoes it itself on some errors):
            // none of the group's writes committed, and each may well succeed alone.
            let _ = conn.execute_batch("ROLLBACK");
            return Err(StoreError::transient(
                "group_rolled_back",
                format!("the shared transaction was rolled back: {e}"),
            ));
        }
    }
    exec(conn, "COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        classify(e)
    })
}

/// Undoes what the running write has changed so far: for use inside a write passed to
/// [`Group::run`], which then goes on in the same transaction (its savepoint stays open).
/// It rolls back to the write's own savepoint, so any savepoint the write opened inside it
/// is undone and closed too.
pub(super) fn undo(conn: &Connection) -> rusqlite::Result<()> {
    exec(conn, "ROLLBACK TO job")
}

/// Runs one statement through the statement cache (parsed once per connection).
pub(super) fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    type Write<T> = Box<dyn FnOnce(&mut Connection) -> Result<T, StoreError> + Send>;

    /// A group over a fresh database with one table `t (k PRIMARY KEY)`.
    fn group() -> (tempfile::TempDir, Arc<Mutex<Connection>>, Arc<Group>) {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::connect(&dir.path().join("g.db"), Duration::from_secs(5)).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        let writer = Arc::new(Mutex::new(conn));
        let group = Arc::new(Group::new(writer.clone(), None).unwrap());
        (dir, writer, group)
    }

    fn insert(k: i64) -> impl FnOnce(&mut Connection) -> Result<i64, StoreError> + Send {
        move |c| {
            c.execute("INSERT INTO t (k) VALUES (?1)", [k])
                .map_err(classify)?;
            Ok(k)
        }
    }

    fn keys(writer: &Mutex<Connection>) -> Vec<i64> {
        let c = writer.lock().unwrap();
        let mut s = c.prepare("SELECT k FROM t ORDER BY k").unwrap();
        let rows = s.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// Queues `writes` while the writer is held (as by a running transaction), then lets go:
    /// they all wait, so one combine takes them together.
    // Holding the writer across the waits is the point: it stands for a running transaction.
    #[allow(clippy::await_holding_lock)]
    async fn queued_together<T: Send + 'static>(
        writer: &Arc<Mutex<Connection>>,
        group: &Arc<Group>,
        items: usize,
        writes: Vec<Write<T>>,
    ) -> Vec<Result<T, StoreError>> {
        let held = writer.lock().unwrap();
        let mut tasks = Vec::new();
        for (i, w) in writes.into_iter().enumerate() {
            let g = group.clone();
            tasks.push(tokio::spawn(async move { g.run(items, w).await }));
            // One at a time, so they queue in this order.
            while group.pending.load(Ordering::Relaxed) <= i {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let in_transaction = !held.is_autocommit();
        drop(held);
        assert!(!in_transaction);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_waiting_together_share_one_commit_and_fail_alone() {
        let (_dir, writer, group) = group();
        let before = writer.lock().unwrap().total_changes();
        let mut writes: Vec<Write<i64>> = (1..=5).map(|k| Box::new(insert(k)) as _).collect();
        // Inserts a row and then fails: its row must not commit, the others' must.
        writes.push(Box::new(|c: &mut Connection| {
            insert(100)(c)?;
            Err(StoreError::permanent("test", "this write fails"))
        }));
        // Fails on its own: the key is taken by the first write of the group.
        writes.push(Box::new(insert(1)));
        writes.extend((6..=8).map(|k| Box::new(insert(k)) as _));
        let results = queued_together(&writer, &group, 1, writes).await;
        let ok: Vec<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(ok, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(results[5].as_ref().unwrap_err().code, "test");
        assert!(results[6].is_err(), "a duplicate key fails its own write");
        assert_eq!(keys(&writer), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            group.transactions(),
            1,
            "one transaction for the whole group"
        );
        // Nothing is left open: the connection is back in autocommit.
        let c = writer.lock().unwrap();
        assert!(c.is_autocommit());
        assert!(c.total_changes() > before);
    }

    /// A write that undoes its own changes goes on from its start, in the same transaction;
    /// the writes before it in the group keep theirs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_undoes_its_own_changes_alone() {
        let (_dir, writer, group) = group();
        let writes: Vec<Write<i64>> = vec![
            Box::new(insert(1)),
            Box::new(|c: &mut Connection| {
                insert(2)(c)?;
                insert(3)(c)?;
                undo(c).map_err(classify)?;
                // Undone, so its key is free again.
                insert(2)(c)?;
                insert(4)(c)
            }),
            Box::new(insert(5)),
        ];
        let results = queued_together(&writer, &group, 1, writes).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(keys(&writer), vec![1, 2, 4, 5]);
        assert_eq!(group.transactions(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_undoes_the_transaction_fails_the_group_and_commits_nothing() {
        let (_dir, writer, group) = group();
        let writes: Vec<Write<i64>> = vec![
            Box::new(insert(1)),
            // As SQLite does on some I/O errors: the whole transaction is gone.
            Box::new(|c: &mut Connection| {
                c.execute_batch("ROLLBACK").map_err(classify)?;
                Ok(2)
            }),
            Box::new(insert(3)),
        ];
        let results = queued_together(&writer, &group, 1, writes).await;
        for r in &results {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.code, "group_rolled_back");
            assert_eq!(e.kind, sluice_pipeline::codes::StoreErrorKind::Transient);
        }
        assert_eq!(keys(&writer), Vec::<i64>::new());
        assert_eq!(group.transactions(), 1);
        assert!(writer.lock().unwrap().is_autocommit());
        // The writer goes on.
        assert_eq!(group.run(1, insert(4)).await.unwrap(), 4);
        assert_eq!(keys(&writer), vec![4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_bounded() {
        let (_dir, writer, group) = group();
        let n = MAX_GROUP as i64 * 2 + 3;
        let writes: Vec<Write<i64>> = (0..n).map(|k| Box::new(insert(k)) as _).collect();
        let results = queued_together(&writer, &group, 1, writes).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(keys(&writer), (0..n).collect::<Vec<_>>());
        assert_eq!(
            group.transactions(),
            3,
            "at most MAX_GROUP writes a transaction"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_bounded_in_items() {
        let (_dir, writer, group) = group();
        let writes: Vec<Write<i64>> = (0..5).map(|k| Box::new(insert(k)) as _).collect();
        // 400 items each: two fit in MAX_GROUP_ITEMS (1000), a third does not.
        let results = queued_together(&writer, &group, 400, writes).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(keys(&writer), (0..5).collect::<Vec<_>>());
        assert_eq!(group.transactions(), 3, "2 + 2 + 1 writes");
        // A write bigger than the bound still runs, alone.
        assert_eq!(group.run(5000, insert(9)).await.unwrap(), 9);
    }
}
