//! SIGTERM: stop reading, finish (or, past the drain deadline, abandon) in-flight work, record
//! the position, exit 0 — and a restart finishes the input exactly once.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn workload(dir: &std::path::Path, n: usize, items: usize) -> std::path::PathBuf {
    let input = dir.join("requests.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for r in 0..n {
        let items: Vec<_> = (0..items)
            .map(|j| serde_json::json!({"text": format!("s{r}-{j}")}))
            .collect();
        let rec = serde_json::json!({"request_id": format!("r-{r}"), "collection": "words", "op": "create", "items": items});
        serde_json::to_writer(&mut f, &rec).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
    input
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

/// Starts a run, sends SIGTERM once output appears, and returns how the process exited.
fn run_and_terminate(args: &[String], out: &std::path::Path) -> std::process::ExitStatus {
    let mut child = sluice()
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::metadata(out).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no output appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    sigterm(child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn scenario(drain_deadline_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let input = workload(dir.path(), 1500, 40);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[chunk]\nmax_items = 5\n[pipeline]\ndrain_deadline_ms = {drain_deadline_ms}\ncommit_max_records = 10\n[collections.words]\nkey = \"text\"\n"
        ),
    );
    let (out, state) = (dir.path().join("out.jsonl"), dir.path().join("s.db"));
    let args = run_args(&cfg, &input, &out, None, &state);
    let status = run_and_terminate(&args, &out);
    assert!(status.success(), "SIGTERM must end in exit 0, got {status}");
    let partial = read_lines(&out);
    // Requests unfinished at the stop keep the progress events they published (each once);
    // the next run goes on from there.
    let done = check_once_so_far(&partial);
    assert!(
        done.len() < 1500,
        "the shutdown should have interrupted the run"
    );

    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Across both runs: every progress event once, in order, and one terminal event each.
    let all = check_once(&read_lines(&out));
    assert_eq!(all.len(), 1500);
    assert!(
        all.values().all(|e| e["counts"]["ok"] == 40),
        "every create applied exactly once"
    );
    assert_eq!(count_docs(&state, "words"), 1500 * 40);
}

#[test]
fn sigterm_drains_in_flight_work_and_exits_0() {
    scenario(30_000);
}

#[test]
fn past_the_drain_deadline_unfinished_records_are_left_for_the_next_run() {
    scenario(1);
}
