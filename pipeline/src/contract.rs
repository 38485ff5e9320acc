//! The wire contract, version 1: the request producers send, the result events consumers read,
//! and the dead-letter line of embedded mode. The JSON Schemas under `schema/` are generated
//! from these types (`sluice schema`), so the Rust types are the single source of truth.
//! Additions must be backward compatible: new optional fields only.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::codes::{DeadLetterCode, ItemErrorCode, RejectCode};
use crate::record::SourceRef;

/// Operation applied to every item of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Insert new documents (item: a document containing the key field).
    Create,
    /// Modify existing documents (item: `{ "key": …, "set": {…}, "unset": […] }`).
    Update,
    /// Insert or replace documents (item: a document containing the key field).
    Upsert,
    /// Delete documents (item: `{ "key": … }`), with their children when `cascade` is set.
    Delete,
    /// Read documents (item: `{ "key": … }`); `ok` results carry `doc`.
    Lookup,
}

impl Op {
    /// All ops, in contract order.
    pub const ALL: [Op; 5] = [Op::Create, Op::Update, Op::Upsert, Op::Delete, Op::Lookup];

    /// The wire spelling, also the `op` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Upsert => "upsert",
            Op::Delete => "delete",
            Op::Lookup => "lookup",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Whether the op writes (runs in a transaction with a ledger entry).
    pub fn writes(self) -> bool {
        !matches!(self, Op::Lookup)
    }
}

/// Request options; every field is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// All-or-nothing: the request runs as one transaction, or is rejected as too large.
    pub atomic: bool,
    /// `create` of an existing key reports `skipped` instead of failing with `exists`.
    pub skip_existing: bool,
    /// `delete` also deletes children in declared child collections, in the same transaction.
    pub cascade: bool,
    /// After the first failed item, later items are `not_attempted` (code `stopped`).
    pub stop_on_error: bool,
    /// Items repeating an earlier item's key are reported as `duplicate` of it, not applied.
    pub dedupe: bool,
    /// Milliseconds after which remaining chunks are `not_attempted` (`deadline_exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub deadline_ms: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            atomic: false,
            skip_existing: false,
            cascade: false,
            stop_on_error: false,
            dedupe: true,
            deadline_ms: None,
        }
    }
}

/// A batch request (input topic / input line). This type documents the wire shape and
/// generates its schema; the validate stage checks records field by field so that every
/// problem is reported with its JSON path.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sluice request (contract v1)")]
pub struct RequestV1 {
    /// Idempotency key: 1–128 chars of `[A-Za-z0-9._:-]`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub request_id: String,
    /// A collection declared in the configuration.
    pub collection: String,
    /// The operation applied to every item.
    pub op: Op,
    /// 1..=limit items (the limit per op comes from configuration). Shapes by op:
    /// create/upsert: a document containing the collection's key field;
    /// update: `{ "key": …, "set": {…}, "unset": ["field", …] }`;
    /// delete/lookup: `{ "key": … }`. Keys are strings or integers.
    /// Documents and `set` values follow the document model (README, "Documents"): at every
    /// depth, field names are non-empty, without a leading `$`, a `.` or a NUL; no top-level
    /// `_id`; no member name twice in one object; integers fit a signed 64-bit integer, other
    /// numbers are finite; strings are valid Unicode. An item that breaks a rule fails alone.
    #[schemars(length(min = 1))]
    pub items: Vec<Map<String, Value>>,
    /// Options; all optional.
    #[serde(default)]
    pub options: Options,
}

/// An item's final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Applied (or, for lookup, found: `doc` is set).
    Ok,
    /// `create` of an existing key with `skip_existing`.
    Skipped,
    /// Not applied; `error` says why.
    Failed,
    /// Repeats the key of item `of` in the same request; not applied.
    Duplicate,
    /// update/delete/lookup of a key that does not exist.
    NotFound,
    /// Never tried (after `stop_on_error`, a failed atomic chunk, or the deadline); `error` says which.
    NotAttempted,
}

impl ItemStatus {
    /// All statuses, in contract order.
    pub const ALL: [ItemStatus; 6] = [
        ItemStatus::Ok,
        ItemStatus::Skipped,
        ItemStatus::Failed,
        ItemStatus::Duplicate,
        ItemStatus::NotFound,
        ItemStatus::NotAttempted,
    ];

    /// The wire spelling, also the `status` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Ok => "ok",
            ItemStatus::Skipped => "skipped",
            ItemStatus::Failed => "failed",
            ItemStatus::Duplicate => "duplicate",
            ItemStatus::NotFound => "not_found",
            ItemStatus::NotAttempted => "not_attempted",
        }
    }
}

/// Why an item failed or was not attempted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ItemError {
    /// Code from the closed set.
    pub code: ItemErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// Whether sending the item again (in a new request) may succeed.
    pub retryable: bool,
    /// JSON Pointer (RFC 6901) to the offending part, relative to the request (e.g.
    /// `/items/3/tags/0`): set when the item breaks the document model (README, "Documents").
    /// At most [`ItemError::PATH_MAX`] bytes (a longer pointer is cut and ends with `…`); left
    /// out of events that had to be shortened to fit one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl ItemError {
    /// Longest `path`, in bytes. With a path, the message is shortened so that both together
    /// stay within [`crate::fit::MESSAGE_MAX`] and an item result stays bounded.
    pub const PATH_MAX: usize = 256;
}

/// The result of one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ItemResult {
    /// The item's 0-based position in the request's `items`.
    pub index: usize,
    /// Final status.
    pub status: ItemStatus,
    /// For `duplicate`: the index of the first item with the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<usize>,
    /// For `failed` and `not_attempted`: why. Left out only when an event had to be shortened
    /// to fit `limits.max_event_bytes` and even empty messages did not fit (a chunk planned
    /// under a larger limit): then the last items of the chunk carry their status alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
    /// For `ok` lookups: the document found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<Value>,
}

impl ItemResult {
    /// A result with just a status.
    pub fn status(index: usize, status: ItemStatus) -> Self {
        ItemResult {
            index,
            status,
            of: None,
            error: None,
            doc: None,
        }
    }

    /// A result with a status and an error (the message is capped at
    /// [`crate::fit::MESSAGE_MAX`] bytes).
    pub fn error(
        index: usize,
        status: ItemStatus,
        code: ItemErrorCode,
        message: impl Into<String>,
        retryable: bool,
    ) -> Self {
        ItemResult {
            index,
            status,
            of: None,
            error: Some(ItemError {
                code,
                message: crate::fit::cap_message(message.into(), crate::fit::MESSAGE_MAX),
                retryable,
                path: None,
            }),
            doc: None,
        }
    }

    /// The same result with its error's `path` set: a JSON Pointer relative to the request
    /// (e.g. `/items/3/tags/0`), cut to [`ItemError::PATH_MAX`] bytes. The message is
    /// shortened so that message and path together stay within [`crate::fit::MESSAGE_MAX`].
    /// A result without an error is returned unchanged.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        if let Some(error) = &mut self.error {
            let path = crate::fit::cap_message(path.into(), ItemError::PATH_MAX);
            let room = crate::fit::MESSAGE_MAX - path.len();
            error.message = crate::fit::cap_message(std::mem::take(&mut error.message), room);
            error.path = Some(path);
        }
        self
    }

    /// A `failed` result.
    pub fn failed(index: usize, code: ItemErrorCode, message: impl Into<String>) -> Self {
        Self::error(index, ItemStatus::Failed, code, message, false)
    }
}

/// Per-status item counts of a completed request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Counts {
    /// All items of the request.
    pub total: u64,
    /// Items with status `ok`.
    pub ok: u64,
    /// Items with status `skipped`.
    pub skipped: u64,
    /// Items with status `failed`.
    pub failed: u64,
    /// Items with status `duplicate`.
    pub duplicate: u64,
    /// Items with status `not_found`.
    pub not_found: u64,
    /// Items with status `not_attempted`.
    pub not_attempted: u64,
}

impl Counts {
    /// Adds one item result.
    pub fn add(&mut self, status: ItemStatus) {
        self.total += 1;
        *match status {
            ItemStatus::Ok => &mut self.ok,
            ItemStatus::Skipped => &mut self.skipped,
            ItemStatus::Failed => &mut self.failed,
            ItemStatus::Duplicate => &mut self.duplicate,
            ItemStatus::NotFound => &mut self.not_found,
            ItemStatus::NotAttempted => &mut self.not_attempted,
        } += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Counts) {
        self.total += other.total;
        self.ok += other.ok;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.duplicate += other.duplicate;
        self.not_found += other.not_found;
        self.not_attempted += other.not_attempted;
    }
}

/// One chunk's results, published once the chunk is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressEvent {
    /// The request.
    pub request_id: String,
    /// 0-based chunk index.
    pub chunk: usize,
    /// Number of chunks in the request.
    pub chunks: usize,
    /// Results of the chunk's items, in index order.
    pub items: Vec<ItemResult>,
    /// Where the request was read.
    pub source: SourceRef,
}

/// The terminal event of a request that was executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompletedEvent {
    /// The request.
    pub request_id: String,
    /// Number of chunks (one progress event each).
    pub chunks: usize,
    /// Items by status.
    pub counts: Counts,
    /// Time from reading the record to its last chunk, in milliseconds.
    pub duration_ms: u64,
    /// Where the request was read.
    pub source: SourceRef,
}

/// One reason a request was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectError {
    /// Code from the closed set.
    pub code: RejectCode,
    /// Human-readable detail.
    pub message: String,
    /// JSON Pointer to the offending part of the request (`""` = the whole record).
    pub path: String,
}

/// The terminal event of an invalid request: nothing was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectedEvent {
    /// The request.
    pub request_id: String,
    /// Every problem found.
    pub errors: Vec<RejectError>,
    /// Where the request was read.
    pub source: SourceRef,
}

/// The terminal event of a request_id already seen from another record: nothing was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DuplicateEvent {
    /// The request.
    pub request_id: String,
    /// Where the request_id was first seen.
    pub original: SourceRef,
    /// Where this copy was read.
    pub source: SourceRef,
}

/// A result event (output topic / output line; Kafka key = request_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
#[schemars(title = "sluice result event (contract v1)")]
pub enum ResultEvent {
    /// A chunk was committed.
    Progress(ProgressEvent),
    /// Terminal: the request was executed.
    Completed(CompletedEvent),
    /// Terminal: the request was invalid.
    Rejected(RejectedEvent),
    /// Terminal: the request_id was seen before.
    Duplicate(DuplicateEvent),
}

impl ResultEvent {
    /// The request the event belongs to.
    pub fn request_id(&self) -> &str {
        match self {
            ResultEvent::Progress(e) => &e.request_id,
            ResultEvent::Completed(e) => &e.request_id,
            ResultEvent::Rejected(e) => &e.request_id,
            ResultEvent::Duplicate(e) => &e.request_id,
        }
    }

    /// The record the event answers.
    pub fn source(&self) -> &SourceRef {
        match self {
            ResultEvent::Progress(e) => &e.source,
            ResultEvent::Completed(e) => &e.source,
            ResultEvent::Rejected(e) => &e.source,
            ResultEvent::Duplicate(e) => &e.source,
        }
    }

    /// The event name as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ResultEvent::Progress(_) => "progress",
            ResultEvent::Completed(_) => "completed",
            ResultEvent::Rejected(_) => "rejected",
            ResultEvent::Duplicate(_) => "duplicate",
        }
    }
}

/// The error part of a dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterError {
    /// Code from the closed set.
    pub code: DeadLetterCode,
    /// Human-readable detail.
    pub message: String,
}

/// A record from which no request_id could be read. On Kafka the original bytes go to the
/// dead-letter topic unchanged with this information in headers; in embedded mode each is a
/// line of the `--dead-letters` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "sluice dead letter (embedded mode line, contract v1)")]
pub struct DeadLetter {
    /// Why the record could not be processed.
    pub error: DeadLetterError,
    /// Where the record was read.
    pub source: SourceRef,
    /// The original bytes when they are UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    /// The original bytes, base64 (standard alphabet), when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_base64: Option<String>,
    /// True when the source cut the record at its read cap (`original` holds the first bytes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The JSON Schemas of the contract, generated from the types above.
pub fn schemas() -> Vec<(&'static str, Value)> {
    let to_value = |s: schemars::Schema| s.to_value();
    vec![
        (
            "request.schema.json",
            to_value(schemars::schema_for!(RequestV1)),
        ),
        (
            "result-event.schema.json",
            to_value(schemars::schema_for!(ResultEvent)),
        ),
        (
            "dead-letter.schema.json",
            to_value(schemars::schema_for!(DeadLetter)),
        ),
    ]
}
