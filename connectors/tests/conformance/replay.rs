//! Exact replays: a re-read request gets its first claim's plan and time back, the ledger
//! keeps the first outcome of every chunk (applied or settled) and a request_id used again
//! after its claim expired is a new request, never a replay of the old one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_pipeline::contract::{ItemStatus, Op, Options};
use sluice_pipeline::dedupe::unix_now_ms;
use sluice_pipeline::store::{Claim, ClaimInput, Claimed, Finished};
use sluice_pipeline::Store;

use crate::common::*;

/// Claims `request_id` for `source`, asserting it is owned.
async fn owned(
    store: &dyn Store,
    request_id: &str,
    offset: i64,
    plan: &[std::ops::Range<usize>],
) -> Claimed {
    match store.claim(request_id, &src(offset), plan).await.unwrap() {
        Claim::Owned(c) => c,
        other => panic!("{request_id} from offset {offset} should be owned: {other:?}"),
    }
}

/// A re-read (the same record) gets the first claim's plan and time, whatever plan it brings;
/// another record gets `DuplicateOf` the first, and does not change the stored claim.
pub async fn a_claim_keeps_its_first_plan_and_time(store: Arc<dyn Store>) {
    let first_plan = vec![0..2, 2..4, 4..5];
    let first = owned(&*store, "plan-a", 7, &first_plan).await;
    assert_eq!(first.plan, first_plan);
    assert!(
        (first.claimed_at_ms - unix_now_ms()).abs() < 60_000,
        "claimed_at_ms is the claim's time in unix milliseconds: {}",
        first.claimed_at_ms
    );

    // The chunk config changed before the re-read: the stored plan wins.
    let again = owned(&*store, "plan-a", 7, &[0..3, 3..5]).await;
    assert_eq!(again, first, "a re-read gets the first claim back");

    assert_eq!(
        store.claim("plan-a", &src(8), &[0..4, 4..5]).await.unwrap(),
        Claim::DuplicateOf(src(7)),
        "another record with the same request_id is a duplicate of the first"
    );
    let third = owned(&*store, "plan-a", 7, &[0..1, 1..5]).await;
    assert_eq!(third, first, "a duplicate leaves the claim as it was");
}

/// A batch of claims (what the dedupe stage sends) answers as the same claims made one after
/// another: new ids owned, a re-read gets its first claim back, a taken id and an id repeated
/// inside the batch are duplicates of their first record — and the claims it made are the
/// ones later re-reads get back.
pub async fn a_claim_batch_answers_as_claims_one_by_one(store: Arc<dyn Store>) {
    // A re-read brings the same items, perhaps cut differently (the stored plan wins).
    let taken = owned(&*store, "batch-taken", 1, &[0..1, 1..2]).await;
    let mine = owned(&*store, "batch-mine", 5, &[0..2, 2..3]).await;
    // One-chunk plans: a single range each.
    let whole = |n| -> Vec<std::ops::Range<usize>> { std::iter::once(0..n).collect() };
    let (p1, p2, p3) = (vec![0..1, 1..3], whole(4), whole(2));
    let ids = [
        "batch-a",
        "batch-taken",
        "batch-a",
        "batch-mine",
        "batch-b",
        "batch-taken",
    ];
    let sources = [10, 11, 12, 5, 13, 1].map(src);
    let plans = [&p1, &p2, &p3, &p1, &p2, &p3];
    let batch: Vec<ClaimInput<'_>> = (0..ids.len())
        .map(|i| ClaimInput {
            request_id: ids[i],
            source: &sources[i],
            plan: plans[i],
            about: Default::default(),
        })
        .collect();
    let claims = store.claim_many(&batch).await.unwrap();
    assert_eq!(
        claims.len(),
        batch.len(),
        "one answer per claim: {claims:?}"
    );
    let Claim::Owned(a) = &claims[0] else {
        panic!("a new id is owned: {:?}", claims[0])
    };
    assert_eq!(a.plan, p1);
    assert_eq!(
        claims[1],
        Claim::DuplicateOf(src(1)),
        "taken before the batch"
    );
    assert_eq!(
        claims[2],
        Claim::DuplicateOf(src(10)),
        "repeated inside the batch"
    );
    assert_eq!(
        claims[3],
        Claim::Owned(mine),
        "a re-read keeps its first claim"
    );
    let Claim::Owned(b) = &claims[4] else {
        panic!("a new id is owned: {:?}", claims[4])
    };
    assert_eq!(b.plan, p2);
    assert_eq!(claims[5], Claim::Owned(taken), "the owner's re-read");
    // What the batch stored is what a re-read gets.
    assert_eq!(&owned(&*store, "batch-a", 10, &whole(3)).await, a);
    assert_eq!(&owned(&*store, "batch-b", 13, &[0..2, 2..4]).await, b);
    assert_eq!(
        store.claim_many(&[]).await.unwrap(),
        Vec::<Claim>::new(),
        "an empty batch"
    );
}

/// `settle` records an outcome decided without writes once: a second settle (another
/// outcome) gets the first back, as a replay.
pub async fn settle_records_an_outcome_once(store: Arc<dyn Store>) {
    let c = chunk(
        "settle-once",
        Op::Create,
        words(),
        vec![json!({"text": "so1"}), json!({"text": "so2"})],
        Options::default(),
    );
    let decided = deadline_event(&c);
    let first = settle(&*store, c.clone(), decided.clone()).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(
        first.event, decided,
        "the settled event is returned as given"
    );

    let mut other = decided.clone();
    other.items.truncate(1);
    let again = settle(&*store, c, other).await.unwrap();
    assert!(again.replayed, "the ledger already holds the chunk");
    assert_eq!(again.event, decided, "the first outcome stays");
}

/// A chunk applied by an earlier attempt is what a later settle of it publishes (e.g. an
/// unknown commit result that did commit, then a deadline on the replay).
pub async fn an_applied_chunk_wins_over_a_later_settle(store: Arc<dyn Store>) {
    let c = chunk(
        "applied-wins",
        Op::Create,
        words(),
        vec![json!({"text": "aw1", "n": 1})],
        Options::default(),
    );
    let applied = write(&*store, c.clone()).await.unwrap();
    assert_eq!(statuses(&applied), vec![ItemStatus::Ok]);
    let late = settle(&*store, c.clone(), deadline_event(&c))
        .await
        .unwrap();
    assert!(late.replayed, "the ledger holds the applied chunk");
    assert_eq!(
        late.event, applied.event,
        "the applied outcome is published"
    );
    assert_eq!(
        get(&*store, &words(), "aw1").await,
        Some(json!({"text": "aw1", "n": 1}))
    );
}

/// A chunk settled by an earlier attempt (deadline, stop, store failure) is never applied by
/// a later one: `write_chunk` returns the settled event as a replay and writes nothing.
pub async fn a_settled_chunk_is_never_applied(store: Arc<dyn Store>) {
    seed(&*store, "sn-seed", words(), vec![json!({"text": "sn-old"})]).await;
    let c = chunk(
        "settled-never",
        Op::Upsert,
        words(),
        vec![
            json!({"text": "sn-new"}),
            json!({"text": "sn-old", "changed": true}),
        ],
        Options::default(),
    );
    let decided = deadline_event(&c);
    settle(&*store, c.clone(), decided.clone()).await.unwrap();
    let replay = write(&*store, c).await.unwrap();
    assert!(replay.replayed, "the ledger holds the settled chunk");
    assert_eq!(replay.event, decided, "the settled outcome is published");
    assert_eq!(
        get(&*store, &words(), "sn-new").await,
        None,
        "nothing applied"
    );
    assert_eq!(
        get(&*store, &words(), "sn-old").await,
        Some(json!({"text": "sn-old"})),
        "nothing replaced"
    );
}

/// A write and a settle racing on one chunk: one of them records its outcome, the other
/// returns it, and the store holds the writes exactly when the write won.
pub async fn settle_and_write_racing_agree(store: Arc<dyn Store>) {
    for round in 0..4 {
        let id = format!("race-settle-{round}");
        let key = format!("rs{round}");
        let c = chunk(
            &id,
            Op::Create,
            words(),
            vec![json!({"text": key})],
            Options::default(),
        );
        let (w, s) = tokio::join!(
            write(&*store, c.clone()),
            settle(&*store, c.clone(), deadline_event(&c))
        );
        let (w, s) = (w.unwrap(), s.unwrap());
        assert_eq!(w.event, s.event, "both report the one recorded outcome");
        assert_eq!(
            [w.replayed, s.replayed].iter().filter(|r| !**r).count(),
            1,
            "exactly one recorded it"
        );
        let applied = w.event.items[0].status == ItemStatus::Ok;
        assert_eq!(
            applied, !w.replayed,
            "the write won exactly when its outcome is `ok`"
        );
        assert_eq!(
            get(&*store, &words(), &key).await.is_some(),
            applied,
            "the document exists exactly when the write won"
        );
    }
}

/// A request_id used again after its claim expired is claimed anew, with a new generation:
/// the new request's chunks apply (a replay of the old request's ledger would report the old
/// outcome and apply nothing), and the old generation's entries still replay as they were.
pub async fn a_reused_request_id_after_expiry_is_a_new_generation(store: Arc<dyn Store>) {
    let old = owned(&*store, "reused", 1, &[0..1, 1..2]).await;
    let old_chunk = with_generation(
        &chunk(
            "reused",
            Op::Create,
            words(),
            vec![json!({"text": "gen-old"})],
            Options::default(),
        ),
        old.claimed_at_ms,
    );
    let old_commit = write(&*store, old_chunk.clone()).await.unwrap();
    assert_eq!(statuses(&old_commit), vec![ItemStatus::Ok]);
    // Finished, and its window already over.
    expire(&*store, "reused", &old).await;

    // Generations are claim times in milliseconds: let the clock pass the old one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while unix_now_ms() <= old.claimed_at_ms {
        assert!(Instant::now() < deadline, "the clock does not advance");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let new = owned(&*store, "reused", 2, &[0..2, 2..3]).await;
    assert!(
        new.claimed_at_ms > old.claimed_at_ms,
        "a new generation: {} after {}",
        new.claimed_at_ms,
        old.claimed_at_ms
    );
    assert_eq!(new.plan, vec![0..2, 2..3], "the new claim has its own plan");

    let new_chunk = with_generation(
        &chunk(
            "reused",
            Op::Create,
            words(),
            vec![json!({"text": "gen-new"}), json!({"text": "gen-old"})],
            Options::default(),
        ),
        new.claimed_at_ms,
    );
    let new_commit = write(&*store, new_chunk).await.unwrap();
    assert!(
        !new_commit.replayed,
        "not replayed from the old generation's ledger"
    );
    assert_eq!(
        statuses(&new_commit),
        vec![ItemStatus::Ok, ItemStatus::Failed],
        "the new request's items apply (gen-old exists already)"
    );
    assert_eq!(code(&new_commit, 1), Some("exists"));
    assert!(get(&*store, &words(), "gen-new").await.is_some());

    let old_again = write(&*store, old_chunk).await.unwrap();
    assert!(old_again.replayed);
    assert_eq!(old_again.event, old_commit.event);
}

/// Marks `claimed` finished with a window already over (a release with a negative window).
async fn expire(store: &dyn Store, request_id: &str, claimed: &Claimed) {
    let finished = Finished {
        request_id: request_id.into(),
        generation: claimed.claimed_at_ms,
        chunks: claimed.plan.len(),
        terminal: format!(r#"{{"request_id":"{request_id}","event":"completed"}}"#),
    };
    store.release(&[finished], -1).await.unwrap();
}

/// Waits until the wall clock is past `secs` from now (claims and windows count in seconds).
async fn pass_seconds(secs: u64) {
    let until = unix_now_ms() + secs as i64 * 1000 + 50;
    let deadline = Instant::now() + Duration::from_secs(secs + 5);
    while unix_now_ms() <= until {
        assert!(Instant::now() < deadline, "the clock does not advance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 24 §1: an unfinished request's claim and ledger never expire, however long it runs
/// or is away — a re-read of the same record replays its chunks under the same generation, and
/// another record is a duplicate. Its window starts at its release; even then, a re-read of
/// the same record is never a new request; only another record's claim replaces it.
pub async fn an_unfinished_claim_never_expires(store: Arc<dyn Store>) {
    let first = owned(&*store, "long", 3, &[0..1, 1..2]).await;
    assert_eq!(first.expires_at, None, "an unfinished claim has no expiry");
    let c0 = with_generation(
        &chunk(
            "long",
            Op::Upsert,
            words(),
            vec![json!({"text": "long-0", "n": 1})],
            Options::default(),
        ),
        first.claimed_at_ms,
    );
    let applied = write(&*store, c0.clone()).await.unwrap();
    assert!(!applied.replayed);
    // Longer than a one-second window; the purge runs at open and every so many claims, so
    // also claim enough other requests to trigger it.
    pass_seconds(1).await;
    for i in 0..1100 {
        owned(&*store, &format!("filler-{i}"), 10_000 + i, &[0..1, 1..2]).await;
    }
    let again = owned(&*store, "long", 3, &[0..1, 1..2]).await;
    assert_eq!(
        again, first,
        "a re-read of the same record is never a new request"
    );
    let replay = write(&*store, c0.clone()).await.unwrap();
    assert!(replay.replayed, "the chunk replays from the ledger");
    assert_eq!(replay.event, applied.event);
    assert_eq!(
        store.claim("long", &src(4), &[0..1, 1..2]).await.unwrap(),
        Claim::DuplicateOf(src(3)),
        "another record is a duplicate while the request is unfinished"
    );

    // Finished: the window starts now.
    store
        .release(
            &[Finished {
                request_id: "long".into(),
                generation: first.claimed_at_ms,
                chunks: 2,
                terminal: r#"{"request_id":"long","event":"completed"}"#.into(),
            }],
            1,
        )
        .await
        .unwrap();
    let released = owned(&*store, "long", 3, &[0..1, 1..2]).await;
    assert_eq!(released.claimed_at_ms, first.claimed_at_ms);
    assert!(
        released.expires_at.is_some(),
        "a released claim has its expiry"
    );
    assert_eq!(
        store.claim("long", &src(4), &[0..1, 1..2]).await.unwrap(),
        Claim::DuplicateOf(src(3)),
        "within the window another record is a duplicate"
    );
    pass_seconds(2).await;
    assert_eq!(
        owned(&*store, "long", 3, &[0..1, 1..2]).await.claimed_at_ms,
        first.claimed_at_ms,
        "past the window, the same record still gets its own claim back"
    );
    let new = owned(&*store, "long", 4, &[0..1, 1..2]).await;
    assert!(
        new.claimed_at_ms > first.claimed_at_ms,
        "past the window another record's claim is a new generation"
    );
}
