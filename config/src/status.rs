//! The status API's section (`[status]`): whether the listener serves what became of each
//! request (`/v1/requests…` and the status page), the bearer token it asks for, and the bounds
//! of its live streams.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The status API and page, on the `[observability]` listener.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Serve `/v1/requests…` and the status page at `/` on the `observability.listen`
    /// listener. Off by default: it hands out business data (lookup results carry documents).
    pub enabled: bool,
    /// The bearer token every status request must carry (`Authorization: Bearer …`); required
    /// when enabled, at least 16 characters. Set it here or, to keep it out of the file, in
    /// `SLUICE__STATUS__TOKEN`. Masked wherever the config is printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Live progress streams open at once, at most; one more gets 503. Below
    /// `observability.http_max_connections`, so probes and scrapes always find a slot.
    pub max_streams: usize,
    /// How often a live stream reads the store for new events, in milliseconds.
    pub poll_interval_ms: u64,
    /// A stream whose client has not taken an event within this many milliseconds is closed
    /// (counted in `sluice_status_streams_dropped_total{reason="slow_reader"}`): nothing is
    /// buffered for it beyond a few events.
    pub send_timeout_ms: u64,
    /// Most entries one page of `GET /v1/requests?state=in_progress` returns (`limit`).
    pub max_page: usize,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            enabled: false,
            token: None,
            max_streams: 16,
            poll_interval_ms: 300,
            send_timeout_ms: 5_000,
            max_page: 1_000,
        }
    }
}

/// Never prints the token.
impl std::fmt::Debug for StatusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusConfig")
            .field("enabled", &self.enabled)
            .field("token", &self.token.as_ref().map(|_| crate::MASK))
            .field("max_streams", &self.max_streams)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("send_timeout_ms", &self.send_timeout_ms)
            .field("max_page", &self.max_page)
            .finish()
    }
}

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl StatusConfig {
    /// Rejects an enabled API without a listener or a usable token, and unbounded streams.
    pub(crate) fn validate(
        &self,
        listen: Option<&str>,
        max_connections: usize,
    ) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if listen.is_none() {
            return Err(ConfigError::invalid(
                "status.enabled",
                "needs observability.listen (the status API is served on that listener)",
            ));
        }
        match &self.token {
            Some(t)
                if t.chars().count() >= MIN_TOKEN_LEN && !t.chars().any(char::is_whitespace) => {}
            _ => {
                return Err(ConfigError::invalid(
                    "status.token",
                    format!(
                        "an enabled status API needs a bearer token of at least {MIN_TOKEN_LEN} \
                         characters without spaces (or SLUICE__STATUS__TOKEN)"
                    ),
                ))
            }
        }
        if self.max_streams == 0 || self.max_streams >= max_connections {
            return Err(ConfigError::invalid(
                "status.max_streams",
                format!(
                    "must be between 1 and observability.http_max_connections - 1 ({})",
                    max_connections.saturating_sub(1)
                ),
            ));
        }
        for (field, v) in [
            ("status.poll_interval_ms", self.poll_interval_ms),
            ("status.send_timeout_ms", self.send_timeout_ms),
            ("status.max_page", self.max_page as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(field, "must be at least 1"));
            }
        }
        Ok(())
    }
}
