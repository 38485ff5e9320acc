//! The collections requests may name (`[collections.<name>]`): each one's unique key and
//! optional parent (for cascading deletes), [`valid_name`] (the identifier grammar) for the
//! names themselves, and [`Config::children_of`] to follow a parent to its children.

use serde::{Deserialize, Serialize};

use crate::Config;

/// One collection requests may target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// The unique key field of the collection's documents (e.g. `text` for words): a top-level
    /// field matching `^[A-Za-z_][A-Za-z0-9_]{0,63}$`, not `_id`.
    pub key: String,
    /// The parent collection, for cascading deletes (e.g. `words`): a declared collection.
    /// Parent chains must not loop back, at any length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The field of this collection's documents that holds the parent's key (e.g. `word`): a
    /// top-level field matching `^[A-Za-z_][A-Za-z0-9_]{0,63}$`, not `_id`.
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

/// The grammar of every identifier in `[collections]` — collection names, `key`, `parent` and
/// `parent_field` — as a regular expression. These names become SQLite table, column and index
/// names and MongoDB collection and field names, so they are kept to a set that needs no
/// quoting anywhere and cannot be read as SQL, a dotted path or an operator.
pub const IDENTIFIER_GRAMMAR: &str = "^[A-Za-z_][A-Za-z0-9_]{0,63}$";

/// Whether `name` matches `^[A-Za-z_][A-Za-z0-9_]{0,63}$` (`IDENTIFIER_GRAMMAR`): 1-64 ASCII letters, digits and `_`, not
/// starting with a digit.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
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

    #[test]
    fn identifiers_follow_the_grammar() {
        for ok in ["words", "_x", "W0rd_s", "a", &"a".repeat(64)] {
            assert!(super::valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a.b",
            "$a",
            "a-b",
            "a b",
            "é",
            "a\0",
            "word')); DROP TABLE doc_words; --",
            &"a".repeat(65),
        ] {
            assert!(!super::valid_name(bad), "{bad:?}");
        }
    }
}
