//! The Kafka service and the CLI around it (`topics create`, `produce`, `tail`).
//!
//! The service runs the pipeline with the Kafka source and sink in a loop: any run that ends
//! in an error (producer fenced, transaction failed, partitions revoked, broker gone) is
//! followed — after a capped backoff — by a fresh consumer and producer that resume from the
//! committed offsets. Nothing is skipped: uncommitted records are re-read and their applied
//! chunks re-published from the ledger.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_config::{Config, Delivery, KafkaConfig};
use sluice_connectors::kafka::{
    self, admin, KafkaSink, KafkaSource, SluiceConsumer, SluiceContext,
};
use sluice_connectors::sqlite::SqliteStore;
use sluice_pipeline::health::Health;
use sluice_pipeline::metrics::{CONSUMER_LAG, PIPELINE_ERRORS};
use sluice_pipeline::{RunStats, Store};
use tokio_util::sync::CancellationToken;

/// The consumer of the current run, for lag and readiness checks.
pub(crate) type Current = Arc<Mutex<Option<Arc<SluiceConsumer>>>>;

/// `sluice run` with a `[kafka]` section: the service.
pub async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    let k = config.kafka.clone().context("no [kafka] section")?;
    let timeout = kafka::op_timeout(&k).min(Duration::from_secs(15));
    let check = k.clone();
    tokio::task::spawn_blocking(move || admin::check(&check, timeout))
        .await?
        .map_err(anyhow::Error::msg)
        .context("Kafka is not usable")?;

    let sqlite = SqliteStore::open(&config.embedded.state, &config)
        .with_context(|| format!("opening state database {}", config.embedded.state.display()))?;
    let store = crate::service::open_store(&config, sqlite).await?;
    store
        .health()
        .await
        .context("store health check failed at start-up")?;
    let health = Arc::new(Health::new(Duration::from_millis(
        config.observability.stall_after_ms,
    )));
    health.set_store(Ok(()));
    health.set_source(false);
    let current: Current = Arc::new(Mutex::new(None));
    if let Some(listen) = &config.observability.listen {
        let handle = crate::observability::install_recorder()?;
        crate::observability::serve(listen, handle, health.clone()).await?;
        crate::observability::spawn_checks(store.clone(), health.clone(), &config.observability);
    }
    spawn_source_checks(k.clone(), current.clone(), health.clone(), &config);

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        crate::service::shutdown_signal().await;
        token.cancel();
    });

    let txn_id = match &k.instance_id {
        Some(id) => format!("{}-{}-{id}", k.transactional_id_prefix, k.group_id),
        None => format!(
            "{}-{}-{:016x}",
            k.transactional_id_prefix,
            k.group_id,
            rand::random::<u64>()
        ),
    };
    tracing::info!(transactional_id = %txn_id, delivery = ?k.delivery, brokers = %k.brokers, "starting the Kafka service");
    let stats = Arc::new(RunStats::default());
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let result = run_once(
            &config,
            &k,
            &txn_id,
            store.clone(),
            stats.clone(),
            health.clone(),
            &current,
            &shutdown,
        )
        .await;
        *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        health.set_source(false);
        match result {
            Ok(()) if shutdown.is_cancelled() => break,
            Ok(()) => tracing::warn!("the pipeline stopped without a shutdown request; restarting"),
            Err(e) => {
                metrics::counter!(PIPELINE_ERRORS, "component" => "kafka_run").increment(1);
                tracing::warn!(
                    error = format!("{e:#}"),
                    "Kafka run ended; restarting from the committed offsets"
                );
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    tracing::info!(
        records = RunStats::get(&stats.records),
        "Kafka service stopped"
    );
    Ok(())
}

/// One run: a fresh consumer, producer and pipeline, until shutdown or an error.
///
/// Await it on a multi-threaded runtime: a revocation drains inside the consumer's poll,
/// blocking the thread that reads the source until the pipeline's stages, on the other
/// workers, commit what was read (on a current-thread runtime every drain would run to its
/// deadline).
#[allow(clippy::too_many_arguments)] // one run's parts; grouping them would only rename them
pub(crate) async fn run_once(
    config: &Arc<Config>,
    k: &KafkaConfig,
    txn_id: &str,
    store: Arc<dyn Store>,
    stats: Arc<RunStats>,
    health: Arc<Health>,
    current: &Current,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<SluiceConsumer> = Arc::new(
        kafka::consumer_config(k)
            .create_with_context(SluiceContext::new(Duration::from_millis(k.revoke_drain_ms)))?,
    );
    let context = consumer.context().clone();
    consumer.subscribe(&[&k.topics.requests])?;
    *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(consumer.clone());
    let transactional = (k.delivery == Delivery::ExactlyOnce).then_some(txn_id);
    let producer: kafka::SluiceProducer =
        kafka::producer_config(k, transactional).create_with_context(kafka::ClientLogs)?;
    if transactional.is_some() {
        // Fences any earlier producer with this id and aborts its open transaction.
        let (p, t) = (producer.clone(), kafka::op_timeout(k));
        tokio::task::spawn_blocking(move || p.init_transactions(t))
            .await?
            .context("init_transactions")?;
    }
    let sink = KafkaSink::new(
        producer,
        consumer.clone(),
        k.topics.clone(),
        k.delivery,
        kafka::op_timeout(k),
    );
    let source = KafkaSource::new(consumer, kafka::op_timeout(k));
    let end = sluice_pipeline::run(
        config.clone(),
        source,
        sink,
        store,
        stats,
        health,
        shutdown.clone().cancelled_owned(),
    )
    .await;
    // Nothing more will be committed: the consumer's close must not wait for a drain.
    context.close();
    let end = end?;
    tracing::info!(?end, "Kafka run ended");
    Ok(())
}

/// Every health interval: broker reachable with its topics, partitions assigned (readiness),
/// and consumer lag per assigned partition (`sluice_consumer_lag_records`).
fn spawn_source_checks(k: KafkaConfig, current: Current, health: Arc<Health>, config: &Config) {
    let interval = Duration::from_millis(config.observability.health_interval_ms);
    let timeout = Duration::from_millis(config.observability.health_timeout_ms);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let consumer = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let k = k.clone();
            let verdict = tokio::task::spawn_blocking(move || {
                admin::check(&k, timeout)?;
                let Some(c) = consumer else {
                    return Err("no consumer (restarting)".to_string());
                };
                if !c.context().assigned() {
                    return Err("no partitions assigned yet".into());
                }
                if let (Ok(assignment), Ok(position)) = (c.assignment(), c.position()) {
                    for tp in assignment.elements() {
                        let Ok((_, high)) = c.fetch_watermarks(tp.topic(), tp.partition(), timeout)
                        else {
                            continue;
                        };
                        let pos = position
                            .find_partition(tp.topic(), tp.partition())
                            .and_then(|p| p.offset().to_raw())
                            .filter(|o| *o >= 0);
                        let committed = pos.unwrap_or(0);
                        metrics::gauge!(CONSUMER_LAG, "partition" => tp.partition().to_string())
                            .set((high - committed).max(0) as f64);
                    }
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            health.set_source(verdict.is_ok());
        }
    });
}

/// `sluice topics create`.
pub async fn topics_create(config: &Config) -> anyhow::Result<()> {
    let k = config
        .kafka
        .as_ref()
        .context("`topics create` needs a [kafka] section in the config")?;
    for (topic, created) in admin::create_topics(k).await? {
        println!("{topic}: {}", if created { "created" } else { "exists" });
    }
    Ok(())
}

/// `sluice produce FILE|-`: publishes request lines, keyed by request_id.
pub async fn produce(config: &Config, input: &str) -> anyhow::Result<()> {
    let k = config
        .kafka
        .as_ref()
        .context("`produce` needs a [kafka] section in the config")?;
    let producer: FutureProducer = kafka::base_config(k)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let reader: Box<dyn BufRead> = if input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).with_context(|| input.to_string())?,
        ))
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {pos} records {per_sec}")
                .expect("static template"),
        );
        b
    });
    let mut pending = Vec::new();
    let (mut sent, mut failed) = (0u64, 0u64);
    for line in reader.split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let key = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| {
                v.get("request_id")
                    .and_then(|r| r.as_str())
                    .map(str::to_owned)
            });
        let mut record = FutureRecord::<str, [u8]>::to(&k.topics.requests).payload(&line);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break pending.push(delivery),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        if pending.len() >= 1000 {
            for r in futures::future::join_all(pending.drain(..)).await {
                if !matches!(r, Ok(Ok(_))) {
                    failed += 1;
                }
            }
        }
        sent += 1;
        if let Some(b) = &bar {
            b.set_position(sent);
        }
    }
    for r in futures::future::join_all(pending).await {
        if !matches!(r, Ok(Ok(_))) {
            failed += 1;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "produced {} records to {} ({failed} failed)",
        sent - failed,
        k.topics.requests
    );
    anyhow::ensure!(failed == 0, "{failed} records could not be produced");
    Ok(())
}

/// `sluice tail`: prints result events (read_committed); with request ids, stops once each
/// has its terminal event.
pub async fn tail(
    config: &Config,
    ids: &[String],
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let k = config
        .kafka
        .as_ref()
        .context("`tail` needs a [kafka] section in the config")?;
    let consumer: StreamConsumer = kafka::base_config(k)
        .set(
            "group.id",
            format!("sluice-tail-{:016x}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[&k.topics.results])?;
    let mut waiting: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut out = std::io::stdout().lock();
    loop {
        if !ids.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            anyhow::bail!(
                "timed out; still waiting for {}",
                waiting.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let msg = match remaining {
            Some(r) => match tokio::time::timeout(r, consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => continue,
            },
            None => consumer.recv().await?,
        };
        let Some(payload) = msg.payload() else {
            continue;
        };
        let event: serde_json::Value =
            serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
        let id = event["request_id"].as_str().unwrap_or_default();
        if !ids.is_empty() && !ids.iter().any(|i| i == id) {
            continue;
        }
        out.write_all(payload)?;
        out.write_all(b"\n")?;
        out.flush()?;
        if event["event"] != "progress" {
            waiting.remove(id);
        }
    }
}
