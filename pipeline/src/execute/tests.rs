//! The execute stage against a memory store: replays publish what the first attempt did.

use std::sync::Arc;

use super::*;
use crate::contract::{ItemStatus, Options};
use crate::record::Meta;
use crate::request::{Item, ItemBody, Key, Request};
use crate::stage::channel;
use std::ops::Range;

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
    execute_with(testkit::config(""), store, request, claim).await
}

/// [`execute`] with a config and any store.
async fn execute_with(
    config: Arc<sluice_config::Config>,
    store: Arc<dyn Store>,
    request: Request,
    claim: Claimed,
) -> Vec<ResultEvent> {
    execute_as(config, store, request, claim, meta()).await
}

/// [`execute_with`] for a record with the given metadata (a re-read's `skip_*`).
async fn execute_as(
    config: Arc<sluice_config::Config>,
    store: Arc<dyn Store>,
    request: Request,
    claim: Claimed,
    meta: Meta,
) -> Vec<ResultEvent> {
    let stage = Execute::new(config, store, CancellationToken::new(), TaskTracker::new());
    let (tx, rx) = channel("execute", 4);
    let (out, mut pending) = channel("commit", 4);
    let driver = tokio::spawn(crate::stage::run_stage(stage, rx, out));
    tx.send(Work::Claimed {
        meta,
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
        // Bytes the store sent along are the event's own (the sink publishes them as they are).
        if let (ResultEvent::Progress(p), Some(json)) = (&e.event, &e.json) {
            assert_eq!(json, &serde_json::to_string(p).unwrap());
        }
        out.push(e.event);
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

/// A store whose chunk commits happen but answer an error (as after
/// `UnknownTransactionCommitResult` retries ran out), and whose settles fail `settle_fails`
/// times (a store outage right then) before they work.
struct UnknownCommits {
    inner: MemStore,
    settle_fails: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for UnknownCommits {
    fn kind(&self) -> &'static str {
        "unknown-commits"
    }
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn claim(
        &self,
        request_id: &str,
        source: &SourceRef,
        plan: &[Range<usize>],
    ) -> Result<crate::store::Claim, StoreError> {
        self.inner.claim(request_id, source, plan).await
    }
    async fn release(
        &self,
        finished: &[crate::store::Finished],
        window_secs: i64,
    ) -> Result<(), StoreError> {
        self.inner.release(finished, window_secs).await
    }
    async fn write_chunk(
        &self,
        chunk: Arc<WriteChunk>,
    ) -> Result<crate::store::ChunkCommit, StoreError> {
        self.inner.write_chunk(chunk).await?;
        Err(StoreError::transient(
            "unknown_commit_result",
            "the commit's outcome is unknown",
        ))
    }
    async fn settle(
        &self,
        chunk: Arc<WriteChunk>,
        event: ProgressEvent,
    ) -> Result<crate::store::ChunkCommit, StoreError> {
        use std::sync::atomic::Ordering;
        if self.settle_fails.load(Ordering::SeqCst) > 0 {
            self.settle_fails.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::transient("write_conflict", "try again"));
        }
        self.inner.settle(chunk, event).await
    }
    async fn lookup(
        &self,
        target: &Target,
        keys: &[Key],
        max_bytes: usize,
    ) -> Result<Vec<Found>, StoreError> {
        self.inner.lookup(target, keys, max_bytes).await
    }
}

/// Issue 24 §4: a chunk whose commit may have happened is never published as failed — even
/// when recording the failure fails too, round after round; it is resolved from the ledger.
#[tokio::test]
async fn a_possibly_committed_chunk_is_resolved_from_the_ledger_never_reported_failed() {
    let config =
        testkit::config("[execute]\nmax_attempts = 2\nbackoff_initial_ms = 1\nbackoff_max_ms = 2");
    let store = Arc::new(UnknownCommits {
        inner: MemStore::default(),
        settle_fails: 7.into(),
    });
    let claim = Claimed {
        claimed_at_ms: crate::dedupe::unix_now_ms(),
        plan: std::iter::once(0..2).collect(),
        expires_at: None,
    };
    let events = execute_with(config, store.clone(), create("u", 2, None), claim).await;
    assert_eq!(
        statuses(&events[0]),
        vec![ItemStatus::Ok, ItemStatus::Ok],
        "the commit happened: the ledger says ok"
    );
    assert_eq!(store.inner.count("words"), 2);
}

/// Issue 24 §3: lookups are not in the ledger, so a re-read after a partial commit reads its
/// chunks again — the store may say something else by then. The terminal event's counts
/// start from what the position recorded of the published events, so they equal what
/// consumers received; the published chunks are not read again.
#[tokio::test]
async fn a_lookup_replay_counts_what_was_published() {
    let store = Arc::new(MemStore::default());
    let keys = |n: usize| -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                index: i,
                key: Some(Key::Str(format!("k-{i}"))),
                body: ItemBody::Key,
                bytes: 10,
                decided: None,
            })
            .collect()
    };
    let request = Request {
        request_id: "l".into(),
        collection: "words".into(),
        op: Op::Lookup,
        items: keys(4),
        options: Options::default(),
    };
    // The first run published chunk 0 (both keys found) and committed a partial position;
    // the documents were deleted since.
    let published = Counts {
        total: 2,
        ok: 2,
        ..Counts::default()
    };
    let mut reread = meta();
    reread.skip_progress = 1;
    reread.skip_counts = Some(published);
    let claim = Claimed {
        claimed_at_ms: crate::dedupe::unix_now_ms(),
        plan: vec![0..2, 2..4],
        expires_at: None,
    };
    let events = execute_as(testkit::config(""), store, request, claim, reread).await;
    assert_eq!(
        events.len(),
        3,
        "two progress events and the terminal: {events:?}"
    );
    assert_eq!(
        statuses(&events[1]),
        vec![ItemStatus::NotFound, ItemStatus::NotFound]
    );
    let ResultEvent::Completed(done) = &events[2] else {
        panic!("completed: {:?}", events[2])
    };
    assert_eq!(
        done.counts,
        Counts {
            total: 4,
            ok: 2,
            not_found: 2,
            ..Counts::default()
        },
        "the counts of what consumers received, not of a second read"
    );
}
