//! Tests of the dedupe stage: item duplicates, claims through the cache and the store, and
//! claim batches in flight.

use super::*;
use crate::contract::Options;
use crate::request::{Item, ItemBody};

fn request(keys: &[Option<&str>], dedupe: bool) -> Request {
    let items = keys
        .iter()
        .enumerate()
        .map(|(index, k)| Item {
            index,
            key: k.map(|k| Key::Str(k.into())),
            body: ItemBody::Key,
            bytes: 1,
            decided: k
                .is_none()
                .then(|| Box::new(ItemResult::status(index, ItemStatus::Failed))),
        })
        .collect();
    let options = Options {
        dedupe,
        ..Options::default()
    };
    crate::testkit::key_request(items, options)
}

fn statuses(r: &Request) -> Vec<Option<(ItemStatus, Option<usize>)>> {
    r.items
        .iter()
        .map(|i| i.decided.as_ref().map(|d| (d.status, d.of)))
        .collect()
}

#[test]
fn later_repeats_are_duplicates_of_the_first() {
    let mut r = request(
        &[Some("a"), Some("b"), Some("a"), None, Some("b"), Some("a")],
        true,
    );
    mark_duplicate_items(&mut r);
    assert_eq!(
        statuses(&r),
        vec![
            None,
            None,
            Some((ItemStatus::Duplicate, Some(0))),
            Some((ItemStatus::Failed, None)),
            Some((ItemStatus::Duplicate, Some(1))),
            Some((ItemStatus::Duplicate, Some(0))),
        ]
    );
}

#[test]
fn dedupe_false_keeps_every_item() {
    let mut r = request(&[Some("a"), Some("a")], false);
    mark_duplicate_items(&mut r);
    assert_eq!(statuses(&r), vec![None, None]);
}

#[tokio::test]
async fn a_reread_record_gets_its_first_claim_back_and_another_record_is_a_duplicate() {
    let config = crate::testkit::config("");
    let store: Arc<dyn Store> = Arc::new(crate::testkit::MemStore::default());
    let mut d = Dedupe::new(&config, store.clone(), CancellationToken::new());
    let src = |offset| SourceRef {
        topic: "t".into(),
        partition: 0,
        offset,
    };
    let Claim::Owned(first) = d.claim("r", &src(1), &[0..2, 2..3]).await.unwrap() else {
        panic!("first claim")
    };
    // The same record read again after the chunk config changed: the stored plan wins,
    // through the cache and through the store alike.
    // One chunk of items 0..3 (a one-element plan).
    let whole: Vec<std::ops::Range<usize>> = std::iter::once(0..3).collect();
    let again = d.claim("r", &src(1), &whole).await.unwrap();
    assert_eq!(again, Claim::Owned(first.clone()));
    let mut fresh = Dedupe::new(&config, store, CancellationToken::new());
    assert_eq!(
        fresh.claim("r", &src(1), &whole).await.unwrap(),
        Claim::Owned(first.clone())
    );
    assert_eq!(first.plan, vec![0..2, 2..3]);
    assert_eq!(
        fresh.claim("r", &src(9), &whole).await.unwrap(),
        Claim::DuplicateOf(src(1))
    );
}

/// Counts the store's claim calls and the claims in them.
#[derive(Default)]
struct Counting {
    inner: crate::testkit::MemStore,
    calls: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl Store for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }
    async fn health(&self) -> Result<(), crate::StoreError> {
        Ok(())
    }
    async fn claim(
        &self,
        request_id: &str,
        source: &SourceRef,
        plan: &[std::ops::Range<usize>],
    ) -> Result<Claim, crate::StoreError> {
        self.inner.claim(request_id, source, plan).await
    }
    async fn release(
        &self,
        finished: &[crate::store::Finished],
        window_secs: i64,
    ) -> Result<(), crate::StoreError> {
        self.inner.release(finished, window_secs).await
    }
    async fn claim_many(&self, claims: &[ClaimInput<'_>]) -> Result<Vec<Claim>, crate::StoreError> {
        self.calls.lock().unwrap().push(claims.len());
        if claims.iter().any(|c| c.request_id.starts_with("slow")) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut out = Vec::new();
        for c in claims {
            out.push(self.claim(c.request_id, c.source, c.plan).await?);
        }
        Ok(out)
    }
    async fn write_chunk(
        &self,
        chunk: Arc<crate::store::WriteChunk>,
    ) -> Result<crate::store::ChunkCommit, crate::StoreError> {
        self.inner.write_chunk(chunk).await
    }
    async fn settle(
        &self,
        chunk: Arc<crate::store::WriteChunk>,
        event: crate::contract::ProgressEvent,
    ) -> Result<crate::store::ChunkCommit, crate::StoreError> {
        self.inner.settle(chunk, event).await
    }
    async fn lookup(
        &self,
        target: &crate::store::Target,
        keys: &[Key],
        max_bytes: usize,
    ) -> Result<Vec<crate::store::Found>, crate::StoreError> {
        self.inner.lookup(target, keys, max_bytes).await
    }
}

fn execute_source(offset: i64) -> SourceRef {
    crate::testkit::record(0, offset, "{}").split().2.source
}

fn execute(request_id: &str, offset: i64) -> Work {
    let (_, _, meta) = crate::testkit::record(0, offset, "{}").split();
    let mut request = request(&[Some("a"), Some("a")], true);
    request.request_id = request_id.into();
    Work::Execute {
        meta,
        request,
        chunks: std::iter::once(0..2).collect(),
    }
}

/// A dedupe stage on a [`Counting`] store, and the channel it passes records on to.
fn counting_stage() -> (
    Dedupe,
    Arc<Counting>,
    Outbox<Work>,
    crate::stage::Inbox<Work>,
) {
    let config = crate::testkit::config("");
    let store = Arc::new(Counting::default());
    let d = Dedupe::new(&config, store.clone(), CancellationToken::new());
    let (out, rx) = crate::stage::channel("execute", 16);
    (d, store, out, rx)
}

/// Closes `out` and returns what was passed on through it, in order (see [`outcome`]).
async fn passed_on(
    out: Outbox<Work>,
    mut rx: crate::stage::Inbox<Work>,
) -> Vec<(String, i64, Result<(), i64>)> {
    drop(out);
    let mut got = Vec::new();
    while let Some(w) = rx.recv().await {
        got.push(outcome(w));
    }
    got
}

/// What came out, as (request_id, offset, claimed or the offset it duplicates).
fn outcome(w: Work) -> (String, i64, Result<(), i64>) {
    match w {
        Work::Claimed { meta, request, .. } => {
            assert_eq!(
                statuses(&request)[1],
                Some((ItemStatus::Duplicate, Some(0))),
                "a claimed request's repeated keys are marked"
            );
            (request.request_id, meta.source.offset, Ok(()))
        }
        Work::Finished {
            meta,
            event: ResultEvent::Duplicate(d),
            ..
        } => (d.request_id, meta.source.offset, Err(d.original.offset)),
        _ => panic!("unexpected output"),
    }
}

#[tokio::test]
async fn waiting_records_are_claimed_in_one_store_call_in_order() {
    let (mut d, store, out, rx) = counting_stage();
    d.process_batch(vec![execute("x", 1)], &out).await.unwrap();
    let batch = vec![
        execute("a", 2),
        execute("x", 3), // claimed by offset 1: its batch is awaited, then the cache knows
        execute("a", 4), // repeated inside the batch
        execute("b", 5),
    ];
    d.process_batch(batch, &out).await.unwrap();
    d.on_drain(&out).await.unwrap();
    let got = passed_on(out, rx).await;
    let expect = |id: &str, offset, r| (id.to_string(), offset, r);
    assert_eq!(
        got,
        vec![
            expect("x", 1, Ok(())),
            expect("a", 2, Ok(())),
            expect("x", 3, Err(1)),
            expect("a", 4, Err(2)),
            expect("b", 5, Ok(())),
        ]
    );
    assert_eq!(
        *store.calls.lock().unwrap(),
        vec![1, 3],
        "one store call per batch, without what the cache answered"
    );
    // The owner of a request_id repeated in the batch is still answered from the cache.
    assert!(matches!(
        d.claim("a", &execute_source(2), &[]).await.unwrap(),
        Claim::Owned(_)
    ));
    assert_eq!(store.calls.lock().unwrap().len(), 2, "no store call for it");
}

#[tokio::test]
async fn batches_in_flight_pass_records_on_in_source_order() {
    let (mut d, store, out, rx) = counting_stage();
    // The first batch's claims take longer than the second's.
    d.process_batch(vec![execute("slow-1", 1)], &out)
        .await
        .unwrap();
    d.process_batch(vec![execute("fast-2", 2), execute("fast-3", 3)], &out)
        .await
        .unwrap();
    assert_eq!(d.batches.len(), 2, "both batches are in flight together");
    // What the stage driver does: wait until the oldest is ready, pass it on.
    while !d.batches.is_empty() {
        d.ready().await;
        d.on_ready(&out).await.unwrap();
    }
    let offsets: Vec<i64> = passed_on(out, rx).await.into_iter().map(|o| o.1).collect();
    assert_eq!(offsets, vec![1, 2, 3]);
    assert_eq!(*store.calls.lock().unwrap(), vec![1, 2]);
}

/// Issue 24 §2: the cache never answers differently from the store. A request released with a
/// one-second window is a duplicate within it — and after it, a warm stage (whose cache saw
/// the owner and answered a duplicate from it) executes a resend exactly like a cold one.
#[tokio::test]
async fn the_cache_answers_as_the_store_past_the_window() {
    let config = crate::testkit::config("[dedupe]\nwindow_secs = 1");
    let mem = Arc::new(crate::testkit::MemStore::default());
    let store: Arc<dyn Store> = mem.clone();
    let mut warm = Dedupe::new(&config, store.clone(), CancellationToken::new());
    let src = |offset| SourceRef {
        topic: "t".into(),
        partition: 0,
        offset,
    };
    let one: Vec<std::ops::Range<usize>> = std::iter::once(0..1).collect();
    let Claim::Owned(first) = warm.claim("x", &src(1), &one).await.unwrap() else {
        panic!("first claim")
    };
    store
        .release(
            &[crate::store::Finished {
                request_id: "x".into(),
                generation: first.claimed_at_ms,
                chunks: 1,
                terminal: "{}".into(),
            }],
            1,
        )
        .await
        .unwrap();
    // Hits within the window, from the cache and from the store alike.
    for offset in [2, 3] {
        assert_eq!(
            warm.claim("x", &src(offset), &one).await.unwrap(),
            Claim::DuplicateOf(src(1))
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // Past the store's expiry (second resolution: wait until the clock has moved on).
    let until = unix_now() + 2;
    while unix_now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut cold = Dedupe::new(&config, store, CancellationToken::new());
    let Claim::Owned(warm_answer) = warm.claim("x", &src(4), &one).await.unwrap() else {
        panic!("a warm process must execute a resend after the window, as the store says")
    };
    assert!(
        warm_answer.claimed_at_ms > first.claimed_at_ms,
        "a new generation"
    );
    assert_eq!(
        cold.claim("x", &src(4), &one).await.unwrap(),
        Claim::Owned(warm_answer),
        "cold and warm answer alike"
    );
}
