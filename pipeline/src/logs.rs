//! Rate-limited warnings and errors: a store outage must not flood the logs. Every event is
//! still counted by its own metric; what the limit drops is counted in
//! `sluice_logs_suppressed_total`.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::metrics::LOGS_SUPPRESSED;

static LIMITER: OnceLock<DefaultDirectRateLimiter> = OnceLock::new();

/// Sets the limit (per second); effective once, at start-up. Default: 10 per second.
pub fn set_limit(per_second: u32) {
    let _ = LIMITER.set(limiter(per_second));
}

fn limiter(per_second: u32) -> DefaultDirectRateLimiter {
    let n = NonZeroU32::new(per_second.max(1)).expect("max(1) is non-zero");
    RateLimiter::direct(Quota::per_second(n))
}

/// Whether a repeated warning/error may be logged now; counts it as suppressed if not.
pub fn allow() -> bool {
    let ok = LIMITER.get_or_init(|| limiter(10)).check().is_ok();
    if !ok {
        metrics::counter!(LOGS_SUPPRESSED).increment(1);
    }
    ok
}
