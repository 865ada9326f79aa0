//! The compact wire form of a run of shared changes (`SharedChangeBatch`, the entries of a
//! `SharedChangeResponse`).
//!
//! A log page is ordered by `(origin, seq)` and a batch is one device's writes of one moment,
//! so consecutive changes share their origin, model and kind, their seqs follow each other and
//! their stamps rise by one counter step within a millisecond. A run is encoded as
//!
//! ```text
//! run    = origins: [DeviceId]        distinct origins, in order of first use
//!          models: [string]           distinct models, in order of first use
//!          changes: [change]
//! change = Next(time_delta, id_high_delta, id_low, fields)
//!        | Any(origin, seq_delta, time_delta, counter, model, kind, device,
//!              id_high_delta, id_low, fields)
//!
//! Next:              the previous change's origin, model and kind, seq + 1, the stamp's
//!                    device is the origin, and the counter follows: previous + 1 within the
//!                    same millisecond (time_delta 0), 0 in a later one
//! origin, model:     varint index into the tables
//! seq_delta: zigzag  seq − previous seq (wrapping)
//! time_delta: zigzag stamp time − previous stamp time (wrapping)
//! counter: varint    the stamp's counter
//! device: option     the stamp's device where it is not the origin (peers refuse such a change,
//!                    but the form carries any value exactly)
//! id_high_delta      first 8 bytes of the record id (big-endian) − previous (zigzag, wrapping)
//! id_low: 8 bytes    last 8 bytes of the record id
//! fields: [(name, value)]  in strictly increasing name order
//! ```
//!
//! where "previous" starts at zero (origin and model index 0, kind `Insert`). A change of a
//! batch of one field costs about 15 bytes beyond its field (its own name and value), against
//! about 65 in the plain form, which repeats the origin in the stamp and spells out the model,
//! the record id and a full stamp in every change.
//!
//! Decoding accepts only the canonical form (one encoding per run, as for
//! `owned_batch`): tables distinct, each entry first used in table order,
//! none unused, model names at most [`MAX_MODEL_NAME`](crate::MAX_MODEL_NAME) bytes, `Any` only where `Next` does not
//! apply, a device only where it differs from the origin, field names strictly increasing.
//!
//! Memory: each change gets its own copy of its model name (bounded by the cap) and of its
//! origin (16 bytes). Field values are decoded within the message's decode budget
//! ([`value_budget`](crate::value::value_budget)), which this form tops up by
//! [`FIELDS_EXCESS_ALLOWANCE`] per change: the plain form spends at least that budget on
//! each change's repeated ids and stamp, and a write that passes
//! [`check_fields_decode`](crate::value::check_fields_decode) must decode in every message that
//! carries it. A change takes at least 12 bytes here, so a run's values take at most
//! 24 + 432 / 12 = 60 bytes per byte of input.

use crate::compact::{check_models, join_id, split_id};
use crate::hlc::Hlc;
use crate::id::DeviceId;
use crate::shared::{ChangeKind, SharedChange};
use crate::value::{Value, FIELDS_EXCESS_ALLOWANCE};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How many changes a decoder reserves room for before it has seen them.
const PREALLOCATE: usize = 1024;

/// Serializes `changes` in the compact run form (for `#[serde(with = "shared_batch")]`).
pub(crate) fn serialize<S: Serializer>(changes: &[SharedChange], s: S) -> Result<S::Ok, S::Error> {
    let mut origins: Vec<DeviceId> = Vec::new();
    let mut models: Vec<&str> = Vec::new();
    for c in changes {
        if !origins.contains(&c.origin) {
            origins.push(c.origin);
        }
        if !models.contains(&c.model.as_str()) {
            models.push(&c.model);
        }
    }
    let mut run = s.serialize_tuple(3)?;
    run.serialize_element(&origins)?;
    run.serialize_element(&models)?;
    run.serialize_element(&Changes {
        changes,
        origins: &origins,
        models: &models,
    })?;
    run.end()
}

/// Deserializes a run in the compact form (for `#[serde(with = "shared_batch")]`).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SharedChange>, D::Error> {
    d.deserialize_tuple(3, RunVisitor)
}

/// One shared change in the same form, as a run of one (for
/// `#[serde(with = "shared_batch::one")]`): the stamp's device is not repeated.
pub(crate) mod one {
    use crate::shared::SharedChange;
    use serde::de::Error;
    use serde::{Deserializer, Serializer};

    /// Serializes `change` as a run of one.
    pub(crate) fn serialize<S: Serializer>(change: &SharedChange, s: S) -> Result<S::Ok, S::Error> {
        super::serialize(std::slice::from_ref(change), s)
    }

    /// Deserializes a run that must hold exactly one change.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SharedChange, D::Error> {
        let mut run = super::deserialize(d)?;
        match (run.pop(), run.is_empty()) {
            (Some(change), true) => Ok(change),
            _ => Err(D::Error::custom("a run of one change expected")),
        }
    }
}

/// The previous change's values the next one is a delta from (table indexes, not names).
#[derive(Clone, Copy)]
struct Previous {
    origin: usize,
    seq: u64,
    time_ms: u64,
    counter: u32,
    model: usize,
    kind: ChangeKind,
    id_high: u64,
}

impl Default for Previous {
    fn default() -> Self {
        Previous {
            origin: 0,
            seq: 0,
            time_ms: 0,
            counter: 0,
            model: 0,
            kind: ChangeKind::Insert,
            id_high: 0,
        }
    }
}

impl Previous {
    /// The counter a `Next` implies after a time step of `time_delta` (`None` if the previous
    /// counter is at the top of its range: such a change is an `Any`).
    fn next_counter(&self, time_delta: u64) -> Option<u32> {
        if time_delta == 0 {
            self.counter.checked_add(1)
        } else {
            Some(0)
        }
    }

    /// Whether a change with these parts is encoded as `Next`.
    fn is_next(&self, c: &Parts) -> bool {
        c.origin == self.origin
            && c.seq == self.seq.wrapping_add(1)
            && c.model == self.model
            && c.kind == self.kind
            && c.device.is_none()
            && self.next_counter(c.time_ms.wrapping_sub(self.time_ms)) == Some(c.counter)
    }

    fn after(parts: &Parts, id_high: u64) -> Self {
        Previous {
            origin: parts.origin,
            seq: parts.seq,
            time_ms: parts.time_ms,
            counter: parts.counter,
            model: parts.model,
            kind: parts.kind,
            id_high,
        }
    }
}

/// A change's header against the tables: everything but its record id and fields.
struct Parts {
    origin: usize,
    seq: u64,
    time_ms: u64,
    counter: u32,
    model: usize,
    kind: ChangeKind,
    /// The stamp's device where it is not the origin.
    device: Option<DeviceId>,
}

/// One change as encoded (borrowed; the variants mirror [`WireChange`]).
#[derive(Serialize)]
enum WireChangeRef<'a> {
    /// `(time_delta, id_high_delta, id_low, fields)`.
    Next(i64, i64, [u8; 8], &'a BTreeMap<String, Value>),
    /// `(origin, seq_delta, time_delta, counter, model, kind, device, id_high_delta, id_low,
    /// fields)`.
    Any(
        usize,
        i64,
        i64,
        u32,
        usize,
        ChangeKind,
        Option<DeviceId>,
        i64,
        [u8; 8],
        &'a BTreeMap<String, Value>,
    ),
}

/// One change as decoded (the fields in their canonical order, [`Fields`]).
#[derive(Deserialize)]
enum WireChange {
    Next(i64, i64, [u8; 8], Fields),
    Any(
        usize,
        i64,
        i64,
        u32,
        usize,
        ChangeKind,
        Option<DeviceId>,
        i64,
        [u8; 8],
        Fields,
    ),
}

/// The changes of a run, serialized against its tables.
struct Changes<'a> {
    changes: &'a [SharedChange],
    origins: &'a [DeviceId],
    models: &'a [&'a str],
}

impl Serialize for Changes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.changes.len()))?;
        let mut prev = Previous::default();
        for c in self.changes {
            // Runs repeat their origin and model: look the previous one up first.
            let origin = if self.origins.get(prev.origin) == Some(&c.origin) {
                prev.origin
            } else {
                self.origins
                    .iter()
                    .position(|o| *o == c.origin)
                    .unwrap_or(0)
            };
            let model = if self.models.get(prev.model) == Some(&c.model.as_str()) {
                prev.model
            } else {
                self.models.iter().position(|m| *m == c.model).unwrap_or(0)
            };
            let parts = Parts {
                origin,
                seq: c.seq,
                time_ms: c.hlc.time_ms,
                counter: c.hlc.counter,
                model,
                kind: c.kind,
                device: (c.hlc.device != c.origin).then_some(c.hlc.device),
            };
            let (id_high, id_low) = split_id(&c.record);
            let time_delta = c.hlc.time_ms.wrapping_sub(prev.time_ms) as i64;
            let high_delta = id_high.wrapping_sub(prev.id_high) as i64;
            let change = if prev.is_next(&parts) {
                WireChangeRef::Next(time_delta, high_delta, id_low, &c.fields)
            } else {
                WireChangeRef::Any(
                    origin,
                    c.seq.wrapping_sub(prev.seq) as i64,
                    time_delta,
                    c.hlc.counter,
                    model,
                    c.kind,
                    parts.device,
                    high_delta,
                    id_low,
                    &c.fields,
                )
            };
            seq.serialize_element(&change)?;
            prev = Previous::after(&parts, id_high);
        }
        seq.end()
    }
}

/// Visits the `(origins, models, changes)` triple of a run.
struct RunVisitor;

impl<'de> Visitor<'de> for RunVisitor {
    type Value = Vec<SharedChange>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a run of shared changes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut run: A) -> Result<Self::Value, A::Error> {
        let origins: Vec<DeviceId> = run
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let models: Vec<String> = run
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        check_models(&models)?;
        let mut distinct = BTreeSet::new();
        if !origins.iter().all(|o| distinct.insert(*o)) {
            return Err(de::Error::custom("an origin is listed twice"));
        }
        let changes = run
            .next_element_seed(ChangesSeed {
                origins: &origins,
                models: &models,
            })?
            .ok_or_else(|| de::Error::invalid_length(2, &self))?;
        Ok(changes)
    }
}

/// Decodes the changes against the tables, checking that every entry is used in order.
struct ChangesSeed<'a> {
    origins: &'a [DeviceId],
    models: &'a [String],
}

impl<'de> DeserializeSeed<'de> for ChangesSeed<'_> {
    type Value = Vec<SharedChange>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

/// Counts first uses of a table's entries: each entry must first appear in table order.
struct FirstUse {
    used: usize,
    len: usize,
}

impl FirstUse {
    fn new(len: usize) -> Self {
        FirstUse { used: 0, len }
    }

    fn check<E: de::Error>(&mut self, index: usize, table: &str) -> Result<(), E> {
        if index >= self.len {
            return Err(E::custom(format_args!("an index past the {table} table")));
        }
        match index.cmp(&self.used) {
            std::cmp::Ordering::Less => Ok(()),
            std::cmp::Ordering::Equal => {
                self.used += 1;
                Ok(())
            }
            std::cmp::Ordering::Greater => Err(E::custom(format_args!(
                "{table} entries not listed in order of first use"
            ))),
        }
    }

    fn finish<E: de::Error>(&self, table: &str) -> Result<(), E> {
        if self.used == self.len {
            Ok(())
        } else {
            Err(E::custom(format_args!("a listed {table} is never used")))
        }
    }
}

impl<'de> Visitor<'de> for ChangesSeed<'_> {
    type Value = Vec<SharedChange>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of shared changes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Untrusted length: reserve at most a bounded amount, grow with what actually arrives.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOCATE));
        let mut origins_used = FirstUse::new(self.origins.len());
        let mut models_used = FirstUse::new(self.models.len());
        let mut prev = Previous::default();
        // Each change's budget top-up is granted before it is decoded (here for the first,
        // after each one for the next).
        crate::value::credit(FIELDS_EXCESS_ALLOWANCE);
        while let Some(wire) = seq.next_element::<WireChange>()? {
            let (parts, high_delta, id_low, fields) = match wire {
                WireChange::Next(time_delta, high_delta, id_low, fields) => {
                    let time_delta = time_delta as u64;
                    let Some(counter) = prev.next_counter(time_delta) else {
                        return Err(de::Error::custom("`Next` after the largest counter"));
                    };
                    let parts = Parts {
                        origin: prev.origin,
                        seq: prev.seq.wrapping_add(1),
                        time_ms: prev.time_ms.wrapping_add(time_delta),
                        counter,
                        model: prev.model,
                        kind: prev.kind,
                        device: None,
                    };
                    (parts, high_delta, id_low, fields)
                }
                WireChange::Any(
                    origin,
                    seq_delta,
                    time_delta,
                    counter,
                    model,
                    kind,
                    device,
                    high_delta,
                    id_low,
                    fields,
                ) => {
                    let parts = Parts {
                        origin,
                        seq: prev.seq.wrapping_add(seq_delta as u64),
                        time_ms: prev.time_ms.wrapping_add(time_delta as u64),
                        counter,
                        model,
                        kind,
                        device,
                    };
                    if prev.is_next(&parts) {
                        return Err(de::Error::custom("`Any` where `Next` applies"));
                    }
                    (parts, high_delta, id_low, fields)
                }
            };
            origins_used.check(parts.origin, "origin")?;
            models_used.check(parts.model, "model")?;
            let origin = self.origins[parts.origin];
            if parts.device == Some(origin) {
                return Err(de::Error::custom("a stamp device equal to the origin"));
            }
            let id_high = prev.id_high.wrapping_add(high_delta as u64);
            out.push(SharedChange {
                origin,
                seq: parts.seq,
                hlc: Hlc::new(parts.time_ms, parts.counter, parts.device.unwrap_or(origin)),
                model: self.models[parts.model].clone(),
                record: join_id(id_high, id_low),
                kind: parts.kind,
                fields: fields.0,
            });
            prev = Previous::after(&parts, id_high);
            crate::value::credit(FIELDS_EXCESS_ALLOWANCE);
        }
        origins_used.finish("origin")?;
        models_used.finish("model")?;
        Ok(out)
    }
}

/// A change's fields, decoded only in strictly increasing name order (so a map has one
/// encoding: a repeated name would otherwise replace the earlier value silently).
struct Fields(BTreeMap<String, Value>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fields in increasing name order")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some((name, value)) = seq.next_element::<(String, Value)>()? {
            if fields
                .last_key_value()
                .is_some_and(|(last, _)| *last >= name)
            {
                return Err(de::Error::custom("field names not in increasing order"));
            }
            fields.insert(name, value);
        }
        Ok(Fields(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_MODEL_NAME;
    use proptest::prelude::*;
    use uuid::Uuid;

    /// A `SharedChangeBatch`-like wrapper to encode a run on its own.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Run(#[serde(with = "super")] Vec<SharedChange>);

    const A: DeviceId = DeviceId::from_u128(0xa);
    const B: DeviceId = DeviceId::from_u128(0xb);

    fn change(origin: DeviceId, seq: u64, time_ms: u64, counter: u32, id: u128) -> SharedChange {
        SharedChange {
            origin,
            seq,
            hlc: Hlc::new(time_ms, counter, origin),
            model: "tag".into(),
            record: Uuid::from_u128(id),
            kind: ChangeKind::Update,
            fields: BTreeMap::from([("name".to_owned(), Value::from("blue"))]),
        }
    }

    fn encode(run: &Run) -> Vec<u8> {
        postcard::to_stdvec(run).expect("encodes")
    }

    fn decodes(bytes: &[u8]) -> Result<Run, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    #[test]
    fn a_run_of_one_device_costs_a_few_bytes_per_change_beyond_its_field() {
        // Rising counters within each millisecond, then 0 in the next: all `Next`.
        let changes: Vec<SharedChange> = (0..1000u64)
            .map(|i| {
                change(
                    A,
                    1 + i,
                    1_700_000_000_000 + i / 8,
                    (i % 8) as u32,
                    i.into(),
                )
            })
            .collect();
        let run = Run(changes);
        let bytes = encode(&run);
        // Variant 1 + time 1 + id high 1 + id low 8 + field count 1 + name 5 + value 6.
        assert!(bytes.len() <= 1000 * 23 + 64, "{} bytes", bytes.len());
        assert_eq!(decodes(&bytes).expect("decodes"), run);
    }

    #[test]
    fn a_log_page_of_several_origins_kinds_and_models_round_trips_in_order() {
        let mut delete = change(B, 4, 5, 0, 9);
        delete.kind = ChangeKind::Delete;
        delete.fields.clear();
        let mut other_model = change(B, 5, 5, 1, 9);
        other_model.model = "album".into();
        let mut foreign_stamp = change(A, 7, 1, 0, 3);
        foreign_stamp.hlc.device = B;
        let mut top_counter = change(A, 8, 1, u32::MAX, 3);
        top_counter.kind = ChangeKind::Insert;
        let run = Run(vec![
            change(A, 1, 10, 0, 1),
            change(A, 2, 10, 1, 2),
            change(B, 3, 4, 0, u128::MAX),
            delete,
            other_model,
            foreign_stamp,
            top_counter,
            change(A, 9, 1, 0, 3),
            change(A, 0, u64::MAX, 0, 0),
        ]);
        assert_eq!(decodes(&encode(&run)).expect("decodes"), run);
        assert_eq!(
            decodes(&encode(&Run(Vec::new()))).expect("decodes"),
            Run(Vec::new())
        );
    }

    /// An `Any` change by hand: `(origin, seq_delta, time_delta, counter, model, kind, device,
    /// id_high_delta, id_low, fields)` with fields as name/value pairs.
    type RawAny<'a> = (
        usize,
        i64,
        i64,
        u32,
        usize,
        ChangeKind,
        Option<DeviceId>,
        i64,
        [u8; 8],
        Vec<(&'a str, Value)>,
    );

    fn raw(origins: &[DeviceId], models: &[&str], changes: Vec<RawAny<'_>>) -> Vec<u8> {
        #[derive(Serialize)]
        enum Raw<'a> {
            #[allow(dead_code)]
            Next,
            Any(RawAny<'a>),
        }
        let changes: Vec<Raw<'_>> = changes.into_iter().map(Raw::Any).collect();
        postcard::to_stdvec(&(origins, models, changes)).expect("encodes")
    }

    fn raw_any(origin: usize, seq_delta: i64, model: usize) -> RawAny<'static> {
        (
            origin,
            seq_delta,
            1,
            0,
            model,
            ChangeKind::Update,
            None,
            0,
            [0; 8],
            vec![("a", Value::Int(1))],
        )
    }

    #[test]
    fn the_hand_encoder_matches_the_real_one() {
        // Seq step 2: `Next` does not apply, so this is the canonical form.
        let bytes = raw(&[A], &["tag"], vec![raw_any(0, 2, 0)]);
        let run = decodes(&bytes).expect("decodes");
        assert_eq!(encode(&run), bytes);
    }

    #[test]
    fn non_canonical_runs_are_refused() {
        // `Any` where `Next` applies (seq + 1, same origin, model and kind, counter 0 in a
        // later millisecond).
        let mut next = raw_any(0, 1, 0);
        next.5 = ChangeKind::Insert;
        assert!(decodes(&raw(&[A], &["tag"], vec![next])).is_err());
        // Tables: listed twice, never used, used before an earlier entry, index past the end.
        assert!(decodes(&raw(&[A, A], &["tag"], vec![raw_any(0, 2, 0)])).is_err());
        assert!(decodes(&raw(&[A, B], &["tag"], vec![raw_any(0, 2, 0)])).is_err());
        assert!(decodes(&raw(&[A], &["tag", "tag"], vec![raw_any(0, 2, 0)])).is_err());
        assert!(decodes(&raw(&[A], &["tag", "x"], vec![raw_any(0, 2, 0)])).is_err());
        assert!(decodes(&raw(
            &[A, B],
            &["tag"],
            vec![raw_any(1, 2, 0), raw_any(0, 2, 0)]
        ))
        .is_err());
        assert!(decodes(&raw(&[A], &["tag"], vec![raw_any(1, 2, 0)])).is_err());
        assert!(decodes(&raw(&[A], &["tag"], vec![raw_any(0, 2, 1)])).is_err());
        assert!(decodes(&raw(&[], &[], vec![raw_any(0, 2, 0)])).is_err());
        // A stamp device spelled out although it is the origin.
        let mut device = raw_any(0, 2, 0);
        device.6 = Some(A);
        assert!(decodes(&raw(&[A], &["tag"], vec![device])).is_err());
        // Field names repeated or out of order.
        let mut fields = raw_any(0, 2, 0);
        fields.9 = vec![("b", Value::Null), ("a", Value::Null)];
        assert!(decodes(&raw(&[A], &["tag"], vec![fields.clone()])).is_err());
        fields.9 = vec![("a", Value::Null), ("a", Value::Null)];
        assert!(decodes(&raw(&[A], &["tag"], vec![fields])).is_err());
        // A model name past the cap.
        let long = "m".repeat(MAX_MODEL_NAME + 1);
        assert!(decodes(&raw(&[A], &[&long], vec![raw_any(0, 2, 0)])).is_err());
    }

    #[test]
    fn next_after_the_largest_counter_in_the_same_millisecond_is_refused() {
        let top = (
            0,
            2,
            1,
            u32::MAX,
            0,
            ChangeKind::Update,
            None,
            0,
            [0; 8],
            Vec::<(&str, Value)>::new(),
        );
        #[derive(Serialize)]
        enum Raw<'a> {
            Next(i64, i64, [u8; 8], Vec<(&'a str, Value)>),
            Any(RawAny<'a>),
        }
        let bytes = postcard::to_stdvec(&(
            [A],
            ["tag"],
            vec![Raw::Any(top), Raw::Next(0, 0, [0; 8], Vec::new())],
        ))
        .expect("encodes");
        assert!(decodes(&bytes).is_err());
    }

    #[test]
    fn huge_claimed_length_is_refused_without_allocating_it() {
        // `origins: []`, `models: []`, then a change count of 2^62 and nothing else.
        let mut bytes = vec![0u8, 0u8];
        bytes.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        assert!(decodes(&bytes).is_err());
    }

    fn arb_change() -> impl Strategy<Value = SharedChange> {
        (
            prop::sample::select(vec![A, B, DeviceId::from_u128(u128::MAX)]),
            prop::sample::select(vec![A, B]),
            any::<u64>(),
            (any::<u64>(), any::<u32>()),
            prop::sample::select(vec!["tag", "album", ""]),
            any::<u128>(),
            prop::sample::select(vec![
                ChangeKind::Insert,
                ChangeKind::Update,
                ChangeKind::Delete,
            ]),
            prop::collection::btree_map("[a-c]{0,2}", any::<i64>().prop_map(Value::Int), 0..3),
        )
            .prop_map(
                |(origin, device, seq, (time_ms, counter), model, id, kind, fields)| SharedChange {
                    origin,
                    seq,
                    hlc: Hlc::new(time_ms, counter, device),
                    model: model.into(),
                    record: Uuid::from_u128(id),
                    kind,
                    fields,
                },
            )
    }

    /// Runs shaped like real ones: consecutive seqs and rising counters, some steps broken.
    fn arb_realistic_run() -> impl Strategy<Value = Vec<SharedChange>> {
        prop::collection::vec((any::<bool>(), 0u64..3, arb_change()), 0..40).prop_map(|steps| {
            let mut out: Vec<SharedChange> = Vec::new();
            for (follow, dt, mut c) in steps {
                if let (true, Some(p)) = (follow, out.last()) {
                    c.origin = p.origin;
                    c.seq = p.seq.wrapping_add(1);
                    c.model = p.model.clone();
                    c.kind = p.kind;
                    c.hlc = Hlc::new(
                        p.hlc.time_ms.wrapping_add(dt),
                        if dt == 0 {
                            p.hlc.counter.wrapping_add(1)
                        } else {
                            0
                        },
                        p.origin,
                    );
                }
                out.push(c);
            }
            out
        })
    }

    proptest! {
        #[test]
        fn any_run_round_trips_exactly_and_reencodes_to_the_same_bytes(
            changes in prop::collection::vec(arb_change(), 0..40)
        ) {
            let run = Run(changes);
            let bytes = encode(&run);
            let back = decodes(&bytes).expect("decodes");
            prop_assert_eq!(&back, &run);
            prop_assert_eq!(encode(&back), bytes);
        }

        #[test]
        fn realistic_runs_round_trip_exactly(changes in arb_realistic_run()) {
            let run = Run(changes);
            let bytes = encode(&run);
            prop_assert_eq!(decodes(&bytes).expect("decodes"), run);
        }
    }
}
