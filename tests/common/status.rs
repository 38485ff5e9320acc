//! Status API helpers: the `[status]` section, authorized GETs, and a Server-Sent Events
//! client that reconnects with `Last-Event-ID` as a browser's `EventSource` does.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

/// The bearer token of the tests' `[status]` sections.
pub const TOKEN: &str = "test-token-0123456789";

/// A `[status]` section with [`TOKEN`], at most `max_streams` streams.
pub fn section(max_streams: usize) -> String {
    format!(
        "[status]\nenabled = true\ntoken = \"{TOKEN}\"\nmax_streams = {max_streams}\npoll_interval_ms = 200\n"
    )
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// GET `path` on `port` with `token` (`None`: no Authorization header) → (status, body).
pub fn get_with(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = agent(Duration::from_secs(30)).get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.call().expect("the listener answers");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// GET `path` with the tests' token.
pub fn get(port: u16, path: &str) -> (u16, String) {
    get_with(port, path, Some(TOKEN))
}

/// One SSE event: its `id` and `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: String,
    pub data: String,
}

/// Reads `/v1/requests/{id}/stream` on `port` until the terminal event, reconnecting with
/// `Last-Event-ID` whenever the connection ends (the listener's connection timeout) and
/// waiting while the id is not claimed yet (404). Returns every event received and the
/// number of connections it took.
pub fn stream_to_end(port: u16, id: &str, within: Duration) -> (Vec<SseEvent>, usize) {
    stream_after(port, id, None, within)
}

/// [`stream_to_end`] for a client that has seen the event `after` (`Last-Event-ID` from the
/// first connection on).
pub fn stream_after(
    port: u16,
    id: &str,
    after: Option<&str>,
    within: Duration,
) -> (Vec<SseEvent>, usize) {
    let deadline = Instant::now() + within;
    let mut got: Vec<SseEvent> = Vec::new();
    let mut connections = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no terminal event for {id} within {within:?}; got {got:?}"
        );
        let mut req = agent(within).get(format!("http://127.0.0.1:{port}/v1/requests/{id}/stream"));
        req = req.header("Authorization", format!("Bearer {TOKEN}"));
        if let Some(last) = got.last().map(|e| e.id.as_str()).or(after) {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let Ok(mut resp) = req.call() else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if resp.status() == 404 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert_eq!(resp.status(), 200, "stream of {id}");
        connections += 1;
        let reader = BufReader::new(resp.body_mut().as_reader());
        let (mut ev_id, mut data) = (String::new(), None::<String>);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if let Some(d) = data.take() {
                    let terminal = !d.contains("\"event\":\"progress\"");
                    got.push(SseEvent {
                        id: std::mem::take(&mut ev_id),
                        data: d,
                    });
                    if terminal {
                        return (got, connections);
                    }
                }
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(d.to_string());
            } else if let Some(i) = line.strip_prefix("id: ") {
                ev_id = i.to_string();
            }
        }
    }
}

/// Checks a stream's events: progress events for chunks 0..n in order, once each, then
/// one terminal event; returns n.
pub fn check_sequence(events: &[SseEvent]) -> usize {
    let values: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let (last, progress) = values.split_last().expect("at least the terminal event");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["event"], "progress", "{events:?}");
        assert_eq!(p["chunk"], i, "chunk order, no gap, no repeat: {events:?}");
    }
    assert_ne!(last["event"], "progress");
    if last["event"] == "completed" {
        assert_eq!(last["chunks"], progress.len());
    }
    progress.len()
}
