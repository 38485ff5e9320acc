//! Benchmark (a cargo example, not a test): `GET /v1/requests/{id}` latency with 1,000,000
//! requests in the SQLite store. Prints percentiles as a Markdown table; checks only that every
//! answer is right. Runs the `sluice` binary beside it (`SLUICE_BIN` overrides):
//!
//! ```sh
//! cargo build --release && cargo run --release --example status_bench
//! ```
//!
//! The state file is made by `sluice run` (its schema), then filled in SQL: 999,000 completed
//! requests (one chunk each, terminal event kept, as a release leaves them) and 1,000 in
//! flight (10 chunks planned, 5 settled). The client is a bare TCP request per connection
//! (the listener serves one request per connection), so the time is the service's plus a
//! loopback connect.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

const TOKEN: &str = "bench-token-0123456789";

const COMPLETED: i64 = 999_000;
const IN_FLIGHT: i64 = 1_000;

/// The `sluice` binary: `SLUICE_BIN`, else the one built beside this example.
fn bin() -> std::path::PathBuf {
    std::env::var_os("SLUICE_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().expect("the example's path");
            let dir = exe.parent().and_then(|d| d.parent());
            dir.expect("target/<profile>/examples").join("sluice")
        },
        Into::into,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` every 100 ms until it holds; panics after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One GET on a fresh connection → (status code, elapsed).
fn timed_get(port: u16, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::with_capacity(2048);
    c.read_to_end(&mut out).unwrap();
    let took = started.elapsed();
    let code = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (code, took)
}

fn fill(state: &std::path::Path) {
    let c = rusqlite::Connection::open(state).unwrap();
    let started = Instant::now();
    let terminal = r#"'{"event":"completed","request_id":"bench-'||i||'","chunks":1,"counts":{"total":5,"ok":5,"skipped":0,"failed":0,"duplicate":0,"not_found":0,"not_attempted":0},"duration_ms":12,"source":{"topic":"sluice.requests","partition":'||(i%12)||',"offset":'||i||'}}'"#;
    let event = |i: &str, chunk: &str, chunks: &str| {
        format!(
            r#"'{{"request_id":"bench-'||{i}||'","chunk":'||{chunk}||',"chunks":{chunks},"items":[{{"index":0,"status":"ok"}},{{"index":1,"status":"ok"}},{{"index":2,"status":"ok"}},{{"index":3,"status":"ok"}},{{"index":4,"status":"ok"}}],"source":{{"topic":"sluice.requests","partition":'||({i}%12)||',"offset":'||{i}||'}}}}'"#
        )
    };
    c.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
         INSERT INTO requests (request_id, topic, partition, \"offset\", expires_at, claimed_at,
                               plan, terminal, collection, op)
           SELECT 'bench-' || i, 'sluice.requests', i % 12, i, 4102444800, 1796000000000 + i,
                  '[0,5]', {terminal}, 'words', 'create' FROM n;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
         INSERT INTO chunk_ledger (request_id, generation, chunk, event, expires_at)
           SELECT 'bench-' || i, 1796000000000 + i, 0, {done}, 4102444800 FROM n;
         WITH RECURSIVE n(i) AS (SELECT {COMPLETED} UNION ALL SELECT i + 1 FROM n WHERE i < {all})
         INSERT INTO requests (request_id, topic, partition, \"offset\", expires_at, claimed_at,
                               plan, collection, op)
           SELECT 'bench-' || i, 'sluice.requests', i % 12, i, {never}, 1796000000000 + i,
                  '[0,5,10,15,20,25,30,35,40,45,50]', 'words', 'create' FROM n;
         WITH RECURSIVE n(i) AS (SELECT {COMPLETED} UNION ALL SELECT i + 1 FROM n WHERE i < {all}),
                        c(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM c WHERE k < 4)
         INSERT INTO chunk_ledger (request_id, generation, chunk, event, expires_at)
           SELECT 'bench-' || i, 1796000000000 + i, k, {progress}, {never} FROM n, c;
         COMMIT;",
        last = COMPLETED - 1,
        all = COMPLETED + IN_FLIGHT - 1,
        never = i64::MAX,
        done = event("i", "0", "1"),
        progress = event("i", "k", "10"),
    ))
    .unwrap();
    let size = std::fs::metadata(state).unwrap().len();
    eprintln!(
        "filled {} requests in {:?} ({} MB)",
        COMPLETED + IN_FLIGHT,
        started.elapsed(),
        size >> 20
    );
}

fn percentiles(name: &str, mut t: Vec<Duration>) {
    t.sort();
    let p = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)].as_secs_f64() * 1e3;
    eprintln!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        t.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("sluice.toml");
    let config = format!(
        "[observability]\nlisten = \"127.0.0.1:{port}\"\n[status]\nenabled = true\n\
         token = \"{TOKEN}\"\n[collections.words]\nkey = \"text\"\n"
    );
    std::fs::write(&cfg, config).unwrap();
    let (input, state) = (dir.path().join("in.jsonl"), dir.path().join("s.db"));
    std::fs::write(&input, "").unwrap();
    let run = |follow: bool| {
        let mut c = Command::new(bin());
        c.arg("run");
        if follow {
            c.arg("--follow");
        }
        c.arg("--config").arg(&cfg).arg("--input").arg(&input);
        c.arg("--output").arg(dir.path().join("out.jsonl"));
        c.arg("--state").arg(&state);
        c.env("SLUICE_LOG", "warn").stdin(Stdio::null());
        c
    };
    assert!(
        run(false).status().unwrap().success(),
        "creating the state file"
    );
    fill(&state);
    let mut svc = run(true).spawn().unwrap();
    wait_for("/healthz", Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut rng = rand::rng();
    for _ in 0..2_000 {
        let i = rng.random_range(0..COMPLETED + IN_FLIGHT);
        assert_eq!(timed_get(port, &format!("/v1/requests/bench-{i}")).0, 200);
    }
    eprintln!("| query | n | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
    let sample =
        |n: usize, range: std::ops::Range<i64>, code: u16, rng: &mut rand::rngs::ThreadRng| {
            (0..n)
                .map(|_| {
                    let i = rng.random_range(range.clone());
                    let (c, t) = timed_get(port, &format!("/v1/requests/bench-{i}"));
                    assert_eq!(c, code);
                    t
                })
                .collect::<Vec<_>>()
        };
    percentiles(
        "completed request",
        sample(20_000, 0..COMPLETED, 200, &mut rng),
    );
    percentiles(
        "in-progress request (10 chunks, 5 done)",
        sample(5_000, COMPLETED..COMPLETED + IN_FLIGHT, 200, &mut rng),
    );
    percentiles(
        "unknown id (404)",
        sample(5_000, 2_000_000..3_000_000, 404, &mut rng),
    );
    let list: Vec<Duration> = (0..1_000)
        .map(|_| {
            let (c, t) = timed_get(port, "/v1/requests?state=in_progress&limit=100");
            assert_eq!(c, 200);
            t
        })
        .collect();
    percentiles("in-flight list, limit=100", list);
    let _ = svc.kill();
    let _ = svc.wait();
}
