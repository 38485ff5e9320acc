//! The embedded default's section (`[embedded]`): the SQLite state database and how long it
//! waits for a lock held by another process.

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
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            state: PathBuf::from("sluice.db"),
            busy_timeout_ms: 5_000,
        }
    }
}
