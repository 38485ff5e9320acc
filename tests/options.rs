//! Ordering and deadlines as a user sees them in the result events.

mod common;

use std::io::Write;

use common::*;
use serde_json::json;

fn run_requests(
    config: &str,
    requests: &[serde_json::Value],
    extra: &[&str],
) -> (tempfile::TempDir, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for r in requests {
        writeln!(f, "{r}").unwrap();
    }
    let cfg = write_config(dir.path(), config);
    let out = dir.path().join("out.jsonl");
    let state = dir.path().join("s.db");
    let mut args = run_args(&cfg, &input, &out, None, &state);
    args.extend(extra.iter().map(|s| s.to_string()));
    run_ok(&args);
    let events = read_lines(&out);
    check_once(&events);
    (dir, events)
}

const WORDS: &str = "[collections.words]\nkey = \"text\"\n[chunk]\nmax_items = 3\n";

#[test]
fn ordered_input_applies_lines_as_written() {
    for round in 0..5 {
        let reqs = vec![
            json!({"request_id": "c", "collection": "words", "op": "create", "items": [{"text": "a", "v": 0}]}),
            json!({"request_id": "u", "collection": "words", "op": "update", "items": [{"key": "a", "set": {"v": 1}}]}),
            json!({"request_id": "l", "collection": "words", "op": "lookup", "items": [{"key": "a"}]}),
            json!({"request_id": "d", "collection": "words", "op": "delete", "items": [{"key": "a"}]}),
            json!({"request_id": "l2", "collection": "words", "op": "lookup", "items": [{"key": "a"}]}),
        ];
        let (_d, events) = run_requests(WORDS, &reqs, &["--ordered"]);
        let lookup = events
            .iter()
            .find(|e| e["request_id"] == "l" && e["event"] == "progress")
            .unwrap();
        assert_eq!(
            lookup["items"][0]["doc"],
            json!({"text": "a", "v": 1}),
            "round {round}"
        );
        let after = events
            .iter()
            .find(|e| e["request_id"] == "l2" && e["event"] == "progress")
            .unwrap();
        assert_eq!(after["items"][0]["status"], "not_found", "round {round}");
        let order: Vec<_> = events
            .iter()
            .filter(|e| e["event"] == "completed")
            .map(|e| e["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            order,
            vec!["c", "u", "l", "d", "l2"],
            "events come out in input order"
        );
    }
}

#[test]
fn a_passed_deadline_leaves_remaining_chunks_not_attempted() {
    // In ordered mode the second request waits for the first (hundreds of transactions), so its
    // 1 ms deadline has passed before its first chunk.
    let big: Vec<_> = (0..600).map(|i| json!({"text": format!("b{i}")})).collect();
    let reqs = vec![
        json!({"request_id": "big", "collection": "words", "op": "create", "items": big}),
        json!({"request_id": "late", "collection": "words", "op": "create",
               "items": [{"text": "x1"}, {"text": "x2"}, {"text": "x3"}, {"text": "x4"}],
               "options": {"deadline_ms": 1}}),
    ];
    let config = format!("{WORDS}[limits.max_items]\ncreate = 1000\n");
    let (dir, events) = run_requests(&config, &reqs, &["--ordered"]);
    let late: Vec<_> = events
        .iter()
        .filter(|e| e["request_id"] == "late")
        .collect();
    assert_eq!(late.len(), 3, "two progress events and the terminal one");
    for p in &late[..2] {
        for item in p["items"].as_array().unwrap() {
            assert_eq!(item["status"], "not_attempted");
            assert_eq!(item["error"]["code"], "deadline_exceeded");
        }
    }
    assert_eq!(late[2]["counts"]["not_attempted"], 4);
    assert_eq!(
        count_docs(&dir.path().join("s.db"), "words"),
        600,
        "nothing of the late request was written"
    );
}

#[test]
fn unordered_requests_still_come_out_in_input_order() {
    let reqs: Vec<_> = (0..200)
        .map(|i| json!({"request_id": format!("r{i}"), "collection": "words", "op": "create",
                        "items": (0..(i % 7 + 1)).map(|j| json!({"text": format!("k{i}-{j}")})).collect::<Vec<_>>()}))
        .collect();
    let (_d, events) = run_requests(WORDS, &reqs, &[]);
    let order: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "completed")
        .map(|e| e["request_id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<_> = (0..200).map(|i| format!("r{i}")).collect();
    assert_eq!(order, expected);
}
