//! The MongoDB store section (`[mongo]`); its connection string is masked by
//! [`crate::mask_uri`] wherever it is printed.

use serde::{Deserialize, Serialize};

/// MongoDB connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Connection string of a replica set (TLS and auth options go here too); masked when
    /// printed. `SLUICE__MONGO__URI` sets it from the environment.
    pub uri: String,
    /// Database holding the collections and the ledgers.
    pub database: String,
    /// Connection pool size.
    pub max_pool_size: u32,
    /// How long to wait for a usable server before an operation fails (ms).
    pub server_selection_timeout_ms: u64,
    /// TCP connect timeout (ms).
    pub connect_timeout_ms: u64,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri: "mongodb://127.0.0.1:27017/?replicaSet=rs0".into(),
            database: "sluice".into(),
            max_pool_size: 16,
            server_selection_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::from_toml_str;

    #[test]
    fn mongo_uri_password_is_masked() {
        let c = from_toml_str("[mongo]\nuri='mongodb+srv://app:s3cret@db.example/'\n").unwrap();
        assert!(!c.masked().contains("s3cret"));
    }
}
