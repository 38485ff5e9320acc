//! The coordinator becomes unreachable around a rebalance: the broker — the only one, so also
//! the group and transaction coordinator — is frozen (SIGSTOP) for 30 s with requests in
//! flight, either just as a second member joins (between the two rounds of the rebalance), or
//! while both members commit (a commit hangs holding the commit lock, and their sessions expire
//! meanwhile: the assignment is lost, a rebalance inside the freeze). The service must keep
//! answering `/healthz` and `/metrics` throughout (nothing may block the tokio workers that
//! serve them: not the rebalance callback waiting for a commit, not the close of a consumer
//! waiting for its group leave), and once the broker is back every request finishes exactly
//! once. Runs its own broker (`scripts/kafka.sh` on a free port).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::http::free_port;
use common::kafka::*;
use common::services::OwnBroker;

/// How long the broker stays frozen.
const FROZEN: Duration = Duration::from_secs(30);
/// Each answer must come within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// The settings of both members: a listener on `port`; one tokio worker (what the service
/// gets in a container limited to one CPU, whatever the machine running the test has: one
/// blocked worker is the whole runtime); operations and drains shorter than the freeze, so
/// that commits fail, the assignment is lost and the run restarts inside it.
fn member(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("TOKIO_WORKER_THREADS", "1".to_string()),
        ("SLUICE__OBSERVABILITY__LISTEN", format!("127.0.0.1:{port}")),
        (
            "SLUICE__OBSERVABILITY__HEALTH_INTERVAL_MS",
            "300".to_string(),
        ),
        (
            "SLUICE__OBSERVABILITY__HEALTH_TIMEOUT_MS",
            "250".to_string(),
        ),
        ("SLUICE__KAFKA__REVOKE_DRAIN_MS", "3000".to_string()),
        ("SLUICE__KAFKA__OPERATION_TIMEOUT_MS", "10000".to_string()),
        // Commits every 2 s (no commit as soon as idle: that is for intervals up to 1 s) and
        // one item per chunk: the revoking member has records in flight when it freezes.
        ("SLUICE__PIPELINE__COMMIT_INTERVAL_MS", "2000".to_string()),
        ("SLUICE__PIPELINE__COMMIT_MAX_RECORDS", "100000".to_string()),
        ("SLUICE__CHUNK__MAX_ITEMS", "1".to_string()),
    ]
}

/// One slow or failed answer: which member, which path, when (since the freeze) and what.
type Miss = (String, &'static str, Duration, String);

/// Polls `/healthz` and `/metrics` of every member every 200 ms, with a client timeout of
/// [`ANSWER_WITHIN`], until `stop`; collects every answer that was late or missing.
fn poll(
    members: &[(&'static str, u16)],
    frozen_at: &Mutex<Option<Instant>>,
    stop: &AtomicBool,
) -> (usize, Vec<Miss>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(ANSWER_WITHIN))
        .build()
        .into();
    let (mut answers, mut misses) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        for &(name, port) in members {
            for path in ["/healthz", "/metrics"] {
                let started = Instant::now();
                let answer = agent
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .call()
                    .map_err(|e| e.to_string())
                    .and_then(|mut r| {
                        // Health may be 503 while the broker is away: answering is what counts.
                        let status = r.status().as_u16();
                        r.body_mut()
                            .read_to_string()
                            .map(|_| status)
                            .map_err(|e| e.to_string())
                    });
                let took = started.elapsed();
                let at = frozen_at
                    .lock()
                    .unwrap()
                    .map_or(Duration::ZERO, |f| f.elapsed());
                match answer {
                    Ok(_) if took < ANSWER_WITHIN => answers += 1,
                    Ok(status) => misses.push((
                        name.to_string(),
                        path,
                        at,
                        format!("{status} after {took:?}"),
                    )),
                    Err(e) => misses.push((name.to_string(), path, at, format!("{e} ({took:?})"))),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (answers, misses)
}

/// When the broker freezes.
#[derive(Clone, Copy, PartialEq)]
enum Freeze {
    /// Just as a second member joins: between the two rounds of its rebalance.
    BetweenRounds,
    /// Once both members own partitions and commit: their sessions expire in the freeze.
    WhileCommitting,
}

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn a_coordinator_frozen_between_the_rounds_of_a_rebalance_never_stalls_health_or_metrics() {
    frozen_coordinator(Freeze::BetweenRounds);
}

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn a_coordinator_frozen_while_members_commit_never_stalls_health_or_metrics() {
    frozen_coordinator(Freeze::WhileCommitting);
}

fn frozen_coordinator(when: Freeze) {
    broker(); // its own broker, but the same switch as the other Kafka tests
    let broker = OwnBroker::start();
    let env = setup_with(broker.address(), "frozen", 3, "");
    // More than a member finishes in the minute before the freeze on a fast machine.
    let w = crash_workload(4000, 24);
    let (port_a, port_b) = (free_port(), free_port());
    let reap = Reap::default();
    let a = env.service_with("a", &member(port_a));
    reap.add(&a);
    env.until_logged("a", Duration::from_secs(60), |l| {
        l.contains("partitions assigned") && l.contains("partitions=3")
    });
    let mut b = None;
    let start_b = |b: &mut Option<_>| {
        let service = env.service_with("b", &member(port_b));
        reap.add(&service);
        *b = Some(service);
        env.until_logged("b", Duration::from_secs(60), |l| {
            l.contains("partitions assigned")
        });
    };
    if when == Freeze::WhileCommitting {
        start_b(&mut b);
        env.until_every_partition_owned(Duration::from_secs(60));
    }
    // Everything is produced before the freeze: a producer of the test's own, frozen with the
    // broker, need not come back in time (librdkafka's long-lived clients can take minutes).
    env.produce(&w.records);
    let done = env.terminal_now();
    assert!(
        done < w.total,
        "requests in flight: {done} of {} done",
        w.total
    );
    let frozen_at = Mutex::new(None);
    let stop_polling = AtomicBool::new(false);
    let (events, (answers, misses)) = std::thread::scope(|scope| {
        // Stops the poller however this closure ends (the scope joins it).
        let _stop = StopOnDrop(&stop_polling);
        if when == Freeze::BetweenRounds {
            // b joins: a rebalance starts, a revokes partitions with records in flight…
            start_b(&mut b);
        }
        // (b's listener is up: it logged after it bound it.)
        let poller =
            scope.spawn(|| poll(&[("a", port_a), ("b", port_b)], &frozen_at, &stop_polling));
        // …and the coordinator goes silent.
        broker.freeze(true);
        *frozen_at.lock().unwrap() = Some(Instant::now());
        std::thread::sleep(FROZEN);
        broker.freeze(false);
        let events = env.results(w.total, Duration::from_secs(300));
        stop_polling.store(true, Ordering::SeqCst);
        (events, poller.join().unwrap())
    });
    let a_log = env.log_text("a");
    eprintln!(
        "{answers} answers in time; a: {} rebalance-callback lines, {} run restarts",
        a_log.matches("partitions revoked").count() + a_log.matches("partitions lost").count(),
        a_log.matches("Kafka run ended; restarting").count()
    );
    assert!(
        misses.is_empty(),
        "{} of {} answers late or missing (member, path, since the freeze, what):\n{:#?}\n{}",
        misses.len(),
        misses.len() + answers,
        misses,
        env.logs_tail()
    );
    stop(a);
    stop(b.take().unwrap());
    check_crash_workload(&env, &events, &w);
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
