//! The closed sets of error codes in the wire contract, and the store error classification.
//!
//! Codes are part of the contract (consumers switch on them) and are also the `error_code`
//! metric label, so each set is a closed enum: adding a variant is a contract change.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant,)+ }

        impl $name {
            /// Every code, for documentation and metric pre-registration.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The wire spelling, also used as a metric label.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

code_enum! {
    /// Why an item did not succeed (the `error.code` of an item result).
    ItemErrorCode {
        /// The item has the wrong shape for the op (e.g. `set` is not an object) or breaks the
        /// document model (a field name, number or string no store may receive); `path` says
        /// where.
        InvalidItem => "invalid_item",
        /// The item has no usable key (missing, or not a string or integer).
        MissingKey => "missing_key",
        /// The item's JSON encoding exceeds `limits.max_item_bytes`.
        TooLarge => "too_large",
        /// `create` of a key that already exists (without `skip_existing`).
        Exists => "exists",
        /// The request's deadline passed before the item was attempted.
        DeadlineExceeded => "deadline_exceeded",
        /// Another item of an `atomic` request failed, so nothing was applied.
        Aborted => "aborted",
        /// An earlier item failed and the request set `stop_on_error`.
        Stopped => "stopped",
        /// The store failed and retries were exhausted; `retryable` says whether resending may work.
        StoreError => "store_error",
        /// A JSON object inside the item names a member twice; `path` points at the repeated
        /// member. (JSON parsers disagree on which value wins, so none is chosen.)
        DuplicateName => "duplicate_name",
    }
}

code_enum! {
    /// Why a whole request was rejected (the `errors[].code` of a `rejected` event).
    RejectCode {
        /// A required field is absent.
        MissingField => "missing_field",
        /// A field has the wrong type or an invalid value.
        InvalidField => "invalid_field",
        /// A field not in the contract (typos are caught instead of silently ignored).
        UnknownField => "unknown_field",
        /// `collection` is not declared in the configuration.
        UnknownCollection => "unknown_collection",
        /// `op` is not one of create, update, upsert, delete, lookup.
        UnknownOp => "unknown_op",
        /// `items` is empty.
        NoItems => "no_items",
        /// More items than `limits.max_items.<op>` allows.
        TooManyItems => "too_many_items",
        /// The record exceeds `limits.max_record_bytes`.
        RecordTooLarge => "record_too_large",
        /// The record nests deeper than `limits.max_depth`.
        TooDeep => "too_deep",
        /// An `atomic` request that does not fit in one transaction.
        AtomicTooLarge => "atomic_too_large",
        /// An option that cannot apply to this op (e.g. `cascade` on create).
        InvalidOption => "invalid_option",
        /// A JSON object of the envelope or the options names a member twice (e.g. two `op`s);
        /// `path` points at the repeated member.
        DuplicateName => "duplicate_name",
    }
}

code_enum! {
    /// Why a record went to the dead-letter output (no request_id could be read from it).
    DeadLetterCode {
        /// The bytes are not UTF-8.
        InvalidUtf8 => "invalid_utf8",
        /// The bytes are not JSON (or nest beyond what can be parsed at all).
        InvalidJson => "invalid_json",
        /// The JSON is not an object.
        NotAnObject => "not_an_object",
        /// No `request_id` field.
        MissingRequestId => "missing_request_id",
        /// `request_id` is not 1–128 chars of `[A-Za-z0-9._:-]`.
        InvalidRequestId => "invalid_request_id",
        /// The record exceeded the source's hard read cap and was cut.
        RecordTooLarge => "record_too_large",
        /// `request_id` appears more than once in the record, so which request it is cannot be
        /// known.
        DuplicateName => "duplicate_name",
    }
}

/// How a store error should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Worth retrying the whole chunk at once (write conflict, busy database, transient label).
    Transient,
    /// The store is unreachable: wait and retry without giving up on the request.
    Unavailable,
    /// Retrying will not help; the chunk's items fail with `store_error`.
    Permanent,
}

impl StoreErrorKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Transient => "transient",
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Permanent => "permanent",
        }
    }
}

/// An error from a [`crate::Store`], classified for retries, item statuses and metrics.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?} store error ({code}): {message}")]
pub struct StoreError {
    /// Retry classification.
    pub kind: StoreErrorKind,
    /// Short, bounded code for metric labels (e.g. `busy`, `write_conflict`, `io`).
    pub code: &'static str,
    /// Human-readable detail (never a metric label).
    pub message: String,
}

impl StoreError {
    /// A transient error.
    pub fn transient(code: &'static str, message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Transient,
            code,
            message: message.into(),
        }
    }
    /// The store is unreachable.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Unavailable,
            code,
            message: message.into(),
        }
    }
    /// A permanent error.
    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Permanent,
            code,
            message: message.into(),
        }
    }
}

/// An error from a [`crate::Sink`]. Sinks that can recover (e.g. a fenced Kafka producer) do so
/// internally; what reaches the pipeline stops it without recording positions past the failure.
#[derive(Debug, thiserror::Error)]
#[error("sink error: {0}")]
pub struct SinkError(pub String);

/// An error from a [`crate::Source`].
#[derive(Debug, thiserror::Error)]
#[error("source error: {0}")]
pub struct SourceError(pub String);
