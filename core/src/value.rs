//! A postcard-friendly payload value with lossless JSON conversion.
//!
//! `serde_json::Value` cannot travel through postcard (postcard is not self-describing), so
//! records carry this type instead. Every JSON value converts to a `Value` and back unchanged.
//! [`Value::Bytes`] has no JSON counterpart; it converts to an array of numbers.
//!
//! Values nest (lists and maps of values). Decoding refuses more than [`MAX_NESTING`] levels of
//! lists and maps, so a hostile frame cannot exhaust the decoder's stack (postcard itself has
//! no recursion limit: a 20 KiB frame of nested one-element lists overflowed a 2 MiB stack and
//! aborted the process).
//!
//! Decoding also bounds *breadth*: a null costs one byte on the wire and a 32-byte [`Value`]
//! in memory, so a 4 MiB frame of nulls used to decode into 128 MiB (and more while the list
//! grew). Inside [`crate::codec::decode`] (and [`Value::from_bytes`]) every decoded list item
//! is charged [`LIST_ITEM_COST`] bytes and every map entry [`MAP_ENTRY_COST`] bytes against a
//! budget of [`value_budget`]`(input length)`; a message over it is refused
//! ([`crate::CodecError::TooManyValues`]) and never reaches the engine. A list's storage is
//! reserved only for the items its length announces and the budget covers, so what a decoded
//! message holds in `Value`s is at most about the budget: [`VALUE_BYTES_PER_INPUT_BYTE`] (24)
//! bytes per input byte plus 4 KiB. What that refuses is said on the constant.

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

/// The deepest nesting of lists and maps a decoded [`Value`] may have (the default recursion
/// limit of `serde_json`, so any JSON document `serde_json` parses fits).
pub const MAX_NESTING: usize = 128;

/// What one decoded list item is charged against the decode budget: the size of a [`Value`].
pub const LIST_ITEM_COST: usize = std::mem::size_of::<Value>();

/// What one decoded map entry is charged against the decode budget: its key and value
/// (56 bytes), the B-tree's share of nodes as little as half full (about 64 bytes) and the key's
/// allocation (at least 16 bytes), rounded up.
pub const MAP_ENTRY_COST: usize = 160;

/// Memory the decoded `Value`s of one message may take per byte of its encoding. 24: a map
/// entry costs 160 bytes decoded, so an entry of a key of four characters or more and a small
/// number (seven bytes on the wire) always fits, as application metadata does; what is
/// refused is lists dominated by nulls (one byte on the wire, 32 decoded) and maps of many
/// keys of three characters or fewer with tiny values. A local write that peers would refuse
/// is refused up front (`CommandError::ValueTooDense`).
pub const VALUE_BYTES_PER_INPUT_BYTE: usize = 24;

/// What every decode may take on top of [`VALUE_BYTES_PER_INPUT_BYTE`] (4 KiB), so that a
/// small message with a few nulls or map entries is not refused.
pub const VALUE_BUDGET_BASE: usize = 4 * 1024;

/// The decode budget, in bytes of decoded `Value`s, for an input of `len` bytes:
/// [`VALUE_BYTES_PER_INPUT_BYTE`] per byte plus [`VALUE_BUDGET_BASE`].
pub fn value_budget(len: usize) -> usize {
    len.saturating_mul(VALUE_BYTES_PER_INPUT_BYTE)
        .saturating_add(VALUE_BUDGET_BASE)
}

/// What the fields of one shared write may take decoded beyond
/// [`VALUE_BYTES_PER_INPUT_BYTE`] per byte of their encoding: that many times the smallest register
/// stamp (18 bytes) that travels with each field of a snapshot record, so no message carrying
/// the fields (a change, a batch, a log page, a snapshot page) can exceed its decode budget.
pub const FIELDS_EXCESS_ALLOWANCE: usize = VALUE_BYTES_PER_INPUT_BYTE * 18;

/// Whether the fields of one shared write decode within the budget in every message that
/// could carry them, so no peer refuses them. `Err((excess, allowance))` if not: `excess` is
/// what their values take decoded beyond [`VALUE_BYTES_PER_INPUT_BYTE`] per byte of their
/// encoding, `allowance` is [`FIELDS_EXCESS_ALLOWANCE`]. Only values dominated by nulls in
/// lists (or maps of tiny entries) can fail.
pub fn check_fields_decode(fields: &BTreeMap<String, Value>) -> Result<(), (usize, usize)> {
    let excess = fields
        .values()
        .map(|v| {
            v.decode_cost().saturating_sub(
                v.to_bytes()
                    .len()
                    .saturating_mul(VALUE_BYTES_PER_INPUT_BYTE),
            )
        })
        .fold(0usize, usize::saturating_add);
    if excess > FIELDS_EXCESS_ALLOWANCE {
        Err((excess, FIELDS_EXCESS_ALLOWANCE))
    } else {
        Ok(())
    }
}

thread_local! {
    /// The decode budget left on this thread (`None`: unlimited) and whether it was exceeded.
    static BUDGET: Cell<(Option<usize>, bool)> = const { Cell::new((None, false)) };
}

/// Runs `f` (one decode) with a budget of `budget` bytes of decoded `Value`s on this thread.
/// Returns `f`'s result and whether the budget was exceeded (the decode then failed).
pub(crate) fn with_budget<T>(budget: usize, f: impl FnOnce() -> T) -> (T, bool) {
    let saved = BUDGET.with(|b| b.replace((Some(budget), false)));
    let out = f();
    let (_, exceeded) = BUDGET.with(|b| b.replace(saved));
    (out, exceeded)
}

/// Charges `cost` bytes against the current decode budget, if any.
fn charge<E: de::Error>(cost: usize) -> Result<(), E> {
    BUDGET.with(|b| match b.get() {
        (None, _) => Ok(()),
        (Some(left), _) if left >= cost => {
            b.set((Some(left - cost), false));
            Ok(())
        }
        (Some(_), _) => {
            b.set((Some(0), true));
            Err(E::custom("decoded values exceed the decode budget"))
        }
    })
}

/// Adds `bytes` to the current decode budget, if any (a compact form that carries less than
/// the plain one per change grants what the plain one would have; see
/// `shared_batch`).
pub(crate) fn credit(bytes: usize) {
    BUDGET.with(|b| {
        if let (Some(left), false) = b.get() {
            b.set((Some(left.saturating_add(bytes)), false));
        }
    });
}

/// A dynamically typed record value.
///
/// Decoding (with any serde format) refuses values nested deeper than [`MAX_NESTING`] lists and
/// maps; see [`Value::nesting`].
#[derive(Clone, Debug, PartialEq, Serialize, Default)]
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

    /// Decodes a value encoded with [`Value::to_bytes`], within [`value_budget`]`(bytes.len())`
    /// (a value over it is refused as malformed).
    pub fn from_bytes(bytes: &[u8]) -> Result<Value, postcard::Error> {
        with_budget(value_budget(bytes.len()), || postcard::from_bytes(bytes)).0
    }

    /// What decoding this value charges against the decode budget: [`LIST_ITEM_COST`] per item
    /// of every list in it and [`MAP_ENTRY_COST`] per entry of every map in it. Computed
    /// without recursion.
    pub fn decode_cost(&self) -> usize {
        let mut cost = 0usize;
        let mut stack = vec![self];
        while let Some(v) = stack.pop() {
            match v {
                Value::List(items) => {
                    cost = cost.saturating_add(items.len().saturating_mul(LIST_ITEM_COST));
                    stack.extend(items.iter());
                }
                Value::Map(entries) => {
                    cost = cost.saturating_add(entries.len().saturating_mul(MAP_ENTRY_COST));
                    stack.extend(entries.values());
                }
                _ => {}
            }
        }
        cost
    }

    /// How many levels of lists and maps this value nests (0 for a scalar). Values deeper than
    /// [`MAX_NESTING`] do not decode. Computed without recursion.
    pub fn nesting(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 0usize)];
        while let Some((v, depth)) = stack.pop() {
            match v {
                Value::List(items) => {
                    deepest = deepest.max(depth + 1);
                    stack.extend(items.iter().map(|i| (i, depth + 1)));
                }
                Value::Map(entries) => {
                    deepest = deepest.max(depth + 1);
                    stack.extend(entries.values().map(|i| (i, depth + 1)));
                }
                _ => {}
            }
        }
        deepest
    }
}

// ------------------------------------------------------------------ depth-limited decoding
//
// Equivalent to `#[derive(Deserialize)]` (same variant indices and names, same encodings), plus
// a nesting limit carried down as a seed.

const VARIANTS: &[&str] = &[
    "Null", "Bool", "Int", "UInt", "Float", "String", "Bytes", "List", "Map",
];

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ValueSeed { depth: 0 }.deserialize(deserializer)
    }
}

/// Decodes one value found inside `depth` enclosing lists and maps.
struct ValueSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_enum("Value", VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, variant) = data.variant::<Tag>()?;
        let nested = || {
            if self.depth >= MAX_NESTING {
                Err(de::Error::custom(format_args!(
                    "value nested deeper than {MAX_NESTING} lists and maps"
                )))
            } else {
                Ok(self.depth + 1)
            }
        };
        Ok(match tag {
            Tag::Null => {
                variant.unit_variant()?;
                Value::Null
            }
            Tag::Bool => Value::Bool(variant.newtype_variant()?),
            Tag::Int => Value::Int(variant.newtype_variant()?),
            Tag::UInt => Value::UInt(variant.newtype_variant()?),
            Tag::Float => Value::Float(variant.newtype_variant()?),
            Tag::String => Value::String(variant.newtype_variant()?),
            Tag::Bytes => Value::Bytes(
                variant
                    .newtype_variant::<serde_bytes::ByteBuf>()?
                    .into_vec(),
            ),
            Tag::List => Value::List(variant.newtype_variant_seed(ListSeed { depth: nested()? })?),
            Tag::Map => Value::Map(variant.newtype_variant_seed(MapSeed { depth: nested()? })?),
        })
    }
}

/// The variant of a [`Value`], by index (postcard) or by name (self-describing formats).
enum Tag {
    Null,
    Bool,
    Int,
    UInt,
    Float,
    String,
    Bytes,
    List,
    Map,
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(TagVisitor)
    }
}

struct TagVisitor;

impl<'de> Visitor<'de> for TagVisitor {
    type Value = Tag;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Value variant")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tag, E> {
        Ok(match v {
            0 => Tag::Null,
            1 => Tag::Bool,
            2 => Tag::Int,
            3 => Tag::UInt,
            4 => Tag::Float,
            5 => Tag::String,
            6 => Tag::Bytes,
            7 => Tag::List,
            8 => Tag::Map,
            _ => {
                return Err(E::invalid_value(
                    de::Unexpected::Unsigned(v),
                    &"variant index 0 <= i < 9",
                ))
            }
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag, E> {
        Ok(match v {
            "Null" => Tag::Null,
            "Bool" => Tag::Bool,
            "Int" => Tag::Int,
            "UInt" => Tag::UInt,
            "Float" => Tag::Float,
            "String" => Tag::String,
            "Bytes" => Tag::Bytes,
            "List" => Tag::List,
            "Map" => Tag::Map,
            _ => return Err(E::unknown_variant(v, VARIANTS)),
        })
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Tag, E> {
        match std::str::from_utf8(v) {
            Ok(s) => self.visit_str(s),
            Err(_) => Err(E::invalid_value(de::Unexpected::Bytes(v), &self)),
        }
    }
}

/// Decodes the items of a list whose own items sit at `depth`.
struct ListSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Vec<Value>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Value>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        // The announced length is the peer's claim: it is charged in full before anything is
        // reserved (so a list the budget cannot hold is refused at once, and a list that holds
        // reserves exactly its items); without a length, each item is charged as it comes.
        let announced = seq.size_hint();
        let mut out = match announced {
            Some(n) => {
                charge(n.saturating_mul(LIST_ITEM_COST))?;
                let unlimited = BUDGET.with(|b| b.get().0.is_none());
                Vec::with_capacity(if unlimited { n.min(1024) } else { n })
            }
            None => Vec::new(),
        };
        while let Some(v) = seq.next_element_seed(ValueSeed { depth: self.depth })? {
            if announced.is_none_or(|n| out.len() >= n) {
                charge(LIST_ITEM_COST)?;
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Decodes the entries of a map whose values sit at `depth`.
struct MapSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for MapSeed {
    type Value = BTreeMap<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MapSeed {
    type Value = BTreeMap<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of Values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            charge(MAP_ENTRY_COST)?;
            let v = map.next_value_seed(ValueSeed { depth: self.depth })?;
            out.insert(k, v);
        }
        Ok(out)
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

    fn nested_lists(depth: usize) -> Value {
        let mut v = Value::Null;
        for _ in 0..depth {
            v = Value::List(vec![v]);
        }
        v
    }

    #[test]
    fn values_nested_up_to_the_limit_round_trip_and_deeper_ones_are_refused() {
        let ok = nested_lists(MAX_NESTING);
        assert_eq!(ok.nesting(), MAX_NESTING);
        assert_eq!(Value::from_bytes(&ok.to_bytes()).ok(), Some(ok));
        let deep = nested_lists(MAX_NESTING + 1);
        assert!(Value::from_bytes(&deep.to_bytes()).is_err());
        let mut map = Value::Map([("k".to_owned(), nested_lists(MAX_NESTING))].into());
        assert_eq!(map.nesting(), MAX_NESTING + 1);
        assert!(Value::from_bytes(&map.to_bytes()).is_err());
        map = Value::Map([("k".to_owned(), nested_lists(MAX_NESTING - 1))].into());
        assert_eq!(Value::from_bytes(&map.to_bytes()).ok(), Some(map));
    }

    #[test]
    fn every_variant_round_trips_through_postcard_and_json() {
        let v = Value::Map(
            [
                ("null".to_owned(), Value::Null),
                ("bool".to_owned(), Value::Bool(true)),
                ("int".to_owned(), Value::Int(-3)),
                ("uint".to_owned(), Value::UInt(u64::MAX)),
                ("float".to_owned(), Value::Float(1.5)),
                ("string".to_owned(), Value::from("s")),
                ("bytes".to_owned(), Value::Bytes(vec![0, 255])),
                ("list".to_owned(), Value::List(vec![Value::Int(1)])),
            ]
            .into(),
        );
        assert_eq!(Value::from_bytes(&v.to_bytes()).ok(), Some(v.clone()));
        let json = serde_json::to_string(&v).expect("serialises");
        assert_eq!(serde_json::from_str::<Value>(&json).ok(), Some(v));
        assert!(Value::from_bytes(&[9]).is_err(), "unknown variant index");
    }

    #[test]
    fn breadth_is_bounded_by_the_input_length() {
        // 100,000 nulls: 100 KB on the wire, 3.2 MB decoded: over the budget.
        let nulls = Value::List(vec![Value::Null; 100_000]);
        let bytes = nulls.to_bytes();
        assert!(100_000 * LIST_ITEM_COST > value_budget(bytes.len()));
        assert!(Value::from_bytes(&bytes).is_err());
        // A list announcing a billion items in six bytes is refused before anything is reserved.
        assert!(Value::from_bytes(&[7, 0x80, 0x94, 0xeb, 0xdc, 0x03]).is_err());
        // Small lists of nulls, and long lists of anything else, decode.
        let few = Value::List(vec![Value::Null; 100]);
        assert_eq!(Value::from_bytes(&few.to_bytes()).ok(), Some(few));
        let ints = Value::List((0..100_000).map(|i| Value::Int(i % 64)).collect());
        assert_eq!(Value::from_bytes(&ints.to_bytes()).ok(), Some(ints));
        // Self-describing formats outside the codec are not budgeted.
        let json = serde_json::to_string(&nulls).expect("serialises");
        assert_eq!(serde_json::from_str::<Value>(&json).ok(), Some(nulls));
    }

    #[test]
    fn fields_that_pass_the_write_check_decode_in_any_batch() {
        use crate::codec::{decode, encode};
        use crate::{ChangeKind, DeviceId, Hlc, SharedChange, SyncMessage};
        let change = |fields: BTreeMap<String, Value>| SharedChange {
            origin: DeviceId::from_u128(1),
            seq: 1,
            hlc: Hlc {
                time_ms: 1,
                counter: 0,
                device: DeviceId::from_u128(1),
            },
            model: "tag".into(),
            record: uuid::Uuid::from_u128(1),
            kind: ChangeKind::Insert,
            fields,
        };
        // The most nulls a write may hold, in many changes of one batch: every peer decodes it.
        let mut n = 0;
        while check_fields_decode(&[("".into(), Value::List(vec![Value::Null; n + 1]))].into())
            .is_ok()
        {
            n += 1;
        }
        assert!(n >= 8, "a few nulls are always fine ({n})");
        let fields: BTreeMap<String, Value> =
            [("".into(), Value::List(vec![Value::Null; n]))].into();
        // As a real run: consecutive seqs and rising counters, so every change but the
        // first takes the compact batch form's shortest encoding.
        let run: Vec<SharedChange> = (0..10_000u32)
            .map(|i| {
                let mut c = change(fields.clone());
                c.seq = u64::from(i) + 1;
                c.hlc.counter = i;
                c
            })
            .collect();
        let batch = SyncMessage::SharedChangeBatch(run);
        assert!(decode(&encode(&batch)).is_ok());
        // One more null is refused at the write; ordinary values pass.
        let over: BTreeMap<String, Value> =
            [("".into(), Value::List(vec![Value::Null; n + 1]))].into();
        assert!(check_fields_decode(&over).is_err());
        let ordinary: BTreeMap<String, Value> = [
            ("name".into(), Value::from("holiday")),
            (
                "ids".into(),
                Value::List((0..10_000).map(Value::Int).collect()),
            ),
        ]
        .into();
        assert!(check_fields_decode(&ordinary).is_ok());
    }

    #[test]
    fn large_unsigned_integers_survive() {
        let j = serde_json::json!({"big": u64::MAX, "neg": -5, "f": 1.5});
        assert_eq!(serde_json::Value::from(Value::from(j.clone())), j);
    }
}
