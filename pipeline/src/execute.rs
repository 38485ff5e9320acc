//! Stage 4: run each request's chunks against the store.
//!
//! For every request the stage spawns one task (tracked, so shutdown can wait for it) and
//! immediately hands the commit stage a [`Pending`] whose event stream that task fills — so
//! the commit stage sees records in source order while different requests execute
//! concurrently. Requests with the same ordering key run one after another, in source order:
//! each task waits for the previous task of its key. Write chunks run under a global
//! semaphore (`execute.write_concurrency`), one transaction each; lookup chunks run
//! concurrently under `execute.lookup_concurrency`. Store errors are retried by kind
//! ([`RetryPolicy`]); a request's deadline turns its remaining chunks into `not_attempted`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use metrics::counter;
use sluice_config::Config;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codes::{ItemErrorCode, StoreError, StoreErrorKind};
use crate::contract::{
    CompletedEvent, Counts, ItemResult, ItemStatus, Op, ProgressEvent, ResultEvent,
};
use crate::dedupe::unix_now_ms;
use crate::metrics::{ChunkMetrics, PIPELINE_ERRORS};
use crate::record::SourceRef;
use crate::request::SharedRequest;
use crate::retry::RetryPolicy;
use crate::stage::{Outbox, Stage, StageError};
use crate::store::{Found, Store, Target, WriteChunk, WriteLimit};
use crate::work::{Emitted, Pending, PendingBody, Work};

/// Events buffered per executing request before its task waits for the commit stage.
const EVENTS_PER_REQUEST: usize = 4;

/// Shared by all request tasks.
struct Shared {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    writes: Semaphore,
    write_limit: WriteLimit,
    lookups: Semaphore,
    retry: RetryPolicy,
    abort: CancellationToken,
    targets: HashMap<String, Arc<Target>>,
    /// Chunk counts and durations by op.
    metrics: ChunkMetrics,
}

/// The execute stage.
pub struct Execute {
    shared: Arc<Shared>,
    /// Per ordering key: completion signal of the last request started with that key.
    tails: HashMap<String, oneshot::Receiver<()>>,
    tasks: TaskTracker,
}

impl Execute {
    /// An execute stage over `store`. `abort` makes running requests stop before their next
    /// chunk (their records are then not committed, and are re-read on restart). `tasks`
    /// tracks the request tasks so the caller can wait for them.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        abort: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let targets = config
            .collections
            .keys()
            .map(|name| (name.clone(), Arc::new(Target::from_config(&config, name))))
            .collect();
        let write_limit = store.write_limit(config.execute.write_concurrency);
        let shared = Shared {
            writes: Semaphore::new(write_limit.permits()),
            write_limit,
            lookups: Semaphore::new(config.execute.lookup_concurrency),
            retry: RetryPolicy::from(&config.execute),
            config,
            store,
            abort,
            targets,
            metrics: ChunkMetrics::new(),
        };
        Execute {
            shared: Arc::new(shared),
            tails: HashMap::new(),
            tasks,
        }
    }

    fn ordering_key(&self, key: Option<&str>, request_id: &str) -> String {
        if self.shared.config.pipeline.ordered {
            String::new()
        } else {
            key.unwrap_or(request_id).to_string()
        }
    }

    /// Forgets keys whose last request finished, so the map stays as small as the work in flight.
    fn purge_tails(&mut self) {
        let limit = 2 * self.shared.config.pipeline.max_in_flight_records + 16;
        if self.tails.len() > limit {
            self.tails
                .retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
    }
}

impl Stage for Execute {
    type In = Work;
    type Out = Pending;
    const NAME: &'static str = "execute";

    async fn process(&mut self, input: Work, out: &Outbox<Pending>) -> Result<(), StageError> {
        let pending = match input {
            Work::Finished {
                meta,
                mut event,
                op,
            } => {
                if let ResultEvent::Rejected(r) = &mut event {
                    crate::fit::fit_rejected(r, self.shared.config.limits.max_event_bytes);
                }
                Pending {
                    meta,
                    op,
                    body: PendingBody::Ready(event),
                }
            }
            Work::DeadLetter { meta, raw, letter } => Pending {
                meta,
                op: None,
                body: PendingBody::DeadLetter(raw, letter),
            },
            Work::Execute { meta, .. } => {
                return Err(StageError::Fatal(format!(
                    "record at offset {} reached execute unclaimed (a pipeline wiring bug)",
                    meta.source.offset
                )))
            }
            Work::Claimed {
                mut meta,
                request,
                claim,
            } => {
                meta.generation = Some(claim.claimed_at_ms);
                let key = self.ordering_key(meta.key.as_deref(), &request.request_id);
                let (done_tx, done_rx) = oneshot::channel::<()>();
                let previous = self.tails.insert(key, done_rx);
                self.purge_tails();
                let (tx, rx) = mpsc::channel(EVENTS_PER_REQUEST);
                let op = request.op;
                let span = tracing::info_span!(
                    "request",
                    request_id = %request.request_id,
                    collection = %request.collection,
                    op = op.as_str(),
                );
                let job = Job {
                    shared: self.shared.clone(),
                    request: Arc::new(request),
                    published: meta
                        .skip_counts
                        .clone()
                        .map(|counts| (meta.skip_progress, counts)),
                    chunks: claim.plan,
                    claimed_at_ms: claim.claimed_at_ms,
                    source: meta.source.clone(),
                    received: meta.received,
                    events: tx,
                };
                self.tasks.spawn(
                    async move {
                        if let Some(previous) = previous {
                            // Err = the previous task ended early (abort); order is kept either way.
                            let _ = previous.await;
                        }
                        job.run().await;
                        drop(done_tx);
                    }
                    .instrument(span),
                );
                Pending {
                    meta,
                    op: Some(op),
                    body: PendingBody::Stream(rx),
                }
            }
        };
        out.send(pending).await
    }
}

/// One request's execution.
struct Job {
    shared: Arc<Shared>,
    request: SharedRequest,
    /// What earlier runs published of this request, when its position recorded it: that many
    /// first progress events (not published again) and their item counts — the terminal
    /// event's counts start from these, whatever a replay of those chunks would say now.
    published: Option<(usize, Counts)>,
    chunks: Vec<Range<usize>>,
    /// When the request was first claimed (unix ms): its deadline counts from here on every
    /// attempt, and it is the claim's generation in the ledger keys.
    claimed_at_ms: i64,
    source: SourceRef,
    received: Instant,
    events: mpsc::Sender<Emitted>,
}

impl Job {
    /// The request's deadline (unix ms), from its first claim: the same on every replay.
    fn deadline_ms(&self) -> Option<i64> {
        let ms = self.request.options.deadline_ms.or(self
            .shared
            .config
            .execute
            .default_deadline_ms)?;
        Some(self.claimed_at_ms.saturating_add(ms as i64))
    }

    /// Runs every chunk and sends the events. Returns early (without a terminal event) when
    /// aborted or when the commit stage is gone.
    async fn run(self) {
        let (skip, mut counts) = self.published.clone().unwrap_or_default();
        let n = self.chunks.len();
        if self.request.op == Op::Lookup {
            let concurrency = self.shared.config.execute.lookup_concurrency;
            let job = &self;
            let mut events = futures::stream::iter(0..n)
                .map(|i| {
                    async move {
                        if i < skip {
                            // Published already and counted in `counts`: not read again. The
                            // commit stage passes over this placeholder (chunk < skip).
                            return Some(job.chunk(i).event(Vec::new()));
                        }
                        job.lookup_chunk(i).await
                    }
                    .instrument(tracing::debug_span!("chunk", chunk = i))
                })
                .buffered(concurrency);
            let mut i = 0;
            while let Some(event) = events.next().await {
                let Some(event) = event else { return };
                if !self.emit(&mut counts, event, None, i >= skip).await {
                    return;
                }
                i += 1;
            }
        } else {
            let mut stopped = false;
            for i in 0..n {
                let span = tracing::debug_span!("chunk", chunk = i);
                let Some((event, json)) = self.write_chunk(i, stopped).instrument(span).await
                else {
                    return;
                };
                stopped |= self.request.options.stop_on_error
                    && event.items.iter().any(|r| r.status == ItemStatus::Failed);
                if !self.emit(&mut counts, event, json, i >= skip).await {
                    return;
                }
            }
        }
        let completed = ResultEvent::Completed(CompletedEvent {
            request_id: self.request.request_id.clone(),
            chunks: n,
            counts,
            duration_ms: self.received.elapsed().as_millis() as u64,
            source: self.source.clone(),
        });
        let _ = self.events.send(completed.into()).await;
    }

    /// Sends a chunk's event, made to fit one message first (the same way on a replay), and
    /// adds its items to `counts` unless an earlier run published (and counted) it. `json`:
    /// the event's JSON as the store wrote it to the ledger, sent along when the event fits
    /// as it is (serialized once for both).
    async fn emit(
        &self,
        counts: &mut Counts,
        mut event: ProgressEvent,
        mut json: Option<String>,
        count: bool,
    ) -> bool {
        let limit = self.shared.config.limits.max_event_bytes;
        if !json
            .as_ref()
            .is_some_and(|j| crate::fit::progress_fits(j.len(), limit))
        {
            json = None;
            crate::fit::fit_progress(&mut event, limit);
        }
        if count {
            for item in &event.items {
                counts.add(item.status);
            }
        }
        let event = Emitted {
            event: ResultEvent::Progress(event),
            json,
        };
        self.events.send(event).await.is_ok()
    }

    fn chunk(&self, index: usize) -> WriteChunk {
        WriteChunk {
            request: self.request.clone(),
            index,
            chunks: self.chunks.len(),
            range: self.chunks[index].clone(),
            source: self.source.clone(),
            target: self.shared.targets[&self.request.collection].clone(),
            window_secs: self.shared.config.dedupe.window_secs as i64,
            generation: self.claimed_at_ms,
        }
    }

    /// An event in which every undecided item gets `status` with `code`.
    fn unattempted(
        &self,
        chunk: &WriteChunk,
        code: ItemErrorCode,
        message: &str,
        retryable: bool,
    ) -> ProgressEvent {
        let status = if code == ItemErrorCode::StoreError {
            ItemStatus::Failed
        } else {
            ItemStatus::NotAttempted
        };
        let items = chunk
            .items()
            .iter()
            .map(|item| match &item.decided {
                Some(d) => (**d).clone(),
                None => ItemResult::error(item.index, status, code, message, retryable),
            })
            .collect();
        chunk.event(items)
    }

    fn past_deadline(&self) -> bool {
        self.deadline_ms().is_some_and(|d| unix_now_ms() >= d)
    }

    /// Writes chunk `index` (or settles its outcome without writing): its event, with the
    /// event's JSON when the store wrote it to the ledger this time.
    async fn write_chunk(
        &self,
        index: usize,
        stopped: bool,
    ) -> Option<(ProgressEvent, Option<String>)> {
        let chunk = Arc::new(self.chunk(index));
        if self.shared.abort.is_cancelled() {
            return None;
        }
        if self.past_deadline() {
            let event = self.unattempted(
                &chunk,
                ItemErrorCode::DeadlineExceeded,
                "the request's deadline passed",
                true,
            );
            return self.settle(chunk, event).await.map(|e| (e, None));
        }
        if stopped {
            let event = self.unattempted(
                &chunk,
                ItemErrorCode::Stopped,
                "an earlier item failed and stop_on_error is set",
                true,
            );
            return self.settle(chunk, event).await.map(|e| (e, None));
        }
        let cost = self.shared.write_limit.cost(chunk.range.len());
        let _permit = self.shared.writes.acquire_many(cost).await.ok()?;
        let started = Instant::now();
        let store = &self.shared.store;
        let result = self
            .shared
            .retry
            .run("write_chunk", &self.shared.abort, || {
                store.write_chunk(chunk.clone())
            })
            .await;
        let metrics = self.shared.metrics.of(self.request.op);
        metrics.duration.record(started.elapsed().as_secs_f64());
        match result {
            Ok(commit) => {
                if commit.replayed {
                    metrics.replayed.increment(1);
                } else {
                    metrics.applied.increment(1);
                }
                Some((commit.event, commit.json))
            }
            Err(_) if self.shared.abort.is_cancelled() => None,
            Err(e) => {
                let event = self.store_failure(&chunk, e);
                self.settle(chunk, event).await.map(|e| (e, None))
            }
        }
    }

    /// Records a chunk outcome decided without the store's writes (deadline, stop, store
    /// failure) in the ledger, and returns what the ledger holds: an earlier attempt's
    /// outcome wins, so a replay publishes what the first attempt did (an unknown commit
    /// result that in fact committed is found here too). A store that keeps failing is
    /// waited for, round after round of retries: an outcome the ledger does not hold is never
    /// published — the chunk may have committed — unless the store refuses it for good.
    /// `None` when aborted meanwhile.
    async fn settle(&self, chunk: Arc<WriteChunk>, event: ProgressEvent) -> Option<ProgressEvent> {
        let store = &self.shared.store;
        loop {
            let settled = self
                .shared
                .retry
                .run("settle", &self.shared.abort, || {
                    store.settle(chunk.clone(), event.clone())
                })
                .await;
            match settled {
                Ok(commit) => return Some(commit.event),
                Err(_) if self.shared.abort.is_cancelled() => return None,
                Err(e) if e.kind == StoreErrorKind::Permanent => {
                    // Refused for good (nothing to wait for): the outcome stands, but a replay
                    // may decide the chunk again.
                    counter!(PIPELINE_ERRORS, "component" => "settle").increment(1);
                    tracing::error!(chunk = chunk.index, error = %e, "could not record a chunk's outcome in the ledger");
                    return Some(event);
                }
                Err(e) => {
                    counter!(PIPELINE_ERRORS, "component" => "settle").increment(1);
                    if crate::logs::allow() {
                        tracing::warn!(chunk = chunk.index, error = %e, "recording a chunk's outcome keeps failing; retrying");
                    }
                    tokio::select! {
                        () = self.shared.abort.cancelled() => return None,
                        () = tokio::time::sleep(self.shared.retry.max) => {}
                    }
                }
            }
        }
    }

    fn store_failure(&self, chunk: &WriteChunk, e: StoreError) -> ProgressEvent {
        self.shared.metrics.of(self.request.op).failed.increment(1);
        if crate::logs::allow() {
            tracing::warn!(chunk = chunk.index, code = e.code, error = %e.message, "chunk failed");
        }
        let retryable = e.kind != StoreErrorKind::Permanent;
        self.unattempted(
            chunk,
            ItemErrorCode::StoreError,
            &format!("store error ({}): {}", e.code, e.message),
            retryable,
        )
    }

    async fn lookup_chunk(&self, index: usize) -> Option<ProgressEvent> {
        let chunk = self.chunk(index);
        if self.shared.abort.is_cancelled() {
            return None;
        }
        if self.past_deadline() {
            return Some(self.unattempted(
                &chunk,
                ItemErrorCode::DeadlineExceeded,
                "the request's deadline passed",
                true,
            ));
        }
        let items = chunk.items();
        let keys: Vec<_> = items
            .iter()
            .filter(|i| i.decided.is_none())
            .filter_map(|i| i.key.clone())
            .collect();
        let _permit = self.shared.lookups.acquire().await.ok()?;
        let started = Instant::now();
        let store = &self.shared.store;
        let target = &chunk.target;
        // The documents of a chunk go into one event: their total is bounded by it, which
        // also bounds what concurrent lookups hold in memory.
        let budget = self.shared.config.limits.max_event_bytes;
        let result = self
            .shared
            .retry
            .run("lookup", &self.shared.abort, || {
                store.lookup(target, &keys, budget)
            })
            .await;
        let metrics = self.shared.metrics.of(Op::Lookup);
        metrics.duration.record(started.elapsed().as_secs_f64());
        let docs = match result {
            Ok(docs) => docs,
            Err(_) if self.shared.abort.is_cancelled() => return None,
            Err(e) => return Some(self.store_failure(&chunk, e)),
        };
        metrics.applied.increment(1);
        let mut docs = docs.into_iter();
        let results = items
            .iter()
            .map(|item| match &item.decided {
                Some(d) => (**d).clone(),
                None => match docs.next().unwrap_or(Found::Missing) {
                    Found::Doc(doc) => ItemResult {
                        doc: Some(doc),
                        ..ItemResult::status(item.index, ItemStatus::Ok)
                    },
                    Found::Missing => ItemResult::status(item.index, ItemStatus::NotFound),
                    Found::TooLarge(bytes) => ItemResult::error(
                        item.index,
                        ItemStatus::Failed,
                        ItemErrorCode::TooLarge,
                        format!(
                            "the document ({bytes} bytes) does not fit in one result event with \
                             the others of its chunk (limits.max_event_bytes = {budget}); look \
                             it up in a smaller request"
                        ),
                        true,
                    ),
                },
            })
            .collect();
        Some(chunk.event(results))
    }
}

#[cfg(test)]
mod tests;
