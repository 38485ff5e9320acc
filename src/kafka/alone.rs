//! The SQLite store's one-instance rule (see the checks' module docs): from the looks at the
//! consumer group, whether this member may process.

use std::sync::atomic::{AtomicBool, Ordering};

use sluice_connectors::kafka::group::GroupView;
use sluice_pipeline::metrics::PIPELINE_ERRORS;

/// The SQLite store's one-instance rule, from the looks at the group (see the module docs).
#[derive(Default)]
pub(super) struct Alone {
    /// Why the source is gated, once a look showed other members.
    pub(super) problem: Option<String>,
}

impl Alone {
    /// Opens `gate` when the group is stable with this member (`joined`) alone in it; closes
    /// it when the group has other members. Other looks (mid-rebalance) change nothing.
    pub(super) fn look(&mut self, gate: &AtomicBool, view: &GroupView, joined: bool, group: &str) {
        let Some(others) = others(view, joined) else {
            return;
        };
        if others == 0 {
            if self.problem.take().is_some() {
                tracing::info!("alone in the consumer group again: processing");
            }
            gate.store(false, Ordering::SeqCst);
            return;
        }
        gate.store(true, Ordering::SeqCst);
        let problem = format!(
            "the SQLite store serves one instance, and consumer group {group} has {others} \
             other member(s) whose stores are other files (documents would be split between \
             them and the ledger lost whenever a partition moves): processing nothing; use \
             [mongo], stop the others, or set embedded.shared = true if every member opens \
             this same file"
        );
        if self.problem.is_none() {
            metrics::counter!(PIPELINE_ERRORS, "component" => "sqlite_group").increment(1);
            tracing::error!(problem, "refusing to process");
        }
        self.problem = Some(problem);
    }
}

/// How many members besides this one a look at the group shows, when it can tell: the group
/// is stable (nobody is joining or leaving) and this member has joined it.
fn others(view: &GroupView, joined: bool) -> Option<usize> {
    (joined && view.state == "Stable").then(|| view.members.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str, members: usize) -> GroupView {
        GroupView {
            state: state.into(),
            members,
            unowned: vec![],
            lag: vec![],
        }
    }

    #[test]
    fn the_gate_opens_only_while_this_member_is_alone_in_a_stable_group() {
        let gate = AtomicBool::new(true);
        let mut alone = Alone::default();
        let held = |g: &AtomicBool| g.load(Ordering::SeqCst);
        // Before this member has joined, or while the group rebalances, nothing is known.
        alone.look(&gate, &view("Stable", 1), false, "g");
        assert!(
            held(&gate),
            "not joined yet: the one member is someone else"
        );
        alone.look(&gate, &view("PreparingRebalance", 1), true, "g");
        assert!(held(&gate));
        alone.look(&gate, &view("Stable", 1), true, "g");
        assert!(!held(&gate) && alone.problem.is_none(), "alone: processing");
        // A second instance (another file) joins: both refuse, and say why.
        alone.look(&gate, &view("CompletingRebalance", 2), true, "g");
        assert!(!held(&gate), "mid-rebalance: unchanged");
        alone.look(&gate, &view("Stable", 2), true, "g");
        assert!(held(&gate));
        let why = alone.problem.clone().unwrap();
        assert!(
            why.contains("SQLite") && why.contains("1 other member") && why.contains("shared"),
            "{why}"
        );
        // It leaves: processing again.
        alone.look(&gate, &view("Stable", 1), true, "g");
        assert!(!held(&gate) && alone.problem.is_none());
    }
}
