//! A postcard-friendly payload value with lossless JSON conversion.
//!
//! `serde_json::Value` cannot travel through postcard (postcard is not self-describing), so
//! records carry this type instead. Every JSON value converts to a `Value` and back unchanged.
//! [`Value::Bytes`] has no JSON counterpart; it converts to an array of numbers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A dynamically typed record value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Value {
    /// No value.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer (JSON integers that fit).
    Int(i64),
    /// An unsigned integer too large for `i64`.
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// Raw bytes.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An ordered list.
    List(Vec<Value>),
    /// A map with string keys, in key order.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Encodes the value with postcard (for opaque device-owned payloads).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a Value into a Vec cannot fail: every variant is supported by postcard.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a value encoded with [`Value::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Value, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        use serde_json::Value as J;
        match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(b),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::UInt(u)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::String(s),
            J::Array(a) => Value::List(a.into_iter().map(Value::from).collect()),
            J::Object(o) => Value::Map(o.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
        }
    }
}

impl From<Value> for serde_json::Value {
    fn from(v: Value) -> Self {
        use serde_json::Value as J;
        match v {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(b),
            Value::Int(i) => J::from(i),
            Value::UInt(u) => J::from(u),
            Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s),
            Value::Bytes(b) => J::Array(b.into_iter().map(J::from).collect()),
            Value::List(l) => J::Array(l.into_iter().map(J::from).collect()),
            Value::Map(m) => J::Object(m.into_iter().map(|(k, v)| (k, J::from(v))).collect()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as J;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::from),
            any::<u64>().prop_map(J::from),
            (-1e300f64..1e300).prop_map(J::from),
            ".{0,8}".prop_map(J::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
                prop::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn json_round_trips_through_value_and_postcard(j in json()) {
            let v = Value::from(j.clone());
            let bytes = v.to_bytes();
            let back = Value::from_bytes(&bytes).expect("decodes");
            prop_assert_eq!(serde_json::Value::from(back), j);
        }
    }

    #[test]
    fn large_unsigned_integers_survive() {
        let j = serde_json::json!({"big": u64::MAX, "neg": -5, "f": 1.5});
        assert_eq!(serde_json::Value::from(Value::from(j.clone())), j);
    }
}
