//! Stage 1, per record: parse the envelope, enforce the configured limits, and turn every
//! problem into a structured error. Records without a usable request_id become dead letters;
//! other invalid requests become `rejected` events; invalid items are decided as `failed`
//! here and never reach the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use metrics::counter;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_config::Config;

use crate::codes::{DeadLetterCode, ItemErrorCode, RejectCode};
use crate::contract::{
    DeadLetter, DeadLetterError, ItemResult, Op, Options, RejectError, RejectedEvent, ResultEvent,
};
use crate::metrics::RECORDS_CONSUMED;
use crate::record::{Meta, RawRecord};
use crate::request::{Item, ItemBody, Key, Request};
use crate::stage::{Outbox, Stage, StageError};
use crate::work::Work;

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

    fn check_bytes(&self, raw: &[u8], truncated: bool) -> Result<Request, Invalid> {
        let limits = &self.config.limits;
        if truncated {
            return Err(Invalid::Dead(
                DeadLetterCode::RecordTooLarge,
                format!(
                    "record exceeds the source's read cap (limits.max_record_bytes = {})",
                    limits.max_record_bytes
                ),
            ));
        }
        let text = std::str::from_utf8(raw).map_err(|e| {
            Invalid::Dead(
                DeadLetterCode::InvalidUtf8,
                format!("record is not UTF-8: {e}"),
            )
        })?;
        let depth = json_depth(text);
        if raw.len() > limits.max_record_bytes || depth > limits.max_depth {
            let (code, message) = if raw.len() > limits.max_record_bytes {
                (
                    RejectCode::RecordTooLarge,
                    format!(
                        "record is {} bytes; limits.max_record_bytes is {}",
                        raw.len(),
                        limits.max_record_bytes
                    ),
                )
            } else {
                (
                    RejectCode::TooDeep,
                    format!(
                        "record nests {depth} levels deep; limits.max_depth is {}",
                        limits.max_depth
                    ),
                )
            };
            let request_id = peek_request_id(text).map_err(|dead| match dead {
                Invalid::Dead(DeadLetterCode::InvalidJson, m) => Invalid::Dead(
                    DeadLetterCode::InvalidJson,
                    format!("{message}, and no request_id could be read: {m}"),
                ),
                other => other,
            })?;
            return Err(Invalid::Reject {
                request_id,
                op: None,
                errors: vec![RejectError {
                    code,
                    message,
                    path: String::new(),
                }],
            });
        }
        let top: BTreeMap<String, &RawValue> = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return Err(match serde_json::from_str::<Value>(text) {
                    Ok(v) => Invalid::Dead(
                        DeadLetterCode::NotAnObject,
                        format!("record is a JSON {}, not an object", json_type(&v)),
                    ),
                    Err(_) => Invalid::Dead(
                        DeadLetterCode::InvalidJson,
                        format!("record is not JSON: {e}"),
                    ),
                })
            }
        };
        let request_id = match top.get("request_id") {
            None => {
                return Err(Invalid::Dead(
                    DeadLetterCode::MissingRequestId,
                    "record has no request_id".into(),
                ))
            }
            Some(raw) => parse_request_id(raw.get())?,
        };
        let mut errors = Vec::new();
        let mut err = |code, path: &str, message: String| {
            errors.push(RejectError {
                code,
                message,
                path: path.to_string(),
            })
        };
        for field in top.keys() {
            if !matches!(
                field.as_str(),
                "request_id" | "collection" | "op" | "items" | "options"
            ) {
                err(
                    RejectCode::UnknownField,
                    &format!("/{}", pointer_escape(field)),
                    format!("unknown field `{field}` (contract v1 has request_id, collection, op, items, options)"),
                );
            }
        }
        let collection = match top
            .get("collection")
            .map(|r| serde_json::from_str::<Value>(r.get()))
        {
            None => {
                err(
                    RejectCode::MissingField,
                    "/collection",
                    "collection is required".into(),
                );
                None
            }
            Some(Ok(Value::String(c))) if self.config.collections.contains_key(&c) => Some(c),
            Some(Ok(Value::String(c))) => {
                let known: Vec<&str> = self.config.collections.keys().map(String::as_str).collect();
                err(
                    RejectCode::UnknownCollection,
                    "/collection",
                    format!(
                        "collection `{c}` is not declared (declared: {})",
                        known.join(", ")
                    ),
                );
                None
            }
            Some(_) => {
                err(
                    RejectCode::InvalidField,
                    "/collection",
                    "collection must be a string".into(),
                );
                None
            }
        };
        let op = match top
            .get("op")
            .map(|r| serde_json::from_str::<Value>(r.get()))
        {
            None => {
                err(RejectCode::MissingField, "/op", "op is required".into());
                None
            }
            Some(Ok(Value::String(s))) => {
                let op = Op::parse(&s);
                if op.is_none() {
                    err(
                        RejectCode::UnknownOp,
                        "/op",
                        format!("op `{s}` is not one of create, update, upsert, delete, lookup"),
                    );
                }
                op
            }
            Some(_) => {
                err(RejectCode::UnknownOp, "/op", "op must be a string".into());
                None
            }
        };
        let options = match top.get("options") {
            None => Options::default(),
            Some(raw) => self.parse_options(raw.get(), op, &mut err),
        };
        let items: Option<Vec<&RawValue>> = match top.get("items") {
            None => {
                err(
                    RejectCode::MissingField,
                    "/items",
                    "items is required".into(),
                );
                None
            }
            Some(raw) => match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                Err(_) => {
                    err(
                        RejectCode::InvalidField,
                        "/items",
                        "items must be an array".into(),
                    );
                    None
                }
                Ok(items) if items.is_empty() => {
                    err(
                        RejectCode::NoItems,
                        "/items",
                        "items must not be empty".into(),
                    );
                    None
                }
                Ok(items) => Some(items),
            },
        };
        if let (Some(op), Some(items)) = (op, &items) {
            let limit = self.item_limit(op);
            if items.len() > limit {
                err(
                    RejectCode::TooManyItems,
                    "/items",
                    format!(
                        "{} items; limits.max_items.{} is {limit}",
                        items.len(),
                        op.as_str()
                    ),
                );
            }
            if options.atomic {
                let bytes: usize = items.iter().map(|i| i.get().len()).sum();
                let chunk = &self.config.chunk;
                if items.len() > chunk.atomic_max_items || bytes > chunk.max_bytes {
                    err(
                        RejectCode::AtomicTooLarge,
                        "/items",
                        format!(
                            "{} items / {bytes} bytes do not fit one transaction (chunk.atomic_max_items = {}, chunk.max_bytes = {})",
                            items.len(), chunk.atomic_max_items, chunk.max_bytes
                        ),
                    );
                }
            }
        }
        if !errors.is_empty() {
            return Err(Invalid::Reject {
                request_id,
                op,
                errors,
            });
        }
        // No errors: every Option above is Some.
        let (Some(collection), Some(op), Some(items)) = (collection, op, items) else {
            unreachable!("fields are present when no error was recorded")
        };
        let key_field = &self.config.collections[&collection].key;
        let items = items
            .into_iter()
            .enumerate()
            .map(|(index, raw)| self.parse_item(index, raw, op, key_field))
            .collect();
        Ok(Request {
            request_id,
            collection,
            op,
            items,
            options,
        })
    }

    fn item_limit(&self, op: Op) -> usize {
        let m = &self.config.limits.max_items;
        match op {
            Op::Create => m.create,
            Op::Update => m.update,
            Op::Upsert => m.upsert,
            Op::Delete => m.delete,
            Op::Lookup => m.lookup,
        }
    }

    fn parse_options(
        &self,
        raw: &str,
        op: Option<Op>,
        err: &mut impl FnMut(RejectCode, &str, String),
    ) -> Options {
        let mut o = Options::default();
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(raw) else {
            err(
                RejectCode::InvalidField,
                "/options",
                "options must be an object".into(),
            );
            return o;
        };
        for (k, v) in map {
            let path = format!("/options/{}", pointer_escape(&k));
            let flag = match k.as_str() {
                "atomic" => &mut o.atomic,
                "skip_existing" => &mut o.skip_existing,
                "cascade" => &mut o.cascade,
                "stop_on_error" => &mut o.stop_on_error,
                "dedupe" => &mut o.dedupe,
                "deadline_ms" => {
                    let max = self.config.execute.max_deadline_ms;
                    match v.as_u64() {
                        Some(d) if d >= 1 && d <= max => o.deadline_ms = Some(d),
                        _ => err(
                            RejectCode::InvalidField,
                            &path,
                            format!("deadline_ms must be an integer from 1 to {max} (execute.max_deadline_ms)"),
                        ),
                    }
                    continue;
                }
                _ => {
                    err(
                        RejectCode::UnknownField,
                        &path,
                        format!("unknown option `{k}` (atomic, skip_existing, cascade, stop_on_error, dedupe, deadline_ms)"),
                    );
                    continue;
                }
            };
            match v {
                Value::Bool(b) => *flag = b,
                _ => err(
                    RejectCode::InvalidField,
                    &path,
                    format!("{k} must be a boolean"),
                ),
            }
        }
        if let Some(op) = op {
            let mut bad = |name: &str, ok: bool| {
                if !ok {
                    err(
                        RejectCode::InvalidOption,
                        &format!("/options/{name}"),
                        format!("{name} does not apply to op {}", op.as_str()),
                    )
                }
            };
            if o.cascade {
                bad("cascade", op == Op::Delete);
            }
            if o.skip_existing {
                bad("skip_existing", op == Op::Create);
            }
            if o.atomic {
                bad("atomic", op.writes());
            }
        }
        o
    }

    #[allow(clippy::result_large_err)] // the "error" is the item's decided result, built once per bad item
    fn parse_item(&self, index: usize, raw: &RawValue, op: Op, key_field: &str) -> Item {
        let bytes = raw.get().len();
        let mut item = Item {
            index,
            key: None,
            body: ItemBody::Invalid,
            bytes,
            decided: None,
        };
        let fail = |code, msg: String| Some(ItemResult::failed(index, code, msg));
        let max = self.config.limits.max_item_bytes;
        if bytes > max {
            item.decided = fail(
                ItemErrorCode::TooLarge,
                format!("item is {bytes} bytes; limits.max_item_bytes is {max}"),
            );
            return item;
        }
        if matches!(op, Op::Create | Op::Upsert) {
            // Documents stay as their raw JSON text (compact in memory, written as is): only
            // the field names and the key field are read.
            let Ok(fields) = serde_json::from_str::<BTreeMap<String, &RawValue>>(raw.get()) else {
                item.decided = fail(
                    ItemErrorCode::InvalidItem,
                    "item must be a JSON object".into(),
                );
                return item;
            };
            if let Some(bad) = fields
                .keys()
                .find(|k| k.starts_with('$') || k.as_str() == "_id")
            {
                item.decided = fail(
                    ItemErrorCode::InvalidItem,
                    format!("field `{bad}` is reserved (no `_id`, no leading `$`)"),
                );
                return item;
            }
            let key = fields
                .get(key_field)
                .and_then(|v| serde_json::from_str::<Value>(v.get()).ok());
            match key.as_ref().map(Key::from_json) {
                Some(Some(key)) => {
                    item.key = Some(key);
                    item.body = ItemBody::Doc(raw.to_owned());
                }
                Some(None) => {
                    item.decided = fail(
                        ItemErrorCode::MissingKey,
                        format!("`{key_field}` must be a string or an integer"),
                    )
                }
                None => {
                    item.decided = fail(
                        ItemErrorCode::MissingKey,
                        format!("item has no `{key_field}`"),
                    )
                }
            }
            return item;
        }
        let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(raw.get()) else {
            item.decided = fail(
                ItemErrorCode::InvalidItem,
                "item must be a JSON object".into(),
            );
            return item;
        };
        let key_of = |v: Option<&Value>, name: &str| -> Result<Key, Option<ItemResult>> {
            match v {
                None => Err(fail(
                    ItemErrorCode::MissingKey,
                    format!("item has no `{name}`"),
                )),
                Some(v) => Key::from_json(v).ok_or_else(|| {
                    fail(
                        ItemErrorCode::MissingKey,
                        format!("`{name}` must be a string or an integer"),
                    )
                }),
            }
        };
        let result = match op {
            Op::Create | Op::Upsert => unreachable!("handled above"),
            Op::Update => (|| {
                let key = key_of(obj.get("key"), "key")?;
                let set = match obj.remove("set") {
                    None => Map::new(),
                    Some(Value::Object(m)) => m,
                    Some(_) => {
                        return Err(fail(
                            ItemErrorCode::InvalidItem,
                            "`set` must be an object".into(),
                        ))
                    }
                };
                let unset = match obj.remove("unset") {
                    None => Vec::new(),
                    Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                        .into_iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    Some(_) => {
                        return Err(fail(
                            ItemErrorCode::InvalidItem,
                            "`unset` must be an array of field names".into(),
                        ))
                    }
                };
                if let Some(extra) = obj.keys().find(|k| k.as_str() != "key") {
                    return Err(fail(
                        ItemErrorCode::InvalidItem,
                        format!("unknown field `{extra}` in an update item (key, set, unset)"),
                    ));
                }
                if set.is_empty() && unset.is_empty() {
                    return Err(fail(
                        ItemErrorCode::InvalidItem,
                        "update needs a non-empty `set` or `unset`".into(),
                    ));
                }
                let names = set.keys().chain(unset.iter());
                for name in names {
                    if name == key_field
                        || name == "_id"
                        || name.starts_with('$')
                        || name.is_empty()
                    {
                        return Err(fail(
                            ItemErrorCode::InvalidItem,
                            format!("field `{name}` cannot be set or unset (the key and `_id` are immutable)"),
                        ));
                    }
                }
                Ok((key, ItemBody::Update { set, unset }))
            })(),
            Op::Delete | Op::Lookup => (|| {
                let key = key_of(obj.get("key"), "key")?;
                if let Some(extra) = obj.keys().find(|k| k.as_str() != "key") {
                    return Err(fail(
                        ItemErrorCode::InvalidItem,
                        format!(
                            "unknown field `{extra}` (a {} item is {{\"key\": …}})",
                            op.as_str()
                        ),
                    ));
                }
                Ok((key, ItemBody::Key))
            })(),
        };
        match result {
            Ok((key, body)) => {
                item.key = Some(key);
                item.body = body;
            }
            Err(decided) => item.decided = decided,
        }
        item
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

fn parse_request_id(raw: &str) -> Result<String, Invalid> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::String(s)) if valid_request_id(&s) => Ok(s),
        Ok(Value::String(_)) => Err(Invalid::Dead(
            DeadLetterCode::InvalidRequestId,
            "request_id must be 1-128 chars of [A-Za-z0-9._:-]".into(),
        )),
        _ => Err(Invalid::Dead(
            DeadLetterCode::InvalidRequestId,
            "request_id must be a string".into(),
        )),
    }
}

/// Reads only the request_id of a record too large or too deep to validate.
fn peek_request_id(text: &str) -> Result<String, Invalid> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        request_id: Option<&'a RawValue>,
    }
    match serde_json::from_str::<Peek>(text) {
        Ok(Peek {
            request_id: Some(raw),
        }) => parse_request_id(raw.get()),
        Ok(Peek { request_id: None }) => Err(Invalid::Dead(
            DeadLetterCode::MissingRequestId,
            "record has no request_id".into(),
        )),
        Err(e) => Err(Invalid::Dead(DeadLetterCode::InvalidJson, e.to_string())),
    }
}

/// Whether `s` is 1–128 chars of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Maximum nesting depth of objects and arrays in `text`, without parsing it (so that overly
/// deep records are measured before any recursive parser sees them).
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Escapes a field name for a JSON Pointer (RFC 6901).
pub fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
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
#[path = "validate_tests.rs"]
mod tests;
