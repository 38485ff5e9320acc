//! The document model on every store: cascades through every declared level in one
//! transaction, keys compared by JSON type and value (in cascades as in lookups), lookups
//! bounded by a byte budget, and documents read back exactly as written — names that look
//! like Extended JSON included.

use std::sync::Arc;

use serde_json::{json, Value};
use sluice_pipeline::contract::{ItemStatus, Op, Options};
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{Child, Found};
use sluice_pipeline::Store;

use crate::common::*;

fn cascade() -> Options {
    Options {
        cascade: true,
        ..Options::default()
    }
}

/// Deletes `key` from `target` (with `options`), asserting the item's status.
async fn delete(
    store: &dyn Store,
    id: &str,
    target: &Arc<sluice_pipeline::store::Target>,
    key: Value,
    options: Options,
    expect: ItemStatus,
) {
    let c = chunk(
        id,
        Op::Delete,
        target.clone(),
        vec![json!({ "key": key })],
        options,
    );
    let r = write(store, c).await.unwrap();
    assert_eq!(statuses(&r), vec![expect], "delete {id}: {:?}", r.event);
}

/// Which of `ids` (string keys) exist in `target`.
async fn present(
    store: &dyn Store,
    target: &sluice_pipeline::store::Target,
    ids: &[&str],
) -> Vec<String> {
    let keys: Vec<Key> = ids.iter().map(|i| Key::Str(i.to_string())).collect();
    let found = store.lookup(target, &keys, usize::MAX).await.unwrap();
    ids.iter()
        .zip(found)
        .filter(|(_, f)| matches!(f, Found::Doc(_)))
        .map(|(i, _)| i.to_string())
        .collect()
}

/// words ← definitions ← examples: a cascading delete reaches the examples of the word's
/// definitions, in the same transaction — a failure at the deepest level leaves every level
/// as it was; a delete without `cascade` leaves children; a cascade can start mid-way.
pub async fn cascades_reach_every_level_in_one_transaction(store: Arc<dyn Store>) {
    let s = &*store;
    seed(
        s,
        "lv-w",
        words(),
        vec![json!({"text": "lv1"}), json!({"text": "lv2"})],
    )
    .await;
    seed(
        s,
        "lv-d",
        definitions(),
        vec![
            json!({"id": 1, "word": "lv1"}),
            json!({"id": 2, "word": "lv1"}),
            json!({"id": 3, "word": "lv2"}),
        ],
    )
    .await;
    let all_examples = ["e1", "e2", "e3", "e4", "e5"];
    seed(
        s,
        "lv-e",
        examples(),
        vec![
            json!({"id": "e1", "definition": 1}),
            json!({"id": "e2", "definition": 2}),
            json!({"id": "e3", "definition": 3}),
            json!({"id": "e4", "definition": 4}),
            json!({"id": "e5", "definition": "1"}),
        ],
    )
    .await;

    // The examples level has a sibling that cannot be written: the whole cascade (word,
    // definitions, examples) must be undone, and the item fail alone.
    let mut broken = (*words()).clone();
    broken.children[0].children.push(Child {
        collection: "no_such_collection".into(),
        field: "definition".into(),
        key_field: "id".into(),
        children: vec![],
    });
    let c = chunk(
        "lv-broken",
        Op::Delete,
        Arc::new(broken),
        vec![json!({"key": "lv1"})],
        cascade(),
    );
    let r = write(s, c).await.unwrap();
    assert_eq!(
        (statuses(&r), code(&r, 0)),
        (vec![ItemStatus::Failed], Some("store_error"))
    );
    assert!(get(s, &words(), "lv1").await.is_some(), "word kept");
    for id in [1, 2] {
        assert!(
            get_key(s, &definitions(), Key::Int(id)).await.is_some(),
            "definition {id} kept after a failed cascade"
        );
    }
    assert_eq!(
        present(s, &examples(), &all_examples).await,
        all_examples,
        "examples kept after a failed cascade"
    );

    delete(
        s,
        "lv-del1",
        &words(),
        json!("lv1"),
        cascade(),
        ItemStatus::Ok,
    )
    .await;
    assert_eq!(get(s, &words(), "lv1").await, None);
    for id in [1, 2] {
        assert_eq!(get_key(s, &definitions(), Key::Int(id)).await, None);
    }
    assert_eq!(
        present(s, &examples(), &all_examples).await,
        ["e3", "e4", "e5"],
        "the examples of the word's definitions are gone, no others (e5 names \"1\", not 1)"
    );

    delete(
        s,
        "lv-del2",
        &words(),
        json!("lv2"),
        Options::default(),
        ItemStatus::Ok,
    )
    .await;
    assert!(
        get_key(s, &definitions(), Key::Int(3)).await.is_some(),
        "without cascade, children stay"
    );
    delete(
        s,
        "lv-del3",
        &definitions(),
        json!(3),
        cascade(),
        ItemStatus::Ok,
    )
    .await;
    assert_eq!(present(s, &examples(), &all_examples).await, ["e4", "e5"]);
}

/// A cascade deletes a child only when its parent field holds the key with the same JSON
/// type and value: "1" ≠ 1, 1.0 ≠ 1, [1] ≠ 1, {"a":1} ≠ "{\"a\":1}", true ≠ 1 — at every
/// level.
pub async fn cascades_match_keys_by_type(store: Arc<dyn Store>) {
    let s = &*store;
    seed_raw(
        s,
        "ty-w",
        words(),
        &[
            r#"{"text":1}"#,
            r#"{"text":"1"}"#,
            r#"{"text":"{\"a\":1}"}"#,
            r#"{"text":"deep"}"#,
        ],
    )
    .await;
    let defs = [
        r#"{"id":"s","word":"1"}"#,
        r#"{"id":"i","word":1}"#,
        r#"{"id":"f","word":1.0}"#,
        r#"{"id":"e","word":1e0}"#,
        r#"{"id":"a","word":[1]}"#,
        r#"{"id":"as","word":["1"]}"#,
        r#"{"id":"aa","word":[[1]]}"#,
        r#"{"id":"o","word":{"a":1}}"#,
        r#"{"id":"os","word":"{\"a\":1}"}"#,
        r#"{"id":"b","word":true}"#,
        r#"{"id":7,"word":"deep"}"#,
        r#"{"id":"7","word":"elsewhere"}"#,
    ];
    seed_raw(s, "ty-d", definitions(), &defs).await;
    seed_raw(
        s,
        "ty-e",
        examples(),
        &[
            r#"{"id":"g1","definition":7}"#,
            r#"{"id":"g2","definition":"7"}"#,
            r#"{"id":"g3","definition":7.0}"#,
            r#"{"id":"g4","definition":[7]}"#,
        ],
    )
    .await;
    let ids = ["s", "i", "f", "e", "a", "as", "aa", "o", "os", "b"];

    delete(s, "ty-int", &words(), json!(1), cascade(), ItemStatus::Ok).await;
    let left: Vec<&str> = ids.iter().copied().filter(|i| *i != "i").collect();
    assert_eq!(
        present(s, &definitions(), &ids).await,
        left,
        "the integer 1 deletes only `word: 1`"
    );

    delete(s, "ty-str", &words(), json!("1"), cascade(), ItemStatus::Ok).await;
    let left: Vec<&str> = left.into_iter().filter(|i| *i != "s").collect();
    assert_eq!(
        present(s, &definitions(), &ids).await,
        left,
        "the string \"1\" deletes only `word: \"1\"`"
    );

    delete(
        s,
        "ty-obj",
        &words(),
        json!("{\"a\":1}"),
        cascade(),
        ItemStatus::Ok,
    )
    .await;
    let left: Vec<&str> = left.into_iter().filter(|i| *i != "os").collect();
    assert_eq!(
        present(s, &definitions(), &ids).await,
        left,
        "the string \"{{\\\"a\\\":1}}\" deletes only that string, not the object"
    );

    delete(
        s,
        "ty-deep",
        &words(),
        json!("deep"),
        cascade(),
        ItemStatus::Ok,
    )
    .await;
    assert_eq!(get_key(s, &definitions(), Key::Int(7)).await, None);
    assert!(
        get(s, &definitions(), "7").await.is_some(),
        "the string key \"7\" is another definition"
    );
    assert_eq!(
        present(s, &examples(), &["g1", "g2", "g3", "g4"]).await,
        ["g2", "g3", "g4"],
        "at the second level too, only `definition: 7` matches the integer 7"
    );
}

/// Lookups compare keys by type and value: the integer 1 and the string "1" are two keys.
pub async fn lookups_match_keys_by_type(store: Arc<dyn Store>) {
    let s = &*store;
    seed_raw(
        s,
        "lk-w",
        words(),
        &[r#"{"text":1,"is":"int"}"#, r#"{"text":"1","is":"str"}"#],
    )
    .await;
    let keys = [
        Key::Int(1),
        Key::Str("1".into()),
        Key::Int(2),
        Key::Str("01".into()),
    ];
    let found = s.lookup(&words(), &keys, usize::MAX).await.unwrap();
    assert_eq!(
        found,
        vec![
            Found::Doc(json!({"text": 1, "is": "int"})),
            Found::Doc(json!({"text": "1", "is": "str"})),
            Found::Missing,
            Found::Missing,
        ]
    );
}

/// Lookups return at most `max_bytes` of documents, counted in key order: a document that
/// does not fit with those before it is `TooLarge` (with its size), a later smaller one may
/// still fit; absent keys are `Missing` whatever the budget.
pub async fn lookups_stop_at_the_byte_budget(store: Arc<dyn Store>) {
    let s = &*store;
    let pad = "x".repeat(1000);
    let big = |k: &str| json!({"text": k, "pad": pad});
    seed(
        s,
        "bud",
        words(),
        vec![big("b1"), big("b2"), big("b3"), json!({"text": "s1"})],
    )
    .await;
    let key = |k: &str| Key::Str(k.into());
    let keys = [key("b3"), key("absent"), key("b1"), key("s1"), key("b2")];

    // Each big document is about 1 KB in JSON and in BSON: two fit in 2,500 bytes, three do not.
    let found = s.lookup(&words(), &keys, 2500).await.unwrap();
    assert_eq!(found.len(), keys.len());
    assert_eq!(
        found[0],
        Found::Doc(big("b3")),
        "the first key in order fits: {found:?}"
    );
    assert_eq!(found[1], Found::Missing);
    assert_eq!(
        found[2],
        Found::Doc(big("b1")),
        "the second fits: {found:?}"
    );
    assert_eq!(
        found[3],
        Found::Doc(json!({"text": "s1"})),
        "a small one after them fits"
    );
    match found[4] {
        Found::TooLarge(n) => assert!((1000..1200).contains(&n), "its size: {n}"),
        ref other => panic!("the third big document (in key order) is past the budget: {other:?}"),
    }

    let none = s.lookup(&words(), &keys, 0).await.unwrap();
    assert!(
        matches!(
            none.as_slice(),
            [
                Found::TooLarge(_),
                Found::Missing,
                Found::TooLarge(_),
                Found::TooLarge(_),
                Found::TooLarge(_)
            ]
        ),
        "with no budget every existing document is TooLarge: {none:?}"
    );

    // A key asked twice (a request without `dedupe`) is found twice.
    let twice = s
        .lookup(&words(), &[key("s1"), key("s1")], usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        twice,
        vec![Found::Doc(json!({"text": "s1"})); 2],
        "a repeated key"
    );
}

/// Field names that look like Extended JSON (`$numberLong`, `$oid`, `$date`, …) nested in a
/// document and string values that look like it are stored literally: a lookup returns the
/// same JSON on every store, after create, upsert and update alike.
pub async fn dollar_names_and_extended_json_lookalikes_read_back_exactly(store: Arc<dyn Store>) {
    let s = &*store;
    let created = [
        r#"{"text":"x1","a":{"$numberLong":"5"},"d":{"$date":{"$numberLong":"0"}},"oid":{"$oid":"507f1f77bcf86cd799439011"}}"#,
        r#"{"text":"x2","arr":[{"$regex":"^a","$options":"i"},{"$binary":{"base64":"AA==","subType":"00"}}],"u":{"$undefined":true},"mk":{"$minKey":1},"dec":{"$numberDecimal":"1.5"}}"#,
        // Not even valid Extended JSON.
        r#"{"text":"x5","o":{"$oid":"nothex"},"ts":{"$timestamp":{"t":"x"}}}"#,
    ];
    let upserted = [
        r#"{"text":"x3","s":"$numberLong","t":"ObjectId(\"507f1f77bcf86cd799439011\")","nan":{"$numberDouble":"NaN"},"i":{"$numberInt":"1"},"ref":{"$ref":"words","$id":1}}"#,
        r#"{"text":"x4","big":9223372036854775807,"neg":-9223372036854775808,"f":1.5,"z":0.0,"e":1e300,"uni":"é😀\u2028","nul":"a\u0000b","esc":"\"\\/","deep":[[{"$a":[{"b":null}]}]]}"#,
    ];
    seed_raw(s, "xj-c", words(), &created).await;
    let items = upserted
        .iter()
        .enumerate()
        .map(|(i, d)| raw_item(i, d, "text"))
        .collect();
    let r = write(
        s,
        chunk_of("xj-u", Op::Upsert, words(), items, Options::default()),
    )
    .await
    .unwrap();
    assert_eq!(statuses(&r), vec![ItemStatus::Ok; 2]);

    for text in created.iter().chain(&upserted) {
        // Each document alone: a lookup that fails (a reader choking on one document) fails
        // for all the keys it was given.
        let written: Value = serde_json::from_str(text).unwrap();
        let key = written["text"].as_str().unwrap();
        assert_eq!(
            get(s, &words(), key).await.as_ref(),
            Some(&written),
            "{key} reads back as written"
        );
    }

    let c = chunk(
        "xj-up",
        Op::Update,
        words(),
        vec![json!({"key": "x1", "set": {"extra": {"n": 1}}, "unset": ["oid"]})],
        Options::default(),
    );
    assert_eq!(statuses(&write(s, c).await.unwrap()), vec![ItemStatus::Ok]);
    let mut expected: Value = serde_json::from_str(created[0]).unwrap();
    expected["extra"] = json!({"n": 1});
    expected.as_object_mut().unwrap().remove("oid");
    assert_eq!(
        get(s, &words(), "x1").await,
        Some(expected),
        "an update keeps the literal names it does not touch"
    );
}

/// A number whose shortest text a parser that is not correctly rounded reads one unit in the
/// last place off (serde_json without `float_roundtrip` reads it as -6.692987723732903e-54,
/// and that text as …902e-54); about 3 in 10 random doubles are like it.
const TRICKY: &str = "-6.692987723732904e-54";

/// A document's numbers read back as the numbers the producer wrote: the double nearest to
/// the decimal text, as any correctly rounded JSON parser (a consumer's) reads it.
pub async fn numbers_read_back_as_written(store: Arc<dyn Store>) {
    let s = &*store;
    let text = format!(r#"{{"text":"num","f":{TRICKY},"i":-9223372036854775808,"h":0.1}}"#);
    seed_raw(s, "num", words(), &[&text]).await;
    let doc = get(s, &words(), "num").await.expect("the document");
    let written: f64 = TRICKY.parse().expect("a double");
    assert_eq!(
        doc["f"].as_f64(),
        Some(written),
        "{TRICKY} reads back as {} (the nearest double is {written:e})",
        doc["f"]
    );
    assert_eq!(doc["i"], json!(i64::MIN));
    assert_eq!(doc["h"], json!(0.1));
}

/// An update changes the fields it names and nothing else: the other fields' numbers stay
/// the same doubles, however often the document is updated.
pub async fn an_update_leaves_other_numbers_unchanged(store: Arc<dyn Store>) {
    let s = &*store;
    let text = format!(r#"{{"text":"upd-num","f":{TRICKY},"nested":[{{"g":{TRICKY}}}],"n":0}}"#);
    seed_raw(s, "upd-num", words(), &[&text]).await;
    let before = get(s, &words(), "upd-num").await.expect("the document");
    for n in 1..=2 {
        let c = chunk(
            &format!("upd-num-{n}"),
            Op::Update,
            words(),
            vec![json!({"key": "upd-num", "set": {"n": n}})],
            Options::default(),
        );
        assert_eq!(statuses(&write(s, c).await.unwrap()), vec![ItemStatus::Ok]);
        let after = get(s, &words(), "upd-num").await.expect("the document");
        let mut expected = before.clone();
        expected["n"] = json!(n);
        assert_eq!(
            after, expected,
            "update {n} of `n` changed other fields' numbers (f: {} before, {} after)",
            before["f"], after["f"]
        );
    }
}
