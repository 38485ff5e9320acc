//! `sluice bench` as a user runs it: it exits 0 and prints each figure next to its same-run
//! baseline. Figures are never asserted against a time (shared 2-core machines are noisy); the
//! tests check that every row and ratio is there and reads as a number.

mod common;
use common::*;

/// The standard output of `sluice bench ARGS`, which must exit 0.
fn bench(args: &[&str]) -> String {
    String::from_utf8_lossy(&sluice_ok("bench", args).stdout).into_owned()
}

/// The number right after `label` on the line that starts with it.
fn figure_after(out: &str, label: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{out}"));
    let rest = line[label.len()..].trim_start();
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("{label:?} is not followed by a number: {line}"))
}

#[test]
fn embedded_bench_prints_pipeline_next_to_its_baseline() {
    let stdout = bench(&["--requests", "20", "--items", "5"]);
    assert!(figure_after(&stdout, "raw SQLite insert (baseline)") > 0.0);
    assert!(figure_after(&stdout, "sluice embedded pipeline") > 0.0);
    assert!(figure_after(&stdout, "pipeline / baseline:") > 0.0);
    assert!(figure_after(&stdout, "pipeline CPU:") > 0.0);
    assert!(stdout.contains("µs per item"), "{stdout}");
    assert!(figure_after(&stdout, "peak RSS:") > 0.0);
}

#[test]
#[ignore = "needs a Kafka broker (SLUICE_TEST_KAFKA); scripts/test-all.sh runs it"]
fn kafka_bench_prints_four_rows_with_cpu_per_request() {
    let broker = common::kafka::broker();
    let stdout = bench(&["--kafka", &broker, "--requests", "20", "--items", "3"]);
    let header = stdout
        .lines()
        .find(|l| l.contains("requests/s"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    assert!(
        header.contains("CPU µs/req") && header.contains("cores"),
        "{header}"
    );
    for row in [
        "raw rdkafka consume → produce",
        "sluice at-least-once",
        "sluice exactly-once",
        "sluice exactly-once, no store",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row) && l[row.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        let cells: Vec<&str> = line[row.len()..].split_whitespace().collect();
        assert_eq!(cells.len(), 7, "{line}");
        let req_per_s: f64 = cells[0].parse().unwrap();
        let cpu_per_req: f64 = cells[5].parse().unwrap();
        let cores: f64 = cells[6].parse().unwrap();
        assert!(
            req_per_s > 0.0 && cpu_per_req > 0.0 && cores >= 0.0,
            "{line}"
        );
    }
    assert!(figure_after(&stdout, "exactly-once / at-least-once:") > 0.0);
    assert!(figure_after(&stdout, "exactly-once without store work / raw ceiling:") > 0.0);
}

#[test]
#[ignore = "needs a Kafka broker (SLUICE_TEST_KAFKA); scripts/test-all.sh runs it"]
fn latency_bench_prints_percentiles_per_offered_rate() {
    let broker = common::kafka::broker();
    let stdout = bench(&[
        "--kafka",
        &broker,
        "--rate",
        "20,50%",
        "--seconds",
        "1",
        "--requests",
        "20",
    ]);
    assert!(figure_after(&stdout, "saturated rate:") > 0.0);
    let header = stdout
        .lines()
        .find(|l| l.starts_with("offered requests/s"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    for column in ["p50 ms", "p90 ms", "p99 ms", "max ms", "kafka p50 ms"] {
        assert!(header.contains(column), "{header}");
    }
    // The burst, then one row per offered rate: each cell a number, percentiles in order.
    let rows: Vec<Vec<f64>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("offered requests/s"))
        .skip(1)
        .take_while(|l| !l.starts_with('('))
        .map(|l| {
            let cells = l.strip_prefix("burst (saturated)").unwrap_or(l);
            cells
                .split_whitespace()
                .map(|c| c.parse().unwrap_or_else(|_| panic!("{c:?} in {l}")))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for (i, row) in rows.iter().enumerate() {
        // burst: achieved, requests, p50, p90, p99, max, kafka p50, kafka p99; rates: offered first.
        let cells = if i == 0 { &row[..] } else { &row[1..] };
        assert_eq!(cells.len(), 8, "{row:?}");
        assert!(cells[0] > 0.0 && cells[1] >= 1.0, "{row:?}");
        let p = &cells[2..6];
        assert!(p[0] <= p[1] && p[1] <= p[2] && p[2] <= p[3], "{row:?}");
    }
    assert_eq!(rows[1][0], 20.0, "the first offered rate: {stdout}");
}
