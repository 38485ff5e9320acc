//! The metrics and health listener keeps answering its liveness probe whatever other clients
//! do: hundreds of slowloris clients and thousands of idle connections are cut off after the
//! header timeout, the connection cap bounds the process's file descriptors, and `/healthz`
//! answers throughout. Bounded loops against 127.0.0.1, no services needed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::*;

/// `[observability]` limits of the test: a short header timeout keeps the test short.
const LIMITS: &str =
    "http_header_timeout_ms = 1000\nhttp_connection_timeout_ms = 5000\nhttp_max_connections = 32\n";
/// How long any probe may take, and how long after the header timeout a connection may stay.
const PROBE_BOUND: Duration = Duration::from_secs(3);
const CLOSED_BOUND: Duration = Duration::from_secs(8);
/// The header timeout (1 s) and some scheduling slack.
const HEADER_TIMEOUT_BOUND: Duration = Duration::from_millis(2500);

fn connect(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    Some(s)
}

/// One raw request → the status code (`None`: no answer within the bound).
fn status(port: u16, request: &str) -> Option<u16> {
    let mut s = connect(port)?;
    s.set_read_timeout(Some(PROBE_BOUND)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn probe(port: u16) -> Option<u16> {
    status(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// Whether the server closed `s` (EOF or reset), without waiting longer than the read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408/503 before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn slow_and_idle_clients_cannot_silence_the_health_probe() {
    let dir = tempfile::tempdir().unwrap();
    let s = Sluice::start_with(dir.path(), LIMITS, "");
    let port = s.port;
    let baseline_fds = open_fds(s.child.id());

    // Below the cap, the header timeout alone cuts slow and idle clients off.
    let mut few: Vec<TcpStream> = (0..10).map(|_| connect(port).unwrap()).collect();
    for c in few.iter_mut().take(5) {
        c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    }
    let started = Instant::now();
    while !few.is_empty() {
        assert!(
            started.elapsed() < HEADER_TIMEOUT_BOUND,
            "{} connections outlived the 1 s header timeout",
            few.len()
        );
        few.retain_mut(|c| {
            let _ = c.write_all(b"X-Slow: 1\r\n");
            !closed(c)
        });
    }

    // 300 slowloris clients (a header line every 200 ms, never the end of the head) and 2000
    // idle connections that send nothing.
    let mut slow: Vec<TcpStream> = (0..300).filter_map(|_| connect(port)).collect();
    for c in slow.iter_mut() {
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    }
    let mut idle: Vec<TcpStream> = (0..2000).filter_map(|_| connect(port)).collect();
    assert_eq!(
        (slow.len(), idle.len()),
        (300, 2000),
        "every flooding client connected"
    );
    let opened = Instant::now();

    // Meanwhile the probe answers, every time, within its bound, and the listener holds at
    // most its cap of connections (plus what the process had before).
    let mut answered = 0;
    while opened.elapsed() < Duration::from_secs(4) {
        for c in slow.iter_mut() {
            let _ = c.write_all(b"X-Slow: 1\r\n");
        }
        assert_eq!(probe(port), Some(200), "/healthz answers during the flood");
        answered += 1;
        let fds = open_fds(s.child.id());
        assert!(
            fds <= baseline_fds + 32 + 8,
            "{fds} descriptors open (baseline {baseline_fds}, cap 32)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered >= 5);

    // Every slow and idle client is cut off after the header timeout.
    let deadline = Instant::now() + CLOSED_BOUND;
    while !slow.is_empty() || !idle.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} slow and {} idle connections still open {:?} after they opened",
            slow.len(),
            idle.len(),
            opened.elapsed()
        );
        slow.retain_mut(|c| {
            let _ = c.write_all(b"X-Slow: 1\r\n");
            !closed(c)
        });
        idle.retain_mut(|c| !closed(c));
    }

    // Oversized heads and other methods get their codes; the probe still answers.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(status(port, &huge), Some(431));
    assert_eq!(
        status(
            port,
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        ),
        Some(405)
    );
    assert_eq!(probe(port), Some(200));
    let (_, metrics) = s.get("/metrics").unwrap();
    let shed = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_http_connections_shed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(shed > 0.0, "shed connections are counted:\n{metrics}");
    s.finish();
}
