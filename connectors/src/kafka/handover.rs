//! Handing a partition over mid-request. A revoked partition whose head request is still
//! running cannot drain (its request may outlast any deadline), and giving up used to restart
//! the whole run — which made the member leave and rejoin, revoking the others' partitions,
//! who restarted the same way. Instead the partition is *sealed*: once a commit covers every
//! event published for it (the head's published events go with its partial position, so the
//! new owner resumes right after them), nothing more of it is published or committed this
//! run. Its records still in the pipeline finish or not — their chunks are in the ledger, so
//! the new owner's replay and this member's late work apply each chunk once — but their
//! events and positions are dropped at the sink.
//!
//! The sink asks [`Handover::admit`] before it puts anything of a partition into the open
//! unit; a revocation asks [`Handover::begin`], atomically with it, which partitions are
//! clean (sealed at once) and which wait for the next commit ([`Handover::committed`]). A
//! sealed partition assigned again in the same run cannot be told apart from its old records
//! still in flight: the run restarts then (the old behaviour, now only in that case).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

type Partition = (String, i32);

/// The hand-over state of one run.
#[derive(Debug, Default)]
pub struct Handover {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Partitions with events or positions in the sink's open unit.
    dirty: HashSet<Partition>,
    /// Revoked partitions waiting for a commit to cover what was published of them.
    sealing: HashSet<Partition>,
    /// Handed over: nothing more of them is published or committed this run.
    sealed: HashSet<Partition>,
}

impl Handover {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sink is about to put an event or a position of `partition` into the open unit:
    /// `false` when the partition was handed over (drop it).
    pub fn admit(&self, topic: &str, partition: i32) -> bool {
        let mut s = self.lock();
        let p = (topic.to_string(), partition);
        if s.sealed.contains(&p) {
            return false;
        }
        s.dirty.insert(p);
        true
    }

    /// Whether `partition` was handed over this run.
    pub fn sealed(&self, topic: &str, partition: i32) -> bool {
        self.lock().sealed.contains(&(topic.to_string(), partition))
    }

    /// `partitions` are revoked: those with nothing uncommitted are sealed now, the others
    /// at the next successful commit.
    pub fn begin(&self, partitions: &[Partition]) {
        let mut s = self.lock();
        for p in partitions {
            if s.dirty.contains(p) {
                s.sealing.insert(p.clone());
            } else {
                s.sealed.insert(p.clone());
            }
        }
    }

    /// A revocation that gave up: its partitions are not waiting any more.
    pub fn forget(&self, partitions: &[Partition]) {
        let mut s = self.lock();
        for p in partitions {
            s.sealing.remove(p);
        }
    }

    /// `partition` drained after all (everything read from it is committed, nothing of it is
    /// in flight): it need not be sealed.
    pub fn unseal(&self, partition: &Partition) {
        let mut s = self.lock();
        s.sealing.remove(partition);
        s.sealed.remove(partition);
    }

    /// The open unit committed: everything published is covered, so the partitions waiting
    /// for it are sealed, and nothing is uncommitted.
    pub fn committed(&self) {
        let mut s = self.lock();
        let sealing = std::mem::take(&mut s.sealing);
        s.sealed.extend(sealing);
        s.dirty.clear();
    }

    /// Whether any of `partitions` (being assigned) was handed over earlier in this run.
    pub fn any_sealed(&self, partitions: &[Partition]) -> bool {
        let s = self.lock();
        partitions.iter().any(|p| s.sealed.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Vec<Partition> {
        vec![("requests".to_string(), n)]
    }

    #[test]
    fn a_clean_partition_is_sealed_at_once_a_dirty_one_at_the_next_commit() {
        let h = Handover::default();
        assert!(h.admit("requests", 1));
        h.begin(&[p(0), p(1)].concat());
        assert!(
            h.sealed("requests", 0),
            "nothing of partition 0 is uncommitted"
        );
        assert!(!h.sealed("requests", 1), "partition 1 waits for the commit");
        assert!(
            !h.admit("requests", 0),
            "a sealed partition publishes nothing more"
        );
        assert!(
            h.admit("requests", 1),
            "until the commit, partition 1 still publishes"
        );
        h.committed();
        assert!(h.sealed("requests", 1));
        assert!(!h.admit("requests", 1));
        assert!(h.any_sealed(&[p(3), p(1)].concat()));
        assert!(!h.any_sealed(&p(2)));
    }

    #[test]
    fn a_revocation_that_gave_up_does_not_seal_later() {
        let h = Handover::default();
        assert!(h.admit("requests", 0));
        h.begin(&p(0));
        h.forget(&p(0));
        h.committed();
        assert!(!h.sealed("requests", 0));
    }
}
