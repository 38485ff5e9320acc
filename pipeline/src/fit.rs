//! Result events that fit one message (`limits.max_event_bytes`): Kafka refuses larger ones,
//! and a refused event would end the run again on every restart — one record blocking its
//! partition for good. What does not fit becomes a per-item outcome instead, decided the same
//! way on every replay (the ledger keeps the chunk's event as the store made it):
//! - a lookup's documents, largest first, until the event fits: those items fail with
//!   `too_large` (retryable: a smaller request can fetch them);
//! - then, if still too large, every error message is shortened, then emptied;
//! - then (only a chunk planned under a larger limit, see [`ITEM_STATUS_MAX_BYTES`]) the last
//!   items' errors are left out, until it fits: every item keeps its status.
//!
//! Item error messages are capped when made ([`cap_message`]), so a write chunk's event is
//! bounded by its item count; config checks that `chunk.max_items` results fit.

use serde::Serialize;

use crate::codes::ItemErrorCode;
use crate::contract::{ItemError, ItemResult, ItemStatus, ProgressEvent, RejectedEvent};

/// Longest item error message, in bytes.
pub const MESSAGE_MAX: usize = 512;
/// Message length once an event had to be shortened.
const SHORT_MESSAGE: usize = 64;

/// `message` cut to at most `max` bytes on a character boundary (with `…` when cut).
pub fn cap_message(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = message;
    cut.truncate(end);
    cut.push('…');
    cut
}

/// What a progress event's message has before its body's members: `ResultEvent`'s tag.
const PROGRESS_TAG: &str = r#"{"event":"progress","#;

/// Whether a progress event whose body (`serde_json` of its [`ProgressEvent`]) is `body_len`
/// bytes fits `limit` as a message, i.e. [`fit_progress`] would leave it as it is.
pub(crate) fn progress_fits(body_len: usize, limit: usize) -> bool {
    body_len.saturating_add(PROGRESS_TAG.len() - 1) <= limit
}

/// Writes the message of a progress event from its body (`serde_json` of its
/// [`ProgressEvent`], e.g. as the ledger holds it) into `out`: the bytes `serde_json` makes of
/// `ResultEvent::Progress`, without serializing the event again.
pub(crate) fn progress_message(body: &str, out: &mut Vec<u8>) {
    debug_assert!(body.starts_with('{') && body.len() > 2, "{body}");
    out.extend_from_slice(PROGRESS_TAG.as_bytes());
    out.extend_from_slice(&body.as_bytes()[1..]);
}

/// Bytes of `v`'s JSON encoding, without building it.
fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v).map_or(usize::MAX, |()| c.0)
}

/// Makes `event` at most `max` bytes of JSON (see the module docs). Cheap when it cannot be
/// too large: without documents, its size is bounded by its item count.
pub fn fit_progress(event: &mut ProgressEvent, limit: usize) {
    // `limit` bounds the message, which is the event with its tag (`ResultEvent`).
    let max = limit.saturating_sub(PROGRESS_TAG.len() - 1);
    let has_docs = event.items.iter().any(|i| i.doc.is_some());
    // A message's JSON can be up to 6 times its bytes (control characters as \uXXXX).
    let bound = event.items.len() * (6 * MESSAGE_MAX + 160) + 1024;
    if !has_docs && bound <= max {
        return;
    }
    let mut size = json_len(event);
    if size <= max {
        return;
    }
    let mut docs: Vec<(usize, usize)> = event
        .items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| item.doc.as_ref().map(|d| (i, json_len(d))))
        .collect();
    docs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (i, doc_len) in docs {
        if size <= max {
            break;
        }
        let item = &mut event.items[i];
        let before = json_len(item);
        *item = ItemResult::error(
            item.index,
            ItemStatus::Failed,
            ItemErrorCode::TooLarge,
            format!(
                "the document ({doc_len} bytes) does not fit in one result event with the \
                 others of its chunk (limits.max_event_bytes = {limit}); look it up in a smaller \
                 request"
            ),
            true,
        );
        size = size + json_len(item) - before;
    }
    if size > max {
        for item in &mut event.items {
            if let Some(ItemError { message, path, .. }) = &mut item.error {
                *message = cap_message(std::mem::take(message), SHORT_MESSAGE);
                // A shortened result must fit `ITEM_RESULT_MAX_BYTES` (config), which leaves
                // no room for a path; the message still names the offending part.
                *path = None;
            }
        }
        // Messages of control characters can still be too long escaped: the codes remain.
        size = json_len(event);
        if size > max {
            for item in &mut event.items {
                if let Some(e) = &mut item.error {
                    e.message.clear();
                }
            }
            size = json_len(event);
        }
        // A chunk planned under a larger limit (the plan is stored with the claim, and
        // `limits.max_event_bytes` was lowered since) can hold more items than codes fit:
        // the last items' errors go, until the event fits; every status stays.
        for item in event.items.iter_mut().rev() {
            if size <= max {
                break;
            }
            if item.error.is_some() {
                let before = json_len(item);
                item.error = None;
                size = size + json_len(item) - before;
            }
        }
    }
}

/// Bytes of one item result without its error, at most (`{"index":…,"status":"not_attempted"`
/// or `"duplicate","of":…}` with indexes of 7 digits, and a comma): a chunk of up to
/// (`limits.max_event_bytes` − 2 KiB) / 52 items always fits — 1,220 at the 64 KiB floor, more
/// than the default chunk sizes (500, atomic 1,000) ever plan.
pub const ITEM_STATUS_MAX_BYTES: usize = 52;

/// Makes a rejection at most `max` bytes: messages are shortened, then later errors dropped
/// (the first ones say why the request was rejected).
pub fn fit_rejected(event: &mut RejectedEvent, limit: usize) {
    // As for progress events: the message carries the tag too.
    let max = limit.saturating_sub(r#""event":"rejected","#.len());
    if json_len(event) <= max {
        return;
    }
    for e in &mut event.errors {
        e.message = cap_message(std::mem::take(&mut e.message), SHORT_MESSAGE);
        e.path = cap_message(std::mem::take(&mut e.path), SHORT_MESSAGE);
    }
    // Linear: a record of many bad members makes many errors, and measuring the whole event
    // again after each one dropped would be quadratic in them.
    let mut size = json_len(event);
    while event.errors.len() > 1 && size > max {
        if let Some(dropped) = event.errors.pop() {
            size -= json_len(&dropped) + 1; // and the comma before it
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::record::SourceRef;

    fn event(items: Vec<ItemResult>) -> ProgressEvent {
        ProgressEvent {
            request_id: "r".into(),
            chunk: 0,
            chunks: 1,
            items,
            source: SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
        }
    }

    fn found(index: usize, bytes: usize) -> ItemResult {
        ItemResult {
            doc: Some(json!({"text": format!("k{index}"), "pad": "x".repeat(bytes)})),
            ..ItemResult::status(index, ItemStatus::Ok)
        }
    }

    /// The message made from a body is byte for byte what serializing the tagged event
    /// gives, and `progress_fits` agrees with the message's length.
    #[test]
    fn a_progress_message_from_its_body_is_the_serialized_event() {
        let mut failed = ItemResult::error(
            1,
            ItemStatus::Failed,
            ItemErrorCode::Exists,
            "\"quoted\" \u{0} é \u{10348}",
            false,
        );
        failed.of = Some(0);
        let mut e = event(vec![
            ItemResult::status(0, ItemStatus::Ok),
            failed,
            found(2, 10),
        ]);
        e.request_id = "r\"\\id".into();
        let body = serde_json::to_string(&e).unwrap();
        let mut message = Vec::new();
        progress_message(&body, &mut message);
        let expected = serde_json::to_vec(&crate::contract::ResultEvent::Progress(e)).unwrap();
        assert_eq!(
            String::from_utf8(message.clone()).unwrap(),
            String::from_utf8(expected).unwrap()
        );
        assert!(progress_fits(body.len(), message.len()));
        assert!(!progress_fits(body.len(), message.len() - 1));
    }

    #[test]
    fn documents_that_do_not_fit_fail_largest_first_and_the_rest_stay() {
        let max = 64 * 1024;
        let mut e = event(vec![
            found(0, 30_000),
            found(1, 50_000),
            found(2, 1_000),
            found(3, 40_000),
        ]);
        fit_progress(&mut e, max);
        assert!(json_len(&e) <= max, "{} bytes", json_len(&e));
        let statuses: Vec<_> = e.items.iter().map(|i| i.status).collect();
        use ItemStatus::*;
        assert_eq!(statuses, vec![Ok, Failed, Ok, Failed]);
        let err = e.items[1].error.as_ref().unwrap();
        assert_eq!(err.code, ItemErrorCode::TooLarge);
        assert!(err.retryable);
        // The same input gives the same event (a replay publishes what the first run did).
        let mut again = event(vec![
            found(0, 30_000),
            found(1, 50_000),
            found(2, 1_000),
            found(3, 40_000),
        ]);
        fit_progress(&mut again, max);
        assert_eq!(again, e);
    }

    #[test]
    fn a_chunk_planned_under_a_larger_limit_keeps_every_status_and_the_codes_that_fit() {
        // 1,500 items: a plan made under the default 900 KiB, published under the 64 KiB floor.
        let max = 64 * 1024;
        let failed = |i| {
            let message = format!("a document with key \"w-{i}\" already exists in words");
            ItemResult::error(i, ItemStatus::Failed, ItemErrorCode::Exists, message, false)
        };
        let mut e = event((0..1500).map(failed).collect());
        assert!(json_len(&e) > max);
        fit_progress(&mut e, max);
        let message = serde_json::to_vec(&crate::contract::ResultEvent::Progress(e.clone()));
        assert!(
            message.unwrap().len() <= max,
            "the message, tag and all, fits"
        );
        assert_eq!(e.items.len(), 1500);
        assert!(e.items.iter().all(|i| i.status == ItemStatus::Failed));
        let coded = e.items.iter().take_while(|i| i.error.is_some()).count();
        assert!(coded > 0, "the first items keep their codes");
        assert!(e.items[coded..].iter().all(|i| i.error.is_none()));
        assert_eq!(
            e.items[0].error.as_ref().unwrap().code,
            ItemErrorCode::Exists
        );
        // The largest chunk the floor carries is one the defaults (500, atomic 1,000) never pass.
        assert!((max - 2048) / ITEM_STATUS_MAX_BYTES >= 1_000);
        let worst = ItemResult {
            of: Some(9_999_998),
            ..ItemResult::status(9_999_999, ItemStatus::Duplicate)
        };
        assert!(
            json_len(&worst) < ITEM_STATUS_MAX_BYTES,
            "{}",
            json_len(&worst)
        );
    }

    /// The limit is the message's: the event with its `"event"` tag, as the sink sends it.
    #[test]
    fn fitted_events_fit_with_their_tag_at_every_limit() {
        use crate::codes::RejectCode;
        use crate::contract::{RejectError, ResultEvent};
        let source = SourceRef {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        for limit in 64 * 1024..64 * 1024 + 120 {
            let failed = |i: usize| {
                let message = format!("item {i} {}", "x".repeat(i % 7));
                ItemResult::error(i, ItemStatus::Failed, ItemErrorCode::Exists, message, false)
            };
            let mut e = event((0..1500).map(failed).collect());
            fit_progress(&mut e, limit);
            let bytes = serde_json::to_vec(&ResultEvent::Progress(e)).unwrap();
            assert!(bytes.len() <= limit, "progress: {} > {limit}", bytes.len());

            let errors = (0..3000)
                .map(|i| RejectError {
                    code: RejectCode::InvalidField,
                    message: format!("field {i} {}", "y".repeat(i % 5)),
                    path: format!("/f{i}"),
                })
                .collect();
            let mut r = RejectedEvent {
                request_id: "r".into(),
                errors,
                source: source.clone(),
            };
            fit_rejected(&mut r, limit);
            let bytes = serde_json::to_vec(&ResultEvent::Rejected(r)).unwrap();
            assert!(bytes.len() <= limit, "rejected: {} > {limit}", bytes.len());
        }
    }

    #[test]
    fn small_events_are_left_alone_and_long_messages_are_cut_on_a_char_boundary() {
        let mut e = event(vec![found(0, 10)]);
        let before = e.clone();
        fit_progress(&mut e, 64 * 1024);
        assert_eq!(e, before);
        let cut = cap_message("é".repeat(400), 101);
        assert!(cut.len() <= 101 && cut.ends_with('…'), "{cut}");
        assert_eq!(cap_message("short".into(), 10), "short");
    }
}
