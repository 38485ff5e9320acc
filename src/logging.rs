//! Logging to stderr: human-readable by default, JSON lines with
//! `observability.log_format = "json"` (or `SLUICE_LOG_FORMAT=json`) for log shippers; the
//! filter comes from `SLUICE_LOG`, else `observability.log_filter`. Every line passes
//! through [`sluice_config::scrub`], so no secret of the config reaches the log, at any level
//! and from any component (librdkafka's and the MongoDB driver's messages included).

use std::io::{IsTerminal, Write};

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
        .with_writer(|| Scrubbed(std::io::stderr()))
        .with_ansi(!json && std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
    sluice_pipeline::logs::set_limit(config.max_error_logs_per_sec);
}

/// A writer that scrubs secrets from what it writes. The formatter writes each event with one
/// `write_all` of the whole line, so a secret is never split between two writes.
struct Scrubbed<W>(W);

impl<W: Write> Write for Scrubbed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(sluice_config::scrub(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
