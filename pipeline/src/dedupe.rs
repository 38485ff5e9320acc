//! Stage 3, stateful: claim each request's id in the store's request ledger (fronted by a
//! bounded in-memory cache) — recognising request_ids already seen from another record, and
//! recording, with the first claim, the chunk plan and the claim time that every replay of the
//! request reuses — and collapse duplicate keys inside a request (later ones become
//! `duplicate` of the first).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use sluice_config::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codes::StoreError;
use crate::contract::{DuplicateEvent, ItemResult, ItemStatus, ResultEvent};
use crate::record::Meta;
use crate::record::SourceRef;
use crate::request::{Key, Request};
use crate::retry::RetryPolicy;
use crate::stage::{Outbox, Stage, StageError};
use crate::store::{About, Claim, ClaimInput, Claimed, Store};
use crate::work::Work;

/// Claims the dedupe stage makes in one store call at most: the records already waiting in
/// its inbox, up to this many (a bound on one transaction's size, not a wait for more).
const CLAIM_BATCH: usize = 64;

/// Claim batches the dedupe stage keeps in flight: it sends the next batch to the store while
/// earlier ones are still being claimed, and passes records on in source order as their
/// batches complete (the store's writer is never idle waiting for the stage).
const BATCHES_IN_FLIGHT: usize = 2;

/// One claim the store is asked for (owned: it goes to a task of its own).
struct Wanted {
    request_id: String,
    source: SourceRef,
    plan: Vec<Range<usize>>,
    /// `About::collection`, `op` and `deadline_ms`.
    about: (String, Option<crate::contract::Op>, Option<u64>),
}

impl From<&ClaimInput<'_>> for Wanted {
    fn from(c: &ClaimInput<'_>) -> Self {
        Wanted {
            request_id: c.request_id.to_string(),
            source: c.source.clone(),
            plan: c.plan.to_vec(),
            about: (
                c.about.collection.to_string(),
                c.about.op,
                c.about.deadline_ms,
            ),
        }
    }
}

/// A batch of records whose claims are being made.
struct Batch {
    inputs: Vec<Work>,
    /// Per `Execute` input, in order: the claim the cache knew, or `None` (asked of the store).
    known: Vec<Option<Claim>>,
    /// The request_ids the store is asked about.
    asked: HashSet<String>,
    claims: JoinHandle<Result<Vec<Claim>, StoreError>>,
    /// The task's outcome once [`Stage::ready`] saw it end.
    done: Option<Result<Vec<Claim>, StoreError>>,
}

/// The dedupe stage.
pub struct Dedupe {
    store: Arc<dyn Store>,
    /// request_id → the record that owns it, its claim, and until when the store is sure to
    /// answer the same (never later than the claim's expiry; hits do not extend it).
    cache: LruCache<String, (SourceRef, Claimed, Instant)>,
    window: Duration,
    retry: RetryPolicy,
    abort: CancellationToken,
    /// Batches in flight, oldest first.
    batches: VecDeque<Batch>,
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
            batches: VecDeque::new(),
        }
    }

    /// The claim the cache still knows for `request_id` read from `source`, if any: the same
    /// answer the store would give now (see [`Dedupe::remember`]).
    fn cached(&mut self, request_id: &str, source: &SourceRef) -> Option<Claim> {
        let (owner, claimed, until) = self.cache.peek(request_id)?;
        if Instant::now() >= *until {
            self.cache.pop(request_id);
            return None;
        }
        let answer = if owner == source {
            Claim::Owned(claimed.clone())
        } else {
            Claim::DuplicateOf(owner.clone())
        };
        // A hit moves the entry up the LRU order, but never extends its life.
        self.cache.promote(request_id);
        Some(answer)
    }

    /// Caches a claim the store just answered. Only owned claims are kept, and only as long as
    /// the store is sure to answer the same: at most one window from now (an unfinished claim
    /// never expires, and once released it lives a window from its release, which comes
    /// later), and never past the expiry the store reported. A `DuplicateOf` is not cached:
    /// its owner may be released by another process at any moment, starting a window this
    /// process cannot see.
    fn remember(&mut self, request_id: &str, source: &SourceRef, claim: &Claim) {
        let Claim::Owned(c) = claim else { return };
        let mut life = self.window;
        if let Some(expires_at) = c.expires_at {
            let left = expires_at.saturating_sub(unix_now()).max(0) as u64;
            life = life.min(Duration::from_secs(left));
        }
        if life.is_zero() {
            self.cache.pop(request_id);
            return;
        }
        let until = Instant::now() + life;
        self.cache
            .put(request_id.to_string(), (source.clone(), c.clone(), until));
    }

    /// Asks the store for `wanted` claims, retrying as for any store call.
    fn ask(&self, wanted: Vec<Wanted>) -> JoinHandle<Result<Vec<Claim>, StoreError>> {
        let (store, retry, abort) = (self.store.clone(), self.retry.clone(), self.abort.clone());
        tokio::spawn(async move {
            if wanted.is_empty() {
                return Ok(Vec::new());
            }
            let inputs: Vec<ClaimInput<'_>> = wanted
                .iter()
                .map(|w| ClaimInput {
                    request_id: &w.request_id,
                    source: &w.source,
                    plan: &w.plan,
                    about: About {
                        collection: &w.about.0,
                        op: w.about.1,
                        deadline_ms: w.about.2,
                    },
                })
                .collect();
            let claims = retry
                .run("claim", &abort, || store.claim_many(&inputs))
                .await?;
            if claims.len() != inputs.len() {
                return Err(StoreError::permanent(
                    "claims",
                    format!(
                        "{} claims answered for {} (a store bug)",
                        claims.len(),
                        inputs.len()
                    ),
                ));
            }
            Ok(claims)
        })
    }

    /// The claims of `known` (from the cache) and `asked` (from the store, in order of the
    /// unknown ones), recorded in the cache.
    fn merge(
        &mut self,
        wanted: &[ClaimInput<'_>],
        known: Vec<Option<Claim>>,
        asked: Result<Vec<Claim>, StoreError>,
    ) -> Result<Vec<Claim>, StageError> {
        let asked =
            asked.map_err(|e| StageError::Fatal(format!("cannot read the request ledger: {e}")))?;
        let mut asked = asked.into_iter();
        let mut claims = Vec::with_capacity(known.len());
        for (w, k) in wanted.iter().zip(known) {
            let claim = match k {
                Some(cached) => cached,
                None => {
                    let claim = asked.next().ok_or_else(|| {
                        StageError::Fatal("a request without its claim (a dedupe bug)".into())
                    })?;
                    // Only what the store answered is cached: a hit never refreshes an entry.
                    self.remember(w.request_id, w.source, &claim);
                    claim
                }
            };
            claims.push(claim);
        }
        Ok(claims)
    }

    /// Starts claiming a batch: what the cache knows now, the rest from the store. A batch
    /// that names a request_id an earlier batch is still claiming waits for that one first,
    /// so claims of one request_id are made in source order.
    async fn submit(&mut self, inputs: Vec<Work>, out: &Outbox<Work>) -> Result<(), StageError> {
        let ids = claims_of(&inputs);
        while self.batches.len() >= BATCHES_IN_FLIGHT
            || self
                .batches
                .iter()
                .any(|b| ids.iter().any(|c| b.asked.contains(c.request_id)))
        {
            self.emit_oldest(out).await?;
        }
        let mut wanted = Vec::new();
        let mut known = Vec::with_capacity(ids.len());
        for c in &ids {
            let k = self.cached(c.request_id, c.source);
            if k.is_none() {
                wanted.push(Wanted::from(c));
            }
            known.push(k);
        }
        let asked = wanted.iter().map(|w| w.request_id.clone()).collect();
        let claims = self.ask(wanted);
        drop(ids);
        self.batches.push_back(Batch {
            inputs,
            known,
            asked,
            claims,
            done: None,
        });
        Ok(())
    }

    /// Waits for the oldest batch's claims and passes its records on, in order.
    async fn emit_oldest(&mut self, out: &Outbox<Work>) -> Result<(), StageError> {
        let Some(mut batch) = self.batches.pop_front() else {
            return Ok(());
        };
        let asked = match batch.done.take() {
            Some(r) => r,
            None => (&mut batch.claims)
                .await
                .map_err(|e| StageError::Fatal(format!("claim task failed: {e}")))?,
        };
        let claims = self.merge(&claims_of(&batch.inputs), batch.known, asked)?;
        let mut claims = claims.into_iter();
        for input in batch.inputs {
            let next = match input {
                Work::Execute { meta, request, .. } => {
                    let claim = claims.next().ok_or_else(|| {
                        StageError::Fatal("a request without its claim (a dedupe bug)".into())
                    })?;
                    after_claim(meta, request, claim)
                }
                other => other,
            };
            out.send(next).await?;
        }
        Ok(())
    }

    #[cfg(test)]
    async fn claim(
        &mut self,
        request_id: &str,
        source: &SourceRef,
        plan: &[Range<usize>],
    ) -> Result<Claim, StageError> {
        let one = ClaimInput {
            request_id,
            source,
            plan,
            about: About::default(),
        };
        let known = vec![self.cached(request_id, source)];
        let wanted = match known[0] {
            Some(_) => Vec::new(),
            None => vec![Wanted::from(&one)],
        };
        let asked = self
            .ask(wanted)
            .await
            .map_err(|e| StageError::Fatal(e.to_string()))?;
        Ok(self.merge(&[one], known, asked)?.remove(0))
    }
}

/// The claims the `Execute` records among `inputs` need, in order.
fn claims_of(inputs: &[Work]) -> Vec<ClaimInput<'_>> {
    inputs
        .iter()
        .filter_map(|w| match w {
            Work::Execute {
                meta,
                request,
                chunks,
            } => Some(ClaimInput {
                request_id: &request.request_id,
                source: &meta.source,
                plan: chunks,
                about: About {
                    collection: &request.collection,
                    op: Some(request.op),
                    deadline_ms: request.options.deadline_ms,
                },
            }),
            _ => None,
        })
        .collect()
}

/// Where a claimed request goes next.
fn after_claim(meta: Meta, mut request: Request, claim: Claim) -> Work {
    match claim {
        Claim::Owned(claim) => {
            mark_duplicate_items(&mut request);
            Work::Claimed {
                meta,
                request,
                claim,
            }
        }
        Claim::DuplicateOf(original) => {
            let event = ResultEvent::Duplicate(DuplicateEvent {
                request_id: request.request_id,
                original,
                source: meta.source.clone(),
            });
            Work::Finished {
                meta,
                event,
                op: Some(request.op),
            }
        }
    }
}

/// Marks items whose key repeats an earlier item's key as `duplicate` of it.
pub fn mark_duplicate_items(request: &mut Request) {
    if !request.options.dedupe {
        return;
    }
    // Keys are borrowed, not copied (one look-up per item, no allocation per key); the
    // repeats are marked once the look-ups are done.
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    {
        let mut first: HashMap<&Key, usize> = HashMap::with_capacity(request.items.len());
        for (at, item) in request.items.iter().enumerate() {
            if item.decided.is_some() {
                continue;
            }
            let Some(key) = &item.key else { continue };
            match first.entry(key) {
                Entry::Occupied(e) => repeats.push((at, *e.get())),
                Entry::Vacant(e) => {
                    e.insert(item.index);
                }
            }
        }
    }
    for (at, of) in repeats {
        let item = &mut request.items[at];
        let mut r = ItemResult::status(item.index, ItemStatus::Duplicate);
        r.of = Some(of);
        item.decided = Some(Box::new(r));
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

    fn batch_limit(&self) -> usize {
        CLAIM_BATCH
    }

    async fn process(&mut self, input: Work, out: &Outbox<Work>) -> Result<(), StageError> {
        self.submit(vec![input], out).await
    }

    async fn process_batch(
        &mut self,
        inputs: Vec<Work>,
        out: &Outbox<Work>,
    ) -> Result<(), StageError> {
        self.submit(inputs, out).await
    }

    async fn ready(&mut self) {
        match self.batches.front_mut() {
            Some(b) if b.done.is_none() => {
                b.done = Some(
                    (&mut b.claims)
                        .await
                        .unwrap_or_else(|e| Err(StoreError::permanent("join", e.to_string()))),
                )
            }
            Some(_) => {}
            None => std::future::pending().await,
        }
    }

    async fn on_ready(&mut self, out: &Outbox<Work>) -> Result<(), StageError> {
        while self.batches.front().is_some_and(|b| b.done.is_some()) {
            self.emit_oldest(out).await?;
        }
        Ok(())
    }

    async fn on_drain(&mut self, out: &Outbox<Work>) -> Result<(), StageError> {
        while !self.batches.is_empty() {
            self.emit_oldest(out).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
