//! The logical sessions an instance uses for its chunk transactions, recorded under its
//! instance id (`kafka.instance_id`) in `sluice_sessions`, so that its next incarnation ends
//! them at start-up (`killSessions`). A SIGKILLed instance leaves its transactions open; the
//! server aborts them only after `transactionLifetimeLimitSeconds` (60 s by default), and until
//! then every chunk its replacement replays conflicts with them on the same ledger keys and
//! documents. The same happens to a zombie resumed beside its replacement: the replacement's
//! start ends the zombie's transactions.
//!
//! A session is recorded (one small upsert) the first time this process uses it, before its
//! first transaction; the driver pools and reuses sessions, so that is once per pooled session.
//!
//! The record is bounded: it keeps the [`SESSIONS_MAX`] sessions noted last. The driver
//! replaces a pooled session only after it sat idle for most of the server's session timeout
//! (30 min), so a process running for months would otherwise grow its document until it
//! passes 16 MB and every upsert — and so every chunk transaction — fails. The sessions in use
//! are at most the store's concurrency (far below the bound), and the memory of sessions
//! already noted is forgotten at the same bound, so a session still in use is noted again
//! (and so kept) before it could be pruned.

use std::collections::HashSet;
use std::sync::Mutex;

use mongodb::bson::{doc, Bson, Document};
use mongodb::{ClientSession, Collection, Database};
use sluice_pipeline::StoreError;

use super::classify;

const SESSIONS: &str = "sluice_sessions";
/// Sessions kept in an instance's record (the last ones noted), and remembered in memory as
/// noted before that memory is forgotten (noting again is harmless).
pub const SESSIONS_MAX: usize = 512;

/// The recorder of one instance's sessions.
pub struct Sessions {
    coll: Collection<Document>,
    instance: Option<String>,
    seen: Mutex<HashSet<Vec<u8>>>,
}

impl Sessions {
    /// A recorder for `instance` (`None`: nothing is recorded — without a stable identity no
    /// later incarnation could find the sessions).
    pub fn new(db: &Database, instance: Option<String>) -> Self {
        Sessions {
            coll: db.collection(SESSIONS),
            instance,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Ends the sessions the previous incarnation of this instance recorded (aborting their
    /// open transactions) and forgets them. Returns how many were ended. A server that refuses
    /// `killSessions` only costs the wait it would have saved (logged).
    pub async fn end_predecessors(&self, db: &Database) -> Result<usize, StoreError> {
        let Some(instance) = &self.instance else {
            return Ok(0);
        };
        let found = self
            .coll
            .find_one(doc! {"_id": instance})
            .await
            .map_err(|e| classify(&e))?;
        let lsids: Vec<Bson> = found
            .and_then(|d| d.get_array("lsids").ok().cloned())
            .unwrap_or_default();
        if lsids.is_empty() {
            return Ok(0);
        }
        let n = lsids.len();
        let admin = db.client().database("admin");
        if let Err(e) = admin.run_command(doc! {"killSessions": lsids}).await {
            tracing::warn!(
                instance,
                error = %e,
                "could not end the previous incarnation's sessions; chunks may wait for its open transactions to expire"
            );
            return Ok(0);
        }
        self.coll
            .update_one(doc! {"_id": instance}, doc! {"$set": {"lsids": []}})
            .await
            .map_err(|e| classify(&e))?;
        tracing::info!(
            instance,
            sessions = n,
            "ended the sessions of this instance's previous incarnation"
        );
        Ok(n)
    }

    /// Records `session` under the instance before its first transaction (last, pruning the
    /// oldest beyond [`SESSIONS_MAX`]).
    pub async fn note(&self, session: &ClientSession) -> Result<(), StoreError> {
        let Some(instance) = &self.instance else {
            return Ok(());
        };
        let lsid = session.id().clone();
        let key = match lsid.get("id") {
            Some(Bson::Binary(b)) => b.bytes.clone(),
            _ => return Ok(()),
        };
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(&key) {
                return Ok(());
            }
        }
        // Moved to the end if already there (noted again after `seen` was forgotten), so that
        // the slice keeps the sessions noted last, once each.
        self.coll
            .update_one(doc! {"_id": instance}, doc! {"$pull": {"lsids": &lsid}})
            .await
            .map_err(|e| classify(&e))?;
        let max = -(SESSIONS_MAX as i64);
        self.coll
            .update_one(
                doc! {"_id": instance},
                doc! {"$push": {"lsids": {"$each": [lsid], "$slice": max}}},
            )
            .upsert(true)
            .await
            .map_err(|e| classify(&e))?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= SESSIONS_MAX {
            seen.clear();
        }
        seen.insert(key);
        Ok(())
    }
}
