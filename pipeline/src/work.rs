//! The values that flow between stages.

use std::ops::Range;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::contract::{DeadLetter, Op, ResultEvent};
use crate::record::Meta;
use crate::request::Request;
use crate::store::Claimed;

/// A record on its way from validate to execute.
#[derive(Debug)]
pub enum Work {
    /// A valid request, not yet claimed. `chunks` is filled by the chunk stage.
    Execute {
        /// Record metadata.
        meta: Meta,
        /// The request.
        request: Request,
        /// Item ranges, one per chunk (empty until the chunk stage).
        chunks: Vec<Range<usize>>,
    },
    /// A request this record owns, ready to execute (the dedupe stage's output): its chunks
    /// are the plan stored with its claim, so a re-read record is cut as it was the first time.
    Claimed {
        /// Record metadata.
        meta: Meta,
        /// The request.
        request: Request,
        /// The request's claim: its plan and first-claim time.
        claim: Claimed,
    },
    /// A record whose terminal event is already known (`rejected`, `duplicate`).
    Finished {
        /// Record metadata.
        meta: Meta,
        /// The terminal event.
        event: ResultEvent,
        /// The op, when it could be read (metrics label).
        op: Option<Op>,
    },
    /// A record without a usable request_id.
    DeadLetter {
        /// Record metadata.
        meta: Meta,
        /// The original bytes.
        raw: Bytes,
        /// What went wrong.
        letter: DeadLetter,
    },
}

impl Work {
    /// The record's metadata.
    pub fn meta(&self) -> &Meta {
        match self {
            Work::Execute { meta, .. }
            | Work::Claimed { meta, .. }
            | Work::Finished { meta, .. }
            | Work::DeadLetter { meta, .. } => meta,
        }
    }
}

/// What the commit stage receives from execute, in source order.
#[derive(Debug)]
pub struct Pending {
    /// Record metadata.
    pub meta: Meta,
    /// The op, when known (metrics label).
    pub op: Option<Op>,
    /// The record's output.
    pub body: PendingBody,
}

/// An event on its way to the sink, with its JSON when that was written already: a progress
/// event as the store wrote it to the ledger, which the sink then sends as it is (with the
/// event tag) instead of serializing the event a second time.
#[derive(Debug)]
pub struct Emitted {
    /// The event.
    pub event: ResultEvent,
    /// `serde_json` of the event's body (for a progress event: of the [`ProgressEvent`]),
    /// when already made.
    ///
    /// [`ProgressEvent`]: crate::contract::ProgressEvent
    pub json: Option<String>,
}

impl From<ResultEvent> for Emitted {
    fn from(event: ResultEvent) -> Self {
        Emitted { event, json: None }
    }
}

/// A record's output.
#[derive(Debug)]
pub enum PendingBody {
    /// One terminal event, already known.
    Ready(ResultEvent),
    /// Events produced while the request executes: progress events in chunk order, then the
    /// terminal event. The channel closing without a terminal event means the execution was
    /// abandoned (shutdown deadline): the record is not committed and will be re-read.
    Stream(mpsc::Receiver<Emitted>),
    /// A dead letter.
    DeadLetter(Bytes, DeadLetter),
}
