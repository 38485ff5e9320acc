//! A store outage of minutes: the store (a SecantusDB of the test's own) is frozen (SIGSTOP:
//! connections stay open and go silent, the hardest kind of outage to notice) while requests
//! keep arriving. Nothing fails — no item is reported `failed`, no instance exits — nothing
//! is lost or doubled, the instances say not ready while it lasts, and everything is done
//! after it.
//!
//! CI freezes it for 30 s (longer than the chaos harness's 12 s outages, and than every
//! store timeout of the test config). The recorded run freezes it for five minutes, past
//! the Kafka transaction timeout (60 s) and the driver's idle connection limits:
//! `SLUICE_OUTAGE_SECS=300 scripts/test-all.sh --test store_outage -- --nocapture`.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::http::free_port;
use common::kafka::*;
use common::services::{mongo, mongo_section, OwnSecantus};
use serde_json::Value;

/// How long the store stays frozen (`SLUICE_OUTAGE_SECS`, 30 by default).
fn outage() -> Duration {
    let secs = std::env::var("SLUICE_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Bound on "every request finished" after the store is back (the backlog of the outage
/// drains at SecantusDB's pace on a shared 2-core machine).
const DONE_BOUND: Duration = Duration::from_secs(300);

/// `/readyz` of the member on `port`: `Some(true)` = 200, `Some(false)` = 503.
fn ready(port: u16) -> Option<bool> {
    common::http::get(&format!("http://127.0.0.1:{port}/readyz"), &[]).map(|(s, _)| s == 200)
}

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn a_store_outage_of_minutes_fails_nothing_loses_nothing_and_finishes_after() {
    mongo(); // SecantusDB is installed
    let store = OwnSecantus::start_in(27100..27200);
    let env = setup("outage", 3, &mongo_section(&store.uri));
    let outage = outage();
    let w = crash_workload(300, 25);
    let ports = [free_port(), free_port()];
    let mut members: Vec<Child> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            env.service_with(
                &format!("i{i}"),
                &[
                    ("SLUICE__OBSERVABILITY__LISTEN", format!("127.0.0.1:{port}")),
                    ("SLUICE__OBSERVABILITY__HEALTH_INTERVAL_MS", "500".into()),
                    ("SLUICE__OBSERVABILITY__HEALTH_TIMEOUT_MS", "500".into()),
                ],
            )
        })
        .collect();
    let third = w.records.len() / 3;
    let mut not_ready_after = None;
    let mut thawed = Instant::now();
    let mut during = 0;
    std::thread::scope(|scope| {
        // A third before the outage, the rest while it lasts.
        env.produce_over(&w.records[..third], Duration::from_secs(8));
        store.freeze(true);
        let frozen = Instant::now();
        scope.spawn(|| env.produce_over(&w.records[third..], outage.mul_f64(0.8)));
        // Truth: both members say not ready within 30 s of the outage's start.
        while ports.iter().any(|p| ready(*p) != Some(false)) {
            assert!(
                frozen.elapsed() < Duration::from_secs(30).min(outage),
                "members still ready {:?} into the outage",
                frozen.elapsed()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        not_ready_after = Some(frozen.elapsed());
        while frozen.elapsed() < outage {
            for (i, m) in members.iter_mut().enumerate() {
                assert!(
                    m.try_wait().unwrap().is_none(),
                    "member i{i} exited during the outage\n{}",
                    env.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        during = env.terminal_now();
        store.freeze(false);
        thawed = Instant::now();
    });
    let events = env.results(w.total, DONE_BOUND);
    let finished_after = thawed.elapsed();
    for (i, m) in members.iter_mut().enumerate() {
        assert!(m.try_wait().unwrap().is_none(), "member i{i} exited");
    }
    for m in members {
        stop(m);
    }
    check_crash_workload(&env, &events, &w);
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["counts"]["failed"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert!(failed.is_empty(), "items failed: {failed:?}");
    eprintln!(
        "outage figures: store frozen {outage:?} while {} of {} requests were produced; \
         members not ready {:?} into it; {during} requests finished when it ended; every \
         request ({} in all) finished {finished_after:?} after it; failed 0, lost 0, doubled 0",
        w.records.len() - third,
        w.records.len(),
        not_ready_after.unwrap(),
        w.total,
    );
}
