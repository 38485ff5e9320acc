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
//!
//! Parts: this file (connection, start-up checks, `Store`), [`writer`] (the `ItemWriter`).

mod writer;

use std::collections::HashMap;
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
use sluice_pipeline::store::{apply_items, ChunkCommit, Claim, Target, WriteChunk};
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
}

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
        ErrorKind::Command(c) if c.code == 388 => {
            StoreError::permanent("transaction_too_large", msg)
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
        Ok(MongoStore {
            client,
            db,
            keys: Arc::new(keys),
        })
    }

    /// The database (tests inspect it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn ledger(&self) -> Collection<Document> {
        self.db.collection(LEDGER)
    }

    async fn stored_event(
        &self,
        id: &Document,
        session: Option<&mut ClientSession>,
    ) -> Result<Option<ProgressEvent>, StoreError> {
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
        found
            .map(|d| {
                let text = d
                    .get_str("event")
                    .map_err(|e| StoreError::permanent("corrupt", e.to_string()))?;
                serde_json::from_str(text)
                    .map_err(|e| StoreError::permanent("corrupt", e.to_string()))
            })
            .transpose()
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

    async fn try_write(&self, chunk: &WriteChunk) -> Result<ChunkCommit, StoreError> {
        let id = doc! {"r": &chunk.request.request_id, "c": chunk.index as i64};
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(|e| classify(&e))?;
        begin(&mut session).await?;
        let result = async {
            if let Some(event) = self.stored_event(&id, Some(&mut session)).await? {
                return Ok(Err(event));
            }
            let applied = {
                let mut w =
                    writer::MongoWriter::new(&self.db, &mut session, &self.keys, chunk).await?;
                apply_items(chunk, &mut w).await?
            };
            Ok(Ok(applied))
        }
        .await;
        let applied = match result {
            Ok(Ok(applied)) => applied,
            Ok(Err(event)) => {
                let _ = session.abort_transaction().await;
                return Ok(ChunkCommit {
                    event,
                    replayed: true,
                });
            }
            Err(e) => {
                let _ = session.abort_transaction().await;
                return Err(e);
            }
        };
        if applied.rollback {
            // A failed atomic chunk: nothing of it is applied, but its outcome is recorded.
            session
                .abort_transaction()
                .await
                .map_err(|e| classify(&e))?;
            begin(&mut session).await?;
        }
        let text = serde_json::to_string(&applied.event)
            .map_err(|e| StoreError::permanent("encode", e.to_string()))?;
        let entry =
            doc! {"_id": id.clone(), "event": text, "expires_at": expires(chunk.expires_at)};
        if let Err(e) = self.ledger().insert_one(entry).session(&mut session).await {
            let _ = session.abort_transaction().await;
            if is_duplicate_key(&e) {
                // Another owner committed this chunk first: report what it stored.
                if let Some(event) = self.stored_event(&id, None).await? {
                    return Ok(ChunkCommit {
                        event,
                        replayed: true,
                    });
                }
            }
            return Err(classify(&e));
        }
        Self::commit(&mut session).await?;
        Ok(ChunkCommit {
            event: applied.event,
            replayed: false,
        })
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
        self.try_write(&chunk).await
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
