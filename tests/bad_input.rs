//! A corpus of well over 100 malformed records: none crashes sluice, none vanishes — each ends
//! as exactly one `rejected` event or one dead letter — and none reaches the store.

mod common;

use std::io::Write;

use common::*;

const CONFIG: &str = r#"
[limits]
max_record_bytes = 4096
max_item_bytes = 512
max_depth = 8
[limits.max_items]
create = 5
update = 5
upsert = 5
delete = 5
lookup = 5
[chunk]
atomic_max_items = 3
[collections.words]
key = "text"
"#;

/// (record bytes, expected outcome: "rejected" or "dead")
fn corpus() -> Vec<(Vec<u8>, &'static str)> {
    let mut c: Vec<(Vec<u8>, &'static str)> = Vec::new();
    let mut dead = |b: &[u8]| c.push((b.to_vec(), "dead"));
    // Not JSON at all.
    for s in [
        "x",
        "{",
        "}",
        "{]",
        "{\"request_id\":",
        "nul",
        "tru",
        "{'request_id':'a'}",
        "{\"a\" 1}",
        "{\"request_id\":\"a\",}",
        "[",
        "\"unterminated",
        "{\"request_id\":\"a\"",
        "--",
        "{}}",
        "{\"request_id\":\"r\"}{\"x\":1}",
        "{\"request_id\":\"r\" \"op\":1}",
        "{\"request_id\":01}",
    ] {
        dead(s.as_bytes());
    }
    // Invalid UTF-8.
    for b in [
        &b"\xff"[..],
        b"\xc3\x28",
        b"{\"request_id\":\"\xe2\x82\"}",
        b"\xf0\x90\x80",
        b"{\"x\":\"\xfe\"}",
    ] {
        dead(b);
    }
    // JSON, but not an object.
    for s in [
        "1",
        "-2.5",
        "true",
        "false",
        "null",
        "\"s\"",
        "[]",
        "[{\"request_id\":\"a\"}]",
        "[1,2,3]",
    ] {
        dead(s.as_bytes());
    }
    // No usable request_id.
    for rid in [
        "",
        "null",
        "1",
        "true",
        "[]",
        "{}",
        "\"\"",
        "\"has space\"",
        "\"slash/y\"",
        "\"ünï\"",
        "\"tab\\t\"",
        "\"new\\nline\"",
    ] {
        let rec = if rid.is_empty() {
            r#"{"collection":"words","op":"create","items":[{"text":"a"}]}"#.to_string()
        } else {
            format!(
                r#"{{"request_id":{rid},"collection":"words","op":"create","items":[{{"text":"a"}}]}}"#
            )
        };
        dead(rec.as_bytes());
    }
    // A repeated request_id: which request this is cannot be known (serde_json alone would
    // keep the last one), also when the record is too large to validate.
    for rec in [
        r#"{"request_id":"a","request_id":"b","collection":"words","op":"create","items":[{"text":"a"}]}"#.to_string(),
        r#"{"request_id":"a","request_id":"a"}"#.to_string(),
        format!(
            r#"{{"request_id":"a","pad":"{}","request_id":"b"}}"#,
            "z".repeat(5000)
        ),
    ] {
        dead(rec.as_bytes());
    }
    let long_id = format!(
        r#"{{"request_id":"{}","collection":"words","op":"create","items":[{{"text":"a"}}]}}"#,
        "x".repeat(129)
    );
    dead(long_id.as_bytes());

    let mut n = 0;
    let mut rej = |body: &str| {
        n += 1;
        let rec = format!(r#"{{"request_id":"bad-{n}",{body}}}"#);
        c.push((rec.into_bytes(), "rejected"));
    };
    // Unknown collection / op, wrong types, missing fields.
    for coll in [
        "\"verbs\"",
        "\"\"",
        "1",
        "null",
        "[\"words\"]",
        "{\"name\":\"words\"}",
        "\"WORDS\"",
        "\"words \"",
    ] {
        rej(&format!(
            r#""collection":{coll},"op":"create","items":[{{"text":"a"}}]"#
        ));
    }
    for op in [
        "\"merge\"",
        "\"\"",
        "\"CREATE\"",
        "1",
        "null",
        "[\"create\"]",
        "\"insert\"",
        "\"remove\"",
    ] {
        rej(&format!(
            r#""collection":"words","op":{op},"items":[{{"text":"a"}}]"#
        ));
    }
    for items in ["[]", "{}", "\"a\"", "1", "null", "true"] {
        rej(&format!(
            r#""collection":"words","op":"create","items":{items}"#
        ));
    }
    rej(r#""op":"create","items":[{"text":"a"}]"#);
    rej(r#""collection":"words","items":[{"text":"a"}]"#);
    rej(r#""collection":"words","op":"create""#);
    rej("\"x\":1");
    // Options of the wrong type, unknown, or not fitting the op.
    for opts in [
        "1",
        "[]",
        "\"atomic\"",
        "{\"atomic\":\"yes\"}",
        "{\"dedupe\":1}",
        "{\"atomik\":true}",
        "{\"deadline_ms\":0}",
        "{\"deadline_ms\":-5}",
        "{\"deadline_ms\":1.5}",
        "{\"deadline_ms\":\"1s\"}",
        "{\"deadline_ms\":99999999999}",
        "{\"cascade\":true}",
        "{\"stop_on_error\":null}",
        "{\"skip_existing\":[]}",
        "{\"extra\":{}}",
    ] {
        rej(&format!(
            r#""collection":"words","op":"create","items":[{{"text":"a"}}],"options":{opts}"#
        ));
    }
    rej(r#""collection":"words","op":"lookup","items":[{"key":"a"}],"options":{"atomic":true}"#);
    rej(
        r#""collection":"words","op":"delete","items":[{"key":"a"}],"options":{"skip_existing":true}"#,
    );
    // Unknown top-level fields.
    for f in ["\"Request_id\"", "\"item\"", "\"opts\"", "\"version\""] {
        rej(&format!(
            r#""collection":"words","op":"create","items":[{{"text":"a"}}],{f}:1"#
        ));
    }
    // Too many items for the op, and atomic requests too large for one transaction.
    for op in ["create", "update", "upsert", "delete", "lookup"] {
        let items = [r#"{"key":"k","text":"k","set":{"a":1}}"#; 6].join(",");
        rej(&format!(
            r#""collection":"words","op":"{op}","items":[{items}]"#
        ));
    }
    let four = [r#"{"text":"k"}"#; 4].join(",");
    rej(&format!(
        r#""collection":"words","op":"create","items":[{four}],"options":{{"atomic":true}}"#
    ));
    // Oversize records (request_id readable → rejected; without one → dead letter).
    for size in [4097, 5000, 10_000, 15_000] {
        rej(&format!(
            r#""collection":"words","op":"create","items":[{{"text":"{}"}}]"#,
            "x".repeat(size)
        ));
    }
    // Excessive nesting.
    for depth in [9, 12, 40, 127, 300] {
        let nest = format!("{}0{}", "[".repeat(depth), "]".repeat(depth));
        rej(&format!(
            r#""collection":"words","op":"create","items":[{{"text":"a","n":{nest}}}]"#
        ));
    }
    // Repeated member names in the envelope and options are rejected, not resolved (serde_json
    // alone keeps the last one: the first of these ran a create).
    rej(r#""collection":"words","op":"delete","op":"create","items":[{"text":"a"}]"#);
    rej(r#""collection":"words","collection":"words","op":"create","items":[{"text":"a"}]"#);
    rej(r#""collection":"words","op":"create","items":[{"text":"a"}],"items":[{"text":"b"}]"#);
    rej(
        r#""collection":"words","op":"create","items":[{"text":"a"}],"options":{"dedupe":true,"dedupe":false}"#,
    );
    rej(
        r#""collection":"words","op":"create","items":[{"text":"a"}],"options":{"extra":{"a":1,"a":1}}"#,
    );
    // Several problems at once are all reported (one event).
    rej(r#""collection":"nope","op":"nope","items":[],"options":{"atomic":2},"zzz":0"#);
    let huge_no_id = format!(r#"{{"collection":"words","pad":"{}"}}"#, "y".repeat(5000));
    c.push((huge_no_id.into_bytes(), "dead"));
    c
}

#[test]
fn every_malformed_record_ends_as_one_rejection_or_dead_letter() {
    let corpus = corpus();
    assert!(corpus.len() >= 100, "corpus has {} records", corpus.len());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    {
        let mut f = std::fs::File::create(&input).unwrap();
        for (rec, _) in &corpus {
            f.write_all(rec).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }
    let cfg = write_config(dir.path(), CONFIG);
    let (out, dlq, state) = (
        dir.path().join("out.jsonl"),
        dir.path().join("dlq.jsonl"),
        dir.path().join("s.db"),
    );
    run_ok(&run_args(&cfg, &input, &out, Some(&dlq), &state));
    let events = read_lines(&out);
    let letters = read_lines(&dlq);
    assert!(
        events.iter().all(|e| e["event"] == "rejected"),
        "only rejections: {:?}",
        events.iter().find(|e| e["event"] != "rejected")
    );
    let mut outcome = vec![""; corpus.len()];
    for e in &events {
        let line = e["source"]["offset"].as_u64().unwrap() as usize;
        assert_eq!(outcome[line], "", "line {line} has two outcomes");
        outcome[line] = "rejected";
        let errors = e["errors"].as_array().unwrap();
        assert!(!errors.is_empty());
        for err in errors {
            assert!(
                err["code"].is_string() && err["message"].is_string() && err["path"].is_string(),
                "{err}"
            );
        }
    }
    for l in &letters {
        let line = l["source"]["offset"].as_u64().unwrap() as usize;
        assert_eq!(outcome[line], "", "line {line} has two outcomes");
        outcome[line] = "dead";
        let original = match (&l["original"], &l["original_base64"]) {
            (serde_json::Value::String(s), _) => s.as_bytes().to_vec(),
            (_, serde_json::Value::String(b)) => base64_decode(b),
            _ => panic!("dead letter without the original bytes: {l}"),
        };
        assert_eq!(
            original, corpus[line].0,
            "dead letters carry the original bytes unchanged"
        );
        assert!(l["error"]["code"].is_string() && l["error"]["message"].is_string());
    }
    for (i, ((rec, expected), got)) in corpus.iter().zip(&outcome).enumerate() {
        assert_eq!(got, expected, "line {i}: {}", String::from_utf8_lossy(rec));
    }
    assert_eq!(
        count_docs(&state, "words"),
        0,
        "nothing invalid reaches the store"
    );
}

/// Items that break the document model fail alone, with a code and a JSON Pointer, and never
/// reach the store; their neighbours are applied.
#[test]
fn items_breaking_the_document_model_fail_alone_with_a_path() {
    type Outcome = Option<(&'static str, &'static str)>;
    let cases: &[(&str, &str, &[Outcome])] = &[
        (
            "create",
            r#"{"text":"a","m":{"$numberLong":"5"}},{"text":"ok1"}"#,
            &[Some(("invalid_item", "/items/0/m/$numberLong")), None],
        ),
        (
            "create",
            r#"{"text":"b","n":18446744073709551615}"#,
            &[Some(("invalid_item", "/items/0/n"))],
        ),
        (
            "create",
            r#"{"text":"c","l":[1e400]}"#,
            &[Some(("invalid_item", "/items/0/l/0"))],
        ),
        (
            "create",
            r#"{"text":"d","s":"\ud800"}"#,
            &[Some(("invalid_item", "/items/0/s"))],
        ),
        (
            "create",
            r#"{"text":"e","a.b":1}"#,
            &[Some(("invalid_item", "/items/0/a.b"))],
        ),
        (
            "create",
            r#"{"text":"f","m":{"x":1,"x":2}}"#,
            &[Some(("duplicate_name", "/items/0/m/x"))],
        ),
        (
            "upsert",
            r#"{"text":"g","_id":1}"#,
            &[Some(("invalid_item", "/items/0/_id"))],
        ),
        (
            "update",
            r#"{"key":"ok1","set":{"m":{"a.b":1}}}"#,
            &[Some(("invalid_item", "/items/0/set/m/a.b"))],
        ),
        (
            "delete",
            r#"{"key":"ok1","key":"a"}"#,
            &[Some(("duplicate_name", "/items/0/key"))],
        ),
        ("create", r#"{"text":"h","n":-0,"f":1.0}"#, &[None]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.jsonl");
    {
        let mut f = std::fs::File::create(&input).unwrap();
        for (i, (op, items, _)) in cases.iter().enumerate() {
            writeln!(
                f,
                r#"{{"request_id":"m-{i}","collection":"words","op":"{op}","items":[{items}]}}"#
            )
            .unwrap();
        }
    }
    let cfg = write_config(dir.path(), CONFIG);
    let (out, state) = (dir.path().join("out.jsonl"), dir.path().join("s.db"));
    run_ok(&run_args(&cfg, &input, &out, None, &state));
    let events = read_lines(&out);
    for (i, (_, _, expected)) in cases.iter().enumerate() {
        let id = format!("m-{i}");
        let progress: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["request_id"] == id.as_str() && e["event"] == "progress")
            .collect();
        assert_eq!(progress.len(), 1, "{id}: {events:?}");
        let got: Vec<Option<(String, String)>> = progress[0]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| match item["status"].as_str().unwrap() {
                "ok" => None,
                _ => Some((
                    item["error"]["code"].as_str().unwrap().to_string(),
                    item["error"]["path"].as_str().unwrap().to_string(),
                )),
            })
            .collect();
        let expected: Vec<Option<(String, String)>> = expected
            .iter()
            .map(|o| o.map(|(code, path)| (code.to_string(), path.to_string())))
            .collect();
        assert_eq!(got, expected, "{id}: {}", progress[0]);
        assert!(
            events
                .iter()
                .any(|e| e["request_id"] == id.as_str() && e["event"] == "completed"),
            "{id} completes"
        );
    }
    assert_eq!(count_docs(&state, "words"), 2, "only the valid documents");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("dead letters hold valid base64")
}
