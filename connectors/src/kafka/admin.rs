//! Topic creation and broker checks for the CLI and start-up.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use sluice_config::KafkaConfig;

use super::base_config;

/// Creates the requests, results and DLQ topics (existing ones are left alone). Returns, per
/// topic, whether it was created.
pub async fn create_topics(k: &KafkaConfig) -> Result<Vec<(String, bool)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(k).create()?;
    let names = [&k.topics.requests, &k.topics.results, &k.topics.dlq];
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, k.partitions, TopicReplication::Fixed(k.replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(super::op_timeout(k)));
    let results = admin.create_topics(&topics, &opts).await?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, false)),
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic = name, "create failed"))
            }
        }
    }
    Ok(out)
}

/// Checks the brokers answer and the three topics exist; the error names what is missing.
pub fn check(k: &KafkaConfig, timeout: Duration) -> Result<(), String> {
    let consumer: BaseConsumer = base_config(k).create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("Kafka brokers {} unreachable: {e}", k.brokers))?;
    let missing: Vec<&str> = [&k.topics.requests, &k.topics.results, &k.topics.dlq]
        .into_iter()
        .filter(|t| {
            !md.topics()
                .iter()
                .any(|m| m.name() == t.as_str() && m.error().is_none())
        })
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing Kafka topics: {} (create them with `sluice topics create`)",
            missing.join(", ")
        ))
    }
}
