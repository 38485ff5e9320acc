//! No secret of the configuration leaves the process: a distinct secret is planted in every
//! place one can be configured — the MongoDB URI's password and its sensitive options, every
//! sensitive librdkafka property, an environment variable, a value of the wrong type, a line
//! with a TOML syntax error — and every output of every command is searched for all of them:
//! `config check`, start-up errors ("cannot reach MongoDB", "Kafka is not usable"), logs at
//! trace level with librdkafka's debug output, and (with a broker) a running service's
//! `/healthz`, `/readyz` and `/metrics`.

mod common;

use std::io::Read;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::kafka::*;
use common::*;

/// Every planted secret starts with this (or is [`NUMERIC`]); no output may hold either —
/// whatever part or form (percent-decoded, escaped) of a secret it quotes.
const PLANTED: &str = "Pl4nt";
/// A secret of the wrong type (an integer where a string belongs).
const NUMERIC: &str = "987654321";

/// A MongoDB URI with a password and sensitive options, against a port nobody listens on.
const MONGO_URI: &str = "mongodb://AKIAEXAMPLE:Pl4nt-uri%40pw@127.0.0.1:9/?authMechanismProperties=AWS_SESSION_TOKEN:Pl4nt-awstoken&serverSelectionTimeoutMS=500";

/// Sensitive librdkafka properties, each with its own secret (librdkafka accepts them all
/// beside a plaintext broker).
const KAFKA_SECRETS: &str = r#"
'sasl.password' = "Pl4nt-sasl"
'ssl.key.password' = "Pl4nt-sslkey"
'sasl.oauthbearer.extensions' = "tenant=Pl4nt-ext"
'sasl.oauthbearer.client.secret' = "Pl4nt-client"
"#;

/// A property librdkafka refuses, quoting its value in the error.
const JAAS: &str = "'sasl.jaas.config' = \"Pl4nt-jaas\"\n";

fn assert_clean(what: &str, text: &str) {
    for secret in [PLANTED, NUMERIC] {
        assert!(
            !text.contains(secret),
            "{what} printed a secret ({secret}…):\n{text}"
        );
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `sluice args…` at trace level (with `envs`); returns its status and everything it
/// printed, after checking that none of it holds a secret.
fn run(what: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = sluice()
        .args(args)
        .env("SLUICE_LOG", "trace")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("sluice runs");
    let text = output_text(&out);
    assert_clean(what, &text);
    (out.status.success(), text)
}

#[test]
fn no_command_prints_a_secret_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();

    // `config check` of a config holding every kind of secret: valid, masked.
    write(
        "all.toml",
        &format!(
            "[mongo]\nuri = \"{MONGO_URI}&tlsCertificateKeyFilePassword=Pl4nt-keyfile\"\n\
             [observability]\nlisten = \"127.0.0.1:9\"\n\
             [status]\nenabled = true\ntoken = \"Pl4nt-status-bearer-token\"\n\
             [kafka]\nbrokers = \"127.0.0.1:9\"\n[kafka.properties]\n{KAFKA_SECRETS}{JAAS}"
        ),
    );
    let (ok, text) = run("config check", &["config", "check", &path("all.toml")], &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("'sasl.password' = '***'") || text.contains("\"sasl.password\" = \"***\""),
        "{text}"
    );
    assert!(text.contains("AKIAEXAMPLE:***@"), "{text}");
    assert!(
        text.contains("token = \"***\""),
        "the status token is masked: {text}"
    );

    // The same secrets from the environment.
    run(
        "config check with SLUICE__MONGO__URI",
        &["config", "check"],
        &[("SLUICE__MONGO__URI", "mongodb://u:Pl4nt-env@127.0.0.1:9/")],
    );

    // A secret of the wrong type, and a syntax error on a line holding a secret: the errors
    // say where and what, not the value.
    write(
        "numeric.toml",
        "[kafka]\nbrokers = \"127.0.0.1:9\"\n[kafka.properties]\n'sasl.password' = 987654321\n",
    );
    let (ok, text) = run(
        "a numeric password",
        &["config", "check", &path("numeric.toml")],
        &[],
    );
    assert!(!ok && text.contains("sasl.password"), "{text}");
    write(
        "syntax.toml",
        "[mongo]\nuri = \"mongodb://u:Pl4nt-syntax@h/\ndatabase = \"x\"\n",
    );
    let (ok, text) = run(
        "a syntax error",
        &["config", "check", &path("syntax.toml")],
        &[],
    );
    assert!(!ok && text.contains("line 2"), "{text}");

    // Start-up failures: the MongoDB store unreachable (its driver's errors included), at trace
    // level; with a key-file password the driver cannot use.
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    for (name, uri) in [
        ("mongo-aws.toml", MONGO_URI.to_string()),
        (
            "mongo-tls.toml",
            "mongodb://u:Pl4nt-uri%40pw@127.0.0.1:9/?tls=true&tlsCertificateKeyFile=/nonexistent.pem\
             &tlsCertificateKeyFilePassword=Pl4nt-keyfile&serverSelectionTimeoutMS=500"
                .to_string(),
        ),
    ] {
        write(
            name,
            &format!("[mongo]\nuri = \"{uri}\"\nserver_selection_timeout_ms = 500\n"),
        );
        let (ok, text) = run(
            name,
            &[
                "run",
                "-c",
                &path(name),
                "--input",
                &path("in.jsonl"),
                "--output",
                &path("out.jsonl"),
                "--state",
                &path("state.db"),
            ],
            &[],
        );
        assert!(!ok && text.contains("connecting to MongoDB"), "{name}: {text}");
    }

    // The Kafka service with its broker unreachable, librdkafka debugging everything.
    write(
        "kafka.toml",
        &format!(
            "[kafka]\nbrokers = \"127.0.0.1:9\"\noperation_timeout_ms = 2000\n\
             [kafka.properties]\n'debug' = 'all'\n'sasl.username' = 'app'\n{KAFKA_SECRETS}\
             [embedded]\nstate = \"{}\"\n",
            path("k.db")
        ),
    );
    let (ok, text) = run("kafka run", &["run", "-c", &path("kafka.toml")], &[]);
    assert!(!ok && text.contains("Kafka is not usable"), "{text}");
    let (ok, text) = run(
        "kafka run, JSON logs",
        &["run", "-c", &path("kafka.toml")],
        &[("SLUICE_LOG_FORMAT", "json")],
    );
    assert!(!ok && text.contains("Kafka is not usable"), "{text}");
    // The Kafka tools on the same config.
    let (ok, text) = run(
        "topics create",
        &["topics", "create", "-c", &path("kafka.toml")],
        &[],
    );
    assert!(!ok, "{text}");
    run(
        "tail",
        &[
            "tail",
            "-c",
            &path("kafka.toml"),
            "--request-id",
            "r",
            "--timeout-secs",
            "3",
        ],
        &[],
    );
    // A property librdkafka refuses: its error quotes the value.
    std::fs::write(
        dir.path().join("jaas.toml"),
        std::fs::read_to_string(dir.path().join("kafka.toml"))
            .unwrap()
            .replace("[embedded]", &format!("{JAAS}[embedded]")),
    )
    .unwrap();
    let (ok, text) = run("kafka run (jaas)", &["run", "-c", &path("jaas.toml")], &[]);
    assert!(!ok && text.contains("sasl.jaas.config"), "{text}");
}

/// GET `path` on 127.0.0.1:`port` → the whole response, status line included.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// SIGTERM, wait (bounded), and everything the process logged into `log`.
fn stop(mut child: Child, log: &std::path::Path) -> String {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    process::exited_within(&mut child, Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(log).unwrap()
}

/// A running Kafka service with every sensitive librdkafka property set (ignored by a
/// plaintext broker), logging at trace level with librdkafka's debug output: its logs and
/// its endpoints hold none of them.
#[test]
#[ignore = "needs SLUICE_TEST_KAFKA: run scripts/test-all.sh"]
fn a_running_service_prints_no_secret() {
    let port = common::http::free_port();
    let env = setup(
        "secrets",
        1,
        &format!(
            "[observability]\nlisten = \"127.0.0.1:{port}\"\n\
             [kafka.properties]\n'debug' = 'cgrp,topic,security'\n{KAFKA_SECRETS}"
        ),
    );
    let logs = tempfile::NamedTempFile::new().unwrap();
    let child = sluice()
        .args(["run", "-c", env.cfg.to_str().unwrap()])
        .env("SLUICE_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(logs.reopen().unwrap())
        .stderr(logs.as_file().try_clone().unwrap())
        .spawn()
        .unwrap();
    let w = crash_workload(3, 7);
    env.produce(&w.records);
    let results = env.results(w.total, Duration::from_secs(60));
    assert_eq!(
        check_once(&results).len(),
        w.total,
        "every request finished once"
    );
    let mut seen = String::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = http_get(port, path).unwrap_or_else(|| panic!("{path} answers"));
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        seen += &response;
    }
    assert_clean("the endpoints", &seen);
    let logs = stop(child, logs.path());
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logs were on"
    );
    assert_clean("the service's logs", &logs);
}
