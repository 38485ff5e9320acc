//! The envelope of a record: size and depth limits, the request_id, the top-level fields and
//! the options. Each problem becomes one [`RejectError`] with its JSON Pointer, all of them
//! collected into one `rejected` event; a record without one usable request_id (including one
//! that names `request_id` twice) is a dead letter instead.

use std::collections::{HashMap, HashSet};

use serde_json::value::RawValue;
use serde_json::Value;

use super::json::{self, pointer_escape, Broken, Member, Violation};
use super::{Invalid, Validate};
use crate::codes::{DeadLetterCode, RejectCode};
use crate::contract::{Op, Options, RejectError};
use crate::request::Request;

/// The problems found so far in an envelope.
#[derive(Default)]
struct Problems(Vec<RejectError>);

impl Problems {
    fn add(&mut self, code: RejectCode, path: &str, message: impl Into<String>) {
        self.0.push(RejectError {
            code,
            message: message.into(),
            path: path.to_string(),
        });
    }

    fn broken(&mut self, v: Violation) {
        let code = match v.kind {
            Broken::DuplicateName => RejectCode::DuplicateName,
            Broken::Invalid => RejectCode::InvalidField,
        };
        self.add(code, &v.path, v.message);
    }
}

impl Validate {
    /// Validates a record's bytes into a request, or says why it is invalid.
    pub(super) fn check_bytes(&self, raw: &[u8], truncated: bool) -> Result<Request, Invalid> {
        let limits = &self.config.limits;
        if truncated {
            return Err(Invalid::Dead(
                DeadLetterCode::RecordTooLarge,
                format!(
                    "record is longer than the source reads ({} bytes: 4 × limits.max_record_bytes \
                     = {}); only its first {} bytes were read",
                    limits.read_cap(),
                    limits.max_record_bytes,
                    raw.len()
                ),
            ));
        }
        let text = std::str::from_utf8(raw).map_err(|e| {
            Invalid::Dead(
                DeadLetterCode::InvalidUtf8,
                format!("record is not UTF-8: {e}"),
            )
        })?;
        let depth = json::json_depth(text);
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
        let top = match json::members(text) {
            Ok(m) => m,
            Err(e) => {
                return Err(match serde_json::from_str::<Value>(text) {
                    Ok(v) => Invalid::Dead(
                        DeadLetterCode::NotAnObject,
                        format!("record is a JSON {}, not an object", json::json_type(&v)),
                    ),
                    Err(_) => Invalid::Dead(
                        DeadLetterCode::InvalidJson,
                        format!("record is not JSON: {e}"),
                    ),
                })
            }
        };
        let request_id = request_id(&top)?;
        let mut p = Problems::default();
        // A repeated member is reported once, and its values are not read: which one the
        // producer meant cannot be known (serde_json alone would silently keep the last).
        let mut count: HashMap<&str, usize> = HashMap::with_capacity(top.len());
        for (name, _) in &top {
            *count.entry(name.as_str()).or_default() += 1;
        }
        let mut once: Vec<&Member> = Vec::with_capacity(top.len());
        let mut reported = HashSet::new();
        for member in &top {
            let name = member.0.as_str();
            match count[name] {
                1 => once.push(member),
                repeats => {
                    if reported.insert(name) {
                        p.add(
                            RejectCode::DuplicateName,
                            &format!("/{}", pointer_escape(name)),
                            format!(
                                "member {} appears {repeats} times; member names must be unique",
                                json::show(name)
                            ),
                        );
                    }
                }
            }
        }
        let field = |name: &str| once.iter().find(|m| m.0 == name).map(|m| m.1);
        let repeated = |name: &str| count.get(name).is_some_and(|&n| n > 1);
        for (name, _) in &once {
            if !matches!(
                name.as_str(),
                "request_id" | "collection" | "op" | "items" | "options"
            ) {
                p.add(
                    RejectCode::UnknownField,
                    &format!("/{}", pointer_escape(name)),
                    format!(
                        "unknown field `{name}` (contract v1 has request_id, collection, op, items, options)"
                    ),
                );
            }
        }
        let collection = match field("collection").map(|raw| strict(raw, "/collection", &mut p)) {
            None => {
                if !repeated("collection") {
                    p.add(
                        RejectCode::MissingField,
                        "/collection",
                        "collection is required",
                    );
                }
                None
            }
            Some(None) => None,
            Some(Some(Value::String(c))) if self.config.collections.contains_key(&c) => Some(c),
            Some(Some(Value::String(c))) => {
                let known: Vec<&str> = self.config.collections.keys().map(String::as_str).collect();
                p.add(
                    RejectCode::UnknownCollection,
                    "/collection",
                    format!(
                        "collection `{c}` is not declared (declared: {})",
                        known.join(", ")
                    ),
                );
                None
            }
            Some(Some(_)) => {
                p.add(
                    RejectCode::InvalidField,
                    "/collection",
                    "collection must be a string",
                );
                None
            }
        };
        let op = match field("op").map(|raw| strict(raw, "/op", &mut p)) {
            None => {
                if !repeated("op") {
                    p.add(RejectCode::MissingField, "/op", "op is required");
                }
                None
            }
            Some(None) => None,
            Some(Some(Value::String(s))) => {
                let op = Op::parse(&s);
                if op.is_none() {
                    p.add(
                        RejectCode::UnknownOp,
                        "/op",
                        format!("op `{s}` is not one of create, update, upsert, delete, lookup"),
                    );
                }
                op
            }
            Some(Some(_)) => {
                p.add(RejectCode::UnknownOp, "/op", "op must be a string");
                None
            }
        };
        let options = match field("options") {
            None => Options::default(),
            Some(raw) => self.parse_options(raw, op, &mut p),
        };
        let items: Option<Vec<&RawValue>> = match field("items") {
            None => {
                if !repeated("items") {
                    p.add(RejectCode::MissingField, "/items", "items is required");
                }
                None
            }
            Some(raw) => match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                Err(_) => {
                    p.add(RejectCode::InvalidField, "/items", "items must be an array");
                    None
                }
                Ok(items) if items.is_empty() => {
                    p.add(RejectCode::NoItems, "/items", "items must not be empty");
                    None
                }
                Ok(items) => Some(items),
            },
        };
        if let (Some(op), Some(items)) = (op, &items) {
            let limit = self.item_limit(op);
            if items.len() > limit {
                p.add(
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
                    p.add(
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
        if !p.0.is_empty() {
            return Err(Invalid::Reject {
                request_id,
                op,
                errors: p.0,
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

    fn parse_options(&self, raw: &RawValue, op: Option<Op>, p: &mut Problems) -> Options {
        let mut o = Options::default();
        let map = match strict(raw, "/options", p) {
            None => return o,
            Some(Value::Object(map)) => map,
            Some(_) => {
                p.add(
                    RejectCode::InvalidField,
                    "/options",
                    "options must be an object",
                );
                return o;
            }
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
                        _ => p.add(
                            RejectCode::InvalidField,
                            &path,
                            format!("deadline_ms must be an integer from 1 to {max} (execute.max_deadline_ms)"),
                        ),
                    }
                    continue;
                }
                _ => {
                    p.add(
                        RejectCode::UnknownField,
                        &path,
                        format!("unknown option `{k}` (atomic, skip_existing, cascade, stop_on_error, dedupe, deadline_ms)"),
                    );
                    continue;
                }
            };
            match v {
                Value::Bool(b) => *flag = b,
                _ => p.add(
                    RejectCode::InvalidField,
                    &path,
                    format!("{k} must be a boolean"),
                ),
            }
        }
        if let Some(op) = op {
            let mut bad = |name: &str, ok: bool| {
                if !ok {
                    p.add(
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
}

/// The strictly parsed value of the top-level member at `path`, or `None` once its problem is
/// recorded.
fn strict(raw: &RawValue, path: &str, p: &mut Problems) -> Option<Value> {
    let mut at = path.to_string();
    json::parse(raw.get(), &mut at)
        .map_err(|v| p.broken(v))
        .ok()
}

/// The request_id of a record's top-level `members`: exactly one, a valid one.
fn request_id(members: &[Member]) -> Result<String, Invalid> {
    let mut ids = members.iter().filter(|m| m.0 == "request_id");
    match (ids.next(), ids.count()) {
        (None, _) => Err(Invalid::Dead(
            DeadLetterCode::MissingRequestId,
            "record has no request_id".into(),
        )),
        (Some(raw), 0) => parse_request_id(raw.1.get()),
        (Some(_), more) => Err(Invalid::Dead(
            DeadLetterCode::DuplicateName,
            format!(
                "request_id appears {} times; which request this is cannot be known",
                more + 1
            ),
        )),
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
            "request_id must be a string of 1-128 chars of [A-Za-z0-9._:-]".into(),
        )),
    }
}

/// Reads only the request_id of a record too large or too deep to validate (its members'
/// values are skipped, not parsed, so any depth is fine).
fn peek_request_id(text: &str) -> Result<String, Invalid> {
    match json::members(text) {
        Ok(members) => request_id(&members),
        Err(e) => Err(Invalid::Dead(DeadLetterCode::InvalidJson, e.to_string())),
    }
}

/// Whether `s` is 1–128 chars of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
