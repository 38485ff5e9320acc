//! Every config the repository ships parses and validates; a broken one names its field.

mod common;

use common::*;

#[test]
fn every_example_config_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = sluice_ok("config", &["check", path.to_str().unwrap()]);
            let printed = String::from_utf8_lossy(&out.stdout);
            assert!(
                printed.contains("[collections.words]"),
                "the check prints the effective config"
            );
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn a_bad_config_fails_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[chunk]\nmax_items = 0\n");
    let out = sluice()
        .args(["config", "check", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`chunk.max_items`"));
    let out = sluice()
        .args(["config", "check", cfg.to_str().unwrap()])
        .env("SLUICE__CHUNK__MAX_ITEMS", "5")
        .env("SLUICE__PIPELINE__CHANNEL_CAPACITTY", "5")
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown env keys are rejected too");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("channel_capacitty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
