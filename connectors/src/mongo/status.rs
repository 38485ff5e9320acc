//! The status API's reads of the MongoDB store ([`StatusReader`]): claims from
//! `sluice_requests`, chunk events from `sluice_ledger` by their exact `_id`s (`g:c:rid`, or
//! the `{r, c}` documents of generation 0), on a client of its own — so any instance answers
//! for a request another instance executes.
//!
//! A released claim has `finished_at`; its terminal event is in the ledger under
//! `generation:t:request_id`. Fields a claim gained later (`finished_at`, `collection`, `op`,
//! `deadline_ms`) are taken as absent when a document lacks them.
//!
//! The in-flight list reads the index `sluice_in_flight {finished_at, claimed_at, _id}`
//! ([`MongoStatus::ensure_index`]): unfinished claims have no `finished_at`, so they are the
//! index's `null` prefix, in claim order, and a page is a range scan of `limit` entries. A
//! partial index would hold only those, but MongoDB's partial filters cannot say "field
//! absent": each claim costs one entry (its id and two small values, some 50–70 bytes) for
//! as long as the store keeps it, moved once when it finishes.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use sluice_config::MongoConfig;
use sluice_pipeline::status::{ClaimRecord, Cursor, StatusReader};
use sluice_pipeline::{SourceRef, StoreError};

use super::claims::REQUESTS;
use super::classify;
use super::ledger::{entry_id, terminal_id, LEDGER};

/// Connections the status reads may open.
const POOL: u32 = 4;
/// `_id`s asked for in one ledger query.
const IDS_PER_QUERY: usize = 256;
/// Expiry dates past this (unix ms, year 3000) stand for "never".
const NEVER_MS: i64 = 32_503_680_000_000;

/// Status reads of one MongoDB database.
pub struct MongoStatus {
    db: Database,
}

impl MongoStatus {
    /// Connects to `m`'s database with a small pool of its own.
    pub async fn connect(m: &MongoConfig) -> Result<Self, StoreError> {
        let mut opts = ClientOptions::parse(&m.uri)
            .await
            .map_err(|e| classify(&e))?;
        opts.app_name = Some("sluice-status".into());
        opts.max_pool_size = Some(POOL);
        opts.server_selection_timeout = Some(Duration::from_millis(m.server_selection_timeout_ms));
        opts.connect_timeout = Some(Duration::from_millis(m.connect_timeout_ms));
        let client = Client::with_options(opts).map_err(|e| classify(&e))?;
        Ok(MongoStatus {
            db: client.database(&m.database),
        })
    }

    /// Creates the in-flight index (see the module); idempotent.
    pub async fn ensure_index(&self) -> Result<(), StoreError> {
        let index = IndexModel::builder()
            .keys(doc! {"finished_at": 1, "claimed_at": 1, "_id": 1})
            .options(
                IndexOptions::builder()
                    .name("sluice_in_flight".to_string())
                    .build(),
            )
            .build();
        self.requests()
            .create_index(index)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    fn requests(&self) -> Collection<Document> {
        self.db.collection(REQUESTS)
    }
}

/// An integer field, whichever width the server stored it in.
fn int(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

fn text(d: &Document, key: &str) -> Option<String> {
    d.get_str(key).ok().map(str::to_string)
}

/// A claim document as a [`ClaimRecord`].
fn claim_of(d: &Document) -> Option<ClaimRecord> {
    let claimed_at_ms = int(d, "claimed_at").unwrap_or(0);
    let expires_at = match d.get("expires_at") {
        Some(Bson::DateTime(t)) if t.timestamp_millis() < NEVER_MS => {
            Some(t.timestamp_millis().div_euclid(1000))
        }
        _ => None,
    };
    Some(ClaimRecord {
        request_id: text(d, "_id")?,
        source: SourceRef {
            topic: text(d, "topic").unwrap_or_default(),
            partition: int(d, "partition").unwrap_or(0) as i32,
            offset: int(d, "offset").unwrap_or(0),
        },
        claimed_at_ms,
        plan: d
            .get_array("plan")
            .map(|a| a.iter().filter_map(Bson::as_i64).collect())
            .unwrap_or_default(),
        expires_at,
        terminal: None,
        collection: text(d, "collection"),
        op: text(d, "op"),
        deadline_at_ms: int(d, "deadline_ms").map(|ms| claimed_at_ms.saturating_add(ms)),
    })
}

/// The ledger `_id` of chunk `chunk` of the claim `generation`.
fn ledger_id(request_id: &str, generation: i64, chunk: usize) -> Bson {
    entry_id(request_id, generation, chunk, None)
}

/// The chunk index of a ledger `_id` made by [`ledger_id`].
fn chunk_of(id: &Bson) -> Option<usize> {
    match id {
        Bson::String(s) => s.split(':').nth(1)?.parse().ok(),
        Bson::Document(d) => int(d, "c").map(|c| c as usize),
        _ => None,
    }
}

#[async_trait::async_trait]
impl StatusReader for MongoStatus {
    async fn claim(&self, request_id: &str) -> Result<Option<ClaimRecord>, StoreError> {
        let found = self
            .requests()
            .find_one(doc! {"_id": request_id})
            .await
            .map_err(|e| classify(&e))?;
        let Some(mut claim) = found.as_ref().and_then(claim_of) else {
            return Ok(None);
        };
        if found.is_some_and(|d| d.contains_key("finished_at")) {
            let ledger: Collection<Document> = self.db.collection(LEDGER);
            let terminal = ledger
                .find_one(doc! {"_id": terminal_id(request_id, claim.claimed_at_ms)})
                .await
                .map_err(|e| classify(&e))?;
            claim.terminal = terminal.and_then(|d| text(&d, "event"));
        }
        Ok(Some(claim))
    }

    async fn ledger(
        &self,
        request_id: &str,
        generation: i64,
        from: usize,
        to: usize,
    ) -> Result<Vec<(usize, String)>, StoreError> {
        let ledger: Collection<Document> = self.db.collection(LEDGER);
        let mut out = Vec::new();
        let mut start = from;
        while start < to {
            let end = to.min(start + IDS_PER_QUERY);
            let ids: Vec<Bson> = (start..end)
                .map(|c| ledger_id(request_id, generation, c))
                .collect();
            let docs: Vec<Document> = ledger
                .find(doc! {"_id": {"$in": ids}})
                .projection(doc! {"event": 1})
                .await
                .map_err(|e| classify(&e))?
                .try_collect()
                .await
                .map_err(|e| classify(&e))?;
            // A chunk split in parts has no `event` until every part is done: not settled.
            out.extend(docs.iter().filter_map(|d| {
                Some((
                    chunk_of(d.get("_id")?)?,
                    d.get_str("event").ok()?.to_string(),
                ))
            }));
            start = end;
        }
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    }

    async fn chunks_done(&self, request_id: &str, generation: i64) -> Result<usize, StoreError> {
        let Some(claim) = self.claim(request_id).await? else {
            return Ok(0);
        };
        let ledger: Collection<Document> = self.db.collection(LEDGER);
        let mut done = 0;
        let ids: Vec<Bson> = (0..claim.chunks())
            .map(|c| ledger_id(request_id, generation, c))
            .collect();
        for ids in ids.chunks(IDS_PER_QUERY) {
            done += ledger
                .count_documents(doc! {"_id": {"$in": ids}, "event": {"$exists": true}})
                .await
                .map_err(|e| classify(&e))? as usize;
        }
        Ok(done)
    }

    async fn in_flight(
        &self,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<ClaimRecord>, StoreError> {
        let mut filter = doc! {"finished_at": Bson::Null};
        if let Some(c) = after {
            filter.insert(
                "$or",
                vec![
                    doc! {"claimed_at": {"$gt": c.claimed_at_ms}},
                    doc! {"claimed_at": c.claimed_at_ms, "_id": {"$gt": &c.request_id}},
                ],
            );
        }
        let docs: Vec<Document> = self
            .requests()
            .find(filter)
            .sort(doc! {"claimed_at": 1, "_id": 1})
            .limit(limit.min(i64::MAX as usize) as i64)
            .await
            .map_err(|e| classify(&e))?
            .try_collect()
            .await
            .map_err(|e| classify(&e))?;
        Ok(docs.iter().filter_map(claim_of).collect())
    }
}
