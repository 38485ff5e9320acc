//! Kafka test helpers: topics per test, producing, reading committed results, workloads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

pub use super::process::{stop, Reap};
use super::*;

/// How long [`Env::results`] lets its reader read nothing, while events are missing, before it
/// replaces the reader.
const READER_STALL: Duration = Duration::from_secs(30);

/// The broker of the tests (`SLUICE_TEST_KAFKA`). Tests that need it are `#[ignore]`d, so
/// `cargo test` lists them as ignored; `scripts/test-all.sh` starts a broker and runs them
/// with `--include-ignored`, and then a missing broker is an error, never a pass.
pub fn broker() -> String {
    std::env::var("SLUICE_TEST_KAFKA").expect(
        "this test needs a broker: run scripts/test-all.sh, or set \
         SLUICE_TEST_KAFKA=127.0.0.1:19092 after `scripts/kafka.sh start 19092`",
    )
}

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub state: PathBuf,
    pub brokers: String,
    pub requests: String,
    pub results: String,
    pub dlq: String,
    pub partitions: i32,
    /// The service's consumer group.
    pub group: String,
    /// A client that describes the group (see [`Env::group_view`]).
    observer: std::sync::OnceLock<BaseConsumer>,
    /// Records [`Env::produce`] has flushed to the requests topic so far.
    produced: AtomicUsize,
    /// Every service started here, SIGKILLed if the test panics (so that a failed test
    /// leaves nothing running into the next ones).
    reap: Reap,
}

pub fn setup(name: &str, partitions: i32, extra: &str) -> Env {
    setup_with(broker(), name, partitions, extra)
}

/// Like [`setup`], against `brokers`.
pub fn setup_with(brokers: String, name: &str, partitions: i32, extra: &str) -> Env {
    let env = setup_without_topics(brokers, name, partitions, extra);
    topics_create(&env.cfg, &[]);
    env
}

/// Like [`setup_with`], leaving the topics to the caller (librdkafka's mock cluster has no
/// CreateTopics).
pub fn setup_without_topics(brokers: String, name: &str, partitions: i32, extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{name}-{:08x}", rand::random::<u32>());
    let state = dir.path().join("state.db");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "g-{tag}"
partitions = {partitions}
session_timeout_ms = 6000
[kafka.topics]
requests = "{tag}.requests"
results = "{tag}.results"
dlq = "{tag}.dlq"
[pipeline]
commit_interval_ms = 100
commit_max_records = 50
[chunk]
max_items = 5
[limits]
max_record_bytes = 20000
max_item_bytes = 2000
[embedded]
state = "{}"
shared = true  # every service of a test opens this one file
[collections.words]
key = "text"
[collections.definitions]
key = "id"
parent = "words"
parent_field = "word"
{extra}"#,
            state.display()
        ),
    );
    Env {
        _dir: dir,
        cfg,
        state,
        brokers,
        requests: format!("{tag}.requests"),
        results: format!("{tag}.results"),
        dlq: format!("{tag}.dlq"),
        partitions,
        group: format!("g-{tag}"),
        observer: std::sync::OnceLock::new(),
        produced: AtomicUsize::new(0),
        reap: Reap::default(),
    }
}

impl Env {
    pub fn produce(&self, records: &[(Option<String>, Vec<u8>)]) {
        self.produce_with(records, &[]);
    }

    /// [`Env::produce`] allowing records of up to 1 MiB (the broker's default topic limit).
    pub fn produce_large(&self, records: &[(Option<String>, Vec<u8>)]) {
        self.produce_with(records, &[("message.max.bytes", "1048576")]);
    }

    fn produce_with(&self, records: &[(Option<String>, Vec<u8>)], props: &[(&str, &str)]) {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true");
        for (k, v) in props {
            config.set(*k, *v);
        }
        let p: BaseProducer = config.create().unwrap();
        for (key, payload) in records {
            let mut r = BaseRecord::<str, [u8]>::to(&self.requests).payload(payload);
            if let Some(k) = key {
                r = r.key(k);
            }
            let mut r = Some(r);
            while let Some(rec) = r.take() {
                if let Err((_, rec)) = p.send(rec) {
                    p.poll(Duration::from_millis(50));
                    r = Some(rec);
                }
            }
            p.poll(Duration::ZERO);
        }
        // Longer than a chaos broker restart (stop, 5 s, a JVM start on a busy machine) plus
        // librdkafka's reconnect back-off: 30 s was once too short. Nothing is lost meanwhile
        // (message.timeout.ms is 300 s).
        p.flush(Duration::from_secs(120)).unwrap();
        self.produced.fetch_add(records.len(), Ordering::SeqCst);
    }

    /// Produces `w` over `over` while, `at` into it, `act` runs (kills a member, starts one…);
    /// asserts that input was still flowing when `act` was done.
    pub fn mid_run(&self, w: &Workload, over: Duration, at: Duration, act: impl FnOnce()) {
        std::thread::scope(|scope| {
            scope.spawn(|| self.produce_over(&w.records, over));
            std::thread::sleep(at);
            act();
            let sent = self.produced_now();
            assert!(
                sent < w.records.len(),
                "mid-run: {sent} of {} requests produced",
                w.records.len()
            );
        });
    }

    /// How many records have been produced so far: a member stopped while this is short of
    /// the workload stopped mid-run, whatever the survivors have finished meanwhile.
    pub fn produced_now(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }

    pub fn service(&self, instance: &str) -> Child {
        self.service_with(instance, &[])
    }

    /// [`Env::service`] with extra environment variables (e.g. `SLUICE__…` overrides).
    pub fn service_with(&self, instance: &str, env: &[(&str, String)]) -> Child {
        let child = sluice()
            .args(["run", "-c", self.cfg.to_str().unwrap()])
            .env("SLUICE__KAFKA__INSTANCE_ID", instance)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SLUICE_LOG", "info,librdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(instance))
            .spawn()
            .unwrap();
        super::process::spawned(&child, self.log_path(instance));
        self.reap.add(&child);
        child
    }

    /// Documents in `words`, in whichever store the config names (MongoDB or SQLite).
    pub fn count_words(&self) -> i64 {
        let cfg: toml::Value =
            toml::from_str(&std::fs::read_to_string(&self.cfg).unwrap()).unwrap();
        match cfg.get("mongo") {
            None => count_docs(&self.state, "words"),
            Some(m) => {
                let (uri, db) = (
                    m["uri"].as_str().unwrap().to_string(),
                    m["database"].as_str().unwrap().to_string(),
                );
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
                    let coll = client
                        .database(&db)
                        .collection::<mongodb::bson::Document>("words");
                    coll.count_documents(mongodb::bson::doc! {}).await.unwrap() as i64
                })
            }
        }
    }

    /// The service's log file (appended across restarts; printed when `results` times out).
    fn log(&self, instance: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(instance))
            .unwrap()
    }

    fn log_path(&self, instance: &str) -> PathBuf {
        self._dir.path().join(format!("service-{instance}.log"))
    }

    /// Everything `instance` has logged so far.
    pub fn log_text(&self, instance: &str) -> String {
        std::fs::read_to_string(self.log_path(instance)).unwrap_or_default()
    }

    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self._dir.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("service-") {
                out += &super::process::tail(&entry.path(), 200);
            }
        }
        out
    }

    pub fn consumer(&self, topic: &str) -> BaseConsumer {
        self.consumer_from(topic, &BTreeMap::new())
    }

    /// A read_committed reader of `topic`, at `next[p]` on the partitions it names and at the
    /// beginning on the others.
    fn consumer_from(&self, topic: &str, next: &BTreeMap<i32, i64>) -> BaseConsumer {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("check-{:08x}", rand::random::<u32>()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            let at = next
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(topic, p, at).unwrap();
        }
        c.assign(&tpl).unwrap();
        c
    }

    /// Reads committed result events until `terminal` terminal events have arrived, then a
    /// little longer so that any duplicate would show.
    ///
    /// A reader that has read nothing for [`READER_STALL`] while events are missing, and while
    /// committed results wait beyond where it stands, is replaced by a fresh one at the
    /// offsets it reached (and says so on stderr): a librdkafka consumer created while the
    /// broker came back from a freeze (fenced by its controller, leaders re-elected with a new
    /// epoch) was seen reading nothing for 5 minutes while a fresh reader read every result at
    /// once (RELIABILITY.md). A new reader reads only what is committed: it cannot hide results
    /// that are missing. The stalled one is closed on a thread of its own: its close may never
    /// finish.
    pub fn results(&self, terminal: usize, timeout: Duration) -> Vec<Value> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut c = self.consumer(&self.results);
        let mut events = Vec::new();
        let mut seen = 0;
        let deadline = Instant::now() + timeout;
        let mut quiet_until: Option<Instant> = None;
        let mut last_read = Instant::now();
        loop {
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                if v["event"] != "progress" {
                    seen += 1;
                }
                assert_eq!(
                    m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    v["request_id"].as_str().map(str::to_owned),
                    "result key = request_id"
                );
                next.insert(m.partition(), m.offset() + 1);
                last_read = Instant::now();
                events.push(v);
            }
            if seen >= terminal && quiet_until.is_none() {
                quiet_until = Some(Instant::now() + Duration::from_secs(3));
            }
            if quiet_until.is_some_and(|q| Instant::now() > q) {
                return events;
            }
            if Instant::now() >= deadline {
                panic!(
                    "only {seen} of {terminal} terminal events after {timeout:?}\n{}\n{}",
                    self.results_diagnosis(),
                    self.logs_tail()
                );
            }
            if seen < terminal && last_read.elapsed() >= READER_STALL {
                last_read = Instant::now();
                let waiting = self.committed_beyond(&next);
                if !waiting.is_empty() {
                    eprintln!(
                        "results: the reader read nothing for {READER_STALL:?} with {seen} of \
                         {terminal} terminal events, at offsets {next:?}, while committed \
                         results wait beyond them (partition, last stable offset): \
                         {waiting:?}; a fresh reader takes over there"
                    );
                    let stalled =
                        std::mem::replace(&mut c, self.consumer_from(&self.results, &next));
                    std::thread::spawn(move || drop(stalled));
                }
            }
        }
    }

    /// The result partitions whose committed results (up to the last stable offset) go beyond
    /// `next` (or, where `next` has no offset, beyond the partition's start), with that offset.
    fn committed_beyond(&self, next: &BTreeMap<i32, i64>) -> Vec<(i32, i64)> {
        let c = self.watermarks_client("read_committed");
        let wait = Duration::from_secs(2);
        (0..self.partitions)
            .filter_map(|p| {
                let (low, lso) = c.fetch_watermarks(&self.results, p, wait).ok()?;
                (lso > next.get(&p).copied().unwrap_or(low)).then_some((p, lso))
            })
            .collect()
    }

    /// A client for watermark queries only: no group, no assignment (its close is immediate).
    fn watermarks_client(&self, isolation: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("isolation.level", isolation)
            .create()
            .unwrap()
    }

    /// Why committed results may not be readable, for a failure message: per partition of
    /// the result topic, how far read_committed readers may read (the last stable offset,
    /// held back by the earliest open transaction) against its end, and the producers with
    /// a transaction open there, as the broker reports them.
    pub fn results_diagnosis(&self) -> String {
        let mut out = self.results_readable();
        for p in 0..self.partitions {
            out += &format!("producers with a transaction open on partition {p}:\n");
            let producers = std::process::Command::new("bash")
                .arg(root().join("scripts/kafka.sh"))
                .args(["tool", "org.apache.kafka.tools.TransactionsCommand"])
                .args(["--bootstrap-server", &self.brokers, "describe-producers"])
                .args(["--topic", &self.results, "--partition", &p.to_string()])
                .output();
            match producers {
                Ok(o) => {
                    out += &String::from_utf8_lossy(&o.stdout);
                    out += &String::from_utf8_lossy(&o.stderr);
                }
                Err(e) => out += &format!("  describe-producers: {e}\n"),
            }
        }
        out
    }

    /// Per partition of the result topic, how far a read_committed reader may read (the last
    /// stable offset) against the end, asked by fresh clients.
    fn results_readable(&self) -> String {
        let uncommitted = self.watermarks_client("read_uncommitted");
        // Read_committed: its watermark query answers the last stable offset.
        let committed = self.watermarks_client("read_committed");
        let wait = Duration::from_secs(5);
        let mut out = String::from("result partitions: readable (last stable offset) / end\n");
        for p in 0..self.partitions {
            let lso = committed.fetch_watermarks(&self.results, p, wait);
            let end = uncommitted.fetch_watermarks(&self.results, p, wait);
            out += &format!("  {p}: {:?} / {:?}\n", lso.map(|w| w.1), end.map(|w| w.1));
        }
        out
    }

    /// Terminal events committed so far (reads until the topic is quiet for a second).
    pub fn terminal_now(&self) -> usize {
        let c = self.consumer(&self.results);
        let mut n = 0;
        let mut quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(1) {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let v: Value = serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap();
                n += usize::from(v["event"] != "progress");
                quiet = Instant::now();
            }
        }
        n
    }

    pub fn dead_letters(&self, n: usize) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
        let c = self.consumer(&self.dlq);
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} dead letters",
                out.len()
            );
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((m.payload().unwrap_or_default().to_vec(), headers));
            }
        }
        out
    }
}

/// `sluice topics create -c cfg` with `env` (e.g. `SLUICE__KAFKA__TOPICS__…` overrides).
pub fn topics_create(cfg: &std::path::Path, env: &[(&str, String)]) {
    let out = sluice()
        .args(["topics", "create", "-c", cfg.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "topics create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn create(id: &str, keys: impl IntoIterator<Item = String>) -> Vec<u8> {
    let items: Vec<_> = keys.into_iter().map(|k| json!({"text": k})).collect();
    json!({"request_id": id, "collection": "words", "op": "create", "items": items})
        .to_string()
        .into_bytes()
}

pub fn delete(id: &str, keys: impl IntoIterator<Item = String>) -> Vec<u8> {
    let items: Vec<_> = keys.into_iter().map(|k| json!({"key": k})).collect();
    json!({"request_id": id, "collection": "words", "op": "delete", "items": items})
        .to_string()
        .into_bytes()
}

/// Creates, then (keyed like their creates, so in order after them) deletes of half of them.
pub struct Workload {
    pub records: Vec<(Option<String>, Vec<u8>)>,
    pub sizes: Vec<usize>,
    pub remaining: usize,
    pub total: usize,
}

pub fn crash_workload(n: usize, seed: u64) -> Workload {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sizes: Vec<usize> = (0..n).map(|_| rng.random_range(1..=12)).collect();
    let mut records = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        records.push((
            Some(format!("k{i}")),
            create(&format!("c-{i}"), (0..s).map(|j| format!("w{i}-{j}"))),
        ));
        // Deletes trail their creates by 200 records: they apply while creates still flow.
        if i >= 200 && (i - 200) % 2 == 0 {
            let t = i - 200;
            records.push((
                Some(format!("k{t}")),
                delete(
                    &format!("d-{t}"),
                    (0..sizes[t]).map(|j| format!("w{t}-{j}")),
                ),
            ));
        }
    }
    for t in (n.saturating_sub(200)..n).filter(|t| t % 2 == 0) {
        records.push((
            Some(format!("k{t}")),
            delete(
                &format!("d-{t}"),
                (0..sizes[t]).map(|j| format!("w{t}-{j}")),
            ),
        ));
    }
    let remaining = sizes
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .sum();
    let total = n + n.div_ceil(2);
    Workload {
        records,
        sizes,
        remaining,
        total,
    }
}

impl Env {
    /// The consumer group as its coordinator sees it (unowned partitions, lag).
    pub fn group_view(&self) -> Option<sluice_connectors::kafka::group::GroupView> {
        // One client for every look: it never joins the group (it only asks the coordinator).
        let c = self.observer.get_or_init(|| {
            ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .set("group.id", &self.group)
                .set("enable.auto.commit", "false")
                .create()
                .unwrap()
        });
        sluice_connectors::kafka::group::describe(
            c,
            &self.group,
            &self.requests,
            Duration::from_secs(5),
        )
        .ok()
    }

    /// Waits until every partition of the requests topic is owned by a member of a stable
    /// group; returns how long that took. Panics past `bound`.
    pub fn until_every_partition_owned(&self, bound: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let view = self.group_view();
            if let Some(v) = &view {
                if v.state == "Stable" && v.unowned.is_empty() && v.members > 0 {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < bound,
                "partitions still unowned after {bound:?}: {view:?}\n{}",
                self.logs_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits (up to `timeout`) until `instance` has logged a line for which `pred` holds.
    pub fn until_logged(&self, instance: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while !self.log_text(instance).lines().any(&pred) {
            assert!(
                started.elapsed() < timeout,
                "{instance} did not log what was awaited\n{}",
                self.logs_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Produces `records` spread over `over`, so that work flows while the test disturbs it.
    pub fn produce_over(&self, records: &[(Option<String>, Vec<u8>)], over: Duration) {
        let batches = 40;
        let per = records.len().div_ceil(batches);
        for chunk in records.chunks(per.max(1)) {
            self.produce(chunk);
            std::thread::sleep(over / batches as u32);
        }
    }
}

pub fn check_crash_workload(env: &Env, events: &[Value], w: &Workload) {
    // A failed check prints what the services logged: CI keeps only the output.
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_workload_events(env, events, w)
    }));
    if let Err(panic) = checked {
        eprintln!("{}", env.logs_tail());
        std::panic::resume_unwind(panic);
    }
}

fn check_workload_events(env: &Env, events: &[Value], w: &Workload) {
    let (sizes, remaining) = (&w.sizes, w.remaining);
    let terminal = check_once(events);
    let by_id: BTreeMap<String, &Value> = terminal
        .values()
        .map(|e| (e["request_id"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(
        terminal.len(),
        by_id.len(),
        "one terminal event per request"
    );
    for (i, &s) in sizes.iter().enumerate() {
        let c = by_id[&format!("c-{i}")];
        assert_eq!(c["counts"]["ok"], s, "create c-{i} applied once: {c}");
        if i % 2 == 0 {
            let d = by_id[&format!("d-{i}")];
            assert_eq!(d["counts"]["ok"], s, "delete d-{i} applied once: {d}");
        }
    }
    assert_eq!(
        env.count_words(),
        remaining as i64,
        "every write applied once"
    );
}

/// Ten `kill -9` at random moments while `w` is produced (spread over `over`), then a final
/// run: every result event once, every write once, nothing missing.
pub fn kill_9_scenario(env: &Env, w: &Workload, seed: u64, over: Duration, timeout: Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::thread::scope(|scope| {
        scope.spawn(|| env.produce_over(&w.records, over));
        for _ in 0..10 {
            let mut svc = env.service("a");
            std::thread::sleep(Duration::from_millis(rng.random_range(1500..3500)));
            svc.kill().unwrap(); // SIGKILL
            svc.wait().unwrap();
        }
    });
    let before = env.terminal_now();
    assert!(
        before > 0 && before < w.total,
        "the kills interrupted runs making progress ({before} of {} done)",
        w.total
    );
    let svc = env.service("a");
    let events = env.results(w.total, timeout);
    stop(svc);
    check_crash_workload(env, &events, w);
}

/// The service's `/metrics` text (empty while it does not answer).
pub fn metrics_text(port: u16) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// The value of an unlabelled metric on the service's `/metrics` (`None` while it does not
/// answer yet).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    metrics_text(port)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
