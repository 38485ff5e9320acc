//! The MongoDB store (official `mongodb` driver), for replica sets: each write chunk is one
//! multi-document transaction (read concern snapshot, write concern majority) holding the
//! ledger look-up, the chunk's writes and its ledger entry. Apply-once rests on the ledger's
//! `_id` = {request_id, chunk}: two owners racing on a chunk collide there; the loser aborts
//! and returns the winner's stored event. There is no shared per-partition document, so
//! concurrent chunks do not serialise on write conflicts.
//!
//! Errors are classified by label: `TransientTransactionError` (write conflicts, …) reruns
//! the whole transaction through the pipeline's retry policy; `UnknownTransactionCommitResult`
//! retries the commit here (safe: the ledger makes a second apply impossible); network and
//! server-selection errors mean "unavailable" (wait, do not fail items); the rest is permanent.
//! A chunk too large for one transaction (`TransactionTooLargeForCache`) is split in halves,
//! each under its own ledger key, the chunk's key marked "split" first (see `write`).
//!
//! After a crash, the replacement must not wait out its predecessor's open transactions:
//! [`sessions`] records this instance's sessions under `kafka.instance_id` and ends the
//! previous incarnation's at start-up.
//!
//! Parts: this file (connection, start-up checks, `Store`), [`writer`] (the `ItemWriter`),
//! [`sessions`] (ending a crashed predecessor's transactions).

mod sessions;
mod writer;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{
    Error as MongoError, ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR,
    UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{ClientOptions, IndexOptions, ReadConcern, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde_json::Value;
use sluice_config::{Config, MongoConfig};
use sluice_pipeline::codes::ItemErrorCode;
use sluice_pipeline::contract::{ItemResult, ItemStatus, ProgressEvent};
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{apply_items_after, ChunkCommit, Claim, Target, WriteChunk};
use sluice_pipeline::{SourceRef, Store, StoreError};

pub use writer::key_bson;

const LEDGER: &str = "sluice_ledger";
const REQUESTS: &str = "sluice_requests";
/// Commit retries for `UnknownTransactionCommitResult` before the chunk is retried whole.
const COMMIT_RETRIES: u32 = 5;

/// The MongoDB store.
pub struct MongoStore {
    client: Client,
    db: Database,
    /// Key field by collection (configured collections only).
    keys: Arc<HashMap<String, String>>,
    sessions: sessions::Sessions,
}

/// TransactionTooLargeForCache (4.4+), TransactionTooLarge (16 MB of operations, 4.0).
const TOO_LARGE_CODES: [i32; 2] = [388, 257];

/// Maps a driver error to the store classification.
pub fn classify(e: &MongoError) -> StoreError {
    let msg = e.to_string();
    if e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
        return StoreError::transient("transient_transaction", msg);
    }
    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        return StoreError::transient("unknown_commit_result", msg);
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => StoreError::unavailable("network", msg),
        ErrorKind::Command(c) if c.code == 112 => StoreError::transient("write_conflict", msg),
        ErrorKind::Command(c) if [91, 189, 10107, 11600, 11602, 13435, 13436].contains(&c.code) => {
            // Shutdown in progress, primary stepped down, not primary…: an election.
            StoreError::unavailable("election", msg)
        }
        ErrorKind::Command(c) if TOO_LARGE_CODES.contains(&c.code) => {
            StoreError::permanent(TOO_LARGE, msg)
        }
        // Inside a transaction mongod may report it as a write error of the statement.
        ErrorKind::Write(WriteFailure::WriteError(w)) if TOO_LARGE_CODES.contains(&w.code) => {
            StoreError::permanent(TOO_LARGE, msg)
        }
        ErrorKind::InsertMany(m)
            if m.write_errors
                .iter()
                .flatten()
                .any(|w| TOO_LARGE_CODES.contains(&w.code)) =>
        {
            StoreError::permanent(TOO_LARGE, msg)
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000 => {
            StoreError::transient("duplicate_key", msg)
        }
        _ => StoreError::permanent("mongodb", msg),
    }
}

fn is_duplicate_key(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// Starts a chunk's transaction as DESIGN.md asks: snapshot reads, majority-acknowledged commit.
async fn begin(session: &mut ClientSession) -> Result<(), StoreError> {
    session
        .start_transaction()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::majority())
        .await
        .map_err(|e| classify(&e))
}

fn expires(at: i64) -> DateTime {
    DateTime::from_millis(at.saturating_mul(1000).min(253_402_300_799_000))
}

impl MongoStore {
    /// Connects, checks that the server is a replica set (transactions need one), and creates
    /// the unique key indexes, the cascade indexes and the ledgers' TTL indexes.
    pub async fn connect(m: &MongoConfig, config: &Config) -> Result<Self, StoreError> {
        let mut opts = ClientOptions::parse(&m.uri)
            .await
            .map_err(|e| classify(&e))?;
        opts.app_name = Some("sluice".into());
        opts.max_pool_size = Some(m.max_pool_size);
        opts.server_selection_timeout = Some(Duration::from_millis(m.server_selection_timeout_ms));
        opts.connect_timeout = Some(Duration::from_millis(m.connect_timeout_ms));
        let client = Client::with_options(opts).map_err(|e| classify(&e))?;
        let db = client.database(&m.database);
        let hello = db
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| classify(&e))?;
        if hello.get_str("setName").is_err() && hello.get_str("msg") != Ok("isdbgrid") {
            return Err(StoreError::permanent(
                "not_a_replica_set",
                "the MongoDB server is not a replica set member: transactions are impossible \
                 (start mongod with --replSet and run rs.initiate())",
            ));
        }
        let index = |keys: Document, unique: bool, ttl: bool| {
            let mut o = IndexOptions::builder().unique(unique).build();
            if ttl {
                o.expire_after = Some(Duration::ZERO);
            }
            IndexModel::builder().keys(keys).options(o).build()
        };
        let mut keys = HashMap::new();
        for (name, c) in &config.collections {
            let coll: Collection<Document> = db.collection(name);
            coll.create_index(index(doc! {&c.key: 1}, true, false))
                .await
                .map_err(|e| classify(&e))?;
            if let Some(f) = &c.parent_field {
                coll.create_index(index(doc! {f: 1}, false, false))
                    .await
                    .map_err(|e| classify(&e))?;
            }
            keys.insert(name.clone(), c.key.clone());
        }
        for name in [LEDGER, REQUESTS] {
            db.collection::<Document>(name)
                .create_index(index(doc! {"expires_at": 1}, false, true))
                .await
                .map_err(|e| classify(&e))?;
        }
        let instance = config.kafka.as_ref().and_then(|k| k.instance_id.clone());
        let sessions = sessions::Sessions::new(&db, instance);
        sessions.end_predecessors(&db).await?;
        Ok(MongoStore {
            client,
            db,
            keys: Arc::new(keys),
            sessions,
        })
    }

    /// The database (tests inspect it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn ledger(&self) -> Collection<Document> {
        self.db.collection(LEDGER)
    }

    /// What the ledger holds under `id` (inside the transaction when `session` is given).
    async fn slot(
        &self,
        id: &Document,
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
    async fn settled(&self, id: &Document) -> Result<Attempt, StoreError> {
        match self.slot(id, None).await? {
            Slot::Done(event) => Ok(Attempt::Done(ChunkCommit {
                event,
                replayed: true,
            })),
            Slot::Split => Ok(Attempt::Split),
            Slot::Empty => Err(StoreError::transient(
                "ledger_race",
                "the ledger entry that collided is gone; retrying",
            )),
        }
    }

    async fn commit(session: &mut ClientSession) -> Result<(), StoreError> {
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
    async fn write(&self, chunk: &WriteChunk) -> Result<ChunkCommit, StoreError> {
        let whole = ledger_id(chunk, None);
        if let Attempt::Done(commit) = self.attempt(chunk, &whole, false).await? {
            return Ok(commit);
        }
        let mut items: Vec<ItemResult> = Vec::with_capacity(chunk.range.len());
        let mut replayed = true;
        let mut todo = Vec::from(halves(chunk.range.clone())?);
        while let Some(range) = todo.pop() {
            let part = WriteChunk {
                range: range.clone(),
                ..chunk.clone()
            };
            let failed_before = items.iter().any(|i| i.status == ItemStatus::Failed);
            match self
                .attempt(&part, &ledger_id(chunk, Some(&range)), failed_before)
                .await?
            {
                Attempt::Done(commit) => {
                    replayed &= commit.replayed;
                    items.extend(commit.event.items);
                }
                Attempt::Split => todo.extend(halves(range)?),
            }
        }
        let event = chunk.event(items);
        // The chunk's own entry now holds the whole event: a re-read replays it in one look-up.
        // Idempotent: every owner computes the same event from the same committed parts.
        let text = encode_event(&event)?;
        self.ledger()
            .update_one(
                doc! {"_id": whole, "split": true},
                doc! {"$set": {"event": text}, "$unset": {"split": ""}},
            )
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| classify(&e))?;
        Ok(ChunkCommit { event, replayed })
    }

    /// One transaction over `chunk` (a whole chunk or a part) under the ledger key `id`.
    async fn attempt(
        &self,
        chunk: &WriteChunk,
        id: &Document,
        failed_before: bool,
    ) -> Result<Attempt, StoreError> {
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(|e| classify(&e))?;
        self.sessions.note(&session).await?;
        begin(&mut session).await?;
        match self.transact(&mut session, chunk, id, failed_before).await {
            Ok(attempt) => Ok(attempt),
            Err(e) => {
                let _ = session.abort_transaction().await;
                if e.code == TOO_LARGE && !chunk.request.options.atomic {
                    return self.too_large(chunk, id, e).await;
                }
                Err(e)
            }
        }
    }

    /// Inside the open transaction: the ledger look-up, the writes, the ledger entry, commit.
    async fn transact(
        &self,
        session: &mut ClientSession,
        chunk: &WriteChunk,
        id: &Document,
        failed_before: bool,
    ) -> Result<Attempt, StoreError> {
        match self.slot(id, Some(&mut *session)).await? {
            Slot::Empty => {}
            Slot::Done(event) => {
                let _ = session.abort_transaction().await;
                return Ok(Attempt::Done(ChunkCommit {
                    event,
                    replayed: true,
                }));
            }
            Slot::Split => {
                let _ = session.abort_transaction().await;
                return Ok(Attempt::Split);
            }
        }
        let applied = {
            let mut w = writer::MongoWriter::new(&self.db, session, &self.keys, chunk).await?;
            apply_items_after(chunk, &mut w, failed_before).await?
        };
        if applied.rollback {
            // A failed atomic chunk: nothing of it is applied, but its outcome is recorded.
            session
                .abort_transaction()
                .await
                .map_err(|e| classify(&e))?;
            begin(session).await?;
        }
        let entry = doc! {
            "_id": id.clone(),
            "event": encode_event(&applied.event)?,
            "expires_at": expires(chunk.expires_at),
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
        }))
    }

    /// The server refused `chunk` as too large for one transaction (nothing of it applied).
    /// Several items: mark its ledger key as split, durably, before any half commits. One
    /// item: that item fails with a permanent `store_error`; the rest of the request goes on.
    async fn too_large(
        &self,
        chunk: &WriteChunk,
        id: &Document,
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
            let entry = doc! {"_id": id.clone(), "event": encode_event(&event)?};
            (
                entry,
                Attempt::Done(ChunkCommit {
                    event,
                    replayed: false,
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
        let mut entry = entry;
        entry.insert("expires_at", expires(chunk.expires_at));
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
}

/// Code of a chunk too large for one transaction (`TransactionTooLargeForCache`, …).
const TOO_LARGE: &str = "transaction_too_large";

/// A chunk's ledger key: `{r: request_id, c: chunk}`, plus `{from, to}` (item indexes) for a
/// part of a split chunk.
fn ledger_id(chunk: &WriteChunk, part: Option<&Range<usize>>) -> Document {
    let mut id = doc! {"r": &chunk.request.request_id, "c": chunk.index as i64};
    if let Some(r) = part {
        id.insert("from", r.start as i64);
        id.insert("to", r.end as i64);
    }
    id
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

fn encode_event(event: &ProgressEvent) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| StoreError::permanent("encode", e.to_string()))
}

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }

    async fn claim(
        &self,
        request_id: &str,
        source: &SourceRef,
        expires_at: i64,
    ) -> Result<Claim, StoreError> {
        let coll: Collection<Document> = self.db.collection(REQUESTS);
        let mine = doc! {
            "_id": request_id,
            "topic": &source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "expires_at": expires(expires_at),
        };
        match coll.insert_one(mine.clone()).await {
            Ok(_) => return Ok(Claim::Owned),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(classify(&e)),
        }
        // Taken: by this record (a re-read), by another within the window, or expired.
        let now = DateTime::now();
        let replaced = coll
            .find_one_and_replace(doc! {"_id": request_id, "expires_at": {"$lt": now}}, mine)
            .await
            .map_err(|e| classify(&e))?;
        if replaced.is_some() {
            return Ok(Claim::Owned);
        }
        let owner = coll
            .find_one(doc! {"_id": request_id})
            .await
            .map_err(|e| classify(&e))?
            .ok_or_else(|| StoreError::transient("claim_race", "claim vanished; retrying"))?;
        let owner = SourceRef {
            topic: owner.get_str("topic").unwrap_or_default().to_string(),
            partition: owner.get_i32("partition").unwrap_or_default(),
            offset: owner.get_i64("offset").unwrap_or_default(),
        };
        Ok(if &owner == source {
            Claim::Owned
        } else {
            Claim::DuplicateOf(owner)
        })
    }

    async fn write_chunk(&self, chunk: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError> {
        self.write(&chunk).await
    }

    async fn lookup(
        &self,
        target: &Target,
        keys: &[Key],
    ) -> Result<Vec<Option<Value>>, StoreError> {
        let coll: Collection<Document> = self.db.collection(&target.collection);
        let wanted: Vec<Bson> = keys.iter().map(key_bson).collect();
        let mut cursor = coll
            .find(doc! {&target.key_field: {"$in": wanted}})
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| classify(&e))?;
        let mut found: HashMap<Key, Value> = HashMap::new();
        while cursor.advance().await.map_err(|e| classify(&e))? {
            let d = cursor.deserialize_current().map_err(|e| classify(&e))?;
            let json = Bson::Document(d).into_relaxed_extjson();
            if let Some(k) = Key::from_json(&json[&target.key_field]) {
                found.insert(k, json);
            }
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }
}
