//! Test doubles for driving whole pipelines in unit tests: an in-memory store, a source of
//! given records, and a sink that logs what it was asked to do and what committed.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_config::Config;

use crate::codes::{SinkError, SourceError, StoreError};
use crate::contract::{DeadLetter, ProgressEvent, ResultEvent};
use crate::record::{RawRecord, SourceRef};
use crate::request::Key;
use crate::sink::Sink;
use crate::source::Source;
use crate::store::{
    apply_items, ApplyError, ChunkCommit, Claim, Claimed, Finished, Found, Inserted, ItemWriter,
    Store, Target, WriteChunk,
};

/// A `delete` request `r` on collection `c` with the given items and options: the shape unit
/// tests of stages that look only at items (dedupe, chunk) build.
pub fn key_request(
    items: Vec<crate::request::Item>,
    options: crate::contract::Options,
) -> crate::request::Request {
    crate::request::Request {
        request_id: "r".into(),
        collection: "c".into(),
        op: crate::contract::Op::Delete,
        items,
        options,
    }
}

/// A config with the dictionary collections and fast commits.
pub fn config(extra: &str) -> Arc<Config> {
    Arc::new(
        sluice_config::from_toml_str(&format!(
            r#"
            [pipeline]
            commit_interval_ms = 20
            [chunk]
            max_items = 2
            [collections.words]
            key = "text"
            {extra}
            "#
        ))
        .unwrap(),
    )
}

/// A record of `partition` at `offset` holding `json`.
pub fn record(partition: i32, offset: i64, json: &str) -> RawRecord {
    RawRecord {
        source: SourceRef {
            topic: "t".into(),
            partition,
            offset,
        },
        key: None,
        payload: Bytes::copy_from_slice(json.as_bytes()),
        truncated: false,
        resume_at: offset as u64 + 1,
        start_at: offset as u64,
        skip_progress: 0,
        skip_counts: None,
        received: Instant::now(),
        permit: None,
    }
}

/// A create request of `n` words `<id>-<i>`.
pub fn create(id: &str, n: usize) -> String {
    let items: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"text": format!("{id}-{i}")}))
        .collect();
    serde_json::json!({"request_id": id, "collection": "words", "op": "create", "items": items})
        .to_string()
}

/// Hands out its records, then ends (`end`) or waits forever like a quiet topic.
pub struct VecSource {
    pub records: std::collections::VecDeque<RawRecord>,
    pub end: bool,
}

impl VecSource {
    pub fn new(records: Vec<RawRecord>, end: bool) -> Self {
        VecSource {
            records: records.into(),
            end,
        }
    }
}

#[async_trait]
impl Source for VecSource {
    async fn next(&mut self) -> Result<Option<RawRecord>, SourceError> {
        match self.records.pop_front() {
            Some(r) => Ok(Some(r)),
            None if self.end => Ok(None),
            None => std::future::pending().await,
        }
    }
}

/// One thing a [`LogSink`] was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Event(ResultEvent),
    DeadLetter(i64),
    Done(SourceRef, u64),
    Partial(SourceRef, u64, usize),
}

/// What a [`LogSink`] holds: the open unit and everything committed.
#[derive(Debug, Default)]
pub struct SinkLog {
    pub unit: Vec<Entry>,
    pub committed: Vec<Entry>,
    pub commits: usize,
    /// Commits fail from now on.
    pub fail_commits: bool,
}

impl SinkLog {
    /// Committed events, in order.
    pub fn events(&self) -> Vec<ResultEvent> {
        self.committed
            .iter()
            .filter_map(|e| match e {
                Entry::Event(ev) => Some(ev.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A sink that logs, shared with the test through [`LogSink::log`].
#[derive(Clone, Default)]
pub struct LogSink {
    pub log: Arc<Mutex<SinkLog>>,
}

impl LogSink {
    fn push(&self, e: Entry) {
        self.log.lock().unwrap().unit.push(e);
    }
}

#[async_trait]
impl Sink for LogSink {
    async fn publish(&mut self, event: &ResultEvent, _json: &[u8]) -> Result<(), SinkError> {
        self.push(Entry::Event(event.clone()));
        Ok(())
    }
    async fn dead_letter(&mut self, _raw: &[u8], letter: &DeadLetter) -> Result<(), SinkError> {
        self.push(Entry::DeadLetter(letter.source.offset));
        Ok(())
    }
    async fn record_done(&mut self, source: &SourceRef, resume_at: u64) -> Result<(), SinkError> {
        self.push(Entry::Done(source.clone(), resume_at));
        Ok(())
    }
    async fn record_partial(
        &mut self,
        source: &SourceRef,
        start_at: u64,
        published: usize,
        _counts: &crate::contract::Counts,
    ) -> Result<(), SinkError> {
        self.push(Entry::Partial(source.clone(), start_at, published));
        Ok(())
    }
    async fn commit(&mut self) -> Result<(), SinkError> {
        let mut log = self.log.lock().unwrap();
        if log.fail_commits {
            return Err(SinkError("commit refused (test)".into()));
        }
        let unit = std::mem::take(&mut log.unit);
        log.committed.extend(unit);
        log.commits += 1;
        Ok(())
    }
}

/// Documents, claims and ledger in memory.
#[derive(Default)]
pub struct MemStore {
    data: Mutex<MemData>,
}

#[derive(Default)]
struct MemData {
    docs: HashMap<String, BTreeMap<Key, Value>>,
    claims: HashMap<String, (SourceRef, Claimed)>,
    /// Every release asked, in order.
    released: Vec<Finished>,
    ledger: HashMap<(String, i64, usize), ProgressEvent>,
}

struct MemWriter<'a>(&'a mut MemData);

impl ItemWriter for MemWriter<'_> {
    async fn insert(
        &mut self,
        t: &Target,
        key: &Key,
        doc: &RawValue,
    ) -> Result<Inserted, StoreError> {
        let coll = self.0.docs.entry(t.collection.clone()).or_default();
        if coll.contains_key(key) {
            return Ok(Inserted::Exists);
        }
        coll.insert(key.clone(), serde_json::from_str(doc.get()).unwrap());
        Ok(Inserted::Inserted)
    }
    async fn upsert(&mut self, t: &Target, key: &Key, doc: &RawValue) -> Result<(), StoreError> {
        let coll = self.0.docs.entry(t.collection.clone()).or_default();
        coll.insert(key.clone(), serde_json::from_str(doc.get()).unwrap());
        Ok(())
    }
    async fn update(
        &mut self,
        t: &Target,
        key: &Key,
        set: &Map<String, Value>,
        unset: &[String],
    ) -> Result<bool, StoreError> {
        let coll = self.0.docs.entry(t.collection.clone()).or_default();
        let Some(Value::Object(doc)) = coll.get_mut(key) else {
            return Ok(false);
        };
        doc.extend(set.clone());
        for f in unset {
            doc.remove(f);
        }
        Ok(true)
    }
    async fn delete(&mut self, t: &Target, key: &Key, _cascade: bool) -> Result<bool, StoreError> {
        let coll = self.0.docs.entry(t.collection.clone()).or_default();
        Ok(coll.remove(key).is_some())
    }
}

impl MemStore {
    /// The releases asked of the store so far, in order.
    pub fn released(&self) -> Vec<Finished> {
        self.data.lock().unwrap().released.clone()
    }

    /// Documents in `collection`.
    pub fn count(&self, collection: &str) -> usize {
        self.data
            .lock()
            .unwrap()
            .docs
            .get(collection)
            .map_or(0, BTreeMap::len)
    }
}

#[async_trait]
impl Store for MemStore {
    fn kind(&self) -> &'static str {
        "memory"
    }
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn claim(
        &self,
        request_id: &str,
        source: &SourceRef,
        plan: &[Range<usize>],
    ) -> Result<Claim, StoreError> {
        let mut data = self.data.lock().unwrap();
        let fresh = || {
            let claimed = Claimed {
                claimed_at_ms: crate::dedupe::unix_now_ms(),
                plan: plan.to_vec(),
                expires_at: None,
            };
            (source.clone(), claimed)
        };
        let now = crate::dedupe::unix_now();
        let (owner, claimed) = data
            .claims
            .entry(request_id.to_string())
            .and_modify(|(owner, claimed)| {
                // Released, past its window, and another record: replaced.
                if owner != source && claimed.expires_at.is_some_and(|e| e < now) {
                    (*owner, *claimed) = fresh();
                }
            })
            .or_insert_with(fresh);
        Ok(if owner == source {
            Claim::Owned(claimed.clone())
        } else {
            Claim::DuplicateOf(owner.clone())
        })
    }
    async fn release(&self, finished: &[Finished], window_secs: i64) -> Result<(), StoreError> {
        let mut data = self.data.lock().unwrap();
        let at = crate::dedupe::unix_now().saturating_add(window_secs);
        for f in finished {
            if let Some((_, c)) = data.claims.get_mut(&f.request_id) {
                if c.claimed_at_ms == f.generation {
                    c.expires_at = Some(at);
                }
            }
            data.released.push(f.clone());
        }
        Ok(())
    }
    async fn write_chunk(&self, chunk: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError> {
        let mut data = self.data.lock().unwrap();
        let id = (
            chunk.request.request_id.clone(),
            chunk.generation,
            chunk.index,
        );
        if let Some(event) = data.ledger.get(&id) {
            return Ok(ChunkCommit {
                event: event.clone(),
                replayed: true,
                json: None,
            });
        }
        // No await inside: the writer's futures complete at once.
        let applied = futures::executor::block_on(apply_items(&chunk, &mut MemWriter(&mut data)))
            .map_err(ApplyError::into_store_error)?;
        data.ledger.insert(id, applied.event.clone());
        // As a store whose ledger keeps the event's text gives it (the pipeline's tests then
        // publish through the shared bytes).
        let json = serde_json::to_string(&applied.event).ok();
        Ok(ChunkCommit {
            event: applied.event,
            replayed: false,
            json,
        })
    }
    async fn settle(
        &self,
        chunk: Arc<WriteChunk>,
        event: ProgressEvent,
    ) -> Result<ChunkCommit, StoreError> {
        let mut data = self.data.lock().unwrap();
        let id = (
            chunk.request.request_id.clone(),
            chunk.generation,
            chunk.index,
        );
        let replayed = data.ledger.contains_key(&id);
        let event = data.ledger.entry(id).or_insert(event).clone();
        Ok(ChunkCommit {
            event,
            replayed,
            json: None,
        })
    }
    async fn lookup(
        &self,
        t: &Target,
        keys: &[Key],
        _max_bytes: usize,
    ) -> Result<Vec<Found>, StoreError> {
        let data = self.data.lock().unwrap();
        let coll = data.docs.get(&t.collection);
        Ok(keys
            .iter()
            .map(|k| match coll.and_then(|c| c.get(k)) {
                Some(d) => Found::Doc(d.clone()),
                None => Found::Missing,
            })
            .collect())
    }
}
