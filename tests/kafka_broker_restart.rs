//! The broker goes away mid-run and comes back: the service waits, recovers by itself and
//! loses nothing. Runs its own broker (scripts/kafka.sh on a free port) so that stopping it
//! does not disturb the other Kafka tests.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::kafka::*;
use common::*;

fn kafka_sh(args: &[&str]) {
    let out = Command::new("bash")
        .arg(root().join("scripts/kafka.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port whose successor (the controller port) is free too.
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

struct Broker(String);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/kafka.sh"))
            .args(["stop", &self.0])
            .output();
    }
}

#[test]
fn broker_restart_mid_run_loses_nothing() {
    if broker().is_none() {
        return; // same switch as the other Kafka tests: CI sets it
    }
    let port = free_port_pair().to_string();
    kafka_sh(&["start", &port]);
    let _broker = Broker(port.clone());
    let env = setup_with(format!("127.0.0.1:{port}"), "restart", 3, "").unwrap();
    let w = crash_workload(2000, 3);
    let svc = env.service("a");
    std::thread::scope(|scope| {
        scope.spawn(|| env.produce_over(&w.records[..w.records.len() / 2], Duration::from_secs(6)));
        std::thread::sleep(Duration::from_secs(7));
        kafka_sh(&["stop", &port]);
        std::thread::sleep(Duration::from_secs(5));
        kafka_sh(&["resume", &port]);
    });
    env.produce_over(&w.records[w.records.len() / 2..], Duration::from_secs(4));
    let events = env.results(w.total, Duration::from_secs(120));
    stop(svc);
    check_crash_workload(&env, &events, &w);
}
