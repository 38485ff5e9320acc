//! What both `sluice run` services — the embedded default (`embedded`) and the Kafka service
//! (`kafka`) — share: the store the config selects, and the shutdown signal
//! (graceful on the first SIGINT/SIGTERM, immediate on the second: safe, since nothing past the
//! last checkpoint counts as done).

use std::sync::Arc;

use anyhow::Context;
use sluice_config::Config;
use sluice_connectors::sqlite::SqliteStore;
use sluice_pipeline::Store;

/// The configured store: MongoDB when `[mongo]` is set, else the SQLite store `sqlite` opens
/// (only then: with MongoDB the Kafka service creates no SQLite file at all).
pub async fn open_store(
    config: &Config,
    sqlite: impl FnOnce() -> anyhow::Result<SqliteStore>,
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.mongo {
        Some(m) => {
            let uri = sluice_config::mask_uri(&m.uri);
            let store = sluice_connectors::mongo::MongoStore::connect(m, config)
                .await
                .with_context(|| format!("connecting to MongoDB at {uri}"))?;
            tracing::info!(uri = %uri, database = %m.database, "using the MongoDB store");
            Arc::new(store)
        }
        None => Arc::new(sqlite()?),
    })
}

/// Resolves at the first SIGINT/SIGTERM; a second one exits the process at once.
pub async fn shutdown_signal() {
    wait_signal().await;
    eprintln!("sluice: stopping — finishing in-flight requests (press Ctrl-C again to stop now)");
    tokio::spawn(async {
        wait_signal().await;
        eprintln!("sluice: stopped; unfinished requests will be resumed by the next run");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
