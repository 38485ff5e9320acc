//! A partition handed out from below its committed offset: its records below that offset ran
//! and their events are committed, so they must not run again.
//!
//! On a real broker this took a transaction left pending across a broker restart and a
//! rebalance interrupting librdkafka's retried offset fetch (RELIABILITY.md), about one run
//! in ten. librdkafka's mock cluster makes it certain: the restarted member's first fetch is
//! answered `OFFSET_OUT_OF_RANGE`, so the consumer resets the partition to its earliest
//! offset, 0, while 5 is committed. Needs no broker: the mock cluster runs in this process.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn requests(ids: std::ops::Range<usize>) -> Vec<(Option<String>, Vec<u8>)> {
    ids.map(|i| {
        (
            Some(format!("r-{i}")),
            create(&format!("r-{i}"), [format!("w{i}")]),
        )
    })
    .collect()
}

/// A mock cluster of one broker with the test's topics, one partition each (the env must
/// not outlive the mock).
fn on_mock(name: &str) -> (MockCluster<'static, DefaultProducerContext>, Env) {
    let mock = MockCluster::new(1).unwrap();
    let env = setup_without_topics(mock.bootstrap_servers(), name, 1, "");
    for topic in [&env.requests, &env.results, &env.dlq] {
        mock.create_topic(topic, 1, 1).unwrap();
    }
    (mock, env)
}

/// The service, its broker operations bounded by 5 s instead of 30 (the mock lacks some of
/// the APIs the health checks use).
fn service(env: &Env) -> std::process::Child {
    env.service_with(
        "a",
        &[("SLUICE__KAFKA__OPERATION_TIMEOUT_MS", "5000".to_string())],
    )
}

/// Commits `offset` for the group on the requests topic's partition 0, as a member of it
/// (the mock refuses a commit from outside the group).
fn commit(env: &Env, offset: i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", &env.group)
        .set("enable.auto.commit", "false")
        // Should it not leave cleanly, the service's join waits this long for it at most.
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[&env.requests]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the committer got no assignment");
        c.poll(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&env.requests, 0, Offset::Offset(offset))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    c.unsubscribe();
    for _ in 0..10 {
        c.poll(Duration::from_millis(100)); // leaves the group
    }
}

#[test]
fn records_below_the_committed_offset_do_not_run_again() {
    let (mock, env) = on_mock("reset");

    // Five requests run and are committed: the committed offset is 5. (The mock keeps no
    // offsets committed in a transaction, so the test commits it as a broker would hold it.)
    env.produce(&requests(0..5));
    let svc = service(&env);
    env.results(5, Duration::from_secs(60));
    stop(svc);
    commit(&env, 5);

    // Five more; the member's first fetch is refused as out of range.
    env.produce(&requests(5..10));
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE],
    );
    let svc = service(&env);
    // Waits on the store, not on a reader: a reader's fetch could take the refusal first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.count_words() < 10 {
        assert!(
            Instant::now() < deadline,
            "only {} of 10 requests applied\n{}",
            env.count_words(),
            env.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = env.results(10, Duration::from_secs(60));
    stop(svc);

    ran_once_after(
        &env,
        &events,
        10,
        "handed out from below its committed offset",
    );
}

/// The other side of the guard: a committed offset beyond the partition's end (its log lost
/// records, e.g. to an unclean leader election) must not make the member pass over the
/// records written since. The mock answers the fetch at offset 100 of a 5-record partition
/// `OFFSET_OUT_OF_RANGE` by itself.
#[test]
fn a_committed_offset_beyond_the_end_passes_nothing_over() {
    let (_mock, env) = on_mock("truncated");
    env.produce(&requests(0..5));
    commit(&env, 100);

    let svc = service(&env);
    let events = env.results(5, Duration::from_secs(60));
    stop(svc);

    ran_once_after(&env, &events, 5, "lies beyond its end");
}

/// Asserts that the service logged `warning` (the consumer did start below the committed
/// offset: otherwise the test proved nothing) and that requests r-0…r-(n-1) each have
/// exactly one terminal event.
fn ran_once_after(env: &Env, events: &[serde_json::Value], n: usize, warning: &str) {
    let log = env.log_text("a");
    assert!(
        log.contains(warning),
        "the service never logged {warning:?}, so this test proved nothing:\n{log}"
    );
    let mut terminal: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        *terminal
            .entry(e["request_id"].as_str().unwrap().to_owned())
            .or_default() += usize::from(e["event"] != "progress");
    }
    let expected: BTreeMap<String, usize> = (0..n).map(|i| (format!("r-{i}"), 1)).collect();
    assert_eq!(
        terminal, expected,
        "every request has exactly one terminal event\n{events:#?}"
    );
}
