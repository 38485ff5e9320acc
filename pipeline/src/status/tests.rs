use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::contract::{CompletedEvent, ItemResult, ItemStatus};

/// A reader over an in-memory claim and ledger.
#[derive(Default)]
struct Memory {
    claim: Mutex<Option<ClaimRecord>>,
    ledger: Mutex<BTreeMap<usize, String>>,
}

#[async_trait]
impl StatusReader for Memory {
    async fn claim(&self, _: &str) -> Result<Option<ClaimRecord>, StoreError> {
        Ok(self.claim.lock().unwrap().clone())
    }
    async fn ledger(
        &self,
        _: &str,
        _: i64,
        from: usize,
        to: usize,
    ) -> Result<Vec<(usize, String)>, StoreError> {
        let l = self.ledger.lock().unwrap();
        Ok(l.range(from..to).map(|(c, t)| (*c, t.clone())).collect())
    }
    async fn chunks_done(&self, _: &str, _: i64) -> Result<usize, StoreError> {
        Ok(self.ledger.lock().unwrap().len())
    }
    async fn in_flight(
        &self,
        _: Option<&Cursor>,
        _: usize,
    ) -> Result<Vec<ClaimRecord>, StoreError> {
        Ok(self.claim.lock().unwrap().iter().cloned().collect())
    }
}

fn source() -> SourceRef {
    SourceRef {
        topic: "t".into(),
        partition: 1,
        offset: 7,
    }
}

fn progress(chunk: usize, chunks: usize) -> ProgressEvent {
    ProgressEvent {
        request_id: "r-1".into(),
        chunk,
        chunks,
        items: vec![
            ItemResult::status(chunk * 2, ItemStatus::Ok),
            ItemResult::failed(chunk * 2 + 1, crate::codes::ItemErrorCode::Exists, "exists"),
        ],
        source: source(),
    }
}

fn claimed(chunks: usize) -> ClaimRecord {
    ClaimRecord {
        request_id: "r-1".into(),
        source: source(),
        claimed_at_ms: 1234,
        plan: (0..=chunks as i64).map(|c| c * 2).collect(),
        expires_at: None,
        terminal: None,
        collection: Some("words".into()),
        op: Some("create".into()),
        deadline_at_ms: None,
    }
}

/// What the sinks publish for `event`.
fn published(event: &ResultEvent) -> String {
    let mut out = Vec::new();
    serde_json::to_writer(&mut out, event).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn events_come_in_chunk_order_without_gaps_then_the_terminal_event() {
    let m = Memory::default();
    assert_eq!(status(&m, "r-1").await.unwrap().state, State::Unknown);
    *m.claim.lock().unwrap() = Some(claimed(3));
    let ledger = |c: usize| serde_json::to_string(&progress(c, 3)).unwrap();
    // Chunk 1 settled before chunk 0: nothing can be served yet.
    m.ledger.lock().unwrap().insert(1, ledger(1));
    assert!(events(&m, "r-1", 0, 10).await.unwrap().1.is_empty());
    let s = status(&m, "r-1").await.unwrap();
    assert_eq!(s.state, State::InProgress);
    assert_eq!(
        s.chunks,
        Some(Chunks {
            planned: 3,
            done: 1
        })
    );
    assert_eq!(s.counts.as_ref().unwrap().failed, 1);
    m.ledger.lock().unwrap().insert(0, ledger(0));
    let (_, got) = events(&m, "r-1", 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["1234:0", "1234:1"]
    );
    // Byte-identical to what a sink publishes.
    assert_eq!(
        got[1].text,
        published(&ResultEvent::Progress(progress(1, 3)))
    );
    // Resuming after position 1; chunk 2 and the terminal event arrive.
    m.ledger.lock().unwrap().insert(2, ledger(2));
    let done = ResultEvent::Completed(CompletedEvent {
        request_id: "r-1".into(),
        chunks: 3,
        counts: Counts {
            total: 6,
            ok: 3,
            failed: 3,
            ..Counts::default()
        },
        duration_ms: 5,
        source: source(),
    });
    m.claim.lock().unwrap().as_mut().unwrap().terminal = Some(published(&done));
    assert_eq!(
        events(&m, "r-1", 2, 1).await.unwrap().1.len(),
        1,
        "at most max"
    );
    let (_, got) = events(&m, "r-1", 2, 10).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].text, published(&done));
    assert!(got[1].terminal && got[1].id == "1234:3");
    assert!(
        events(&m, "r-1", 4, 10).await.unwrap().1.is_empty(),
        "nothing after the terminal event"
    );
    let s = status(&m, "r-1").await.unwrap();
    assert_eq!(s.state, State::Completed);
    assert_eq!(s.terminal.unwrap().get(), published(&done));
    assert_eq!(s.counts.unwrap().total, 6);
}

#[test]
fn request_ids_and_cursors_are_checked_like_the_contract() {
    assert!(valid_request_id("imp-2026.11:0001_x"));
    for bad in ["", "a b", "a/b", "é", "a'--", &"x".repeat(129)] {
        assert!(!valid_request_id(bad), "{bad:?}");
    }
    let c = Cursor {
        claimed_at_ms: 17,
        request_id: "a:b".into(),
    };
    assert_eq!(Cursor::decode(&c.encode()), Some(c));
    assert_eq!(Cursor::decode("x:y"), None);
    assert_eq!(Cursor::decode("1:a b"), None);
}
