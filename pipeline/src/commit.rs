//! Stage 5: publish each record's events and advance the source position — in source order,
//! atomically through the [`Sink`]'s units (one unit per `pipeline.commit_max_records`
//! records or `pipeline.commit_interval_ms`, whichever comes first).
//!
//! Events of one record are streamed as its chunks commit (progress events are never
//! collected per request). A record whose execution was abandoned (shutdown deadline) ends the
//! stage's commits: neither it nor anything after it is marked done, so they are re-read on
//! restart and the stored chunks are re-published from the ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, histogram};

use crate::budget::InFlight;
use crate::contract::{ItemStatus, ResultEvent};
use crate::health::Health;
use crate::metrics::{
    COMMITS, COMMIT_DURATION, DEAD_LETTERS, END_TO_END, ITEMS, ITEM_ERRORS, REJECTIONS, REQUESTS,
};
use crate::report::RunStats;
use crate::sink::Sink;
use crate::stage::{Outbox, Stage, StageError};
use crate::work::{Pending, PendingBody};

/// The commit stage.
pub struct Commit<S: Sink> {
    sink: S,
    max_records: usize,
    interval: Duration,
    uncommitted: usize,
    last_commit: Instant,
    halted: bool,
    stats: Arc<RunStats>,
    in_flight: Arc<InFlight>,
    health: Arc<Health>,
    end_to_end: metrics::Histogram,
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
            sink,
            max_records: config.commit_max_records,
            interval: Duration::from_millis(config.commit_interval_ms),
            uncommitted: 0,
            last_commit: Instant::now(),
            halted: false,
            stats,
            in_flight,
            health,
            end_to_end: histogram!(END_TO_END),
        }
    }

    async fn publish(&mut self, event: &ResultEvent, op: &'static str) -> Result<(), StageError> {
        self.sink.publish(event).await?;
        self.stats.event(event);
        match event {
            ResultEvent::Progress(p) => {
                let mut by_status = [0u64; ItemStatus::ALL.len()];
                for item in &p.items {
                    by_status[item.status as usize] += 1;
                    if let (Some(e), ItemStatus::Failed | ItemStatus::NotAttempted) =
                        (&item.error, item.status)
                    {
                        counter!(ITEM_ERRORS, "error_code" => e.code.as_str()).increment(1);
                    }
                }
                for (status, n) in ItemStatus::ALL.iter().zip(by_status) {
                    if n > 0 {
                        counter!(ITEMS, "op" => op, "status" => status.as_str()).increment(n);
                    }
                }
            }
            ResultEvent::Rejected(r) => {
                for e in &r.errors {
                    counter!(REJECTIONS, "error_code" => e.code.as_str()).increment(1);
                }
                counter!(REQUESTS, "op" => op, "outcome" => "rejected").increment(1);
            }
            ResultEvent::Completed(_) | ResultEvent::Duplicate(_) => {
                counter!(REQUESTS, "op" => op, "outcome" => event.kind()).increment(1);
            }
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StageError> {
        // After a halt the sink may hold events of the abandoned record: commit anyway so it
        // discards them, even when no record was finished since the last commit.
        if self.uncommitted == 0 && !self.halted {
            return Ok(());
        }
        let started = Instant::now();
        match self.sink.commit().await {
            Ok(()) => {
                counter!(COMMITS, "outcome" => "ok").increment(1);
                let took = started.elapsed();
                histogram!(COMMIT_DURATION).record(took.as_secs_f64());
                tracing::debug!(
                    records = self.uncommitted,
                    took_ms = took.as_secs_f64() * 1e3,
                    "committed"
                );
                self.uncommitted = 0;
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
        if self.halted {
            // An earlier record was abandoned: nothing after it may be marked done.
            return Ok(());
        }
        let Pending { meta, op, body } = input;
        let op = op.map(|o| o.as_str()).unwrap_or("none");
        match body {
            PendingBody::Ready(event) => self.publish(&event, op).await?,
            PendingBody::DeadLetter(raw, letter) => {
                self.sink.dead_letter(&raw, &letter).await?;
                self.stats
                    .dead_letters
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                counter!(DEAD_LETTERS, "reason" => letter.error.code.as_str()).increment(1);
            }
            PendingBody::Stream(mut rx) => {
                let mut terminal = false;
                while let Some(event) = rx.recv().await {
                    terminal = !matches!(event, ResultEvent::Progress(_));
                    self.publish(&event, op).await?;
                }
                if !terminal {
                    tracing::info!(
                        offset = meta.source.offset,
                        "record abandoned at shutdown; it will be re-read"
                    );
                    self.halted = true;
                    return Ok(());
                }
            }
        }
        self.sink.record_done(&meta.source, meta.resume_at).await?;
        let latency = meta.received.elapsed();
        self.end_to_end.record(latency.as_secs_f64());
        self.stats.record_done(latency);
        drop(meta.permit);
        self.in_flight.report();
        self.health.progress();
        self.uncommitted += 1;
        if self.uncommitted >= self.max_records {
            self.commit().await?;
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.interval.max(Duration::from_millis(1)))
    }

    async fn on_tick(&mut self, _out: &Outbox<()>) -> Result<(), StageError> {
        if self.last_commit.elapsed() >= self.interval {
            self.commit().await?;
        }
        Ok(())
    }

    async fn on_drain(&mut self, _out: &Outbox<()>) -> Result<(), StageError> {
        self.commit().await
    }
}
