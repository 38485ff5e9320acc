//! Logging to stderr: human-readable by default, JSON lines with
//! `observability.log_format = "json"` (or `SLUICE_LOG_FORMAT=json`) for log shippers; the
//! filter comes from `SLUICE_LOG`, else `observability.log_filter`.

use std::io::IsTerminal;

use sluice_config::{LogFormat, ObservabilityConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(config: &ObservabilityConfig) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let json = match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok(_) => false,
        Err(_) => config.log_format == LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
    sluice_pipeline::logs::set_limit(config.max_error_logs_per_sec);
}
