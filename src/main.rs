//! The `sluice` command: runs the pipeline (embedded default: JSON lines + SQLite), prints the
//! contract's JSON Schemas, checks configs, and benchmarks the embedded pipeline.

mod bench;
mod embedded;
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
