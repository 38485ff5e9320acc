//! The broker goes away mid-run and comes back: the service waits, recovers by itself and
//! loses nothing. Runs its own broker (scripts/kafka.sh on a free port) so that stopping it
//! does not disturb the other Kafka tests.

mod common;

use std::time::Duration;

use common::kafka::*;
use common::services::OwnBroker;

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn broker_restart_mid_run_loses_nothing() {
    broker(); // its own broker, but the same switch as the other Kafka tests
    let broker = OwnBroker::start();
    let env = setup_with(broker.address(), "restart", 3, "");
    let w = crash_workload(2000, 3);
    let svc = env.service("a");
    std::thread::scope(|scope| {
        scope.spawn(|| env.produce_over(&w.records[..w.records.len() / 2], Duration::from_secs(6)));
        std::thread::sleep(Duration::from_secs(7));
        broker.stop();
        std::thread::sleep(Duration::from_secs(5));
        broker.resume();
    });
    env.produce_over(&w.records[w.records.len() / 2..], Duration::from_secs(4));
    let events = env.results(w.total, Duration::from_secs(120));
    stop(svc);
    check_crash_workload(&env, &events, &w);
}
