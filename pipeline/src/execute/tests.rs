//! The execute stage against a memory store: replays publish what the first attempt did.

use std::sync::Arc;

use super::*;
use crate::contract::{ItemStatus, Options};
use crate::record::Meta;
use crate::request::{Item, ItemBody, Key, Request};
use crate::stage::channel;
use crate::store::{Claimed, Store};
use crate::testkit::{self, MemStore};

fn create(id: &str, n: usize, deadline_ms: Option<u64>) -> Request {
    let items = (0..n)
        .map(|i| {
            let doc = serde_json::json!({"text": format!("{id}-{i}")});
            Item {
                index: i,
                key: Some(Key::Str(format!("{id}-{i}"))),
                body: ItemBody::Doc(serde_json::value::to_raw_value(&doc).unwrap()),
                bytes: 10,
                decided: None,
            }
        })
        .collect();
    Request {
        request_id: id.into(),
        collection: "words".into(),
        op: Op::Create,
        items,
        options: Options {
            deadline_ms,
            ..Options::default()
        },
    }
}

fn meta() -> Meta {
    let r = testkit::record(0, 0, "{}");
    r.split().2
}

/// Runs `request` under `claim` through an execute stage; returns its events.
async fn execute(store: Arc<MemStore>, request: Request, claim: Claimed) -> Vec<ResultEvent> {
    let config = testkit::config("");
    let stage = Execute::new(config, store, CancellationToken::new(), TaskTracker::new());
    let (tx, rx) = channel("execute", 4);
    let (out, mut pending) = channel("commit", 4);
    let driver = tokio::spawn(crate::stage::run_stage(stage, rx, out));
    tx.send(Work::Claimed {
        meta: meta(),
        request,
        claim,
    })
    .await
    .unwrap();
    drop(tx);
    let Some(Pending {
        body: PendingBody::Stream(mut events),
        ..
    }) = pending.recv().await
    else {
        panic!("a stream of events")
    };
    let mut out = Vec::new();
    while let Some(e) = events.recv().await {
        out.push(e);
    }
    driver.await.unwrap().unwrap();
    out
}

fn statuses(e: &ResultEvent) -> Vec<ItemStatus> {
    match e {
        ResultEvent::Progress(p) => p.items.iter().map(|i| i.status).collect(),
        other => panic!("not a progress event: {other:?}"),
    }
}

#[tokio::test]
async fn a_replay_past_the_deadline_publishes_the_chunks_the_first_attempt_applied() {
    let store = Arc::new(MemStore::default());
    // The first attempt, claimed 10 s ago with a 5 s deadline, applied chunk 0 and crashed.
    let claimed_at_ms = crate::dedupe::unix_now_ms() - 10_000;
    let claim = Claimed {
        claimed_at_ms,
        plan: vec![0..2, 2..4],
        expires_at: None,
    };
    let request = create("r", 4, Some(5_000));
    let first = WriteChunk {
        request: Arc::new(request.clone()),
        index: 0,
        chunks: 2,
        range: 0..2,
        source: meta().source,
        target: Arc::new(Target::from_config(&testkit::config(""), "words")),
        window_secs: 60,
        generation: claimed_at_ms,
    };
    store.write_chunk(Arc::new(first)).await.unwrap();
    // The replay: the deadline counts from the claim, so it has passed — but chunk 0 is in
    // the ledger and is published as applied; only chunk 1 is decided (and recorded) now.
    let events = execute(store.clone(), request.clone(), claim.clone()).await;
    assert_eq!(statuses(&events[0]), vec![ItemStatus::Ok, ItemStatus::Ok]);
    assert_eq!(
        statuses(&events[1]),
        vec![ItemStatus::NotAttempted, ItemStatus::NotAttempted]
    );
    assert_eq!(
        store.count("words"),
        2,
        "nothing applied after the deadline"
    );
    // Another replay publishes the same events (the deadline decision is in the ledger).
    let again = execute(store.clone(), request, claim).await;
    assert_eq!(events[..2], again[..2]);
}

#[tokio::test]
async fn a_replay_cuts_the_request_by_the_claimed_plan() {
    let store = Arc::new(MemStore::default());
    let claim = Claimed {
        claimed_at_ms: crate::dedupe::unix_now_ms(),
        plan: vec![0..1, 1..3],
        expires_at: None,
    };
    // The config now says two items per chunk; the claim's plan wins.
    let events = execute(store.clone(), create("p", 3, None), claim).await;
    let sizes: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            ResultEvent::Progress(p) => Some(p.items.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![1, 2]);
    assert_eq!(store.count("words"), 3);
}
