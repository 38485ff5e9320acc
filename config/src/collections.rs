//! The collections requests may name (`[collections.<name>]`): each one's unique key and
//! optional parent (for cascading deletes), [`valid_name`] for the names themselves, and
//! [`Config::children_of`] to follow a parent to its children.

use serde::{Deserialize, Serialize};

use crate::Config;

/// One collection requests may target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// The unique key field of the collection's documents (e.g. `text` for words).
    pub key: String,
    /// The parent collection, for cascading deletes (e.g. `words`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The field of this collection's documents that holds the parent's key (e.g. `word`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_field: Option<String>,
}

impl Config {
    /// The children of `collection`: (child name, child's parent field).
    pub fn children_of<'a>(
        &'a self,
        collection: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.collections
            .iter()
            .filter_map(move |(name, c)| match (&c.parent, &c.parent_field) {
                (Some(p), Some(pf)) if p == collection => Some((name.as_str(), pf.as_str())),
                _ => None,
            })
    }
}

/// Whether `name` is usable as a collection (and SQLite table / MongoDB collection) name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use crate::from_toml_str;

    #[test]
    fn children_are_found() {
        let c = from_toml_str(
            "[collections.words]\nkey='text'\n[collections.definitions]\nkey='id'\nparent='words'\nparent_field='word'\n",
        )
        .unwrap();
        let kids: Vec<_> = c.children_of("words").collect();
        assert_eq!(kids, vec![("definitions", "word")]);
    }
}
