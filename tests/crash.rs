//! kill -9 at random moments, restart with the same arguments, repeat; at the end the output
//! holds every result event exactly once and the store holds every write exactly once.
//!
//! The workload makes a double application visible: a create applied twice reports `exists`,
//! a delete applied twice reports `not_found`, and a request re-executed instead of replayed
//! from the ledger would report those in its events.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const CONFIG: &str = r#"
[chunk]
max_items = 7
[pipeline]
max_in_flight_records = 64
channel_capacity = 16
commit_max_records = 25
commit_interval_ms = 50
[execute]
write_concurrency = 4
[collections.words]
key = "text"
"#;

// Large enough that a debug build needs several seconds of run time: since idle commits (issue 26)
// the 3,000-line job finished within four kills on CI.
const CREATES: usize = 6000;
const TOTAL: usize = 9000;

#[test]
fn kill_9_at_random_points_loses_nothing_and_doubles_nothing() {
    let seed: u64 = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed = {seed} (set SLUICE_TEST_SEED to reproduce)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // The workload: creates, then deletes of earlier creates (≥ 1000 lines apart, far beyond the
    // in-flight budget, so they apply after their creates), and a few duplicate request_ids.
    let sizes: Vec<usize> = (0..CREATES).map(|_| rng.random_range(1..=25)).collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.jsonl");
    let mut deleted = vec![false; CREATES];
    let mut duplicates = BTreeMap::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for line in 0..TOTAL {
            let rec = if line < CREATES {
                let items: Vec<_> = (0..sizes[line])
                    .map(|j| serde_json::json!({"text": format!("w{line}-{j}"), "n": j}))
                    .collect();
                serde_json::json!({"request_id": format!("c-{line}"), "collection": "words", "op": "create", "items": items})
            } else if line % 50 == 0 {
                let original = line - CREATES + 7;
                duplicates.insert(line, original);
                serde_json::json!({"request_id": format!("c-{original}"), "collection": "words", "op": "create", "items": [{"text": "never"}]})
            } else {
                let target = line - CREATES;
                deleted[target] = true;
                let items: Vec<_> = (0..sizes[target])
                    .map(|j| serde_json::json!({"key": format!("w{target}-{j}")}))
                    .collect();
                serde_json::json!({"request_id": format!("d-{line}"), "collection": "words", "op": "delete", "items": items})
            };
            serde_json::to_writer(&mut f, &rec).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }
    let cfg = write_config(dir.path(), CONFIG);
    let (out, state) = (dir.path().join("out.jsonl"), dir.path().join("state.db"));
    let args = run_args(&cfg, &input, &out, None, &state);

    let mut kills = 0;
    let mut last_len = 0;
    let started = Instant::now();
    while kills < 12 && started.elapsed() < Duration::from_secs(240) {
        let mut child = sluice()
            .arg("run")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(60..400)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before we could kill it
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if len > last_len {
            kills += 1; // a kill that interrupted a run that was making progress
        }
        last_len = len;
    }
    assert!(
        kills >= 5,
        "only {kills} kills landed mid-run; the test proves little"
    );
    eprintln!("{kills} kills mid-run; final run");
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let events = read_lines(&out);
    let terminal = check_once(&events);
    assert_eq!(
        terminal.len(),
        TOTAL,
        "every input line has exactly one terminal event"
    );
    for (line, &size) in sizes.iter().enumerate() {
        let e = &terminal[&format!("c-{line}@0:{line}")];
        assert_eq!(e["event"], "completed", "{e}");
        assert_eq!(
            e["counts"]["ok"], size,
            "create c-{line} applied once (a second run would say `exists`): {e}"
        );
    }
    for line in CREATES..TOTAL {
        if let Some(original) = duplicates.get(&line) {
            let e = &terminal[&format!("c-{original}@0:{line}")];
            assert_eq!(e["event"], "duplicate", "{e}");
            assert_eq!(e["original"]["offset"], *original as u64);
        } else {
            let e = &terminal[&format!("d-{line}@0:{line}")];
            assert_eq!(
                e["counts"]["ok"],
                sizes[line - CREATES],
                "delete d-{line} applied once: {e}"
            );
        }
    }
    let expected: usize = sizes
        .iter()
        .zip(&deleted)
        .filter(|(_, d)| !**d)
        .map(|(s, _)| s)
        .sum();
    assert_eq!(
        count_docs(&state, "words"),
        expected as i64,
        "the store holds every write once"
    );
}

/// One request of 5000 chunks, `kill -9` three times while it runs: what it published before
/// each kill stays committed (a unit never waits for a whole request; the position records
/// how many of its progress events are out), and the restarts go on from there — every
/// event once, every item applied once.
#[test]
fn a_long_request_commits_as_it_goes_and_resumes_after_kill_9() {
    long_request_killed("", Duration::ZERO);
}

/// Issue 24 §1: the same, with a dedupe window of 2 s and a restart 3 s after a kill — past
/// the window. The unfinished request's claim and ledger have not expired: the restart
/// replays its chunks instead of running it as a new request (whose creates would all say
/// `exists`), and its counts equal the progress events published.
#[test]
fn a_request_resumed_after_its_dedupe_window_is_still_the_same_request() {
    long_request_killed("[dedupe]\nwindow_secs = 2\n", Duration::from_secs(3));
}

/// One 10,000-item create request in 5,000 chunks, killed three times while it runs; the
/// restarts wait `pause` first.
fn long_request_killed(extra_config: &str, pause: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.jsonl");
    let items: Vec<_> = (0..10_000)
        .map(|j| serde_json::json!({"text": format!("long-{j}")}))
        .collect();
    let rec = serde_json::json!({"request_id": "long", "collection": "words", "op": "create", "items": items});
    std::fs::write(&input, format!("{rec}\n")).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "{extra_config}[chunk]\nmax_items = 2\n[pipeline]\ncommit_interval_ms = 50\n\
             [collections.words]\nkey = \"text\"\n"
        ),
    );
    let (out, state) = (dir.path().join("out.jsonl"), dir.path().join("state.db"));
    let args = run_args(&cfg, &input, &out, None, &state);
    let committed = || -> i64 {
        let conn = rusqlite::Connection::open(&state).unwrap();
        conn.query_row("SELECT published FROM checkpoints", [], |r| r.get(0))
            .unwrap_or(0)
    };
    let mut last = 0;
    for kill in 0..3 {
        let mut child = sluice()
            .arg("run")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it publish (and commit) a good number of events past the last checkpoint.
        let deadline = Instant::now() + Duration::from_secs(60);
        while committed() < last + 30 {
            assert!(
                Instant::now() < deadline,
                "kill {kill}: no progress committed"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the request finished too soon"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let now = committed();
        assert!(
            now > last && now < 5000,
            "kill {kill}: the unfinished request's events are committed ({last} → {now})"
        );
        last = now;
        std::thread::sleep(pause);
    }
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let events = read_lines(&out);
    let terminal = check_once(&events);
    let done = &terminal["long@0:0"];
    assert_eq!(
        done["counts"]["ok"], 10_000,
        "every item applied once: {done}"
    );
    assert_eq!(
        events.len(),
        5001,
        "5000 progress events and one terminal event"
    );
    let published_ok = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .flat_map(|e| e["items"].as_array().unwrap().iter())
        .filter(|i| i["status"] == "ok")
        .count();
    assert_eq!(
        published_ok, 10_000,
        "every published item is ok: none was applied twice"
    );
    assert_eq!(count_docs(&state, "words"), 10_000);
}
