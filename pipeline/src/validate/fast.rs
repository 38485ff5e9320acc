//! A create/upsert document checked in one pass over its text, with no value tree: the common
//! case, a valid document, answered without allocating a map per object.
//!
//! It only ever says "valid, and this is its key". Any doubt — a rule broken, or a number it
//! cannot judge from its value alone — gives `None`, and the item takes the full path
//! ([`super::json::parse`], then [`super::document`]), which finds the same answer or says
//! exactly what is wrong. So the errors, their codes and their paths never depend on this
//! module; what it must never do is call valid a document the full path refuses (tested below
//! against the full path on generated documents).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::document::field_name_problem;
use crate::request::Key;

/// The key (`key_field`) of the create/upsert document `raw`, when the document is valid:
/// an object whose names obey the document model at every depth, with no repeated name, no
/// top-level `_id`, numbers the stores read alike, and `key_field` a string or an integer.
pub(super) fn valid_document_key(raw: &str, key_field: &str) -> Option<Key> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let key = Top { key_field }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    key
}

/// Any doubt: the full path decides.
#[derive(Debug)]
struct Doubt;

impl fmt::Display for Doubt {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("not judged by the fast path")
    }
}

impl std::error::Error for Doubt {}

impl de::Error for Doubt {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Doubt
    }
}

fn doubt<E: de::Error>() -> E {
    E::custom(Doubt)
}

/// The names of one object seen so far: a list while short, a set once long.
#[derive(Default)]
struct Names<'de> {
    list: Vec<Cow<'de, str>>,
    set: HashSet<Cow<'de, str>>,
}

impl<'de> Names<'de> {
    const LIST_MAX: usize = 16;

    /// Adds `name` if it may be a field name here and was not seen before.
    fn admit(&mut self, name: Cow<'de, str>) -> bool {
        if field_name_problem(&name).is_some() {
            return false;
        }
        if self.set.is_empty() && self.list.len() < Self::LIST_MAX {
            if self.list.contains(&name) {
                return false;
            }
            self.list.push(name);
            return true;
        }
        if self.set.is_empty() {
            self.set.extend(self.list.drain(..));
        }
        self.set.insert(name)
    }
}

/// A member name, borrowed from the text unless it holds escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The document's top-level object: its names, its key and every value below.
struct Top<'k> {
    key_field: &'k str,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Option<Key>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Option<Key>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut names = Names::default();
        let mut key = None;
        while let Some(Name(name)) = map.next_key()? {
            let is_key = name == self.key_field;
            if name == "_id" || !names.admit(name) {
                return Err(doubt());
            }
            if is_key {
                key = Some(map.next_value_seed(KeySeed)?);
            } else {
                map.next_value_seed(Check)?;
            }
        }
        Ok(key)
    }
}

/// The key field's value: a string, or an integer that fits i64.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an integer")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
        Ok(Key::Str(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Key, E> {
        Ok(Key::Str(s))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
        Ok(Key::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
        i64::try_from(v).map(Key::Int).map_err(|_| doubt())
    }
}

/// Any value: names and numbers checked, nothing kept.
struct Check;

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names = Names::default();
        while let Some(Name(name)) = map.next_key()? {
            if !names.admit(name) {
                return Err(doubt());
            }
            map.next_value_seed(Check)?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Check)?.is_some() {}
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    /// Above i64::MAX the full path refuses an integer literal.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        i64::try_from(v).map(drop).map_err(|_| doubt())
    }
    /// A float, or an integer literal outside both i64 and u64 (serde_json reads those as
    /// floats, and the full path refuses them): the value cannot tell which, so every whole
    /// number that large is left to the full path.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() && !(v.fract() == 0.0 && v.abs() >= 9.0e18) {
            Ok(())
        } else {
            Err(doubt())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::*;
    use crate::contract::Op;
    use crate::request::ItemBody;
    use crate::validate::item::read_full;

    /// The full path's answer for a create of `text` keyed by `text`'s member `text`.
    fn full(text: &str) -> Result<Key, ()> {
        let raw = RawValue::from_string(text.to_string()).map_err(drop)?;
        match read_full(0, &raw, Op::Create, "text") {
            Ok((key, ItemBody::Doc(doc))) if doc.get() == text => Ok(key),
            _ => Err(()),
        }
    }

    #[test]
    fn typical_documents_take_the_fast_path() {
        for text in [
            r#"{"text":"sluice","n":3,"tags":["a","b"],"meta":{"x":1.5,"y":null,"z":true}}"#,
            r#"{"text":42,"deep":[[{"a":[]}]],"big":9223372036854775807,"neg":-9223372036854775808}"#,
            r#"{"n":1.25e-3,"text":"caf\u00e9 \"q\""}"#,
        ] {
            let fast = valid_document_key(text, "text");
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, full(text).ok(), "{text}");
        }
    }

    #[test]
    fn every_broken_rule_is_left_to_the_full_path() {
        for text in [
            r#"{"text":"a","text":"b"}"#,
            r#"{"text":"a","m":{"x":1,"x":2}}"#,
            r#"{"text":"a","_id":1}"#,
            r#"{"text":"a","$set":1}"#,
            r#"{"text":"a","m":{"a.b":1}}"#,
            r#"{"text":"a","":1}"#,
            r#"{"text":"a","\u0000":1}"#,
            r#"{"text":"a","n":9223372036854775808}"#,
            r#"{"text":"a","n":-9223372036854775809}"#,
            r#"{"text":"a","n":[18446744073709551616]}"#,
            r#"{"text":"a","s":"\ud800"}"#,
            r#"{"text":1.5}"#,
            r#"{"text":null}"#,
            r#"{"n":1}"#,
            r#"["text"]"#,
            r#""text""#,
        ] {
            assert_eq!(valid_document_key(text, "text"), None, "{text}");
        }
        // Many members: the set takes over from the list, and still sees a repeat.
        let mut many: Vec<String> = (0..40).map(|i| format!(r#""f{i}":{i}"#)).collect();
        many.push(r#""text":"k""#.into());
        let ok = format!("{{{}}}", many.join(","));
        assert_eq!(valid_document_key(&ok, "text"), Some(Key::Str("k".into())));
        many.push(r#""f7":0"#.into());
        assert_eq!(
            valid_document_key(&format!("{{{}}}", many.join(",")), "text"),
            None
        );
    }

    /// JSON values rich in what the rules are about — repeated and forbidden names (escaped
    /// or not), integers at and beyond the i64 and u64 bounds, floats, lone surrogates — most
    /// of them valid, so that both answers are met often.
    fn value() -> impl Strategy<Value = String> {
        let good = prop_oneof![
            Just("0"),
            Just("-1"),
            Just("9223372036854775807"),
            Just("-9223372036854775808"),
            Just("1.5"),
            Just("-2.5e-7"),
            Just("1E2"),
            Just("true"),
            Just("null"),
            Just(r#""plain""#),
            Just(r#""caf\u00e9""#),
            Just(r#""nul \u0000 inside""#),
            Just(r#""\ud83d\ude00""#),
        ];
        let bad = prop_oneof![
            Just("9223372036854775808"),
            Just("-9223372036854775809"),
            Just("18446744073709551615"),
            Just("18446744073709551616"),
            Just("1e19"),
            Just("-1E300"),
            Just("1e400"),
            Just(r#""\ud800""#),
        ];
        let leaf = prop_oneof![12 => good, 1 => bad].prop_map(str::to_string);
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                members(inner).prop_map(|m| format!("{{ {} }}", m.join(", "))),
            ]
        })
    }

    /// An object's members: mostly valid names, now and then a forbidden or repeated one.
    fn members(value: impl Strategy<Value = String>) -> impl Strategy<Value = Vec<String>> {
        let good = prop_oneof![
            Just("n"),
            Just("a"),
            Just("x~/y"),
            Just("caf\\u00e9"),
            Just("b c")
        ];
        let bad = prop_oneof![
            Just("text"),
            Just("\\u0074ext"),
            Just("_id"),
            Just("$x"),
            Just("a.b"),
            Just(""),
            Just("\\u0000"),
            Just("\\ud800"),
        ];
        let name = prop_oneof![20 => good, 1 => bad];
        prop::collection::vec((name, value), 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| format!("\"{k}\" : {v}"))
                .collect()
        })
    }

    /// A create document: members around a key that is usually a string.
    fn document() -> impl Strategy<Value = String> {
        let key = prop_oneof![6 => Just(r#""k1""#.to_string()), 1 => value()];
        (members(value()), key, 0..6usize).prop_map(|(mut m, key, at)| {
            m.insert(at.min(m.len()), format!(r#""text": {key}"#));
            format!("{{{}}}", m.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// The fast path never calls valid what the full path refuses, and finds the same key.
        #[test]
        fn the_fast_path_agrees_with_the_full_path(text in prop_oneof![4 => document(), 1 => value()]) {
            if let Some(key) = valid_document_key(&text, "text") {
                prop_assert_eq!(Ok(key), full(&text), "{}", text);
            }
        }

        /// Documents that only hold valid parts are recognised (the fast path is taken).
        #[test]
        fn valid_documents_are_recognised(n in any::<i64>(), s in "[a-z]{0,8}", x in -1e12f64..1e12) {
            let text = format!(r#"{{"text":"{s}","n":{n},"x":{x},"m":{{"s":["{s}",{n}]}}}}"#);
            prop_assert_eq!(valid_document_key(&text, "text"), Some(Key::Str(s.clone())));
            prop_assert_eq!(full(&text), Ok(Key::Str(s)));
        }
    }
}
