//! The `sluice` command: runs the pipeline (embedded default: JSON lines + SQLite), prints the
//! contract's JSON Schemas, checks configs, and benchmarks the embedded pipeline.

mod bench;
mod bench_kafka;
mod embedded;
mod kafka;
mod logging;
mod observability;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exactly-once batch operations: requests in, result events out.
#[derive(Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline. With no brokers configured: read requests (JSON lines) from a file or
    /// stdin, apply them to the SQLite store, write result events as JSON lines.
    Run(RunArgs),
    /// Print the JSON Schemas of the request, the result events and the dead-letter line.
    Schema {
        /// Write `*.schema.json` files into this directory instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Benchmark the embedded pipeline against raw SQLite inserts of the same documents.
    Bench(bench::BenchArgs),
    /// Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Publish requests (JSON lines from FILE or `-` for stdin) to the requests topic, keyed by
    /// request_id.
    Produce {
        /// TOML config with a [kafka] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Requests file, or `-` for stdin.
        input: String,
    },
    /// Print result events (read_committed); with --request-id, until each has its terminal
    /// event.
    Tail {
        /// TOML config with a [kafka] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only these requests; exit once each has its terminal event.
        #[arg(long = "request-id")]
        request_ids: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the requests, results and DLQ topics (partitions and replication from config).
    Create {
        /// TOML config with a [kafka] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config (defaults → FILE → SLUICE__… env) and print it with secrets masked.
    Check {
        /// TOML config file.
        file: Option<PathBuf>,
    },
}

/// Arguments of `sluice run`.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// TOML config file (defaults → this file → SLUICE__… environment variables).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Requests as JSON lines; `-` = stdin.
    #[arg(long, short, default_value = "-")]
    input: String,
    /// Result events as JSON lines; `-` = stdout (exactly-once needs a file: a file can be cut
    /// back after a crash, stdout cannot).
    #[arg(long, short, default_value = "-")]
    output: String,
    /// Dead letters as JSON lines (default: `<output>.dlq`, or stderr when output is stdout).
    #[arg(long)]
    dead_letters: Option<PathBuf>,
    /// SQLite state database (overrides `embedded.state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Treat the whole input as one ordered stream (overrides `pipeline.ordered`).
    #[arg(long)]
    ordered: bool,
    /// Keep reading the input file as it grows (like `tail -f`) until SIGINT/SIGTERM.
    #[arg(long)]
    follow: bool,
    /// Never show a progress bar, even on a terminal.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(embedded::run(args))),
        Command::Schema { out } => schema(out),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(file),
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench::run(args))),
        Command::Topics {
            command: TopicsCommand::Create { config },
        } => with_config(config, |c| async move { kafka::topics_create(&c).await }),
        Command::Produce { config, input } => {
            with_config(config, |c| async move { kafka::produce(&c, &input).await })
        }
        Command::Tail {
            config,
            request_ids,
            timeout_secs,
        } => with_config(config, |c| async move {
            kafka::tail(
                &c,
                &request_ids,
                timeout_secs.map(std::time::Duration::from_secs),
            )
            .await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config, sets up logging and runs `f` on a runtime.
fn with_config<F, Fut>(file: Option<PathBuf>, f: F) -> anyhow::Result<()>
where
    F: FnOnce(sluice_config::Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = sluice_config::load(file.as_deref())?;
    logging::init(&config.observability);
    runtime()?.block_on(f(config))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn schema(out: Option<PathBuf>) -> anyhow::Result<()> {
    for (name, schema) in sluice_pipeline::contract::schemas() {
        let text = serde_json::to_string_pretty(&schema)? + "\n";
        match &out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(name), text)?;
                eprintln!("wrote {}", dir.join(name).display());
            }
            None => print!("// {name}\n{text}"),
        }
    }
    Ok(())
}

fn config_check(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = sluice_config::load(file.as_deref())?;
    println!(
        "# configuration is valid (defaults → {} → SLUICE__ env)",
        file.as_ref()
            .map_or("no file".into(), |f| f.display().to_string())
    );
    print!("{}", config.masked());
    Ok(())
}
