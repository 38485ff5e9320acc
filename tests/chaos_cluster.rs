//! Chaos on a three-node Kafka cluster of the test's own (`scripts/kafka.sh cluster-start`:
//! replication 3, `min.insync.replicas` 2, internal topics replicated 3), the way Kafka's own
//! exactly-once system tests bounce brokers: SIGKILL of the node leading the transaction
//! coordinator's partition of a member's transactional.id, and of the group coordinator's
//! node, each restarted after a few seconds; a node frozen (SIGSTOP) past its broker session
//! and the members' session, then thawed; SIGKILLs of members. Partition leaders and both
//! coordinators move; in-flight transactions must be completed or aborted by the new
//! coordinator, and every client must find it. Same checks as `tests/chaos.rs`
//! (`tests/common/chaos.rs`): exactly once in results, progress and store, every partition
//! owned and every request finished within the bounds after the last fault.
//!
//! CI runs ~100 s of faults (about six). The long run:
//! `SLUICE_CHAOS_SECS=1500 scripts/test-all.sh --release --test chaos_cluster -- --nocapture`.

mod common;

use common::chaos::{chaos, Fault, Kafka};
use common::kafka::*;
use common::services::{mongo, mongo_section, OwnCluster};
use common::sluice;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

/// Seconds of faults in CI.
const SECS: u64 = 100;

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn a_group_of_three_survives_coordinator_deaths_and_a_frozen_broker_on_a_three_node_cluster() {
    // Its own cluster (its nodes are killed and frozen); the shared broker's being set says
    // the Kafka jars are installed. The store is the shared SecantusDB (no store faults here).
    broker();
    let cluster = OwnCluster::start();
    let env = setup_with(
        cluster.bootstrap.clone(),
        "chaos-cluster",
        6,
        &mongo_section(&mongo()),
    );
    // `topics create` without a replication setting takes the cluster's default (3), not 1:
    // one dead broker must not take a partition away.
    for topic in [&env.requests, &env.results, &env.dlq] {
        assert_eq!(
            replicas(&env.brokers, topic),
            vec![3; 6],
            "replicas of {topic}"
        );
    }
    topics_create_makes_the_replication_the_config_asks_for(&env);
    let kinds = [
        Fault::Kill,
        Fault::KillTxnCoordinator,
        Fault::KillGroupCoordinator,
        Fault::FreezeBroker,
    ];
    chaos(
        &env,
        Kafka::Cluster(&cluster),
        3,
        &kinds,
        &|_| {},
        false,
        SECS,
    );
}

/// `kafka.replication` set in the config is what `topics create` asks for (on the chaos
/// test's cluster: a second cluster would double the machine's load).
fn topics_create_makes_the_replication_the_config_asks_for(env: &Env) {
    let tag = format!("r2-{:08x}", rand::random::<u32>());
    let out = sluice()
        .args(["topics", "create", "-c", env.cfg.to_str().unwrap()])
        .env("SLUICE__KAFKA__REPLICATION", "2")
        .env("SLUICE__KAFKA__TOPICS__REQUESTS", format!("{tag}.requests"))
        .env("SLUICE__KAFKA__TOPICS__RESULTS", format!("{tag}.results"))
        .env("SLUICE__KAFKA__TOPICS__DLQ", format!("{tag}.dlq"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for topic in ["requests", "results", "dlq"] {
        let topic = format!("{tag}.{topic}");
        assert_eq!(
            replicas(&env.brokers, &topic),
            vec![2; 6],
            "replicas of {topic}"
        );
    }
}

/// The replica count of each partition of `topic`, as the cluster's metadata has it once
/// every partition is there (a topic just created reaches every broker's metadata a moment
/// later: until then it has no partitions).
fn replicas(brokers: &str, topic: &str) -> Vec<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions();
        if !partitions.is_empty() && partitions.iter().all(|p| p.leader() >= 0) {
            return partitions.iter().map(|p| p.replicas().len()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{topic} has no partitions after 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
