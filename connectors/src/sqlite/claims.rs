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

/// Deletes a batch of expired ledger rows and claims (also done at open): the file does not
/// grow with the length of a run.
pub fn purge(c: &Connection) -> Result<(), StoreError> {
    let now = unix_now();
    c.execute(
        "DELETE FROM chunk_ledger WHERE rowid IN
           (SELECT rowid FROM chunk_ledger WHERE expires_at < ?1 LIMIT ?2)",
        params![now, PURGE_EVERY as i64],
    )
    .and_then(|_| {
        c.execute(
            "DELETE FROM requests WHERE rowid IN
               (SELECT rowid FROM requests WHERE expires_at < ?1 LIMIT ?2)",
            params![now, PURGE_EVERY as i64],
        )
    })
    .map_err(classify)?;
    Ok(())
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
/// (of that generation) and its ledger entries expire at `expires_at`; the claim keeps the
/// terminal event.
pub fn release_in(
    c: &Connection,
    finished: &[Finished],
    expires_at: i64,
) -> Result<(), StoreError> {
    for f in finished {
        let claimed = c
            .prepare_cached(
                "UPDATE requests SET expires_at = ?3, terminal = ?4
                 WHERE request_id = ?1 AND claimed_at = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![f.request_id, f.generation, expires_at, f.terminal])
            })
            .map_err(classify)?;
        if claimed == 0 {
            continue;
        }
        c.prepare_cached(
            "UPDATE chunk_ledger SET expires_at = ?3 WHERE request_id = ?1 AND generation = ?2",
        )
        .and_then(|mut s| s.execute(params![f.request_id, f.generation, expires_at]))
        .map_err(classify)?;
    }
    Ok(())
}
