//! The state file's schema: created, or brought to the current shape, when the store opens.

use rusqlite::Connection;

/// Creates the tables, or brings an older database to the current shape: claims gain their
/// time and plan; the chunk ledger gains the claim generation in its key (rows from before
/// it belong to generation 0, the generation of claims made before it).
///
/// All in one write transaction: instances that share a state file and start together would
/// otherwise both find a column missing and both add it, and the second would refuse to
/// start ("duplicate column name"). The transaction waits for the other's (busy timeout).
pub(super) fn migrate(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    match migrate_in(c).and_then(|()| c.execute_batch("COMMIT")) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Whether `table` has `column` (names of this module's own, never input).
fn has_column(c: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    c.prepare(&format!(
        "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"
    ))?
    .exists([])
}

/// [`migrate`]'s steps, inside its transaction.
fn migrate_in(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS requests (
            request_id TEXT PRIMARY KEY, topic TEXT NOT NULL, partition INTEGER NOT NULL,
            \"offset\" INTEGER NOT NULL, expires_at INTEGER NOT NULL,
            claimed_at INTEGER NOT NULL DEFAULT 0, plan TEXT);
         CREATE TABLE IF NOT EXISTS chunk_ledger (
            request_id TEXT NOT NULL, generation INTEGER NOT NULL, chunk INTEGER NOT NULL,
            event TEXT NOT NULL, expires_at INTEGER NOT NULL,
            PRIMARY KEY (request_id, generation, chunk));
         CREATE INDEX IF NOT EXISTS chunk_ledger_expiry ON chunk_ledger(expires_at);
         CREATE INDEX IF NOT EXISTS requests_expiry ON requests(expires_at);",
    )?;
    let has = |table: &str, column: &str| has_column(c, table, column);
    if !has("requests", "op")? {
        // What the status API shows of a request (`status`); absent for older claims.
        c.execute_batch(
            "ALTER TABLE requests ADD COLUMN collection TEXT;
             ALTER TABLE requests ADD COLUMN op TEXT;
             ALTER TABLE requests ADD COLUMN deadline_ms INTEGER;",
        )?;
    }
    if !has("requests", "claimed_at")? {
        c.execute_batch(
            "ALTER TABLE requests ADD COLUMN claimed_at INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE requests ADD COLUMN plan TEXT;",
        )?;
    }
    if !has("requests", "terminal")? {
        // The terminal event of a released request (NULL while it is unfinished).
        c.execute_batch("ALTER TABLE requests ADD COLUMN terminal TEXT;")?;
    }
    let old_ledger: bool = c
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger'")?
        .exists([])?;
    if old_ledger {
        c.execute_batch(
            "INSERT OR IGNORE INTO chunk_ledger (request_id, generation, chunk, event, expires_at)
               SELECT request_id, 0, chunk, event, expires_at FROM ledger;
             DROP TABLE ledger;",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::*;
    use crate::sqlite::connect;

    /// Instances sharing a new state file start together: every one opens it (before, one
    /// could fail to set WAL mode, "database is locked", or be second to add a column,
    /// "duplicate column name"), and the shape is whole.
    #[test]
    fn instances_starting_together_all_migrate() {
        for round in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let n = 6;
            let start = Arc::new(Barrier::new(n));
            let opened: Vec<_> = (0..n)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let c = connect(&path, Duration::from_secs(10))
                            .map_err(|e| format!("connect: {e}"))?;
                        migrate(&c).map_err(|e| format!("migrate: {e}"))
                    })
                })
                .collect();
            for o in opened {
                let result = o.join().unwrap();
                assert!(result.is_ok(), "round {round}: {result:?}");
            }
            let c = connect(&path, Duration::from_secs(10)).unwrap();
            for column in [
                "collection",
                "op",
                "deadline_ms",
                "claimed_at",
                "plan",
                "terminal",
            ] {
                let has = has_column(&c, "requests", column).unwrap();
                assert!(has, "requests.{column} missing");
            }
        }
    }
}
