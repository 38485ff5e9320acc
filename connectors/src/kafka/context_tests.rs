//! Tests of the consumer context: drains, hand-overs and the commit lock.

use super::*;

fn p(n: i32) -> Vec<(String, i32)> {
    vec![("requests".to_string(), n)]
}

fn offsets(partition: i32, next: i64) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("requests", partition, Offset::Offset(next))
        .unwrap();
    tpl
}

fn commit(ctx: &SluiceContext, partition: i32, next: i64) -> Option<Result<(), ()>> {
    ctx.commit_owned(&offsets(partition, next), || Ok(()))
}

#[test]
fn a_drain_waits_only_for_the_revoked_partitions() {
    let ctx = SluiceContext::new(Duration::from_secs(5));
    ctx.record_read("requests", 0, 10);
    ctx.record_read("requests", 1, 7);
    assert_eq!(commit(&ctx, 0, 10), Some(Ok(())));
    // Partition 1 still has records in flight; revoking 0 does not wait for them.
    let started = Instant::now();
    assert_eq!(ctx.drain(&p(0)), Ok("drained"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!ctx.revoked());
    // A partition never read from has nothing to drain.
    assert_eq!(ctx.drain(&p(5)), Ok("drained"));
}

#[test]
fn a_drain_ends_when_the_commit_lands() {
    let ctx = SluiceContext::new(Duration::from_secs(30));
    ctx.record_read("requests", 0, 3);
    let committer = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            // A commit that does not cover the last record read does not end it...
            assert_eq!(commit(&ctx, 0, 2), Some(Ok(())));
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(commit(&ctx, 0, 3), Some(Ok(())));
        })
    };
    let started = Instant::now();
    assert_eq!(ctx.drain(&p(0)), Ok("drained"));
    assert!(started.elapsed() >= Duration::from_millis(400));
    committer.join().unwrap();
    assert!(!ctx.revoked());
}

#[test]
fn past_its_deadline_a_partition_with_nothing_uncommitted_is_handed_over() {
    // Issue 24 §5: a head request outliving the deadline used to restart the whole run.
    let ctx = SluiceContext::new(Duration::from_millis(100));
    ctx.record_read("requests", 0, 3);
    ctx.record_read("requests", 1, 3);
    assert_eq!(ctx.drain(&p(0)), Ok("handed_over"));
    assert!(!ctx.revoked(), "the run goes on");
    assert!(
        !ctx.handover().admit("requests", 0),
        "its late output is dropped"
    );
    assert!(
        ctx.handover().admit("requests", 1),
        "other partitions publish as before"
    );
    // Back to this member in the same run: its old records may still be in flight.
    ctx.pre_assign_for_test(&p(0));
    assert!(ctx.revoked(), "the run restarts from the committed offsets");
}

#[test]
fn past_its_deadline_a_partition_with_output_in_the_open_unit_waits_for_the_commit() {
    let ctx = SluiceContext::new(Duration::from_millis(100));
    ctx.record_read("requests", 0, 3);
    assert!(
        ctx.handover().admit("requests", 0),
        "a progress event in the open unit"
    );
    let committer = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            // The unit commits (the head's partial position with its events).
            assert_eq!(commit(&ctx, 0, 2), Some(Ok(())));
        })
    };
    assert_eq!(ctx.drain(&p(0)), Ok("handed_over"));
    committer.join().unwrap();
    assert!(!ctx.revoked());
}

#[test]
fn a_drain_gives_up_when_neither_drain_nor_hand_over_happens() {
    let ctx = SluiceContext::new(Duration::from_millis(100));
    ctx.record_read("requests", 0, 3);
    // Output in the open unit that never commits.
    assert!(ctx.handover().admit("requests", 0));
    assert_eq!(ctx.drain(&p(0)), Err("deadline"));
    assert!(ctx.revoked());
    // The partitions are handed over: nothing commits for them any more.
    let mut ran = false;
    let r: Option<Result<(), ()>> = ctx.commit_owned(&TopicPartitionList::new(), || {
        ran = true;
        Ok(())
    });
    assert_eq!(r, None);
    assert!(!ran);
}

#[test]
fn a_drain_stops_waiting_when_commits_end() {
    let ctx = SluiceContext::new(Duration::from_secs(30));
    ctx.record_read("requests", 0, 3);
    let ender = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            ctx.commits_ended();
        })
    };
    let started = Instant::now();
    assert_eq!(ctx.drain(&p(0)), Err("commit_failed"));
    assert!(started.elapsed() < Duration::from_secs(10));
    ender.join().unwrap();
    assert!(ctx.revoked());
}

#[test]
fn a_commit_in_progress_at_the_deadline_completes_the_drain() {
    let ctx = SluiceContext::new(Duration::from_millis(50));
    ctx.record_read("requests", 0, 3);
    let committer = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            ctx.commit_owned(&offsets(0, 3), || {
                std::thread::sleep(Duration::from_millis(300));
                Ok::<(), ()>(())
            })
        })
    };
    assert!(ctx.handover().admit("requests", 0), "the commit's output");
    std::thread::sleep(Duration::from_millis(20));
    // The deadline passes while the commit holds the lock; giving up waits for it, sees
    // the partition committed, and hands it over cleanly.
    assert_eq!(ctx.drain(&p(0)), Ok("drained"));
    assert!(!ctx.revoked());
    assert_eq!(committer.join().unwrap(), Some(Ok(())));
}

#[test]
fn after_one_give_up_a_later_drain_does_not_wait() {
    let ctx = SluiceContext::new(Duration::from_secs(30));
    ctx.record_read("requests", 0, 3);
    ctx.mark_revoked();
    ctx.record_read("requests", 1, 3);
    let started = Instant::now();
    assert!(ctx.drain(&p(1)).is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_revoked_partition_progress_is_forgotten() {
    let ctx = SluiceContext::new(Duration::from_millis(50));
    ctx.record_read("requests", 0, 100);
    assert_eq!(commit(&ctx, 0, 100), Some(Ok(())));
    assert_eq!(ctx.drain(&p(0)), Ok("drained"));
    // Assigned again and read from an earlier position (e.g. an offset reset): the old
    // committed position must not make the new record look committed (output of it in
    // the open unit, so that the drain cannot end by a hand-over either).
    ctx.record_read("requests", 0, 41);
    assert!(ctx.handover().admit("requests", 0));
    assert_eq!(ctx.drain(&p(0)), Err("deadline"));
}

#[test]
fn a_failed_commit_does_not_count_as_drained() {
    let ctx = SluiceContext::new(Duration::from_millis(50));
    ctx.record_read("requests", 0, 3);
    let r = ctx.commit_owned(&offsets(0, 3), || Err::<(), _>("fenced"));
    assert_eq!(r, Some(Err("fenced")));
    assert!(
        ctx.handover().admit("requests", 0),
        "the failed unit's output"
    );
    assert_eq!(ctx.drain(&p(0)), Err("deadline"));
}

#[test]
fn a_drain_on_a_runtime_worker_lets_the_task_it_woke_commit() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ctx = SluiceContext::new(Duration::from_secs(5));
    ctx.record_read("requests", 0, 3);
    let (outcome, waited) = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let committer = ctx.clone();
        // The commit stage, waiting for its next event.
        let commit_stage = tokio::spawn(async move {
            rx.recv().await;
            commit(&committer, 0, 3)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reader = ctx.clone();
        // The reader hands on a record (waking the commit stage into this worker's LIFO
        // slot), then polls the consumer, which serves a revocation and drains.
        let drained = tokio::spawn(async move {
            tx.send(()).await.unwrap();
            let started = Instant::now();
            (reader.drain(&p(0)), started.elapsed())
        })
        .await
        .unwrap();
        assert_eq!(commit_stage.await.unwrap(), Some(Ok(())));
        drained
    });
    assert_eq!(outcome, Ok("drained"));
    assert!(
        waited < Duration::from_secs(2),
        "the drain waited {waited:?} for a task stuck behind it"
    );
}
