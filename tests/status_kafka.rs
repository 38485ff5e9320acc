//! The status API of the Kafka service, on both stores: streams and events byte-identical to
//! what the results topic carries (read_committed); on MongoDB, an instance that executes
//! nothing answers for a request another instance executes, and its stream goes on, without
//! gaps or repeats, through a kill -9 and restart of the executing instance.

mod common;

use std::time::{Duration, Instant};

use common::http::{free_port, wait_for};
use common::kafka::*;
use common::services::{mongo, mongo_section};
use common::status::*;
use rdkafka::Message;
use serde_json::Value;

/// The committed result payloads (exact text) of `request_id`, through its terminal event.
fn topic_events(env: &Env, request_id: &str, within: Duration) -> Vec<String> {
    let c = env.consumer(&env.results);
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no terminal event for {request_id}: {out:?}"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        if m.key() != Some(request_id.as_bytes()) {
            continue;
        }
        let text = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        let terminal = !text.contains("\"event\":\"progress\"");
        out.push(text);
        if terminal {
            return out;
        }
    }
}

/// A listener on `port` with the status API; connections (so streams too) last at most 3 s,
/// so a long stream is one reconnection after another (`Last-Event-ID`).
fn listen(port: u16) -> String {
    format!(
        "[observability]\nlisten = \"127.0.0.1:{port}\"\nhttp_header_timeout_ms = 1000\n\
         http_connection_timeout_ms = 3000\n{}",
        section(4)
    )
}

fn wait_healthy(port: u16) {
    wait_for("/healthz", Duration::from_secs(60), || {
        common::http::get(&format!("http://127.0.0.1:{port}/healthz"), &[])
            .is_some_and(|(c, _)| c == 200)
    });
}

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn the_kafka_service_on_sqlite_streams_a_request_as_the_results_topic_carries_it() {
    let port = free_port();
    let env = setup("status-sqlite", 2, &listen(port));
    let svc = env.service("a");
    wait_healthy(port);
    let keys: Vec<String> = (0..50).map(|i| format!("sq-{i}")).collect();
    env.produce(&[(None, create("s-10", keys))]); // 10 chunks of 5
    let (streamed, _) = stream_to_end(port, "s-10", Duration::from_secs(120));
    assert_eq!(check_sequence(&streamed), 10);
    let topic = topic_events(&env, "s-10", Duration::from_secs(60));
    let data: Vec<&str> = streamed.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, topic, "the stream carries the results topic's bytes");
    let (code, body) = get(port, "/v1/requests/s-10/events");
    assert_eq!(code, 200);
    assert_eq!(body, topic.join("\n") + "\n");
    let st: Value = serde_json::from_str(&get(port, "/v1/requests/s-10").1).unwrap();
    assert_eq!(st["state"], "completed", "{st}");
    assert_eq!(st["source"]["topic"], env.requests);
    stop(svc);
}

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn another_instance_answers_and_its_stream_survives_a_kill_9_of_the_executing_one() {
    let uri = mongo();
    let (port_a, port_b) = (free_port(), free_port());
    let env = setup(
        "status-mongo",
        1,
        &format!("{}{}", mongo_section(&uri), listen(port_a)),
    );
    // B: the same store and config, but a group and topics of its own (created here, empty):
    // it executes none of A's requests, so whatever it says comes from the store.
    let tag = format!("b-{:08x}", rand::random::<u32>());
    let b_env = [
        (
            "SLUICE__OBSERVABILITY__LISTEN",
            format!("127.0.0.1:{port_b}"),
        ),
        ("SLUICE__KAFKA__GROUP_ID", format!("g-{tag}")),
        ("SLUICE__KAFKA__TOPICS__REQUESTS", format!("{tag}.requests")),
        ("SLUICE__KAFKA__TOPICS__RESULTS", format!("{tag}.results")),
        ("SLUICE__KAFKA__TOPICS__DLQ", format!("{tag}.dlq")),
    ];
    topics_create(&env.cfg, &b_env);
    let b = env.service_with("b", &b_env);
    let mut a = env.service("a");
    wait_healthy(port_a);
    wait_healthy(port_b);

    let keys: Vec<String> = (0..200).map(|i| format!("mk-{i}")).collect();
    env.produce(&[(None, create("m-40", keys))]); // 40 chunks of 5
    let stream =
        std::thread::spawn(move || stream_to_end(port_b, "m-40", Duration::from_secs(600)));
    // Mid-request (a few chunks settled, not all): kill -9 the executing instance.
    wait_for("chunks settling", Duration::from_secs(120), || {
        let st: Value = serde_json::from_str(&get(port_b, "/v1/requests/m-40").1).unwrap();
        st["chunks"]["done"].as_u64().unwrap_or(0) >= 2
    });
    a.kill().unwrap();
    a.wait().unwrap();
    let st: Value = serde_json::from_str(&get(port_b, "/v1/requests/m-40").1).unwrap();
    assert_eq!(st["state"], "in_progress", "killed mid-request: {st}");
    assert!(st["chunks"]["done"].as_u64().unwrap() < 40, "{st}");
    assert_eq!(st["collection"], "words");
    // The in-flight list on B shows it, with its progress.
    let page: Value =
        serde_json::from_str(&get(port_b, "/v1/requests?state=in_progress").1).unwrap();
    assert_eq!(page["requests"][0]["request_id"], "m-40", "{page}");
    let a = env.service("a");
    let (streamed, connections) = stream.join().unwrap();
    assert_eq!(check_sequence(&streamed), 40, "no gap, no repeat");
    assert!(
        connections >= 2,
        "a stream longer than the connection timeout resumed ({connections} connection)"
    );
    let topic = topic_events(&env, "m-40", Duration::from_secs(300));
    let data: Vec<&str> = streamed.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, topic, "the stream carries the results topic's bytes");
    let (code, body) = get(port_b, "/v1/requests/m-40");
    assert_eq!(code, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["state"], "completed");
    assert_eq!(st["chunks"], serde_json::json!({"planned": 40, "done": 40}));
    assert_eq!(
        get(port_b, "/v1/requests/m-40/events").1,
        topic.join("\n") + "\n"
    );
    assert_eq!(
        get(port_a, "/v1/requests/m-40").1,
        body,
        "both instances say the same"
    );
    assert_eq!(get(port_b, "/v1/requests/nope").0, 404);
    stop(a);
    stop(b);
}
