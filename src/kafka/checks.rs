//! The Kafka service's periodic checks, every `observability.health_interval_ms`:
//! - readiness of the source: brokers and topics reachable, partitions assigned;
//! - this member's lag per assigned partition (`sluice_consumer_lag_records`), from its
//!   position, or from the group's committed offset before it has read anything there;
//! - the group as its coordinator sees it ([`group::describe`]): lag on every partition of the
//!   requests topic (`sluice_group_lag_records`), members, unowned partitions;
//! - the watchdogs: when the group leaves partitions owned by nobody for longer than
//!   `kafka.unowned_timeout_ms`, readiness says so and the run ends gracefully, so that the
//!   consumer leaves and rejoins — the coordinator then rebalances and assigns every partition.
//!   The same when this member's own client cannot reach any broker while a fresh client
//!   can, for as long: librdkafka (2.10 and later) drops every broker a metadata response
//!   leaves out, and a single broker shutting down answers with none; such a client never
//!   reconnects (confluentinc/librdkafka#5301), while the run's fresh clients do. Each
//!   repeats at most once per timeout while its condition lasts.
//!
//! Every member sees the same unowned partitions at the same time: were they all to rejoin
//! at the timeout, they would leave and rejoin together (seen with static membership: two
//! members within 0.5 s), which repairs nothing faster and restarts every member's run. So
//! each member waits a random extra delay (up to half the timeout) before it rejoins: the
//! first rejoin rebalances the group, and the others see their partitions owned again and
//! stay. Readiness still names the trouble from the timeout on. The watchdogs start over
//! with each run (a new consumer, a new member): a trouble the previous run saw is not held
//! against a member that has just joined.
//!
//! On the SQLite store (unless `embedded.shared` declares the file shared by every member),
//! the service is one instance: each run starts with its source gated, and the checks open the
//! gate once the group is stable with this member alone in it — and close it again, naming
//! the reason on `/readyz` and in the log, while the group has other members (their stores
//! are other files: documents would be split between them, and the ledger lost whenever a
//! partition moves).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::Offset;
use sluice_config::{Config, KafkaConfig};
use sluice_connectors::kafka::group::{self, GroupView};
use sluice_connectors::kafka::{admin, SluiceConsumer};
use sluice_pipeline::health::Health;
use sluice_pipeline::metrics::{
    CONSUMER_LAG, GROUP_LAG, GROUP_MEMBERS, GROUP_REJOINS, GROUP_UNOWNED,
};
use tokio_util::sync::CancellationToken;

use super::alone::Alone;
use super::watchdog::Watchdog;

/// The current run's consumer, shared with the checks, and the watchdog's requests to it.
#[derive(Clone, Default)]
pub struct Current(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    consumer: Option<Arc<SluiceConsumer>>,
    /// Counts the runs started: the checks start their watchdogs over when it changes.
    run: u64,
    /// Cancelled by the watchdog: the run ends gracefully and the service rejoins.
    rejoin: CancellationToken,
    /// The next run joins without static membership (see `run_once`).
    dynamic: bool,
    /// The store serves this instance alone (SQLite, not shared): each run's source is gated.
    solo: bool,
    /// The current run's source gate (with `solo`): set while it must not process.
    gate: Option<Arc<AtomicBool>>,
}

impl Current {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run starts with `consumer`; the token it returns asks it to end and rejoin.
    pub(crate) fn start_run(&self, consumer: Arc<SluiceConsumer>) -> CancellationToken {
        let mut slot = self.lock();
        slot.consumer = Some(consumer);
        slot.run += 1;
        slot.gate = slot.solo.then(|| Arc::new(AtomicBool::new(true)));
        slot.rejoin = CancellationToken::new();
        slot.rejoin.clone()
    }

    /// The run ended: whether the watchdog asked for it, and the run's consumer — for the
    /// caller to drop off the async threads (the last handle's drop closes it, which waits
    /// for the group leave: seconds when the coordinator is unreachable), never under this
    /// lock, which the checks take on the runtime.
    pub(crate) fn end_run(&self) -> (bool, Option<Arc<SluiceConsumer>>) {
        let mut slot = self.lock();
        (slot.rejoin.is_cancelled(), slot.consumer.take())
    }

    /// The store serves this instance alone: from now on each run's source starts gated, and
    /// the checks open its gate only while this member is alone in its group.
    pub(crate) fn serve_alone(&self) {
        self.lock().solo = true;
    }

    /// The current run's source gate (`None`: not gated).
    pub(crate) fn gate(&self) -> Option<Arc<AtomicBool>> {
        self.lock().gate.clone()
    }

    /// Whether the next run must join without static membership (and forgets it).
    pub(crate) fn take_dynamic(&self) -> bool {
        std::mem::take(&mut self.lock().dynamic)
    }

    fn consumer(&self) -> Option<Arc<SluiceConsumer>> {
        self.lock().consumer.clone()
    }

    /// The current run's number and consumer.
    fn run(&self) -> Option<(u64, Arc<SluiceConsumer>)> {
        let slot = self.lock();
        Some((slot.run, slot.consumer.clone()?))
    }

    /// Ends the current run so that its consumer leaves the group and a new one joins
    /// (`dynamic`: without static membership, so that the coordinator rebalances).
    fn rejoin(&self, dynamic: bool) {
        let mut slot = self.lock();
        slot.dynamic |= dynamic;
        slot.rejoin.cancel();
    }
}

/// Starts the checks (they run until the process exits): readiness of the source every
/// `health_interval_ms` within `health_timeout_ms`, and the group (several round trips, so
/// within `kafka.operation_timeout_ms`, on its own task) as often.
pub fn spawn(k: KafkaConfig, current: Current, health: Arc<Health>, config: &Config) {
    let interval = Duration::from_millis(config.observability.health_interval_ms);
    let timeout = Duration::from_millis(config.observability.health_timeout_ms);
    let (source_k, source_current, source_health) = (k.clone(), current.clone(), health.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let consumer = source_current.consumer();
            let k = source_k.clone();
            let verdict =
                tokio::task::spawn_blocking(move || source_ready(&k, consumer, timeout)).await;
            source_health.set_source(matches!(verdict, Ok(Ok(()))));
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limit = Duration::from_millis(k.unowned_timeout_ms);
        // Spread: see the module docs. The cut-off trouble is this member's own.
        let mut unowned_dog = Watchdog::new(limit).spread(limit / 2);
        let mut cut_off_dog = Watchdog::new(limit.min(CUT_OFF_AFTER));
        let mut reported: BTreeSet<i32> = BTreeSet::new();
        let (probe, timeout) = (timeout, sluice_connectors::kafka::op_timeout(&k));
        let mut watched_run = None;
        let mut alone = Alone::default();
        loop {
            tick.tick().await;
            let Some((run, consumer)) = current.run() else {
                continue;
            };
            if watched_run.replace(run) != Some(run) {
                unowned_dog.reset();
                cut_off_dog.reset();
            }
            let joined = consumer.context().assigned();
            // First, can this member's own client fetch the cluster's metadata at all (a
            // healthy one answers in milliseconds)? If so, look at the group; if not, can a
            // fresh client fetch it? And when the member's client fetches metadata but cannot
            // describe its group, can a fresh client? (After a broker restart a member's
            // client was seen answering metadata requests while every look at its partitions
            // timed out, assigned and consuming nothing, for minutes.)
            let k2 = k.clone();
            let (own_ok, fresh_ok, looked) = tokio::task::spawn_blocking(move || {
                if consumer.fetch_metadata(None, probe).is_err() {
                    return (false, admin::check(&k2, timeout).is_ok(), None);
                }
                match look(&k2, &consumer, timeout) {
                    Some(looked) => (true, true, Some(looked)),
                    None => (false, admin::can_describe_group(&k2, timeout), None),
                }
            })
            .await
            .unwrap_or((true, false, None));
            let cut_off = cut_off_dog.observe(cut_off(own_ok, fresh_ok), Instant::now());
            let unowned = match looked {
                Some((view, member_lag)) => {
                    if let Some(gate) = current.gate() {
                        alone.look(&gate, &view, joined, &k.group_id);
                    }
                    report_member_lag(&member_lag, &mut reported);
                    metrics::gauge!(GROUP_MEMBERS).set(view.members as f64);
                    metrics::gauge!(GROUP_UNOWNED).set(view.unowned.len() as f64);
                    for &(p, high, from) in &view.lag {
                        metrics::gauge!(GROUP_LAG, "partition" => p.to_string())
                            .set((high - from).max(0) as f64);
                    }
                    let trouble = (!view.unowned.is_empty()).then(|| {
                        format!(
                            "consumer group: partitions {:?} of the requests topic owned by no member (group {})",
                            view.unowned, view.state
                        )
                    });
                    unowned_dog.observe(trouble, Instant::now())
                }
                // The group is not seen: the unowned watchdog keeps what it knew.
                None => unowned_dog.last(),
            };
            // Held, and not (yet) because of other members: this member has not been seen
            // alone in a stable group since the run started.
            let solo_problem = current
                .gate()
                .filter(|g| g.load(Ordering::SeqCst))
                .map(|_| {
                    alone.problem.clone().unwrap_or_else(|| {
                        format!(
                            "the SQLite store serves one instance: processing nothing until \
                             this member is seen alone in consumer group {}",
                            k.group_id
                        )
                    })
                });
            health.set_group(
                solo_problem
                    .or(unowned.problem.clone())
                    .or(cut_off.problem.clone()),
            );
            if unowned.rejoin || cut_off.rejoin {
                metrics::counter!(GROUP_REJOINS).increment(1);
                let why = if unowned.rejoin { &unowned } else { &cut_off };
                tracing::warn!(
                    problem = why.problem.as_deref().unwrap_or_default(),
                    "leaving and rejoining it (the consumer group) with fresh clients"
                );
                // A cut-off client needs new clients, not a rebalance: static membership stays.
                current.rejoin(unowned.rejoin);
            }
        }
    });
}

/// How long this member's client may fail to fetch metadata that a fresh client fetches
/// before the member restarts with fresh clients (at most `kafka.unowned_timeout_ms`). A
/// healthy client reconnects within its reconnect back-off (10 s at most) of the broker's
/// return.
const CUT_OFF_AFTER: Duration = Duration::from_secs(30);

/// The cut-off trouble: this member's client cannot fetch the cluster's metadata or describe
/// its group (`own_ok` false) while a fresh client can (`fresh_ok`).
fn cut_off(own_ok: bool, fresh_ok: bool) -> Option<String> {
    (!own_ok && fresh_ok).then(|| {
        "this member's Kafka client cannot reach the cluster (its metadata or its group), \
         while a fresh client can"
            .to_string()
    })
}

/// Whether the source can deliver: brokers and topics reachable, partitions assigned.
fn source_ready(
    k: &KafkaConfig,
    consumer: Option<Arc<SluiceConsumer>>,
    timeout: Duration,
) -> Result<(), String> {
    admin::check(k, timeout)?;
    let c = consumer.ok_or("no consumer (restarting)")?;
    if !c.context().assigned() {
        return Err("no partitions assigned yet".into());
    }
    Ok(())
}

/// The group as its coordinator sees it, and this member's lag per assigned partition
/// (from its position, or from the group's committed offset before it has read there).
/// `None` when the group cannot be described (logged, rate-limited).
fn look(
    k: &KafkaConfig,
    c: &SluiceConsumer,
    timeout: Duration,
) -> Option<(GroupView, Vec<(i32, i64)>)> {
    let topic = &k.topics.requests;
    let view = match group::describe(c, &k.group_id, topic, timeout) {
        Ok(view) => view,
        Err(e) => {
            if sluice_pipeline::logs::allow() {
                tracing::warn!(error = %e, "could not describe the consumer group");
            }
            return None;
        }
    };
    let mut member_lag = Vec::new();
    if let (Ok(assignment), Ok(position)) = (c.assignment(), c.position()) {
        for tp in assignment.elements_for_topic(topic) {
            let p = tp.partition();
            let Some(&(_, high, committed)) = view.lag.iter().find(|l| l.0 == p) else {
                continue;
            };
            let from = match position.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => committed,
            };
            member_lag.push((p, (high - from).max(0)));
        }
    }
    Some((view, member_lag))
}

/// Exports this member's lag; partitions it no longer owns drop to 0 (another member
/// reports them now).
fn report_member_lag(lag: &[(i32, i64)], reported: &mut BTreeSet<i32>) {
    let now: BTreeSet<i32> = lag.iter().map(|l| l.0).collect();
    for gone in reported.difference(&now) {
        metrics::gauge!(CONSUMER_LAG, "partition" => gone.to_string()).set(0.0);
    }
    for &(p, n) in lag {
        metrics::gauge!(CONSUMER_LAG, "partition" => p.to_string()).set(n as f64);
    }
    *reported = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_cut_off_only_when_a_fresh_one_reaches_what_it_cannot() {
        assert!(cut_off(false, true).is_some(), "cut off");
        assert_eq!(
            cut_off(false, false),
            None,
            "the cluster is down for everyone"
        );
        assert_eq!(
            cut_off(true, true),
            None,
            "it reaches the brokers (a leaderless partition)"
        );
    }
}
