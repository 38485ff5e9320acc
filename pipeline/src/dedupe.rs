//! Stage 3, stateful: claim each request's id in the store's request ledger (fronted by a
//! bounded in-memory cache) — recognising request_ids already seen from another record, and
//! recording, with the first claim, the chunk plan and the claim time that every replay of the
//! request reuses — and collapse duplicate keys inside a request (later ones become
//! `duplicate` of the first).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use sluice_config::Config;
use tokio_util::sync::CancellationToken;

use crate::contract::{DuplicateEvent, ItemResult, ItemStatus, ResultEvent};
use crate::record::SourceRef;
use crate::request::{Key, Request};
use crate::retry::RetryPolicy;
use crate::stage::{Outbox, Stage, StageError};
use crate::store::{Claim, Claimed, Store};
use crate::work::Work;

/// The dedupe stage.
pub struct Dedupe {
    store: Arc<dyn Store>,
    /// request_id → the record that claimed it, its claim when it is ours, and when cached.
    cache: LruCache<String, (SourceRef, Option<Claimed>, Instant)>,
    window: Duration,
    retry: RetryPolicy,
    abort: CancellationToken,
}

impl Dedupe {
    /// A dedupe stage over `store`'s request ledger; `abort` interrupts waits for the store.
    pub fn new(config: &Config, store: Arc<dyn Store>, abort: CancellationToken) -> Self {
        let entries =
            NonZeroUsize::new(config.dedupe.cache_entries.max(1)).expect("max(1) is non-zero");
        Dedupe {
            store,
            cache: LruCache::new(entries),
            window: Duration::from_secs(config.dedupe.window_secs),
            retry: RetryPolicy::from(&config.execute),
            abort,
        }
    }

    async fn claim(
        &mut self,
        request_id: &str,
        source: &SourceRef,
        plan: &[Range<usize>],
    ) -> Result<Claim, StageError> {
        if let Some((owner, claimed, at)) = self.cache.get(request_id) {
            if at.elapsed() < self.window {
                match claimed {
                    Some(c) if owner == source => return Ok(Claim::Owned(c.clone())),
                    _ if owner != source => return Ok(Claim::DuplicateOf(owner.clone())),
                    _ => {}
                }
            }
        }
        let expires_at = unix_now() + self.window.as_secs() as i64;
        let store = &self.store;
        let claim = self
            .retry
            .run("claim", &self.abort, || {
                store.claim(request_id, source, expires_at, plan)
            })
            .await
            .map_err(|e| StageError::Fatal(format!("cannot read the request ledger: {e}")))?;
        let cached = match &claim {
            Claim::Owned(c) => (source.clone(), Some(c.clone()), Instant::now()),
            Claim::DuplicateOf(o) => (o.clone(), None, Instant::now()),
        };
        self.cache.put(request_id.to_string(), cached);
        Ok(claim)
    }
}

/// Marks items whose key repeats an earlier item's key as `duplicate` of it.
pub fn mark_duplicate_items(request: &mut Request) {
    if !request.options.dedupe {
        return;
    }
    let mut first: HashMap<Key, usize> = HashMap::new();
    for item in &mut request.items {
        if item.decided.is_some() {
            continue;
        }
        let Some(key) = &item.key else { continue };
        match first.get(key) {
            Some(&of) => {
                let mut r = ItemResult::status(item.index, ItemStatus::Duplicate);
                r.of = Some(of);
                item.decided = Some(r);
            }
            None => {
                first.insert(key.clone(), item.index);
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Stage for Dedupe {
    type In = Work;
    type Out = Work;
    const NAME: &'static str = "dedupe";

    async fn process(&mut self, input: Work, out: &Outbox<Work>) -> Result<(), StageError> {
        let Work::Execute {
            meta,
            mut request,
            chunks,
        } = input
        else {
            return out.send(input).await;
        };
        match self
            .claim(&request.request_id, &meta.source, &chunks)
            .await?
        {
            Claim::Owned(claim) => {
                mark_duplicate_items(&mut request);
                out.send(Work::Claimed {
                    meta,
                    request,
                    claim,
                })
                .await
            }
            Claim::DuplicateOf(original) => {
                let event = ResultEvent::Duplicate(DuplicateEvent {
                    request_id: request.request_id,
                    original,
                    source: meta.source.clone(),
                });
                out.send(Work::Finished {
                    meta,
                    event,
                    op: Some(request.op),
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Op, Options};
    use crate::request::{Item, ItemBody};

    fn request(keys: &[Option<&str>], dedupe: bool) -> Request {
        let items = keys
            .iter()
            .enumerate()
            .map(|(index, k)| Item {
                index,
                key: k.map(|k| Key::Str(k.into())),
                body: ItemBody::Key,
                bytes: 1,
                decided: k
                    .is_none()
                    .then(|| ItemResult::status(index, ItemStatus::Failed)),
            })
            .collect();
        Request {
            request_id: "r".into(),
            collection: "c".into(),
            op: Op::Delete,
            items,
            options: Options {
                dedupe,
                ..Options::default()
            },
        }
    }

    fn statuses(r: &Request) -> Vec<Option<(ItemStatus, Option<usize>)>> {
        r.items
            .iter()
            .map(|i| i.decided.as_ref().map(|d| (d.status, d.of)))
            .collect()
    }

    #[test]
    fn later_repeats_are_duplicates_of_the_first() {
        let mut r = request(
            &[Some("a"), Some("b"), Some("a"), None, Some("b"), Some("a")],
            true,
        );
        mark_duplicate_items(&mut r);
        assert_eq!(
            statuses(&r),
            vec![
                None,
                None,
                Some((ItemStatus::Duplicate, Some(0))),
                Some((ItemStatus::Failed, None)),
                Some((ItemStatus::Duplicate, Some(1))),
                Some((ItemStatus::Duplicate, Some(0))),
            ]
        );
    }

    #[test]
    fn dedupe_false_keeps_every_item() {
        let mut r = request(&[Some("a"), Some("a")], false);
        mark_duplicate_items(&mut r);
        assert_eq!(statuses(&r), vec![None, None]);
    }

    #[tokio::test]
    async fn a_reread_record_gets_its_first_claim_back_and_another_record_is_a_duplicate() {
        let config = crate::testkit::config("");
        let store: Arc<dyn Store> = Arc::new(crate::testkit::MemStore::default());
        let mut d = Dedupe::new(&config, store.clone(), CancellationToken::new());
        let src = |offset| SourceRef {
            topic: "t".into(),
            partition: 0,
            offset,
        };
        let Claim::Owned(first) = d.claim("r", &src(1), &[0..2, 2..3]).await.unwrap() else {
            panic!("first claim")
        };
        // The same record read again after the chunk config changed: the stored plan wins,
        // through the cache and through the store alike.
        // One chunk of items 0..3 (a one-element plan).
        let whole: Vec<std::ops::Range<usize>> = std::iter::once(0..3).collect();
        let again = d.claim("r", &src(1), &whole).await.unwrap();
        assert_eq!(again, Claim::Owned(first.clone()));
        let mut fresh = Dedupe::new(&config, store, CancellationToken::new());
        assert_eq!(
            fresh.claim("r", &src(1), &whole).await.unwrap(),
            Claim::Owned(first.clone())
        );
        assert_eq!(first.plan, vec![0..2, 2..3]);
        assert_eq!(
            fresh.claim("r", &src(9), &whole).await.unwrap(),
            Claim::DuplicateOf(src(1))
        );
    }
}
