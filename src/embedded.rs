//! `sluice run` on the embedded default: JSON lines in and out, SQLite store, progress bar on
//! a terminal, graceful shutdown on SIGINT/SIGTERM (a second signal exits at once — safe,
//! since nothing past the last checkpoint counts as done). `main` sends `run` here when no
//! `[kafka]` section is configured; the store and the signal come from `service`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_config::Config;
use sluice_connectors::embedded::{self, EmbeddedIo};
use sluice_connectors::sqlite::SqliteStore;
use sluice_pipeline::health::Health;
use sluice_pipeline::{RunEnd, RunStats};

use crate::RunArgs;

fn path_arg(s: &str) -> Option<PathBuf> {
    (s != "-").then(|| PathBuf::from(s))
}

/// Runs the embedded pipeline once: opens the store and the files at the last checkpoint and
/// processes the input until it ends or `shutdown` resolves.
pub async fn run_pipeline(
    config: Arc<Config>,
    io: EmbeddedIo,
    stats: Arc<RunStats>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(RunEnd, embedded::Position)> {
    let sqlite = SqliteStore::open(&io.state, &config)
        .with_context(|| format!("opening state database {}", io.state.display()))?;
    let writer = sqlite.writer();
    let store = crate::service::open_store(&config, || Ok(sqlite)).await?;
    let timeout = Duration::from_millis(config.observability.health_timeout_ms.max(10_000));
    tokio::time::timeout(timeout, store.health())
        .await
        .context("store health check timed out at start-up")?
        .context("store health check failed at start-up")?;
    let health = Arc::new(Health::new(Duration::from_millis(
        config.observability.stall_after_ms,
    )));
    health.set_store(Ok(()));
    crate::observability::start(&config, &store, &health).await?;
    let (source, sink, position) = embedded::open(&io, writer).await?;
    let end = sluice_pipeline::run(config, source, sink, store, stats, health, shutdown).await?;
    Ok((end, position))
}

/// `sluice run` without a `[kafka]` section: processes the input file (or stdin) once, or
/// follows it until SIGINT/SIGTERM.
pub async fn run(args: RunArgs, config: Arc<Config>) -> anyhow::Result<()> {
    let io = EmbeddedIo {
        input: path_arg(&args.input),
        output: path_arg(&args.output),
        dead_letters: args.dead_letters.clone(),
        state: config.embedded.state.clone(),
        max_line_bytes: config.limits.read_cap(),
        fsync: false,
        follow: args.follow,
    };
    anyhow::ensure!(
        !args.follow || io.input.is_some(),
        "--follow needs an input file"
    );
    let stats = Arc::new(RunStats::default());
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| progress_bar(stats.clone()));
    let started = std::time::Instant::now();
    let (end, position) =
        run_pipeline(config, io, stats.clone(), crate::service::shutdown_signal()).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if position.line > 0 {
        tracing::info!(
            line = position.line,
            "resumed after the last committed line"
        );
    }
    let get = RunStats::get;
    tracing::info!(
        records = get(&stats.records),
        completed = get(&stats.completed),
        rejected = get(&stats.rejected),
        duplicate = get(&stats.duplicates),
        dead_letters = get(&stats.dead_letters),
        items = get(&stats.items),
        elapsed_ms = started.elapsed().as_millis() as u64,
        end = ?end,
        "run finished"
    );
    Ok(())
}

fn progress_bar(stats: Arc<RunStats>) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("static template is valid"),
    );
    let b = bar.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !b.is_finished() {
            tick.tick().await;
            let get = RunStats::get;
            let items = get(&stats.items);
            let rate = items as f64 / started.elapsed().as_secs_f64().max(0.001);
            b.set_message(format!(
                "{} requests ({} completed, {} rejected, {} duplicate, {} dead letters) · {} items · {:.0} items/s",
                get(&stats.records),
                get(&stats.completed),
                get(&stats.rejected),
                get(&stats.duplicates),
                get(&stats.dead_letters),
                items,
                rate
            ));
            b.tick();
        }
    });
    bar
}
