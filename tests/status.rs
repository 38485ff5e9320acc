//! The status API, the progress stream and `sluice status` on the embedded default: a
//! `sluice run --follow` writes its SQLite state file while the listener (and the CLI, as a
//! separate process) answer from it.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::{wait_for, Sluice};
use common::kafka::metrics_text;
use common::status::*;
use common::*;
use serde_json::Value;

/// A series' value on `/metrics` (`series` with its labels, as exported).
fn series(port: u16, series: &str) -> Option<f64> {
    metrics_text(port).lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The output lines (exact text) of `request_id`, once its terminal event is there.
fn output_of(dir: &std::path::Path, request_id: &str) -> Vec<String> {
    let mut lines = Vec::new();
    wait_for(
        "the terminal event in the output",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
            // The first record with this id (a later one is its duplicate).
            let mut first = None;
            lines = text
                .lines()
                .filter(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    v["request_id"] == request_id
                        && *first.get_or_insert_with(|| v["source"].clone()) == v["source"]
                })
                .map(str::to_string)
                .collect();
            lines
                .last()
                .is_some_and(|l| !l.contains("\"event\":\"progress\""))
        },
    );
    lines
}

fn words(id: &str, n: usize) -> String {
    let items: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"text": format!("{id}-{i}")}))
        .collect();
    serde_json::json!({"request_id": id, "collection": "words", "op": "create", "items": items})
        .to_string()
}

#[test]
fn http_and_cli_say_what_became_of_a_request_while_sluice_run_writes_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}[chunk]\nmax_items = 2\n", section(4));
    let mut s = Sluice::start_with(dir.path(), "", &extra);
    let port = s.port;
    s.send(&words("r-10", 20)); // 10 chunks
    let (events, _) = stream_to_end(port, "r-10", Duration::from_secs(60));
    assert_eq!(check_sequence(&events), 10);
    let out = output_of(dir.path(), "r-10");
    let streamed: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(streamed, out, "the stream carries the output's bytes");

    // A client that saw event 4 resumes with the 5th; an id of another generation starts over.
    let within = Duration::from_secs(30);
    let (resumed, _) = stream_after(port, "r-10", Some(&events[4].id), within);
    assert_eq!(resumed, events[5..]);
    let (again, _) = stream_after(port, "r-10", Some("17:3"), within);
    assert_eq!(again, events);
    let mut past_end = ureq::get(format!("http://127.0.0.1:{port}/v1/requests/r-10/stream"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Last-Event-ID", events.last().unwrap().id.clone())
        .call()
        .unwrap();
    let body = past_end.body_mut().read_to_string().unwrap();
    assert!(
        !body.contains("data:"),
        "nothing after the terminal event: {body}"
    );

    let (code, body) = get(port, "/v1/requests/r-10");
    assert_eq!(code, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["state"], "completed");
    assert_eq!(
        (st["collection"].as_str(), st["op"].as_str()),
        (Some("words"), Some("create"))
    );
    assert_eq!(st["chunks"], serde_json::json!({"planned": 10, "done": 10}));
    assert_eq!(st["counts"]["ok"], 20);
    assert_eq!(st["source"]["offset"], 0);
    assert!(
        st["expires_at"].as_i64().unwrap() > (sluice_now() / 1000),
        "{st}"
    );
    let terminal = &body[body.find("\"terminal\":").unwrap() + 11..body.len() - 1];
    assert_eq!(terminal, out.last().unwrap(), "terminal event as published");
    let (code, body) = get(port, "/v1/requests/r-10/events");
    assert_eq!(code, 200);
    assert_eq!(
        body,
        out.join("\n") + "\n",
        "events: the output's bytes, in order"
    );

    // A second record with the same id is its duplicate: the status shows the original's.
    s.send(&words("r-10", 1));
    // A rejected request claims nothing: unknown, said honestly.
    s.send(r#"{"request_id":"rej-1","collection":"nope","op":"create","items":[{"text":"x"}]}"#);
    s.send(&words("after", 1));
    output_of(dir.path(), "after");
    let st: Value = serde_json::from_str(&get(port, "/v1/requests/r-10").1).unwrap();
    assert_eq!(
        (st["state"].as_str(), st["source"]["offset"].as_i64()),
        (Some("completed"), Some(0))
    );
    let (code, body) = get(port, "/v1/requests/rej-1");
    assert_eq!(code, 404);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["state"], "unknown");
    assert!(st["note"].as_str().unwrap().contains("rejected"));
    assert_eq!(get(port, "/v1/requests/never-seen").0, 404);
    assert_eq!(get(port, "/v1/requests/never-seen/stream").0, 404);
    assert_eq!(get(port, "/v1/requests/never-seen/events").0, 404);

    // Malformed ids: 400, before any store read.
    let long = "x".repeat(129);
    for bad in ["a%20b", "%C3%A9t%C3%A9", "a'%3B--", "a%2Fb", long.as_str()] {
        for tail in ["", "/events", "/stream"] {
            let (code, body) = get(port, &format!("/v1/requests/{bad}{tail}"));
            assert_eq!(code, 400, "{bad}{tail}: {body}");
        }
    }
    // No token, a wrong one: 401, for the data and the list; probes and metrics stay open.
    for path in [
        "/v1/requests/r-10",
        "/v1/requests/r-10/events",
        "/v1/requests/r-10/stream",
        "/v1/requests?state=in_progress",
    ] {
        assert_eq!(get_with(port, path, None).0, 401, "{path}");
        assert_eq!(
            get_with(port, path, Some("test-token-0123456780")).0,
            401,
            "{path}"
        );
    }
    assert_eq!(get_with(port, "/healthz", None).0, 200);
    assert_eq!(get_with(port, "/metrics", None).0, 200);
    let page = get_with(port, "/", None);
    assert!(
        page.0 == 200 && page.1.contains("Requests in flight"),
        "the page shell needs no token"
    );
    assert!(
        series(
            port,
            "sluice_status_requests_total{endpoint=\"status\",outcome=\"unauthorized\"}"
        ) >= Some(2.0)
    );
    assert!(
        series(
            port,
            "sluice_status_requests_total{endpoint=\"status\",outcome=\"bad_request\"}"
        ) >= Some(5.0)
    );

    let (code, body) = get(port, "/v1/requests?state=in_progress");
    assert_eq!((code, body.as_str()), (200, "{\"requests\":[]}"));
    for q in [
        "state=completed",
        "state=in_progress&limit=0",
        "state=in_progress&after=x",
        "limit=3",
    ] {
        assert_eq!(get(port, &format!("/v1/requests?{q}")).0, 400, "{q}");
    }

    // `sluice status`, a separate process reading the file `sluice run` writes.
    let cfg = dir.path().join("sluice.toml");
    let state = dir.path().join("s.db");
    let status = |extra: &[&str]| -> String {
        let mut args = vec![
            "-c",
            cfg.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "r-10",
        ];
        args.extend_from_slice(extra);
        String::from_utf8(sluice_ok("status", &args).stdout).unwrap()
    };
    let summary = status(&[]);
    assert!(summary.contains("state       completed"), "{summary}");
    assert!(
        summary.contains("owner       in.jsonl partition 0 offset 0"),
        "{summary}"
    );
    assert!(summary.contains("chunks      10 of 10 done"), "{summary}");
    assert_eq!(status(&["--events"]), out.join("\n") + "\n");
    assert_eq!(
        status(&["--watch"]),
        out.join("\n") + "\n",
        "--watch ends at the terminal event"
    );
    let json: Value = serde_json::from_str(&status(&["--json"])).unwrap();
    assert_eq!(json["state"], "completed");
    s.finish();
}

fn sluice_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A stream request on a raw connection that is never read.
fn unread_stream(port: u16, id: &str) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET /v1/requests/{id}/stream HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    c
}

/// An unfinished claim with 200 of its 201 chunks settled, written into the state file as an
/// instance that died mid-request would leave it: 200 events of 200 KB.
fn plant_unfinished_claim(state: &std::path::Path, id: &str) {
    let c = rusqlite::Connection::open(state).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    let plan: Vec<usize> = (0..=201).collect();
    c.execute(
        "INSERT INTO requests (request_id, topic, partition, \"offset\", expires_at, claimed_at, plan, collection, op)
         VALUES (?1, 'elsewhere', 0, 9, ?2, 1000, ?3, 'words', 'create')",
        rusqlite::params![id, i64::MAX, serde_json::to_string(&plan).unwrap()],
    )
    .unwrap();
    let big = "x".repeat(200 * 1024);
    for chunk in 0..200 {
        let event = serde_json::json!({"request_id": id, "chunk": chunk, "chunks": 201,
            "items": [{"index": chunk, "status": "ok", "doc": {"text": big}}],
            "source": {"topic": "elsewhere", "partition": 0, "offset": 9}});
        c.execute(
            "INSERT INTO chunk_ledger (request_id, generation, chunk, event, expires_at) VALUES (?1, 1000, ?2, ?3, ?4)",
            rusqlite::params![id, chunk, event.to_string(), i64::MAX],
        )
        .unwrap();
    }
}

#[test]
fn streams_are_capped_and_readers_that_stop_reading_are_dropped_while_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let observability = "http_connection_timeout_ms = 120000\n";
    let extra = format!("{}send_timeout_ms = 1000\n", section(2));
    let mut s = Sluice::start_with(dir.path(), observability, &extra);
    let port = s.port;
    plant_unfinished_claim(&dir.path().join("s.db"), "held");
    let (code, body) = get(port, "/v1/requests?state=in_progress&limit=10");
    assert_eq!(code, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["requests"][0]["request_id"], "held", "{page}");
    assert_eq!(
        page["requests"][0]["chunks"],
        serde_json::json!({"planned": 201, "done": 200})
    );
    let cli = sluice_ok(
        "status",
        &[
            "-c",
            dir.path().join("sluice.toml").to_str().unwrap(),
            "--state",
            dir.path().join("s.db").to_str().unwrap(),
            "held",
        ],
    );
    let summary = String::from_utf8(cli.stdout).unwrap();
    assert!(
        summary.contains("state       in_progress") && summary.contains("200 of 201 done"),
        "{summary}"
    );

    let before = rss_kib(s.child.id());
    let _a = unread_stream(port, "held");
    let _b = unread_stream(port, "held");
    wait_for("two open streams", Duration::from_secs(20), || {
        series(port, "sluice_status_streams_open") == Some(2.0)
    });
    assert_eq!(
        get(port, "/v1/requests/held/stream").0,
        503,
        "max_streams = 2"
    );
    // Meanwhile the pipeline finishes requests.
    for i in 0..5 {
        s.send(&words(&format!("go-{i}"), 4));
    }
    for i in 0..5 {
        output_of(dir.path(), &format!("go-{i}"));
    }
    wait_for(
        "both unread streams dropped",
        Duration::from_secs(60),
        || {
            series(
                port,
                "sluice_status_streams_dropped_total{reason=\"slow_reader\"}",
            ) == Some(2.0)
        },
    );
    assert_eq!(series(port, "sluice_status_streams_open"), Some(0.0));
    let grown = rss_kib(s.child.id()).saturating_sub(before);
    // 40 MB of events were offered to each reader: buffering them would show.
    assert!(
        grown < 30 * 1024,
        "memory grew by {grown} KiB for two unread streams"
    );
    // Their slots are free again: a reader that reads gets the events so far.
    // Their slots are free again: a reader past the 200 events it has waits for the rest.
    let reader = std::thread::spawn(move || {
        stream_after(port, "held", Some("1000:199"), Duration::from_secs(60)).0
    });
    wait_for("the reader's stream", Duration::from_secs(20), || {
        series(port, "sluice_status_streams_open") == Some(1.0)
    });
    // The last chunk settles and the request is released, as the service would write them.
    let c = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    let last = r#"{"request_id":"held","chunk":200,"chunks":201,"items":[{"index":200,"status":"ok"}],"source":{"topic":"elsewhere","partition":0,"offset":9}}"#;
    let terminal = r#"{"event":"completed","request_id":"held","chunks":201,"counts":{"total":201,"ok":201,"skipped":0,"failed":0,"duplicate":0,"not_found":0,"not_attempted":0},"duration_ms":1,"source":{"topic":"elsewhere","partition":0,"offset":9}}"#;
    let settled = Instant::now();
    c.execute_batch(&format!(
        "BEGIN; INSERT INTO chunk_ledger VALUES ('held', 1000, 200, '{last}', 4102444800);
         UPDATE requests SET terminal = '{terminal}', expires_at = 4102444800 WHERE request_id = 'held';
         COMMIT;"
    ))
    .unwrap();
    let got = reader.join().unwrap();
    let took = settled.elapsed();
    assert_eq!(
        got.len(),
        2,
        "the last chunk and the terminal event: {got:?}"
    );
    assert_eq!(
        got[0].data,
        format!("{{\"event\":\"progress\",{}", &last[1..])
    );
    assert_eq!(got[1].data, terminal);
    // "Within ~1 s of the chunk's commit" (polling every 200 ms), generous for a busy machine.
    assert!(took < Duration::from_secs(3), "the stream took {took:?}");
    s.finish();
}
