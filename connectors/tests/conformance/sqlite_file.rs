//! SQLite-only cases: what the store does with its file.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_pipeline::contract::{ItemStatus, Op, Options};

use crate::common::*;

/// A chunk the store commits reaches the database file without the writer checkpointing:
/// the store's checkpoint thread copies it out of the WAL. 300 KB of documents make a WAL of
/// 1–2 MiB, well below the 1,000 pages (4 MiB) at which the writer would checkpoint itself,
/// so without the thread the database file would stay at its schema's few pages.
#[tokio::test]
async fn committed_chunks_reach_the_database_file_beside_the_writer() {
    let (dir, store) = crate::sqlite_store();
    let file = dir.path().join("s.db");
    let size = || std::fs::metadata(&file).map_or(0, |m| m.len());
    let before = size();
    let pad = "p".repeat(1000);
    let items = (0..300)
        .map(|i| json!({"text": format!("w{i}"), "pad": pad}))
        .collect();
    let chunk = chunk("r", Op::Create, words(), items, Options::default());
    let r = write(&store, chunk).await.unwrap();
    assert!(statuses(&r).iter().all(|s| *s == ItemStatus::Ok));
    let deadline = Instant::now() + Duration::from_secs(10);
    while size() < before + 250_000 {
        assert!(
            Instant::now() < deadline,
            "the database file is {} bytes ({before} before 300 KB were committed): nothing \
             checkpointed the WAL",
            size()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
