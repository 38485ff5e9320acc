//! The embedded checkpoint: one row per (input, output) in the state database.

use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use sluice_pipeline::contract::Counts;

/// Where a run resumes: the next line to read and how long the outputs were at that moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// 0-based number of the next input line.
    pub line: i64,
    /// Byte offset of the next input line.
    pub byte: u64,
    /// Length of the output file holding every event up to here.
    pub output_len: u64,
    /// Length of the dead-letter file up to here.
    pub dead_letter_len: u64,
    /// Progress events of the request at `line` already in the output (a partial position:
    /// the request was unfinished at the checkpoint; a re-read publishes only what follows).
    pub published: u64,
    /// The item counts of those `published` events (`None` in checkpoints from before they
    /// were kept).
    pub counts: Option<Counts>,
}

/// The checkpoint row of one (input, output) pair. It writes through the store's own writer
/// connection, so checkpoints and chunk transactions never wait on each other's SQLite locks.
pub struct Checkpoint {
    conn: Arc<Mutex<Connection>>,
    input: String,
    output: String,
}

impl Checkpoint {
    /// Opens (creating the table if needed) the checkpoint for `input` → `output`.
    pub fn open(conn: Arc<Mutex<Connection>>, input: &str, output: &str) -> rusqlite::Result<Self> {
        lock(&conn).execute_batch(
            "CREATE TABLE IF NOT EXISTS checkpoints (
                input TEXT NOT NULL, output TEXT NOT NULL, line INTEGER NOT NULL,
                byte INTEGER NOT NULL, output_len INTEGER NOT NULL, dead_letter_len INTEGER NOT NULL,
                published INTEGER NOT NULL DEFAULT 0, counts TEXT,
                PRIMARY KEY (input, output))",
        )?;
        // State databases from before partial positions: add the column (0 = none).
        let has_published = lock(&conn)
            .prepare("SELECT 1 FROM pragma_table_info('checkpoints') WHERE name = 'published'")?
            .exists([])?;
        if !has_published {
            lock(&conn).execute_batch(
                "ALTER TABLE checkpoints ADD COLUMN published INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        // ... and from before their counts were kept (NULL = unknown).
        let has_counts = lock(&conn)
            .prepare("SELECT 1 FROM pragma_table_info('checkpoints') WHERE name = 'counts'")?
            .exists([])?;
        if !has_counts {
            lock(&conn).execute_batch("ALTER TABLE checkpoints ADD COLUMN counts TEXT")?;
        }
        Ok(Checkpoint {
            conn,
            input: input.to_string(),
            output: output.to_string(),
        })
    }

    /// The recorded position, or the start.
    pub fn load(&self) -> rusqlite::Result<Position> {
        Ok(lock(&self.conn)
            .query_row(
                "SELECT line, byte, output_len, dead_letter_len, published, counts FROM checkpoints
                 WHERE input = ?1 AND output = ?2",
                params![self.input, self.output],
                |r| {
                    Ok(Position {
                        line: r.get(0)?,
                        byte: r.get::<_, i64>(1)? as u64,
                        output_len: r.get::<_, i64>(2)? as u64,
                        dead_letter_len: r.get::<_, i64>(3)? as u64,
                        published: r.get::<_, i64>(4)? as u64,
                        counts: r
                            .get::<_, Option<String>>(5)?
                            .and_then(|c| serde_json::from_str(&c).ok()),
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Records `p` (one small write; the outputs must already hold everything up to it).
    pub fn store(&self, p: &Position) -> rusqlite::Result<()> {
        lock(&self.conn)
            .prepare_cached(
                "INSERT INTO checkpoints
                   (input, output, line, byte, output_len, dead_letter_len, published, counts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (input, output) DO UPDATE SET line = excluded.line, byte = excluded.byte,
                   output_len = excluded.output_len, dead_letter_len = excluded.dead_letter_len,
                   published = excluded.published, counts = excluded.counts",
            )?
            .execute(params![
                self.input,
                self.output,
                p.line,
                p.byte as i64,
                p.output_len as i64,
                p.dead_letter_len as i64,
                p.published as i64,
                p.counts
                    .as_ref()
                    .and_then(|c| serde_json::to_string(c).ok())
            ])?;
        Ok(())
    }
}

/// Locks the shared connection; a panic while holding it cannot leave SQLite half-written
/// (every use is one statement), so a poisoned lock is still usable.
fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}
