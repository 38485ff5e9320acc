//! JSON ↔ BSON, plainly: a JSON object becomes a document with its fields in their order, an
//! integer an Int64, a fraction a Double, a string a string — and a name like `$numberLong` or
//! `$oid` is never read as Extended JSON (validate refuses such names anyway). So a document
//! means on MongoDB what it means on SQLite, and reads back as the same JSON.

use std::fmt;

use mongodb::bson::{Bson, Document};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sluice_pipeline::StoreError;

/// The BSON document of a JSON object's text.
pub fn document(json: &str) -> Result<Document, StoreError> {
    let mut de = serde_json::Deserializer::from_str(json);
    match Plain.deserialize(&mut de) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(other) => Err(encode(format!(
            "a document must be a JSON object, not {}",
            other.element_type() as u8
        ))),
        Err(e) => Err(encode(e)),
    }
}

/// The BSON of a JSON value.
pub fn bson(v: &Value) -> Result<Bson, StoreError> {
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => number(n.as_i64(), n.as_u64(), n.as_f64())?,
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(a.iter().map(bson).collect::<Result<_, _>>()?),
        Value::Object(m) => {
            let mut d = Document::new();
            for (k, v) in m {
                d.insert(k.clone(), bson(v)?);
            }
            Bson::Document(d)
        }
    })
}

/// The JSON of a document read back (only the plain types [`document`] writes appear).
pub fn json(d: Document) -> Value {
    Bson::Document(d).into_relaxed_extjson()
}

fn encode(e: impl fmt::Display) -> StoreError {
    StoreError::permanent("encode", e.to_string())
}

fn number(i: Option<i64>, u: Option<u64>, f: Option<f64>) -> Result<Bson, StoreError> {
    match (i, u, f) {
        (Some(i), _, _) => Ok(Bson::Int64(i)),
        (None, Some(u), _) => Err(encode(format!("integer {u} does not fit 64 bits"))),
        (None, None, Some(f)) if f.is_finite() => Ok(Bson::Double(f)),
        _ => Err(encode("not a finite number")),
    }
}

/// Builds BSON straight from JSON tokens, in order, with no Extended JSON reading.
struct Plain;

impl<'de> DeserializeSeed<'de> for Plain {
    type Value = Bson;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Bson, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Plain {
    type Value = Bson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Bson, E> {
        Ok(Bson::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Bson, E> {
        Ok(Bson::Boolean(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Bson, E> {
        Ok(Bson::Int64(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Bson, E> {
        i64::try_from(u)
            .map(Bson::Int64)
            .map_err(|_| E::custom(format!("integer {u} does not fit 64 bits")))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Bson, E> {
        if f.is_finite() {
            Ok(Bson::Double(f))
        } else {
            Err(E::custom("not a finite number"))
        }
    }
    fn visit_str<E>(self, s: &str) -> Result<Bson, E> {
        Ok(Bson::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Bson, E> {
        Ok(Bson::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bson, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Plain)? {
            out.push(v);
        }
        Ok(Bson::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bson, A::Error> {
        let mut d = Document::new();
        while let Some(k) = map.next_key::<String>()? {
            if d.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate field `{k}`")));
            }
            let v = map.next_value_seed(Plain)?;
            d.insert(k, v);
        }
        Ok(Bson::Document(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_json_names_are_plain_fields_and_order_is_kept() {
        let d = document(r#"{"z":1,"a":{"$numberLong":"5"},"d":{"$date":1},"f":1.5,"n":null}"#)
            .unwrap();
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(keys, ["z", "a", "d", "f", "n"]);
        assert_eq!(d.get_document("a").unwrap().get_str("$numberLong"), Ok("5"));
        assert_eq!(d.get_i64("z"), Ok(1));
        assert_eq!(d.get_f64("f"), Ok(1.5));
        let back = json(d);
        assert_eq!(back["a"]["$numberLong"], "5");
    }

    #[test]
    fn numbers_that_do_not_fit_are_refused() {
        assert!(document(r#"{"n":18446744073709551615}"#).is_err());
        assert!(document(r#"{"a":1,"a":2}"#).is_err(), "duplicate names");
        assert!(document("[1]").is_err(), "not an object");
    }
}
