//! The age of the sink's open transaction, which decides after a run whether a fencing came
//! from a twin process or from the broker aborting a transaction that outlived its timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old the sink's transaction is, for whoever judges a fencing after the run
/// ([`KafkaSink::transaction_clock`]): cleared when the transaction commits or aborts; when
/// its commit or abort fails, frozen at the age it had then (the run's wind-down afterwards
/// must not age it).
#[derive(Debug, Clone, Default)]
pub struct TxnClock(Arc<Mutex<(Option<Instant>, Option<Duration>)>>);

impl TxnClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<Duration>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, began: Option<Instant>) {
        *self.lock() = (began, None);
    }

    /// The transaction's end failed now: keep its age as of now.
    pub(super) fn fail(&self) {
        let mut clock = self.lock();
        if let (Some(began), None) = *clock {
            clock.1 = Some(began.elapsed());
        }
    }

    /// How long the open transaction has been open, or how old it was when its end failed;
    /// `None` without one.
    pub fn age(&self) -> Option<Duration> {
        let clock = self.lock();
        clock.1.or(clock.0.map(|began| began.elapsed()))
    }
}
