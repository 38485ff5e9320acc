//! [`Config::validate`]: the checks that reject values and combinations that cannot work, one
//! function per section, run in section order. Each error names the offending field.

use std::collections::BTreeMap;

use crate::collections::IDENTIFIER_GRAMMAR;
use crate::{
    valid_name, ChunkConfig, CollectionConfig, Config, ConfigError, DedupeConfig, ExecuteConfig,
    KafkaConfig, Limits, ObservabilityConfig, PipelineConfig,
};

impl Config {
    /// Rejects values and combinations that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        limits(&self.limits)?;
        chunk(&self.chunk, &self.limits)?;
        execute(&self.execute)?;
        pipeline(&self.pipeline)?;
        observability(&self.observability)?;
        self.status.validate(
            self.observability.listen.as_deref(),
            self.observability.http_max_connections,
        )?;
        if let Some(k) = &self.kafka {
            kafka(k, &self.pipeline)?;
        }
        dedupe(&self.dedupe)?;
        collections(&self.collections)
    }
}

fn positive(field: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(field, "must be at least 1"));
    }
    Ok(())
}

fn limits(l: &Limits) -> Result<(), ConfigError> {
    for (op, v) in [
        ("create", l.max_items.create),
        ("update", l.max_items.update),
        ("upsert", l.max_items.upsert),
        ("delete", l.max_items.delete),
        ("lookup", l.max_items.lookup),
    ] {
        positive(&format!("limits.max_items.{op}"), v)?;
    }
    positive("limits.max_record_bytes", l.max_record_bytes)?;
    positive("limits.max_item_bytes", l.max_item_bytes)?;
    if l.max_item_bytes > l.max_record_bytes {
        return Err(ConfigError::invalid(
            "limits.max_item_bytes",
            format!(
                "{} exceeds limits.max_record_bytes ({})",
                l.max_item_bytes, l.max_record_bytes
            ),
        ));
    }
    // MongoDB refuses documents nested more than 100 levels.
    if l.max_depth < 3 || l.max_depth > 100 {
        return Err(ConfigError::invalid(
            "limits.max_depth",
            "must be between 3 (request → items → item) and 100 (MongoDB's nesting limit)",
        ));
    }
    Ok(())
}

/// Bytes one item's result can take in a progress event once its message is shortened (see
/// the pipeline's `fit`): a chunk's event must fit `limits.max_event_bytes` whatever happens.
pub const ITEM_RESULT_MAX_BYTES: usize = 192;

fn chunk(c: &ChunkConfig, l: &Limits) -> Result<(), ConfigError> {
    positive("chunk.max_items", c.max_items)?;
    positive("chunk.atomic_max_items", c.atomic_max_items)?;
    if l.max_event_bytes < 64 * 1024 {
        return Err(ConfigError::invalid(
            "limits.max_event_bytes",
            "must be at least 65536",
        ));
    }
    for (field, items) in [
        ("chunk.max_items", c.max_items),
        ("chunk.atomic_max_items", c.atomic_max_items),
    ] {
        if items * ITEM_RESULT_MAX_BYTES + 4096 > l.max_event_bytes {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "{items} item results may not fit one event of limits.max_event_bytes ({}); \
                     allow at most {} items or raise it",
                    l.max_event_bytes,
                    (l.max_event_bytes - 4096) / ITEM_RESULT_MAX_BYTES
                ),
            ));
        }
    }
    if c.max_bytes < l.max_item_bytes {
        return Err(ConfigError::invalid(
            "chunk.max_bytes",
            format!(
                "{} is smaller than limits.max_item_bytes ({}): a valid item would not fit a chunk",
                c.max_bytes, l.max_item_bytes
            ),
        ));
    }
    Ok(())
}

fn execute(e: &ExecuteConfig) -> Result<(), ConfigError> {
    positive("execute.write_concurrency", e.write_concurrency)?;
    positive("execute.lookup_concurrency", e.lookup_concurrency)?;
    if e.max_attempts == 0 {
        return Err(ConfigError::invalid(
            "execute.max_attempts",
            "must be at least 1",
        ));
    }
    if e.backoff_initial_ms > e.backoff_max_ms {
        return Err(ConfigError::invalid(
            "execute.backoff_initial_ms",
            "must not exceed execute.backoff_max_ms",
        ));
    }
    if let Some(d) = e.default_deadline_ms {
        if d == 0 || d > e.max_deadline_ms {
            return Err(ConfigError::invalid(
                "execute.default_deadline_ms",
                "must be between 1 and execute.max_deadline_ms",
            ));
        }
    }
    Ok(())
}

fn pipeline(p: &PipelineConfig) -> Result<(), ConfigError> {
    positive("pipeline.channel_capacity", p.channel_capacity)?;
    positive("pipeline.max_in_flight_records", p.max_in_flight_records)?;
    positive("pipeline.commit_max_records", p.commit_max_records)?;
    Ok(())
}

fn observability(o: &ObservabilityConfig) -> Result<(), ConfigError> {
    if let Some(listen) = &o.listen {
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "observability.listen",
                format!("`{listen}` is not an address like 127.0.0.1:9464"),
            ));
        }
    }
    if o.health_interval_ms == 0 || o.health_timeout_ms == 0 {
        return Err(ConfigError::invalid(
            "observability.health_interval_ms",
            "health interval and timeout must be at least 1 ms",
        ));
    }
    if o.health_timeout_ms > o.health_interval_ms {
        return Err(ConfigError::invalid(
            "observability.health_timeout_ms",
            "must not exceed observability.health_interval_ms",
        ));
    }
    if o.http_max_connections == 0 || o.http_header_timeout_ms == 0 {
        return Err(ConfigError::invalid(
            "observability.http_max_connections",
            "the listener needs at least 1 connection and a header timeout of at least 1 ms",
        ));
    }
    if o.http_header_timeout_ms > o.http_connection_timeout_ms {
        return Err(ConfigError::invalid(
            "observability.http_header_timeout_ms",
            "must not exceed observability.http_connection_timeout_ms",
        ));
    }
    Ok(())
}

/// Takes `pipeline` too: a Kafka transaction must outlast two commit intervals.
fn kafka(k: &KafkaConfig, pipeline: &PipelineConfig) -> Result<(), ConfigError> {
    for (field, v) in [
        ("kafka.brokers", &k.brokers),
        ("kafka.group_id", &k.group_id),
        ("kafka.transactional_id_prefix", &k.transactional_id_prefix),
        ("kafka.topics.requests", &k.topics.requests),
        ("kafka.topics.results", &k.topics.results),
        ("kafka.topics.dlq", &k.topics.dlq),
    ] {
        if v.trim().is_empty() {
            return Err(ConfigError::invalid(field, "must not be empty"));
        }
    }
    let t = &k.topics;
    if t.requests == t.results || t.requests == t.dlq || t.results == t.dlq {
        return Err(ConfigError::invalid(
            "kafka.topics",
            "requests, results and dlq must be three different topics",
        ));
    }
    if k.partitions < 1 {
        return Err(ConfigError::invalid(
            "kafka.partitions",
            "must be at least 1",
        ));
    }
    if k.replication < 1 && k.replication != -1 {
        return Err(ConfigError::invalid(
            "kafka.replication",
            "must be at least 1, or -1 for the brokers' default.replication.factor",
        ));
    }
    if k.transaction_timeout_ms < pipeline.commit_interval_ms * 2 {
        return Err(ConfigError::invalid(
            "kafka.transaction_timeout_ms",
            "must be at least twice pipeline.commit_interval_ms",
        ));
    }
    // The drain runs inside a poll; giving up waits for a commit in progress (offsets,
    // flush, commit: up to three operation timeouts).
    if k.revoke_drain_ms + 3 * k.operation_timeout_ms >= k.max_poll_interval_ms {
        return Err(ConfigError::invalid(
            "kafka.revoke_drain_ms",
            "plus 3 × kafka.operation_timeout_ms must be less than kafka.max_poll_interval_ms \
             (a revocation drains inside the consumer's poll and may wait for a commit in progress)",
        ));
    }
    // A normal rebalance after a crash leaves partitions unowned until the dead member's
    // session expires and the revoking members have drained.
    if k.unowned_timeout_ms <= k.session_timeout_ms + k.revoke_drain_ms {
        return Err(ConfigError::invalid(
            "kafka.unowned_timeout_ms",
            "must be more than kafka.session_timeout_ms + kafka.revoke_drain_ms (a normal \
             rebalance leaves partitions unowned that long)",
        ));
    }
    if k.static_membership && k.instance_id.is_none() {
        return Err(ConfigError::invalid(
            "kafka.static_membership",
            "needs kafka.instance_id (the static member id)",
        ));
    }
    for key in k.properties.keys() {
        if [
            "bootstrap.servers",
            "group.id",
            "group.instance.id",
            "transactional.id",
            "enable.auto.commit",
            "isolation.level",
        ]
        .contains(&key.as_str())
        {
            return Err(ConfigError::invalid(
                format!("kafka.properties.{key}"),
                "is set by sluice itself (use the typed kafka.* fields)",
            ));
        }
    }
    Ok(())
}

fn dedupe(d: &DedupeConfig) -> Result<(), ConfigError> {
    if d.window_secs == 0 {
        return Err(ConfigError::invalid(
            "dedupe.window_secs",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// Collections: every identifier matches the grammar (it reaches SQL and MongoDB as a name),
/// key and parent fields are not `_id`, parents are declared, and no parent chain loops.
fn collections(collections: &BTreeMap<String, CollectionConfig>) -> Result<(), ConfigError> {
    let grammar = format!("must match {IDENTIFIER_GRAMMAR} (1-64 ASCII letters, digits or `_`, not starting with a digit)");
    for (name, c) in collections {
        let field = |f: &str| format!("collections.{name}.{f}");
        if !valid_name(name) {
            return Err(ConfigError::invalid(
                format!("collections.{name}"),
                format!("the collection name {grammar}"),
            ));
        }
        let field_name = |f: &str, value: &str| {
            if !valid_name(value) {
                Err(ConfigError::invalid(
                    field(f),
                    format!("`{value}` {grammar}"),
                ))
            } else if value == "_id" {
                Err(ConfigError::invalid(
                    field(f),
                    "cannot be `_id` (reserved for the store's own identity)",
                ))
            } else {
                Ok(())
            }
        };
        field_name("key", &c.key)?;
        match (&c.parent, &c.parent_field) {
            (None, None) => {}
            (Some(p), Some(pf)) => {
                if !valid_name(p) {
                    return Err(ConfigError::invalid(
                        field("parent"),
                        format!("`{p}` {grammar}"),
                    ));
                }
                if !collections.contains_key(p) {
                    return Err(ConfigError::invalid(
                        field("parent"),
                        format!("names collection `{p}`, which is not declared"),
                    ));
                }
                if p == name {
                    return Err(ConfigError::invalid(field("parent"), "cannot be itself"));
                }
                field_name("parent_field", pf)?;
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    field("parent_field"),
                    "is required when `parent` is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    field("parent"),
                    "is required when `parent_field` is set",
                ))
            }
        }
    }
    // A cycle of parents, of any length, would make a cascade loop (or stop at an arbitrary
    // point): walk each collection's chain; it must end within as many steps as there are
    // collections, without coming back.
    for (name, c) in collections {
        let mut chain = vec![name.as_str()];
        let mut next = c.parent.as_deref();
        while let Some(p) = next {
            chain.push(p);
            if p == name {
                return Err(ConfigError::invalid(
                    format!("collections.{name}.parent"),
                    format!("parents form a cycle: {}", chain.join(" → ")),
                ));
            }
            if chain.len() > collections.len() {
                break; // a cycle further up, reported from one of its members
            }
            next = collections.get(p).and_then(|pc| pc.parent.as_deref());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{from_toml_str, Config};

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn contradiction_names_the_field() {
        let err = from_toml_str("[limits]\nmax_item_bytes = 100\nmax_record_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`limits.max_item_bytes`"), "{err}");
        let err = from_toml_str(
            "[collections.definitions]\nkey='id'\nparent='words'\nparent_field='word'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`collections.definitions.parent`"), "{err}");
        let err = from_toml_str("[chunk]\nmax_items = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`chunk.max_items`"), "{err}");
    }

    fn collections_error(toml: &str) -> String {
        from_toml_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn collection_identifiers_follow_the_grammar() {
        let err = collections_error(
            "[collections.words]\nkey='text'\n[collections.definitions]\nkey='id'\nparent='words'\nparent_field=\"word')); DROP TABLE doc_words; --\"\n",
        );
        assert!(
            err.contains("`collections.definitions.parent_field`"),
            "{err}"
        );
        assert!(err.contains("[A-Za-z_]"), "{err}");
        for (toml, field) in [
            ("[collections.words]\nkey='a.b'\n", "collections.words.key"),
            ("[collections.words]\nkey='$k'\n", "collections.words.key"),
            ("[collections.words]\nkey=''\n", "collections.words.key"),
            ("[collections.words]\nkey='_id'\n", "collections.words.key"),
            ("[collections.words]\nkey='te xt'\n", "collections.words.key"),
            ("[collections.'a.b']\nkey='k'\n", "collections.a.b"),
            ("[collections.'$w']\nkey='k'\n", "collections.$w"),
            ("[collections.'1w']\nkey='k'\n", "collections.1w"),
            (
                "[collections.w]\nkey='k'\n[collections.d]\nkey='id'\nparent='w'\nparent_field='a.b'\n",
                "collections.d.parent_field",
            ),
            (
                "[collections.w]\nkey='k'\n[collections.d]\nkey='id'\nparent='w'\nparent_field='_id'\n",
                "collections.d.parent_field",
            ),
            (
                "[collections.w]\nkey='k'\n[collections.d]\nkey='id'\nparent='w;x'\nparent_field='w'\n",
                "collections.d.parent",
            ),
        ] {
            let err = collections_error(toml);
            assert!(err.contains(&format!("`{field}`")), "{toml}: {err}");
        }
        let empty = collections_error("[collections.'']\nkey='k'\n");
        assert!(empty.contains("`collections.`"), "{empty}");
        from_toml_str("[collections._w0]\nkey='_k'\n").unwrap();
    }

    #[test]
    fn parent_cycles_of_any_length_are_refused() {
        let two = collections_error(
            "[collections.a]\nkey='k'\nparent='b'\nparent_field='p'\n[collections.b]\nkey='k'\nparent='a'\nparent_field='p'\n",
        );
        assert!(two.contains("`collections.a.parent`"), "{two}");
        assert!(two.contains("a → b → a"), "{two}");
        let three = collections_error(
            "[collections.a]\nkey='k'\nparent='b'\nparent_field='p'\n[collections.b]\nkey='k'\nparent='c'\nparent_field='p'\n[collections.c]\nkey='k'\nparent='a'\nparent_field='p'\n",
        );
        assert!(three.contains("a → b → c → a"), "{three}");
        // A chain leading into a cycle is reported from the cycle's first member.
        let tail = collections_error(
            "[collections.a]\nkey='k'\nparent='b'\nparent_field='p'\n[collections.b]\nkey='k'\nparent='c'\nparent_field='p'\n[collections.c]\nkey='k'\nparent='b'\nparent_field='p'\n",
        );
        assert!(tail.contains("`collections.b.parent`"), "{tail}");
        // A long chain without a cycle is fine.
        from_toml_str(
            "[collections.a]\nkey='k'\n[collections.b]\nkey='k'\nparent='a'\nparent_field='p'\n[collections.c]\nkey='k'\nparent='b'\nparent_field='p'\n[collections.d]\nkey='k'\nparent='c'\nparent_field='p'\n",
        )
        .unwrap();
    }

    #[test]
    fn a_revoke_drain_that_could_outlast_the_poll_interval_is_refused() {
        let ok = "[kafka]\nmax_poll_interval_ms = 100000\noperation_timeout_ms = 20000\nrevoke_drain_ms = 39000\n";
        from_toml_str(ok).unwrap();
        let err = from_toml_str(&ok.replace("39000", "40000"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`kafka.revoke_drain_ms`"), "{err}");
        assert!(err.contains("max_poll_interval_ms"), "{err}");
    }

    #[test]
    fn replication_is_at_least_one_or_the_brokers_default() {
        from_toml_str("[kafka]\nreplication = 3\n").unwrap();
        from_toml_str("[kafka]\nreplication = -1\n").unwrap();
        for bad in ["0", "-2"] {
            let err = from_toml_str(&format!("[kafka]\nreplication = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`kafka.replication`"), "{bad}: {err}");
        }
    }
}
