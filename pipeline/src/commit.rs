//! Stage 5: publish each record's events and advance the source position — in source order
//! per partition, atomically through the [`Sink`]'s units (one unit per
//! `pipeline.commit_max_records` records or `pipeline.commit_interval_ms`, whichever comes
//! first — or sooner, when the stage has caught up: see [`Stage::on_idle`] below).
//!
//! Records queue in one lane per partition; only a lane's head publishes, so each partition
//! keeps its order, while the lanes move independently: a long request holds up the records
//! behind it in its own partition only. Events of a request are streamed as its chunks
//! commit (never collected per request), and a unit commits on time even in the middle of a
//! request: the head's events published so far go with a partial position
//! ([`Sink::record_partial`]), so no transaction stays open for a whole request, and a re-read
//! of the record skips what was published (`skip_progress`). A head whose execution was
//! abandoned (shutdown deadline) stops its lane: it is committed as partial and nothing after
//! it in that partition is marked done; the restart re-reads it.

mod lanes;
mod release;

pub use release::Releaser;

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, histogram};

use crate::budget::InFlight;
use crate::codes::SinkError;
use crate::contract::{ItemStatus, ResultEvent};
use crate::health::Health;
use crate::metrics::{
    CounterCache, COMMITS, COMMIT_DURATION, DEAD_LETTERS, END_TO_END, ITEMS, ITEM_ERRORS,
    REJECTIONS, REQUESTS,
};
use crate::record::Meta;
use crate::report::RunStats;
use crate::sink::Sink;
use crate::stage::{Outbox, Stage, StageError};
use crate::store::Finished;
use crate::work::Pending;

use lanes::{Lanes, Step};

/// The commit stage.
pub struct Commit<S: Sink> {
    lanes: Lanes,
    unit: Unit<S>,
    /// Releases finished requests once their terminal events are committed.
    releaser: Option<Releaser>,
}

/// The sink and what the current unit holds.
struct Unit<S: Sink> {
    sink: S,
    max_records: usize,
    interval: Duration,
    /// `pipeline.commit_idle_ms` (at least a twentieth of the interval): shortest time
    /// between two commits made on catching up.
    idle_gap: Duration,
    /// Records marked done since the last commit.
    done: usize,
    /// Events published or positions recorded since the last commit.
    dirty: bool,
    /// The claimed requests whose terminal events the unit holds: released once it commits.
    finished: Vec<Finished>,
    /// The last event published, serialized (the sink sends these bytes; a terminal event's
    /// are also what the release keeps).
    json: Vec<u8>,
    last_commit: Instant,
    stats: Arc<RunStats>,
    in_flight: Arc<InFlight>,
    health: Arc<Health>,
    end_to_end: metrics::Histogram,
    /// The per-event counters, by their labels.
    counters: Counters,
}

/// The counters the unit increments for every event, each label set looked up once.
struct Counters {
    requests: CounterCache<2>,
    items: CounterCache<2>,
    item_errors: CounterCache<1>,
    rejections: CounterCache<1>,
    dead_letters: CounterCache<1>,
}

impl Counters {
    fn new() -> Self {
        Counters {
            requests: CounterCache::new(REQUESTS, ["op", "outcome"]),
            items: CounterCache::new(ITEMS, ["op", "status"]),
            item_errors: CounterCache::new(ITEM_ERRORS, ["error_code"]),
            rejections: CounterCache::new(REJECTIONS, ["error_code"]),
            dead_letters: CounterCache::new(DEAD_LETTERS, ["reason"]),
        }
    }
}

/// Intervals longer than this ask for few, large transactions (and tests rely on them being
/// open while records flow): the stage then commits on the interval only.
const IDLE_COMMITS_UP_TO: u64 = 1_000;

/// The shortest time between two commits made on catching up: `pipeline.commit_idle_ms`, at
/// least a twentieth of the interval; never (the interval alone) past [`IDLE_COMMITS_UP_TO`].
fn idle_gap(config: &sluice_config::PipelineConfig) -> Duration {
    if config.commit_interval_ms > IDLE_COMMITS_UP_TO {
        return Duration::MAX;
    }
    Duration::from_millis(config.commit_idle_ms.max(config.commit_interval_ms / 20))
}

impl<S: Sink> Commit<S> {
    /// A commit stage writing to `sink`; `in_flight` is the budget whose permits records
    /// carry (for the in-flight gauge).
    pub fn new(
        sink: S,
        config: &sluice_config::PipelineConfig,
        stats: Arc<RunStats>,
        in_flight: Arc<InFlight>,
        health: Arc<Health>,
    ) -> Self {
        Commit {
            lanes: Lanes::default(),
            unit: Unit {
                sink,
                max_records: config.commit_max_records,
                interval: Duration::from_millis(config.commit_interval_ms),
                idle_gap: idle_gap(config),
                done: 0,
                dirty: false,
                finished: Vec::new(),
                json: Vec::with_capacity(1024),
                last_commit: Instant::now(),
                stats,
                in_flight,
                health,
                end_to_end: histogram!(END_TO_END),
                counters: Counters::new(),
            },
            releaser: None,
        }
    }

    /// Releases each claimed request through `releaser` once the unit holding its terminal
    /// event has committed.
    pub fn with_releaser(mut self, releaser: Releaser) -> Self {
        self.releaser = Some(releaser);
        self
    }

    /// Publishes what lane `lane` can publish now, marking finished records done.
    async fn advance(&mut self, lane: usize) -> Result<(), StageError> {
        loop {
            match self.lanes.step(lane) {
                Step::Wait => return Ok(()),
                Step::Event(e, op) => self.unit.publish(&e.event, e.json.as_deref(), op).await?,
                Step::Last(event, op, meta) => {
                    self.unit.publish(&event, None, op).await?;
                    if let (ResultEvent::Completed(c), Some(generation), true) =
                        (&event, meta.generation, self.unit.sink.owns(&meta.source))
                    {
                        // (A request handed over is released by its new owner.)
                        self.unit.finished.push(Finished {
                            request_id: c.request_id.clone(),
                            generation,
                            chunks: c.chunks,
                            terminal: String::from_utf8_lossy(&self.unit.json).into_owned(),
                        });
                    }
                    self.unit.done(meta).await?;
                }
                Step::DeadLetter(raw, letter, meta) => {
                    self.unit.sink.dead_letter(&raw, &letter).await?;
                    self.unit
                        .stats
                        .dead_letters
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let reason = letter.error.code.as_str();
                    self.unit.counters.dead_letters.get([reason]).increment(1);
                    self.unit.done(meta).await?;
                }
                Step::Abandoned(offset) => {
                    tracing::info!(
                        offset,
                        "record abandoned at shutdown; it will be re-read (the events it published are kept)"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// Commits the unit: first the partial positions of unfinished heads whose events it holds.
    async fn commit(&mut self) -> Result<(), StageError> {
        for (source, start_at, published, counts) in self.lanes.partials() {
            self.unit
                .sink
                .record_partial(&source, start_at, published, &counts)
                .await?;
            self.unit.dirty = true;
        }
        self.unit.commit().await?;
        if let Some(releaser) = &self.releaser {
            releaser.send(std::mem::take(&mut self.unit.finished)).await;
        }
        Ok(())
    }
}

impl<S: Sink> Unit<S> {
    /// Publishes `event`; `body` is its progress event's JSON when the store made it already.
    async fn publish(
        &mut self,
        event: &ResultEvent,
        body: Option<&str>,
        op: &'static str,
    ) -> Result<(), StageError> {
        self.json.clear();
        match (event, body) {
            (ResultEvent::Progress(_), Some(body)) => {
                crate::fit::progress_message(body, &mut self.json);
            }
            _ => serde_json::to_writer(&mut self.json, event)
                .map_err(|e| SinkError(e.to_string()))?,
        }
        self.sink.publish(event, &self.json).await?;
        self.dirty = true;
        self.stats.event(event);
        match event {
            ResultEvent::Progress(p) => {
                let mut by_status = [0u64; ItemStatus::ALL.len()];
                for item in &p.items {
                    by_status[item.status as usize] += 1;
                    if let (Some(e), ItemStatus::Failed | ItemStatus::NotAttempted) =
                        (&item.error, item.status)
                    {
                        let c = &mut self.counters.item_errors;
                        c.get([e.code.as_str()]).increment(1);
                    }
                }
                for (status, n) in ItemStatus::ALL.iter().zip(by_status) {
                    if n > 0 {
                        let c = &mut self.counters.items;
                        c.get([op, status.as_str()]).increment(n);
                    }
                }
            }
            ResultEvent::Rejected(r) => {
                for e in &r.errors {
                    let c = &mut self.counters.rejections;
                    c.get([e.code.as_str()]).increment(1);
                }
                let c = &mut self.counters.requests;
                c.get([op, "rejected"]).increment(1);
            }
            ResultEvent::Completed(_) | ResultEvent::Duplicate(_) => {
                let c = &mut self.counters.requests;
                c.get([op, event.kind()]).increment(1);
            }
        }
        Ok(())
    }

    /// Every event of the record is published: its position goes into the unit and its
    /// budget share is given back.
    async fn done(&mut self, meta: Meta) -> Result<(), StageError> {
        self.sink.record_done(&meta.source, meta.resume_at).await?;
        self.dirty = true;
        let latency = meta.received.elapsed();
        self.end_to_end.record(latency.as_secs_f64());
        self.stats.record_done(latency);
        drop(meta.permit);
        self.in_flight.report();
        self.health.progress();
        self.done += 1;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StageError> {
        if !self.dirty {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let started = Instant::now();
        match self.sink.commit().await {
            Ok(()) => {
                counter!(COMMITS, "outcome" => "ok").increment(1);
                let took = started.elapsed();
                histogram!(COMMIT_DURATION).record(took.as_secs_f64());
                tracing::debug!(
                    records = self.done,
                    took_ms = took.as_secs_f64() * 1e3,
                    "committed"
                );
                self.done = 0;
                self.dirty = false;
                self.last_commit = Instant::now();
                Ok(())
            }
            Err(e) => {
                counter!(COMMITS, "outcome" => "error").increment(1);
                tracing::error!(error = %e, "commit failed");
                Err(e.into())
            }
        }
    }
}

impl<S: Sink> Stage for Commit<S> {
    type In = Pending;
    type Out = ();
    const NAME: &'static str = "commit";

    async fn process(&mut self, input: Pending, _out: &Outbox<()>) -> Result<(), StageError> {
        let lane = self.lanes.push(input);
        self.advance(lane).await?;
        if self.unit.done >= self.unit.max_records {
            self.commit().await?;
        }
        Ok(())
    }

    fn ready(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.lanes.ready()
    }

    async fn on_ready(&mut self, _out: &Outbox<()>) -> Result<(), StageError> {
        while let Some(lane) = self.lanes.take_woken() {
            self.advance(lane).await?;
        }
        if self.unit.done >= self.unit.max_records {
            self.commit().await?;
        }
        Ok(())
    }

    /// A quarter of the commit interval (a commit is at most that late; ticking at the
    /// interval itself would skip every other one, as the last commit ended after the tick),
    /// or the idle gap if shorter (the driver calls [`Stage::on_idle`] after a tick too).
    fn tick_interval(&self) -> Option<Duration> {
        let mut every = self.unit.interval / 4;
        if !self.unit.idle_gap.is_zero() {
            every = every.min(self.unit.idle_gap);
        }
        Some(every.max(Duration::from_millis(1)))
    }

    /// The inbox is empty: if no head is executing either, nothing is about to join the open
    /// unit, so commit it now (at most once per `pipeline.commit_idle_ms`) rather than on the
    /// interval; while heads execute, their events are about to join it, so commit no later
    /// than a quarter interval. At low load each record thus waits for one commit, not for
    /// the interval; a busy stage batches as before. Heads that are ready are moved on first,
    /// so their events go along. When the unit commits does not matter to exactly-once: any
    /// unit boundary is one the tick could have drawn (unfinished heads are recorded as
    /// partial).
    async fn on_idle(&mut self, out: &Outbox<()>) -> Result<(), StageError> {
        use futures::FutureExt;
        while self.lanes.ready().now_or_never().is_some() {
            self.on_ready(out).await?;
        }
        let gap = if self.lanes.settled() {
            self.unit.idle_gap
        } else {
            self.unit.idle_gap.max(self.unit.interval / 4)
        };
        if self.unit.dirty && self.unit.last_commit.elapsed() >= gap {
            self.commit().await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self, _out: &Outbox<()>) -> Result<(), StageError> {
        if self.unit.last_commit.elapsed() >= self.unit.interval {
            self.commit().await?;
        }
        Ok(())
    }

    /// The input is closed: every lane runs until its records are done (or its head was
    /// abandoned), committing on time meanwhile; then the last commit.
    async fn on_drain(&mut self, out: &Outbox<()>) -> Result<(), StageError> {
        let mut tick = tokio::time::interval(self.unit.interval.max(Duration::from_millis(1)));
        while !self.lanes.settled() {
            tokio::select! {
                () = self.lanes.ready() => self.on_ready(out).await?,
                _ = tick.tick() => self.on_tick(out).await?,
            }
        }
        self.commit().await?;
        if let Some(releaser) = self.releaser.take() {
            releaser.close(Duration::from_secs(5)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
