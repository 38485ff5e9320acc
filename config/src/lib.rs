//! Typed, layered, validated configuration for sluice.
//!
//! Parts:
//! - [`Config`] and its sections, one module per concept: `status` ([`StatusConfig`]), `limits` ([`Limits`], [`OpLimits`],
//!   [`ChunkConfig`]), `pipeline` ([`ExecuteConfig`], [`PipelineConfig`], [`DedupeConfig`]),
//!   `collections` ([`CollectionConfig`]), `embedded` ([`EmbeddedConfig`]), `observability`
//!   ([`ObservabilityConfig`]), `kafka` ([`KafkaConfig`]) and `mongo` ([`MongoConfig`]). Every
//!   field has a doc comment and a default in exactly one place (its section's `Default` impl).
//!   All of them are re-exported here: other crates name them `sluice_config::…`.
//! - [`load`]: built-in defaults → optional TOML file → `SLUICE__…` environment variables
//!   (`SLUICE__LIMITS__MAX_RECORD_BYTES=2048`, sections split by a double underscore).
//! - [`Config::validate`] (module `validate`): rejects contradictions at start-up with a
//!   message naming the field.
//! - [`Config::masked`]: the printable form, with secrets replaced by `***`; module
//!   `secrets` holds the one rule for secrets ([`is_secret`], [`mask_uri`], and [`scrub`],
//!   which removes every secret of the loaded config from any text), module `parse` the
//!   error messages that never quote a secret.
//!
//! Unknown fields are rejected everywhere (`deny_unknown_fields`), so a typo fails at start-up
//! instead of being silently ignored.

mod collections;
mod embedded;
mod kafka;
mod limits;
mod mongo;
mod observability;
mod parse;
mod pipeline;
mod secrets;
mod status;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use collections::{valid_name, CollectionConfig};
pub use embedded::EmbeddedConfig;
pub use kafka::{Delivery, KafkaConfig, KafkaTopics};
pub use limits::{ChunkConfig, Limits, OpLimits};
pub use mongo::MongoConfig;
pub use observability::{LogFormat, ObservabilityConfig};
pub use pipeline::{DedupeConfig, ExecuteConfig, PipelineConfig};
pub use secrets::{is_secret, mask_uri, register as register_secrets, scrub, MASK};
pub use status::StatusConfig;
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
    /// The status API and page (what became of each request), on the same listener.
    pub status: StatusConfig,
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
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Parse(format!("cannot read config file {}: {e}", path.display()))
        })?;
        parse::check_syntax(&text, &format!("config file {}", path.display()))?;
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    parse::extract(figment)
}

/// Parses and validates a TOML document (no environment), e.g. for tests and `config check`.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    parse::check_syntax(text, "the config")?;
    parse::extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
}

impl Config {
    /// Every secret value the config holds (connection-string credentials and sensitive
    /// options, secret Kafka properties), for [`scrub`].
    pub fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self.status.token.iter().cloned().collect();
        if let Some(m) = &self.mongo {
            values.extend(secrets::uri_secrets(&m.uri));
        }
        if let Some(k) = &self.kafka {
            values.extend(
                k.properties
                    .iter()
                    .filter(|(key, _)| is_secret(key))
                    .map(|(_, value)| value.clone()),
            );
        }
        values
    }

    /// The config as TOML with secrets masked, for `sluice config check` and start-up logs.
    pub fn masked(&self) -> String {
        let mut c = self.clone();
        if let Some(t) = c.status.token.as_mut() {
            *t = MASK.into();
        }
        if let Some(m) = c.mongo.as_mut() {
            m.uri = mask_uri(&m.uri);
        }
        if let Some(k) = c.kafka.as_mut() {
            for (key, value) in k.properties.iter_mut() {
                if is_secret(key) {
                    *value = MASK.into();
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
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
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
