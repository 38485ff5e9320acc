//! Strict JSON reading. serde_json alone keeps the last of two members with the same name, and
//! a value kept as raw text ([`RawValue`]) is never looked at: its numbers may overflow and its
//! strings may hold lone surrogate escapes. Here:
//! - [`members`] reads one object's members in order, values left as raw text, so repeated
//!   names can be seen (cheap: used for the envelope, where large or deep values wait);
//! - [`parse`] reads a whole value member by member, refusing repeated names, integers outside
//!   i64, numbers that are not finite and strings that are not Unicode — each with the JSON
//!   Pointer of the offending part;
//! - [`json_depth`], [`pointer_escape`], [`json_type`], [`show`]: small helpers.
//!
//! [`parse`] reads each container's members as raw text and then each member's text again, so
//! a byte is scanned once per enclosing container: bounded by `limits.max_depth`, which is
//! checked on the whole record before anything is parsed.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One member of an object, its value unparsed.
pub(crate) type Member<'a> = (String, &'a RawValue);

/// What kind of rule a value breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// An object names a member twice.
    DuplicateName,
    /// Anything else: a number, string or field name no store may receive, or a wrong shape.
    Invalid,
}

/// A broken rule, with the JSON Pointer (RFC 6901) of the offending part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    /// Which kind of rule.
    pub kind: Broken,
    /// Where, relative to the record.
    pub path: String,
    /// What is wrong, for people.
    pub message: String,
}

impl Violation {
    /// A [`Broken::Invalid`] violation at `path`.
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        Violation {
            kind: Broken::Invalid,
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// The members of the object `text`, in source order, repeated names kept (so that callers can
/// report them). Fails when `text` is not one JSON object; values are not validated.
pub(crate) fn members(text: &str) -> Result<Vec<Member<'_>>, serde_json::Error> {
    struct Members<'a>(Vec<Member<'a>>);

    impl<'de> Deserialize<'de> for Members<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Members<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut members = Vec::new();
                    while let Some(name) = map.next_key::<String>()? {
                        members.push((name, map.next_value::<&'de RawValue>()?));
                    }
                    Ok(Members(members))
                }
            }
            d.deserialize_map(V)
        }
    }

    serde_json::from_str::<Members>(text).map(|m| m.0)
}

/// Reads `raw` strictly into a [`Value`] (see the module docs). `path` is the JSON Pointer of
/// `raw`; it is extended while descending and restored on success.
pub(crate) fn parse(raw: &str, path: &mut String) -> Result<Value, Violation> {
    let text = raw.trim_start();
    match text.as_bytes().first() {
        Some(b'{') => {
            let members = members(text).map_err(|e| Violation::invalid(path, error_text(&e)))?;
            let mut map = Map::new();
            let len = path.len();
            for (name, value) in members {
                path.push('/');
                path.push_str(&pointer_escape(&name));
                if map.contains_key(&name) {
                    return Err(Violation {
                        kind: Broken::DuplicateName,
                        path: path.clone(),
                        message: format!(
                            "member {} appears more than once in one object",
                            show(&name)
                        ),
                    });
                }
                let value = parse(value.get(), path)?;
                path.truncate(len);
                map.insert(name, value);
            }
            Ok(Value::Object(map))
        }
        Some(b'[') => {
            let elements = serde_json::from_str::<Vec<&RawValue>>(text)
                .map_err(|e| Violation::invalid(path, error_text(&e)))?;
            let len = path.len();
            let mut values = Vec::with_capacity(elements.len());
            for (i, element) in elements.into_iter().enumerate() {
                path.push('/');
                path.push_str(&i.to_string());
                values.push(parse(element.get(), path)?);
                path.truncate(len);
            }
            Ok(Value::Array(values))
        }
        Some(b'-' | b'0'..=b'9') => number(text, path),
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(Value::String)
            .map_err(|e| {
                Violation::invalid(
                    path,
                    format!("string is not valid Unicode text: {}", error_text(&e)),
                )
            }),
        _ => serde_json::from_str::<Value>(text)
            .map_err(|e| Violation::invalid(path, error_text(&e))),
    }
}

/// A number: an integer literal (no fraction, no exponent) must fit i64 — serde_json would
/// turn a larger one into a float, and stores would read it differently — and any other
/// number must be a finite double.
fn number(text: &str, path: &str) -> Result<Value, Violation> {
    let shown = || crate::fit::cap_message(text.to_string(), 40);
    if !text.contains(['.', 'e', 'E']) && text.parse::<i64>().is_err() {
        return Err(Violation::invalid(
            path,
            format!(
                "integer {} does not fit a signed 64-bit integer (-2^63 to 2^63-1)",
                shown()
            ),
        ));
    }
    serde_json::from_str::<Value>(text).map_err(|_| {
        Violation::invalid(
            path,
            format!("number {} is not a finite 64-bit float", shown()),
        )
    })
}

/// serde_json's message without its "at line 1 column 7" suffix (positions inside a member's
/// text mean nothing to the producer; the path says where).
fn error_text(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(t) => t.to_string(),
        None => text,
    }
}

/// A name as shown in messages: JSON-quoted (so control characters and quotes are visible and
/// escaped once) and cut to 80 bytes.
pub(crate) fn show(name: &str) -> String {
    let quoted = serde_json::to_string(name).unwrap_or_else(|_| format!("{name:?}"));
    crate::fit::cap_message(quoted, 80)
}

/// Maximum nesting depth of objects and arrays in `text`, without parsing it (so that overly
/// deep records are measured before any recursive parser sees them).
pub fn json_depth(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => {
                // Most of a record is inside strings: jump to its closing quote, past escapes.
                i += 1;
                loop {
                    let Some(j) = memchr::memchr2(b'"', b'\\', &b[i..]) else {
                        return max; // unterminated: nothing after it nests
                    };
                    if b[i + j] == b'"' {
                        i += j + 1;
                        break;
                    }
                    i = (i + j + 2).min(b.len());
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// The JSON type of `v`, for messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Escapes a field name for a JSON Pointer (RFC 6901); borrowed when nothing needs escaping
/// (most names: pointers are built for every member, and kept only for errors).
pub fn pointer_escape(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['~', '/']) {
        s.replace('~', "~0").replace('/', "~1").into()
    } else {
        s.into()
    }
}
