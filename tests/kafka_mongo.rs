//! Kafka → MongoDB → Kafka: the Kafka crash test with the MongoDB store (SecantusDB in CI,
//! `SLUICE_TEST_MONGO`), and a Mongo-wire server that stops answering mid-run.

mod common;

use std::time::Duration;

use common::http::free_port;
use common::kafka::*;
use common::services::{mongo, mongo_section, OwnSecantus};

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn kill_9_ten_times_with_the_mongodb_store() {
    let uri = mongo();
    let env = setup("crash-mongo", 3, &mongo_section(&uri));
    let seed = rand::random();
    eprintln!("seed = {seed}");
    // Smaller than the SQLite variant: the Mongo-wire test server is far slower per write.
    let w = crash_workload(700, seed);
    kill_9_scenario(
        &env,
        &w,
        seed,
        Duration::from_secs(25),
        Duration::from_secs(400),
    );
    // With MongoDB holding the store, the Kafka service needs no SQLite state file.
    assert!(
        !env.state.exists(),
        "{} was created though [mongo] holds the store",
        env.state.display()
    );
}

/// The server stops answering (SIGSTOP) for a while: chunks wait as "unavailable" (however
/// long; not within the transient-error budget), readiness drops, and everything completes,
/// no item failed, once it answers again. Uses its own SecantusDB so the
/// other tests are not frozen with it.
#[test]
#[ignore = "needs SLUICE_TEST_KAFKA and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn a_stalled_mongo_server_stalls_the_pipeline_and_loses_nothing() {
    let (_, _) = (mongo(), broker()); // its own SecantusDB, the shared broker
    let server = OwnSecantus::start();
    let uri = server.uri.clone();
    let metrics_port = free_port();
    // A transient-error budget far shorter than the outage: inside a transaction the driver
    // labels network errors transient too, and they must still be waited for, not turned
    // into failed items once the budget is spent.
    let extra = format!(
        "{}[observability]\nlisten = \"127.0.0.1:{metrics_port}\"\n[execute]\ntransient_retry_ms = 1000\n",
        mongo_section(&uri)
    );
    let env = setup("mongo-stall", 3, &extra);
    let w = crash_workload(800, 5);
    let svc = env.service("a");
    let paused = |want: f64, within: Duration| {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if metric(metrics_port, "sluice_source_paused") == Some(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    std::thread::scope(|scope| {
        scope.spawn(|| env.produce_over(&w.records, Duration::from_secs(12)));
        std::thread::sleep(Duration::from_secs(5));
        server.freeze(true);
        // Backpressure: with the store stuck, the in-flight budget fills and the consumer
        // pauses its partitions (instead of buffering) while it keeps polling.
        let stalled = std::time::Instant::now();
        let was_paused = paused(1.0, Duration::from_secs(8));
        std::thread::sleep(Duration::from_secs(8).saturating_sub(stalled.elapsed()));
        server.freeze(false);
        assert!(was_paused, "the source paused while the store was stalled");
    });
    let events = env.results(w.total, Duration::from_secs(300));
    assert!(
        paused(0.0, Duration::from_secs(10)),
        "the source resumed once the store answered"
    );
    stop(svc);
    check_crash_workload(&env, &events, &w);
}

/// After a SIGKILL the replacement (same `kafka.instance_id`) ends the dead process's
/// sessions at start-up: the chunks it replays do not wait, write-conflicting, for the dead
/// transactions to expire (60 s on SecantusDB). Three kills mid-run; each time, the first new
/// result must commit within the group's session timeout (6 s here, the time the group takes
/// to give the dead member's partitions back) plus 15 s.
#[test]
#[ignore = "needs SLUICE_TEST_KAFKA and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn a_restarted_instance_does_not_wait_for_its_predecessors_transactions() {
    let uri = mongo();
    let env = setup("reap", 3, &mongo_section(&uri));
    let w = crash_workload(500, 23);
    let reader = env.consumer(&env.results);
    // One poll of the results: Some(terminal events in it) when a message came.
    let poll = || -> Option<usize> {
        let m = reader.poll(Duration::from_millis(100))?.unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(rdkafka::Message::payload(&m).unwrap()).unwrap();
        Some(usize::from(v["event"] != "progress"))
    };
    let mut seen = 0usize;
    let mut worst = Duration::ZERO;
    std::thread::scope(|scope| {
        scope.spawn(|| env.produce_over(&w.records, Duration::from_secs(30)));
        let mut svc = env.service("a");
        for _ in 0..3 {
            std::thread::sleep(Duration::from_secs(4));
            svc.kill().unwrap(); // SIGKILL, transactions open
            svc.wait().unwrap();
            // Everything the dead process committed has been read once this goes quiet.
            let mut quiet = std::time::Instant::now();
            while quiet.elapsed() < Duration::from_secs(2) {
                if let Some(n) = poll() {
                    seen += n;
                    quiet = std::time::Instant::now();
                }
            }
            let before = seen;
            let restarted = std::time::Instant::now();
            svc = env.service("a");
            while seen == before {
                assert!(
                    restarted.elapsed() < Duration::from_secs(90),
                    "nothing committed after the restart"
                );
                seen += poll().unwrap_or(0);
            }
            let took = restarted.elapsed();
            eprintln!("restart → first new commit: {took:?}");
            worst = worst.max(took);
        }
        stop(svc);
    });
    assert!(
        worst < Duration::from_secs(6 + 15),
        "a restart waited {worst:?} for its first commit"
    );
    let svc = env.service("a");
    let events = env.results(w.total, Duration::from_secs(400));
    stop(svc);
    check_crash_workload(&env, &events, &w);
}
