//! `sluice bench --kafka BROKERS --rate R[,R…]`: the latency a producer sees, open loop.
//!
//! One service (the configured store: SQLite, or MongoDB with `[mongo]`) reads a fresh
//! requests topic. Create requests of `--items` items (default 10) are published at a fixed
//! rate, each stamped when it is handed to the producer; a `read_committed` consumer notes when
//! each request's terminal event becomes visible on the results topic. Latency = visible −
//! sent. First a burst of `--requests` requests sent at once measures the saturated rate;
//! then each offered rate runs for `--seconds`. A rate is requests/s, or a percentage of the
//! saturated rate (`50%`).
//!
//! A burst of requests already waiting can overstate what a store sustains (a slow store
//! answers a fresh burst faster than a growing database under a steady stream). With
//! `--sustained`, the saturated rate is measured under overload instead: after the burst,
//! [`OVERLOAD`] × its rate is offered for `--seconds`, and the saturated rate is the rate at
//! which terminal events become visible over the last two thirds of that stretch.
//!
//! Baseline, measured by the same consumer in the same run: when each request itself becomes
//! visible on the requests topic — what Kafka alone costs the round trip, the floor below
//! sluice's figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_config::{Config, KafkaConfig};
use sluice_connectors::kafka;
use sluice_connectors::sqlite::SqliteStore;
use sluice_pipeline::health::Health;
use sluice_pipeline::RunStats;
use tokio_util::sync::CancellationToken;

/// An offered rate: requests per second, or a share of the saturated rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSec(f64),
    OfSaturated(f64),
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is neither requests/s (`40`) nor a share of saturation (`50%`)");
        let rate = match s.trim().strip_suffix('%') {
            Some(p) => Rate::OfSaturated(p.trim().parse::<f64>().map_err(|_| bad())? / 100.0),
            None => Rate::PerSec(s.trim().parse().map_err(|_| bad())?),
        };
        match rate {
            Rate::PerSec(r) | Rate::OfSaturated(r) if r > 0.0 && r.is_finite() => Ok(rate),
            _ => Err(bad()),
        }
    }
}

/// What `sluice bench --rate` measures.
pub struct LatencyArgs {
    /// Offered rates, in order.
    pub rates: Vec<Rate>,
    /// How long each rate is offered.
    pub seconds: f64,
    /// Items per request.
    pub items: usize,
    /// Requests of the saturating burst.
    pub burst: usize,
    /// Measure the saturated rate under overload (see the module), not by the burst alone.
    pub sustained: bool,
}

/// With `--sustained`: the offered rate of the overload, as a multiple of the burst's rate.
const OVERLOAD: f64 = 1.5;

/// An overload answered below this share of its offered rate saturated the service; one
/// answered faster is offered again at twice the rate, up to [`OVERLOAD_TRIES`] times.
const SATURATED_BELOW: f64 = 0.9;
const OVERLOAD_TRIES: usize = 3;

/// Answers an overload's rate is taken from, at least.
const MIN_ANSWERS: usize = 20;

/// When each request (by request_id) became visible to the watcher: itself on the requests
/// topic, and its terminal event on the results topic.
#[derive(Default)]
struct Seen {
    request: HashMap<String, Instant>,
    terminal: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// A read_committed consumer of every partition of both topics (assigned, no group), from
/// the beginning, that notes when each request and each terminal event arrives.
fn watch(k: &KafkaConfig, partitions: i32, seen: Shared) -> anyhow::Result<()> {
    let c: StreamConsumer = kafka::base_config(k)
        .set("group.id", format!("latency-{:08x}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in [&k.topics.requests, &k.topics.results] {
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let results = k.topics.results.clone();
    tokio::spawn(async move {
        loop {
            let Ok(m) = c.recv().await else { continue };
            let at = Instant::now();
            let Some(payload) = m.payload() else { continue };
            if m.topic() == results {
                let Ok(event) = serde_json::from_slice::<serde_json::Value>(payload) else {
                    continue;
                };
                let terminal = matches!(
                    event["event"].as_str(),
                    Some("completed" | "rejected" | "duplicate")
                );
                if let (true, Some(id)) = (terminal, event["request_id"].as_str()) {
                    lock(&seen).terminal.entry(id.to_string()).or_insert(at);
                }
            } else if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                lock(&seen).request.entry(key.to_string()).or_insert(at);
            }
        }
    });
    Ok(())
}

/// One measured stretch: its requests' latencies, and Kafka's alone.
struct Phase {
    offered: Option<f64>,
    sent: usize,
    /// First send to last terminal event.
    span: Duration,
    sluice: Vec<Duration>,
    kafka: Vec<Duration>,
    /// Requests without a terminal event `patience` after the last send: the rate is above
    /// what the service sustains (their latencies are not in `sluice`).
    unanswered: usize,
    /// First and last send.
    sends: (Instant, Instant),
    /// When each answered request's terminal event became visible.
    done: Vec<Instant>,
}

impl Phase {
    /// Terminal events over the last two thirds of the sending, and their rate per second,
    /// e.g. of an overload: once the service is saturated, the rate at which it answers.
    fn answer_rate(&self) -> (usize, f64) {
        let (first, last) = self.sends;
        let from = first + (last - first) / 3;
        let n = self
            .done
            .iter()
            .filter(|&&d| d >= from && d <= last)
            .count();
        (n, n as f64 / (last - from).as_secs_f64().max(1e-9))
    }
}

/// Sends `n` requests at `rate` per second (all at once without one), then waits for every
/// terminal event, at most `patience` after the last send.
async fn phase(
    p: &FutureProducer,
    k: &KafkaConfig,
    seen: &Shared,
    next_doc: &mut usize,
    (n, items, rate): (usize, usize, Option<f64>),
    patience: Duration,
) -> anyhow::Result<Phase> {
    let mut sent = Vec::with_capacity(n);
    let mut deliveries = Vec::with_capacity(n);
    let start = tokio::time::Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let r = *next_doc;
        *next_doc += 1;
        let id = format!("lat-{r}");
        let docs: Vec<_> = (0..items).map(|j| crate::bench::doc(r, j)).collect();
        let payload = serde_json::json!({
            "request_id": id, "collection": "words", "op": "create", "items": docs,
        })
        .to_string();
        let mut rec = FutureRecord::<str, str>::to(&k.topics.requests)
            .key(&id)
            .payload(&payload);
        let at = loop {
            let at = Instant::now();
            match p.send_result(rec) {
                Ok(d) => {
                    deliveries.push(d);
                    break at;
                }
                Err((_, r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        sent.push((id, at));
    }
    for d in futures::future::join_all(deliveries).await {
        anyhow::ensure!(matches!(d, Ok(Ok(_))), "produce failed: {d:?}");
    }
    let first = sent.first().map(|s| s.1).unwrap_or_else(Instant::now);
    let last = sent.last().map_or(first, |s| s.1);
    let deadline = Instant::now() + patience;
    let unanswered = loop {
        let missing = {
            let seen = lock(seen);
            sent.iter()
                .filter(|(id, _)| !seen.terminal.contains_key(id))
                .count()
        };
        if missing == 0 || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seen = lock(seen);
    let mut out = Phase {
        offered: rate,
        sent: n,
        span: Duration::ZERO,
        sluice: Vec::with_capacity(n),
        kafka: Vec::with_capacity(n),
        unanswered,
        sends: (first, last),
        done: Vec::with_capacity(n),
    };
    for (id, at) in &sent {
        let Some(&done) = seen.terminal.get(id) else {
            continue;
        };
        out.done.push(done);
        out.span = out.span.max(done - first);
        out.sluice.push(done.saturating_duration_since(*at));
        if let Some(visible) = seen.request.get(id) {
            out.kafka.push(visible.saturating_duration_since(*at));
        }
    }
    Ok(out)
}

/// Offers `rate` requests/s for `--seconds`, after a pause that lets the previous stretch's
/// last events arrive, and waits for their answers up to `patience`.
async fn offer(
    p: &FutureProducer,
    k: &KafkaConfig,
    seen: &Shared,
    next_doc: &mut usize,
    args: &LatencyArgs,
    rate: f64,
    patience: Duration,
) -> anyhow::Result<Phase> {
    let n = ((rate * args.seconds).round() as usize).max(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase(p, k, seen, next_doc, (n, args.items, Some(rate)), patience).await
}

/// The `q` quantile (nearest rank) of `v` in ms, sorting it.
fn quantile_ms(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1].as_secs_f64() * 1e3
}

/// `sluice bench --kafka BROKERS --rate …`. `config` is the loaded config (store, pipeline
/// settings, pass-through Kafka properties).
pub async fn run(brokers: &str, args: LatencyArgs, base: Config) -> anyhow::Result<()> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let dir = tempfile::tempdir()?;
    let k = crate::bench_kafka::bench_kafka_config(brokers, &tag, &base);
    crate::bench_kafka::create_topics(&k, &[&k.topics.requests, &k.topics.results, &k.topics.dlq])
        .await?;
    let mut config = base.clone();
    config.kafka = Some(k.clone());
    config.embedded.state = dir.path().join("state.db");
    crate::bench_kafka::add_words(&mut config, args.items);
    config.validate()?;
    let config = Arc::new(config);
    let store_name = if config.mongo.is_some() {
        "MongoDB"
    } else {
        "SQLite"
    };

    let seen = Shared::default();
    watch(&k, k.partitions, seen.clone())?;

    let store = crate::service::open_store(&config, || {
        Ok(SqliteStore::open(&config.embedded.state, &config)?)
    })
    .await?;
    let stop = CancellationToken::new();
    let service = {
        let (config, k, stop) = (config.clone(), k.clone(), stop.clone());
        tokio::spawn(async move {
            let health = Arc::new(Health::new(Duration::from_secs(600)));
            health.set_store(Ok(()));
            let current = crate::kafka::Current::default();
            let txn_id = format!("latency-{:08x}", rand::random::<u32>());
            let stats = Arc::new(RunStats::default());
            crate::kafka::run_once(&config, &k, &txn_id, store, stats, health, &current, &stop)
                .await
        })
    };

    // A producer that sends each request as it comes (no linger): the wait measured is
    // sluice's, not the producer's batching.
    let producer: FutureProducer = kafka::base_config(&k).set("linger.ms", "0").create()?;
    let patience = Duration::from_secs(60);
    let mut next = 0;
    // Warm-up (group join, transactions, connections), not reported.
    phase(
        &producer,
        &k,
        &seen,
        &mut next,
        (20, args.items, Some(20.0)),
        patience,
    )
    .await?;
    let mut burst = phase(
        &producer,
        &k,
        &seen,
        &mut next,
        (args.burst, args.items, None),
        patience,
    )
    .await?;
    anyhow::ensure!(
        burst.unanswered == 0,
        "{} of the burst's {} requests got no terminal event within {patience:?}",
        burst.unanswered,
        burst.sent
    );
    let burst_rate = burst.sent as f64 / burst.span.as_secs_f64().max(1e-9);
    let mut overload = None;
    let mut saturated = burst_rate;
    if args.sustained {
        let mut rate = OVERLOAD * burst_rate;
        for attempt in 1..=OVERLOAD_TRIES {
            // The backlog an overload leaves must drain before the next rate: patience for
            // it. (A burst that overstates the store 3× leaves 3.5 × `seconds` of backlog.)
            let drain = patience.max(Duration::from_secs_f64(args.seconds * 10.0));
            let ph = offer(&producer, &k, &seen, &mut next, &args, rate, drain).await?;
            anyhow::ensure!(
                ph.unanswered == 0,
                "{} of the overload's {} requests got no terminal event within {drain:?}",
                ph.unanswered,
                ph.sent
            );
            let (answered, answer_rate) = ph.answer_rate();
            anyhow::ensure!(
                answered >= MIN_ANSWERS,
                "only {answered} requests were answered during the overload's last two thirds \
                 (at least {MIN_ANSWERS} are needed for a rate): offer it longer (--seconds)"
            );
            // Answered clearly below the offer: saturated. Otherwise the burst understated the
            // service: overload it harder.
            if answer_rate < SATURATED_BELOW * rate {
                saturated = answer_rate;
                overload = Some(ph);
                break;
            }
            anyhow::ensure!(
                attempt < OVERLOAD_TRIES,
                "offered {rate:.0} requests/s, the service answered {answer_rate:.0}: still not \
                 saturated after {OVERLOAD_TRIES} overloads; the burst (--requests) measured \
                 {burst_rate:.0} requests/s, far below what it sustains"
            );
            rate *= 2.0;
        }
    }
    let mut phases = Vec::new();
    for rate in &args.rates {
        let rate = match *rate {
            Rate::PerSec(r) => r,
            Rate::OfSaturated(share) => share * saturated,
        };
        let ph = offer(&producer, &k, &seen, &mut next, &args, rate, patience).await?;
        let above = ph.unanswered > 0;
        phases.push(ph);
        if above {
            // Its backlog would be in the next rate's figures.
            break;
        }
    }
    producer.flush(Duration::from_secs(10))?;
    stop.cancel();
    service.await??;

    let p = &config.pipeline;
    println!(
        "sluice bench --kafka --rate: {}-item create requests, {} partitions, {store_name} store, \
         broker {brokers}",
        args.items, k.partitions
    );
    println!(
        "pipeline.commit_interval_ms = {}, pipeline.commit_max_records = {}",
        p.commit_interval_ms, p.commit_max_records
    );
    match &overload {
        None => println!(
            "saturated rate: {saturated:.0} requests/s (a burst of {} requests, first send to \
             last terminal event)",
            burst.sent
        ),
        Some(o) => println!(
            "saturated rate: {saturated:.0} requests/s sustained (terminal events per second over \
             the last two thirds of an overload: {:.0} requests/s, {:.1} × the burst's rate, \
             offered for {:.0} s; the burst alone: {burst_rate:.0})",
            o.offered.unwrap_or_default(),
            o.offered.unwrap_or_default() / burst_rate.max(1e-9),
            (o.sends.1 - o.sends.0).as_secs_f64()
        ),
    }
    println!(
        "{:<26} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>13} {:>13}",
        "offered requests/s",
        "achieved",
        "requests",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "kafka p50 ms",
        "kafka p99 ms"
    );
    let sustained = overload.is_some();
    let overloaded = overload.iter_mut().map(|o| ("overload", o));
    let rows = std::iter::once(("burst", &mut burst))
        .chain(overloaded)
        .chain(phases.iter_mut().map(|p| ("", p)));
    for (label, ph) in rows {
        let offered = match (label, ph.offered) {
            ("", Some(r)) => format!("{r:.0}"),
            ("burst", _) if !sustained => "burst (saturated)".to_string(),
            (label, Some(r)) => format!("{label} ({r:.0})"),
            (label, None) => label.to_string(),
        };
        let achieved = (ph.sent - ph.unanswered) as f64 / ph.span.as_secs_f64().max(1e-9);
        if ph.unanswered > 0 {
            println!(
                "{offered:<26} {achieved:>10.0} {:>10}  above saturation: {} unanswered {} s \
                 after the last send (higher rates not offered)",
                ph.sent,
                ph.unanswered,
                patience.as_secs()
            );
            continue;
        }
        println!(
            "{offered:<26} {achieved:>10.0} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>13.1} {:>13.1}",
            ph.sent,
            quantile_ms(&mut ph.sluice, 0.50),
            quantile_ms(&mut ph.sluice, 0.90),
            quantile_ms(&mut ph.sluice, 0.99),
            quantile_ms(&mut ph.sluice, 1.0),
            quantile_ms(&mut ph.kafka, 0.50),
            quantile_ms(&mut ph.kafka, 0.99),
        );
    }
    println!(
        "(latency: terminal event visible to a read_committed consumer − request handed to the \
         producer; kafka: the request itself visible to the same consumer, the floor)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_or_shares_of_saturation() {
        assert_eq!("40".parse(), Ok(Rate::PerSec(40.0)));
        assert_eq!(" 50% ".parse(), Ok(Rate::OfSaturated(0.5)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert!("-5%".parse::<Rate>().is_err());
    }

    /// A service answering 100 requests/s under overload: the rate over the last two thirds of
    /// the sending, whatever came before or after it.
    #[test]
    fn the_answer_rate_is_taken_over_the_last_two_thirds_of_the_sending() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Sends over 3 s; answers every 10 ms from 0.5 s on, and a backlog after the sending.
        let done: Vec<Instant> = (50..600).map(|i| at(i * 10)).collect();
        let ph = Phase {
            offered: Some(300.0),
            sent: done.len(),
            span: Duration::ZERO,
            sluice: Vec::new(),
            kafka: Vec::new(),
            unanswered: 0,
            sends: (at(0), at(3000)),
            done,
        };
        // 1.0 s to 3.0 s inclusive: 201 answers over 2 s.
        let (n, rate) = ph.answer_rate();
        assert_eq!(n, 201);
        assert!((rate - 100.5).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let ms = Duration::from_millis;
        let mut v: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(quantile_ms(&mut v, 0.5), 50.0);
        assert_eq!(quantile_ms(&mut v, 0.99), 99.0);
        assert_eq!(quantile_ms(&mut v, 1.0), 100.0);
        assert!(quantile_ms(&mut [], 0.5).is_nan());
    }
}
