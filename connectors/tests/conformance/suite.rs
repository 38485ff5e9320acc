//! The generic cases every store passes: commits, the ledger, item statuses, atomic chunks,
//! cascades and claims, asserted through the `Store` trait alone.

use std::sync::Arc;

use serde_json::json;
use sluice_pipeline::contract::{ItemStatus, Op, Options};
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{Child, Claim, Found};
use sluice_pipeline::Store;

use crate::common::*;

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
    // the parent and every child untouched: the store refuses the item, which fails alone
    // with `store_error` (the rest of a chunk would commit), and nothing of it is applied.
    let mut broken = (*words()).clone();
    broken.children.push(Child {
        collection: "no_such_collection".into(),
        field: "word".into(),
        key_field: "id".into(),
        children: vec![],
    });
    let cascade = Options {
        cascade: true,
        ..Options::default()
    };
    let c = chunk(
        "cx-broken",
        Op::Delete,
        Arc::new(broken),
        vec![json!({"key": "cas"})],
        cascade.clone(),
    );
    let r = write(&*store, c).await.unwrap();
    assert_eq!(
        (statuses(&r), code(&r, 0)),
        (vec![ItemStatus::Failed], Some("store_error")),
        "a failing cascade fails its item"
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
    let plan = [0..2, 2..3];
    let Claim::Owned(first) = store.claim("req-a", &src(5), &plan).await.unwrap() else {
        panic!("the first claim owns the request");
    };
    assert_eq!(first.plan, plan);
    assert_eq!(
        store.claim("req-a", &src(5), &plan).await.unwrap(),
        Claim::Owned(first),
        "re-read of the same record"
    );
    assert_eq!(
        store.claim("req-a", &src(9), &plan).await.unwrap(),
        Claim::DuplicateOf(src(5))
    );
    // A released claim past its window is forgotten.
    let Claim::Owned(old) = store.claim("req-old", &src(1), &plan).await.unwrap() else {
        panic!("a new request_id is owned");
    };
    let finished = sluice_pipeline::store::Finished {
        request_id: "req-old".into(),
        generation: old.claimed_at_ms,
        chunks: plan.len(),
        terminal: "{}".into(),
    };
    store.release(&[finished], -1).await.unwrap();
    assert!(matches!(
        store.claim("req-old", &src(2), &plan).await.unwrap(),
        Claim::Owned(_)
    ));
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
    let docs = store.lookup(&words(), &keys, usize::MAX).await.unwrap();
    let writers: std::collections::HashSet<_> = docs
        .iter()
        .map(|d| match d {
            Found::Doc(d) => d["writer"].clone(),
            other => panic!("every key was upserted: {other:?}"),
        })
        .collect();
    assert_eq!(
        writers.len(),
        1,
        "each chunk is one transaction: no interleaving inside a chunk"
    );
}
