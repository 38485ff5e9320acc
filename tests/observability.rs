//! What an SRE sees: `/healthz`, `/readyz` (which turns false while the store is unreachable
//! and true again after), `/metrics`, the alert rules (promtool), and a real Prometheus
//! scraping a running sluice against which every dashboard query and alert expression is run.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::*;
use common::*;
use serde_json::Value;

fn ready(s: &Sluice) -> Option<bool> {
    s.get("/readyz").map(|(code, body)| {
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], code == 200, "{body}");
        code == 200
    })
}

#[test]
fn health_readiness_and_metrics_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Sluice::start(dir.path(), "");
    let (code, body) = s.get("/healthz").unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    wait_for("ready", Duration::from_secs(10), || ready(&s) == Some(true));
    s.send_creates("a", 10);

    // Another process holds the database's write lock: the store is unreachable for sluice.
    let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    wait_for(
        "not ready while the store is locked",
        Duration::from_secs(15),
        || ready(&s) == Some(false),
    );
    let (code, body) = s.get("/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("store unavailable"), "{body}");
    conn.execute_batch("ROLLBACK").unwrap();
    wait_for(
        "ready again once the lock is gone",
        Duration::from_secs(15),
        || ready(&s) == Some(true),
    );

    s.send_creates("b", 10);
    wait_for("requests committed", Duration::from_secs(30), || {
        s.get("/metrics").is_some_and(|(_, m)| {
            m.contains("sluice_requests_total{op=\"create\",outcome=\"completed\"} 20")
        })
    });
    let (code, metrics) = s.get("/metrics").unwrap();
    assert_eq!(code, 200);
    for needle in [
        "# HELP sluice_records_consumed_total",
        "# TYPE sluice_chunk_duration_seconds histogram",
        "sluice_items_total{op=\"create\",status=\"ok\"} 100",
        "sluice_stage_queue_depth{stage=\"execute\"}",
        "sluice_ready 1",
        "sluice_store_up 1",
        "sluice_build_info{version=",
        "process_resident_memory_bytes",
        "sluice_end_to_end_latency_seconds_bucket{le=\"0.005\"}",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle}");
    }
    assert!(!metrics.contains("request_id="), "no request ids as labels");
    s.finish();
}

/// The path of an installed tool; the tests that use one are `#[ignore]`d and run by
/// scripts/test-all.sh (which installs Prometheus), so a missing tool is an error there.
fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "this test needs {name}: apt-get install prometheus, or run scripts/test-all.sh"
    );
    path
}

#[test]
#[ignore = "needs promtool (apt-get install prometheus): run scripts/test-all.sh"]
fn alert_rules_pass_their_unit_tests() {
    let promtool = tool("promtool");
    let rules = root().join("grafana/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .current_dir(&rules)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `sluice_…` / `process_…` metric name an expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        if (rest.starts_with("sluice_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
#[ignore = "needs prometheus (apt-get install prometheus): run scripts/test-all.sh"]
fn dashboard_and_alerts_match_live_metrics_in_prometheus() {
    let prometheus = tool("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let mut s = Sluice::start(dir.path(), "[pipeline]\ncommit_interval_ms = 50\n");
    // Traffic with every kind of outcome: the examples (rejections, duplicates, dead letters).
    for line in std::fs::read_to_string(root().join("examples/requests.jsonl"))
        .unwrap()
        .lines()
    {
        s.send(line);
    }
    s.send_creates("w", 50);

    let prom_port = free_port();
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let rules = root().join("grafana/prometheus/alerts.yml");
    let prom_cfg = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            rules.display(),
            s.port
        ),
    )
    .unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(prom_dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{prom_port}/api/v1");
    let query = |q: &str| -> Value {
        let (code, body) =
            get(&format!("{api}/query"), &[("query", q)]).unwrap_or((0, String::new()));
        serde_json::from_str(&body)
            .unwrap_or_else(|_| serde_json::json!({"status": "error", "code": code, "body": body}))
    };

    // Keep traffic flowing while Prometheus scrapes; lock the store for a while so the retry
    // and store-error series exist too.
    wait_for("prometheus up", Duration::from_secs(60), || {
        query("up")["status"] == "success"
    });
    let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
    for round in 0..12 {
        if round == 3 {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        }
        if round == 6 {
            conn.execute_batch("ROLLBACK").unwrap();
        }
        s.send_creates(&format!("r{round}-"), 10);
        s.send("not json");
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for("several scrapes", Duration::from_secs(60), || {
        query("count_over_time(up{job=\"sluice\"}[1m])")["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n >= 8.0)
    });

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("grafana/dashboards/sluice.json")).unwrap(),
    )
    .unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "5s");
            let r = query(&expr);
            checked += 1;
            if r["status"] != "success" {
                failures.push(format!(
                    "panel {:?}: invalid query {expr}: {r}",
                    panel["title"]
                ));
            } else if r["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                failures.push(format!("panel {:?}: no series for {expr}", panel["title"]));
            }
        }
    }
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let rules_yaml: serde_yaml::Value = serde_yaml::from_str(&rules_text).unwrap();
    for rule in rules_yaml["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        checked += 1;
        if query(expr)["status"] != "success" {
            failures.push(format!(
                "alert {:?}: invalid expression {expr}",
                rule["alert"]
            ));
        }
        for name in metric_names(expr) {
            let r = query(&format!("count({{__name__=\"{name}\"}})"));
            if r["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                failures.push(format!(
                    "alert {:?}: metric {name} has no series",
                    rule["alert"]
                ));
            }
        }
    }
    let (_, rules_state) = get(&format!("{api}/rules"), &[]).unwrap();
    let rules_state: Value = serde_json::from_str(&rules_state).unwrap();
    for rule in rules_state["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
    {
        if rule["health"] != "ok" {
            failures.push(format!(
                "rule {} unhealthy: {}",
                rule["name"], rule["lastError"]
            ));
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(checked >= 25, "checked only {checked} expressions");
    assert!(
        failures.is_empty(),
        "{} of {checked} expressions fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    s.finish();
}
