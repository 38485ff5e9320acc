//! Request claims on MongoDB (`sluice_requests`, `_id` = request_id): the record that owns a
//! request_id, when it first claimed it (the claim's generation, and where deadlines count
//! from) and the chunk plan made then. A re-read of the same record gets them back, however
//! late. A claim has no `expires_at` while its request is unfinished, so it never expires;
//! [`MongoStore::release`] gives it one (the dedupe window after its terminal event), and
//! only then may another record's claim replace it. The TTL index removes old claims
//! eventually, but expiry is decided by `expires_at` here, not by the TTL monitor. Claims
//! are written with majority write concern, like the ledger: an acknowledged claim survives
//! an election.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::ErrorKind;
use mongodb::options::WriteConcern;
use mongodb::Collection;
use sluice_pipeline::dedupe::{unix_now, unix_now_ms};
use sluice_pipeline::store::{
    plan_bounds, plan_from_bounds, About, Claim, ClaimInput, Claimed, Finished,
};
use sluice_pipeline::{SourceRef, StoreError};

use super::ledger::{entry_id, terminal_id};
use super::{classify, expires, is_duplicate_key, MongoStore};

pub(super) const REQUESTS: &str = "sluice_requests";

/// A first claim's document: no `expires_at` (unfinished).
fn claim_doc(
    request_id: &str,
    source: &SourceRef,
    claimed_at: i64,
    plan: &[Range<usize>],
    about: &About<'_>,
) -> Document {
    let bounds: Vec<Bson> = plan_bounds(plan).into_iter().map(Bson::Int64).collect();
    let mut d = doc! {
        "_id": request_id,
        "topic": &source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "claimed_at": claimed_at,
        "plan": bounds,
    };
    // For the status API (`status`) only.
    if !about.collection.is_empty() {
        d.insert("collection", about.collection);
    }
    if let Some(op) = about.op {
        d.insert("op", op.as_str());
    }
    if let Some(ms) = about.deadline_ms {
        d.insert("deadline_ms", ms.min(i64::MAX as u64) as i64);
    }
    d
}

impl MongoStore {
    /// Claims a batch in order: one unordered `insertMany` of every first claim, then the
    /// one-by-one path ([`MongoStore::claim_request`], idempotent for its record) for each
    /// claim it did not insert — taken already, repeated in the batch, or failed.
    pub(super) async fn claim_requests(
        &self,
        claims: &[ClaimInput<'_>],
    ) -> Result<Vec<Claim>, StoreError> {
        let mut seen = HashSet::new();
        let firsts: Vec<usize> = (0..claims.len())
            .filter(|&i| seen.insert(claims[i].request_id))
            .collect();
        let mut inserted = vec![false; claims.len()];
        let claimed_at = unix_now_ms();
        if firsts.len() > 1 {
            let coll: Collection<Document> = self.database().collection(REQUESTS);
            let docs = firsts.iter().map(|&i| {
                let c = &claims[i];
                claim_doc(c.request_id, c.source, claimed_at, c.plan, &c.about)
            });
            let failed: Option<HashSet<usize>> = match coll
                .insert_many(docs)
                .ordered(false)
                .write_concern(WriteConcern::majority())
                .await
            {
                Ok(_) => Some(HashSet::new()),
                Err(e) => match e.kind.as_ref() {
                    ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
                        Some(m.write_errors.iter().flatten().map(|w| w.index).collect())
                    }
                    // Unknown which went in: every claim takes the one-by-one path.
                    _ => None,
                },
            };
            if let Some(failed) = failed {
                for (n, &i) in firsts.iter().enumerate() {
                    inserted[i] = !failed.contains(&n);
                }
            }
        }
        let mut out = Vec::with_capacity(claims.len());
        for (c, inserted) in claims.iter().zip(inserted) {
            out.push(if inserted {
                Claim::Owned(Claimed {
                    claimed_at_ms: claimed_at,
                    plan: c.plan.to_vec(),
                    expires_at: None,
                })
            } else {
                self.claim_request(c.request_id, c.source, c.plan, &c.about)
                    .await?
            });
        }
        Ok(out)
    }

    pub(super) async fn claim_request(
        &self,
        request_id: &str,
        source: &SourceRef,
        plan: &[Range<usize>],
        about: &About<'_>,
    ) -> Result<Claim, StoreError> {
        let coll: Collection<Document> = self.database().collection(REQUESTS);
        let bounds: Vec<Bson> = plan_bounds(plan).into_iter().map(Bson::Int64).collect();
        let items = plan.last().map_or(0, |r| r.end);
        let claimed_at = unix_now_ms();
        let mine = claim_doc(request_id, source, claimed_at, plan, about);
        let fresh = Claim::Owned(Claimed {
            claimed_at_ms: claimed_at,
            plan: plan.to_vec(),
            expires_at: None,
        });
        match coll
            .insert_one(mine.clone())
            .write_concern(WriteConcern::majority())
            .await
        {
            Ok(_) => return Ok(fresh),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(classify(&e)),
        }
        // Taken: by this record (a re-read, never replaced), by another within the window or
        // unfinished, or released and expired (then replaced by another record's claim: a new
        // generation, whose ledger keys the old request's chunks cannot match).
        let replaced = coll
            .find_one_and_replace(
                doc! {
                    "_id": request_id,
                    "expires_at": {"$lt": DateTime::now()},
                    "$nor": [{
                        "topic": &source.topic,
                        "partition": source.partition,
                        "offset": source.offset,
                    }],
                },
                mine,
            )
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| classify(&e))?;
        if replaced.is_some() {
            return Ok(fresh);
        }
        let stored = coll
            .find_one(doc! {"_id": request_id})
            .await
            .map_err(|e| classify(&e))?
            .ok_or_else(|| StoreError::transient("claim_race", "claim vanished; retrying"))?;
        let owner = SourceRef {
            topic: stored.get_str("topic").unwrap_or_default().to_string(),
            partition: stored.get_i32("partition").unwrap_or_default(),
            offset: stored.get_i64("offset").unwrap_or_default(),
        };
        if &owner != source {
            return Ok(Claim::DuplicateOf(owner));
        }
        let stored_plan = stored
            .get_array("plan")
            .ok()
            .map(|a| a.iter().filter_map(Bson::as_i64).collect::<Vec<i64>>())
            .and_then(|b| plan_from_bounds(&b, items));
        // A claim made before claims held their time and plan: generation 0, and this plan.
        let claimed_at_ms = stored.get_i64("claimed_at").unwrap_or(0);
        let expires_at = stored
            .get_datetime("expires_at")
            .ok()
            .map(|d| d.timestamp_millis().div_euclid(1000));
        let plan = match stored_plan {
            Some(plan) => plan,
            None => {
                coll.update_one(doc! {"_id": request_id}, doc! {"$set": {"plan": bounds}})
                    .await
                    .map_err(|e| classify(&e))?;
                plan.to_vec()
            }
        };
        Ok(Claim::Owned(Claimed {
            claimed_at_ms,
            plan,
            expires_at,
        }))
    }

    /// Starts the dedupe window of `finished` requests (see `Store::release`), in two
    /// statements and one per claim generation: the terminal events go into the ledger (under
    /// [`terminal_id`]), then the ledger entries and the claims of those generations get
    /// `expires_at`. The claims go last: a release interrupted half-way leaves claims that
    /// never expire — safe, and the next release of the same requests completes it.
    pub(super) async fn release(
        &self,
        finished: &[Finished],
        window_secs: i64,
    ) -> Result<(), StoreError> {
        if finished.is_empty() {
            return Ok(());
        }
        let at = expires(unix_now().saturating_add(window_secs));
        let terminals = finished.iter().map(|f| {
            doc! {
                "_id": terminal_id(&f.request_id, f.generation),
                "event": &f.terminal,
                "expires_at": at,
            }
        });
        match self.ledger().insert_many(terminals).ordered(false).await {
            Ok(_) => {}
            // Kept already by an earlier release of the same request: the first one stays.
            Err(e) if only_duplicates(&e) => {}
            Err(e) => return Err(classify(&e)),
        }
        let ids: Vec<Bson> = finished
            .iter()
            .flat_map(|f| (0..f.chunks).map(|i| entry_id(&f.request_id, f.generation, i, None)))
            .collect();
        self.ledger()
            .update_many(
                doc! {"_id": {"$in": ids}},
                doc! {"$set": {"expires_at": at}},
            )
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| classify(&e))?;
        // One statement per claim generation (claims are made in batches, so a release holds
        // few): `_id $in` with the generation is an index read, where an `$or` of
        // (`_id`, generation) pairs is a collection scan on some servers (SecantusDB: 4.8 s
        // for 100 pairs among 20,000 claims, 24 ms this way), which made every release slower
        // as the store grew.
        let mut by_generation: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
        for f in finished {
            by_generation
                .entry(f.generation)
                .or_default()
                .push(&f.request_id);
        }
        let now = DateTime::now();
        for (generation, ids) in by_generation {
            self.database()
                .collection::<Document>(REQUESTS)
                .update_many(
                    doc! {"_id": {"$in": ids}, "claimed_at": generation},
                    doc! {"$set": {"expires_at": at, "finished_at": now}},
                )
                .write_concern(WriteConcern::majority())
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(())
    }
}

/// An `insertMany` whose only failures are duplicate keys.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors.iter().flatten().all(|w| w.code == 11000)
        }
        _ => false,
    }
}
