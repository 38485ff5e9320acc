//! How the MongoDB store keys documents: `_id` is the key (one index per collection for the
//! key), and a collection written by an older version (ObjectId `_id`, unique index on the key
//! field) keeps its layout, so its existing documents are still found, never duplicated.

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::Collection;
use serde_json::json;
use sluice_connectors::mongo::MongoStore;
use sluice_pipeline::contract::{ItemStatus, Op, Options};

use crate::common::*;
use crate::{fresh_database, mongo_connect_to, mongo_store, mongo_uri};

fn raw(store: &MongoStore, collection: &str) -> Collection<Document> {
    store.database().collection(collection)
}

async fn index_names(coll: &Collection<Document>) -> Vec<String> {
    let mut names = coll.list_index_names().await.unwrap();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn a_documents_id_is_its_key() {
    let store = mongo_store().await;
    seed(
        &store,
        "k-w",
        words(),
        vec![json!({"text": "apple", "n": 1})],
    )
    .await;
    seed(
        &store,
        "k-d",
        definitions(),
        vec![json!({"id": 7, "word": "apple", "d": "a fruit"})],
    )
    .await;
    let apple = raw(&store, "words")
        .find_one(doc! {"_id": "apple"})
        .await
        .unwrap()
        .expect("the document, found by its _id");
    assert_eq!(
        apple.get_str("text").unwrap(),
        "apple",
        "the key field stays"
    );
    assert!(raw(&store, "definitions")
        .find_one(doc! {"_id": Bson::Int64(7)})
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        index_names(&raw(&store, "words")).await,
        ["_id_"],
        "the _id index is the key's unique index"
    );
    assert_eq!(
        index_names(&raw(&store, "definitions")).await,
        ["_id_", "word_1"],
        "cascades still have the parent field's index"
    );
    // Reads do not show the _id; upserts keep it the key.
    assert_eq!(
        get(&store, &words(), "apple").await,
        Some(json!({"text": "apple", "n": 1}))
    );
    let up = chunk(
        "k-u",
        Op::Upsert,
        words(),
        vec![json!({"text": "apple", "n": 2}), json!({"text": "pear"})],
        Options::default(),
    );
    assert_eq!(
        statuses(&write(&store, up).await.unwrap()),
        [ItemStatus::Ok, ItemStatus::Ok]
    );
    for key in ["apple", "pear"] {
        let d = raw(&store, "words")
            .find_one(doc! {"text": key})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.get_str("_id").unwrap(), key);
    }
    assert_eq!(
        raw(&store, "words").count_documents(doc! {}).await.unwrap(),
        2
    );
}

/// A database laid out as sluice wrote it before `_id` was the key: the unique `{key: 1}`
/// index (when `indexed`) and a document with an ObjectId `_id`.
async fn older_database(indexed: bool) -> String {
    let db_name = fresh_database();
    let client = mongodb::Client::with_uri_str(&mongo_uri()).await.unwrap();
    let words: Collection<Document> = client.database(&db_name).collection("words");
    if indexed {
        let unique = mongodb::options::IndexOptions::builder()
            .unique(true)
            .build();
        words
            .create_index(
                mongodb::IndexModel::builder()
                    .keys(doc! {"text": 1})
                    .options(unique)
                    .build(),
            )
            .await
            .unwrap();
    }
    words
        .insert_one(doc! {"_id": ObjectId::new(), "text": "old", "n": 1_i64})
        .await
        .unwrap();
    db_name
}

/// The documents of the older layout are found by every operation, and no key is doubled.
async fn older_layout_is_kept(indexed: bool) {
    let db_name = older_database(indexed).await;
    let store = mongo_connect_to(&mongo_uri(), &db_name).await;
    assert!(
        index_names(&raw(&store, "words"))
            .await
            .contains(&"text_1".to_string()),
        "the unique key index is (still) there"
    );
    let create = chunk(
        "o-c",
        Op::Create,
        words(),
        vec![json!({"text": "old"}), json!({"text": "new"})],
        Options::default(),
    );
    let r = write(&store, create).await.unwrap();
    assert_eq!(statuses(&r), [ItemStatus::Failed, ItemStatus::Ok]);
    assert_eq!(code(&r, 0), Some("exists"));
    assert_eq!(
        get(&store, &words(), "old").await,
        Some(json!({"text": "old", "n": 1}))
    );
    let new = raw(&store, "words")
        .find_one(doc! {"text": "new"})
        .await
        .unwrap()
        .unwrap();
    assert!(
        new.get_object_id("_id").is_ok(),
        "new documents follow the collection's layout: {new}"
    );
    let up = chunk(
        "o-u",
        Op::Upsert,
        words(),
        vec![json!({"text": "old", "n": 2})],
        Options::default(),
    );
    assert_eq!(
        statuses(&write(&store, up).await.unwrap()),
        [ItemStatus::Ok]
    );
    assert_eq!(
        raw(&store, "words")
            .count_documents(doc! {"text": "old"})
            .await
            .unwrap(),
        1,
        "the upsert replaced the old document"
    );
    let del = chunk(
        "o-d",
        Op::Delete,
        words(),
        vec![json!({"key": "old"})],
        Options::default(),
    );
    assert_eq!(
        statuses(&write(&store, del).await.unwrap()),
        [ItemStatus::Ok]
    );
    assert_eq!(get(&store, &words(), "old").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn a_collection_of_the_older_layout_keeps_it() {
    older_layout_is_kept(true).await;
}

/// The same when the unique index was dropped by hand: the ObjectId `_id`s give it away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn an_older_collection_without_its_index_keeps_its_layout() {
    older_layout_is_kept(false).await;
}

/// The layout is decided once per collection and recorded: an ObjectId document that shows up
/// later (a manual insert, an older sluice) does not make the next instance key it otherwise,
/// which would hide every document the first one wrote. A changed key field is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
async fn the_layout_is_recorded_once_for_every_instance() {
    let db_name = fresh_database();
    let first = mongo_connect_to(&mongo_uri(), &db_name).await;
    seed(&first, "r-1", words(), vec![json!({"text": "apple"})]).await;
    raw(&first, "words")
        .insert_one(doc! {"_id": ObjectId::new(), "text": "odd"})
        .await
        .unwrap();
    let second = mongo_connect_to(&mongo_uri(), &db_name).await;
    let again = chunk(
        "r-2",
        Op::Create,
        words(),
        vec![json!({"text": "apple"})],
        Options::default(),
    );
    let r = write(&second, again).await.unwrap();
    assert_eq!(
        code(&r, 0),
        Some("exists"),
        "the second instance finds the first one's document"
    );
    assert_eq!(
        index_names(&raw(&second, "words")).await,
        ["_id_"],
        "no key index was added"
    );
    let moved = sluice_config::from_toml_str(&format!(
        "[mongo]\nuri = '{}'\ndatabase = '{db_name}'\n[collections.words]\nkey = 'word'\n",
        mongo_uri()
    ))
    .unwrap();
    let refused = MongoStore::connect(moved.mongo.as_ref().unwrap(), &moved).await;
    let e = refused.err().expect("a changed key is refused");
    assert_eq!(e.code, "key_changed", "{e}");
}
