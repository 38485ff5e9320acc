//! One item of a request: its size, its JSON (strictly parsed, see `json`), its shape for the
//! op, the document model (see `document`) and its key. An item that breaks a rule is decided
//! here as `failed`, with a code and the JSON Pointer of what is wrong, and never reaches the
//! store; the other items of the request go on.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::json::{self, Broken, Violation};
use super::Validate;
use super::{document, fast};
use crate::codes::ItemErrorCode;
use crate::contract::{ItemResult, Op};
use crate::request::{Item, ItemBody, Key};

impl Validate {
    /// Validates item `index` (raw JSON text) of a request with `op` on a collection keyed by
    /// `key_field`.
    pub(super) fn parse_item(&self, index: usize, raw: &RawValue, op: Op, key_field: &str) -> Item {
        let bytes = raw.get().len();
        let mut item = Item {
            index,
            key: None,
            body: ItemBody::Invalid,
            bytes,
            decided: None,
        };
        let max = self.config.limits.max_item_bytes;
        let read = if bytes > max {
            Err(ItemResult::failed(
                index,
                ItemErrorCode::TooLarge,
                format!("item is {bytes} bytes; limits.max_item_bytes is {max}"),
            ))
        } else {
            read_item(index, raw, op, key_field)
        };
        match read {
            Ok((key, body)) => {
                item.key = Some(key);
                item.body = body;
            }
            Err(decided) => item.decided = Some(Box::new(decided)),
        }
        item
    }
}

/// The key and body of a valid item, or its decided `failed` result. Document-model
/// violations carry the JSON Pointer of the offending part; shape errors (wrong type, missing
/// key, unknown field) are told by their message alone.
#[allow(clippy::result_large_err)] // the "error" is the item's decided result, built once per bad item
fn read_item(
    index: usize,
    raw: &RawValue,
    op: Op,
    key_field: &str,
) -> Result<(Key, ItemBody), ItemResult> {
    if matches!(op, Op::Create | Op::Upsert) {
        if let Some(key) = fast::valid_document_key(raw.get(), key_field) {
            return Ok((key, ItemBody::Doc(raw.to_owned())));
        }
    }
    read_full(index, raw, op, key_field)
}

/// [`read_item`] without the fast path: the strict parse into a value tree, then the rules.
#[allow(clippy::result_large_err)]
pub(super) fn read_full(
    index: usize,
    raw: &RawValue,
    op: Op,
    key_field: &str,
) -> Result<(Key, ItemBody), ItemResult> {
    let fail = |code, message: String| ItemResult::failed(index, code, message);
    let broken = |v: Violation| {
        let code = match v.kind {
            Broken::DuplicateName => ItemErrorCode::DuplicateName,
            Broken::Invalid => ItemErrorCode::InvalidItem,
        };
        fail(code, v.message).with_path(v.path)
    };
    let base = format!("/items/{index}");
    let mut path = base.clone();
    let Value::Object(mut obj) = json::parse(raw.get(), &mut path).map_err(broken)? else {
        return Err(fail(
            ItemErrorCode::InvalidItem,
            "item must be a JSON object".into(),
        ));
    };
    let key_of = |obj: &Map<String, Value>, name: &str| -> Result<Key, ItemResult> {
        match obj.get(name) {
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
    match op {
        Op::Create | Op::Upsert => {
            // The document is stored as its raw text, now that its parse found nothing wrong.
            document::check_document(&obj, &base).map_err(broken)?;
            let key = key_of(&obj, key_field)?;
            Ok((key, ItemBody::Doc(raw.to_owned())))
        }
        Op::Update => {
            let key = key_of(&obj, "key")?;
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
            if let Some(name) = set.keys().chain(&unset).find(|n| *n == key_field) {
                return Err(fail(
                    ItemErrorCode::InvalidItem,
                    format!(
                        "field `{name}` cannot be set or unset (the key and `_id` are immutable)"
                    ),
                ));
            }
            document::check_update(&set, &unset, &base).map_err(broken)?;
            Ok((key, ItemBody::Update { set, unset }))
        }
        Op::Delete | Op::Lookup => {
            let key = key_of(&obj, "key")?;
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
        }
    }
}
