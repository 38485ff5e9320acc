//! The Kafka CLI around the service: `sluice topics create`, `sluice produce`, `sluice tail`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_config::Config;
use sluice_connectors::kafka::{self, admin};

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
