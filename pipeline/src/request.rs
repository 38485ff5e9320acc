//! A validated request as the stages after validate see it.

use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::contract::{ItemResult, Op, Options};

/// A document key: the contract allows strings and integers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A string key.
    Str(String),
    /// An integer key.
    Int(i64),
}

impl Key {
    /// Reads a key from a JSON value; `None` when it is neither a string nor an integer.
    pub fn from_json(v: &Value) -> Option<Key> {
        match v {
            Value::String(s) => Some(Key::Str(s.clone())),
            Value::Number(n) => n.as_i64().map(Key::Int),
            _ => None,
        }
    }

    /// The key as a JSON value.
    pub fn to_json(&self) -> Value {
        match self {
            Key::Str(s) => Value::String(s.clone()),
            Key::Int(i) => Value::from(*i),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Str(s) => write!(f, "{s:?}"),
            Key::Int(i) => write!(f, "{i}"),
        }
    }
}

/// What an item asks the store to do, by op.
#[derive(Debug, Clone)]
pub enum ItemBody {
    /// create/upsert: the whole document as its JSON text (it contains the key field).
    Doc(Box<RawValue>),
    /// update: fields to set and fields to remove.
    Update {
        /// Fields to set (top-level names).
        set: Map<String, Value>,
        /// Fields to remove (top-level names).
        unset: Vec<String>,
    },
    /// delete/lookup: the key alone.
    Key,
    /// The item was invalid; its result is already decided.
    Invalid,
}

impl PartialEq for ItemBody {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ItemBody::Doc(a), ItemBody::Doc(b)) => a.get() == b.get(),
            (ItemBody::Update { set: s1, unset: u1 }, ItemBody::Update { set: s2, unset: u2 }) => {
                s1 == s2 && u1 == u2
            }
            (ItemBody::Key, ItemBody::Key) | (ItemBody::Invalid, ItemBody::Invalid) => true,
            _ => false,
        }
    }
}

/// One item of a validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// 0-based position in the request.
    pub index: usize,
    /// The item's key, when it has a valid one.
    pub key: Option<Key>,
    /// What to do.
    pub body: ItemBody,
    /// Size of the item's JSON encoding in bytes (for chunking).
    pub bytes: usize,
    /// A result decided before execution (invalid item, duplicate key); such items are
    /// reported but never sent to the store. Boxed: most items have none, and a request holds
    /// its items in memory while in flight.
    pub decided: Option<Box<ItemResult>>,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The idempotency key.
    pub request_id: String,
    /// Target collection (declared in config).
    pub collection: String,
    /// Operation.
    pub op: Op,
    /// The items, in request order.
    pub items: Vec<Item>,
    /// Options.
    pub options: Options,
}

/// A request shared between the tasks that execute its chunks.
pub type SharedRequest = Arc<Request>;
