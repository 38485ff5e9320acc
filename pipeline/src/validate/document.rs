//! The document model's field-name rules (README, "Documents"), checked at every depth of a
//! create/upsert document and of every update `set` value, so that every store reads a
//! document the same way and none refuses it:
//! - a field name is not empty, does not start with `$` (MongoDB operators and Extended JSON
//!   such as `{"$numberLong":"5"}`), contains no `.` (a nested path on MongoDB, a literal name
//!   on SQLite — so dots are forbidden rather than given either meaning) and no NUL (BSON names
//!   end at NUL);
//! - the top-level name `_id` is reserved (the stores' own identity), so neither a document
//!   nor `set`/`unset` can name it; a field cannot be both set and unset, or unset twice.
//!
//! Numbers, strings and repeated member names are checked while parsing (`json::parse`),
//! everywhere in an item; the rules here only concern names, so they run on parsed values.

use serde_json::{Map, Value};

use super::json::{pointer_escape, show, Violation};

/// Why `name` cannot be a field name at any depth, or `None` when it can.
pub fn field_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('$') {
        Some("starts with `$` (reserved for operators and Extended JSON)")
    } else if name.contains('.') {
        Some("contains `.` (field names are literal; dots would mean a nested path on MongoDB)")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else {
        None
    }
}

/// Checks a create/upsert document (the item's top-level object at `path`).
pub(crate) fn check_document(doc: &Map<String, Value>, path: &str) -> Result<(), Violation> {
    let mut path = path.to_string();
    if doc.contains_key("_id") {
        return Err(Violation::invalid(
            &format!("{path}/_id"),
            "field \"_id\" is reserved at the top level of a document",
        ));
    }
    check_members(doc, &mut path)
}

/// Checks an update's `set` names and values and `unset` names; `path` is the item's. (That
/// the key field is immutable is checked with the item's shape, before.)
pub(crate) fn check_update(
    set: &Map<String, Value>,
    unset: &[String],
    path: &str,
) -> Result<(), Violation> {
    let top = |name: &str, at: &str| -> Result<(), Violation> {
        if name == "_id" {
            return Err(Violation::invalid(
                at,
                "field \"_id\" is reserved at the top level of a document",
            ));
        }
        match field_name_problem(name) {
            Some(problem) => Err(Violation::invalid(
                at,
                format!("field name {} {problem}", show(name)),
            )),
            None => Ok(()),
        }
    };
    let mut at = format!("{path}/set");
    let len = at.len();
    for (name, value) in set {
        at.push('/');
        at.push_str(&pointer_escape(name));
        top(name, &at)?;
        check_value(value, &mut at)?;
        at.truncate(len);
    }
    for (i, name) in unset.iter().enumerate() {
        let at = format!("{path}/unset/{i}");
        top(name, &at)?;
        if set.contains_key(name) {
            return Err(Violation::invalid(
                &at,
                format!("field {} is both set and unset", show(name)),
            ));
        }
        if unset[..i].contains(name) {
            return Err(Violation::invalid(
                &at,
                format!("field {} is unset twice", show(name)),
            ));
        }
    }
    Ok(())
}

/// Checks the names of every member of `map` and, recursively, of their values.
fn check_members(map: &Map<String, Value>, path: &mut String) -> Result<(), Violation> {
    let len = path.len();
    for (name, value) in map {
        path.push('/');
        path.push_str(&pointer_escape(name));
        if let Some(problem) = field_name_problem(name) {
            return Err(Violation::invalid(
                path,
                format!("field name {} {problem}", show(name)),
            ));
        }
        check_value(value, path)?;
        path.truncate(len);
    }
    Ok(())
}

/// Checks the field names inside `value` (objects at any depth, arrays included).
fn check_value(value: &Value, path: &mut String) -> Result<(), Violation> {
    match value {
        Value::Object(map) => check_members(map, path),
        Value::Array(values) => {
            let len = path.len();
            for (i, v) in values.iter().enumerate() {
                path.push('/');
                path.push_str(&i.to_string());
                check_value(v, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
