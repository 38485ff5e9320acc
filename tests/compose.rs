//! docker-compose.yml cannot run here (no Docker engine): check that it lines up with the
//! repository — mounted files exist, services start in dependency order behind health checks,
//! Prometheus scrapes the port sluice listens on, sluice talks to the compose Kafka and MongoDB.

mod common;

use common::*;
use serde_yaml::Value;

fn load(path: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

#[test]
fn compose_file_lines_up_with_the_repository() {
    let compose = load("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    for name in [
        "kafka",
        "mongo",
        "topics",
        "sluice",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    for (name, svc) in services {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if let Some(rel) = src.strip_prefix("./") {
                assert!(
                    root().join(rel).exists(),
                    "{name:?} mounts {src}, which does not exist"
                );
            } else {
                assert!(
                    compose["volumes"].get(src).is_some(),
                    "{name:?}: named volume {src} is not declared"
                );
            }
        }
        for (dep, cond) in svc["depends_on"].as_mapping().into_iter().flatten() {
            assert!(
                services.contains_key(dep),
                "{name:?} depends on unknown {dep:?}"
            );
            match cond["condition"].as_str().unwrap() {
                "service_healthy" => assert!(
                    services[dep].get("healthcheck").is_some(),
                    "{dep:?} needs a healthcheck"
                ),
                "service_completed_successfully" => {
                    assert_eq!(services[dep]["restart"], "no", "{dep:?} is one-shot")
                }
                other => panic!("{name:?} waits for {dep:?} with condition {other}"),
            }
        }
    }
    // The sluice service's config is valid and listens where Prometheus scrapes.
    let listen = sluice_config_listen();
    let port = listen.rsplit(':').next().unwrap().to_string();
    let prom = load("grafana/prometheus/prometheus.yml");
    let target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap();
    assert_eq!(target, format!("sluice:{port}"));
    let published = services[&Value::from("sluice")]["ports"][0]
        .as_str()
        .unwrap();
    assert!(published.ends_with(&format!(":{port}")), "{published}");
    assert!(
        prom["rule_files"][0]
            .as_str()
            .unwrap()
            .ends_with("alerts.yml"),
        "prometheus loads the alert rules"
    );
    // sluice's config points at the compose services.
    let cfg = std::fs::read_to_string(root().join("deploy/sluice.toml")).unwrap();
    assert!(
        cfg.contains("brokers = \"kafka:9092\""),
        "sluice talks to the compose Kafka"
    );
    assert!(
        cfg.contains("mongodb://mongo:27017/?replicaSet=rs0"),
        "sluice talks to the compose replica set"
    );
    let mongo_cmd = services[&Value::from("mongo")]["command"]
        .as_sequence()
        .unwrap();
    assert!(
        mongo_cmd.iter().any(|c| c == "rs0"),
        "mongod runs as replica set rs0"
    );
    for svc in ["topics", "sluice"] {
        assert_eq!(
            services[&Value::from(svc)]["build"],
            ".",
            "{svc} is built from this repository"
        );
    }
}

fn sluice_config_listen() -> String {
    let out = sluice_ok("config", &["check", "deploy/sluice.toml"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("listen"))
        .expect("observability.listen is set");
    line.split('"').nth(1).unwrap().to_string()
}
