//! What every case shares: the test collections and builders for items, chunks and events.
//!
//! The collections form a three-level cascade: `words` (key `text`) ← `definitions` (key `id`,
//! parent field `word`) ← `examples` (key `id`, parent field `definition`).

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_config::Config;
use sluice_pipeline::codes::ItemErrorCode;
use sluice_pipeline::contract::{ItemResult, ItemStatus, Op, Options, ProgressEvent};
use sluice_pipeline::request::{Item, ItemBody, Key, Request};
use sluice_pipeline::store::{ChunkCommit, Found, Target, WriteChunk};
use sluice_pipeline::{SourceRef, Store, StoreError};

/// The `[collections]` of every test store.
pub const COLLECTIONS: &str = "\
[collections.words]\nkey = 'text'\n\
[collections.definitions]\nkey = 'id'\nparent = 'words'\nparent_field = 'word'\n\
[collections.examples]\nkey = 'id'\nparent = 'definitions'\nparent_field = 'definition'\n";

/// The claim generation of chunks built here (any fixed value: the ledger keys on it).
pub const GENERATION: i64 = 1;

/// The test config (collections only).
pub fn config() -> Config {
    sluice_config::from_toml_str(COLLECTIONS).expect("the test config parses")
}

/// The target `collection`, with its children, as the pipeline resolves it from config.
pub fn target(collection: &str) -> Arc<Target> {
    Arc::new(Target::from_config(&config(), collection))
}

pub fn words() -> Arc<Target> {
    target("words")
}

pub fn definitions() -> Arc<Target> {
    target("definitions")
}

pub fn examples() -> Arc<Target> {
    target("examples")
}

pub fn src(offset: i64) -> SourceRef {
    SourceRef {
        topic: "requests".into(),
        partition: 0,
        offset,
    }
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// An item of `op` from its JSON shape: a document for create/upsert, `{key, set, unset}`
/// for update, `{key}` for delete/lookup.
pub fn item(index: usize, op: Op, v: Value, key_field: &str) -> Item {
    match op {
        Op::Create | Op::Upsert => raw_item(index, &v.to_string(), key_field),
        Op::Update => Item {
            index,
            key: Key::from_json(&v["key"]),
            body: ItemBody::Update {
                set: obj(&v["set"]),
                unset: v["unset"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|n| n.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            bytes: 10,
            decided: None,
        },
        Op::Delete | Op::Lookup => Item {
            index,
            key: Key::from_json(&v["key"]),
            body: ItemBody::Key,
            bytes: 10,
            decided: None,
        },
    }
}

/// A create/upsert item whose document is exactly `text` (kept byte for byte, as a producer
/// sent it).
pub fn raw_item(index: usize, text: &str, key_field: &str) -> Item {
    let v: Value = serde_json::from_str(text).expect("test documents are JSON");
    Item {
        index,
        key: Key::from_json(&v[key_field]),
        body: ItemBody::Doc(RawValue::from_string(text.to_string()).expect("JSON")),
        bytes: text.len(),
        decided: None,
    }
}

/// A one-chunk request of `op` on `target` (generation [`GENERATION`]).
pub fn chunk(
    id: &str,
    op: Op,
    target: Arc<Target>,
    items: Vec<Value>,
    options: Options,
) -> Arc<WriteChunk> {
    let items = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| item(i, op, v, &target.key_field))
        .collect();
    chunk_of(id, op, target, items, options)
}

/// A one-chunk request of `op` on `target` holding `items` as built.
pub fn chunk_of(
    id: &str,
    op: Op,
    target: Arc<Target>,
    items: Vec<Item>,
    options: Options,
) -> Arc<WriteChunk> {
    let n = items.len();
    let request = Request {
        request_id: id.into(),
        collection: target.collection.clone(),
        op,
        items,
        options,
    };
    Arc::new(WriteChunk {
        request: Arc::new(request),
        index: 0,
        chunks: 1,
        range: 0..n,
        source: src(1),
        target,
        window_secs: 60,
        generation: GENERATION,
    })
}

/// `chunk` under another claim generation.
pub fn with_generation(chunk: &WriteChunk, generation: i64) -> Arc<WriteChunk> {
    Arc::new(WriteChunk {
        generation,
        ..chunk.clone()
    })
}

/// The event the pipeline settles when a chunk's deadline passed: every item
/// `not_attempted` with `deadline_exceeded`.
pub fn deadline_event(chunk: &WriteChunk) -> ProgressEvent {
    chunk.event(
        chunk
            .items()
            .iter()
            .map(|i| {
                ItemResult::error(
                    i.index,
                    ItemStatus::NotAttempted,
                    ItemErrorCode::DeadlineExceeded,
                    "the request's deadline passed",
                    true,
                )
            })
            .collect(),
    )
}

/// The retry policy of these tests: transient errors (write conflicts) are retried as the
/// pipeline retries them (capped, jittered backoff).
fn policy() -> sluice_pipeline::retry::RetryPolicy {
    sluice_pipeline::retry::RetryPolicy {
        max_attempts: 200,
        transient_window: std::time::Duration::from_secs(60),
        initial: std::time::Duration::from_millis(5),
        max: std::time::Duration::from_millis(200),
    }
}

/// `write_chunk` as the pipeline calls it, transient errors retried.
pub async fn write(store: &dyn Store, c: Arc<WriteChunk>) -> Result<ChunkCommit, StoreError> {
    let never = tokio_util::sync::CancellationToken::new();
    policy()
        .run("write_chunk", &never, || store.write_chunk(c.clone()))
        .await
}

/// `settle` as the pipeline calls it, transient errors retried.
pub async fn settle(
    store: &dyn Store,
    c: Arc<WriteChunk>,
    event: ProgressEvent,
) -> Result<ChunkCommit, StoreError> {
    let never = tokio_util::sync::CancellationToken::new();
    policy()
        .run("settle", &never, || store.settle(c.clone(), event.clone()))
        .await
}

pub fn statuses(c: &ChunkCommit) -> Vec<ItemStatus> {
    c.event.items.iter().map(|i| i.status).collect()
}

/// The error code of item `i` of a commit, if it has one.
pub fn code(c: &ChunkCommit, i: usize) -> Option<&'static str> {
    c.event.items[i].error.as_ref().map(|e| e.code.as_str())
}

/// The document with string key `key`, if any.
pub async fn get(store: &dyn Store, t: &Target, key: &str) -> Option<Value> {
    get_key(store, t, Key::Str(key.into())).await
}

/// The document with `key`, if any (no byte budget).
pub async fn get_key(store: &dyn Store, t: &Target, key: Key) -> Option<Value> {
    let found = store
        .lookup(t, std::slice::from_ref(&key), usize::MAX)
        .await;
    match found
        .unwrap_or_else(|e| panic!("lookup of {key} in {}: {e}", t.collection))
        .pop()
    {
        Some(Found::Doc(d)) => Some(d),
        Some(Found::Missing) | None => None,
        Some(Found::TooLarge(n)) => panic!("a {n}-byte document is too large for no budget"),
    }
}

/// Creates `docs` in `target` (one chunk, request id `id`), asserting every item is `ok`.
pub async fn seed(store: &dyn Store, id: &str, target: Arc<Target>, docs: Vec<Value>) {
    let n = docs.len();
    let r = write(
        store,
        chunk(id, Op::Create, target, docs, Options::default()),
    )
    .await
    .unwrap();
    assert_eq!(statuses(&r), vec![ItemStatus::Ok; n], "seeding {id}");
}

/// Like [`seed`], with documents given as exact JSON text.
pub async fn seed_raw(store: &dyn Store, id: &str, target: Arc<Target>, docs: &[&str]) {
    let items = docs
        .iter()
        .enumerate()
        .map(|(i, d)| raw_item(i, d, &target.key_field))
        .collect();
    let c = chunk_of(id, Op::Create, target, items, Options::default());
    let r = write(store, c).await.unwrap();
    assert_eq!(
        statuses(&r),
        vec![ItemStatus::Ok; docs.len()],
        "seeding {id}"
    );
}
