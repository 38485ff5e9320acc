//! The request ledger of the SQLite store: claims, written through the group commit.

use std::ops::Range;

use rusqlite::{params, Connection};
use sluice_pipeline::dedupe::{unix_now, unix_now_ms};
use sluice_pipeline::store::{
    plan_bounds, plan_from_bounds, About, Claim, ClaimInput, Claimed, Finished, NEVER,
};
use sluice_pipeline::{SourceRef, StoreError};

use super::{classify, PURGE_EVERY};

/// One claim as the store writes it (owned: it crosses to the blocking pool).
pub struct OwnedClaim {
    id: String,
    src: SourceRef,
    bounds: String,
    items: usize,
    /// `About`: collection (`None` when not recorded), op and deadline, for the status API.
    about: (Option<String>, Option<&'static str>, Option<i64>),
}

impl OwnedClaim {
    /// The claim of `request_id` from `source` with its chunk `plan`.
    pub fn new(
        request_id: &str,
        source: &SourceRef,
        plan: &[Range<usize>],
        about: &About<'_>,
    ) -> Result<Self, StoreError> {
        let bounds = serde_json::to_string(&plan_bounds(plan))
            .map_err(|e| StoreError::permanent("encode", e.to_string()))?;
        Ok(OwnedClaim {
            id: request_id.to_string(),
            src: source.clone(),
            bounds,
            items: plan.last().map_or(0, |r| r.end),
            about: (
                Some(about.collection.to_string()).filter(|c| !c.is_empty()),
                about.op.map(|op| op.as_str()),
                about.deadline_ms.map(|d| d.min(i64::MAX as u64) as i64),
            ),
        })
    }

    /// The claims of a batch.
    pub fn all(claims: &[ClaimInput<'_>]) -> Result<Vec<Self>, StoreError> {
        claims
            .iter()
            .map(|c| Self::new(c.request_id, c.source, c.plan, &c.about))
            .collect()
    }
}

/// Deletes a batch of expired claims with their ledger entries (also done at open): the file
/// does not grow with the length of a run.
///
/// Ledger entries expire with their request: [`release_in`] starts the window on the claim
/// alone, and the purge deletes every entry of a purged request_id, of any generation (an
/// older generation's entries are dead once its claim was replaced). Entries left without a
/// claim of their generation in other ways go by [`sweep`].
///
/// Returns whether there may be more to purge (a batch was full).
pub fn purge(c: &Connection) -> Result<bool, StoreError> {
    let purged: Vec<String> = c
        .prepare_cached(
            "DELETE FROM requests WHERE rowid IN
               (SELECT rowid FROM requests WHERE expires_at < ?1 LIMIT ?2)
             RETURNING request_id",
        )
        .and_then(|mut s| {
            s.query_map(params![unix_now(), PURGE_EVERY as i64], |r| r.get(0))?
                .collect()
        })
        .map_err(classify)?;
    let mut entries = c
        .prepare_cached("DELETE FROM chunk_ledger WHERE request_id = ?1")
        .map_err(classify)?;
    for id in &purged {
        entries.execute([id]).map_err(classify)?;
    }
    Ok(purged.len() == PURGE_EVERY)
}

/// Ledger rows one [`sweep`] examines: a fourth of a purge's claims, as the entries it finds
/// are rare leftovers (one look-up of the claim per row; a ledger of a million rows is gone
/// through once every four million claims).
const SWEEP_ROWS: usize = PURGE_EVERY / 4;

/// Deletes, among the next [`SWEEP_ROWS`] ledger rows after rowid `from`, the entries that
/// have no claim of their generation; returns the rowid to go on from (0 past the end, to
/// start over). Such entries are dead — a claim, once gone or replaced, is never claimed again
/// under its generation — and nothing else deletes them: entries an older version released
/// (it set their own expiry, and deleted only by it) whose claim it purged, entries of a
/// claim an older instance sharing the file purged, and a chunk settled just after its claim
/// was purged. An entry whose claim is still there, live or expired, stays with it.
pub fn sweep(c: &Connection, from: i64) -> Result<i64, StoreError> {
    let last: Option<i64> = c
        .prepare_cached(
            "SELECT max(rowid) FROM
               (SELECT rowid FROM chunk_ledger WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)",
        )
        .and_then(|mut s| s.query_row(params![from, SWEEP_ROWS as i64], |r| r.get(0)))
        .map_err(classify)?;
    let Some(last) = last else { return Ok(0) };
    c.prepare_cached(
        "DELETE FROM chunk_ledger WHERE rowid > ?1 AND rowid <= ?2 AND NOT EXISTS
           (SELECT 1 FROM requests r WHERE r.request_id = chunk_ledger.request_id
              AND r.claimed_at = chunk_ledger.generation)",
    )
    .and_then(|mut s| s.execute(params![from, last]))
    .map_err(classify)?;
    Ok(last)
}

/// [`purge`] of every expired claim, at open: a batch per transaction (a claim and its
/// entries go together), each batch's ids held in memory.
pub fn purge_all(c: &Connection) -> Result<(), StoreError> {
    loop {
        c.execute_batch("BEGIN IMMEDIATE").map_err(classify)?;
        let more = purge(c).and_then(|more| {
            c.execute_batch("COMMIT").map_err(classify)?;
            Ok(more)
        });
        match more {
            Ok(true) => continue,
            Ok(false) => return Ok(()),
            Err(e) => {
                let _ = c.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
}

/// Claims one request inside the open transaction. A first claim never expires (until
/// [`release_in`]); a claim replaced by another record must be past its window, and a claim
/// of the same record is never replaced (a re-read is never a new request).
pub fn claim_in(c: &Connection, claim: &OwnedClaim) -> Result<Claim, StoreError> {
    let OwnedClaim {
        id,
        src,
        bounds,
        items,
        about,
    } = claim;
    let items = *items;
    let now = unix_now();
    // A released claim past its window is replaced, as if it had been purged: a new
    // generation, whose ledger keys the old request's chunks cannot match.
    c.prepare_cached(
        "INSERT INTO requests
       (request_id, topic, partition, \"offset\", expires_at, claimed_at, plan,
        collection, op, deadline_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?10, ?11)
     ON CONFLICT (request_id) DO UPDATE SET topic = excluded.topic,
       partition = excluded.partition, \"offset\" = excluded.\"offset\",
       expires_at = excluded.expires_at, claimed_at = excluded.claimed_at,
       plan = excluded.plan, terminal = NULL, collection = excluded.collection,
       op = excluded.op, deadline_ms = excluded.deadline_ms
     WHERE requests.expires_at < ?8 AND NOT (requests.topic = excluded.topic
       AND requests.partition = excluded.partition AND requests.\"offset\" = excluded.\"offset\")",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            src.topic,
            src.partition,
            src.offset,
            NEVER,
            unix_now_ms(),
            bounds,
            now,
            about.0,
            about.1,
            about.2
        ])
    })
    .map_err(classify)?;
    let (owner, claimed_at, stored, expires_at): (SourceRef, i64, Option<String>, i64) = c
        .prepare_cached(
            "SELECT topic, partition, \"offset\", claimed_at, plan, expires_at FROM requests
         WHERE request_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([&id], |r| {
                let owner = SourceRef {
                    topic: r.get(0)?,
                    partition: r.get(1)?,
                    offset: r.get(2)?,
                };
                Ok((owner, r.get(3)?, r.get(4)?, r.get(5)?))
            })
        })
        .map_err(classify)?;
    if &owner != src {
        return Ok(Claim::DuplicateOf(owner));
    }
    let stored = stored
        .and_then(|p| serde_json::from_str::<Vec<i64>>(&p).ok())
        .and_then(|b| plan_from_bounds(&b, items));
    let plan = match stored {
        Some(plan) => plan,
        None => {
            // A claim made before plans were stored: this plan becomes the claim's.
            c.execute(
                "UPDATE requests SET plan = ?2 WHERE request_id = ?1",
                params![id, bounds],
            )
            .map_err(classify)?;
            plan_from_bounds(
                &serde_json::from_str::<Vec<i64>>(bounds).unwrap_or_default(),
                items,
            )
            .unwrap_or_default()
        }
    };
    Ok(Claim::Owned(Claimed {
        claimed_at_ms: claimed_at,
        plan,
        expires_at: (expires_at != NEVER).then_some(expires_at),
    }))
}

/// Starts the dedupe window of finished requests inside the open transaction: their claim
/// (of that generation) expires at `expires_at` and keeps the terminal event; their ledger
/// entries go with the claim when it is purged ([`purge`]), so they are not rewritten here.
pub fn release_in(
    c: &Connection,
    finished: &[Finished],
    expires_at: i64,
) -> Result<(), StoreError> {
    let mut release = c
        .prepare_cached(
            "UPDATE requests SET expires_at = ?3, terminal = ?4
             WHERE request_id = ?1 AND claimed_at = ?2",
        )
        .map_err(classify)?;
    for f in finished {
        release
            .execute(params![f.request_id, f.generation, expires_at, f.terminal])
            .map_err(classify)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice_pipeline::store::About;

    use super::*;

    /// A migrated state file in a directory of its own.
    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = super::super::connect(&dir.path().join("s.db"), std::time::Duration::from_secs(5))
            .unwrap();
        super::super::migrate::migrate(&c).unwrap();
        (dir, c)
    }

    fn ledger(c: &Connection, id: &str) -> i64 {
        c.query_row(
            "SELECT count(*) FROM chunk_ledger WHERE request_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn claimed(c: &Connection, id: &str) -> bool {
        c.prepare("SELECT 1 FROM requests WHERE request_id = ?1")
            .unwrap()
            .exists([id])
            .unwrap()
    }

    /// Claims `id` from `offset` and writes a ledger entry per chunk of its generation.
    fn claim_with_entries(c: &Connection, id: &str, offset: i64) -> i64 {
        let src = SourceRef {
            topic: "t".into(),
            partition: 0,
            offset,
        };
        let claim = OwnedClaim::new(id, &src, &[0..1, 1..2], &About::default()).unwrap();
        let Claim::Owned(owned) = claim_in(c, &claim).unwrap() else {
            panic!("{id} not owned")
        };
        assert_eq!(owned.plan, vec![0..1, 1..2]);
        for chunk in 0..2 {
            c.execute(
                "INSERT INTO chunk_ledger VALUES (?1, ?2, ?3, '{}', ?4)",
                params![id, owned.claimed_at_ms, chunk, NEVER],
            )
            .unwrap();
        }
        owned.claimed_at_ms
    }

    fn release(c: &Connection, id: &str, generation: i64, expires_at: i64) {
        let finished = Finished {
            request_id: id.into(),
            generation,
            chunks: 2,
            terminal: "{}".into(),
        };
        release_in(c, &[finished], expires_at).unwrap();
    }

    /// A released claim's ledger entries are kept while its window lasts and purged with it,
    /// those of every generation; an unfinished request keeps its claim and its entries.
    #[test]
    fn ledger_entries_go_with_their_claim() {
        let (_dir, c) = db();
        let past = unix_now() - 10;
        // `old`: released with its window over, then replaced by another record (a new
        // generation) whose own window is over too.
        let g1 = claim_with_entries(&c, "old", 1);
        release(&c, "old", g1, past);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let g2 = claim_with_entries(&c, "old", 2);
        assert_ne!(g1, g2, "a new generation");
        assert_eq!(ledger(&c, "old"), 4);
        release(&c, "old", g2, past);
        // `open`: released, its window still open; `running`: unfinished.
        let g = claim_with_entries(&c, "open", 3);
        release(&c, "open", g, unix_now() + 3600);
        claim_with_entries(&c, "running", 4);

        purge(&c).unwrap();
        assert!(!claimed(&c, "old"));
        assert_eq!(
            ledger(&c, "old"),
            0,
            "every generation's entries are purged"
        );
        for id in ["open", "running"] {
            assert!(claimed(&c, id), "{id}");
            assert_eq!(ledger(&c, id), 2, "{id}");
        }

        // At open, as in the batch.
        release(&c, "open", g, past);
        purge_all(&c).unwrap();
        assert!(!claimed(&c, "open"));
        assert_eq!(ledger(&c, "open"), 0);
        assert_eq!(ledger(&c, "running"), 2);
    }

    /// At open every expired claim goes, however many batches that takes.
    #[test]
    fn the_purge_at_open_takes_every_batch() {
        let (_dir, c) = db();
        let n = PURGE_EVERY * 2 + 7;
        c.execute_batch("BEGIN").unwrap();
        for i in 0..n {
            let id = format!("r{i}");
            c.execute(
                "INSERT INTO requests (request_id, topic, partition, \"offset\", expires_at)
                 VALUES (?1, 't', 0, ?2, ?3)",
                params![id, i as i64, unix_now() - 10],
            )
            .unwrap();
            c.execute(
                "INSERT INTO chunk_ledger VALUES (?1, 0, 0, '{}', ?2)",
                params![id, NEVER],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        purge_all(&c).unwrap();
        let left: (i64, i64) = c
            .query_row(
                "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM chunk_ledger)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(left, (0, 0));
        assert!(c.is_autocommit());
    }

    /// The sweep deletes the entries with no claim of their generation, and only those,
    /// whatever their own expiry: an older version released a claim and its entries with
    /// one expiry; when the claim is released again (its record re-read within the window)
    /// only the claim's moves, and its entries must stay as long as it does (else a third
    /// read of the record would find its chunks unrecorded and apply them again).
    #[test]
    fn the_sweep_keeps_every_entry_of_a_claim_and_deletes_the_rest() {
        let (_dir, c) = db();
        let past = unix_now() - 10;
        let entry = |id: &str, generation: i64, expires_at: i64| {
            c.execute(
                "INSERT INTO chunk_ledger VALUES (?1, ?2, 0, '{}', ?3)",
                params![id, generation, expires_at],
            )
            .unwrap();
        };
        // Released by an older version (entry expiry in the past), released again since.
        let g = claim_with_entries(&c, "again", 1);
        c.execute(
            "UPDATE chunk_ledger SET expires_at = ?1 WHERE request_id = 'again'",
            [past],
        )
        .unwrap();
        release(&c, "again", g, unix_now() + 3600);
        // Expired, not yet purged: its entries go with it, not before.
        let g = claim_with_entries(&c, "expired", 2);
        release(&c, "expired", g, past);
        // No claim at all (an older version purged it), and a replaced generation.
        entry("orphan", 7, past);
        entry("orphan-never", 7, NEVER);
        let g = claim_with_entries(&c, "replaced", 3);
        entry("replaced", g - 1, NEVER);

        let next = sweep(&c, 0).unwrap();
        assert!(next > 0);
        for (id, left) in [
            ("again", 2),
            ("expired", 2),
            ("orphan", 0),
            ("orphan-never", 0),
            ("replaced", 2),
        ] {
            assert_eq!(ledger(&c, id), left, "{id}");
        }
        // Past the end it starts over.
        assert_eq!(sweep(&c, next).unwrap(), 0);
        // And the batch purge leaves the live claim's entries too.
        purge(&c).unwrap();
        assert_eq!(ledger(&c, "again"), 2);
        assert_eq!(ledger(&c, "expired"), 0);
    }

    /// The sweep takes [`SWEEP_ROWS`] rows at a time and goes on from where it stopped.
    #[test]
    fn the_sweep_goes_through_the_ledger_a_batch_at_a_time() {
        let (_dir, c) = db();
        let n = SWEEP_ROWS * 2 + 3;
        c.execute_batch("BEGIN").unwrap();
        for i in 0..n {
            c.execute(
                "INSERT INTO chunk_ledger VALUES (?1, 1, 0, '{}', ?2)",
                params![format!("orphan-{i}"), NEVER],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        let left = || -> i64 {
            c.query_row("SELECT count(*) FROM chunk_ledger", [], |r| r.get(0))
                .unwrap()
        };
        let mut from = 0;
        for expected in [n - SWEEP_ROWS, n - 2 * SWEEP_ROWS, 0] {
            from = sweep(&c, from).unwrap();
            assert_eq!(left(), expected as i64);
        }
        assert_eq!(sweep(&c, from).unwrap(), 0, "the end: start over");
    }
}
