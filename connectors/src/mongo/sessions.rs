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

use std::collections::HashSet;
use std::sync::Mutex;

use mongodb::bson::{doc, Bson, Document};
use mongodb::{ClientSession, Collection, Database};
use sluice_pipeline::StoreError;

use super::classify;

const SESSIONS: &str = "sluice_sessions";
/// Sessions remembered in memory before the set is forgotten (recording again is harmless).
const SEEN_MAX: usize = 4096;

/// The recorder of one instance's sessions.
pub(super) struct Sessions {
    coll: Collection<Document>,
    instance: Option<String>,
    seen: Mutex<HashSet<Vec<u8>>>,
}

impl Sessions {
    /// A recorder for `instance` (`None`: nothing is recorded — without a stable identity no
    /// later incarnation could find the sessions).
    pub(super) fn new(db: &Database, instance: Option<String>) -> Self {
        Sessions {
            coll: db.collection(SESSIONS),
            instance,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Ends the sessions the previous incarnation of this instance recorded (aborting their
    /// open transactions) and forgets them. Returns how many were ended. A server that refuses
    /// `killSessions` only costs the wait it would have saved (logged).
    pub(super) async fn end_predecessors(&self, db: &Database) -> Result<usize, StoreError> {
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

    /// Records `session` under the instance before its first transaction.
    pub(super) async fn note(&self, session: &ClientSession) -> Result<(), StoreError> {
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
        self.coll
            .update_one(doc! {"_id": instance}, doc! {"$addToSet": {"lsids": lsid}})
            .upsert(true)
            .await
            .map_err(|e| classify(&e))?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        seen.insert(key);
        Ok(())
    }
}
