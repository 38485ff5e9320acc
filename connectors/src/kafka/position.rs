//! A partial position: the committed offset of a record whose request was unfinished, with
//! metadata saying how many of its progress events are already published and their item
//! counts. The source hands them to the re-read record (`skip_progress`, `skip_counts`).

use sluice_pipeline::contract::Counts;

/// The committed offset's metadata of a partial position: the record at the offset has its
/// first `published` progress events committed, with these item `counts`
/// (`sluice:v1:published=N;counts={…}`; a position written before counts were kept has the
/// number alone).
pub fn partial_metadata(published: usize, counts: &Counts) -> String {
    let counts = serde_json::to_string(counts).unwrap_or_default();
    format!("{PARTIAL_PREFIX}{published}{COUNTS_PREFIX}{counts}")
}

/// Reads [`partial_metadata`]: (0, None) for anything else (no metadata, another tool's).
pub fn published_in(metadata: &str) -> (usize, Option<Counts>) {
    let Some(rest) = metadata.strip_prefix(PARTIAL_PREFIX) else {
        return (0, None);
    };
    let (n, counts) = match rest.split_once(COUNTS_PREFIX) {
        Some((n, counts)) => (n, serde_json::from_str(counts).ok()),
        None => (rest, None),
    };
    match n.parse() {
        Ok(n) => (n, counts),
        Err(_) => (0, None),
    }
}

const PARTIAL_PREFIX: &str = "sluice:v1:published=";
const COUNTS_PREFIX: &str = ";counts=";
/// Where a partition's reading stands against its committed offset, for the records the
/// consumer hands out after the partition was assigned.
///
/// The first record should be the one at the committed offset. It may come from further
/// back: librdkafka starts a partition at `auto.offset.reset` (the earliest offset) when its
/// committed-offset fetch is retried across an assignment change and gave no offset
/// (`UNSTABLE_OFFSET_COMMIT`, while a transaction's offsets are pending — seen after a broker
/// restart). Records below the committed offset were processed and their events committed:
/// executing them again would publish their events twice, so they are passed over until the
/// committed offset is reached, whose record gets the position's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    /// The committed offset.
    pub committed: i64,
    /// What its metadata says of the record at it ([`published_in`]).
    pub published: (usize, Option<Counts>),
}

/// What to do with a record at `offset` of a partition whose committed offset is `floor`.
#[derive(Debug, Clone, PartialEq)]
pub enum AtFloor {
    /// Below the committed offset: processed already; pass over it.
    Committed,
    /// At the committed offset: hand it out with what its position says was published.
    At(usize, Option<Counts>),
    /// Past it (the committed offset held no record, e.g. a transaction marker): hand it out
    /// as any other record.
    Past,
}

impl Floor {
    /// Where a record at `offset` stands.
    pub fn place(&self, offset: i64) -> AtFloor {
        match offset.cmp(&self.committed) {
            std::cmp::Ordering::Less => AtFloor::Committed,
            std::cmp::Ordering::Equal => {
                let (n, counts) = self.published.clone();
                AtFloor::At(n, counts)
            }
            std::cmp::Ordering::Greater => AtFloor::Past,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition handed out from offset 0 while 102 is committed, with the record at 102
    /// partially published: 0..101 are passed over, 102 gets the metadata, later ones none.
    #[test]
    fn records_below_the_committed_offset_are_passed_over() {
        let counts = Counts {
            ok: 2,
            ..Counts::default()
        };
        let floor = Floor {
            committed: 102,
            published: published_in(&partial_metadata(2, &counts)),
        };
        assert_eq!(floor.place(0), AtFloor::Committed);
        assert_eq!(floor.place(101), AtFloor::Committed);
        assert_eq!(floor.place(102), AtFloor::At(2, Some(counts)));
        assert_eq!(floor.place(103), AtFloor::Past);
    }

    #[test]
    fn a_partial_position_carries_its_counts_and_older_ones_still_read() {
        let counts = Counts {
            total: 5,
            ok: 3,
            not_found: 2,
            ..Counts::default()
        };
        let m = partial_metadata(7, &counts);
        assert!(m.len() < 512, "well within offset.metadata.max.bytes: {m}");
        assert_eq!(published_in(&m), (7, Some(counts)));
        // Written before counts were kept: the number alone.
        assert_eq!(published_in("sluice:v1:published=4"), (4, None));
        assert_eq!(published_in("another tool's"), (0, None));
        assert_eq!(published_in(""), (0, None));
    }
}
