//! MongoDB group commit: small `create` chunks written at the same time share transactions,
//! and each still ends exactly as if written alone — its own event and ledger entry, existing
//! keys reported as `exists`, a chunk already in the ledger replayed, not applied again.

use std::sync::Arc;

use mongodb::bson::{doc, Document};
use serde_json::json;
use sluice_pipeline::contract::{ItemStatus, Op, Options};

use crate::common::*;
use crate::mongo_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn concurrent_small_creates_each_end_as_if_alone() {
    let store = Arc::new(mongo_store().await);
    seed(&*store, "g-seed", words(), vec![json!({"text": "taken"})]).await;
    let chunks: Vec<_> = (0..40)
        .map(|i| {
            let mut items: Vec<_> = (0..5)
                .map(|j| json!({"text": format!("g{i}-{j}")}))
                .collect();
            if i == 7 {
                items[2] = json!({"text": "taken"});
            }
            chunk(
                &format!("g-{i}"),
                Op::Create,
                words(),
                items,
                Options::default(),
            )
        })
        .collect();
    // Chunk 3 was written before: the group must replay it, not apply it again.
    let first = write(&*store, chunks[3].clone()).await.unwrap();
    let writes = chunks.iter().map(|c| {
        let store = store.clone();
        let c = c.clone();
        tokio::spawn(async move { write(&*store, c).await.unwrap() })
    });
    let commits: Vec<_> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for (i, commit) in commits.iter().enumerate() {
        assert_eq!(
            commit.event.request_id,
            format!("g-{i}"),
            "each chunk its own event"
        );
        let want: Vec<ItemStatus> = (0..5)
            .map(|j| {
                if i == 7 && j == 2 {
                    ItemStatus::Failed
                } else {
                    ItemStatus::Ok
                }
            })
            .collect();
        assert_eq!(statuses(commit), want, "chunk {i}");
        assert_eq!(commit.replayed, i == 3, "chunk {i}");
    }
    assert_eq!(code(&commits[7], 2), Some("exists"));
    assert_eq!(
        commits[3].event, first.event,
        "the replay publishes the first event"
    );
    let db = store.database();
    let words = db.collection::<Document>("words");
    assert_eq!(
        words.count_documents(doc! {}).await.unwrap(),
        1 + 40 * 5 - 1,
        "every new key once, the taken one not again"
    );
    assert_eq!(
        db.collection::<Document>("sluice_ledger")
            .count_documents(doc! {})
            .await
            .unwrap(),
        41,
        "one ledger entry per chunk"
    );
}
