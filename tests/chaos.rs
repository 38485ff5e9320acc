//! Chaos: sluice instances under random faults, on a broker and a SecantusDB of the test's
//! own — SIGKILLs with immediate restarts, a kill between the two rounds of a rebalance, a
//! SIGSTOP zombie resumed after its partitions moved, a broker restart and a store outage —
//! with every check of the harness (`tests/common/chaos.rs`): safety, liveness and truth,
//! as DESIGN.md's failure model asks. The three-node cluster's faults are in
//! `tests/chaos_cluster.rs`.
//!
//! CI runs ~2.5 minutes of it. The long run is the same harness, longer:
//! `SLUICE_CHAOS_SECS=1800 scripts/test-all.sh --release --test chaos -- --nocapture
//! --test-threads=1`; it prints the figures recorded in RELIABILITY.md.

mod common;

use std::sync::Mutex;

use common::chaos::{chaos, Fault, Kafka};
use common::kafka::*;
use common::services::{mongo, mongo_section, OwnBroker, OwnSecantus};

/// Seconds of faults in CI.
const SECS: u64 = 130;

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn a_group_of_three_on_mongodb_survives_chaos_exactly_once_and_stays_live() {
    // Its own broker and SecantusDB (they are frozen and restarted); the shared ones' being
    // set says the Kafka jars and SecantusDB are installed.
    let (_, _) = (broker(), mongo());
    let broker = OwnBroker::start();
    let store = OwnSecantus::start();
    let env = setup_with(broker.address(), "chaos", 6, &mongo_section(&store.uri));
    let outage = |out: bool| store.freeze(out);
    chaos(
        &env,
        Kafka::Broker(&broker),
        3,
        &ALL_FAULTS,
        &outage,
        true,
        SECS,
    );
}

/// One instance on the embedded SQLite store (state shared by no one): kills, a zombie, a
/// broker restart, and the store locked by another process for 12 s.
#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn a_single_instance_on_sqlite_survives_chaos_exactly_once_and_stays_live() {
    broker(); // the Kafka jars are installed
    let broker = OwnBroker::start();
    let env = setup_with(broker.address(), "chaos-sqlite", 3, "");
    let lock = Mutex::new(None);
    let outage = |out: bool| {
        let mut held = lock.lock().unwrap();
        if out {
            let conn = rusqlite::Connection::open(&env.state).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            *held = Some(conn);
        } else if let Some(conn) = held.take() {
            conn.execute_batch("ROLLBACK").unwrap();
        }
    };
    let kinds = [
        Fault::Kill,
        Fault::Zombie,
        Fault::BrokerRestart,
        Fault::StoreOutage,
    ];
    // A locked SQLite file is waited for (busy), not reported as a store outage.
    chaos(
        &env,
        Kafka::Broker(&broker),
        1,
        &kinds,
        &outage,
        false,
        SECS,
    );
}

const ALL_FAULTS: [Fault; 5] = [
    Fault::Kill,
    Fault::KillBetweenRounds,
    Fault::Zombie,
    Fault::BrokerRestart,
    Fault::StoreOutage,
];
