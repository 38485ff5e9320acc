//! The Kafka service and the CLI around it ([`cli`]: `topics create`, `produce`, `tail`).
//!
//! The service runs the pipeline with the Kafka source and sink in a loop: any run that ends
//! in an error (transaction failed, partitions revoked, broker gone) is followed — after a
//! capped backoff — by a fresh consumer and producer that resume from the committed offsets.
//! Nothing is skipped: uncommitted records are re-read and their applied chunks re-published
//! from the ledger. Two exceptions end the service instead: shutdown, and a producer fenced by
//! another live process with the same `kafka.instance_id` (restarting would fence it back, and
//! the two would take turns forever). A fencing of a transaction open longer than
//! `kafka.transaction_timeout_ms` is the broker's timeout, not a twin: that run restarts.
//! [`checks`] watches the broker, this member and the whole group, and makes the run rejoin
//! when the group leaves partitions unowned or this member's client is cut off.

mod alone;
pub mod checks;
pub mod cli;
mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;
use sluice_config::{Config, Delivery, KafkaConfig};
use sluice_connectors::kafka::{
    self, admin, KafkaSink, KafkaSource, SluiceConsumer, SluiceContext,
};
use sluice_connectors::sqlite::SqliteStore;
use sluice_pipeline::health::Health;
use sluice_pipeline::metrics::{PIPELINE_ERRORS, RUN_RESTARTS};
use sluice_pipeline::{RunStats, Store};
use tokio_util::sync::CancellationToken;

pub use checks::Current;
pub use cli::{produce, tail, topics_create};

/// Another live process uses this instance's `kafka.instance_id`: its producer fenced ours.
#[derive(Debug, thiserror::Error)]
#[error(
    "the producer was fenced by another process with the same kafka.instance_id ({code}: \
     {reason}); stopping instead of fencing it back — every live process needs its own id"
)]
pub struct Fenced {
    code: RDKafkaErrorCode,
    reason: String,
}

/// What a fatal producer error means for the service.
#[derive(Debug, PartialEq)]
enum Fencing {
    /// Not a fencing.
    No,
    /// Another live process with this instance id: stop.
    Twin,
    /// The broker aborted a transaction that outlived the transaction timeout (it was this
    /// old when its end failed) and bumped the epoch, which librdkafka reports as fenced "by a
    /// newer instance": restart the run.
    TimedOut(Duration),
}

/// Classifies a fatal producer error `code`, given the age of the transaction it ended
/// ([`kafka::TxnClock`]) and `kafka.transaction_timeout_ms`.
fn fencing(code: RDKafkaErrorCode, age: Option<Duration>, timeout: Duration) -> Fencing {
    if !matches!(
        code,
        RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
    ) {
        return Fencing::No;
    }
    match age {
        Some(age) if age >= timeout => Fencing::TimedOut(age),
        _ => Fencing::Twin,
    }
}

/// `sluice run` with a `[kafka]` section: the service.
pub async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    let k = config.kafka.clone().context("no [kafka] section")?;
    let timeout = kafka::op_timeout(&k).min(Duration::from_secs(15));
    let check = k.clone();
    tokio::task::spawn_blocking(move || admin::check(&check, timeout))
        .await?
        .map_err(anyhow::Error::msg)
        .context("Kafka is not usable")?;
    admin::check_message_limits(&k, config.limits.max_event_bytes)
        .await
        .map_err(anyhow::Error::msg)
        .context("Kafka's message size limits")?;

    let store = crate::service::open_store(&config, || {
        SqliteStore::open(&config.embedded.state, &config)
            .with_context(|| format!("opening state database {}", config.embedded.state.display()))
    })
    .await?;
    store
        .health()
        .await
        .context("store health check failed at start-up")?;
    let health = Arc::new(Health::new(Duration::from_millis(
        config.observability.stall_after_ms,
    )));
    health.set_store(Ok(()));
    health.set_source(false);
    let current = Current::default();
    if config.mongo.is_none() && !config.embedded.shared {
        // The SQLite store serves this instance alone (see `checks`).
        current.serve_alone();
    }
    crate::observability::start(&config, &store, &health).await?;
    checks::spawn(k.clone(), current.clone(), health.clone(), &config);

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
        let (rejoin, consumer) = current.end_run();
        health.set_source(false);
        // Its close may wait for the coordinator: on the blocking pool, not a worker.
        if let Some(consumer) = consumer {
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        }
        match result {
            Ok(()) if shutdown.is_cancelled() => break,
            Ok(()) if rejoin => {
                metrics::counter!(RUN_RESTARTS, "reason" => "rejoin").increment(1);
                tracing::warn!("left the consumer group to make it rebalance; rejoining")
            }
            Ok(()) => {
                metrics::counter!(RUN_RESTARTS, "reason" => "stopped").increment(1);
                tracing::warn!("the pipeline stopped without a shutdown request; restarting")
            }
            Err(e) if e.is::<Fenced>() => {
                metrics::counter!(PIPELINE_ERRORS, "component" => "kafka_fenced").increment(1);
                return Err(e);
            }
            Err(e) => {
                metrics::counter!(PIPELINE_ERRORS, "component" => "kafka_run").increment(1);
                let reason = if format!("{e:#}").contains("partitions were revoked") {
                    "revoked"
                } else {
                    "error"
                };
                metrics::counter!(RUN_RESTARTS, "reason" => reason).increment(1);
                tracing::warn!(
                    error = format!("{e:#}"),
                    "Kafka run ended; restarting from the committed offsets"
                );
            }
        }
        if started.elapsed() > Duration::from_secs(60) || rejoin {
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

/// One run: a fresh consumer, producer and pipeline, until shutdown, a rejoin asked for by
/// [`checks`], or an error ([`Fenced`] when another process took over this instance's
/// transactional id).
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
    let mut consumer_config = kafka::consumer_config(k);
    if current.take_dynamic() {
        // A rejoin to repair a group that left partitions unowned: a static member coming
        // back would be handed its old assignment again without a rebalance.
        consumer_config.remove("group.instance.id");
    }
    let consumer: Arc<SluiceConsumer> = Arc::new(
        consumer_config
            .create_with_context(SluiceContext::new(Duration::from_millis(k.revoke_drain_ms)))?,
    );
    let context = consumer.context().clone();
    consumer.subscribe(&[&k.topics.requests])?;
    let rejoin = current.start_run(consumer.clone());
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
        producer.clone(),
        consumer.clone(),
        k.topics.clone(),
        k.delivery,
        kafka::op_timeout(k),
        config.limits.max_event_bytes,
    );
    let clock = sink.transaction_clock();
    let mut source = KafkaSource::new(consumer, kafka::op_timeout(k));
    if let Some(gate) = current.gate() {
        source = source.gated(gate);
    }
    let (shutdown, rejoin) = (shutdown.clone(), rejoin.clone());
    let end = sluice_pipeline::run(
        config.clone(),
        source,
        sink,
        store,
        stats,
        health,
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = rejoin.cancelled() => {}
            }
        },
    )
    .await;
    // Nothing more will be committed: the consumer's close must not wait for a drain.
    context.close();
    if let Some((code, reason)) = producer.client().fatal_error() {
        match fencing(
            code,
            clock.age(),
            Duration::from_millis(k.transaction_timeout_ms),
        ) {
            Fencing::TimedOut(age) => anyhow::bail!(
                "the broker aborted a transaction open for {age:.1?}, longer than \
                 kafka.transaction_timeout_ms ({code}: {reason})"
            ),
            Fencing::Twin => {
                tracing::error!(%code, reason, "fenced by another process with this instance id");
                return Err(Fenced { code, reason }.into());
            }
            Fencing::No => {}
        }
    }
    let end = end?;
    tracing::info!(?end, "Kafka run ended");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fencing_is_a_twin_unless_the_transaction_outlived_its_timeout() {
        let s = Duration::from_secs;
        let t = s(60);
        assert_eq!(
            fencing(RDKafkaErrorCode::Fenced, Some(s(1)), t),
            Fencing::Twin
        );
        assert_eq!(
            fencing(RDKafkaErrorCode::ProducerFenced, None, t),
            Fencing::Twin
        );
        assert_eq!(
            fencing(RDKafkaErrorCode::Fenced, Some(s(60)), t),
            Fencing::TimedOut(s(60))
        );
        assert_eq!(
            fencing(RDKafkaErrorCode::ProducerFenced, Some(s(75)), t),
            Fencing::TimedOut(s(75))
        );
        assert_eq!(
            fencing(RDKafkaErrorCode::InvalidTransactionalState, Some(s(75)), t),
            Fencing::No
        );
    }
}
