//! Starting finished requests' dedupe windows. A request's claim and ledger entries never
//! expire while it is unfinished; once a unit holding its terminal event has committed (the
//! event is published), [`Store::release`] gives them the window. One task does it, off the
//! commit path, in batches; its queue is bounded, so a store that cannot keep up slows the
//! commit stage instead of growing memory. A release that never happens (a crash right after
//! the commit, a store down past shutdown) leaves claims that never expire: safe — the record
//! is past its committed position and is never re-read — at the cost of a few rows.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::PIPELINE_ERRORS;
use crate::retry::RetryPolicy;
use crate::store::{Finished, Store};

/// Committed units whose releases may wait at once.
const QUEUE: usize = 64;
/// Requests released in one store call at most.
const BATCH: usize = 1000;

/// The release task and its queue.
pub struct Releaser {
    tx: mpsc::Sender<Vec<Finished>>,
    task: JoinHandle<()>,
}

impl Releaser {
    /// Starts the task: releases on `store` with a window of `window_secs`, store errors
    /// retried by `retry` (an unreachable store is waited for until `abort`).
    pub fn spawn(
        store: Arc<dyn Store>,
        window_secs: i64,
        retry: RetryPolicy,
        abort: CancellationToken,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<Finished>>(QUEUE);
        let task = tokio::spawn(async move {
            while let Some(mut batch) = rx.recv().await {
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                let released = retry
                    .run("release", &abort, || store.release(&batch, window_secs))
                    .await;
                if let Err(e) = released {
                    counter!(PIPELINE_ERRORS, "component" => "release").increment(1);
                    tracing::warn!(
                        requests = batch.len(),
                        error = %e,
                        "could not start the dedupe window of finished requests; their claims \
                         stay (they never expire)"
                    );
                }
            }
        });
        Releaser { tx, task }
    }

    /// Queues the releases of a committed unit (waits while the queue is full).
    pub async fn send(&self, finished: Vec<Finished>) {
        if finished.is_empty() {
            return;
        }
        // Err: the task ended (a panic): the claims stay, which is safe.
        let _ = self.tx.send(finished).await;
    }

    /// Lets the task finish what is queued, for at most `deadline`.
    pub async fn close(self, deadline: Duration) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("releases still queued at shutdown are left; their claims stay");
        }
    }
}
