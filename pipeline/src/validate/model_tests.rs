//! Unit tests of the document model (README, "Documents"): each rule at depth, in create,
//! upsert, update and key-only items, and repeated member names everywhere in a record.

use std::sync::Arc;

use serde_json::json;
use sluice_config::from_toml_str;

use super::tests::{dead_code, record, reject_codes, request};
use super::Validate;
use crate::codes::{DeadLetterCode, ItemErrorCode, RejectCode};
use crate::contract::{ItemError, ItemResult, ItemStatus, Op};
use crate::request::{ItemBody, Request};
use crate::work::Work;

/// Validates `s` with room for a dozen small items per request.
fn check(s: &str) -> Work {
    let config = from_toml_str(
        r#"
        [limits]
        max_record_bytes = 4000
        max_item_bytes = 200
        max_depth = 8
        [limits.max_items]
        create = 12
        update = 12
        upsert = 12
        delete = 12
        lookup = 12
        [collections.words]
        key = "text"
        "#,
    )
    .unwrap();
    Validate::new(Arc::new(config)).check(record(s.as_bytes()))
}

/// A request of `op` on `words` (key `text`) with the given items (JSON texts).
fn items(op: &str, items: &[&str]) -> Request {
    request(check(&format!(
        r#"{{"request_id":"r","collection":"words","op":"{op}","items":[{}]}}"#,
        items.join(",")
    )))
}

/// Each item's decided error as (code, path or "" without one), `None` for items that go on to
/// the store.
fn outcomes(r: &Request) -> Vec<Option<(ItemErrorCode, String)>> {
    r.items
        .iter()
        .map(|i| {
            i.decided.as_ref().map(|d| {
                let e = d.error.as_ref().expect("a decided item has an error");
                (e.code, e.path.clone().unwrap_or_default())
            })
        })
        .collect()
}

fn bad(path: &str) -> Option<(ItemErrorCode, String)> {
    Some((ItemErrorCode::InvalidItem, path.to_string()))
}

fn dup(path: &str) -> Option<(ItemErrorCode, String)> {
    Some((ItemErrorCode::DuplicateName, path.to_string()))
}

#[test]
fn field_names_are_checked_at_every_depth() {
    let r = items(
        "create",
        &[
            r#"{"text":"a","m":{"n":{"$numberLong":"5"}}}"#,
            r#"{"text":"b","tags":[{"$oid":"nothex"}]}"#,
            r#"{"text":"c","m":{"a.b":1}}"#,
            r#"{"text":"d","x.y":1}"#,
            r#"{"text":"e","m":{"a\u0000b":1}}"#,
            r#"{"text":"f","m":{"":1}}"#,
            r#"{"text":"g","_id":3}"#,
            r#"{"text":"h","m":{"_id":1,"ok":[{"deep":true}]}}"#,
            r#"{"text":"i","$set":{"a":1}}"#,
        ],
    );
    assert_eq!(
        outcomes(&r),
        vec![
            bad("/items/0/m/n/$numberLong"),
            bad("/items/1/tags/0/$oid"),
            bad("/items/2/m/a.b"),
            bad("/items/3/x.y"),
            bad("/items/4/m/a\u{0}b"),
            bad("/items/5/m/"),
            bad("/items/6/_id"),
            None,
            bad("/items/8/$set"),
        ]
    );
    // The valid document is kept as its raw text.
    assert_eq!(
        r.items[7].body,
        ItemBody::Doc(
            serde_json::value::RawValue::from_string(
                r#"{"text":"h","m":{"_id":1,"ok":[{"deep":true}]}}"#.into()
            )
            .unwrap()
        )
    );
    // Upsert follows the same model.
    let r = items(
        "upsert",
        &[r#"{"text":"a","m":{"$date":1}}"#, r#"{"text":"b"}"#],
    );
    assert_eq!(outcomes(&r), vec![bad("/items/0/m/$date"), None]);
}

#[test]
fn pointers_escape_slash_and_tilde() {
    let r = items("create", &[r#"{"text":"a","a/b":{"c~d":{"$x":1}}}"#]);
    assert_eq!(outcomes(&r), vec![bad("/items/0/a~1b/c~0d/$x")]);
}

#[test]
fn integers_must_fit_i64_and_floats_must_be_finite() {
    let r = items(
        "create",
        &[
            r#"{"text":"a","n":18446744073709551615}"#,
            r#"{"text":"b","n":9223372036854775808}"#,
            r#"{"text":"c","n":-9223372036854775809}"#,
            r#"{"text":"d","n":100000000000000000000000}"#,
            r#"{"text":"e","m":{"l":[1,1e400]}}"#,
            r#"{"text":"f","n":-1e400}"#,
            r#"{"text":"g","n":9223372036854775807,"o":-9223372036854775808}"#,
            r#"{"text":"h","n":-0,"f":1.0,"e":1e23,"big":1.5e308,"tiny":5e-324}"#,
        ],
    );
    assert_eq!(
        outcomes(&r),
        vec![
            bad("/items/0/n"),
            bad("/items/1/n"),
            bad("/items/2/n"),
            bad("/items/3/n"),
            bad("/items/4/m/l/1"),
            bad("/items/5/n"),
            None,
            None,
        ]
    );
    let message = &r.items[0]
        .decided
        .as_ref()
        .unwrap()
        .error
        .as_ref()
        .unwrap()
        .message;
    assert!(message.contains("18446744073709551615"), "{message}");
    // Also in keys of key-only items, and in update values.
    let r = items(
        "delete",
        &[r#"{"key":18446744073709551615}"#, r#"{"key":-0}"#],
    );
    assert_eq!(
        outcomes(&r),
        vec![
            bad("/items/0/key"),
            Some((ItemErrorCode::MissingKey, String::new()))
        ]
    );
    let r = items("update", &[r#"{"key":"a","set":{"n":{"m":1e400}}}"#]);
    assert_eq!(outcomes(&r), vec![bad("/items/0/set/n/m")]);
}

#[test]
fn strings_must_be_valid_unicode() {
    let r = items(
        "create",
        &[
            r#"{"text":"a","s":"\ud800"}"#,
            r#"{"text":"\udc00"}"#,
            r#"{"text":"c","l":["ok","x\ud800y"]}"#,
            r#"{"text":"d","m":{"\ud800":1}}"#,
            r#"{"text":"e","s":"\ud83d\ude00 \u0000 é"}"#,
        ],
    );
    assert_eq!(
        outcomes(&r),
        vec![
            bad("/items/0/s"),
            bad("/items/1/text"),
            bad("/items/2/l/1"),
            bad("/items/3/m"),
            None,
        ]
    );
    let r = items("lookup", &[r#"{"key":"\ud800"}"#]);
    assert_eq!(outcomes(&r), vec![bad("/items/0/key")]);
}

#[test]
fn repeated_member_names_fail_the_item_at_any_depth() {
    let r = items(
        "create",
        &[
            r#"{"text":"a","text":"b"}"#,
            r#"{"text":"b","m":{"x":1,"y":2,"x":1}}"#,
            r#"{"text":"c","l":[{"y":1,"y":1}]}"#,
            r#"{"text":"d","m":{"x":1},"n":{"x":1}}"#,
        ],
    );
    assert_eq!(
        outcomes(&r),
        vec![
            dup("/items/0/text"),
            dup("/items/1/m/x"),
            dup("/items/2/l/0/y"),
            None
        ]
    );
    let r = items("delete", &[r#"{"key":"a","key":"b"}"#, r#"{"key":"c"}"#]);
    assert_eq!(outcomes(&r), vec![dup("/items/0/key"), None]);
    let r = items(
        "update",
        &[
            r#"{"key":"a","set":{"p":1,"p":2}}"#,
            r#"{"key":"a","set":{"p":1},"set":{"q":1}}"#,
        ],
    );
    assert_eq!(
        outcomes(&r),
        vec![dup("/items/0/set/p"), dup("/items/1/set")]
    );
}

#[test]
fn repeated_names_in_the_envelope_are_rejected_not_resolved() {
    // serde_json alone keeps the last value: this ran a create.
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":"words","op":"delete","op":"create","items":[{"text":"a"}]}"#,
    ));
    assert_eq!(codes, vec![(RejectCode::DuplicateName, "/op".into())]);
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":"words","collection":"words","op":"create","items":[{"text":"a"}],"items":[{"text":"b"}]}"#,
    ));
    assert_eq!(
        codes,
        vec![
            (RejectCode::DuplicateName, "/collection".into()),
            (RejectCode::DuplicateName, "/items".into())
        ]
    );
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":"words","op":"create","items":[{"text":"a"}],"options":{"atomic":true,"atomic":false}}"#,
    ));
    assert_eq!(
        codes,
        vec![(RejectCode::DuplicateName, "/options/atomic".into())]
    );
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":"words","op":"create","items":[{"text":"a"}],"options":{"extra":{"a":1,"a":2}}}"#,
    ));
    assert_eq!(
        codes,
        vec![(RejectCode::DuplicateName, "/options/extra/a".into())]
    );
}

#[test]
fn a_repeated_request_id_is_a_dead_letter() {
    // serde_json alone keeps the last value: this ran as request b.
    assert_eq!(
        dead_code(check(
            r#"{"request_id":"a","request_id":"b","collection":"words","op":"create","items":[{"text":"a"}]}"#
        )),
        DeadLetterCode::DuplicateName
    );
    assert_eq!(
        dead_code(check(r#"{"request_id":"a","request_id":"a"}"#)),
        DeadLetterCode::DuplicateName
    );
    // Also when the record is too large or too deep to validate (it was `invalid_json`).
    let big = format!(
        r#"{{"request_id":"a","pad":"{}","request_id":"b"}}"#,
        "x".repeat(5000)
    );
    assert_eq!(dead_code(check(&big)), DeadLetterCode::DuplicateName);
    let deep = format!(
        r#"{{"request_id":"a","x":{}1{},"request_id":"b"}}"#,
        "[".repeat(20),
        "]".repeat(20)
    );
    assert_eq!(dead_code(check(&deep)), DeadLetterCode::DuplicateName);
}

#[test]
fn update_names_follow_the_model() {
    let r = items(
        "update",
        &[
            r#"{"key":"a","set":{"a.b":1}}"#,
            r#"{"key":"a","set":{"m":{"$inc":1}}}"#,
            r#"{"key":"a","set":{"m":[{"x.y":1}]}}"#,
            r#"{"key":"a","unset":["a.b"]}"#,
            r#"{"key":"a","unset":["ok","$x"]}"#,
            r#"{"key":"a","set":{"p":1},"unset":["p"]}"#,
            r#"{"key":"a","unset":["p","p"]}"#,
            r#"{"key":"a","set":{"_id":1}}"#,
            r#"{"key":"a","unset":["text"]}"#,
            r#"{"key":"a","unset":[""]}"#,
            r#"{"key":"a","set":{"m":{"_id":1,"n":-0}},"unset":["q"]}"#,
        ],
    );
    assert_eq!(
        outcomes(&r),
        vec![
            bad("/items/0/set/a.b"),
            bad("/items/1/set/m/$inc"),
            bad("/items/2/set/m/0/x.y"),
            bad("/items/3/unset/0"),
            bad("/items/4/unset/1"),
            bad("/items/5/unset/0"),
            bad("/items/6/unset/1"),
            bad("/items/7/set/_id"),
            bad(""), // the key is immutable: a shape error, without a path
            bad("/items/9/unset/0"),
            None,
        ]
    );
}

#[test]
fn one_bad_item_does_not_fail_its_neighbours() {
    let r = items(
        "create",
        &[
            r#"{"text":"a"}"#,
            r#"{"text":"b","n":18446744073709551615}"#,
            r#"{"text":"c"}"#,
        ],
    );
    assert_eq!(r.op, Op::Create);
    assert_eq!(outcomes(&r), vec![None, bad("/items/1/n"), None]);
}

#[test]
fn item_errors_carry_their_path_on_the_wire() {
    let result =
        ItemResult::failed(3, ItemErrorCode::InvalidItem, "bad").with_path("/items/3/tags/0");
    assert_eq!(
        serde_json::to_value(&result).unwrap(),
        json!({"index":3,"status":"failed",
               "error":{"code":"invalid_item","message":"bad","retryable":false,"path":"/items/3/tags/0"}})
    );
    // Without a path the field is absent, and old events (without it) still read.
    let plain = ItemResult::failed(1, ItemErrorCode::Exists, "exists");
    let v = serde_json::to_value(&plain).unwrap();
    assert!(v["error"].get("path").is_none(), "{v}");
    assert_eq!(serde_json::from_value::<ItemResult>(v).unwrap(), plain);
    // Long paths are cut, and message + path stay within the message cap.
    let long = ItemResult::failed(0, ItemErrorCode::InvalidItem, "m".repeat(2000))
        .with_path(format!("/items/0/{}", "p".repeat(1000)));
    let e = long.error.unwrap();
    let path = e.path.unwrap();
    assert!(
        path.len() <= ItemError::PATH_MAX && path.ends_with('…'),
        "{path}"
    );
    assert!(e.message.len() + path.len() <= crate::fit::MESSAGE_MAX);
    // A result without an error is unchanged.
    assert_eq!(
        ItemResult::status(0, ItemStatus::Ok).with_path("/x"),
        ItemResult::status(0, ItemStatus::Ok)
    );
}

#[test]
fn shortened_events_drop_paths_so_each_result_stays_bounded() {
    use crate::contract::ProgressEvent;
    use crate::record::SourceRef;
    let results = (0..200)
        .map(|i| {
            ItemResult::failed(i, ItemErrorCode::InvalidItem, "m".repeat(400))
                .with_path(format!("/items/{i}/{}", "p".repeat(200)))
        })
        .collect();
    let mut event = ProgressEvent {
        request_id: "r".into(),
        chunk: 0,
        chunks: 1,
        items: results,
        source: SourceRef {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        },
    };
    crate::fit::fit_progress(&mut event, 64 * 1024);
    for item in &event.items {
        assert_eq!(item.error.as_ref().unwrap().path, None);
        let bytes = serde_json::to_vec(item).unwrap().len();
        assert!(bytes < sluice_config::ITEM_RESULT_MAX_BYTES, "{bytes}");
    }
}
