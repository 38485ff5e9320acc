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

use std::collections::BTreeSet;
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

/// The current run's consumer, shared with the checks, and the watchdog's requests to it.
#[derive(Clone, Default)]
pub struct Current(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    consumer: Option<Arc<SluiceConsumer>>,
    /// Cancelled by the watchdog: the run ends gracefully and the service rejoins.
    rejoin: CancellationToken,
    /// The next run joins without static membership (see `run_once`).
    dynamic: bool,
}

impl Current {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run starts with `consumer`; the token it returns asks it to end and rejoin.
    pub(crate) fn start_run(&self, consumer: Arc<SluiceConsumer>) -> CancellationToken {
        let mut slot = self.lock();
        slot.consumer = Some(consumer);
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

    /// Whether the next run must join without static membership (and forgets it).
    pub(crate) fn take_dynamic(&self) -> bool {
        std::mem::take(&mut self.lock().dynamic)
    }

    fn consumer(&self) -> Option<Arc<SluiceConsumer>> {
        self.lock().consumer.clone()
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
        let mut unowned_dog = Watchdog::new(limit);
        let mut cut_off_dog = Watchdog::new(limit.min(CUT_OFF_AFTER));
        let mut reported: BTreeSet<i32> = BTreeSet::new();
        let (probe, timeout) = (timeout, sluice_connectors::kafka::op_timeout(&k));
        loop {
            tick.tick().await;
            let Some(consumer) = current.consumer() else {
                continue;
            };
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
            health.set_group(unowned.problem.clone().or(cut_off.problem.clone()));
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

/// Decides, from successive looks, when a trouble (partitions unowned, this member's client
/// cut off) has lasted too long: readiness then names it, and the member rejoins, at most once
/// per timeout while it lasts.
struct Watchdog {
    timeout: Duration,
    /// Since when the trouble has lasted (continuously).
    since: Option<Instant>,
    /// When this watchdog last asked to rejoin.
    rejoined: Option<Instant>,
    /// The last verdict's readiness problem.
    problem: Option<String>,
}

/// The watchdog's verdict.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    /// The readiness reason, while the trouble has lasted too long.
    problem: Option<String>,
    /// Rejoin now.
    rejoin: bool,
}

impl Watchdog {
    fn new(timeout: Duration) -> Self {
        Watchdog {
            timeout,
            since: None,
            rejoined: None,
            problem: None,
        }
    }

    /// The last verdict's problem, without a new observation (nothing asks to rejoin).
    fn last(&self) -> Verdict {
        Verdict {
            problem: self.problem.clone(),
            rejoin: false,
        }
    }

    /// One look: `trouble` describes what is wrong now (`None`: nothing).
    fn observe(&mut self, trouble: Option<String>, now: Instant) -> Verdict {
        let Some(trouble) = trouble else {
            self.since = None;
            self.problem = None;
            return self.last();
        };
        let since = *self.since.get_or_insert(now);
        let lasted = now.duration_since(since);
        if lasted < self.timeout {
            self.problem = None;
            return self.last();
        }
        let rejoin = self
            .rejoined
            .is_none_or(|at| now.duration_since(at) >= self.timeout);
        if rejoin {
            self.rejoined = Some(now);
        }
        self.problem = Some(format!("{trouble} for {} s", lasted.as_secs()));
        Verdict {
            problem: self.problem.clone(),
            rejoin,
        }
    }
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

    fn unowned(partitions: &[i32]) -> Option<String> {
        (!partitions.is_empty()).then(|| format!("partitions {partitions:?} unowned"))
    }

    #[test]
    fn the_watchdog_rejoins_once_per_timeout_while_partitions_stay_unowned() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watchdog::new(s(60));
        assert!(!w.observe(unowned(&[]), t0).rejoin);
        // A rebalance: unowned for a while, then owned again — nothing happens.
        assert_eq!(w.observe(unowned(&[0, 1]), t0 + s(1)).problem, None);
        assert_eq!(w.observe(unowned(&[0, 1]), t0 + s(50)).problem, None);
        assert_eq!(w.observe(unowned(&[]), t0 + s(52)).problem, None);
        // A wedge: unowned past the timeout.
        assert!(!w.observe(unowned(&[2]), t0 + s(100)).rejoin);
        let v = w.observe(unowned(&[2]), t0 + s(161));
        assert!(
            v.rejoin && v.problem.as_deref().unwrap().contains("[2]"),
            "{v:?}"
        );
        let v = w.observe(unowned(&[2]), t0 + s(170));
        assert!(!v.rejoin && v.problem.is_some(), "not again at once: {v:?}");
        assert_eq!(
            w.last(),
            Verdict { rejoin: false, ..v },
            "kept while unseen"
        );
        assert!(
            w.observe(unowned(&[2]), t0 + s(222)).rejoin,
            "again after another timeout"
        );
        assert_eq!(
            w.observe(unowned(&[]), t0 + s(223)).problem,
            None,
            "repaired"
        );
    }
}
