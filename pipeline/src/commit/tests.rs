//! The commit stage driven through its channels with a logging sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::budget::InFlight;
use crate::contract::{CompletedEvent, Counts, DuplicateEvent, ProgressEvent};
use crate::record::{Meta, SourceRef};
use crate::stage::{channel, run_stage};
use crate::testkit::{Entry, LogSink};
use crate::work::{Emitted, PendingBody};

fn source(partition: i32, offset: i64) -> SourceRef {
    SourceRef {
        topic: "t".into(),
        partition,
        offset,
    }
}

fn meta(partition: i32, offset: i64, skip_progress: usize) -> Meta {
    Meta {
        source: source(partition, offset),
        key: None,
        resume_at: offset as u64 + 1,
        start_at: offset as u64,
        skip_progress,
        skip_counts: None,
        received: Instant::now(),
        permit: None,
        generation: None,
    }
}

fn progress(id: &str, chunk: usize) -> ResultEvent {
    ResultEvent::Progress(ProgressEvent {
        request_id: id.into(),
        chunk,
        chunks: 9,
        items: vec![],
        source: source(0, 0),
    })
}

fn completed(id: &str) -> ResultEvent {
    ResultEvent::Completed(CompletedEvent {
        request_id: id.into(),
        chunks: 9,
        counts: Counts::default(),
        duration_ms: 0,
        source: source(0, 0),
    })
}

/// A finished record (a `duplicate`) of `partition` at `offset`.
fn ready(partition: i32, offset: i64) -> Pending {
    Pending {
        meta: meta(partition, offset, 0),
        op: None,
        body: PendingBody::Ready(ResultEvent::Duplicate(DuplicateEvent {
            request_id: format!("d{offset}"),
            original: source(partition, 0),
            source: source(partition, offset),
        })),
    }
}

/// An executing record and the sender of its events.
fn streaming(partition: i32, offset: i64, skip: usize) -> (Pending, mpsc::Sender<Emitted>) {
    let (tx, rx) = mpsc::channel(4);
    let p = Pending {
        meta: meta(partition, offset, skip),
        op: None,
        body: PendingBody::Stream(rx),
    };
    (p, tx)
}

/// A commit stage over a logging sink, committing every 20 ms.
fn stage() -> (
    crate::stage::Outbox<Pending>,
    tokio::task::JoinHandle<Result<(), StageError>>,
    LogSink,
) {
    stage_with(sluice_config::PipelineConfig {
        commit_interval_ms: 20,
        ..Default::default()
    })
}

/// A commit stage over a logging sink, with `config`.
fn stage_with(
    config: sluice_config::PipelineConfig,
) -> (
    crate::stage::Outbox<Pending>,
    tokio::task::JoinHandle<Result<(), StageError>>,
    LogSink,
) {
    let sink = LogSink::default();
    let health = Arc::new(Health::new(Duration::from_secs(60)));
    let budget = Arc::new(InFlight::new(100, 1 << 20, health.clone()));
    let commit = Commit::new(
        sink.clone(),
        &config,
        Arc::new(RunStats::default()),
        budget,
        health,
    );
    let (tx, rx) = channel("commit", 16);
    let (done, _) = channel("done", 1);
    (tx, tokio::spawn(run_stage(commit, rx, done)), sink)
}

/// Waits (up to 5 s) until `pred` holds for the sink's log.
async fn until(sink: &LogSink, what: &str, pred: impl Fn(&crate::testkit::SinkLog) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if pred(&sink.log.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            sink.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn done(p: i32, o: i64) -> Entry {
    Entry::Done(source(p, o), o as u64 + 1)
}

#[tokio::test]
async fn a_long_request_holds_up_its_own_partition_only() {
    let (tx, stage, sink) = stage();
    let (long, events) = streaming(0, 0, 0);
    tx.send(long).await.unwrap();
    tx.send(ready(0, 1)).await.unwrap();
    tx.send(ready(1, 0)).await.unwrap();
    tx.send(ready(1, 1)).await.unwrap();
    // Partition 1 commits while partition 0's head is still executing.
    until(&sink, "partition 1 committed", |l| {
        l.committed.contains(&done(1, 1))
    })
    .await;
    assert!(!sink.log.lock().unwrap().committed.contains(&done(0, 1)));
    events.send(completed("long").into()).await.unwrap();
    until(&sink, "partition 0 committed in order", |l| {
        let c = &l.committed;
        let (a, b) = (
            c.iter().position(|e| *e == done(0, 0)),
            c.iter().position(|e| *e == done(0, 1)),
        );
        matches!((a, b), (Some(a), Some(b)) if a < b)
    })
    .await;
    drop(tx);
    stage.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_long_request_commits_its_progress_on_time_with_a_partial_position() {
    let (tx, stage, sink) = stage();
    let (long, events) = streaming(0, 7, 0);
    tx.send(long).await.unwrap();
    events.send(progress("long", 0).into()).await.unwrap();
    events.send(progress("long", 1).into()).await.unwrap();
    // No transaction waits for the whole request: the two events commit with a position
    // that re-reads the record and skips them.
    until(&sink, "partial commit", |l| {
        l.committed.contains(&Entry::Partial(source(0, 7), 7, 2))
            && l.events().contains(&progress("long", 1))
    })
    .await;
    events.send(progress("long", 2).into()).await.unwrap();
    events.send(completed("long").into()).await.unwrap();
    until(&sink, "done", |l| l.committed.contains(&done(0, 7))).await;
    let events = sink.log.lock().unwrap().events();
    assert_eq!(
        events,
        vec![
            progress("long", 0),
            progress("long", 1),
            progress("long", 2),
            completed("long")
        ],
        "every event once, in order"
    );
    drop(tx);
    stage.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reread_record_skips_the_progress_it_published_before() {
    let (tx, stage, sink) = stage();
    let (again, events) = streaming(0, 7, 2);
    tx.send(again).await.unwrap();
    events.send(progress("r", 0).into()).await.unwrap();
    events.send(progress("r", 1).into()).await.unwrap();
    // Nothing new published: no position is recorded (the committed one still holds).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sink.log.lock().unwrap().committed.is_empty());
    events.send(progress("r", 2).into()).await.unwrap();
    until(&sink, "partial after the skipped ones", |l| {
        l.committed.contains(&Entry::Partial(source(0, 7), 7, 3))
    })
    .await;
    events.send(completed("r").into()).await.unwrap();
    until(&sink, "done", |l| l.committed.contains(&done(0, 7))).await;
    assert_eq!(
        sink.log.lock().unwrap().events(),
        vec![progress("r", 2), completed("r")]
    );
    drop(tx);
    stage.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_abandoned_request_keeps_its_events_and_stops_its_partition_only() {
    let (tx, stage, sink) = stage();
    let (cut, events) = streaming(0, 3, 0);
    tx.send(cut).await.unwrap();
    tx.send(ready(0, 4)).await.unwrap();
    tx.send(ready(1, 0)).await.unwrap();
    events.send(progress("cut", 0).into()).await.unwrap();
    drop(events); // execution abandoned (shutdown deadline)
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), stage)
        .await
        .expect("the drain ends")
        .unwrap()
        .unwrap();
    let log = sink.log.lock().unwrap();
    assert!(log.unit.is_empty(), "the drain committed everything");
    assert!(log.committed.contains(&Entry::Partial(source(0, 3), 3, 1)));
    assert!(log.committed.contains(&done(1, 0)));
    assert!(
        !log.committed.contains(&done(0, 4)),
        "nothing after the abandoned record is done"
    );
}

#[tokio::test]
async fn while_draining_a_busy_request_still_commits_on_time() {
    let (tx, stage, sink) = stage();
    let (long, events) = streaming(0, 7, 0);
    tx.send(long).await.unwrap();
    drop(tx); // shutdown: the stage drains what it holds
    let feeder = tokio::spawn(async move {
        for chunk in 0..1000 {
            events.send(progress("long", chunk).into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        events.send(completed("long").into()).await.unwrap();
    });
    until(&sink, "a partial commit while draining", |l| {
        l.committed.iter().any(|e| matches!(e, Entry::Partial(..)))
    })
    .await;
    feeder.await.unwrap();
    stage.await.unwrap().unwrap();
    assert!(sink.log.lock().unwrap().committed.contains(&done(0, 7)));
}

/// An hour: longer than any test, so only what the test is about can commit.
const HOUR_MS: u64 = 3_600_000;

#[tokio::test]
async fn a_stage_that_caught_up_commits_without_waiting_for_the_interval() {
    // The longest interval with idle commits (1 s); catching up commits after a twentieth
    // of it (50 ms).
    let (tx, stage, sink) = stage_with(sluice_config::PipelineConfig {
        commit_interval_ms: 1_000,
        commit_idle_ms: 0,
        ..Default::default()
    });
    tx.send(ready(0, 0)).await.unwrap();
    until(&sink, "committed on catching up", |l| {
        l.committed.contains(&done(0, 0))
    })
    .await;
    // While a head executes, its events are about to join the unit (a quarter interval
    // bounds that wait); once it is done, nothing is, and the unit commits.
    let (long, events) = streaming(0, 1, 0);
    tx.send(long).await.unwrap();
    events.send(progress("long", 0).into()).await.unwrap();
    events.send(completed("long").into()).await.unwrap();
    until(&sink, "the head done", |l| {
        l.committed.contains(&done(0, 1)) && l.events().contains(&progress("long", 0))
    })
    .await;
    drop(tx);
    stage.await.unwrap().unwrap();
}

#[tokio::test]
async fn commits_on_catching_up_are_at_least_the_idle_gap_apart() {
    let (tx, stage, sink) = stage_with(sluice_config::PipelineConfig {
        commit_interval_ms: HOUR_MS,
        commit_idle_ms: HOUR_MS,
        commit_max_records: 3,
        ..Default::default()
    });
    for offset in 0..7 {
        tx.send(ready(0, offset)).await.unwrap();
    }
    until(&sink, "two full units", |l| {
        l.committed.contains(&done(0, 5))
    })
    .await;
    {
        let log = sink.log.lock().unwrap();
        assert_eq!(log.commits, 2, "only full units commit: {log:?}");
        assert_eq!(
            log.unit.last(),
            Some(&done(0, 6)),
            "the last waits: {log:?}"
        );
    }
    drop(tx);
    stage.await.unwrap().unwrap();
    assert!(sink.log.lock().unwrap().committed.contains(&done(0, 6)));
}
