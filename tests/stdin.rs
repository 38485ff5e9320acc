//! `producer | sluice run …`: stdin cannot be repositioned nor told apart from another
//! stream, so it is never resumed — every run reads its whole stream and appends its events.
//! (It used to skip as many lines as an earlier run had committed, silently, exit 0.)

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

/// `sluice run` with `input` on stdin; asserts exit 0.
fn run_stdin(args: &[String], input: &str) {
    let mut child = sluice()
        .current_dir(root())
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sluice run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_stdin_run_reads_its_whole_stream_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[collections.words]\nkey = \"text\"\n");
    let (out, state) = (dir.path().join("out.jsonl"), dir.path().join("state.db"));
    let args = vec![
        "--config".to_string(),
        cfg.display().to_string(),
        "--input".into(),
        "-".into(),
        "--output".into(),
        out.display().to_string(),
        "--state".into(),
        state.display().to_string(),
    ];
    let create = json!({"request_id": "c1", "collection": "words", "op": "create",
        "items": [{"text": "a"}, {"text": "b"}]});
    run_stdin(&args, &format!("{create}\n"));
    // A second stream through the same state: its first line is not "already done".
    let lookup = json!({"request_id": "l1", "collection": "words", "op": "lookup",
        "items": [{"key": "a"}]});
    run_stdin(&args, &format!("{lookup}\n"));
    let events = read_lines(&out);
    check_once(&events);
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "completed")
        .collect();
    assert_eq!(done.len(), 2, "both runs' requests completed: {events:?}");
    assert_eq!(done[1]["request_id"], "l1");
    assert_eq!(done[1]["counts"]["ok"], 1);
    assert!(
        events.iter().all(|e| e["source"]["topic"] == "stdin"),
        "source.topic names stdin: {events:?}"
    );
    assert_eq!(count_docs(&state, "words"), 2);
}
