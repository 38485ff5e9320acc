//! Topic creation and broker checks for the CLI and start-up (brokers and topics reachable;
//! result topics that take events of `limits.max_event_bytes`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
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
    // The broker's timeout and the client's: an unreachable broker fails within
    // `operation_timeout_ms`, not librdkafka's default minute.
    let opts = AdminOptions::new()
        .operation_timeout(Some(super::op_timeout(k)))
        .request_timeout(Some(super::op_timeout(k)));
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

/// Whether a fresh client (a consumer of the group that does not join it) can describe `k`'s
/// group on the requests topic within `timeout`: the yardstick for a member whose own client
/// fails to (a cut-off client, or the cluster: a partition without a leader fails both).
pub fn can_describe_group(k: &KafkaConfig, timeout: Duration) -> bool {
    let mut c = base_config(k);
    c.set("group.id", &k.group_id);
    let Ok(consumer) = c.create::<BaseConsumer>() else {
        return false;
    };
    super::group::describe(&consumer, &k.group_id, &k.topics.requests, timeout).is_ok()
}

/// Overhead of one record besides its value (key, headers, batch framing) that must fit the
/// limits too.
const RECORD_OVERHEAD: usize = 16 * 1024;

/// Checks that the results and dead-letter topics, and the producer, take messages of
/// `max_event_bytes` (`limits.max_event_bytes`) with room for a record's framing: otherwise
/// some event would be refused at run time. The error names the setting to change. Topics
/// the cluster does not describe are not checked (a warning).
pub async fn check_message_limits(k: &KafkaConfig, max_event_bytes: usize) -> Result<(), String> {
    let need = max_event_bytes + RECORD_OVERHEAD;
    let producer_max: usize = k
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if producer_max < need {
        return Err(format!(
            "kafka.properties.message.max.bytes ({producer_max}) leaves no room for events of \
             limits.max_event_bytes ({max_event_bytes}) plus {RECORD_OVERHEAD} bytes of framing: \
             lower limits.max_event_bytes or raise message.max.bytes"
        ));
    }
    let admin: AdminClient<DefaultClientContext> =
        base_config(k).create().map_err(|e| e.to_string())?;
    let specs = [
        ResourceSpecifier::Topic(&k.topics.results),
        ResourceSpecifier::Topic(&k.topics.dlq),
    ];
    let opts = AdminOptions::new().request_timeout(Some(super::op_timeout(k)));
    // A cluster that does not describe topics (refused, or an API it lacks, as librdkafka's
    // mock cluster) is not a reason to stay down: the check is a convenience, an event too
    // large at run time still becomes an outcome.
    let described = match admin.describe_configs(&specs, &opts).await {
        Ok(described) => described,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "could not describe the result topics; their message size limits are not checked"
            );
            return Ok(());
        }
    };
    for resource in described {
        let resource = match resource {
            Ok(resource) => resource,
            Err(e) => {
                tracing::warn!(
                    error = ?e,
                    "could not describe a result topic; its message size limit is not checked"
                );
                continue;
            }
        };
        let topic = match &resource.specifier {
            rdkafka::admin::OwnedResourceSpecifier::Topic(t) => t.clone(),
            other => format!("{other:?}"),
        };
        let topic_max = resource
            .get("max.message.bytes")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(topic_max) = topic_max.filter(|m| *m < need) {
            return Err(format!(
                "topic {topic} takes messages up to {topic_max} bytes (max.message.bytes), less \
                 than limits.max_event_bytes ({max_event_bytes}) plus {RECORD_OVERHEAD} bytes of \
                 framing: lower limits.max_event_bytes or raise the topic's max.message.bytes"
            ));
        }
    }
    Ok(())
}
