//! The record of an instance's sessions (`sluice_sessions`) is bounded: it keeps the sessions
//! noted last, once each, so that a long-running instance never grows it towards MongoDB's
//! 16 MB document limit (past which every chunk transaction would fail); its next incarnation
//! still ends the sessions kept.

use mongodb::bson::{doc, Bson, Document};
use sluice_connectors::mongo::sessions::{Sessions, SESSIONS_MAX};

use crate::{fresh_database, mongo_uri};

/// The lsids recorded for `instance`, in order.
async fn recorded(db: &mongodb::Database, instance: &str) -> Vec<Bson> {
    db.collection::<Document>("sluice_sessions")
        .find_one(doc! {"_id": instance})
        .await
        .unwrap()
        .and_then(|d| d.get_array("lsids").ok().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn an_instance_records_a_bounded_number_of_sessions_the_last_ones_noted() {
    let client = mongodb::Client::with_uri_str(&mongo_uri()).await.unwrap();
    let db = client.database(&fresh_database());
    let sessions = Sessions::new(&db, Some("i-1".into()));
    // More sessions than the bound, as a process running for months meets them (the driver
    // replaces a pooled session after half an hour idle).
    let mut started = Vec::new();
    for _ in 0..SESSIONS_MAX + 40 {
        let s = client.start_session().await.unwrap();
        sessions.note(&s).await.unwrap();
        started.push(s);
    }
    let lsids = |from: usize| -> Vec<Bson> {
        started[from..]
            .iter()
            .map(|s| Bson::Document(s.id().clone()))
            .collect()
    };
    let kept = recorded(&db, "i-1").await;
    assert_eq!(kept.len(), SESSIONS_MAX, "bounded");
    assert_eq!(kept, lsids(40), "the sessions noted last, in order");
    // A session still in use after the in-memory record forgot it is noted again: it moves
    // to the end (kept longest), never twice.
    let reused = &started[40];
    let again = Sessions::new(&db, Some("i-1".into()));
    again.note(reused).await.unwrap();
    let kept = recorded(&db, "i-1").await;
    assert_eq!(kept.len(), SESSIONS_MAX);
    assert_eq!(kept.last(), Some(&Bson::Document(reused.id().clone())));
    assert_eq!(
        kept.iter()
            .filter(|l| **l == Bson::Document(reused.id().clone()))
            .count(),
        1
    );
    // The next incarnation ends what was kept and empties the record.
    let next = Sessions::new(&db, Some("i-1".into()));
    assert_eq!(next.end_predecessors(&db).await.unwrap(), SESSIONS_MAX);
    assert!(recorded(&db, "i-1").await.is_empty());
}
