//! The watchdog of the checks: decides, from successive looks at a trouble (partitions left
//! unowned, this member's client cut off), when it has lasted too long — readiness then names
//! it — and when to rejoin the group: at most once per timeout while it lasts, and (with a
//! spread) at a random moment up to the spread later, so that members who all see the same
//! trouble do not all rejoin in the same tick.

use std::time::{Duration, Instant};

/// Decides, from successive looks, when a trouble (partitions unowned, this member's client
/// cut off) has lasted too long: readiness then names it, and the member rejoins, at most once
/// per timeout while it lasts.
pub(super) struct Watchdog {
    timeout: Duration,
    /// Up to how long past the timeout a rejoin waits (a random delay per rejoin).
    spread: Duration,
    /// The delay drawn for the next rejoin (`< spread`).
    extra: Duration,
    /// Since when the trouble has lasted (continuously).
    since: Option<Instant>,
    /// When this watchdog last asked to rejoin.
    rejoined: Option<Instant>,
    /// The last verdict's readiness problem.
    problem: Option<String>,
}

/// The watchdog's verdict.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Verdict {
    /// The readiness reason, while the trouble has lasted too long.
    pub(super) problem: Option<String>,
    /// Rejoin now.
    pub(super) rejoin: bool,
}

impl Watchdog {
    pub(super) fn new(timeout: Duration) -> Self {
        Watchdog {
            timeout,
            spread: Duration::ZERO,
            extra: Duration::ZERO,
            since: None,
            rejoined: None,
            problem: None,
        }
    }

    /// Rejoins up to `spread` later than the timeout, at random (see the module docs).
    pub(super) fn spread(mut self, spread: Duration) -> Self {
        self.spread = spread;
        self.draw();
        self
    }

    fn draw(&mut self) {
        self.extra = self.spread.mul_f64(rand::random::<f64>());
    }

    /// Forgets every look so far (a new run: a new member of the group).
    pub(super) fn reset(&mut self) {
        self.since = None;
        self.rejoined = None;
        self.problem = None;
        self.draw();
    }

    /// The last verdict's problem, without a new observation (nothing asks to rejoin).
    pub(super) fn last(&self) -> Verdict {
        Verdict {
            problem: self.problem.clone(),
            rejoin: false,
        }
    }

    /// One look: `trouble` describes what is wrong now (`None`: nothing).
    pub(super) fn observe(&mut self, trouble: Option<String>, now: Instant) -> Verdict {
        let Some(trouble) = trouble else {
            self.since = None;
            self.problem = None;
            return self.last();
        };
        let since = *self.since.get_or_insert(now);
        let lasted = now.duration_since(since);
        if lasted < self.timeout {
            self.problem = None;
            return self.last();
        }
        let due = self.timeout + self.extra;
        let rejoin = match self.rejoined {
            None => lasted >= due,
            Some(at) => now.duration_since(at) >= due,
        };
        if rejoin {
            self.rejoined = Some(now);
            self.draw();
        }
        self.problem = Some(format!("{trouble} for {} s", lasted.as_secs()));
        Verdict {
            problem: self.problem.clone(),
            rejoin,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn unowned(partitions: &[i32]) -> Option<String> {
        (!partitions.is_empty()).then(|| format!("partitions {partitions:?} unowned"))
    }

    #[test]
    fn the_watchdog_rejoins_once_per_timeout_while_partitions_stay_unowned() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watchdog::new(s(60));
        assert!(!w.observe(unowned(&[]), t0).rejoin);
        // A rebalance: unowned for a while, then owned again — nothing happens.
        assert_eq!(w.observe(unowned(&[0, 1]), t0 + s(1)).problem, None);
        assert_eq!(w.observe(unowned(&[0, 1]), t0 + s(50)).problem, None);
        assert_eq!(w.observe(unowned(&[]), t0 + s(52)).problem, None);
        // A wedge: unowned past the timeout.
        assert!(!w.observe(unowned(&[2]), t0 + s(100)).rejoin);
        let v = w.observe(unowned(&[2]), t0 + s(161));
        assert!(
            v.rejoin && v.problem.as_deref().unwrap().contains("[2]"),
            "{v:?}"
        );
        let v = w.observe(unowned(&[2]), t0 + s(170));
        assert!(!v.rejoin && v.problem.is_some(), "not again at once: {v:?}");
        assert_eq!(
            w.last(),
            Verdict { rejoin: false, ..v },
            "kept while unseen"
        );
        assert!(
            w.observe(unowned(&[2]), t0 + s(222)).rejoin,
            "again after another timeout"
        );
        assert_eq!(
            w.observe(unowned(&[]), t0 + s(223)).problem,
            None,
            "repaired"
        );
    }

    /// The first look at which `w` asks to rejoin, looking every second at a trouble that
    /// started at `t0` (seconds after `t0`), and the first at which readiness names it.
    fn first_rejoin(w: &mut Watchdog, t0: Instant) -> (u64, u64) {
        let mut named = None;
        for sec in 0..1000 {
            let v = w.observe(unowned(&[1]), t0 + Duration::from_secs(sec));
            if v.problem.is_some() {
                named.get_or_insert(sec);
            }
            if v.rejoin {
                return (sec, named.unwrap());
            }
        }
        panic!("never rejoined");
    }

    #[test]
    fn members_rejoin_at_spread_moments_and_readiness_names_the_trouble_at_the_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let rejoins: Vec<u64> = (0..40)
            .map(|_| {
                let mut w = Watchdog::new(s(60)).spread(s(30));
                let (rejoined, named) = first_rejoin(&mut w, t0);
                assert_eq!(named, 60, "readiness names it at the timeout");
                assert!((60..=90).contains(&rejoined), "rejoined after {rejoined} s");
                rejoined
            })
            .collect();
        let distinct: BTreeSet<_> = rejoins.iter().collect();
        assert!(
            distinct.len() > 10,
            "forty members rejoin at {} distinct moments: {rejoins:?}",
            distinct.len()
        );
    }

    #[test]
    fn a_new_run_starts_the_watchdog_over() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watchdog::new(s(60));
        assert!(!w.observe(unowned(&[1]), t0).rejoin);
        assert!(!w.observe(unowned(&[1]), t0 + s(59)).rejoin);
        // The run restarts (an error, a rejoin): the new member has just joined.
        w.reset();
        let v = w.observe(unowned(&[1]), t0 + s(61));
        assert_eq!(
            v,
            Verdict {
                problem: None,
                rejoin: false
            },
            "not held against the new run"
        );
        assert!(!w.observe(unowned(&[1]), t0 + s(120)).rejoin);
        assert!(
            w.observe(unowned(&[1]), t0 + s(121)).rejoin,
            "a full timeout after the new run first saw it"
        );
    }
}
