//! Unit tests of the validate stage: one per kind of bad input, plus the happy path. The
//! helpers here are shared with `model_tests` (the document model).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_config::{from_toml_str, Config};

use super::{json_depth, valid_request_id, Validate};
use crate::codes::{DeadLetterCode, ItemErrorCode, RejectCode};
use crate::contract::{Op, ResultEvent};
use crate::record::{RawRecord, SourceRef};
use crate::request::{ItemBody, Key, Request};
use crate::work::Work;

fn config() -> Arc<Config> {
    Arc::new(
        from_toml_str(
            r#"
            [limits]
            max_record_bytes = 2000
            max_item_bytes = 200
            max_depth = 6
            [limits.max_items]
            create = 3
            lookup = 2
            [chunk]
            atomic_max_items = 2
            max_bytes = 1000
            [collections.words]
            key = "text"
            [collections.definitions]
            key = "id"
            parent = "words"
            parent_field = "word"
            "#,
        )
        .unwrap(),
    )
}

pub(super) fn record(bytes: &[u8]) -> RawRecord {
    RawRecord {
        source: SourceRef {
            topic: "t".into(),
            partition: 0,
            offset: 3,
        },
        key: None,
        payload: Bytes::copy_from_slice(bytes),
        truncated: false,
        resume_at: 0,
        start_at: 0,
        skip_progress: 0,
        skip_counts: None,
        received: Instant::now(),
        permit: None,
    }
}

fn check(s: &str) -> Work {
    Validate::new(config()).check(record(s.as_bytes()))
}

pub(super) fn dead_code(w: Work) -> DeadLetterCode {
    match w {
        Work::DeadLetter { letter, .. } => letter.error.code,
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

pub(super) fn reject_codes(w: Work) -> Vec<(RejectCode, String)> {
    match w {
        Work::Finished {
            event: ResultEvent::Rejected(r),
            ..
        } => r.errors.into_iter().map(|e| (e.code, e.path)).collect(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

pub(super) fn request(w: Work) -> Request {
    match w {
        Work::Execute { request, .. } => request,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn valid_create_request_parses_items_and_keys() {
    let r = request(check(
        r#"{"request_id":"r-1","collection":"words","op":"create","items":[{"text":"a"},{"text":7,"x":1}]}"#,
    ));
    assert_eq!(r.op, Op::Create);
    assert_eq!(r.items[0].key, Some(Key::Str("a".into())));
    assert_eq!(r.items[1].key, Some(Key::Int(7)));
    assert!(r.items.iter().all(|i| i.decided.is_none()));
    assert!(r.options.dedupe, "dedupe defaults to true");
}

#[test]
fn records_without_a_usable_request_id_are_dead_letters() {
    assert_eq!(dead_code(check("not json")), DeadLetterCode::InvalidJson);
    assert_eq!(dead_code(check("[1,2]")), DeadLetterCode::NotAnObject);
    assert_eq!(dead_code(check("42")), DeadLetterCode::NotAnObject);
    assert_eq!(
        dead_code(check(r#"{"op":"create"}"#)),
        DeadLetterCode::MissingRequestId
    );
    assert_eq!(
        dead_code(check(r#"{"request_id":5}"#)),
        DeadLetterCode::InvalidRequestId
    );
    assert_eq!(
        dead_code(check(r#"{"request_id":""}"#)),
        DeadLetterCode::InvalidRequestId
    );
    assert_eq!(
        dead_code(check(r#"{"request_id":"a b"}"#)),
        DeadLetterCode::InvalidRequestId
    );
    let long = format!(r#"{{"request_id":"{}"}}"#, "x".repeat(129));
    assert_eq!(dead_code(check(&long)), DeadLetterCode::InvalidRequestId);
    let v = Validate::new(config());
    assert_eq!(
        dead_code(v.check(record(b"{\"request_id\":\"\xff\"}"))),
        DeadLetterCode::InvalidUtf8
    );
    let mut cut = record(br#"{"request_id":"r""#);
    cut.truncated = true;
    match v.check(cut) {
        Work::DeadLetter { letter, .. } => {
            assert_eq!(letter.error.code, DeadLetterCode::RecordTooLarge);
            // The cap the reader applied, not the record limit (issue 12).
            let cap = config().limits.read_cap().to_string();
            assert!(
                letter.error.message.contains(&cap),
                "{}",
                letter.error.message
            );
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

#[test]
fn dead_letters_keep_the_original_bytes() {
    let v = Validate::new(config());
    match v.check(record(b"\xff\xfe")) {
        Work::DeadLetter { raw, letter, .. } => {
            assert_eq!(&raw[..], b"\xff\xfe");
            assert_eq!(letter.original_base64.as_deref(), Some("//4="));
            assert_eq!(letter.source.offset, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_envelope_problem_is_reported_with_its_path() {
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":"verbs","op":"merge","items":[],"extra":1,"options":{"atomik":true,"dedupe":"yes"}}"#,
    ));
    assert_eq!(
        codes,
        vec![
            (RejectCode::UnknownField, "/extra".into()),
            (RejectCode::UnknownCollection, "/collection".into()),
            (RejectCode::UnknownOp, "/op".into()),
            (RejectCode::UnknownField, "/options/atomik".into()),
            (RejectCode::InvalidField, "/options/dedupe".into()),
            (RejectCode::NoItems, "/items".into()),
        ]
    );
    let codes = reject_codes(check(r#"{"request_id":"r"}"#));
    assert_eq!(
        codes.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![
            RejectCode::MissingField,
            RejectCode::MissingField,
            RejectCode::MissingField
        ]
    );
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":1,"op":2,"items":{}}"#,
    ));
    assert_eq!(
        codes.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![
            RejectCode::InvalidField,
            RejectCode::UnknownOp,
            RejectCode::InvalidField
        ]
    );
}

#[test]
fn limits_come_from_config() {
    let four = r#"{"request_id":"r","collection":"words","op":"create","items":[{"text":"a"},{"text":"b"},{"text":"c"},{"text":"d"}]}"#;
    assert_eq!(
        reject_codes(check(four)),
        vec![(RejectCode::TooManyItems, "/items".into())]
    );
    let three_lookups = r#"{"request_id":"r","collection":"words","op":"lookup","items":[{"key":"a"},{"key":"b"},{"key":"c"}]}"#;
    assert_eq!(
        reject_codes(check(three_lookups))[0].0,
        RejectCode::TooManyItems
    );
    let big = format!(
        r#"{{"request_id":"big","collection":"words","op":"create","items":[{{"text":"{}"}}]}}"#,
        "x".repeat(2100)
    );
    assert_eq!(
        reject_codes(check(&big)),
        vec![(RejectCode::RecordTooLarge, String::new())]
    );
    let deep = r#"{"request_id":"deep","collection":"words","op":"create","items":[{"text":"a","n":[[[[[1]]]]]}]}"#;
    assert_eq!(
        reject_codes(check(deep)),
        vec![(RejectCode::TooDeep, String::new())]
    );
    let atomic = r#"{"request_id":"r","collection":"words","op":"create","items":[{"text":"a"},{"text":"b"},{"text":"c"}],"options":{"atomic":true}}"#;
    assert_eq!(
        reject_codes(check(atomic)),
        vec![(RejectCode::AtomicTooLarge, "/items".into())]
    );
}

#[test]
fn very_deep_records_are_rejected_by_id_or_dead_lettered_without_one() {
    let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let with_id = format!("{{\"x\":{},\"request_id\":\"r\"}}", nest(500));
    assert_eq!(
        reject_codes(check(&with_id)),
        vec![(RejectCode::TooDeep, String::new())]
    );
    let without = format!("{{\"x\":{}}}", nest(500));
    assert_eq!(dead_code(check(&without)), DeadLetterCode::MissingRequestId);
}

#[test]
fn options_must_fit_the_op() {
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":"words","op":"create","items":[{"text":"a"}],"options":{"cascade":true,"deadline_ms":0}}"#,
    ));
    assert_eq!(
        codes,
        vec![
            (RejectCode::InvalidField, "/options/deadline_ms".into()),
            (RejectCode::InvalidOption, "/options/cascade".into())
        ]
    );
    let codes = reject_codes(check(
        r#"{"request_id":"r","collection":"words","op":"lookup","items":[{"key":"a"}],"options":{"atomic":true,"skip_existing":true}}"#,
    ));
    assert_eq!(
        codes.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![RejectCode::InvalidOption; 2]
    );
}

#[test]
fn invalid_items_are_decided_as_failed_with_a_code() {
    let big = "y".repeat(300);
    let r = request(check(&format!(
        r#"{{"request_id":"r","collection":"words","op":"upsert","items":[{{"nokey":1}},{{"text":[1]}},"str",{{"text":"{big}"}},{{"text":"ok","_id":3}}]}}"#
    )));
    let codes: Vec<_> = r
        .items
        .iter()
        .map(|i| i.decided.as_ref().unwrap().error.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        vec![
            ItemErrorCode::MissingKey,
            ItemErrorCode::MissingKey,
            ItemErrorCode::InvalidItem,
            ItemErrorCode::TooLarge,
            ItemErrorCode::InvalidItem
        ]
    );
}

#[test]
fn update_items_are_checked() {
    let r = request(check(
        r#"{"request_id":"r","collection":"words","op":"update","items":[{"key":"a","set":{"pos":"n"},"unset":["x"]},{"key":"a"},{"key":"a","set":{"text":"b"}},{"key":"a","set":1},{"key":"a","set":{"p":1},"other":2}]}"#,
    ));
    assert_eq!(
        r.items[0].body,
        ItemBody::Update {
            set: serde_json::from_str(r#"{"pos":"n"}"#).unwrap(),
            unset: vec!["x".into()]
        }
    );
    for item in &r.items[1..] {
        let e = item.decided.as_ref().unwrap().error.as_ref().unwrap();
        assert_eq!(
            e.code,
            ItemErrorCode::InvalidItem,
            "item {}: {}",
            item.index,
            e.message
        );
    }
}

#[test]
fn depth_scanner_ignores_brackets_in_strings() {
    assert_eq!(json_depth(r#"{"a":"[[[[{{{{\"]]]"}"#), 1);
    assert_eq!(json_depth(r#"{"a":[{"b":[]}]}"#), 4);
    assert_eq!(json_depth("3"), 0);
    assert_eq!(
        json_depth(r#"["\\\\",["#),
        2,
        "an escaped backslash ends no string"
    );
    assert_eq!(json_depth(r#"["a\"#), 1, "unterminated at an escape");
}

/// The byte-at-a-time scanner `json_depth` replaced (it skips strings with `memchr` now).
fn depth_byte_by_byte(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

proptest::proptest! {
    /// Any text, well-formed or not, made of the bytes that matter: the same depth.
    #[test]
    fn depth_scanner_agrees_with_the_byte_loop(text in r#"[\[\]{}"\\a é]{0,64}"#) {
        proptest::prop_assert_eq!(json_depth(&text), depth_byte_by_byte(&text));
    }
}

#[test]
fn request_id_rules() {
    assert!(valid_request_id("imp-2026-11-28-0001"));
    assert!(valid_request_id("a.b_c:d-e"));
    assert!(!valid_request_id("a/b"));
    assert!(!valid_request_id("é"));
}
