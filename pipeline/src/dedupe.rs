//! Stage 2, stateful: collapse duplicate keys inside a request (later ones become `duplicate`
//! of the first) and recognise request_ids already seen from another record, through the
//! store's request ledger fronted by a bounded in-memory cache.

use std::collections::HashMap;
use std::num::NonZeroUsize;
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
use crate::store::{Claim, Store};
use crate::work::Work;

/// The dedupe stage.
pub struct Dedupe {
    store: Arc<dyn Store>,
    cache: LruCache<String, (SourceRef, Instant)>,
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

    async fn claim(&mut self, request_id: &str, source: &SourceRef) -> Result<Claim, StageError> {
        if let Some((owner, at)) = self.cache.get(request_id) {
            if at.elapsed() < self.window {
                return Ok(if owner == source {
                    Claim::Owned
                } else {
                    Claim::DuplicateOf(owner.clone())
                });
            }
        }
        let expires_at = unix_now() + self.window.as_secs() as i64;
        let store = &self.store;
        let claim = self
            .retry
            .run("claim", &self.abort, || {
                store.claim(request_id, source, expires_at)
            })
            .await
            .map_err(|e| StageError::Fatal(format!("cannot read the request ledger: {e}")))?;
        let owner = match &claim {
            Claim::Owned => source.clone(),
            Claim::DuplicateOf(o) => o.clone(),
        };
        self.cache
            .put(request_id.to_string(), (owner, Instant::now()));
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
        match self.claim(&request.request_id, &meta.source).await? {
            Claim::Owned => {
                mark_duplicate_items(&mut request);
                out.send(Work::Execute {
                    meta,
                    request,
                    chunks,
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
}
