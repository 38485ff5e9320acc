//! The store conformance suite: what every `Store` must do, asserted through the trait alone.
//! `sqlite_*` tests run it against the SQLite store; the MongoDB store runs the same functions.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use sluice_pipeline::contract::{ItemStatus, Op, Options};
use sluice_pipeline::request::{Item, ItemBody, Key, Request};
use sluice_pipeline::store::{Claim, Target, WriteChunk};
use sluice_pipeline::{SourceRef, Store};

fn words() -> Arc<Target> {
    Arc::new(Target {
        collection: "words".into(),
        key_field: "text".into(),
        children: vec![("definitions".into(), "word".into())],
    })
}

fn definitions() -> Arc<Target> {
    Arc::new(Target {
        collection: "definitions".into(),
        key_field: "id".into(),
        children: vec![],
    })
}

fn src(offset: i64) -> SourceRef {
    SourceRef {
        topic: "requests".into(),
        partition: 0,
        offset,
    }
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn item(index: usize, op: Op, v: Value, key_field: &str) -> Item {
    let (key, body) = match op {
        Op::Create | Op::Upsert => (
            Key::from_json(&v[key_field]),
            ItemBody::Doc(serde_json::value::to_raw_value(&v).unwrap()),
        ),
        Op::Update => (
            Key::from_json(&v["key"]),
            ItemBody::Update {
                set: obj(v["set"].clone()),
                unset: vec![],
            },
        ),
        Op::Delete | Op::Lookup => (Key::from_json(&v["key"]), ItemBody::Key),
    };
    Item {
        index,
        key,
        body,
        bytes: 10,
        decided: None,
    }
}

fn chunk(
    id: &str,
    op: Op,
    target: Arc<Target>,
    items: Vec<Value>,
    options: Options,
) -> Arc<WriteChunk> {
    let items: Vec<Item> = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| item(i, op, v, &target.key_field))
        .collect();
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
        expires_at: i64::MAX / 2,
    })
}

/// `write_chunk` as the pipeline calls it: transient errors (write conflicts) are retried with
/// the pipeline's own policy (capped, jittered backoff).
async fn write(
    store: &dyn Store,
    c: Arc<WriteChunk>,
) -> Result<sluice_pipeline::store::ChunkCommit, sluice_pipeline::StoreError> {
    let policy = sluice_pipeline::retry::RetryPolicy {
        max_attempts: 200,
        transient_window: std::time::Duration::from_secs(60),
        initial: std::time::Duration::from_millis(5),
        max: std::time::Duration::from_millis(200),
    };
    let never = tokio_util::sync::CancellationToken::new();
    policy
        .run("write_chunk", &never, || store.write_chunk(c.clone()))
        .await
}

fn statuses(c: &sluice_pipeline::store::ChunkCommit) -> Vec<ItemStatus> {
    c.event.items.iter().map(|i| i.status).collect()
}

async fn get(store: &dyn Store, t: &Target, key: &str) -> Option<Value> {
    store
        .lookup(t, &[Key::Str(key.into())])
        .await
        .unwrap()
        .pop()
        .flatten()
}

pub async fn commit_is_visible(store: Arc<dyn Store>) {
    let c = chunk(
        "c1",
        Op::Create,
        words(),
        vec![json!({"text": "a", "n": 1}), json!({"text": "b"})],
        Options::default(),
    );
    let r = write(&*store, c).await.unwrap();
    assert!(!r.replayed);
    assert_eq!(statuses(&r), vec![ItemStatus::Ok, ItemStatus::Ok]);
    assert_eq!(
        get(&*store, &words(), "a").await,
        Some(json!({"text": "a", "n": 1}))
    );
    assert_eq!(get(&*store, &words(), "zz").await, None);
}

pub async fn ledger_makes_chunks_idempotent(store: Arc<dyn Store>) {
    let c = chunk(
        "idem",
        Op::Create,
        words(),
        vec![json!({"text": "i1"})],
        Options::default(),
    );
    let first = write(&*store, c.clone()).await.unwrap();
    // A re-executed create would now fail with `exists`: an `ok` proves it came from the ledger.
    let again = write(&*store, c).await.unwrap();
    assert!(again.replayed, "second run must come from the ledger");
    assert_eq!(
        again.event, first.event,
        "the stored event is returned unchanged"
    );
    assert_eq!(statuses(&again), vec![ItemStatus::Ok]);
}

pub async fn racing_owners_apply_once(store: Arc<dyn Store>) {
    let c = chunk(
        "race",
        Op::Create,
        words(),
        vec![json!({"text": "r1"}), json!({"text": "r2"})],
        Options::default(),
    );
    let (a, b) = tokio::join!(write(&*store, c.clone()), write(&*store, c.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        [a.replayed, b.replayed].iter().filter(|r| !**r).count(),
        1,
        "exactly one applies"
    );
    assert_eq!(a.event, b.event);
    assert_eq!(
        statuses(&a),
        vec![ItemStatus::Ok, ItemStatus::Ok],
        "the loser reports the winner's result, not `exists`"
    );
}

pub async fn create_reports_exists_or_skipped(store: Arc<dyn Store>) {
    let seed = chunk(
        "seed-e",
        Op::Create,
        words(),
        vec![json!({"text": "e1", "v": 1})],
        Options::default(),
    );
    write(&*store, seed).await.unwrap();
    let dup = chunk(
        "dup-e",
        Op::Create,
        words(),
        vec![json!({"text": "e1", "v": 2}), json!({"text": "e2"})],
        Options::default(),
    );
    let r = write(&*store, dup).await.unwrap();
    assert_eq!(statuses(&r), vec![ItemStatus::Failed, ItemStatus::Ok]);
    assert_eq!(
        r.event.items[0].error.as_ref().unwrap().code.as_str(),
        "exists"
    );
    let skip = Options {
        skip_existing: true,
        ..Options::default()
    };
    let r = store
        .write_chunk(chunk(
            "skip-e",
            Op::Create,
            words(),
            vec![json!({"text": "e1", "v": 3})],
            skip,
        ))
        .await
        .unwrap();
    assert_eq!(statuses(&r), vec![ItemStatus::Skipped]);
    assert_eq!(
        get(&*store, &words(), "e1").await.unwrap()["v"],
        json!(1),
        "existing document untouched"
    );
}

pub async fn missing_keys_are_not_found(store: Arc<dyn Store>) {
    let upd = chunk(
        "nf-u",
        Op::Update,
        words(),
        vec![json!({"key": "ghost", "set": {"a": 1}})],
        Options::default(),
    );
    assert_eq!(
        statuses(&write(&*store, upd).await.unwrap()),
        vec![ItemStatus::NotFound]
    );
    let del = chunk(
        "nf-d",
        Op::Delete,
        words(),
        vec![json!({"key": "ghost"})],
        Options::default(),
    );
    assert_eq!(
        statuses(&write(&*store, del).await.unwrap()),
        vec![ItemStatus::NotFound]
    );
    assert_eq!(get(&*store, &words(), "ghost").await, None);
}

pub async fn update_and_upsert(store: Arc<dyn Store>) {
    store
        .write_chunk(chunk(
            "uu-c",
            Op::Create,
            words(),
            vec![json!({"text": "u1", "a": 1, "b": 2})],
            Options::default(),
        ))
        .await
        .unwrap();
    let c = chunk(
        "uu-u",
        Op::Update,
        words(),
        vec![json!({"key": "u1", "set": {"a": 9}})],
        Options::default(),
    );
    let r = write(&*store, c).await.unwrap();
    assert_eq!(statuses(&r), vec![ItemStatus::Ok]);
    assert_eq!(
        get(&*store, &words(), "u1").await,
        Some(json!({"text": "u1", "a": 9, "b": 2}))
    );
    let up = chunk(
        "uu-p",
        Op::Upsert,
        words(),
        vec![json!({"text": "u1", "z": 0}), json!({"text": "u2"})],
        Options::default(),
    );
    assert_eq!(
        statuses(&write(&*store, up).await.unwrap()),
        vec![ItemStatus::Ok, ItemStatus::Ok]
    );
    assert_eq!(
        get(&*store, &words(), "u1").await,
        Some(json!({"text": "u1", "z": 0})),
        "upsert replaces"
    );
    assert_eq!(
        get(&*store, &words(), "u2").await,
        Some(json!({"text": "u2"}))
    );
}

pub async fn atomic_failure_applies_nothing(store: Arc<dyn Store>) {
    store
        .write_chunk(chunk(
            "at-seed",
            Op::Create,
            words(),
            vec![json!({"text": "at2"})],
            Options::default(),
        ))
        .await
        .unwrap();
    let atomic = Options {
        atomic: true,
        ..Options::default()
    };
    let c = chunk(
        "at",
        Op::Create,
        words(),
        vec![
            json!({"text": "at1"}),
            json!({"text": "at2"}),
            json!({"text": "at3"}),
        ],
        atomic,
    );
    let r = write(&*store, c.clone()).await.unwrap();
    assert_eq!(
        statuses(&r),
        vec![
            ItemStatus::NotAttempted,
            ItemStatus::Failed,
            ItemStatus::NotAttempted
        ]
    );
    assert_eq!(
        get(&*store, &words(), "at1").await,
        None,
        "nothing of a failed atomic chunk is applied"
    );
    assert_eq!(get(&*store, &words(), "at3").await, None);
    let again = write(&*store, c).await.unwrap();
    assert!(
        again.replayed,
        "the failed atomic chunk is in the ledger too"
    );
    assert_eq!(again.event, r.event);
}

pub async fn cascade_deletes_children_atomically(store: Arc<dyn Store>) {
    store
        .write_chunk(chunk(
            "cw",
            Op::Create,
            words(),
            vec![json!({"text": "cas"}), json!({"text": "keep"})],
            Options::default(),
        ))
        .await
        .unwrap();
    let defs = vec![
        json!({"id": "cas-1", "word": "cas"}),
        json!({"id": "cas-2", "word": "cas"}),
        json!({"id": "keep-1", "word": "keep"}),
    ];
    store
        .write_chunk(chunk(
            "cd",
            Op::Create,
            definitions(),
            defs,
            Options::default(),
        ))
        .await
        .unwrap();

    // A cascade that fails part-way (its second child collection does not exist) must leave
    // the parent and every child untouched.
    let broken = Arc::new(Target {
        children: vec![
            ("definitions".into(), "word".into()),
            ("no_such_collection".into(), "word".into()),
        ],
        ..(*words()).clone()
    });
    let cascade = Options {
        cascade: true,
        ..Options::default()
    };
    let c = chunk(
        "cx-broken",
        Op::Delete,
        broken,
        vec![json!({"key": "cas"})],
        cascade.clone(),
    );
    assert!(
        write(&*store, c).await.is_err(),
        "a failing cascade is a store error"
    );
    assert!(
        get(&*store, &words(), "cas").await.is_some(),
        "parent untouched after a failed cascade"
    );
    assert!(
        get(&*store, &definitions(), "cas-1").await.is_some(),
        "children untouched after a failed cascade"
    );

    let c = chunk(
        "cx",
        Op::Delete,
        words(),
        vec![json!({"key": "cas"})],
        cascade,
    );
    assert_eq!(
        statuses(&write(&*store, c).await.unwrap()),
        vec![ItemStatus::Ok]
    );
    assert_eq!(get(&*store, &words(), "cas").await, None);
    assert_eq!(get(&*store, &definitions(), "cas-1").await, None);
    assert_eq!(get(&*store, &definitions(), "cas-2").await, None);
    assert!(
        get(&*store, &definitions(), "keep-1").await.is_some(),
        "other words' children stay"
    );
}

pub async fn claims_recognise_duplicates(store: Arc<dyn Store>) {
    assert_eq!(
        store.claim("req-a", &src(5), i64::MAX / 2).await.unwrap(),
        Claim::Owned
    );
    assert_eq!(
        store.claim("req-a", &src(5), i64::MAX / 2).await.unwrap(),
        Claim::Owned,
        "re-read of the same record"
    );
    assert_eq!(
        store.claim("req-a", &src(9), i64::MAX / 2).await.unwrap(),
        Claim::DuplicateOf(src(5))
    );
    // An expired claim is forgotten.
    assert_eq!(
        store.claim("req-old", &src(1), 0).await.unwrap(),
        Claim::Owned
    );
    assert_eq!(
        store.claim("req-old", &src(2), i64::MAX / 2).await.unwrap(),
        Claim::Owned
    );
}

pub async fn concurrent_conflicting_chunks_all_land(store: Arc<dyn Store>) {
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let items = (0..20)
            .map(|k| json!({"text": format!("cc{k}"), "writer": i}))
            .collect();
        let c = chunk(
            &format!("cc-{i}"),
            Op::Upsert,
            words(),
            items,
            Options::default(),
        );
        handles.push(tokio::spawn(async move { write(&*store, c).await }));
    }
    for h in handles {
        let r = h.await.unwrap().unwrap();
        assert!(statuses(&r).iter().all(|s| *s == ItemStatus::Ok));
    }
    let keys: Vec<Key> = (0..20).map(|k| Key::Str(format!("cc{k}"))).collect();
    let docs = store.lookup(&words(), &keys).await.unwrap();
    let writers: std::collections::HashSet<_> = docs
        .iter()
        .map(|d| d.as_ref().unwrap()["writer"].clone())
        .collect();
    assert_eq!(
        writers.len(),
        1,
        "each chunk is one transaction: no interleaving inside a chunk"
    );
}

/// Expands every test of the suite in a module that provides
/// `async fn store() -> Option<(Box<dyn std::any::Any>, Arc<dyn Store>)>` (the box keeps
/// whatever the store needs alive, e.g. its temporary directory).
macro_rules! conformance_suite {
    () => {
        conformance_suite!(@tests
            commit_is_visible,
            ledger_makes_chunks_idempotent,
            racing_owners_apply_once,
            create_reports_exists_or_skipped,
            missing_keys_are_not_found,
            update_and_upsert,
            atomic_failure_applies_nothing,
            cascade_deletes_children_atomically,
            claims_recognise_duplicates,
            concurrent_conflicting_chunks_all_land
        );
    };
    (@tests $($name:ident),+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((_guard, s)) = store().await else { return };
            super::$name(s).await;
        }
    )+};
}

mod sqlite {
    use super::*;
    use sluice_connectors::sqlite::SqliteStore;

    async fn store() -> Option<(Box<dyn std::any::Any>, Arc<dyn Store>)> {
        let dir = tempfile::tempdir().unwrap();
        let config = sluice_config::from_toml_str(
            "[collections.words]\nkey='text'\n[collections.definitions]\nkey='id'\nparent='words'\nparent_field='word'\n",
        )
        .unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db"), &config).unwrap();
        Some((Box::new(dir), Arc::new(s)))
    }

    conformance_suite!();
}

/// The same suite on the MongoDB store, against the server `SLUICE_TEST_MONGO` points at
/// (CI: SecantusDB from scripts/secantus.sh; or a real replica set). Each test has its own
/// database.
mod mongo {
    use super::*;
    use sluice_connectors::mongo::MongoStore;

    async fn store() -> Option<(Box<dyn std::any::Any>, Arc<dyn Store>)> {
        let Ok(uri) = std::env::var("SLUICE_TEST_MONGODB_URI")
            .or_else(|_| std::env::var("SLUICE_TEST_MONGO"))
        else {
            assert!(
                std::env::var("CI").is_err(),
                "CI must start SecantusDB and set SLUICE_TEST_MONGO"
            );
            eprintln!("skipping: set SLUICE_TEST_MONGO (scripts/secantus.sh start; scripts/secantus.sh uri)");
            return None;
        };
        Some((Box::new(()), Arc::new(connect(&uri).await)))
    }

    /// The store on a database of its own.
    async fn connect(uri: &str) -> MongoStore {
        let config = sluice_config::from_toml_str(&format!(
            "[mongo]\nuri = '{uri}'\ndatabase = 'conf_{:08x}'\n\
             [collections.words]\nkey='text'\n[collections.definitions]\nkey='id'\nparent='words'\nparent_field='word'\n",
            rand_suffix()
        ))
        .unwrap();
        MongoStore::connect(config.mongo.as_ref().unwrap(), &config)
            .await
            .unwrap()
    }

    /// A SecantusDB of its own with a 24 MiB cache: a transaction whose writes pass ~3.6 MB
    /// (counted twice, documents and oplog) fails with 388 `TransactionTooLargeForCache`, as
    /// mongod does when a transaction outgrows its cache. Stopped on drop.
    struct SmallCache {
        port: String,
        store: Arc<MongoStore>,
    }

    impl Drop for SmallCache {
        fn drop(&mut self) {
            let _ = secantus(&["stop", &self.port], &[]);
        }
    }

    fn secantus(args: &[&str], env: &[(&str, &str)]) -> String {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/secantus.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "secantus.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    async fn small_cache() -> Option<SmallCache> {
        // Gated like the suite: SLUICE_TEST_MONGO says SecantusDB is installed here.
        store().await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        secantus(&["start", &port], &[("SECANTUS_ARGS", "--cache-size 24M")]);
        let uri = secantus(&["uri", &port], &[]);
        let store = Arc::new(connect(&uri).await);
        Some(SmallCache { port, store })
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
    async fn a_chunk_too_large_for_one_transaction_is_split() {
        let Some(server) = small_cache().await else {
            return;
        };
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
    async fn a_split_chunk_resumes_where_it_stopped() {
        use mongodb::bson::doc;
        let Some(server) = small_cache().await else {
            return;
        };
        let s = &server.store;
        let c = big_chunk("resume");
        let first = write(&**s, c.clone()).await.unwrap();
        // Undo what a crash after the first half would not have committed: the second half's
        // ledger entry and documents, and the chunk's final event (back to "split").
        let db = s.database();
        let ledger = db.collection::<mongodb::bson::Document>("sluice_ledger");
        let gone = ledger
            .delete_many(doc! {"_id.r": "resume", "_id.from": {"$gte": 200_i64}})
            .await
            .unwrap();
        assert!(gone.deleted_count >= 1, "the chunk was split");
        ledger
            .update_one(
                doc! {"_id": {"r": "resume", "c": 0_i64}},
                doc! {"$set": {"split": true}, "$unset": {"event": ""}},
            )
            .await
            .unwrap();
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
    async fn racing_owners_of_a_split_chunk_apply_once() {
        let Some(server) = small_cache().await else {
            return;
        };
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
    async fn an_item_too_large_for_a_transaction_fails_alone() {
        let Some(server) = small_cache().await else {
            return;
        };
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

    fn rand_suffix() -> u32 {
        use std::time::{SystemTime, UNIX_EPOCH};
        let n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        n ^ std::process::id().rotate_left(16)
    }

    conformance_suite!();
}
