//! Assembles source → validate → chunk → dedupe → execute → commit → sink and runs it until
//! the source ends or `shutdown` fires.
//!
//! Shutdown starts at the source: it stops reading, which closes validate's input; each stage
//! drains and closes the next. If draining takes longer than `pipeline.drain_deadline_ms`,
//! the abort token makes running requests stop before their next chunk; the commit stage then
//! marks nothing after the first unfinished record as done, so the restart re-reads it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use metrics::{counter, gauge};
use sluice_config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::InFlight;
use crate::chunk::Chunk;
use crate::commit::{Commit, Releaser};
use crate::dedupe::Dedupe;
use crate::execute::Execute;
use crate::health::Health;
use crate::metrics::{PIPELINE_ERRORS, SOURCE_PAUSED};
use crate::record::RawRecord;
use crate::report::RunStats;
use crate::retry::RetryPolicy;
use crate::sink::Sink;
use crate::source::Source;
use crate::stage::{channel, run_stage, Inbox, Outbox, Stage, StageError};
use crate::store::Store;
use crate::validate::Validate;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A stage stopped the pipeline.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] crate::codes::SourceError),
    /// A task panicked (a bug).
    #[error("pipeline task failed: {0}")]
    Task(String),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The source reached its end and everything was committed.
    Exhausted,
    /// Shutdown was requested and the drain finished in time.
    Drained,
    /// Shutdown was requested and the drain deadline passed; unfinished records were left
    /// for the next run.
    Abandoned,
}

/// Runs the pipeline to completion. `shutdown` resolving starts a graceful shutdown.
pub async fn run<Src, Snk>(
    config: Arc<Config>,
    mut source: Src,
    sink: Snk,
    store: Arc<dyn Store>,
    stats: Arc<RunStats>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunEnd, RunError>
where
    Src: Source,
    Snk: Sink,
{
    let p = &config.pipeline;
    let cap = p.channel_capacity;
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let in_flight = Arc::new(InFlight::new(
        p.max_in_flight_records,
        p.max_in_flight_bytes,
        health.clone(),
    ));
    let tasks = TaskTracker::new();

    let (validate_tx, validate_rx) = channel("validate", cap);
    let (chunk_tx, chunk_rx) = channel("chunk", cap);
    let (dedupe_tx, dedupe_rx) = channel("dedupe", cap);
    let (execute_tx, execute_rx) = channel("execute", cap);
    let (commit_tx, commit_rx) = channel("commit", cap);
    let (done_tx, _done_rx) = channel::<()>("done", 1);

    // A stage that fails stops the source at once (and running requests before their next
    // chunk): nothing read after it could be committed, and an idle source would otherwise
    // hold its partitions forever.
    let mut stages = Stages {
        set: tokio::task::JoinSet::new(),
        failed: [stop.clone(), abort.clone()],
    };
    // The plan is made before the claim: dedupe stores it with the claim (or, for a re-read
    // record, replaces it with the stored one).
    stages.spawn(Validate::new(config.clone()), validate_rx, chunk_tx);
    stages.spawn(Chunk::new(config.chunk.clone()), chunk_rx, dedupe_tx);
    stages.spawn(
        Dedupe::new(&config, store.clone(), abort.clone()),
        dedupe_rx,
        execute_tx,
    );
    stages.spawn(
        Execute::new(config.clone(), store.clone(), abort.clone(), tasks.clone()),
        execute_rx,
        commit_tx,
    );
    stages.spawn(
        Commit::new(sink, p, stats, in_flight.clone(), health.clone()).with_releaser(
            Releaser::spawn(
                store.clone(),
                config.dedupe.window_secs as i64,
                RetryPolicy::from(&config.execute),
                abort.clone(),
            ),
        ),
        commit_rx,
        done_tx,
    );

    let drain_deadline = Duration::from_millis(p.drain_deadline_ms);
    let shutdown_watch = {
        let (stop, abort) = (stop.clone(), abort.clone());
        async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new records; draining in-flight work");
            stop.cancel();
            tokio::time::sleep(drain_deadline).await;
            tracing::warn!(
                deadline_ms = drain_deadline.as_millis() as u64,
                "drain deadline passed; abandoning in-flight records"
            );
            abort.cancel();
        }
    };
    let watcher = tokio::spawn(shutdown_watch);

    let read = read_source(&mut source, validate_tx, &in_flight, &stop).await;
    if let Err(e) = &read {
        counter!(PIPELINE_ERRORS, "component" => "source").increment(1);
        tracing::error!(error = %e, "source failed; draining what was read");
    }

    let mut first_error: Option<RunError> = read.err();
    while let Some(joined) = stages.set.join_next().await {
        let err = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(StageError::Closed(_))) if first_error.is_some() => continue,
            Ok(Err(e)) => RunError::Stage(e),
            Err(e) => RunError::Task(e.to_string()),
        };
        counter!(PIPELINE_ERRORS, "component" => "stage").increment(1);
        tracing::error!(error = %err, "pipeline stage failed");
        // Stop the rest quickly: nothing more can be committed in order after a failure.
        abort.cancel();
        stop.cancel();
        first_error.get_or_insert(err);
    }
    tasks.close();
    tasks.wait().await;
    watcher.abort();
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(if abort.is_cancelled() {
        RunEnd::Abandoned
    } else if stop.is_cancelled() {
        RunEnd::Drained
    } else {
        RunEnd::Exhausted
    })
}

/// The running stages; the first to fail cancels `failed` (the source's stop and the abort).
struct Stages {
    set: tokio::task::JoinSet<Result<(), StageError>>,
    failed: [CancellationToken; 2],
}

impl Stages {
    fn spawn<S: Stage>(&mut self, stage: S, inbox: Inbox<S::In>, out: Outbox<S::Out>) {
        let failed = self.failed.clone();
        self.set.spawn(async move {
            let result = run_stage(stage, inbox, out).await;
            if result.is_err() {
                failed.iter().for_each(CancellationToken::cancel);
            }
            result
        });
    }
}

/// Feeds the source into validate while the in-flight budget (and validate's queue) has room.
/// The record budget and a queue slot are taken before reading, so the reader never holds a
/// record while it pauses the source and keeps it polled: a Kafka rebalance served then finds
/// every record read either in the pipeline or not read at all.
async fn read_source<Src: Source>(
    source: &mut Src,
    out: Outbox<RawRecord>,
    budget: &InFlight,
    stop: &CancellationToken,
) -> Result<(), RunError> {
    let started = Instant::now();
    loop {
        let Some(permit) = room(source, stop, budget.record()).await else {
            break;
        };
        // A full validate queue is backpressure too (the stages behind it are stuck).
        let slot = match room(source, stop, out.reserve()).await {
            Some(Ok(slot)) => slot,
            // Shutdown, or validate is gone (a stage failed; the join loop reports why).
            None | Some(Err(_)) => break,
        };
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            r = source.next() => r,
        };
        let mut record = match next {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "source exhausted"
                );
                break;
            }
            Err(e) => return Err(e.into()),
        };
        // The size is known once read: at most one record beyond the byte budget is held.
        // Its wait does not poll the source (a record is held); the record budget, taken
        // first, is what normally binds.
        let size = record.payload.len();
        record.permit = Some(tokio::select! {
            _ = stop.cancelled() => break,
            b = budget.bytes(permit, size) => b,
        });
        budget.report();
        slot.send(record);
    }
    Ok(())
}

/// How long the budget may stay spent (or validate's queue full) before the source is paused.
/// Short waits are normal at full speed, and pausing a Kafka partition drops what librdkafka
/// prefetched for it.
const PAUSE_AFTER: Duration = Duration::from_millis(100);

/// Waits for budget (`wait`), pausing the source if that takes longer than [`PAUSE_AFTER`]
/// and driving its `idle` meanwhile. `None` when `stop` fires first.
async fn room<Src: Source, T>(
    source: &mut Src,
    stop: &CancellationToken,
    wait: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(wait);
    if let Some(got) = (&mut wait).now_or_never() {
        return Some(got);
    }
    tokio::select! {
        _ = stop.cancelled() => return None,
        got = &mut wait => return Some(got),
        _ = tokio::time::sleep(PAUSE_AFTER) => {}
    }
    tracing::debug!("in-flight budget spent: pausing the source");
    gauge!(SOURCE_PAUSED).set(1.0);
    source.pause();
    let got = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            got = &mut wait => break Some(got),
            () = source.idle() => {}
        }
    };
    source.resume();
    gauge!(SOURCE_PAUSED).set(0.0);
    tracing::debug!("in-flight budget has room: source resumed");
    got
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::codes::SourceError;
    use crate::testkit;

    /// Counts the backpressure calls.
    #[derive(Default)]
    struct Probe {
        paused: usize,
        resumed: usize,
        idled: usize,
    }

    #[async_trait]
    impl Source for Probe {
        async fn next(&mut self) -> Result<Option<RawRecord>, SourceError> {
            Ok(None)
        }
        fn pause(&mut self) {
            self.paused += 1;
        }
        fn resume(&mut self) {
            self.resumed += 1;
        }
        async fn idle(&mut self) {
            self.idled += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `f` after `d` (of the test's paused clock).
    fn later(d: Duration, f: impl FnOnce() + Send + 'static) {
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            f();
        });
    }

    #[tokio::test(start_paused = true)]
    async fn room_at_once_does_not_pause() {
        let (mut probe, stop) = (Probe::default(), CancellationToken::new());
        let sem = Arc::new(Semaphore::new(1));
        assert!(room(&mut probe, &stop, sem.acquire_owned()).await.is_some());
        assert_eq!((probe.paused, probe.resumed, probe.idled), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_pauses_the_source_and_keeps_it_polled_until_room() {
        let (mut probe, stop) = (Probe::default(), CancellationToken::new());
        let sem = Arc::new(Semaphore::new(0));
        let give = sem.clone();
        later(Duration::from_secs(1), move || give.add_permits(1));
        assert!(room(&mut probe, &stop, sem.acquire_owned()).await.is_some());
        assert_eq!((probe.paused, probe.resumed), (1, 1));
        assert!(
            probe.idled > 10,
            "idle driven while paused: {}",
            probe.idled
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_wait_does_not_pause() {
        let (mut probe, stop) = (Probe::default(), CancellationToken::new());
        let sem = Arc::new(Semaphore::new(0));
        let give = sem.clone();
        later(PAUSE_AFTER / 2, move || give.add_permits(1));
        assert!(room(&mut probe, &stop, sem.acquire_owned()).await.is_some());
        assert_eq!(probe.paused, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_paused_resumes_and_returns_none() {
        let (mut probe, stop) = (Probe::default(), CancellationToken::new());
        let sem = Arc::new(Semaphore::new(0));
        let cancel = stop.clone();
        later(Duration::from_secs(1), move || cancel.cancel());
        assert!(room(&mut probe, &stop, sem.acquire_owned()).await.is_none());
        assert_eq!((probe.paused, probe.resumed), (1, 1));
    }

    /// Runs a pipeline over a memory store and a logging sink.
    async fn pipeline(
        config: Arc<sluice_config::Config>,
        source: testkit::VecSource,
        sink: testkit::LogSink,
        health: Arc<Health>,
    ) -> Result<RunEnd, RunError> {
        let store = Arc::new(testkit::MemStore::default());
        pipeline_on(store, config, source, sink, health).await
    }

    /// [`pipeline`] over a given memory store.
    async fn pipeline_on(
        store: Arc<testkit::MemStore>,
        config: Arc<sluice_config::Config>,
        source: testkit::VecSource,
        sink: testkit::LogSink,
        health: Arc<Health>,
    ) -> Result<RunEnd, RunError> {
        let stats = Arc::new(RunStats::default());
        run(
            config,
            source,
            sink,
            store,
            stats,
            health,
            std::future::pending(),
        )
        .await
    }

    #[tokio::test]
    async fn a_failed_commit_stops_an_idle_source() {
        let config = testkit::config("");
        let sink = testkit::LogSink::default();
        sink.log.lock().unwrap().fail_commits = true;
        // One record, then a quiet topic: the source has nothing more to say.
        let record = testkit::record(0, 0, &testkit::create("a", 1));
        let source = testkit::VecSource::new(vec![record], false);
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            pipeline(config, source, sink, health),
        )
        .await
        .expect("the run ends when its commit fails, whatever the source does");
        assert!(matches!(ended, Err(RunError::Stage(_))), "{ended:?}");
    }

    #[tokio::test]
    async fn an_idle_service_is_ready_and_has_nothing_in_flight() {
        let config = testkit::config("");
        let sink = testkit::LogSink::default();
        let record = testkit::record(0, 0, &testkit::create("a", 1));
        let source = testkit::VecSource::new(vec![record], false);
        let health = Arc::new(Health::new(Duration::from_millis(50)));
        health.set_store(Ok(()));
        let run = tokio::spawn(pipeline(config, source, sink.clone(), health.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.log.lock().unwrap().commits == 0 {
            assert!(std::time::Instant::now() < deadline, "the record commits");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The reader now waits for a record that does not come, longer than stall_after.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = health.readiness();
        assert!(r.ready, "an idle service is ready: {r:?}");
        run.abort();
    }

    /// Issue 24 §1: a request's dedupe window starts when its terminal event is published —
    /// never before: a unit that fails to commit releases nothing; the next run's does, with
    /// the terminal event as published.
    #[tokio::test]
    async fn a_request_is_released_only_once_its_terminal_event_is_committed() {
        let config = testkit::config("");
        let store = Arc::new(testkit::MemStore::default());
        let record = || testkit::record(0, 0, &testkit::create("a", 3));
        let failing = testkit::LogSink::default();
        failing.log.lock().unwrap().fail_commits = true;
        let health = || Arc::new(Health::new(Duration::from_secs(60)));
        let source = testkit::VecSource::new(vec![record()], true);
        let ended = pipeline_on(store.clone(), config.clone(), source, failing, health()).await;
        assert!(ended.is_err(), "the commit failed: {ended:?}");
        assert_eq!(
            store.released(),
            vec![],
            "nothing published, nothing released"
        );

        let sink = testkit::LogSink::default();
        let source = testkit::VecSource::new(vec![record()], true);
        pipeline_on(store.clone(), config, source, sink.clone(), health())
            .await
            .unwrap();
        let events = sink.log.lock().unwrap().events();
        let terminal = events.last().expect("a terminal event");
        let released = store.released();
        assert_eq!(released.len(), 1, "{released:?}");
        assert_eq!(released[0].request_id, "a");
        assert_eq!(released[0].chunks, 2, "3 items, 2 per chunk");
        assert_eq!(
            released[0].terminal,
            serde_json::to_string(terminal).unwrap(),
            "the terminal event as published"
        );
    }
}
