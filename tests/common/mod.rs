//! Helpers shared by the end-to-end tests: run the `sluice` binary, read its JSON-lines output.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The chaos harness: a fleet of instances under random faults, and the checks.
pub mod chaos;
/// A `sluice run --follow` with its HTTP listener, and HTTP helpers.
pub mod http;
/// Kafka helpers (only the Kafka test binaries use them).
pub mod kafka;
/// Stopping the services a test started, and killing them when it fails.
pub mod process;
/// Services a test runs for itself (broker, SecantusDB) and the MongoDB test settings.
pub mod services;
/// The status API: its config section, authorized GETs, an SSE client.
pub mod status;

/// The `sluice` binary built for these tests.
pub fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env("SLUICE_LOG", "warn");
    c
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of one embedded run: `--config C --input I --output O [--dead-letters D]
/// --state S`. Relative paths are from the repository root, where [`run_ok`] runs.
pub fn run_args(
    config: &Path,
    input: &Path,
    output: &Path,
    dead_letters: Option<&Path>,
    state: &Path,
) -> Vec<String> {
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        output.display().to_string(),
    ];
    if let Some(d) = dead_letters {
        args.extend(["--dead-letters".into(), d.display().to_string()]);
    }
    args.extend(["--state".into(), state.display().to_string()]);
    args
}

/// Runs `sluice run` with `args` and asserts it exits 0.
pub fn run_ok<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Output {
    sluice_ok("run", args)
}

/// Runs `sluice SUBCOMMAND ARGS` from the repository root and asserts it exits 0.
pub fn sluice_ok<S: AsRef<OsStr> + std::fmt::Debug>(subcommand: &str, args: &[S]) -> Output {
    let out = sluice()
        .current_dir(root())
        .arg(subcommand)
        .args(args)
        .output()
        .expect("sluice runs");
    assert!(
        out.status.success(),
        "sluice {subcommand} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Parses a JSON-lines file (every line must be valid JSON).
pub fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {l}", path.display(), i + 1))
        })
        .collect()
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("sluice.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// Checks the exactly-once shape of an output: every request record has exactly one terminal
/// event, every (request, chunk) progress event appears once, in chunk order, before the
/// terminal one. Returns the terminal event of each record, keyed
/// `request_id@partition:offset` (a duplicate request shares its request_id with the
/// original, not its position).
pub fn check_once(events: &[Value]) -> BTreeMap<String, Value> {
    check_events(events, false)
}

/// [`check_once`] for an output a stop may have cut in the middle of requests: their
/// progress events (each once, in order) may lack their terminal event.
pub fn check_once_so_far(events: &[Value]) -> BTreeMap<String, Value> {
    check_events(events, true)
}

fn check_events(events: &[Value], unfinished_ok: bool) -> BTreeMap<String, Value> {
    let mut terminal: BTreeMap<String, Value> = BTreeMap::new();
    let mut next_chunk: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let id = format!(
            "{}@{}:{}",
            e["request_id"].as_str().expect("request_id"),
            e["source"]["partition"],
            e["source"]["offset"]
        );
        assert!(
            !terminal.contains_key(&id),
            "event after the terminal event of {id}: {e}"
        );
        match e["event"].as_str().unwrap() {
            "progress" => {
                let expected = next_chunk.entry(id.clone()).or_insert(0);
                assert_eq!(
                    e["chunk"].as_u64().unwrap(),
                    *expected,
                    "chunk order / duplicate progress for {id}"
                );
                *expected += 1;
            }
            "completed" => {
                let seen = next_chunk.get(&id).copied().unwrap_or(0);
                assert_eq!(
                    e["chunks"].as_u64().unwrap(),
                    seen,
                    "{id} completed without all its progress events"
                );
                terminal.insert(id, e.clone());
            }
            "rejected" | "duplicate" => {
                assert!(
                    !next_chunk.contains_key(&id),
                    "{id} has progress events and a {} event",
                    e["event"]
                );
                terminal.insert(id, e.clone());
            }
            other => panic!("unknown event {other}"),
        }
    }
    for id in next_chunk.keys() {
        assert!(
            unfinished_ok || terminal.contains_key(id),
            "{id} has progress events but no terminal event"
        );
    }
    terminal
}

/// Counts rows of a collection in the embedded SQLite state.
pub fn count_docs(state: &Path, collection: &str) -> i64 {
    let conn = rusqlite::Connection::open(state).unwrap();
    conn.query_row(
        &format!("SELECT count(*) FROM \"doc_{collection}\""),
        [],
        |r| r.get(0),
    )
    .unwrap()
}
