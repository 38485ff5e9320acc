//! The MongoDB store (official `mongodb` driver), for replica sets. Every write chunk is one
//! multi-document transaction with its ledger entry ([`ledger`]); claims record the owner,
//! time and chunk plan of each request ([`claims`]); documents are converted between JSON and
//! BSON plainly, with no Extended JSON reading ([`convert`]); a document's `_id` is its key
//! ([`layout`]).
//!
//! Errors are classified: network and server-selection errors mean "unavailable" — wait, never
//! fail items — even inside a transaction, where the driver also labels them
//! `TransientTransactionError`; other transient labels (write conflicts, …) rerun the whole
//! transaction through the pipeline's retry policy; `UnknownTransactionCommitResult` retries the
//! commit, then the chunk (the ledger makes a second apply impossible); the rest is permanent.
//!
//! After a crash, the replacement must not wait out its predecessor's open transactions:
//! [`sessions`] records this instance's sessions under `kafka.instance_id` and ends the
//! previous incarnation's at start-up.
//!
//! Parts: this file (connection, start-up checks, `Store`), [`ledger`], [`claims`],
//! [`writer`] (the `ItemWriter`, cascades), [`layout`], [`convert`], [`sessions`], and
//! [`status`] (the status API's reads, [`MongoStatus`]).

mod claims;
mod convert;
mod group;
mod layout;
mod ledger;
pub mod sessions;
mod status;
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
use sluice_pipeline::contract::ProgressEvent;
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{
    ChunkCommit, Claim, ClaimInput, Finished, Found, Target, WriteChunk, WriteLimit,
};
use sluice_pipeline::{SourceRef, Store, StoreError};

pub use status::MongoStatus;
pub use writer::key_bson;

/// Code of a chunk too large for one transaction (`TransactionTooLargeForCache`, …).
const TOO_LARGE: &str = "transaction_too_large";

/// The MongoDB store.
pub struct MongoStore {
    client: Client,
    db: Database,
    /// How each configured collection keys its documents (configured collections only).
    keys: Arc<HashMap<String, layout::Keyed>>,
    sessions: sessions::Sessions,
    /// Create chunks waiting for a transaction, grouped ([`group`]).
    groups: group::Groups,
}

/// TransactionTooLargeForCache (4.4+), TransactionTooLarge (16 MB of operations, 4.0).
const TOO_LARGE_CODES: [i32; 2] = [388, 257];

/// Maps a driver error to the store classification.
pub fn classify(e: &MongoError) -> StoreError {
    let msg = e.to_string();
    // An outage first: inside a transaction the driver labels these transient too, and a
    // transient error gives up after its budget, while an outage is waited for.
    if matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
    ) {
        return StoreError::unavailable("network", msg);
    }
    if e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
        return StoreError::transient("transient_transaction", msg);
    }
    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        return StoreError::transient("unknown_commit_result", msg);
    }
    match e.kind.as_ref() {
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

/// Whether `e` reports a duplicate key, whichever form the server gives it.
fn is_duplicate_key(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::InsertMany(m) => m.write_errors.iter().flatten().any(|w| w.code == 11000),
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

impl MongoStore {
    /// A session of this instance (recorded, see [`sessions`]) with a chunk transaction begun.
    async fn transaction(&self) -> Result<ClientSession, StoreError> {
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(|e| classify(&e))?;
        self.sessions.note(&session).await?;
        begin(&mut session).await?;
        Ok(session)
    }
}

fn expires(at: i64) -> DateTime {
    DateTime::from_millis(at.saturating_mul(1000).min(253_402_300_799_000))
}

impl MongoStore {
    /// Connects, checks that the server is a replica set (transactions need one), decides each
    /// collection's layout ([`layout`]) with its indexes, and creates the ledgers' TTL indexes.
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
        let mut keys = HashMap::new();
        for (name, c) in &config.collections {
            let keyed = layout::prepare(&db, name, &c.key, c.parent_field.as_deref()).await?;
            keys.insert(name.clone(), keyed);
        }
        let ttl = IndexModel::builder()
            .keys(doc! {"expires_at": 1})
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        for name in [ledger::LEDGER, claims::REQUESTS] {
            db.collection::<Document>(name)
                .create_index(ttl.clone())
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
            groups: group::Groups::new(config.execute.write_concurrency),
        })
    }

    /// The database (tests inspect it).
    pub fn database(&self) -> &Database {
        &self.db
    }
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
        plan: &[Range<usize>],
    ) -> Result<Claim, StoreError> {
        self.claim_request(request_id, source, plan, &Default::default())
            .await
    }

    async fn claim_many(&self, claims: &[ClaimInput<'_>]) -> Result<Vec<Claim>, StoreError> {
        self.claim_requests(claims).await
    }

    async fn release(&self, finished: &[Finished], window_secs: i64) -> Result<(), StoreError> {
        MongoStore::release(self, finished, window_secs).await
    }

    /// Up to `configured` group transactions and `configured` chunks written alone at once,
    /// and small create chunks waiting meanwhile (up to `configured` × 500 items) to be
    /// grouped ([`group`]).
    fn write_limit(&self, configured: usize) -> WriteLimit {
        WriteLimit::Items(configured.saturating_mul(group::GROUP_MAX_ITEMS / 2))
    }

    async fn write_chunk(&self, chunk: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError> {
        if group::groupable(&chunk) {
            return self.write_grouped(chunk).await;
        }
        self.write_alone(&chunk).await
    }

    async fn settle(
        &self,
        chunk: Arc<WriteChunk>,
        event: ProgressEvent,
    ) -> Result<ChunkCommit, StoreError> {
        self.settle(&chunk, event).await
    }

    async fn lookup(
        &self,
        target: &Target,
        keys: &[Key],
        max_bytes: usize,
    ) -> Result<Vec<Found>, StoreError> {
        let coll: Collection<Document> = self.db.collection(&target.collection);
        let keyed = self.keyed(target);
        let wanted: Vec<Bson> = keys.iter().map(key_bson).collect();
        // Documents arrive in the server's order, the budget goes in key order: keep documents
        // while they all fit (the usual case: done in one pass); past that, only their sizes,
        // then fetch what the key-order budget selects that was not kept.
        let (mut docs, sizes, complete) = self.fetch(&coll, &keyed, wanted, max_bytes).await?;
        let mut used = 0usize;
        let mut selected = Vec::new();
        let plan: Vec<Option<Result<(), usize>>> = keys
            .iter()
            .map(|k| {
                let size = *sizes.get(k)?;
                Some(if used + size <= max_bytes {
                    used += size;
                    selected.push(k.clone());
                    Ok(())
                } else {
                    Err(size)
                })
            })
            .collect();
        if !complete {
            let missing: Vec<Bson> = selected
                .iter()
                .filter(|k| !docs.contains_key(*k))
                .map(key_bson)
                .collect();
            if !missing.is_empty() {
                let (more, _, _) = self.fetch(&coll, &keyed, missing, usize::MAX).await?;
                docs.extend(more);
            }
        }
        Ok(keys
            .iter()
            .zip(plan)
            .map(|(k, p)| match p {
                None => Found::Missing,
                Some(Err(size)) => Found::TooLarge(size),
                Some(Ok(())) => docs.get(k).cloned().map_or(Found::Missing, Found::Doc),
            })
            .collect())
    }
}

impl MongoStore {
    /// How `target` keys its documents (a collection not configured: by its key field).
    fn keyed(&self, target: &Target) -> layout::Keyed {
        self.keys
            .get(&target.collection)
            .cloned()
            .unwrap_or_else(|| layout::Keyed {
                field: target.key_field.clone(),
                by_id: false,
            })
    }

    /// The documents with keys in `wanted`, read as plain JSON (never as Extended JSON), kept
    /// while their total stays within `max_bytes`; the size of every one found; and whether
    /// all of them were kept.
    async fn fetch(
        &self,
        coll: &Collection<Document>,
        keyed: &layout::Keyed,
        wanted: Vec<Bson>,
        max_bytes: usize,
    ) -> Result<(HashMap<Key, Value>, HashMap<Key, usize>, bool), StoreError> {
        let mut cursor = coll
            .find(keyed.filter_in(wanted))
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| classify(&e))?;
        let (mut docs, mut sizes) = (HashMap::new(), HashMap::new());
        let (mut kept, mut complete) = (0usize, true);
        while cursor.advance().await.map_err(|e| classify(&e))? {
            let raw = cursor.current();
            let size = raw.as_bytes().len();
            let d = Document::try_from(raw)
                .map_err(|e| StoreError::permanent("corrupt", e.to_string()))?;
            let json = convert::json(d);
            let Some(k) = Key::from_json(&json[keyed.field.as_str()]) else {
                continue;
            };
            sizes.insert(k.clone(), size);
            if complete && kept + size <= max_bytes {
                kept += size;
                docs.insert(k, json);
            } else {
                complete = false;
            }
        }
        Ok((docs, sizes, complete))
    }
}
