//! What became of a request, as the store knows it (DESIGN.md, "Request lifecycle and
//! status"): the [`StatusReader`] trait each store implements over its claims and chunk
//! ledger, and the store-independent answers built on it — [`status`] of one request,
//! its [`events`] in order, and the [`in_flight`] list — for the status API, the live stream
//! and `sluice status`. Nothing here comes from one instance's memory, so any instance
//! answers for any request, across restarts.
//!
//! - A claim without a terminal event is `in_progress`; with one, the terminal event's kind
//!   (`completed`); no claim is `unknown` — still queued, never seen, forgotten after its
//!   dedupe window, or rejected / dead-lettered (those claim nothing: a producer may fix the
//!   request and send it again under the same id; their terminal event is on the results topic
//!   only). A `duplicate` record's id shows the original's claim (its `source`).
//! - Events are served as the results topic carries them: the ledger's text is re-encoded
//!   exactly as the sinks encode a [`ResultEvent`] (`serde_json::to_writer`), which is
//!   byte-identical to what was published (a replay publishes the same parsed event).
//! - Lookup chunks write no ledger entry (their results carry documents and are read again on
//!   a replay): a lookup's progress events are on the results topic only; its status shows
//!   its state and terminal event.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::StoreError;
use crate::contract::{Counts, ProgressEvent, ResultEvent};
use crate::record::SourceRef;

/// A claim as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRecord {
    /// The request's id.
    pub request_id: String,
    /// The record that owns the id.
    pub source: SourceRef,
    /// First claim time (unix ms); the claim's generation in ledger keys.
    pub claimed_at_ms: i64,
    /// The chunk plan: first item of each chunk, then the item count (`store::plan_bounds`).
    pub plan: Vec<i64>,
    /// When the claim may be forgotten (unix seconds); `None` while it never expires
    /// (unfinished).
    pub expires_at: Option<i64>,
    /// The terminal event's JSON text, once published.
    pub terminal: Option<String>,
    /// Target collection, when the claim recorded it.
    pub collection: Option<String>,
    /// Operation, when the claim recorded it.
    pub op: Option<String>,
    /// The request's deadline (unix ms), when it has one and the claim recorded it.
    pub deadline_at_ms: Option<i64>,
}

impl ClaimRecord {
    /// Chunks the plan has.
    pub fn chunks(&self) -> usize {
        self.plan.len().saturating_sub(1)
    }

    /// Items of the request.
    pub fn items(&self) -> u64 {
        self.plan.last().map_or(0, |&n| n.max(0) as u64)
    }

    /// Whether the claim's terminal event is stored.
    pub fn finished(&self) -> bool {
        self.terminal.is_some()
    }
}

/// Where a page of the in-flight list starts: after this (claim time, request_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last listed claim's time (unix ms).
    pub claimed_at_ms: i64,
    /// The last listed request_id.
    pub request_id: String,
}

impl Cursor {
    /// The cursor's text form, `claimed_at_ms:request_id`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.claimed_at_ms, self.request_id)
    }

    /// Parses [`Cursor::encode`]'s form; `None` unless well formed with a valid request_id.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (at, id) = text.split_once(':')?;
        let claimed_at_ms = at.parse().ok()?;
        valid_request_id(id).then(|| Cursor {
            claimed_at_ms,
            request_id: id.to_string(),
        })
    }
}

/// What the status API needs from a store: reads only, never a write.
#[async_trait]
pub trait StatusReader: Send + Sync + 'static {
    /// The claim of `request_id`, if the store holds one.
    async fn claim(&self, request_id: &str) -> Result<Option<ClaimRecord>, StoreError>;

    /// The ledger's progress events of the claim `generation` of `request_id` with chunk
    /// index in `from..to`, as `(chunk, stored text)` in chunk order (chunks not settled yet
    /// are missing).
    async fn ledger(
        &self,
        request_id: &str,
        generation: i64,
        from: usize,
        to: usize,
    ) -> Result<Vec<(usize, String)>, StoreError>;

    /// How many chunks of the claim `generation` of `request_id` the ledger holds.
    async fn chunks_done(&self, request_id: &str, generation: i64) -> Result<usize, StoreError>;

    /// Unfinished claims, oldest first, after `after`, at most `limit`.
    async fn in_flight(
        &self,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<ClaimRecord>, StoreError>;
}

/// Whether `id` is a request_id the contract allows: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A request's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No claim: never seen, still queued, forgotten, or rejected / dead-lettered.
    Unknown,
    /// Claimed, terminal event not yet published.
    InProgress,
    /// Executed; the terminal `completed` event is stored.
    Completed,
    /// Terminal `rejected` event stored.
    Rejected,
    /// Terminal `duplicate` event stored.
    Duplicate,
}

/// Chunks of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Chunks {
    /// Chunks in the request's plan.
    pub planned: usize,
    /// Chunks whose outcome the ledger holds (lookups: 0 until completed — their results are
    /// not stored).
    pub done: usize,
}

/// `GET /v1/requests/{request_id}` and `sluice status`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "sluice request status (status API v1)")]
pub struct RequestStatus {
    /// The request.
    pub request_id: String,
    /// Its state.
    pub state: State,
    /// Why the state is what it is, when that needs saying (`unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Target collection (absent for claims made before sluice recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Operation (absent for claims made before sluice recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The record that owns the request_id (a later record with the same id is its
    /// `duplicate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// When the request was first claimed (unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at_ms: Option<i64>,
    /// Items in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    /// Chunks planned and done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Chunks>,
    /// Items by status so far (from the chunks done; the terminal event's counts once
    /// completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    /// When remaining chunks stop being attempted (unix milliseconds), if the request has a
    /// deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// When the store forgets the request (unix seconds): its terminal event's publication
    /// plus the dedupe window; absent while unfinished (never expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The terminal event, as the results topic carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<ResultEvent>")]
    pub terminal: Option<Box<RawValue>>,
}

/// One entry of `GET /v1/requests?state=in_progress`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InFlightEntry {
    /// The request.
    pub request_id: String,
    /// Target collection, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Operation, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The record that owns it.
    pub source: SourceRef,
    /// First claim time (unix milliseconds).
    pub claimed_at_ms: i64,
    /// Items in the request.
    pub items: u64,
    /// Chunks planned and done.
    pub chunks: Chunks,
}

/// `GET /v1/requests?state=in_progress&limit=…&after=…`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "sluice requests in flight (status API v1)")]
pub struct InFlightPage {
    /// Unfinished requests, oldest claim first.
    pub requests: Vec<InFlightEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The JSON Schemas of the status API's JSON answers, generated from the types above.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "request-status.schema.json",
            schemars::schema_for!(RequestStatus).to_value(),
        ),
        (
            "requests-in-flight.schema.json",
            schemars::schema_for!(InFlightPage).to_value(),
        ),
    ]
}

/// What the status API says of an id the store holds no claim for.
pub const UNKNOWN_NOTE: &str = "no claim in the store: never seen, still queued, forgotten after \
its dedupe window, or rejected or dead-lettered (those claim nothing; their events are on the \
results topic only)";

/// Ledger events read per store call (events are up to `limits.max_event_bytes` each: this
/// bounds what one read holds in memory).
pub const EVENTS_PAGE: usize = 16;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::permanent("corrupt", e.to_string())
}

/// A stored event's text as the results topic carries it: parsed and encoded again the way
/// the sinks encode events. Ledger entries hold a progress event without its `event` tag;
/// a terminal text is a whole [`ResultEvent`].
pub fn wire_event(text: &str, progress: bool) -> Result<String, StoreError> {
    let event = if progress {
        ResultEvent::Progress(serde_json::from_str::<ProgressEvent>(text).map_err(corrupt)?)
    } else {
        serde_json::from_str::<ResultEvent>(text).map_err(corrupt)?
    };
    let mut out = Vec::with_capacity(text.len() + 24);
    serde_json::to_writer(&mut out, &event).map_err(corrupt)?;
    String::from_utf8(out).map_err(corrupt)
}

/// The status of `request_id`.
pub async fn status(
    reader: &dyn StatusReader,
    request_id: &str,
) -> Result<RequestStatus, StoreError> {
    let Some(claim) = reader.claim(request_id).await? else {
        return Ok(RequestStatus {
            request_id: request_id.to_string(),
            state: State::Unknown,
            note: Some(UNKNOWN_NOTE.into()),
            collection: None,
            op: None,
            source: None,
            claimed_at_ms: None,
            items: None,
            chunks: None,
            counts: None,
            deadline_ms: None,
            expires_at: None,
            terminal: None,
        });
    };
    let planned = claim.chunks();
    let (state, terminal, counts, done) = match &claim.terminal {
        Some(text) => {
            let wire = wire_event(text, false)?;
            let event: ResultEvent = serde_json::from_str(&wire).map_err(corrupt)?;
            let (state, counts) = match event {
                ResultEvent::Completed(c) => (State::Completed, Some(c.counts)),
                ResultEvent::Rejected(_) => (State::Rejected, None),
                ResultEvent::Duplicate(_) => (State::Duplicate, None),
                ResultEvent::Progress(_) => return Err(corrupt("a progress event as terminal")),
            };
            let raw = RawValue::from_string(wire).map_err(corrupt)?;
            (state, Some(raw), counts, planned)
        }
        None => {
            let mut counts = Counts::default();
            let mut done = 0;
            let mut from = 0;
            while from < planned {
                let to = planned.min(from + EVENTS_PAGE);
                let page = reader
                    .ledger(request_id, claim.claimed_at_ms, from, to)
                    .await?;
                for (_, text) in &page {
                    let p: ProgressEvent = serde_json::from_str(text).map_err(corrupt)?;
                    p.items.iter().for_each(|i| counts.add(i.status));
                    done += 1;
                }
                from = to;
            }
            (State::InProgress, None, Some(counts), done)
        }
    };
    Ok(RequestStatus {
        request_id: request_id.to_string(),
        state,
        note: None,
        collection: claim.collection.clone(),
        op: claim.op.clone(),
        source: Some(claim.source.clone()),
        claimed_at_ms: Some(claim.claimed_at_ms),
        items: Some(claim.items()),
        chunks: Some(Chunks { planned, done }),
        counts,
        deadline_ms: claim.deadline_at_ms,
        expires_at: claim.expires_at,
        terminal,
    })
}

/// One event of a request, numbered for resumption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedEvent {
    /// `generation:position`: the position is the chunk index of a progress event, the
    /// number of chunks for the terminal event.
    pub id: String,
    /// The position in the request's event sequence.
    pub position: usize,
    /// The event as the results topic carries it.
    pub text: String,
    /// Whether this is the terminal event.
    pub terminal: bool,
}

/// A request's events from position `from` on, at most `max`, that the store holds now, in
/// order and without gaps: progress events until the first chunk not settled yet, then —
/// once every chunk is — the terminal event. Also returns the claim (`None`: no claim).
pub async fn events(
    reader: &dyn StatusReader,
    request_id: &str,
    from: usize,
    max: usize,
) -> Result<(Option<ClaimRecord>, Vec<NumberedEvent>), StoreError> {
    let Some(claim) = reader.claim(request_id).await? else {
        return Ok((None, Vec::new()));
    };
    let generation = claim.claimed_at_ms;
    let planned = claim.chunks();
    let mut out = Vec::new();
    let mut next = from;
    // A lookup stores no progress events: its terminal event alone, once published.
    let lookup = claim.op.as_deref() == Some("lookup");
    while next < planned && !lookup && out.len() < max {
        let to = planned.min(next + EVENTS_PAGE.min(max - out.len()));
        let page = reader.ledger(request_id, generation, next, to).await?;
        for (chunk, text) in page {
            if chunk != next {
                break; // a gap: a later chunk settled before this one
            }
            out.push(NumberedEvent {
                id: format!("{generation}:{chunk}"),
                position: chunk,
                text: wire_event(&text, true)?,
                terminal: false,
            });
            next += 1;
        }
        if next < to {
            break; // not all of the page is settled yet
        }
    }
    if let Some(text) = &claim.terminal {
        // Once: not again to a client past it.
        if (next >= planned || lookup) && from <= planned && out.len() < max {
            out.push(NumberedEvent {
                id: format!("{generation}:{planned}"),
                position: planned,
                text: wire_event(text, false)?,
                terminal: true,
            });
        }
    }
    Ok((Some(claim), out))
}

/// A page of unfinished requests, oldest first.
pub async fn in_flight(
    reader: &dyn StatusReader,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<InFlightPage, StoreError> {
    let claims = reader.in_flight(after, limit).await?;
    let mut requests = Vec::with_capacity(claims.len());
    for c in &claims {
        let done = reader.chunks_done(&c.request_id, c.claimed_at_ms).await?;
        requests.push(InFlightEntry {
            request_id: c.request_id.clone(),
            collection: c.collection.clone(),
            op: c.op.clone(),
            source: c.source.clone(),
            claimed_at_ms: c.claimed_at_ms,
            items: c.items(),
            chunks: Chunks {
                planned: c.chunks(),
                done,
            },
        });
    }
    let next = (claims.len() == limit && limit > 0)
        .then(|| claims.last())
        .flatten()
        .map(|c| {
            Cursor {
                claimed_at_ms: c.claimed_at_ms,
                request_id: c.request_id.clone(),
            }
            .encode()
        });
    Ok(InFlightPage { requests, next })
}

#[cfg(test)]
mod tests;
