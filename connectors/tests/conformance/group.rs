//! MongoDB group commit: small `create` chunks written at the same time share transactions,
//! and each still ends exactly as if written alone — its own event and ledger entry, existing
//! keys reported as `exists`, a chunk already in the ledger replayed, not applied again.

use std::sync::Arc;

use mongodb::bson::{doc, Document};
use serde_json::json;
use sluice_connectors::mongo::MongoStore;
use sluice_pipeline::contract::{ItemStatus, Op, Options};
use sluice_pipeline::store::{ChunkCommit, WriteChunk};
use tokio::task::JoinHandle;

use crate::common::*;
use crate::mongo_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn concurrent_small_creates_each_end_as_if_alone() {
    let store = Arc::new(mongo_store().await);
    seed(&*store, "g-seed", words(), vec![json!({"text": "taken"})]).await;
    let chunks = small_creates("g", 40, |i, items, _| {
        if i == 7 {
            items[2] = json!({"text": "taken"});
        }
    });
    // Chunk 3 was written before: the group must replay it, not apply it again.
    let first = write(&*store, chunks[3].clone()).await.unwrap();
    let commits = write_all(&store, &chunks).await;
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
    assert_eq!(
        count(&store, "words").await,
        1 + 40 * 5 - 1,
        "every new key once, the taken one not again"
    );
    assert_eq!(
        count(&store, "sluice_ledger").await,
        41,
        "one ledger entry per chunk"
    );
    assert!(
        store.grouped_chunks() > 1,
        "40 chunks written at once share transactions"
    );
}

/// `n` chunks `{prefix}-{i}` of 5 new keys each, `edit` changing some of them.
fn small_creates(
    prefix: &str,
    n: usize,
    edit: impl Fn(usize, &mut Vec<serde_json::Value>, &mut Options),
) -> Vec<Arc<WriteChunk>> {
    (0..n)
        .map(|i| {
            let mut items: Vec<_> = (0..5)
                .map(|j| json!({"text": format!("{prefix}{i}-{j}")}))
                .collect();
            let mut options = Options::default();
            edit(i, &mut items, &mut options);
            chunk(
                &format!("{prefix}-{i}"),
                Op::Create,
                words(),
                items,
                options,
            )
        })
        .collect()
}

/// Writes `chunk` (transient errors retried) in a task of its own.
fn spawn_write(store: &Arc<MongoStore>, chunk: &Arc<WriteChunk>) -> JoinHandle<ChunkCommit> {
    let (store, chunk) = (store.clone(), chunk.clone());
    tokio::spawn(async move { write(&*store, chunk).await.unwrap() })
}

/// Writes every chunk at once, each in a task of its own, and returns their commits in order.
async fn write_all(store: &Arc<MongoStore>, chunks: &[Arc<WriteChunk>]) -> Vec<ChunkCommit> {
    let writes = chunks.iter().map(|c| spawn_write(store, c));
    futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// The documents in `collection` of the store's database.
async fn count(store: &MongoStore, collection: &str) -> u64 {
    store
        .database()
        .collection::<Document>(collection)
        .count_documents(doc! {})
        .await
        .unwrap()
}

/// Two chunks written at once creating the same key: one applies it, the other reports
/// `exists`, as if written one after the other (in one group, or in two). A `skip_existing`
/// chunk reads its keys first, in a group as alone, and reports the stored one `skipped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn grouped_chunks_meeting_each_other_or_skip_existing_end_as_if_alone() {
    let store = Arc::new(mongo_store().await);
    seed(&*store, "k-seed", words(), vec![json!({"text": "taken"})]).await;
    let chunks = small_creates("k", 30, |i, items, options| match i {
        4 | 11 => items[1] = json!({"text": "twin"}),
        20 => {
            items[0] = json!({"text": "taken"});
            options.skip_existing = true;
        }
        21 => options.skip_existing = true,
        _ => {}
    });
    let commits = write_all(&store, &chunks).await;
    let twins = [&commits[4], &commits[11]];
    let twin_statuses: Vec<_> = twins.iter().map(|c| statuses(c)[1]).collect();
    assert!(
        twin_statuses.contains(&ItemStatus::Ok) && twin_statuses.contains(&ItemStatus::Failed),
        "one twin applied, the other failed: {twin_statuses:?}"
    );
    let loser = twins.iter().find(|c| statuses(c)[1] == ItemStatus::Failed);
    assert_eq!(code(loser.unwrap(), 1), Some("exists"));
    for (i, commit) in commits.iter().enumerate() {
        let want: Vec<ItemStatus> = (0..5)
            .map(|j| match (i, j) {
                (20, 0) => ItemStatus::Skipped,
                (4 | 11, 1) => statuses(commit)[1],
                _ => ItemStatus::Ok,
            })
            .collect();
        assert_eq!(statuses(commit), want, "chunk {i}");
        assert!(!commit.replayed, "chunk {i}");
    }
    assert_eq!(
        count(&store, "words").await,
        1 + 30 * 5 - 2,
        "every new key once: the twin once, the taken key not again"
    );
    assert!(
        store.grouped_chunks() > 1,
        "some chunks shared a transaction"
    );
}

/// Writers cancelled at arbitrary points (in the queue, writing alone, in a group) leave no
/// other chunk waiting, and writing a cancelled chunk again, as the pipeline's retry does,
/// applies nothing twice: the ledger says what a cancelled transaction committed. (Timing
/// decides which points are hit; the cancelled leader has a test of its own below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn cancelled_group_writers_strand_no_chunk_and_apply_nothing_twice() {
    let store = Arc::new(mongo_store().await);
    let mut all = Vec::new();
    for (round, delay_ms) in [0u64, 2, 5, 10, 20].into_iter().enumerate() {
        let chunks = small_creates(&format!("c{round}x"), 30, |_, _, _| {});
        let tasks: Vec<_> = chunks.iter().map(|c| spawn_write(&store, c)).collect();
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        for task in tasks.iter().step_by(3) {
            task.abort();
        }
        // The others finish within a bound, whoever led their group.
        let finished = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            futures::future::join_all(tasks),
        )
        .await
        .expect("every chunk not cancelled is answered within 60 s");
        for (i, (done, chunk)) in finished.into_iter().zip(chunks).enumerate() {
            all.push((chunk, done.is_ok()));
            match done {
                Ok(commit) => assert_eq!(statuses(&commit), vec![ItemStatus::Ok; 5]),
                Err(e) => assert!(e.is_cancelled() && i % 3 == 0, "chunk {i}: {e}"),
            }
        }
    }
    // Every chunk written again, as a retry would: the answered ones replay their event,
    // the cancelled ones replay or apply now, and none applies twice.
    let chunks: Vec<_> = all.iter().map(|(c, _)| c.clone()).collect();
    for (commit, (chunk, answered)) in write_all(&store, &chunks).await.iter().zip(&all) {
        assert_eq!(statuses(commit), vec![ItemStatus::Ok; 5]);
        if *answered {
            assert!(
                commit.replayed,
                "{} committed before",
                chunk.request.request_id
            );
        }
    }
    assert_eq!(count(&store, "words").await, 5 * 30 * 5, "every key once");
    assert_eq!(
        count(&store, "sluice_ledger").await,
        5 * 30,
        "one ledger entry per chunk"
    );
}

/// A store on `server` with one group slot and one slot for chunks written alone (who leads
/// a group is set by arrival), warmed up by one write (`warm`).
async fn one_slot_store(server: &crate::own::OwnServer) -> Arc<MongoStore> {
    let config = sluice_config::from_toml_str(&format!(
        "[mongo]\nuri = '{}'\ndatabase = 'one_slot'\n[execute]\nwrite_concurrency = 1\n{COLLECTIONS}",
        server.uri
    ))
    .unwrap();
    let store = Arc::new(
        MongoStore::connect(config.mongo.as_ref().unwrap(), &config)
            .await
            .unwrap(),
    );
    seed(&*store, "seed", words(), vec![json!({"text": "warm"})]).await;
    store
}

/// Chunks of one group that create the same key are decided as if written one after another,
/// inside the group: the first applies it; a later plain create reports `exists` and a later
/// `skip_existing` one `skipped`, though the earlier chunk's document has not reached the
/// server yet (the group sends every document at the end). No chunk leaves the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn a_key_an_earlier_chunk_of_the_group_creates_exists_for_the_later_ones() {
    use std::time::Duration;
    let server = crate::own::OwnServer::start("");
    let store = one_slot_store(&server).await;
    let chunks = small_creates("s", 5, |i, items, options| {
        match i {
            1 | 2 => items[0] = json!({"text": "shared"}),
            3 | 4 => items[0] = json!({"text": "other"}),
            _ => {}
        }
        options.skip_existing = i == 2;
    });
    let spawn = |c: &Arc<WriteChunk>| spawn_write(&store, c);
    server.freeze(true);
    // Chunk 0 holds the one group slot, written alone, while 1–4 queue in order behind it.
    let mut tasks = vec![spawn(&chunks[0])];
    for c in &chunks[1..] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tasks.push(spawn(c));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.freeze(false);
    let mut commits = Vec::new();
    for t in tasks {
        commits.push(t.await.unwrap());
    }
    let first: Vec<_> = commits.iter().map(|c| statuses(c)[0]).collect();
    assert_eq!(
        first,
        vec![
            ItemStatus::Ok,
            ItemStatus::Ok,
            ItemStatus::Skipped,
            ItemStatus::Ok,
            ItemStatus::Failed
        ],
        "chunk 1 creates `shared`, 2 skips it; 3 creates `other`, 4 finds it"
    );
    assert_eq!(code(&commits[4], 0), Some("exists"));
    assert_eq!(
        store.grouped_chunks(),
        4,
        "chunks 1-4 committed in one group, none left it"
    );
}

/// The writer leading a group transaction is cancelled while the server does not answer:
/// the chunks it took are not stranded — each is written alone once the server answers —
/// and writing the cancelled chunks again, as a retry would, applies each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn a_cancelled_group_leader_strands_none_of_its_chunks() {
    use std::time::Duration;
    use tokio::time::sleep;
    let server = crate::own::OwnServer::start("");
    let store = one_slot_store(&server).await;
    let chunks = small_creates("l", 4, |_, _, _| {});
    let spawn = |c: &Arc<WriteChunk>| spawn_write(&store, c);
    server.freeze(true);
    // A takes the group slot and, a group of one, writes alone: it waits for the server.
    let a = spawn(&chunks[0]);
    sleep(Duration::from_millis(300)).await;
    // B, C and D queue behind it, B first.
    let b = spawn(&chunks[1]);
    sleep(Duration::from_millis(100)).await;
    let (c, d) = (spawn(&chunks[2]), spawn(&chunks[3]));
    sleep(Duration::from_millis(200)).await;
    // A gone: B takes the slot and leads the group B, C, D, which waits for the server.
    a.abort();
    sleep(Duration::from_millis(300)).await;
    // B gone: C and D have lost their leader.
    b.abort();
    sleep(Duration::from_millis(100)).await;
    server.freeze(false);
    let (c, d) = tokio::time::timeout(Duration::from_secs(30), async {
        (c.await.unwrap(), d.await.unwrap())
    })
    .await
    .expect("the chunks of a cancelled leader are written within 30 s of the server's return");
    for commit in [&c, &d] {
        assert_eq!(statuses(commit), vec![ItemStatus::Ok; 5]);
        assert!(!commit.replayed, "nothing committed them before");
    }
    for again in write_all(&store, &chunks).await {
        assert_eq!(statuses(&again), vec![ItemStatus::Ok; 5]);
    }
    assert_eq!(count(&store, "words").await, 1 + 4 * 5, "every key once");
}
