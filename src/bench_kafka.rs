//! `sluice bench --kafka BROKERS`: Kafka → pipeline → Kafka throughput in at-least-once and
//! exactly-once mode, beside the raw rdkafka consume→produce rate of the same records, all
//! measured in the same run against the given broker (topics with random names).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_config::{Config, Delivery, KafkaConfig, KafkaTopics};
use sluice_connectors::kafka;
use sluice_connectors::sqlite::SqliteStore;
use sluice_pipeline::health::Health;
use sluice_pipeline::{RunStats, Store};
use tokio_util::sync::CancellationToken;

use crate::rss::Cost;

async fn produce_all(
    k: &KafkaConfig,
    topic: &str,
    lines: &[(String, String)],
) -> anyhow::Result<()> {
    let p: FutureProducer = kafka::base_config(k).set("linger.ms", "5").create()?;
    let mut pending = Vec::new();
    for (key, payload) in lines {
        let mut rec = FutureRecord::<str, str>::to(topic)
            .key(key)
            .payload(payload);
        loop {
            match p.send_result(rec) {
                Ok(d) => break pending.push(d),
                Err((_, r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for d in futures::future::join_all(pending).await {
        anyhow::ensure!(matches!(d, Ok(Ok(_))), "produce failed: {d:?}");
    }
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Consumes `n` records from `from` and produces each to `to`: the ceiling without sluice.
async fn raw_copy(k: &KafkaConfig, from: &str, to: &str, n: usize) -> anyhow::Result<Duration> {
    let c: StreamConsumer = kafka::base_config(k)
        .set("group.id", format!("raw-{:08x}", rand::random::<u32>()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    c.subscribe(&[from])?;
    let p: FutureProducer = kafka::base_config(k).set("linger.ms", "5").create()?;
    let mut started = None;
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        let m = c.recv().await?;
        started.get_or_insert_with(Instant::now);
        let mut rec = FutureRecord::<[u8], [u8]>::to(to).payload(m.payload().unwrap_or_default());
        if let Some(key) = m.key() {
            rec = rec.key(key);
        }
        loop {
            match p.send_result(rec) {
                Ok(d) => break pending.push(d),
                Err((_, r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    futures::future::join_all(pending).await;
    p.flush(Duration::from_secs(30))?;
    Ok(started.map(|s| s.elapsed()).unwrap_or_default())
}

/// Runs the service pipeline until `n` records are committed; returns time and stats.
async fn pipeline(config: Arc<Config>, n: usize) -> anyhow::Result<(Duration, Arc<RunStats>)> {
    let k = config.kafka.clone().context("kafka section")?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.embedded.state, &config)?);
    let stats = Arc::new(RunStats::default());
    let health = Arc::new(Health::new(Duration::from_secs(600)));
    health.set_store(Ok(()));
    let stop = CancellationToken::new();
    // Timed from the last poll that saw no record handled (group join and transaction
    // set-up excluded; at most one poll, 2 ms, early) to the poll that sees the last. A run
    // handled between two polls (a small one: every record in one unit) is timed at about
    // one poll, not at zero, which made its rate infinite and its ratios 0.
    let watch = {
        let (stats, stop) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut before_first = Instant::now();
            loop {
                let handled = RunStats::get(&stats.records) as usize;
                if handled == 0 {
                    before_first = Instant::now();
                }
                if handled >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stop.cancel();
            before_first.elapsed()
        })
    };
    let current = crate::kafka::Current::default();
    let txn_id = format!("bench-{:08x}", rand::random::<u32>());
    crate::kafka::run_once(
        &config,
        &k,
        &txn_id,
        store,
        stats.clone(),
        health,
        &current,
        &stop,
    )
    .await?;
    let elapsed = watch.await?;
    Ok((elapsed, stats))
}

/// The Kafka section of a benchmark against `brokers`: topics named after `tag`, 3
/// partitions, and the pass-through librdkafka properties (security, tuning) of `base`.
pub(crate) fn bench_kafka_config(brokers: &str, tag: &str, base: &Config) -> KafkaConfig {
    let topic = |s: &str| format!("bench-{tag}.{s}");
    KafkaConfig {
        brokers: brokers.to_string(),
        partitions: 3,
        topics: KafkaTopics {
            requests: topic("requests"),
            results: topic("results"),
            dlq: topic("dlq"),
        },
        properties: base
            .kafka
            .as_ref()
            .map(|b| b.properties.clone())
            .unwrap_or_default(),
        ..KafkaConfig::default()
    }
}

/// Creates `names` with `k.partitions` partitions each.
pub(crate) async fn create_topics(k: &KafkaConfig, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka::base_config(k).create()?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, k.partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await? {
        result.map_err(|(topic, e)| anyhow::anyhow!("creating topic {topic}: {e}"))?;
    }
    Ok(())
}

/// Declares the benchmarks' collection `words` (keyed by `text`) and lets creates carry
/// `items` items.
pub(crate) fn add_words(config: &mut Config, items: usize) {
    config.collections.insert(
        "words".into(),
        sluice_config::CollectionConfig {
            key: "text".into(),
            parent: None,
            parent_field: None,
        },
    );
    config.limits.max_items.create = config.limits.max_items.create.max(items);
}

/// One row of the table.
struct Row {
    name: &'static str,
    /// The timed part (see [`raw_copy`] and [`pipeline`]).
    timed: Duration,
    stats: Option<Arc<RunStats>>,
    peak_mib: Option<f64>,
    cost: Cost,
}

/// `sluice bench --kafka BROKERS`.
pub async fn run(brokers: &str, requests: usize, items: usize, base: Config) -> anyhow::Result<()> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let dir = tempfile::tempdir()?;
    let topic = |s: &str| format!("bench-{tag}.{s}");
    let k = bench_kafka_config(brokers, &tag, &base);
    let names = [
        "requests",
        "results",
        "dlq",
        "results-alo",
        "raw-out",
        "requests-nostore",
        "results-nostore",
    ]
    .map(topic);
    create_topics(&k, &names.each_ref().map(String::as_str)).await?;

    // The same requests twice: for `words`, and for a collection that is not configured, which
    // validation rejects — the pipeline's own cost with the store out of the way.
    for (to, collection) in [
        (&k.topics.requests, "words"),
        (&topic("requests-nostore"), "nowhere"),
    ] {
        let lines: Vec<(String, String)> = (0..requests)
            .map(|r| {
                let items: Vec<_> = (0..items).map(|i| serde_json::json!({"text": format!("b{r}-{i}"), "n": i})).collect();
                let id = format!("bench-{r}");
                let req = serde_json::json!({"request_id": id, "collection": collection, "op": "create", "items": items});
                (id, req.to_string())
            })
            .collect();
        produce_all(&k, to, &lines).await?;
    }

    // Peak RSS per row: the process's peak is reset (to its current RSS, which includes what
    // the allocator kept from earlier rows) before each measurement; "-" if it cannot be.
    let peak_mib = |reset: bool| {
        crate::rss::peak_rss_kib()
            .filter(|_| reset)
            .map(|k| k as f64 / 1024.0)
    };
    let reset = crate::rss::reset_peak_rss();
    let cost = Cost::start();
    let raw = raw_copy(&k, &k.topics.requests, &topic("raw-out"), requests).await?;
    let mut rows = vec![Row {
        name: "raw rdkafka consume → produce",
        timed: raw,
        stats: None,
        peak_mib: peak_mib(reset),
        cost: cost.end(),
    }];
    for (name, delivery, input, results) in [
        (
            "sluice at-least-once",
            Delivery::AtLeastOnce,
            k.topics.requests.clone(),
            topic("results-alo"),
        ),
        (
            "sluice exactly-once",
            Delivery::ExactlyOnce,
            k.topics.requests.clone(),
            topic("results"),
        ),
        (
            "sluice exactly-once, no store",
            Delivery::ExactlyOnce,
            topic("requests-nostore"),
            topic("results-nostore"),
        ),
    ] {
        let mut config = base.clone();
        let mut kc = k.clone();
        kc.delivery = delivery;
        kc.group_id = format!("bench-{tag}-{}", rows.len());
        kc.topics.requests = input;
        kc.topics.results = results;
        config.kafka = Some(kc);
        config.embedded.state = dir.path().join(format!("{}.db", rows.len()));
        add_words(&mut config, items);
        config.validate()?;
        let reset = crate::rss::reset_peak_rss();
        let cost = Cost::start();
        let (timed, stats) = pipeline(Arc::new(config), requests).await?;
        rows.push(Row {
            name,
            timed,
            stats: Some(stats),
            peak_mib: peak_mib(reset),
            cost: cost.end(),
        });
    }
    println!(
        "sluice bench --kafka: {requests} requests × {items} items, 3 partitions, broker {brokers}"
    );
    println!(
        "{:<32} {:>12} {:>14} {:>10} {:>10} {:>14} {:>12} {:>6}",
        "", "requests/s", "items/s", "p50 ms", "p99 ms", "peak RSS MiB", "CPU µs/req", "cores"
    );
    for row in &rows {
        let secs = row.timed.as_secs_f64().max(1e-9);
        let (p50, p99) = row
            .stats
            .as_ref()
            .map(|s| {
                (
                    s.latency_quantile(0.5).as_secs_f64() * 1e3,
                    s.latency_quantile(0.99).as_secs_f64() * 1e3,
                )
            })
            .map_or(("-".to_string(), "-".to_string()), |(a, b)| {
                (format!("{a:.1}"), format!("{b:.1}"))
            });
        let rss = row.peak_mib.map_or("-".to_string(), |m| format!("{m:.1}"));
        println!(
            "{:<32} {:>12.0} {:>14.0} {p50:>10} {p99:>10} {rss:>14} {:>12.1} {:>6.2}",
            row.name,
            requests as f64 / secs,
            (requests * items) as f64 / secs,
            row.cost.cpu_secs * 1e6 / requests as f64,
            row.cost.cpu_secs / row.cost.wall_secs.max(1e-9),
        );
    }
    println!(
        "(CPU: the whole process, all threads, over the whole row — client set-up, group join \
         and the last commit included; cores: that CPU over the row's wall time)"
    );
    let rate = |i: usize| requests as f64 / rows[i].timed.as_secs_f64().max(1e-9);
    println!(
        "exactly-once / at-least-once: {} % (goal ≥ 90 %)",
        crate::bench::percent(rate(2) / rate(1))
    );
    println!(
        "exactly-once / raw ceiling:   {} % (the store is the bottleneck here)",
        crate::bench::percent(rate(2) / rate(0))
    );
    println!(
        "exactly-once without store work / raw ceiling: {} % (goal ≥ 60 %)",
        crate::bench::percent(rate(3) / rate(0))
    );
    Ok(())
}
