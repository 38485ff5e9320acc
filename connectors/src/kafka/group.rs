//! The consumer group as its coordinator sees it: which partitions of the requests topic some
//! member owns, and how far the group (not only this member) has committed. Feeds the
//! group-wide metrics (`sluice_group_unowned_partitions`, `sluice_group_lag_records`,
//! `sluice_group_members`), readiness, and the watchdog that rejoins a group which leaves
//! partitions unowned.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// One look at the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The coordinator's state of the group (`Stable`, `PreparingRebalance`, …).
    pub state: String,
    /// Members in the group.
    pub members: usize,
    /// Partitions of the topic that no member owns (all of them while the group rebalances).
    pub unowned: Vec<i32>,
    /// Per partition of the topic: its high watermark and the group's committed offset (the
    /// log start when the group has committed nothing there); the difference is the lag.
    pub lag: Vec<(i32, i64, i64)>,
}

/// Describes `consumer`'s group on `topic` (a few broker round trips, each within `timeout`).
/// Blocking: call it off the async threads.
pub fn describe<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<GroupView> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let groups = consumer.fetch_group_list(Some(group), timeout)?;
    let (state, members, owned) = match groups.groups().iter().find(|g| g.name() == group) {
        Some(g) => {
            let owned: BTreeSet<i32> = g
                .members()
                .iter()
                .filter_map(|m| m.assignment())
                .flat_map(|a| assigned(a, topic).unwrap_or_default())
                .collect();
            (g.state().to_string(), g.members().len(), owned)
        }
        None => ("Unknown".to_string(), 0, BTreeSet::new()),
    };
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        lag.push((p, high, from));
    }
    Ok(GroupView {
        state,
        members,
        unowned: partitions
            .into_iter()
            .filter(|p| !owned.contains(p))
            .collect(),
        lag,
    })
}

/// The partitions of `topic` in a member's assignment (Kafka's consumer protocol encoding:
/// version i16, [topic string, [partition i32]], user data). `None` when it does not parse.
pub fn assigned(assignment: &[u8], topic: &str) -> Option<Vec<i32>> {
    let mut r = Reader(assignment);
    if assignment.is_empty() {
        return Some(Vec::new());
    }
    let _version = r.i16()?;
    let mut out = Vec::new();
    for _ in 0..r.i32()?.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let name = r.take(len)?;
        for _ in 0..r.i32()?.max(0) {
            let p = r.i32()?;
            if name == topic.as_bytes() {
                out.push(p);
            }
        }
    }
    Some(out)
}

/// A big-endian reader over the protocol bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes an assignment the way the consumer protocol does.
    fn encode(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(1i16.to_be_bytes());
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        b
    }

    #[test]
    fn reads_the_partitions_of_the_topic_from_an_assignment() {
        let a = encode(&[
            ("other", &[0, 1]),
            ("requests", &[4, 2]),
            ("requests2", &[7]),
        ]);
        assert_eq!(assigned(&a, "requests"), Some(vec![4, 2]));
        assert_eq!(assigned(&a, "none"), Some(vec![]));
        assert_eq!(
            assigned(&[], "requests"),
            Some(vec![]),
            "empty: nothing owned"
        );
        assert_eq!(assigned(&a[..9], "requests"), None, "cut short: unreadable");
    }
}
