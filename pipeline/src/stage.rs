//! The `Stage` trait, the bounded channels between stages, and the driver that runs a stage.
//!
//! A stage implements one required method, [`Stage::process`]; lifecycle hooks have defaults.
//! The driver owns the loop: it receives from the inbox until the upstream closes it, calls
//! the stage, measures queue depth and processing time, calls [`Stage::on_drain`] at the end
//! and then drops the outbox, which closes the next stage's inbox — so shutdown that starts at
//! the source drains the whole pipeline in order.

use std::future::Future;
use std::time::{Duration, Instant};

use metrics::{gauge, histogram, Gauge};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::metrics::{QUEUE_DEPTH, STAGE_DURATION};

/// An error that stops the pipeline (a bug, or a sink that cannot go on). Bad input and store
/// trouble are never stage errors: they become item statuses, rejections or dead letters.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The downstream stage is gone (it failed or the pipeline was aborted).
    #[error("downstream of stage `{0}` closed")]
    Closed(&'static str),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] crate::codes::SinkError),
    /// Anything else that makes going on unsafe.
    #[error("{0}")]
    Fatal(String),
}

/// The sending side of a bounded channel into a stage; `send` waits when the channel is full.
#[derive(Debug)]
pub struct Outbox<T> {
    tx: mpsc::Sender<T>,
    stage: &'static str,
    gauge: Gauge,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            stage: self.stage,
            gauge: self.gauge.clone(),
        }
    }
}

/// The receiving side of a bounded channel into a stage.
#[derive(Debug)]
pub struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    gauge: Gauge,
}

/// A bounded channel feeding stage `stage`. Its depth is exported as
/// `sluice_stage_queue_depth{stage}` (the gauge is looked up once, here: per-record updates
/// then cost an atomic store).
pub fn channel<T>(stage: &'static str, capacity: usize) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let depth = gauge!(QUEUE_DEPTH, "stage" => stage);
    (
        Outbox {
            tx,
            stage,
            gauge: depth.clone(),
        },
        Inbox { rx, gauge: depth },
    )
}

impl<T> Outbox<T> {
    /// Sends, waiting while the channel is full (backpressure, never dropping).
    pub async fn send(&self, value: T) -> Result<(), StageError> {
        self.tx
            .send(value)
            .await
            .map_err(|_| StageError::Closed(self.stage))?;
        self.gauge.set(self.depth() as f64);
        Ok(())
    }

    /// Waits for room for one value without having it yet (the source reserves a slot before
    /// it reads, so that it never holds a record while waiting).
    pub async fn reserve(&self) -> Result<Reserved<'_, T>, StageError> {
        let permit = self
            .tx
            .reserve()
            .await
            .map_err(|_| StageError::Closed(self.stage))?;
        Ok(Reserved { permit, out: self })
    }

    fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// A slot reserved in an [`Outbox`]: sending into it cannot wait.
pub struct Reserved<'a, T> {
    permit: mpsc::Permit<'a, T>,
    out: &'a Outbox<T>,
}

impl<T> Reserved<'_, T> {
    /// Sends into the reserved slot.
    pub fn send(self, value: T) {
        self.permit.send(value);
        self.out.gauge.set(self.out.depth() as f64);
    }
}

impl<T> Inbox<T> {
    /// Receives the next value; `None` once every sender is gone and the channel is empty.
    pub async fn recv(&mut self) -> Option<T> {
        let v = self.rx.recv().await;
        self.gauge.set(self.rx.len() as f64);
        v
    }

    /// The next value if one is waiting now, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        let v = self.rx.try_recv().ok()?;
        self.gauge.set(self.rx.len() as f64);
        Some(v)
    }

    /// Nothing is waiting in the channel now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Moves the values already waiting, up to `limit` in all, into `batch` without waiting.
    pub fn drain_ready(&mut self, batch: &mut Vec<T>, limit: usize) {
        while batch.len() < limit {
            match self.rx.try_recv() {
                Ok(v) => batch.push(v),
                Err(_) => break,
            }
        }
        self.gauge.set(self.rx.len() as f64);
    }
}

/// One step of the pipeline.
pub trait Stage: Send + 'static {
    /// What the stage receives.
    type In: Send + 'static;
    /// What the stage emits.
    type Out: Send + 'static;
    /// Name for metrics labels and spans.
    const NAME: &'static str;

    /// Handles one input, emitting any number of outputs.
    fn process(
        &mut self,
        input: Self::In,
        out: &Outbox<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send;

    /// Inputs [`Stage::process_batch`] may receive at once: the driver hands over, besides the
    /// input that woke it, what is already waiting in the inbox, never waiting for more.
    /// Default: 1 (every input alone).
    fn batch_limit(&self) -> usize {
        1
    }

    /// Handles inputs that were waiting together, in order (a stage that can share one store
    /// round trip among them overrides it). Default: [`Stage::process`] for each.
    fn process_batch(
        &mut self,
        inputs: Vec<Self::In>,
        out: &Outbox<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        async move {
            for input in inputs {
                self.process(input, out).await?;
            }
            Ok(())
        }
    }

    /// Called every [`Stage::tick_interval`] while the stage is idle or busy (e.g. to commit
    /// on a timer). Default: nothing.
    fn on_tick(
        &mut self,
        _out: &Outbox<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// How often [`Stage::on_tick`] runs; `None` (the default) disables ticks.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Waits until work the stage already holds can move on without a new input (the commit
    /// stage: an event of a request it received earlier). The driver races it with the inbox
    /// and the tick, then calls [`Stage::on_ready`]. It must be cancel-safe: dropped before it
    /// resolves, it loses nothing. Default: never.
    fn ready(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Moves on the work [`Stage::ready`] found ready. Default: nothing.
    fn on_ready(
        &mut self,
        _out: &Outbox<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// Called when the stage has caught up: after it handled an input, a tick or ready work,
    /// its inbox was empty (e.g. to commit what it holds now rather than on the next tick, as
    /// nothing else is there to join it). Default: nothing.
    fn on_idle(
        &mut self,
        _out: &Outbox<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// Called once after the input is closed and drained, before the output is closed
    /// (e.g. to flush, or to finish work [`Stage::ready`] still holds). Default: nothing.
    fn on_drain(
        &mut self,
        _out: &Outbox<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }
}

/// What the stage driver does next.
enum Next<T> {
    Input(Option<T>),
    Tick,
    Ready,
}

/// The next tick of `ticker`; never without one.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Work a stage does between two yields of its worker (see `run_stage`).
const YIELD_AFTER: Duration = Duration::from_micros(300);

/// Inputs (for a batching stage: batches) a stage handles in a row, when they are already
/// waiting, before it looks at its ticker and ready work again (see `run_stage`).
const RUN_MAX: usize = 32;

/// Runs `stage` until its inbox closes; then drains, and closes its outbox by dropping it.
pub async fn run_stage<S: Stage>(
    mut stage: S,
    mut inbox: Inbox<S::In>,
    out: Outbox<S::Out>,
) -> Result<(), StageError> {
    let span = tracing::info_span!("stage", stage = S::NAME);
    let duration = histogram!(STAGE_DURATION, "stage" => S::NAME);
    async move {
        let mut ticker = stage.tick_interval().map(|d| {
            let mut t = tokio::time::interval(d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut busy = Duration::ZERO;
        loop {
            let next = tokio::select! {
                v = inbox.recv() => Next::Input(v),
                () = tick(&mut ticker) => Next::Tick,
                () = stage.ready() => Next::Ready,
            };
            match next {
                Next::Input(Some(input)) => {
                    // Inputs already waiting are handled in a row, up to RUN_MAX of them,
                    // without going back to the select (its ticker and `ready` futures) in
                    // between; each input is still timed on its own, from the end of the
                    // previous one (one clock read per input).
                    let mut started = Instant::now();
                    let mut next = Some(input);
                    let mut run = 0;
                    while let Some(input) = next.take() {
                        let limit = stage.batch_limit();
                        if limit > 1 {
                            let mut batch = Vec::with_capacity(limit.min(64));
                            batch.push(input);
                            inbox.drain_ready(&mut batch, limit);
                            stage.process_batch(batch, &out).await?;
                        } else {
                            stage.process(input, &out).await?;
                        }
                        let ended = Instant::now();
                        let took = ended.duration_since(started);
                        started = ended;
                        duration.record(took.as_secs_f64());
                        // A busy stage rarely awaits (its input is ready), so the stage it woke
                        // by sending sits in this worker's LIFO slot, which no other worker may
                        // steal, until this one gives the worker up: yield every YIELD_AFTER of
                        // work so that it runs (and the other core stays busy).
                        busy += took;
                        if busy >= YIELD_AFTER {
                            busy = Duration::ZERO;
                            tokio::task::yield_now().await;
                            break;
                        }
                        run += 1;
                        if run < RUN_MAX {
                            next = inbox.try_recv();
                        }
                    }
                }
                Next::Input(None) => break,
                Next::Tick => stage.on_tick(&out).await?,
                Next::Ready => stage.on_ready(&out).await?,
            }
            if inbox.is_empty() {
                stage.on_idle(&out).await?;
            }
        }
        stage.on_drain(&out).await?;
        tracing::debug!("drained");
        Ok(())
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Double;
    impl Stage for Double {
        type In = u32;
        type Out = u32;
        const NAME: &'static str = "double";
        async fn process(&mut self, input: u32, out: &Outbox<u32>) -> Result<(), StageError> {
            out.send(input * 2).await
        }
        async fn on_drain(&mut self, out: &Outbox<u32>) -> Result<(), StageError> {
            out.send(0).await
        }
    }

    #[tokio::test]
    async fn drives_until_closed_then_drains_and_closes() {
        let (tx, rx) = channel("double", 2);
        let (otx, mut orx) = channel("next", 2);
        let h = tokio::spawn(run_stage(Double, rx, otx));
        tx.send(1).await.unwrap();
        tx.send(5).await.unwrap();
        drop(tx);
        assert_eq!(orx.recv().await, Some(2));
        assert_eq!(orx.recv().await, Some(10));
        assert_eq!(
            orx.recv().await,
            Some(0),
            "on_drain runs after the input closes"
        );
        assert_eq!(orx.recv().await, None, "output closes after draining");
        h.await.unwrap().unwrap();
    }

    /// Records the batches it is handed.
    struct Batches(Vec<usize>);
    impl Stage for Batches {
        type In = u32;
        type Out = u32;
        const NAME: &'static str = "batches";
        fn batch_limit(&self) -> usize {
            3
        }
        async fn process(&mut self, input: u32, out: &Outbox<u32>) -> Result<(), StageError> {
            out.send(input).await
        }
        async fn process_batch(
            &mut self,
            inputs: Vec<u32>,
            out: &Outbox<u32>,
        ) -> Result<(), StageError> {
            self.0.push(inputs.len());
            for i in inputs {
                out.send(i).await?;
            }
            Ok(())
        }
        async fn on_drain(&mut self, out: &Outbox<u32>) -> Result<(), StageError> {
            out.send(self.0.iter().map(|&n| n as u32 * 100).sum()).await
        }
    }

    #[tokio::test]
    async fn waiting_inputs_come_in_bounded_batches_in_order() {
        let (tx, rx) = channel("batches", 16);
        let (otx, mut orx) = channel("next", 16);
        for i in 1..=7 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        run_stage(Batches(Vec::new()), rx, otx).await.unwrap();
        let mut got = Vec::new();
        while let Some(v) = orx.recv().await {
            got.push(v);
        }
        // 7 waiting inputs with a limit of 3: batches of 3, 3 and 1 (the drain reports 700).
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6, 7, 700]);
    }

    #[tokio::test]
    async fn a_batching_stage_does_not_wait_to_fill_a_batch() {
        let (tx, rx) = channel("batches", 16);
        let (otx, mut orx) = channel("next", 16);
        let h = tokio::spawn(run_stage(Batches(Vec::new()), rx, otx));
        tx.send(1).await.unwrap();
        assert_eq!(orx.recv().await, Some(1), "a lone input goes on at once");
        drop(tx);
        assert_eq!(orx.recv().await, Some(100), "as a batch of one");
        h.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn full_channel_blocks_instead_of_dropping() {
        let (tx, mut rx) = channel::<u32>("x", 1);
        tx.send(1).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.send(2)).await;
        assert!(blocked.is_err(), "second send must wait for room");
        assert_eq!(rx.recv().await, Some(1));
        tx.send(3).await.unwrap();
        assert_eq!(rx.recv().await, Some(3));
    }
}
