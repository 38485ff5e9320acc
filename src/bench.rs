//! `sluice bench`: generates N create requests of M items, runs the embedded pipeline on them
//! and prints items/s, request latency percentiles and peak RSS — beside the raw SQLite insert
//! rate for the same documents at the same chunk size, measured in the same run. (With
//! `--kafka`, `main` runs `bench_kafka` instead.)

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use sluice_config::Config;
use sluice_connectors::embedded::EmbeddedIo;
use sluice_connectors::sqlite::{connect, key_text, table};
use sluice_pipeline::request::Key;
use sluice_pipeline::RunStats;

use crate::rss::{peak_rss_kib, Cost};
use crate::BenchArgs;

/// Item `i` of request `r`: a document of `words`, unique per (r, i) (for `bench_latency` too).
pub(crate) fn doc(r: usize, i: usize) -> serde_json::Value {
    serde_json::json!({
        "text": format!("w{r:06}-{i:05}"),
        "language": "en",
        "definition": "a channel for water with a gate to regulate its flow",
        "frequency": i,
    })
}

/// `sluice bench` without `--kafka`. The caller has loaded `config` and set up logging and the
/// metrics recorder.
pub async fn run(args: BenchArgs, mut config: Config) -> anyhow::Result<()> {
    crate::bench_kafka::add_words(&mut config, args.items);
    config.validate()?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("requests.jsonl");
    {
        let mut w = BufWriter::new(std::fs::File::create(&input)?);
        for r in 0..args.requests {
            let items: Vec<_> = (0..args.items).map(|i| doc(r, i)).collect();
            let req = serde_json::json!({
                "request_id": format!("bench-{r}"), "collection": "words", "op": "create", "items": items,
            });
            serde_json::to_writer(&mut w, &req)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    let input_bytes = std::fs::metadata(&input)?.len();
    let rss_before = peak_rss_kib().unwrap_or(0);
    let total_items = (args.requests * args.items) as f64;

    let io = EmbeddedIo {
        input: Some(input.clone()),
        output: Some(dir.path().join("results.jsonl")),
        dead_letters: None,
        state: dir.path().join("pipeline.db"),
        max_line_bytes: config.limits.read_cap(),
        fsync: false,
        follow: false,
    };
    let stats = Arc::new(RunStats::default());
    let chunk_items = config.chunk.max_items;
    let config = Arc::new(config);
    let cost = Cost::start();
    crate::embedded::run_pipeline(config.clone(), io, stats.clone(), std::future::pending())
        .await?;
    let Cost {
        cpu_secs: pipeline_cpu,
        wall_secs: pipeline_secs,
    } = cost.end();
    let peak_rss = peak_rss_kib().unwrap_or(0);
    let ok = RunStats::get(&stats.items) - RunStats::get(&stats.items_failed);
    anyhow::ensure!(
        ok as f64 == total_items,
        "pipeline reported {ok} ok items, expected {total_items}"
    );

    // Baseline: the same documents, inserted directly with the store's bulk insert, in
    // batches (SQLite: transactions) of the same chunk size.
    let (baseline, raw_secs) = match config.mongo.clone() {
        Some(m) => (
            "raw MongoDB insertMany (baseline)",
            mongo_baseline(&m, &args, chunk_items).await?,
        ),
        None => (
            "raw SQLite insert (baseline)",
            sqlite_baseline(dir, &args, chunk_items).await?,
        ),
    };
    let pipeline_name = if config.mongo.is_some() {
        "sluice pipeline (MongoDB store)"
    } else {
        "sluice embedded pipeline"
    };

    let p_rate = total_items / pipeline_secs;
    let r_rate = total_items / raw_secs;
    println!(
        "sluice bench: {} requests × {} items ({:.1} MiB of input), chunk = {chunk_items} items",
        args.requests,
        args.items,
        input_bytes as f64 / 1048576.0
    );
    println!("{:<34} {:>14} {:>10}", "", "items/s", "seconds");
    println!("{:<34} {:>14.0} {:>10.2}", baseline, r_rate, raw_secs);
    println!(
        "{:<34} {:>14.0} {:>10.2}",
        pipeline_name, p_rate, pipeline_secs
    );
    // Issue 13's goals: small requests (10 items) ≥ 50 % of raw inserts, large ones ≥ 75 %.
    let goal = if args.items <= 10 { 50 } else { 75 };
    println!(
        "pipeline / baseline: {} % (goal ≥ {goal} %)",
        percent(p_rate / r_rate)
    );
    println!(
        "pipeline CPU: {pipeline_cpu:.2} s, {:.2} µs per item, {:.2} cores busy",
        pipeline_cpu * 1e6 / total_items,
        pipeline_cpu / pipeline_secs
    );
    println!(
        "request latency (read → committed): p50 {:.1} ms, p99 {:.1} ms",
        stats.latency_quantile(0.50).as_secs_f64() * 1e3,
        stats.latency_quantile(0.99).as_secs_f64() * 1e3
    );
    println!(
        "peak RSS: {:.1} MiB (before the pipeline: {:.1} MiB; goal ≤ 64 MiB)",
        peak_rss as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    Ok(())
}

/// `ratio` as a percentage: whole percents from 10 % up, two significant digits below, so
/// that a small ratio (a tiny run, where start-up dominates) never reads 0.
pub(crate) fn percent(ratio: f64) -> String {
    let pct = 100.0 * ratio;
    let digits = if pct.is_finite() && pct > 0.0 {
        (1.0 - pct.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        0
    };
    format!("{pct:.digits$}")
}

/// Raw SQLite inserts of the same documents in transactions of `chunk_items`.
async fn sqlite_baseline(
    dir: tempfile::TempDir,
    args: &BenchArgs,
    chunk_items: usize,
) -> anyhow::Result<f64> {
    let (requests, items) = (args.requests, args.items);
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let path = dir.path().join("raw.db");
        let conn = connect(&path, std::time::Duration::from_secs(5))?;
        conn.execute_batch(&format!(
            "CREATE TABLE {} (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID",
            table("words")
        ))?;
        let sql = format!("INSERT INTO {} (key, doc) VALUES (?1, ?2)", table("words"));
        let mut elapsed = std::time::Duration::ZERO;
        let mut pending = 0;
        conn.execute_batch("BEGIN")?;
        for r in 0..requests {
            // Documents are prepared outside the timed part: the baseline is the insert alone.
            let rows = (0..items)
                .map(|i| {
                    let d = doc(r, i);
                    let text = d["text"]
                        .as_str()
                        .context("generated doc has text")?
                        .to_string();
                    Ok((key_text(&Key::Str(text)), d.to_string()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let started = Instant::now();
            for (key, doc) in &rows {
                conn.prepare_cached(&sql)?
                    .execute(rusqlite::params![key, doc])?;
                pending += 1;
                if pending == chunk_items {
                    conn.execute_batch("COMMIT; BEGIN")?;
                    pending = 0;
                }
            }
            elapsed += started.elapsed();
        }
        let started = Instant::now();
        conn.execute_batch("COMMIT")?;
        Ok((elapsed + started.elapsed()).as_secs_f64())
    })
    .await?
}

/// Raw MongoDB `insertMany` of the same documents in batches of `chunk_items`, into a fresh
/// collection, keyed as the store keys them (`_id` = the key, no other index).
async fn mongo_baseline(
    m: &sluice_config::MongoConfig,
    args: &BenchArgs,
    chunk_items: usize,
) -> anyhow::Result<f64> {
    use mongodb::bson::{Bson, Document};
    let client = mongodb::Client::with_uri_str(&m.uri).await?;
    let coll = client
        .database(&m.database)
        .collection::<Document>(&format!("raw_{:08x}", rand::random::<u32>()));
    let mut elapsed = std::time::Duration::ZERO;
    let mut batch = Vec::with_capacity(chunk_items);
    for r in 0..args.requests {
        for i in 0..args.items {
            let d = doc(r, i);
            let mut stored = Document::new();
            stored.insert("_id", Bson::String(d["text"].as_str().unwrap_or("").into()));
            stored.extend(mongodb::bson::to_document(&d)?);
            batch.push(stored);
            if batch.len() == chunk_items || (r + 1 == args.requests && i + 1 == args.items) {
                let started = Instant::now();
                coll.insert_many(std::mem::take(&mut batch)).await?;
                elapsed += started.elapsed();
            }
        }
    }
    coll.drop().await?;
    Ok(elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    /// A ratio far below 1 % (a tiny run on a fresh broker) is printed with its digits, not
    /// as 0 (`tests/bench.rs` reads these figures and requires them above 0).
    #[test]
    fn percent_keeps_two_significant_digits_below_ten() {
        assert_eq!(super::percent(0.97), "97");
        assert_eq!(super::percent(0.05), "5.0");
        assert_eq!(super::percent(0.0042), "0.42");
        assert_eq!(super::percent(0.0), "0");
    }
}
