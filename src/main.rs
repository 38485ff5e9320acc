//! The `sluice` command: runs the pipeline (embedded default: JSON lines + SQLite), prints the
//! contract's JSON Schemas, checks configs, and benchmarks the embedded pipeline.
//!
//! Parts, top down (a module uses only those on later lines):
//! - this file: the command line; sends `run` to `kafka` when `[kafka]` is configured, else to
//!   `embedded`, and `bench` to `bench_latency` with `--kafka --rate`, to `bench_kafka` with
//!   `--kafka`, else to `bench`;
//! - `bench`, `bench_kafka` and `bench_latency`: the benchmarks, driving `embedded` and
//!   `kafka`;
//! - `embedded` and `kafka`: the two `sluice run` services (plus the Kafka CLI tools);
//! - `rss` (peak memory, for both benchmarks), `service` (store selection and shutdown signal,
//!   for both services), `observability` (metrics and health endpoints, served by
//!   `listener`), `status` (the status API, page and `sluice status`, on the same listener)
//!   and `logging`.

mod bench;
mod bench_kafka;
mod bench_latency;
mod embedded;
mod kafka;
mod listener;
mod logging;
mod observability;
mod rss;
mod service;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    /// What became of a request: its state, chunks, counts and terminal event, read from the
    /// store (the SQLite state file too, while `sluice run` writes it).
    Status {
        /// TOML config naming the store ([mongo], else embedded.state).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// SQLite state database (overrides `embedded.state`).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The request_id.
        request_id: String,
        /// Print its events so far as JSON lines (exactly as the results topic carries them).
        #[arg(long)]
        events: bool,
        /// Print its events as they come, until the terminal event.
        #[arg(long)]
        watch: bool,
        /// Print the status as JSON (the HTTP API's answer) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schemas of the request, the result events, the dead-letter line and the
    /// status API's answers.
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
    Bench(BenchArgs),
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

/// Arguments of `sluice bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Number of requests.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Items per request (default 1000; 10 with `--rate`).
    #[arg(
        long,
        default_value_t = 1000,
        default_value_if("rate", clap::builder::ArgPredicate::IsPresent, "10")
    )]
    items: usize,
    /// Optional TOML config (chunk size, concurrency…); collection `words` is added.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Benchmark Kafka → pipeline → Kafka against this broker instead (exactly-once,
    /// at-least-once and the raw consume→produce ceiling).
    #[arg(long)]
    kafka: Option<String>,
    /// With `--kafka`: measure the latency a producer sees instead, open loop, at these
    /// offered rates (requests/s, or `50%` of the saturated rate that a burst of `--requests`
    /// requests measures first), e.g. `--rate 40,25%,50%`.
    #[arg(long, value_delimiter = ',', requires = "kafka")]
    rate: Option<Vec<bench_latency::Rate>>,
    /// With `--rate`: how long each rate is offered.
    #[arg(long, default_value_t = 10.0, requires = "rate")]
    seconds: f64,
    /// With `--rate`: measure the saturated rate under overload, not by the burst alone —
    /// 1.5 × the burst's rate is offered for `--seconds`, and the rate at which requests are
    /// answered meanwhile is the saturated rate (a burst overstates what a slow store
    /// sustains).
    #[arg(long, requires = "rate")]
    sustained: bool,
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(args))),
        Command::Schema { out } => schema(out),
        Command::Status {
            config,
            state,
            request_id,
            events,
            watch,
            json,
        } => status::cli::config(config.as_deref(), state).and_then(|c| {
            logging::init(&c.observability);
            let ask = status::cli::Ask {
                request_id,
                events,
                watch,
                json,
            };
            runtime()?.block_on(status::cli::run(&c, ask))
        }),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(file),
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench(args))),
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
            // Whatever component wrote the message, no secret of the config gets out.
            eprintln!("error: {}", sluice_config::scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Panic messages go through the same scrubbing as errors and logs: a panic that formats a
/// value holding a secret must not print it.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        use std::io::Write;
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let message = sluice_config::scrub(&info.to_string()).into_owned();
        // Never panic in the hook (a closed stderr): the write's result is ignored.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "thread '{name}' {message}");
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            let _ = writeln!(err, "{}", std::backtrace::Backtrace::force_capture());
        } else {
            let _ = writeln!(
                err,
                "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace"
            );
        }
    }));
}

/// Loads the config for `run`, applying command-line overrides.
fn run_config(args: &RunArgs) -> anyhow::Result<sluice_config::Config> {
    let mut config = sluice_config::load(args.config.as_deref())?;
    if let Some(state) = &args.state {
        config.embedded.state = state.clone();
    }
    if args.ordered {
        config.pipeline.ordered = true;
    }
    config.validate()?;
    Ok(config)
}

/// `sluice run`: the Kafka service when `[kafka]` is configured, else the embedded default.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = run_config(&args)?;
    logging::init(&config.observability);
    let config = Arc::new(config);
    if config.kafka.is_some() {
        return kafka::run(config).await;
    }
    embedded::run(args, config).await
}

/// `sluice bench`: against the broker named by `--kafka`, else on the embedded pipeline (or
/// the MongoDB store, when `[mongo]` is configured).
async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut config = sluice_config::load(args.config.as_deref())?;
    if let Some(m) = config.mongo.as_mut() {
        // A fresh database per run: the benchmark creates every document.
        m.database = format!("{}_bench_{:08x}", m.database, rand::random::<u32>());
    }
    logging::init(&config.observability);
    // Measured with metrics recorded, as a deployment with a metrics listener runs.
    let _metrics = observability::install_recorder()?;
    if let (Some(brokers), Some(rates)) = (&args.kafka, &args.rate) {
        let latency = bench_latency::LatencyArgs {
            rates: rates.clone(),
            seconds: args.seconds,
            items: args.items,
            burst: args.requests,
            sustained: args.sustained,
        };
        return bench_latency::run(brokers, latency, config).await;
    }
    if let Some(brokers) = &args.kafka {
        return bench_kafka::run(brokers, args.requests, args.items, config).await;
    }
    bench::run(args, config).await
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
    let all = sluice_pipeline::contract::schemas()
        .into_iter()
        .chain(sluice_pipeline::status::schemas());
    for (name, schema) in all {
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
