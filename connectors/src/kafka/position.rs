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
#[cfg(test)]
mod tests {
    use super::*;

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
