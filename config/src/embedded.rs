//! The embedded default's section (`[embedded]`): the SQLite state database and how long it
//! waits for a lock held by another process, and whether the members of a consumer group share
//! it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The embedded default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// SQLite database holding the documents, the ledger and the input/output positions.
    pub state: PathBuf,
    /// How long a SQLite statement waits for a lock held by another process before failing
    /// with a transient `busy` error (then retried by `[execute]`), in milliseconds.
    pub busy_timeout_ms: u64,
    /// Every member of the Kafka consumer group opens this same `state` file (processes on
    /// one host sharing it). The SQLite store serves one instance: members whose stores are
    /// different files would split the documents between them and lose the ledger whenever a
    /// partition moves. So unless this is set, a Kafka service on SQLite processes nothing
    /// while its consumer group has other members, and says why on `/readyz` and in its log.
    /// Ignored with `[mongo]`.
    pub shared: bool,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            state: PathBuf::from("sluice.db"),
            busy_timeout_ms: 5_000,
            shared: false,
        }
    }
}
