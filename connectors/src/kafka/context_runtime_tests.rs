//! The rebalance callback never blocks a tokio worker: it runs inside the consumer's poll, on
//! a worker, and when it must wait for a commit in progress — seconds while the coordinator is
//! unreachable — it waits off the runtime, so the listener (`/healthz`, `/metrics`) and every
//! other task go on (issue 24 §6).

use std::time::{Duration, Instant};

use rdkafka::{Offset, TopicPartitionList};

use super::SluiceContext;

#[test]
fn marking_the_run_revoked_while_a_commit_hangs_leaves_the_runtime_free() {
    // One worker: a blocked worker is the whole runtime (a container limited to one CPU).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ctx = SluiceContext::new(Duration::from_secs(5));
    // A commit to an unreachable coordinator holds the commit lock for two seconds.
    let (holding, held) = std::sync::mpsc::channel();
    let committer = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset("requests", 0, Offset::Offset(1))
                .unwrap();
            ctx.commit_owned(&tpl, || {
                holding.send(()).unwrap();
                std::thread::sleep(Duration::from_secs(2));
                Ok::<(), ()>(())
            })
        })
    };
    held.recv().unwrap();
    let waited = rt.block_on(async {
        // The session expired: the rebalance callback marks the run revoked, on the worker.
        let (marking, marks) = std::sync::mpsc::channel();
        let marker = ctx.clone();
        let revoke = tokio::spawn(async move {
            marking.send(()).unwrap();
            marker.mark_revoked();
        });
        marks.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Meanwhile a request to the listener: a task spawned now.
        let spawned = Instant::now();
        let waited = tokio::spawn(async move { spawned.elapsed() })
            .await
            .unwrap();
        revoke.await.unwrap();
        waited
    });
    assert_eq!(committer.join().unwrap(), Some(Ok(())));
    assert!(ctx.revoked(), "marked once the commit ended");
    assert!(
        waited < Duration::from_millis(500),
        "a task waited {waited:?} for the rebalance callback's worker"
    );
}
