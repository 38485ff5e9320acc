//! Capped exponential backoff with full jitter for store calls, classified by error kind:
//! transient errors are retried up to `execute.max_attempts` times within
//! `execute.transient_retry_ms`; an unreachable store is waited
//! for (the pipeline stalls, counted and logged) until it returns or shutdown aborts;
//! permanent errors are returned at once.

use std::future::Future;
use std::time::Duration;

use metrics::counter;
use rand::Rng;
use sluice_config::ExecuteConfig;
use tokio_util::sync::CancellationToken;

use crate::codes::{StoreError, StoreErrorKind};
use crate::metrics::{CHUNK_RETRIES, STORE_ERRORS};

/// Retry settings, from `[execute]`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts for transient errors, the first included.
    pub max_attempts: u32,
    /// Time within which transient errors are retried.
    pub transient_window: Duration,
    /// First backoff.
    pub initial: Duration,
    /// Backoff cap.
    pub max: Duration,
}

impl From<&ExecuteConfig> for RetryPolicy {
    fn from(c: &ExecuteConfig) -> Self {
        RetryPolicy {
            max_attempts: c.max_attempts,
            transient_window: Duration::from_millis(c.transient_retry_ms),
            initial: Duration::from_millis(c.backoff_initial_ms),
            max: Duration::from_millis(c.backoff_max_ms),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `attempt` (1-based): uniformly random in
    /// `[0, min(max, initial * 2^(attempt-1))]` ("full jitter").
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(if ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=ms)
        })
    }

    /// Runs `op` until it succeeds, fails permanently, exhausts its transient attempts, or
    /// `abort` is cancelled while waiting for an unavailable store.
    pub async fn run<T, F, Fut>(
        &self,
        what: &'static str,
        abort: &CancellationToken,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0u32;
        let started = std::time::Instant::now();
        let mut unavailable_since: Option<std::time::Instant> = None;
        loop {
            attempt += 1;
            let err = match op().await {
                Ok(v) => {
                    if let Some(since) = unavailable_since {
                        tracing::info!(
                            what,
                            waited_ms = since.elapsed().as_millis() as u64,
                            "store reachable again"
                        );
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            counter!(STORE_ERRORS, "kind" => err.kind.as_str(), "error_code" => err.code)
                .increment(1);
            match err.kind {
                StoreErrorKind::Permanent => {
                    if crate::logs::allow() {
                        tracing::warn!(what, code = err.code, error = %err.message, "permanent store error");
                    }
                    return Err(err);
                }
                StoreErrorKind::Transient
                    if attempt >= self.max_attempts
                        || started.elapsed() >= self.transient_window =>
                {
                    if crate::logs::allow() {
                        tracing::warn!(what, attempts = attempt, code = err.code, error = %err.message, "store retries exhausted");
                    }
                    return Err(err);
                }
                StoreErrorKind::Transient => {
                    tracing::debug!(
                        what,
                        attempt,
                        code = err.code,
                        "transient store error, retrying"
                    );
                }
                StoreErrorKind::Unavailable => {
                    if unavailable_since.is_none() {
                        unavailable_since = Some(std::time::Instant::now());
                        if crate::logs::allow() {
                            tracing::warn!(what, code = err.code, error = %err.message, "store unavailable; waiting");
                        }
                    }
                }
            }
            counter!(CHUNK_RETRIES, "reason" => err.kind.as_str()).increment(1);
            let delay = self.backoff(attempt.min(16));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = abort.cancelled() => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            transient_window: Duration::from_secs(3600),
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
        }
    }

    #[test]
    fn backoff_is_capped() {
        let p = policy();
        for attempt in 1..30 {
            assert!(p.backoff(attempt) <= Duration::from_millis(40));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_retry_until_the_limit() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy()
            .run("t", &CancellationToken::new(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::transient("busy", "busy"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy()
            .run("t", &CancellationToken::new(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::permanent("io", "disk"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_waits_beyond_the_attempt_limit() {
        let calls = AtomicU32::new(0);
        let r = policy()
            .run("t", &CancellationToken::new(), || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 10 {
                    Err(StoreError::unavailable("down", "connection refused"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 11);
    }
}
