//! The store conformance suite: what every `Store` must do, asserted through the trait alone,
//! on the SQLite store always and on the MongoDB store when `SLUICE_TEST_MONGO` (or
//! `SLUICE_TEST_MONGODB_URI`) names a server (CI: SecantusDB from scripts/secantus.sh).
//!
//! Parts:
//! - this file: the per-store constructors and [`conformance_suite!`], which expands every
//!   generic case once per store (`sqlite::…`, `mongodb_store::…`);
//! - `common`: the test collections (words ← definitions ← examples) and chunk builders;
//! - `suite`: writes, the ledger, creates/updates/deletes, atomic chunks, claims;
//! - `replay`: exact replays — first plans, settled outcomes, claim generations;
//! - `model`: the document model — cascades, key types, byte budgets, literal `$` names;
//! - `mongo`: MongoDB-only cases (chunks too large for one transaction, refused items);
//! - `group`: MongoDB group commit — concurrent small creates end as if written alone;
//! - `own`: a SecantusDB of a test's own (server settings, freezing);
//! - `sessions`: the bounded record of an instance's MongoDB sessions;
//! - `layout`: how MongoDB keys documents (`_id` = key), and collections of the older layout;
//! - `property` (with `property_model`): generated requests on both stores and on a model;
//! - `sqlite_file`: SQLite-only cases about its file (the WAL checkpointed beside the writer).

mod common;
mod group;
mod layout;
mod model;
mod mongo;
mod own;
mod property;
mod property_model;
mod replay;
mod sessions;
mod sqlite_file;
mod suite;

use std::sync::Arc;

use sluice_connectors::mongo::MongoStore;
use sluice_connectors::sqlite::SqliteStore;
use sluice_pipeline::Store;

/// A SQLite store on a file of its own; the directory lives as long as the returned guard.
pub fn sqlite_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let s = SqliteStore::open(&dir.path().join("s.db"), &common::config()).unwrap();
    (dir, s)
}

/// The MongoDB server of the tests (`SLUICE_TEST_MONGODB_URI`, a real replica set, or
/// `SLUICE_TEST_MONGO`, the SecantusDB that `scripts/test-all.sh` starts). The tests that need
/// it are `#[ignore]`d: `cargo test` lists them as ignored, and run with `--include-ignored` a
/// missing server is an error, never a pass.
pub fn mongo_uri() -> String {
    std::env::var("SLUICE_TEST_MONGODB_URI")
        .or_else(|_| std::env::var("SLUICE_TEST_MONGO"))
        .expect(
            "this test needs a MongoDB-wire server: run scripts/test-all.sh, or set \
             SLUICE_TEST_MONGO (scripts/secantus.sh start; scripts/secantus.sh uri)",
        )
}

/// The MongoDB store on a database of its own (`conf_<random>`) on the server at `uri`.
pub async fn mongo_connect(uri: &str) -> MongoStore {
    mongo_connect_to(uri, &fresh_database()).await
}

/// A database name no other test uses.
pub fn fresh_database() -> String {
    format!("conf_{:08x}", rand_suffix())
}

/// The MongoDB store on the database `database` at `uri`.
pub async fn mongo_connect_to(uri: &str, database: &str) -> MongoStore {
    let config = sluice_config::from_toml_str(&format!(
        "[mongo]\nuri = '{uri}'\ndatabase = '{database}'\n{}",
        common::COLLECTIONS
    ))
    .unwrap();
    MongoStore::connect(config.mongo.as_ref().unwrap(), &config)
        .await
        .unwrap()
}

/// A fresh MongoDB store on the server of the tests.
pub async fn mongo_store() -> MongoStore {
    mongo_connect(&mongo_uri()).await
}

/// A database-name suffix unlikely to repeat across tests and processes.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    n ^ std::process::id().rotate_left(16) ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(8)
}

/// Expands every generic case (`module::name`, each an `async fn(Arc<dyn Store>)`) as a test,
/// with the given attributes (e.g. `#[ignore = …]`), in a module that provides `async fn
/// store() -> (Box<dyn std::any::Any>, Arc<dyn Store>)` (the box keeps whatever the store
/// needs alive, e.g. its temporary directory).
macro_rules! conformance_suite {
    ($(#[$attr:meta])*) => {
        conformance_suite!(@tests [$(#[$attr])*]
            suite::commit_is_visible,
            suite::ledger_makes_chunks_idempotent,
            suite::racing_owners_apply_once,
            suite::create_reports_exists_or_skipped,
            suite::missing_keys_are_not_found,
            suite::update_and_upsert,
            suite::atomic_failure_applies_nothing,
            suite::cascade_deletes_children_atomically,
            suite::claims_recognise_duplicates,
            suite::concurrent_conflicting_chunks_all_land,
            replay::a_claim_keeps_its_first_plan_and_time,
            replay::a_claim_batch_answers_as_claims_one_by_one,
            replay::settle_records_an_outcome_once,
            replay::an_applied_chunk_wins_over_a_later_settle,
            replay::a_settled_chunk_is_never_applied,
            replay::settle_and_write_racing_agree,
            replay::a_reused_request_id_after_expiry_is_a_new_generation,
            replay::an_unfinished_claim_never_expires,
            model::cascades_reach_every_level_in_one_transaction,
            model::cascades_match_keys_by_type,
            model::lookups_match_keys_by_type,
            model::lookups_stop_at_the_byte_budget,
            model::dollar_names_and_extended_json_lookalikes_read_back_exactly,
            model::numbers_read_back_as_written,
            model::an_update_leaves_other_numbers_unchanged,
        );
    };
    (@tests $attrs:tt $($module:ident :: $name:ident),+ $(,)?) => {$(
        conformance_suite!(@test $attrs $module $name);
    )+};
    (@test [$($attr:tt)*] $module:ident $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            let (_guard, s) = store().await;
            crate::$module::$name(s).await;
        }
    };
}

mod sqlite {
    use super::*;

    async fn store() -> (Box<dyn std::any::Any>, Arc<dyn Store>) {
        let (dir, s) = sqlite_store();
        (Box::new(dir), Arc::new(s))
    }

    conformance_suite!();
}

/// The same suite on the MongoDB store; each test has its own database.
mod mongodb_store {
    use super::*;

    async fn store() -> (Box<dyn std::any::Any>, Arc<dyn Store>) {
        (Box::new(()), Arc::new(mongo_store().await))
    }

    conformance_suite!(#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]);
}
