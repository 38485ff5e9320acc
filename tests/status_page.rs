//! The status page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven through chromedriver's WebDriver protocol) opens the page of a
//! running sluice, a request runs meanwhile, and its progress bars — in the in-flight list and
//! in the search panel, both fed by the SSE stream — reach 100 % and its terminal event
//! appears. A screenshot is written to `$CARGO_TARGET_TMPDIR/status-page.png`.
//!
//! The store is SecantusDB (`SLUICE_TEST_MONGO`): its transactions are slow enough that a
//! 400-chunk request is still in flight when the page lists requests (every second).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::http::{free_port, wait_for, Sluice};
use common::services::{mongo, mongo_section};
use common::status::*;
use serde_json::{json, Value};

/// A chromedriver of the test's own, stopped when dropped.
struct Driver {
    child: Child,
    base: String,
    session: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(30), || {
            agent()
                .get(format!("{base}/status"))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,900"]}}}});
        let mut d = Driver {
            child,
            base,
            session: String::new(),
        };
        let v = d.call("POST", "/session", Some(caps));
        d.session = v["sessionId"].as_str().expect("a session").to_string();
        d
    }

    /// A WebDriver command → its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut resp = match body {
            Some(b) => agent()
                .post(&url)
                .header("content-type", "application/json")
                .send(b.to_string())
                .unwrap(),
            None if method == "DELETE" => agent().delete(&url).call().unwrap(),
            None => agent().get(&url).call().unwrap(),
        };
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert!(v["value"].get("error").is_none(), "{method} {path}: {v}");
        v["value"].clone()
    }

    /// Runs `script` in the page and returns its result.
    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = agent()
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs chromium, chromium-driver and SLUICE_TEST_MONGO: run scripts/test-all.sh"]
fn the_page_shows_a_running_request_reach_100_percent_and_its_terminal_event() {
    let uri = mongo();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}{}[chunk]\nmax_items = 5\n",
        section(8),
        mongo_section(&uri)
    );
    let mut s = Sluice::start_with(dir.path(), "", &extra);
    let driver = Driver::start();
    let page = format!("http://127.0.0.1:{}/#token={TOKEN}&request=pg-1", s.port);
    driver.call("POST", "/url", Some(json!({"url": page})));
    let title = driver.eval("return document.title;");
    assert_eq!(title, "sluice — requests");
    assert_eq!(
        driver.eval("return location.hash;"),
        "",
        "the token leaves the address bar"
    );
    let items: Vec<Value> = (0..2000)
        .map(|i| json!({"text": format!("pg-{i}")}))
        .collect();
    s.send(
        &json!({"request_id": "pg-1", "collection": "words", "op": "create", "items": items})
            .to_string(),
    );
    let started = Instant::now();
    let row = r#"const r = document.querySelector('tr[data-id="pg-1"]');
                 return r ? { percent: r.querySelector('.bar').dataset.percent,
                              outcome: r.children[4].textContent } : null;"#;
    // The in-flight list picks it up while it runs.
    wait_for(
        "pg-1 in the in-flight list",
        Duration::from_secs(120),
        || !driver.eval(row).is_null(),
    );
    let seen_running = driver.eval(row);
    eprintln!("listed after {:?}: {seen_running}", started.elapsed());
    assert_ne!(seen_running["percent"], "100", "listed while it runs");
    let panel = r#"return { percent: document.getElementById('onebar').dataset.percent,
                            events: document.querySelectorAll('#events li').length,
                            terminal: (document.querySelector('#events li.terminal') || {}).textContent || null,
                            state: document.getElementById('onestate').textContent };"#;
    wait_for(
        "the terminal event on the page",
        Duration::from_secs(300),
        || {
            let p = driver.eval(panel);
            let r = driver.eval(row);
            p["terminal"].is_string() && r["outcome"].as_str().is_some_and(|o| !o.is_empty())
        },
    );
    let p = driver.eval(panel);
    let r = driver.eval(row);
    eprintln!("finished after {:?}: {p} {r}", started.elapsed());
    assert_eq!(p["percent"], "100");
    assert_eq!(p["events"], 401, "400 progress events and the terminal one");
    assert!(
        p["terminal"]
            .as_str()
            .unwrap()
            .contains("\"event\":\"completed\""),
        "{p}"
    );
    assert_eq!(p["state"], "pg-1: completed");
    assert_eq!(r["percent"], "100");
    assert!(
        r["outcome"]
            .as_str()
            .unwrap()
            .starts_with("completed · 2000 ok"),
        "{r}"
    );
    // The last event on the page is the terminal event the API holds, byte for byte.
    let (_, body) = get(s.port, "/v1/requests/pg-1/events");
    assert_eq!(Some(p["terminal"].as_str().unwrap()), body.lines().last());
    let shot = driver.call("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    drop(driver);
    s.finish();
}
