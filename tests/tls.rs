//! TLS to the store and to the broker, with certificates made for each test (openssl CLI;
//! the JDK's `keytool` for the broker's trust store): a CA, a server certificate for
//! 127.0.0.1/localhost, and a client certificate whose PKCS#8 key is encrypted with a
//! password. Each server accepts only TLS with a client certificate signed by that CA, so a
//! run that produces its results has spoken TLS with the password-protected key; the
//! negative controls show the same endpoints refusing a plaintext client and a TLS client
//! without a certificate.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{create, setup_with, stop};
use common::services::OwnBroker;
use common::*;
use mongodb::bson::{doc, Document};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

/// Runs `program` with the whitespace-separated `args` in `dir`, asserting success.
fn exec(program: &str, dir: &Path, args: &str) {
    let out = Command::new(program)
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("this test needs `{program}` (openssl CLI; JDK): {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args}: {err}");
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate whose key is
/// encrypted with `password`, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    /// Encrypts the client's key (and, for Kafka, the broker's stores).
    password: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let password = format!("key-pw-{:08x}", rand::random::<u32>());
        let d = dir.path();
        let openssl = |args: String| exec("openssl", d, &args);
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        openssl(format!(
            "req -x509 {ec} -subj /CN=sluice-test-ca -days 2 -keyout ca.key -out ca.pem \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ));
        let server = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth";
        for (name, ext) in [
            ("server", server),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), format!("{ext}\n")).unwrap();
            openssl(format!(
                "req {ec} -subj /CN=sluice-test-{name} -keyout {name}.key -out {name}.csr"
            ));
            openssl(format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile {name}.ext -out {name}.pem"
            ));
        }
        // PKCS#8, PBES2 (PBKDF2-SHA256, AES-256-CBC): what the MongoDB driver's
        // `cert-key-password` feature and librdkafka both decrypt. The plain key is removed.
        openssl(format!(
            "pkcs8 -topk8 -v2 aes-256-cbc -in client.key -out client-key.pem \
             -passout pass:{password}"
        ));
        std::fs::remove_file(d.join("client.key")).unwrap();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        let bundle = read("client.pem") + &read("client-key.pem");
        assert!(bundle.contains("BEGIN ENCRYPTED PRIVATE KEY"));
        std::fs::write(d.join("client-bundle.pem"), bundle).unwrap();
        Pki { dir, password }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// `events` with what varies between runs (timings) zeroed.
fn normalized(events: Vec<Value>) -> Vec<Value> {
    events
        .into_iter()
        .map(|mut e| {
            if e.get("duration_ms").is_some() {
                e["duration_ms"] = json!(0);
            }
            e
        })
        .collect()
}

// ------------------------------------------------------------------------------ MongoDB ---

/// A SecantusDB (from `scripts/secantus.sh install`) that accepts only TLS connections with a
/// client certificate signed by the test's CA. Started directly rather than through
/// `secantus.sh`, whose readiness probe speaks plaintext; it runs in the PKI's directory.
struct TlsSecantus {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl TlsSecantus {
    fn start(pki: &Pki) -> TlsSecantus {
        let bin = root().join(".cache/secantus/venv/bin/secantusd-py");
        assert!(
            bin.exists(),
            "this test needs SecantusDB: run scripts/test-all.sh (or scripts/secantus.sh install)"
        );
        let d = pki.dir.path();
        // An explicit empty config: no secantusd.toml found elsewhere changes the settings.
        std::fs::write(d.join("secantusd.toml"), "").unwrap();
        std::fs::create_dir(d.join("tmp")).unwrap();
        let port = common::http::free_port();
        let args = format!(
            "--config secantusd.toml --host 127.0.0.1 --port {port} --storage-path :memory: \
             --log-level WARNING --tls-cert-file server.pem --tls-key-file server.key \
             --tls-ca-file ca.pem --tls-require-client-cert"
        );
        let log = d.join("secantus.log");
        let child = Command::new(bin)
            .args(args.split_whitespace())
            .current_dir(d)
            .env("TMPDIR", d.join("tmp"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        TlsSecantus { child, port, log }
    }

    /// `mongodb://…` for this server with `options`: no `replicaSet`, so that the driver talks
    /// to exactly this address.
    fn uri(&self, options: &str) -> String {
        let port = self.port;
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&{options}")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsSecantus {
    fn drop(&mut self) {
        // SAFETY: a signal to the server process this test started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A MongoDB client of the test's own, kept open so that its connections are made once.
struct Probe {
    rt: tokio::runtime::Runtime,
    client: mongodb::Client,
}

impl Probe {
    fn new(uri: &str) -> Result<Probe, String> {
        // A worker thread keeps the driver's monitors running between calls, so that they do
        // not reconnect (and count as new sessions) after a pause.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let mut opts = mongodb::options::ClientOptions::parse(uri).await?;
            opts.server_selection_timeout = Some(Duration::from_millis(1500));
            mongodb::Client::with_options(opts)
        });
        let client = client.map_err(|e| e.to_string())?;
        Ok(Probe { rt, client })
    }

    /// Runs `command` on `db`; the error's text when it fails.
    fn run(&self, db: &str, command: Document) -> Result<Document, String> {
        let db = self.client.database(db);
        let reply = self.rt.block_on(async { db.run_command(command).await });
        reply.map_err(|e| e.to_string())
    }

    /// The connections the server has accepted so far. It counts a connection only once its
    /// TLS handshake (client certificate verified) has succeeded: it closes the others first.
    fn accepted_sessions(&self) -> i64 {
        let status = self.run("admin", doc! {"serverStatus": 1}).unwrap();
        let connections = status.get_document("connections").unwrap();
        match connections.get("totalCreated") {
            Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
            Some(mongodb::bson::Bson::Int64(n)) => *n,
            other => panic!("serverStatus.connections.totalCreated: {other:?}"),
        }
    }
}

/// Whether a new client for `uri` gets an answer to `ping`.
fn ping(uri: &str) -> Result<Document, String> {
    Probe::new(uri)?.run("admin", doc! {"ping": 1})
}

#[test]
#[ignore = "needs SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn the_mongodb_store_over_tls_with_a_password_protected_client_key() {
    let pki = Pki::new();
    let server = TlsSecantus::start(&pki);
    let tls = |password: &str| {
        format!(
            "tls=true&tlsCAFile={}&tlsCertificateKeyFile={}&tlsCertificateKeyFilePassword={password}",
            pki.path("ca.pem"),
            pki.path("client-bundle.pem")
        )
    };
    let uri = server.uri(&tls(&pki.password));
    // Ready: the listener is bound before the server answers, so poll, bounded.
    let started = Instant::now();
    while let Err(e) = ping(&uri) {
        let log = server.log();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the TLS SecantusDB did not answer within 30 s: {e}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let probe = Probe::new(&uri).unwrap();

    // The server speaks nothing but TLS with a client certificate.
    let plain = ping(&server.uri("tls=false"));
    assert!(plain.is_err(), "a plaintext client was served: {plain:?}");
    let no_cert = ping(&server.uri(&format!("tls=true&tlsCAFile={}", pki.path("ca.pem"))));
    assert!(
        no_cert.is_err(),
        "a client without a certificate was served: {no_cert:?}"
    );
    let refused = Instant::now();
    while !server.log().contains("peer did not return a certificate") {
        let log = server.log();
        assert!(
            refused.elapsed() < Duration::from_secs(5),
            "the server did not log the refused handshake:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let dir = tempfile::tempdir().unwrap();
    let database = format!("tls_{:08x}", rand::random::<u32>());
    let config = |uri: &str| {
        format!(
            "[pipeline]\nordered = true\n[collections.words]\nkey = \"text\"\n\
             [mongo]\nuri = \"{uri}\"\ndatabase = \"{database}\"\nserver_selection_timeout_ms = 5000\n"
        )
    };
    let cfg = write_config(dir.path(), &config(&server.uri(&tls(&pki.password))));
    let input = dir.path().join("requests.jsonl");
    let requests = [
        json!({"request_id": "tls-create", "collection": "words", "op": "create",
               "items": [{"text": "sluice"}, {"text": "weir", "pos": "noun"}, {"text": "lock"}]}),
        json!({"request_id": "tls-lookup", "collection": "words", "op": "lookup",
               "items": [{"key": "weir"}, {"key": "dam"}]}),
    ];
    let lines: Vec<String> = requests.iter().map(Value::to_string).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (output, state) = (
        dir.path().join("results.jsonl"),
        dir.path().join("state.db"),
    );

    let before = probe.accepted_sessions();
    run_ok(&run_args(&cfg, &input, &output, None, &state));
    let after = probe.accepted_sessions();
    // The probe's connections are open already: the new sessions are sluice's.
    eprintln!("TLS sessions accepted by the server: {before} before sluice ran, {after} after");
    assert!(after > before, "sluice's connections were TLS sessions");

    let events = read_lines(&output);
    check_once(&events);
    let source = |offset: u64| json!({"topic": "requests.jsonl", "partition": 0, "offset": offset});
    assert_eq!(
        normalized(events),
        vec![
            json!({"event": "progress", "request_id": "tls-create", "chunk": 0, "chunks": 1,
                   "items": [{"index": 0, "status": "ok"}, {"index": 1, "status": "ok"},
                             {"index": 2, "status": "ok"}],
                   "source": source(0)}),
            json!({"event": "completed", "request_id": "tls-create", "chunks": 1,
                   "counts": {"total": 3, "ok": 3, "skipped": 0, "failed": 0, "duplicate": 0,
                              "not_found": 0, "not_attempted": 0},
                   "duration_ms": 0, "source": source(0)}),
            json!({"event": "progress", "request_id": "tls-lookup", "chunk": 0, "chunks": 1,
                   "items": [{"index": 0, "status": "ok", "doc": {"text": "weir", "pos": "noun"}},
                             {"index": 1, "status": "not_found"}],
                   "source": source(1)}),
            json!({"event": "completed", "request_id": "tls-lookup", "chunks": 1,
                   "counts": {"total": 2, "ok": 1, "skipped": 0, "failed": 0, "duplicate": 0,
                              "not_found": 1, "not_attempted": 0},
                   "duration_ms": 0, "source": source(1)}),
        ]
    );
    let count = probe.run(&database, doc! {"count": "words"}).unwrap();
    assert_eq!(
        count.get_i32("n").ok(),
        Some(3),
        "the words are in MongoDB: {count}"
    );

    // The key really is encrypted: with a wrong password sluice cannot use it, and says so.
    let wrong = write_config(dir.path(), &config(&server.uri(&tls("not-the-password"))));
    let out = sluice()
        .arg("run")
        .args(run_args(
            &wrong,
            &input,
            &dir.path().join("o2.jsonl"),
            None,
            &dir.path().join("s2.db"),
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ran with a wrong key password: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("decrypt"),
        "names the key problem: {stderr}"
    );
    assert!(
        !stderr.contains("not-the-password"),
        "echoed the key password: {stderr}"
    );

    // `config check` prints the effective config with the key password masked.
    let cfg = write_config(dir.path(), &config(&server.uri(&tls(&pki.password))));
    let check = sluice()
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "config check: {printed}");
    assert!(
        printed.contains("tlsCertificateKeyFilePassword"),
        "prints the uri: {printed}"
    );
    assert!(
        !printed.contains(&pki.password),
        "config check printed the client key password:\n{printed}"
    );
}

// -------------------------------------------------------------------------------- Kafka ---

/// librdkafka settings for a TLS client of the test's CA, with the client certificate and its
/// encrypted key when `with_cert`.
fn ssl_properties(pki: &Pki, with_cert: bool) -> Vec<(&'static str, String)> {
    let mut p = vec![
        ("security.protocol", "ssl".to_string()),
        ("ssl.ca.location", pki.path("ca.pem")),
    ];
    if with_cert {
        p.push(("ssl.certificate.location", pki.path("client.pem")));
        p.push(("ssl.key.location", pki.path("client-key.pem")));
        p.push(("ssl.key.password", pki.password.clone()));
    }
    p
}

/// Whether a client with `props` gets the cluster's metadata from `brokers` within 5 s.
fn metadata_ok(brokers: &str, props: &[(&'static str, String)]) -> Result<(), String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "tls-probe");
    for (k, v) in props {
        config.set(*k, v);
    }
    let c: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    c.fetch_metadata(None, Duration::from_secs(5))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn kafka_over_tls_with_client_certificates_results_once() {
    assert!(
        root().join(".cache/kafka/libs").is_dir(),
        "this test needs the Kafka jars: run scripts/test-all.sh (or scripts/kafka.sh install)"
    );
    let pki = Pki::new();
    // The broker's key store: its key and certificate chain; its trust store: the CA
    // (keytool marks it trusted for Java, which a store made by openssl 3.0 would not).
    let (keystore, truststore, pw) = (pki.path("broker.p12"), pki.path("trust.p12"), &pki.password);
    let d = pki.dir.path();
    exec(
        "openssl",
        d,
        &format!(
            "pkcs12 -export -name broker -in server.pem -inkey server.key -certfile ca.pem \
         -out broker.p12 -passout pass:{pw}"
        ),
    );
    exec(
        "keytool",
        d,
        &format!(
            "-importcert -noprompt -alias ca -file ca.pem -storetype PKCS12 -keystore trust.p12 \
         -storepass {pw}"
        ),
    );
    let ssl_port = common::http::free_port();
    let broker = OwnBroker::start_with_env(&[
        ("KAFKA_SSL_PORT", ssl_port.to_string()),
        ("KAFKA_SSL_KEYSTORE", keystore),
        ("KAFKA_SSL_TRUSTSTORE", truststore),
        ("KAFKA_SSL_PASSWORD", pki.password.clone()),
        ("KAFKA_SSL_CLIENT_AUTH", "required".to_string()),
    ]);
    let ssl = format!("127.0.0.1:{ssl_port}");

    // The SSL listener serves a client with a certificate, and only such a client.
    metadata_ok(&ssl, &ssl_properties(&pki, true)).expect("a client with a certificate");
    let refused = [
        ("plaintext", metadata_ok(&ssl, &[])),
        (
            "TLS without a certificate",
            metadata_ok(&ssl, &ssl_properties(&pki, false)),
        ),
    ];
    for (what, r) in refused {
        assert!(r.is_err(), "a {what} client was served by the SSL listener");
    }

    // sluice knows only the SSL listener (topics create included); the test's own producer
    // and read_committed reader use the plaintext one.
    let mut props = String::from("[kafka.properties]\n");
    for (k, v) in ssl_properties(&pki, true) {
        props += &format!("'{k}' = '{v}'\n");
    }
    let mut env = setup_with(ssl.clone(), "tls", 3, &props);
    env.brokers = broker.address();
    let check = sluice()
        .args(["config", "check"])
        .arg(&env.cfg)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "config check: {printed}");
    assert!(
        printed.contains(&format!("brokers = \"{ssl}\"")),
        "{printed}"
    );
    assert!(
        !printed.contains(&pki.password),
        "config check printed ssl.key.password:\n{printed}"
    );

    let svc = env.service("a");
    let records: Vec<(Option<String>, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                Some(format!("k{i}")),
                create(&format!("tls-{i}"), (0..=i).map(|j| format!("w{i}-{j}"))),
            )
        })
        .collect();
    env.produce(&records);
    let events = env.results(records.len(), Duration::from_secs(60));
    stop(svc);
    let terminal = check_once(&events);
    assert_eq!(
        terminal.len(),
        records.len(),
        "one terminal event per request"
    );
    for e in terminal.values() {
        let i: usize = e["request_id"].as_str().unwrap()["tls-".len()..]
            .parse()
            .unwrap();
        assert_eq!(e["event"], "completed", "{e}");
        assert_eq!(e["counts"]["ok"], i + 1, "every item applied: {e}");
    }
    assert_eq!(
        env.count_words(),
        (1..=6).sum::<i64>(),
        "every write applied once"
    );
}
