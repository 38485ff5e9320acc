//! A property test of the document model: generated requests (create, upsert, update,
//! delete, lookup over a small key space of strings and integers, on the three cascading
//! collections) whose documents follow the model — field names `[a-z_]{1,8}` but `_id`;
//! null, booleans, 64-bit integers, finite doubles, Unicode strings, arrays and objects
//! nested to depth 3 — are cut into chunks and applied to the SQLite store, to the MongoDB
//! store when a server is configured, and to the in-memory [`Model`] of the contract.
//!
//! Asserted: every chunk's event is the same on both stores (and has the model's statuses),
//! every lookup finds the same documents, the stores hold the same data after every request,
//! and every chunk replays from the ledger unchanged (by `write_chunk` and by `settle`).
//! Without a MongoDB server the SQLite store is still checked against the model and for
//! exact replays. A failure prints the minimal case, one request per line, as sent, and the
//! run's seed (`PROPTEST_RNG_SEED` repeats a run; `PROPTEST_CASES` changes the budget).

use std::fmt;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use sluice_connectors::mongo::MongoStore;
use sluice_pipeline::codes::ItemErrorCode;
use sluice_pipeline::contract::{ItemResult, ItemStatus, Op, Options, ProgressEvent};
use sluice_pipeline::dedupe::mark_duplicate_items;
use sluice_pipeline::request::{Key, Request};
use sluice_pipeline::store::WriteChunk;
use sluice_pipeline::Store;

use crate::common::*;
use crate::property_model::{Coll, Model};

/// Cases per run (`PROPTEST_CASES` overrides): a fixed budget that keeps the test well under
/// a minute against SecantusDB.
const CASES: u32 = 32;

/// Every key the generated requests use.
fn all_keys() -> Vec<Key> {
    vec![
        Key::Int(0),
        Key::Int(1),
        Key::Str("1".into()),
        Key::Str("k".into()),
    ]
}

/// One generated request.
#[derive(Clone)]
struct Req {
    coll: Coll,
    op: Op,
    /// The items as a producer sends them.
    items: Vec<Value>,
    options: Options,
    /// `chunk.max_items` when this request was cut.
    max_items: usize,
}

impl fmt::Debug for Req {
    /// The request as its input line (and the chunk size it was cut with).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = json!({
            "collection": self.coll.name(),
            "op": self.op.as_str(),
            "items": self.items,
            "options": self.options,
        });
        write!(f, "\n  (max_items {}) {line}", self.max_items)
    }
}

fn field_name() -> impl Strategy<Value = String> {
    // Mostly a few names, so that updates and unsets meet existing fields.
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "c", "d_e"]).prop_map(String::from),
        1 => "[a-z_]{1,8}",
    ]
    .prop_filter("`_id` is reserved", |n| n != "_id")
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,6}",
        prop::sample::select(vec![
            "",
            "\u{0}",
            "\u{2028}",
            "😀",
            "é",
            "$numberLong",
            "a.b",
            "1",
            "k",
            "{\"a\":1}",
        ])
        .prop_map(String::from),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-2i64..4).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![0.0, -0.0, 1.0, 0.5, 1e300, 5e-324]).prop_map(Value::from),
    ]
}

/// A value of the document model, arrays and objects nested at most twice (so documents,
/// objects themselves, nest to depth 3).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            fields(inner).prop_map(Value::Object),
        ]
    })
}

fn fields(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(field_name(), v, 0..4).prop_map(|m| m.into_iter().collect())
}

fn key() -> impl Strategy<Value = Key> {
    prop::sample::select(all_keys())
}

/// What a child's parent field holds: mostly a key, sometimes a near miss of one (a double,
/// an array or an object holding it), which a cascade must not match.
fn parent_ref() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => key().prop_map(|k| k.to_json()),
        1 => Just(json!(1.0)),
        1 => key().prop_map(|k| json!([k.to_json()])),
        1 => key().prop_map(|k| json!({"a": k.to_json()})),
    ]
}

fn document(coll: Coll) -> impl Strategy<Value = Value> {
    let parent = proptest::option::weighted(0.85, parent_ref());
    (fields(value()), key(), parent).prop_map(move |(mut doc, key, parent)| {
        if let (Some(field), Some(parent)) = (coll.parent_field(), parent) {
            doc.insert(field.into(), parent);
        }
        doc.insert(coll.key_field().into(), key.to_json());
        Value::Object(doc)
    })
}

fn update(coll: Coll) -> impl Strategy<Value = Value> {
    let unset = prop::collection::vec(field_name(), 0..3);
    let parent = proptest::option::weighted(0.3, parent_ref());
    (key(), fields(value()), parent, unset).prop_filter_map(
        "an update needs `set` or `unset`",
        move |(key, mut set, parent, unset)| {
            // As validate requires: the key is immutable, no name is set and unset or
            // unset twice.
            set.remove(coll.key_field());
            if let (Some(field), Some(parent)) = (coll.parent_field(), parent) {
                set.insert(field.into(), parent);
            }
            let mut names: Vec<String> = Vec::new();
            for n in unset {
                if n != coll.key_field() && !set.contains_key(&n) && !names.contains(&n) {
                    names.push(n);
                }
            }
            (!set.is_empty() || !names.is_empty())
                .then(|| json!({"key": key.to_json(), "set": set, "unset": names}))
        },
    )
}

fn options(op: Op) -> impl Strategy<Value = Options> {
    let flags = (any::<bool>(), any::<bool>(), any::<bool>());
    let cascade = prop::bool::weighted(0.75);
    (flags, cascade, prop::bool::weighted(0.8)).prop_map(
        move |((atomic, skip, stop), cascade, dedupe)| {
            // Only the options validate lets through for `op`.
            Options {
                atomic: atomic && op.writes(),
                skip_existing: skip && op == Op::Create,
                cascade: cascade && op == Op::Delete,
                stop_on_error: stop,
                dedupe,
                deadline_ms: None,
            }
        },
    )
}

fn request() -> impl Strategy<Value = Req> {
    let coll = prop_oneof![2 => Just(Coll::Words), 2 => Just(Coll::Definitions), 1 => Just(Coll::Examples)];
    let op = prop_oneof![
        3 => Just(Op::Create),
        2 => Just(Op::Upsert),
        2 => Just(Op::Update),
        3 => Just(Op::Delete),
        1 => Just(Op::Lookup),
    ];
    (coll, op, 1usize..4).prop_flat_map(|(coll, op, max_items)| {
        let item = match op {
            Op::Create | Op::Upsert => document(coll).boxed(),
            Op::Update => update(coll).boxed(),
            Op::Delete | Op::Lookup => key().prop_map(|k| json!({"key": k.to_json()})).boxed(),
        };
        (prop::collection::vec(item, 1..6), options(op)).prop_map(move |(items, options)| Req {
            coll,
            op,
            items,
            options,
            max_items,
        })
    })
}

/// The validated request: items read from their text as validate reads them, repeated keys
/// marked `duplicate` (with `dedupe`).
fn build(request_id: String, req: &Req) -> Arc<Request> {
    let items = req
        .items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v: Value = serde_json::from_str(&v.to_string()).expect("generated JSON parses");
            item(i, req.op, v, req.coll.key_field())
        })
        .collect();
    let mut request = Request {
        request_id,
        collection: req.coll.name().into(),
        op: req.op,
        items,
        options: req.options.clone(),
    };
    mark_duplicate_items(&mut request);
    Arc::new(request)
}

/// The chunk plan: one chunk for an atomic request, else `max_items` items a chunk.
fn plan(n: usize, max_items: usize, atomic: bool) -> Vec<std::ops::Range<usize>> {
    let size = if atomic { n } else { max_items };
    (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
}

/// What the pipeline settles for a chunk after an earlier chunk failed with `stop_on_error`.
fn stopped_event(chunk: &WriteChunk) -> ProgressEvent {
    let items = chunk
        .items()
        .iter()
        .map(|item| match &item.decided {
            Some(d) => (**d).clone(),
            None => ItemResult::error(
                item.index,
                ItemStatus::NotAttempted,
                ItemErrorCode::Stopped,
                "an earlier item failed and stop_on_error is set",
                true,
            ),
        })
        .collect();
    chunk.event(items)
}

type Summary = Vec<(usize, ItemStatus, Option<ItemErrorCode>, Option<usize>)>;

/// What the model decides of an event: statuses, codes and `of` (not the messages).
fn summary(e: &ProgressEvent) -> Summary {
    e.items
        .iter()
        .map(|i| (i.index, i.status, i.error.as_ref().map(|e| e.code), i.of))
        .collect()
}

fn fail(what: impl fmt::Display) -> impl FnOnce(sluice_pipeline::StoreError) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

/// The stores of one case.
struct Stores {
    _dir: tempfile::TempDir,
    sqlite: sluice_connectors::sqlite::SqliteStore,
    mongo: Option<MongoStore>,
}

impl Stores {
    fn all(&self) -> Vec<(&'static str, &dyn Store)> {
        let mut v: Vec<(&'static str, &dyn Store)> = vec![("sqlite", &self.sqlite)];
        if let Some(m) = &self.mongo {
            v.push(("mongodb", m));
        }
        v
    }
}

/// Looks `keys` up in `coll` on every store: each must find what the model holds.
async fn lookups_agree(
    stores: &Stores,
    model: &Model,
    coll: Coll,
    keys: &[Key],
    when: &str,
) -> Result<(), TestCaseError> {
    let expected = model.lookup(coll, keys);
    for (name, store) in stores.all() {
        let found = store
            .lookup(&target(coll.name()), keys, usize::MAX)
            .await
            .map_err(fail(format!("{when}: lookup on {name}")))?;
        prop_assert_eq!(
            &found,
            &expected,
            "{}: lookup of {:?} in {} on {} (left) vs the model",
            when,
            keys,
            coll.name(),
            name
        );
    }
    Ok(())
}

/// Every document of every collection is the same on every store and in the model.
async fn data_agrees(stores: &Stores, model: &Model, when: &str) -> Result<(), TestCaseError> {
    for coll in Coll::ALL {
        lookups_agree(stores, model, coll, &all_keys(), when).await?;
    }
    Ok(())
}

/// Runs one case: every request, then every chunk's replay.
async fn check(reqs: &[Req], mongo_uri: Option<&str>, case: u32) -> Result<(), TestCaseError> {
    let (dir, sqlite) = crate::sqlite_store();
    let mongo = match mongo_uri {
        Some(uri) => Some(crate::mongo_connect(uri).await),
        None => None,
    };
    let stores = Stores {
        _dir: dir,
        sqlite,
        mongo,
    };
    let mut model = Model::default();
    let mut ledger: Vec<(Arc<WriteChunk>, ProgressEvent)> = Vec::new();
    for (j, req) in reqs.iter().enumerate() {
        let when = format!("request {j}");
        let request = build(format!("p{case}-{j}"), req);
        let plan = plan(request.items.len(), req.max_items, request.options.atomic);
        if req.op == Op::Lookup {
            for range in plan {
                let keys: Vec<Key> = request.items[range]
                    .iter()
                    .filter(|i| i.decided.is_none())
                    .filter_map(|i| i.key.clone())
                    .collect();
                lookups_agree(&stores, &model, req.coll, &keys, &when).await?;
            }
            continue;
        }
        let mut failed = false;
        for (index, range) in plan.iter().enumerate() {
            let chunk = Arc::new(WriteChunk {
                request: request.clone(),
                index,
                chunks: plan.len(),
                range: range.clone(),
                source: src(j as i64),
                target: target(req.coll.name()),
                window_secs: 60,
                generation: j as i64 + 1,
            });
            let when = format!("{when} chunk {index}");
            let stopped = failed && request.options.stop_on_error;
            let expected = if stopped {
                stopped_event(&chunk)
            } else {
                chunk.event(model.apply(req.coll, &chunk))
            };
            let mut first: Option<ProgressEvent> = None;
            for (name, store) in stores.all() {
                let commit = if stopped {
                    settle(store, chunk.clone(), expected.clone()).await
                } else {
                    write(store, chunk.clone()).await
                }
                .map_err(fail(format!("{when} on {name}")))?;
                prop_assert!(
                    !commit.replayed,
                    "{}: first write on {} replayed",
                    when,
                    name
                );
                prop_assert_eq!(
                    summary(&commit.event),
                    summary(&expected),
                    "{}: {} (left) vs the model: {:?}",
                    &when,
                    name,
                    &commit.event
                );
                match &first {
                    None => first = Some(commit.event),
                    Some(e) => prop_assert_eq!(&commit.event, e, "{}: {} vs sqlite", &when, name),
                }
            }
            let event = first.expect("sqlite ran");
            failed |= event.items.iter().any(|i| i.status == ItemStatus::Failed);
            ledger.push((chunk, event));
        }
        data_agrees(&stores, &model, &when).await?;
    }

    for (chunk, event) in &ledger {
        let when = format!(
            "replay of {} chunk {}",
            chunk.request.request_id, chunk.index
        );
        for (name, store) in stores.all() {
            let again = write(store, chunk.clone())
                .await
                .map_err(fail(format!("{when} on {name}")))?;
            prop_assert!(
                again.replayed,
                "{}: write_chunk on {} applied again",
                &when,
                name
            );
            prop_assert_eq!(&again.event, event, "{}: write_chunk on {}", &when, name);
            let settled = settle(store, chunk.clone(), deadline_event(chunk))
                .await
                .map_err(fail(format!("{when} (settle) on {name}")))?;
            prop_assert!(settled.replayed, "{}: settle on {} overwrote", &when, name);
            prop_assert_eq!(&settled.event, event, "{}: settle on {}", &when, name);
        }
    }
    data_agrees(&stores, &model, "after the replays").await?;
    if let Some(m) = &stores.mongo {
        // Best effort: the server is shared by every test of the run.
        let _ = m.database().drop().await;
    }
    Ok(())
}

/// Generated requests mean on SQLite what they mean in the model, and replay exactly.
#[test]
fn generated_requests_agree_with_the_model_on_sqlite() {
    run_generated(None);
}

/// Generated requests mean the same on SQLite, on MongoDB and in the model, and replay
/// exactly on both.
#[test]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn generated_requests_agree_on_every_store() {
    run_generated(Some(crate::mongo_uri()));
}

/// Runs the generated cases against SQLite and the model, and MongoDB when `uri` is given.
fn run_generated(uri: Option<String>) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    // New cases every run, but any run can be repeated: the seed is printed.
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
    eprintln!("property test: {cases} cases, seed {seed} (PROPTEST_RNG_SEED={seed} repeats them)");
    let config = ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        // Each shrink step reruns a case against the servers: bounded.
        max_shrink_iters: 200,
        max_shrink_time: 120_000,
        // Nothing written into the source tree; the failure message holds the case.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut runner = TestRunner::new(config);
    let case = std::cell::Cell::new(0u32);
    let result = runner.run(&prop::collection::vec(request(), 1..16), |reqs| {
        case.set(case.get() + 1);
        runtime.block_on(check(&reqs, uri.as_deref(), case.get()))
    });
    if let Err(e) = result {
        panic!("{e}\n(seed {seed}: PROPTEST_RNG_SEED={seed} repeats this run)");
    }
}
