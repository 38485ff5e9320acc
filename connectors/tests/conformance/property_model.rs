//! The in-memory model the property test holds the stores to: the contract's item rules
//! (as `sluice_pipeline::apply` states them) over maps of documents, with cascades that match
//! a child when its parent field holds the key with the same JSON type and value.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_pipeline::codes::ItemErrorCode;
use sluice_pipeline::contract::{ItemResult, ItemStatus, Op};
use sluice_pipeline::request::{ItemBody, Key};
use sluice_pipeline::store::{Found, WriteChunk};

/// The test collections (see `common`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coll {
    Words,
    Definitions,
    Examples,
}

impl Coll {
    pub const ALL: [Coll; 3] = [Coll::Words, Coll::Definitions, Coll::Examples];

    pub fn name(self) -> &'static str {
        match self {
            Coll::Words => "words",
            Coll::Definitions => "definitions",
            Coll::Examples => "examples",
        }
    }

    pub fn key_field(self) -> &'static str {
        match self {
            Coll::Words => "text",
            Coll::Definitions | Coll::Examples => "id",
        }
    }

    /// The field naming the parent's key, for a child collection.
    pub fn parent_field(self) -> Option<&'static str> {
        match self {
            Coll::Words => None,
            Coll::Definitions => Some("word"),
            Coll::Examples => Some("definition"),
        }
    }

    /// The collection whose documents name this one's keys.
    fn child(self) -> Option<Coll> {
        match self {
            Coll::Words => Some(Coll::Definitions),
            Coll::Definitions => Some(Coll::Examples),
            Coll::Examples => None,
        }
    }
}

/// Documents by collection and key, as a store should hold them.
#[derive(Debug, Clone, Default)]
pub struct Model {
    docs: BTreeMap<Coll, BTreeMap<Key, Value>>,
}

impl Model {
    /// What a lookup of `keys` in `coll` finds (no byte budget).
    pub fn lookup(&self, coll: Coll, keys: &[Key]) -> Vec<Found> {
        let docs = self.docs.get(&coll);
        keys.iter()
            .map(|k| match docs.and_then(|d| d.get(k)) {
                Some(doc) => Found::Doc(doc.clone()),
                None => Found::Missing,
            })
            .collect()
    }

    /// Applies `chunk`'s items to `coll` as the contract says, returning their results.
    pub fn apply(&mut self, coll: Coll, chunk: &WriteChunk) -> Vec<ItemResult> {
        let before = self.clone();
        let req = &chunk.request;
        let opts = &req.options;
        let mut failed = false;
        let mut results = Vec::new();
        for item in chunk.items() {
            if let Some(decided) = &item.decided {
                failed |= decided.status == ItemStatus::Failed;
                results.push((**decided).clone());
                continue;
            }
            if failed && (opts.stop_on_error || opts.atomic) {
                let code = if opts.atomic {
                    ItemErrorCode::Aborted
                } else {
                    ItemErrorCode::Stopped
                };
                results.push(ItemResult::error(
                    item.index,
                    ItemStatus::NotAttempted,
                    code,
                    "",
                    true,
                ));
                continue;
            }
            let key = item.key.clone().expect("generated items have keys");
            let docs = self.docs.entry(coll).or_default();
            let status = match (req.op, &item.body) {
                (Op::Create, ItemBody::Doc(_)) if docs.contains_key(&key) => {
                    if opts.skip_existing {
                        ItemStatus::Skipped
                    } else {
                        failed = true;
                        results.push(ItemResult::failed(item.index, ItemErrorCode::Exists, ""));
                        continue;
                    }
                }
                (Op::Create | Op::Upsert, ItemBody::Doc(raw)) => {
                    let doc = serde_json::from_str(raw.get()).expect("generated JSON");
                    docs.insert(key, doc);
                    ItemStatus::Ok
                }
                (Op::Update, ItemBody::Update { set, unset }) => match docs.get_mut(&key) {
                    Some(Value::Object(doc)) => {
                        for (name, v) in set {
                            doc.insert(name.clone(), v.clone());
                        }
                        for name in unset {
                            doc.remove(name);
                        }
                        ItemStatus::Ok
                    }
                    _ => ItemStatus::NotFound,
                },
                (Op::Delete, ItemBody::Key) => {
                    if docs.remove(&key).is_some() {
                        if opts.cascade {
                            self.delete_children(coll, &key);
                        }
                        ItemStatus::Ok
                    } else {
                        ItemStatus::NotFound
                    }
                }
                (op, body) => panic!("op {op:?} with body {body:?} is not generated"),
            };
            results.push(ItemResult::status(item.index, status));
        }
        if opts.atomic && failed {
            *self = before;
            for r in &mut results {
                if r.status != ItemStatus::Failed {
                    *r = ItemResult::error(
                        r.index,
                        ItemStatus::NotAttempted,
                        ItemErrorCode::Aborted,
                        "",
                        true,
                    );
                }
            }
        }
        results
    }

    /// Deletes the children of `coll`'s `key` (their parent field holds exactly the key's
    /// JSON: same type and value), and theirs.
    fn delete_children(&mut self, coll: Coll, key: &Key) {
        let (Some(child), Some(field)) = (coll.child(), coll.child().and_then(Coll::parent_field))
        else {
            return;
        };
        let wanted = key.to_json();
        let docs = self.docs.entry(child).or_default();
        let matched: Vec<Key> = docs
            .iter()
            .filter(|(_, d)| d.get(field) == Some(&wanted))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &matched {
            docs.remove(k);
        }
        for k in &matched {
            self.delete_children(child, k);
        }
    }
}
