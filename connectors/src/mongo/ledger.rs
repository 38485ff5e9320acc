//! The chunk ledger on MongoDB and the chunk transaction around it. Each write chunk is one
//! transaction (snapshot reads, majority commit) holding the ledger look-up, the chunk's writes
//! and its ledger entry, whose `_id` (request_id, claim generation, chunk) is what makes a chunk
//! apply once: two owners racing on a chunk collide there; the loser aborts and returns the
//! winner's stored event. A chunk too large for one transaction is split in halves, each under
//! its own key, the chunk's key marked "split" first (see `write`). Outcomes decided without
//! writes are recorded with `settle`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT;
use mongodb::options::WriteConcern;
use mongodb::{ClientSession, Collection};
use sluice_pipeline::codes::ItemErrorCode;
use sluice_pipeline::contract::{ItemResult, ItemStatus, ProgressEvent};
use sluice_pipeline::metrics::CREATE_FALLBACKS;
use sluice_pipeline::store::{apply_items_with, ApplyError, ChunkCommit, WriteChunk};
use sluice_pipeline::StoreError;

use sluice_pipeline::dedupe::unix_now;

use super::{begin, classify, expires, is_duplicate_key, writer, MongoStore, TOO_LARGE};

pub(super) const LEDGER: &str = "sluice_ledger";
/// Commit retries for `UnknownTransactionCommitResult` before the chunk is retried whole
/// (the retry reads the ledger: a commit that did happen is found there, never applied twice).
const COMMIT_RETRIES: u32 = 5;

impl MongoStore {
    pub(super) fn ledger(&self) -> Collection<Document> {
        self.db.collection(LEDGER)
    }

    /// Records `event` as the chunk's outcome unless the ledger holds one (see
    /// `Store::settle`). A plain majority-acknowledged insert: the key decides.
    pub(super) async fn settle(
        &self,
        chunk: &WriteChunk,
        event: ProgressEvent,
    ) -> Result<ChunkCommit, StoreError> {
        let id = ledger_id(chunk, None);
        let json = encode_event(&event)?;
        // No `expires_at`: an unfinished request's entries never expire (`release`).
        let entry = doc! {
            "_id": id.clone(),
            "event": json.clone(),
        };
        match self
            .ledger()
            .insert_one(entry)
            .write_concern(WriteConcern::majority())
            .await
        {
            Ok(_) => Ok(ChunkCommit {
                event,
                replayed: false,
                json: Some(json),
            }),
            Err(e) if is_duplicate_key(&e) => match self.slot(&id, None).await? {
                Slot::Done(event) => Ok(ChunkCommit {
                    event,
                    replayed: true,
                    json: None,
                }),
                // A split chunk: some of its parts may have committed; finish it the usual way.
                Slot::Split => self.write(chunk).await,
                Slot::Empty => Err(StoreError::transient(
                    "ledger_race",
                    "the ledger entry that collided is gone; retrying",
                )),
            },
            Err(e) => Err(classify(&e)),
        }
    }

    /// What the ledger holds under `id` (inside the transaction when `session` is given).
    async fn slot(
        &self,
        id: &Bson,
        session: Option<&mut ClientSession>,
    ) -> Result<Slot, StoreError> {
        let found = match session {
            Some(s) => {
                self.ledger()
                    .find_one(doc! {"_id": id.clone()})
                    .session(s)
                    .await
            }
            None => self.ledger().find_one(doc! {"_id": id.clone()}).await,
        }
        .map_err(|e| classify(&e))?;
        let Some(d) = found else {
            return Ok(Slot::Empty);
        };
        if d.get_bool("split") == Ok(true) {
            return Ok(Slot::Split);
        }
        let text = d
            .get_str("event")
            .map_err(|e| StoreError::permanent("corrupt", e.to_string()))?;
        serde_json::from_str(text)
            .map(Slot::Done)
            .map_err(|e| StoreError::permanent("corrupt", e.to_string()))
    }

    /// After losing a race on the ledger key `id`: whatever the winner stored there.
    async fn settled(&self, id: &Bson) -> Result<Attempt, StoreError> {
        match self.slot(id, None).await? {
            Slot::Done(event) => Ok(Attempt::Done(ChunkCommit {
                event,
                replayed: true,
                json: None,
            })),
            Slot::Split => Ok(Attempt::Split),
            Slot::Empty => Err(StoreError::transient(
                "ledger_race",
                "the ledger entry that collided is gone; retrying",
            )),
        }
    }

    pub(super) async fn commit(session: &mut ClientSession) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && attempt < COMMIT_RETRIES =>
                {
                    attempt += 1;
                    metrics::counter!(sluice_pipeline::metrics::CHUNK_RETRIES, "reason" => "unknown_commit_result").increment(1);
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                Err(e) => return Err(classify(&e)),
            }
        }
    }

    /// Writes a chunk: one transaction if it fits; if the server finds it too large for its
    /// cache, in halves (recursively), each half in its own transaction under its own ledger
    /// key, with the chunk's key marking it as split so no later attempt applies it whole.
    pub(super) async fn write(&self, chunk: &WriteChunk) -> Result<ChunkCommit, StoreError> {
        let whole = ledger_id(chunk, None);
        if let Attempt::Done(commit) = self.attempt(chunk, &whole, false).await? {
            return Ok(commit);
        }
        let mut items: Vec<ItemResult> = Vec::with_capacity(chunk.range.len());
        let mut replayed = true;
        let mut todo = Vec::from(halves(chunk.range.clone())?);
        // The parts' entries: superseded once the chunk's own entry holds the whole event.
        let mut parts = Vec::new();
        while let Some(range) = todo.pop() {
            let part = WriteChunk {
                range: range.clone(),
                ..chunk.clone()
            };
            let failed_before = items.iter().any(|i| i.status == ItemStatus::Failed);
            let part_id = ledger_id(chunk, Some(&range));
            parts.push(part_id.clone());
            match self.attempt(&part, &part_id, failed_before).await? {
                Attempt::Done(commit) => {
                    replayed &= commit.replayed;
                    items.extend(commit.event.items);
                }
                Attempt::Split => todo.extend(halves(range)?),
                // `attempt` reruns refused items itself.
                Attempt::Refused(_, e) => return Err(e),
            }
        }
        let event = chunk.event(items);
        // The chunk's own entry now holds the whole event: a re-read replays it in one look-up.
        // Idempotent: every owner computes the same event from the same committed parts.
        let text = encode_event(&event)?;
        self.ledger()
            .update_one(
                doc! {"_id": whole, "split": true},
                doc! {"$set": {"event": text.as_str()}, "$unset": {"split": ""}},
            )
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| classify(&e))?;
        // The parts are needed only by an owner racing through this loop: they outlive the
        // merge by the dedupe window, like a finished request's entries.
        let expires_at = unix_now().saturating_add(chunk.window_secs);
        self.ledger()
            .update_many(
                doc! {"_id": {"$in": parts}},
                doc! {"$set": {"expires_at": expires(expires_at)}},
            )
            .await
            .map_err(|e| classify(&e))?;
        Ok(ChunkCommit {
            event,
            replayed,
            json: Some(text),
        })
    }

    /// One transaction over `chunk` (a whole chunk or a part) under the ledger key `id`. An
    /// item the server refuses on its own aborts the transaction, which runs again with that
    /// item failed (at most once per item).
    async fn attempt(
        &self,
        chunk: &WriteChunk,
        id: &Bson,
        failed_before: bool,
    ) -> Result<Attempt, StoreError> {
        let mut refused = BTreeMap::new();
        // A create chunk first tries without reading its keys (see `writer`).
        let mut optimistic = true;
        loop {
            let mut session = self.transaction().await?;
            match self
                .transact(&mut session, chunk, id, failed_before, &refused, optimistic)
                .await
            {
                Ok(Attempt::Refused(index, e)) if !refused.contains_key(&index) => {
                    let _ = session.abort_transaction().await;
                    tracing::warn!(item = index, error = %e, "the server refused one item; it fails alone");
                    refused.insert(index, e);
                }
                Ok(Attempt::Refused(_, e)) => {
                    let _ = session.abort_transaction().await;
                    return Err(e);
                }
                Ok(attempt) => return Ok(attempt),
                Err(e) if e.code == writer::EXISTING_KEYS && optimistic => {
                    let _ = session.abort_transaction().await;
                    // Not a retry of a failure (no retry alert should count it): its own figure.
                    metrics::counter!(CREATE_FALLBACKS).increment(1);
                    optimistic = false;
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    if e.code == TOO_LARGE && !chunk.request.options.atomic {
                        return self.too_large(chunk, id, e).await;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Inside the open transaction: the ledger look-up, the writes, the ledger entry, commit.
    async fn transact(
        &self,
        session: &mut ClientSession,
        chunk: &WriteChunk,
        id: &Bson,
        failed_before: bool,
        refused: &BTreeMap<usize, StoreError>,
        optimistic: bool,
    ) -> Result<Attempt, StoreError> {
        match self.slot(id, Some(&mut *session)).await? {
            Slot::Empty => {}
            Slot::Done(event) => {
                let _ = session.abort_transaction().await;
                return Ok(Attempt::Done(ChunkCommit {
                    event,
                    replayed: true,
                    json: None,
                }));
            }
            Slot::Split => {
                let _ = session.abort_transaction().await;
                return Ok(Attempt::Split);
            }
        }
        let applied = {
            let mut w =
                writer::MongoWriter::new(&self.db, session, &self.keys, chunk, optimistic).await?;
            match apply_items_with(chunk, &mut w, failed_before, refused).await {
                Ok(applied) => applied,
                Err(ApplyError::Item(index, e)) => return Ok(Attempt::Refused(index, e)),
                Err(ApplyError::Chunk(e)) => return Err(e),
            }
        };
        if applied.rollback {
            // A failed atomic chunk: nothing of it is applied, but its outcome is recorded.
            session
                .abort_transaction()
                .await
                .map_err(|e| classify(&e))?;
            begin(session).await?;
        }
        let json = encode_event(&applied.event)?;
        let entry = doc! {
            "_id": id.clone(),
            "event": json.clone(),
        };
        if let Err(e) = self.ledger().insert_one(entry).session(&mut *session).await {
            if is_duplicate_key(&e) {
                // Another owner committed (or split) this chunk first: follow what it stored.
                let _ = session.abort_transaction().await;
                return self.settled(id).await;
            }
            return Err(classify(&e));
        }
        Self::commit(session).await?;
        Ok(Attempt::Done(ChunkCommit {
            event: applied.event,
            replayed: false,
            json: Some(json),
        }))
    }

    /// The server refused `chunk` as too large for one transaction (nothing of it applied).
    /// Several items: mark its ledger key as split, durably, before any half commits. One
    /// item: that item fails with a permanent `store_error`; the rest of the request goes on.
    async fn too_large(
        &self,
        chunk: &WriteChunk,
        id: &Bson,
        e: StoreError,
    ) -> Result<Attempt, StoreError> {
        metrics::counter!(sluice_pipeline::metrics::CHUNK_RETRIES, "reason" => TOO_LARGE)
            .increment(1);
        let request_id = &chunk.request.request_id;
        let items = chunk.items();
        let (entry, outcome) = if let [item] = items {
            tracing::warn!(
                request_id,
                chunk = chunk.index,
                item = item.index,
                "one item is too large for a MongoDB transaction; it fails"
            );
            let failed = ItemResult::failed(
                item.index,
                ItemErrorCode::StoreError,
                format!("store error ({TOO_LARGE}): {}", e.message),
            );
            let event = chunk.event(vec![failed]);
            let json = encode_event(&event)?;
            let entry = doc! {"_id": id.clone(), "event": json.clone()};
            (
                entry,
                Attempt::Done(ChunkCommit {
                    event,
                    replayed: false,
                    json: Some(json),
                }),
            )
        } else {
            tracing::info!(
                request_id,
                chunk = chunk.index,
                items = items.len(),
                "transaction too large for the server's cache; splitting the chunk in halves"
            );
            (doc! {"_id": id.clone(), "split": true}, Attempt::Split)
        };
        match self
            .ledger()
            .insert_one(entry)
            .write_concern(WriteConcern::majority())
            .await
        {
            Ok(_) => Ok(outcome),
            Err(e) if is_duplicate_key(&e) => self.settled(id).await,
            Err(e) => Err(classify(&e)),
        }
    }
}

/// A ledger entry's state.
enum Slot {
    /// Nothing committed under this key.
    Empty,
    /// Committed, with this event.
    Done(ProgressEvent),
    /// Too large for one transaction: its halves have their own keys.
    Split,
}

/// How one transaction over a chunk or part ended.
enum Attempt {
    Done(ChunkCommit),
    Split,
    /// The server refused this item on its own; nothing was committed.
    Refused(usize, StoreError),
}

/// A chunk's ledger key: the string `generation:chunk:request_id`, with `.from-to` (item
/// indexes) after the chunk for a part of a split chunk. A string, so that every MongoDB-wire
/// server finds it through its `_id` index; unambiguous, since only the request_id (last) can
/// hold a `:`. Claims made before generations existed (generation 0) keep their old keys,
/// the documents `{r, c[, from, to]}`.
pub(super) fn ledger_id(chunk: &WriteChunk, part: Option<&Range<usize>>) -> Bson {
    entry_id(
        &chunk.request.request_id,
        chunk.generation,
        chunk.index,
        part,
    )
}

/// The ledger key of chunk `index` (or of its `part`) of generation `generation` of `rid`
/// (see [`ledger_id`]).
pub(super) fn entry_id(
    rid: &str,
    generation: i64,
    index: usize,
    part: Option<&Range<usize>>,
) -> Bson {
    if generation == 0 {
        let mut id = doc! {"r": rid, "c": index as i64};
        if let Some(r) = part {
            id.insert("from", r.start as i64);
            id.insert("to", r.end as i64);
        }
        return Bson::Document(id);
    }
    Bson::String(match part {
        None => format!("{generation}:{index}:{rid}"),
        Some(r) => format!("{generation}:{index}.{}-{}:{rid}", r.start, r.end),
    })
}

/// The ledger key of the terminal event of generation `generation` of `rid`, kept when the
/// request is released: `generation:t:request_id` (a string for generation 0 too).
pub(super) fn terminal_id(rid: &str, generation: i64) -> Bson {
    Bson::String(format!("{generation}:t:{rid}"))
}

/// The two halves of `range`, as a stack (the first half pops first).
fn halves(range: Range<usize>) -> Result<[Range<usize>; 2], StoreError> {
    if range.len() < 2 {
        return Err(StoreError::permanent(
            "corrupt",
            format!("the ledger marks items {range:?} as split"),
        ));
    }
    let mid = range.start + range.len() / 2;
    Ok([mid..range.end, range.start..mid])
}

pub(super) fn encode_event(event: &ProgressEvent) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| StoreError::permanent("encode", e.to_string()))
}
