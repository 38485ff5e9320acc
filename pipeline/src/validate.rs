//! Stage 1, per record: parse the envelope, enforce the configured limits and the document
//! model, and turn every problem into a structured error. Records without a usable request_id
//! become dead letters; other invalid requests become `rejected` events; invalid items are
//! decided as `failed` here and never reach the store.
//!
//! Parts, in the order a record meets them:
//! - `envelope`: limits, request_id, top-level fields and options (→ dead letter or `rejected`);
//! - `item`: each item's shape for its op and its key (→ the item `failed`, its neighbours go on);
//! - `document`: the document model's field-name rules, at every depth;
//! - `fast`: a valid create/upsert document recognised in one pass, without a value tree;
//! - `json`: strict JSON reading — repeated member names, integers outside i64, non-finite
//!   numbers and invalid strings, each reported with its JSON Pointer.

use std::sync::Arc;

use bytes::Bytes;
use metrics::counter;
use sluice_config::Config;

use crate::codes::DeadLetterCode;
use crate::contract::{DeadLetter, DeadLetterError, Op, RejectError, RejectedEvent, ResultEvent};
use crate::metrics::RECORDS_CONSUMED;
use crate::record::{Meta, RawRecord};
use crate::stage::{Outbox, Stage, StageError};
use crate::work::Work;

mod document;
mod envelope;
mod fast;
mod item;
mod json;

pub use document::field_name_problem;
pub use envelope::valid_request_id;
pub use json::{json_depth, pointer_escape};

/// The validate stage.
pub struct Validate {
    config: Arc<Config>,
    consumed: metrics::Counter,
}

impl Validate {
    /// A validate stage enforcing `config`'s limits and collections.
    pub fn new(config: Arc<Config>) -> Self {
        Validate {
            config,
            consumed: counter!(RECORDS_CONSUMED),
        }
    }

    /// Validates one record (pure; the stage only adds metrics).
    pub fn check(&self, record: RawRecord) -> Work {
        let (raw, truncated, meta) = record.split();
        match self.check_bytes(&raw, truncated) {
            Ok(request) => Work::Execute {
                meta,
                request,
                chunks: Vec::new(),
            },
            Err(Invalid::Reject {
                request_id,
                op,
                errors,
            }) => Work::Finished {
                event: ResultEvent::Rejected(RejectedEvent {
                    request_id,
                    errors,
                    source: meta.source.clone(),
                }),
                meta,
                op,
            },
            Err(Invalid::Dead(code, message)) => {
                let letter = dead_letter(&raw, truncated, &meta, code, message);
                Work::DeadLetter { meta, raw, letter }
            }
        }
    }
}

/// Why a record is invalid.
enum Invalid {
    /// A `rejected` event.
    Reject {
        request_id: String,
        op: Option<Op>,
        errors: Vec<RejectError>,
    },
    /// A dead letter (no usable request_id).
    Dead(DeadLetterCode, String),
}

impl Stage for Validate {
    type In = RawRecord;
    type Out = Work;
    const NAME: &'static str = "validate";

    async fn process(&mut self, input: RawRecord, out: &Outbox<Work>) -> Result<(), StageError> {
        self.consumed.increment(1);
        out.send(self.check(input)).await
    }
}

fn dead_letter(
    raw: &Bytes,
    truncated: bool,
    meta: &Meta,
    code: DeadLetterCode,
    message: String,
) -> DeadLetter {
    use base64::Engine;
    let (original, original_base64) = match std::str::from_utf8(raw) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(raw)),
        ),
    };
    DeadLetter {
        error: DeadLetterError { code, message },
        source: meta.source.clone(),
        original,
        original_base64,
        truncated,
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
