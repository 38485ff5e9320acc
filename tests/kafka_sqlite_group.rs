//! The SQLite store serves one instance: a second instance started with a store of its own
//! (another SQLite file, e.g. started without `[mongo]`) in the same consumer group would split
//! the documents with the first and lose the ledger whenever a partition moves. Both refuse to
//! process while the group has other members and say why on `/readyz` and in the log; once
//! the second is gone the first processes everything, exactly once. (The other Kafka tests run
//! their members on one shared file, `embedded.shared = true`.) Real broker
//! (`SLUICE_TEST_KAFKA`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::check_once;
use common::http::{free_port, get};
use common::kafka::*;

const WHY: &str = "the SQLite store serves one instance";

/// A member on the SQLite file `state`, not shared, with a listener on `port`.
fn alone_on(state: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("SLUICE__EMBEDDED__STATE", state.display().to_string()),
        ("SLUICE__EMBEDDED__SHARED", "false".to_string()),
        ("SLUICE__OBSERVABILITY__LISTEN", format!("127.0.0.1:{port}")),
        (
            "SLUICE__OBSERVABILITY__HEALTH_INTERVAL_MS",
            "300".to_string(),
        ),
        (
            "SLUICE__OBSERVABILITY__HEALTH_TIMEOUT_MS",
            "250".to_string(),
        ),
    ]
}

/// `/readyz` of the member on `port`: (status, body).
fn readyz(port: u16) -> (u16, String) {
    get(&format!("http://127.0.0.1:{port}/readyz"), &[]).unwrap_or((0, String::new()))
}

fn words_in(state: &Path) -> i64 {
    let conn = rusqlite::Connection::open(state).unwrap();
    conn.query_row("SELECT count(*) FROM \"doc_words\"", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn two_members_on_different_sqlite_files_refuse_to_process_and_say_why() {
    let env = setup("solo", 3, "");
    let dir = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let (port_a, port_b) = (free_port(), free_port());
    let reap = Reap::default();
    let a = env.service_with("a", &alone_on(&state_a, port_a));
    reap.add(&a);
    // Alone in its group, it processes.
    let first = crash_workload(60, 7);
    env.produce(&first.records);
    let events = env.results(first.total, Duration::from_secs(120));
    check_once(&events);
    assert_eq!(words_in(&state_a), first.remaining as i64);

    // A second instance on a file of its own joins the group: both refuse, and say why.
    let b = env.service_with("b", &alone_on(&state_b, port_b));
    reap.add(&b);
    let started = Instant::now();
    for port in [port_a, port_b] {
        loop {
            let (status, body) = readyz(port);
            if status == 503 && body.contains(WHY) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "member on {port} does not report the split store: {status} {body}\n{}",
                env.logs_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for member in ["a", "b"] {
        assert!(
            env.log_text(member).contains("refusing to process"),
            "{member} logs it\n{}",
            env.logs_tail()
        );
    }
    let late: Vec<(Option<String>, Vec<u8>)> = (0..30)
        .map(|i| {
            let keys = (0..3).map(move |j| format!("late{i}-{j}"));
            (None, create(&format!("late-{i}"), keys))
        })
        .collect();
    env.produce(&late);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        env.terminal_now(),
        first.total,
        "nothing processed while the group has two members on different files"
    );
    assert_eq!(words_in(&state_b), 0, "the second file holds nothing");

    // The second one stops: the first processes everything, exactly once.
    stop(b);
    let events = env.results(first.total + late.len(), Duration::from_secs(120));
    let terminal = check_once(&events);
    assert_eq!(terminal.len(), first.total + late.len());
    assert_eq!(words_in(&state_a), (first.remaining + 90) as i64);
    assert_eq!(words_in(&state_b), 0);
    let (status, body) = readyz(port_a);
    assert!(!body.contains(WHY), "alone again: {status} {body}");
    stop(a);
}
