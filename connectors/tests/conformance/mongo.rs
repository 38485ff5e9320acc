//! Cases only the MongoDB store has: chunks too large for one transaction (split in halves,
//! resumed after a crash, raced), items the server or the JSON→BSON converter refuses (each
//! fails alone), and how documents are laid out as BSON.

use std::sync::Arc;

use serde_json::{json, Value};
use sluice_connectors::mongo::MongoStore;
use sluice_pipeline::contract::{ItemStatus, Op, Options};
use sluice_pipeline::store::WriteChunk;
use sluice_pipeline::Store;

use crate::common::*;
use crate::own::OwnServer;
use crate::{mongo_connect, mongo_store};

/// A SecantusDB of its own with a 24 MiB cache: a transaction whose writes pass ~3.6 MB
/// (counted twice, documents and oplog) fails with 388 `TransactionTooLargeForCache`, as
/// mongod does when a transaction outgrows its cache. Stopped on drop.
struct SmallCache {
    store: Arc<MongoStore>,
    _server: OwnServer,
}

async fn small_cache() -> SmallCache {
    let server = OwnServer::start("--cache-size 24M");
    let store = Arc::new(mongo_connect(&server.uri).await);
    SmallCache {
        store,
        _server: server,
    }
}

/// A create chunk of 400 items of 10 KiB (keys `{id}{i}`): too large for one transaction
/// on [`small_cache`], fine in halves or quarters.
fn big_chunk(id: &str) -> Arc<WriteChunk> {
    chunk(
        id,
        Op::Create,
        words(),
        padded(id, 400, 10),
        Options::default(),
    )
}

/// `n` create items of about `kib` KiB each, keys `{prefix}{i}`.
fn padded(prefix: &str, n: usize, kib: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"text": format!("{prefix}{i}"), "pad": "x".repeat(kib * 1024)}))
        .collect()
}

async fn count(store: &MongoStore, collection: &str) -> u64 {
    store
        .database()
        .collection::<mongodb::bson::Document>(collection)
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap()
}

/// A chunk the server refuses as one transaction is applied in halves, every item once,
/// with one event for the whole chunk; a re-read replays it from the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn a_chunk_too_large_for_one_transaction_is_split() {
    let server = small_cache().await;
    let s = &server.store;
    let c = big_chunk("big");
    let first = write(&**s, c.clone()).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.event.items.len(), 400);
    assert!(statuses(&first).iter().all(|st| *st == ItemStatus::Ok));
    assert_eq!(
        first
            .event
            .items
            .iter()
            .map(|i| i.index)
            .collect::<Vec<_>>(),
        (0..400).collect::<Vec<_>>(),
        "one event, items in order"
    );
    assert_eq!(count(s, "words").await, 400);
    let again = write(&**s, c).await.unwrap();
    assert!(again.replayed, "a re-read comes from the ledger");
    assert_eq!(again.event, first.event);
    assert_eq!(count(s, "words").await, 400);
}

/// A crash between two halves of a split chunk: the rerun applies only what is missing
/// (a re-applied create would report `exists`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn a_split_chunk_resumes_where_it_stopped() {
    use mongodb::bson::doc;
    let server = small_cache().await;
    let s = &server.store;
    let c = big_chunk("resume");
    let first = write(&**s, c.clone()).await.unwrap();
    // Undo what a crash after the first half would not have committed: the second half's
    // ledger entry and documents, and the chunk's final event (back to "split").
    let db = s.database();
    let ledger = db.collection::<mongodb::bson::Document>("sluice_ledger");
    // Ledger keys: `{generation}:{chunk}:{request_id}` for the chunk, with `.{from}-{to}`
    // after the chunk index for a part of it.
    let whole = format!("{GENERATION}:0:resume");
    let mut later_parts = Vec::new();
    let mut cursor = ledger.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let entry = cursor.deserialize_current().unwrap();
        let Ok(id) = entry.get_str("_id") else {
            continue;
        };
        let from = id
            .strip_prefix(&format!("{GENERATION}:0."))
            .and_then(|rest| rest.strip_suffix(":resume"))
            .and_then(|range| range.split('-').next())
            .and_then(|from| from.parse::<usize>().ok());
        if from.is_some_and(|from| from >= 200) {
            later_parts.push(id.to_string());
        }
    }
    let gone = ledger
        .delete_many(doc! {"_id": {"$in": later_parts}})
        .await
        .unwrap();
    assert!(gone.deleted_count >= 1, "the chunk was split");
    let marked = ledger
        .update_one(
            doc! {"_id": whole},
            doc! {"$set": {"split": true}, "$unset": {"event": ""}},
        )
        .await
        .unwrap();
    assert_eq!(marked.matched_count, 1, "the chunk's own ledger entry");
    let keys: Vec<String> = (200..400).map(|i| format!("resume{i}")).collect();
    db.collection::<mongodb::bson::Document>("words")
        .delete_many(doc! {"text": {"$in": keys}})
        .await
        .unwrap();
    assert_eq!(count(s, "words").await, 200);

    let rerun = write(&**s, c).await.unwrap();
    assert!(!rerun.replayed, "the second half was applied now");
    assert_eq!(
        rerun.event, first.event,
        "no item of the first half is re-applied"
    );
    assert_eq!(count(s, "words").await, 400);
}

/// Two owners racing on a chunk that must be split: every item is applied once and both
/// report the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn racing_owners_of_a_split_chunk_apply_once() {
    let server = small_cache().await;
    let s = &server.store;
    let c = big_chunk("race-big");
    let (a, b) = tokio::join!(write(&**s, c.clone()), write(&**s, c.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.event, b.event);
    assert!(statuses(&a).iter().all(|st| *st == ItemStatus::Ok));
    assert_eq!(count(s, "words").await, 400);
}

/// One item too large for any transaction fails alone, with a permanent store error; the
/// items around it are applied. An atomic request that is too large applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn an_item_too_large_for_a_transaction_fails_alone() {
    let server = small_cache().await;
    let s = &server.store;
    let mut items = padded("s", 6, 1);
    items[3] = json!({"text": "huge", "pad": "x".repeat(3 << 20)});
    let c = chunk(
        "one-big",
        Op::Create,
        words(),
        items.clone(),
        Options::default(),
    );
    let r = write(&**s, c).await.unwrap();
    let st = statuses(&r);
    assert_eq!(st[3], ItemStatus::Failed);
    let err = r.event.items[3].error.as_ref().unwrap();
    assert_eq!(err.code.as_str(), "store_error");
    assert!(
        err.message.contains("transaction_too_large"),
        "{}",
        err.message
    );
    assert!(!err.retryable);
    assert!(
        st.iter()
            .enumerate()
            .all(|(i, x)| i == 3 || *x == ItemStatus::Ok),
        "{st:?}"
    );
    assert_eq!(count(s, "words").await, 5);

    let atomic = Options {
        atomic: true,
        ..Options::default()
    };
    let mut items = padded("a", 6, 1);
    items[2] = json!({"text": "huge2", "pad": "x".repeat(3 << 20)});
    let c = chunk("atomic-big", Op::Create, words(), items, atomic);
    let e = write(&**s, c).await.unwrap_err();
    assert_eq!(e.code, "transaction_too_large");
    assert_eq!(
        count(s, "words").await,
        5,
        "an atomic request applies nothing"
    );
}

/// An integer past 64 bits: serde's `RawValue` accepts it, the JSON→BSON converter refuses
/// it (validate keeps it out in production; SQLite stores it as text).
const PAST_I64: &str = "18446744073709551615";

/// A create or upsert chunk on `words` whose middle item holds [`PAST_I64`].
fn refused_chunk(id: &str, op: Op, options: Options) -> Arc<WriteChunk> {
    let docs = [
        format!(r#"{{"text":"{id}-a"}}"#),
        format!(r#"{{"text":"{id}-bad","n":{PAST_I64}}}"#),
        format!(r#"{{"text":"{id}-b"}}"#),
    ];
    let items = docs
        .iter()
        .enumerate()
        .map(|(i, d)| raw_item(i, d, "text"))
        .collect();
    chunk_of(id, op, words(), items, options)
}

/// An item the store refuses on its own fails alone, with a permanent `store_error`; the
/// other items of its chunk commit, and a re-read replays the same event — for create,
/// upsert and update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn an_item_the_store_refuses_fails_alone() {
    let store = mongo_store().await;
    let s: &dyn Store = &store;
    for op in [Op::Create, Op::Upsert] {
        let id = format!("refused-{}", op.as_str());
        let c = refused_chunk(&id, op, Options::default());
        let r = write(s, c.clone()).await.unwrap();
        assert_eq!(
            statuses(&r),
            vec![ItemStatus::Ok, ItemStatus::Failed, ItemStatus::Ok],
            "{id}: {:?}",
            r.event
        );
        let err = r.event.items[1].error.as_ref().unwrap();
        assert_eq!(err.code.as_str(), "store_error");
        assert!(!err.retryable, "a refused item will be refused again");
        assert!(get(s, &words(), &format!("{id}-a")).await.is_some());
        assert!(get(s, &words(), &format!("{id}-b")).await.is_some());
        assert_eq!(get(s, &words(), &format!("{id}-bad")).await, None);
        let again = write(s, c).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.event, r.event);
    }

    let set = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
    let c = chunk(
        "refused-update",
        Op::Update,
        words(),
        vec![
            json!({"key": "refused-create-a", "set": {"m": 1}}),
            json!({"key": "refused-create-b", "set": set(&format!(r#"{{"n":{PAST_I64}}}"#))}),
            json!({"key": "refused-ghost", "set": {"m": 1}}),
        ],
        Options::default(),
    );
    let r = write(s, c).await.unwrap();
    assert_eq!(
        statuses(&r),
        vec![ItemStatus::Ok, ItemStatus::Failed, ItemStatus::NotFound],
        "{:?}",
        r.event
    );
    assert_eq!(code(&r, 1), Some("store_error"));
    assert_eq!(
        get(s, &words(), "refused-create-a").await,
        Some(json!({"text": "refused-create-a", "m": 1}))
    );
    assert_eq!(
        get(s, &words(), "refused-create-b").await,
        Some(json!({"text": "refused-create-b"})),
        "the refused update changed nothing"
    );
}

/// A refused item counts as a failure for the request's options: `stop_on_error` stops the
/// items after it, an `atomic` chunk applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn a_refused_item_stops_or_aborts_as_any_failure() {
    let store = mongo_store().await;
    let s: &dyn Store = &store;
    let stop = Options {
        stop_on_error: true,
        ..Options::default()
    };
    let r = write(s, refused_chunk("rs", Op::Create, stop))
        .await
        .unwrap();
    assert_eq!(
        statuses(&r),
        vec![ItemStatus::Ok, ItemStatus::Failed, ItemStatus::NotAttempted]
    );
    assert_eq!(code(&r, 2), Some("stopped"));
    assert!(get(s, &words(), "rs-a").await.is_some());
    assert_eq!(get(s, &words(), "rs-b").await, None);

    let atomic = Options {
        atomic: true,
        ..Options::default()
    };
    let r = write(s, refused_chunk("ra", Op::Create, atomic))
        .await
        .unwrap();
    assert_eq!(
        statuses(&r),
        vec![
            ItemStatus::NotAttempted,
            ItemStatus::Failed,
            ItemStatus::NotAttempted
        ]
    );
    assert_eq!(
        get(s, &words(), "ra-a").await,
        None,
        "atomic: nothing applied"
    );
}

/// JSON becomes BSON without Extended JSON reading: `{"$numberLong":"5"}` is a sub-document
/// with a string field named `$numberLong`; integers are Int64, fractions (1.0 too) Double.
/// (Read as raw bytes, so that no reader interprets anything.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn documents_are_stored_as_plain_bson() {
    use mongodb::bson::{doc, RawBsonRef, RawDocumentBuf};
    let store = mongo_store().await;
    seed_raw(
        &store,
        "plain",
        words(),
        &[r#"{"text":"plain","a":{"$numberLong":"5"},"o":{"$oid":"507f1f77bcf86cd799439011"},"i":5,"f":1.0}"#],
    )
    .await;
    let d: RawDocumentBuf = store
        .database()
        .collection::<RawDocumentBuf>("words")
        .find_one(doc! {"text": "plain"})
        .await
        .unwrap()
        .expect("the document");
    let a = d.get_document("a").unwrap();
    assert_eq!(a.get_str("$numberLong").unwrap(), "5", "a string field");
    let o = d.get_document("o").unwrap();
    assert_eq!(o.get_str("$oid").unwrap(), "507f1f77bcf86cd799439011");
    assert!(matches!(d.get("i").unwrap(), Some(RawBsonRef::Int64(5))));
    assert!(matches!(d.get("f").unwrap(), Some(RawBsonRef::Double(f)) if f == 1.0));
}
