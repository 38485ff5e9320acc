//! What users deploy cannot be run here (no container registry to pull base images, no
//! Kubernetes): check that it lines up with the code instead — the image installs what the
//! binary links and what its build features need; the Kubernetes example's config is valid
//! with its environment, names the pod as the instance, takes its secrets from the Secret and
//! probes the endpoints the listener serves.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use serde_yaml::Value;

/// The `apt-get install` packages of each stage of the Dockerfile, in order.
fn dockerfile_stages() -> Vec<BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut stages: Vec<BTreeSet<String>> = Vec::new();
    // One instruction per logical line (backslash continuations joined).
    let joined = text.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        if line.starts_with("FROM ") {
            stages.push(BTreeSet::new());
        }
        for cmd in line.split("&&") {
            let cmd = cmd.trim();
            let cmd = cmd.strip_prefix("RUN ").unwrap_or(cmd).trim();
            if let Some(args) = cmd.strip_prefix("apt-get install") {
                let pkgs = args.split_whitespace().filter(|a| !a.starts_with('-'));
                stages.last_mut().unwrap().extend(pkgs.map(String::from));
            }
        }
    }
    stages
}

#[test]
fn the_image_builds_with_the_features_cargo_asks_for() {
    let stages = dockerfile_stages();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let rdkafka = cargo
        .lines()
        .find(|l| l.starts_with("rdkafka ="))
        .expect("rdkafka in [workspace.dependencies]");
    if rdkafka.contains("cmake-build") {
        assert!(
            stages[0].contains("cmake"),
            "rdkafka's cmake-build needs cmake: {stages:?}"
        );
    }
    if rdkafka.contains("\"ssl\"") {
        assert!(
            stages[0].contains("libssl-dev"),
            "rdkafka's ssl: {stages:?}"
        );
        assert!(
            stages[1].contains("libssl3"),
            "rdkafka's ssl at run time: {stages:?}"
        );
    }
    assert!(
        stages[1].contains("ca-certificates"),
        "TLS to managed Kafka needs the CA bundle: {stages:?}"
    );
}

/// Every shared library the binary links comes from a package the runtime stage installs, or
/// from one every Debian image has (the runtime stage is Debian bookworm, like this host).
#[test]
#[cfg(target_os = "linux")]
fn the_runtime_stage_installs_every_library_the_binary_links() {
    if Command::new("dpkg").arg("--version").output().is_err() {
        panic!("this check needs a Debian host (dpkg) to map libraries to packages");
    }
    let installed = &dockerfile_stages()[1];
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout).to_string();
    assert!(!text.contains("not found"), "{text}");
    let mut packages = BTreeSet::new();
    for line in text.lines() {
        // "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x…)", or the loader's own path.
        let path = match line.split("=>").nth(1) {
            Some(rest) => rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            None => line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        if !path.starts_with('/') {
            continue; // linux-vdso
        }
        // dpkg knows a file by the path its package installed, which (usrmerge) may be the
        // symlink ldd names, the file it points to, or that file without the /usr prefix.
        let real = std::fs::canonicalize(&path).unwrap().display().to_string();
        let unmerged = real.strip_prefix("/usr").unwrap_or(&real).to_string();
        let pkg = [path.clone(), real, unmerged]
            .iter()
            .find_map(|candidate| {
                let out = Command::new("dpkg")
                    .arg("-S")
                    .arg(candidate)
                    .output()
                    .ok()?;
                let owner = String::from_utf8_lossy(&out.stdout).to_string();
                let pkg = owner.split(':').next()?.trim().to_string();
                (out.status.success() && !pkg.is_empty()).then_some(pkg)
            })
            .unwrap_or_else(|| panic!("no package owns {path}"));
        packages.insert(pkg.to_string());
    }
    assert!(
        packages.contains("libssl3"),
        "the probe saw the TLS library: {packages:?}"
    );
    for pkg in &packages {
        assert!(
            ["libc6", "libgcc-s1"].contains(&pkg.as_str()) || installed.contains(pkg),
            "the binary links a library of {pkg}, which the runtime stage does not install \
             ({installed:?})\n{text}"
        );
    }
}

fn kubernetes() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/sluice.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kubernetes_example_lines_up_with_the_code() {
    let docs = kubernetes();
    let (config_map, secret) = (kind(&docs, "ConfigMap"), kind(&docs, "Secret"));
    let (set, service) = (kind(&docs, "StatefulSet"), kind(&docs, "Service"));
    let pod = &set["spec"]["template"];
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    assert_eq!(
        service["spec"]["selector"], pod["metadata"]["labels"],
        "the Service selects the pods"
    );
    let container = &pod["spec"]["containers"][0];

    // The environment the pod gets: the pod name, and the Secret's values.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let from = &e["valueFrom"];
        let value = if from["fieldRef"]["fieldPath"] == "metadata.name" {
            "sluice-1".to_string()
        } else {
            let r = &from["secretKeyRef"];
            assert_eq!(r["name"], secret["metadata"]["name"], "{name}");
            let key = r["key"].as_str().unwrap();
            secret["stringData"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: the Secret has no {key}"))
                .to_string()
        };
        env.push((name, value));
    }

    // The ConfigMap mounted where the args say, valid with that environment.
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--config", &format!("{mount}/sluice.toml")]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, config_map["data"]["sluice.toml"].as_str().unwrap()).unwrap();
    let out = sluice()
        .args(["config", "check", cfg.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("instance_id = \"sluice-1\""),
        "the pod name is the instance id:\n{printed}"
    );
    assert!(
        printed.contains("mongo-0.mongo"),
        "the URI from the Secret:\n{printed}"
    );
    assert!(
        !printed.contains("CHANGE-ME"),
        "no secret printed:\n{printed}"
    );

    // Every file the Kafka client reads is a key of the Secret mounted there.
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let toml: toml::Value =
        toml::from_str(config_map["data"]["sluice.toml"].as_str().unwrap()).unwrap();
    let files: Vec<&str> = toml["kafka"]["properties"]
        .as_table()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with(".location"))
        .map(|(_, v)| v.as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "CA, certificate and key files: {toml}");
    for file in files {
        let (dir, key) = file.rsplit_once('/').unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        let name = &volume["secret"]["secretName"];
        let secret = docs
            .iter()
            .find(|d| d["kind"] == "Secret" && &d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Secret {name:?}"));
        assert!(
            secret["stringData"].get(key).is_some(),
            "{file}: Secret {name:?} has no key {key}"
        );
    }

    // Probes on the port the listener serves.
    let listen = printed
        .lines()
        .find(|l| l.starts_with("listen"))
        .and_then(|l| l.split('"').nth(1))
        .expect("observability.listen is set");
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(port));
    let port_name = &container["ports"][0]["name"];
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(&container[probe]["httpGet"]["port"], port_name, "{probe}");
    }
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(port));
}
