//! Typed, layered, validated configuration for sluice.
//!
//! Parts:
//! - [`Config`] and its sections, one module per concept: `limits` ([`Limits`], [`OpLimits`],
//!   [`ChunkConfig`]), `pipeline` ([`ExecuteConfig`], [`PipelineConfig`], [`DedupeConfig`]),
//!   `collections` ([`CollectionConfig`]), `embedded` ([`EmbeddedConfig`]), `observability`
//!   ([`ObservabilityConfig`]), `kafka` ([`KafkaConfig`]) and `mongo` ([`MongoConfig`]). Every
//!   field has a doc comment and a default in exactly one place (its section's `Default` impl).
//!   All of them are re-exported here: other crates name them `sluice_config::…`.
//! - [`load`]: built-in defaults → optional TOML file → `SLUICE__…` environment variables
//!   (`SLUICE__LIMITS__MAX_RECORD_BYTES=2048`, sections split by a double underscore).
//! - [`Config::validate`] (module `validate`): rejects contradictions at start-up with a
//!   message naming the field.
//! - [`Config::masked`]: the printable form, with secrets replaced by `***` ([`mask_uri`],
//!   [`is_secret`]).
//!
//! Unknown fields are rejected everywhere (`deny_unknown_fields`), so a typo fails at start-up
//! instead of being silently ignored.

mod collections;
mod embedded;
mod kafka;
mod limits;
mod mongo;
mod observability;
mod pipeline;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use collections::{valid_name, CollectionConfig};
pub use embedded::EmbeddedConfig;
pub use kafka::{is_secret, Delivery, KafkaConfig, KafkaTopics};
pub use limits::{ChunkConfig, Limits, OpLimits};
pub use mongo::{mask_uri, MongoConfig};
pub use observability::{LogFormat, ObservabilityConfig};
pub use pipeline::{DedupeConfig, ExecuteConfig, PipelineConfig};
pub use validate::ITEM_RESULT_MAX_BYTES;

/// A configuration problem, naming the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed into the typed config.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value or a combination of values is not allowed.
    #[error("invalid configuration: `{field}`: {message}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `chunk.max_items`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole sluice configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Request limits enforced by the validate stage.
    pub limits: Limits,
    /// How requests are cut into chunks (one chunk = one store transaction).
    pub chunk: ChunkConfig,
    /// Concurrency, retries and deadlines of the execute stage.
    pub execute: ExecuteConfig,
    /// Channel capacities, ordering and shutdown of the pipeline as a whole.
    pub pipeline: PipelineConfig,
    /// Recognition of requests already processed (the dedupe window).
    pub dedupe: DedupeConfig,
    /// Collections requests may name, by name. Each declares its unique key field.
    pub collections: BTreeMap<String, CollectionConfig>,
    /// The embedded default: JSON-lines input/output and a SQLite store.
    pub embedded: EmbeddedConfig,
    /// Metrics, health endpoints and logs.
    pub observability: ObservabilityConfig,
    /// Kafka source and sink. When present, `sluice run` is the Kafka service; when absent,
    /// it runs the embedded default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConfig>,
    /// MongoDB store. When present it replaces the SQLite store (which remains the home of
    /// the embedded checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mongo: Option<MongoConfig>,
}

/// Prefix of environment variables that override the file, e.g.
/// `SLUICE__PIPELINE__CHANNEL_CAPACITY=128`.
pub const ENV_PREFIX: &str = "SLUICE__";

/// Loads the configuration: defaults, then `file` (if given), then `SLUICE__…` variables,
/// then validates it.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Parse(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    from_figment(figment)
}

/// Parses and validates a TOML document (no environment), e.g. for tests and `config check`.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    from_figment(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
}

fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

impl Config {
    /// The config as TOML with secrets masked, for `sluice config check` and start-up logs.
    pub fn masked(&self) -> String {
        let mut c = self.clone();
        if let Some(m) = c.mongo.as_mut() {
            m.uri = mask_uri(&m.uri);
        }
        if let Some(k) = c.kafka.as_mut() {
            for (key, value) in k.properties.iter_mut() {
                if is_secret(key) {
                    *value = "***".into();
                }
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named() {
        let err = from_toml_str("[chunk]\nmax_itemz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_itemz"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "[chunk]\nmax_items = 7\n")?;
            jail.set_env("SLUICE__CHUNK__MAX_BYTES", "9999999");
            let c = load(Some(Path::new("s.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.chunk.max_items, 7);
            assert_eq!(c.chunk.max_bytes, 9_999_999);
            Ok(())
        });
    }
}
