//! The compact wire form of a run of device-owned changes (`StateBatch`, `StateResponse`).
//!
//! Catch-up moves millions of device-owned changes, one owner's at a time and in seq order, so
//! consecutive changes share most of what they carry. A run is encoded as
//!
//! ```text
//! run    = models: [string]          distinct models, in order of first use
//!          changes: [change]
//! change = Next(                     seq = previous seq + 1, the counter follows (below),
//!                                    previous model, live
//!              time_delta, id_high_delta, id_low, data)
//!        | Any(seq_delta, time_delta, meta, id_high_delta, id_low, data)
//!
//! seq_delta: varint      seq − previous seq (wrapping)
//! time_delta: zigzag     time_ms − previous time_ms (wrapping)
//! meta: varint           ((counter × models.len() + model index) × 2) + tombstone
//! id_high_delta: zigzag  first 8 bytes of the id (big-endian) − previous (wrapping)
//! id_low: 8 bytes        last 8 bytes of the id
//! data: bytes            the payload (empty for a tombstone)
//! ```
//!
//! where "previous" starts at 0 (and model index 0) for the first change, and the variant is
//! one byte. In a `Next` the stamp counter follows the previous one: previous + 1 within the
//! same millisecond (time delta 0), 0 in a later one, as a burst of writes numbers them. In a catch-up run nearly every change is a `Next`: for an `entry` record with a
//! UUIDv7 id that is about 12 bytes of protocol per change instead of ~51 (the id's timestamp
//! half and the stamp are deltas, seq and model are implied). Every value round-trips exactly,
//! in any order and at any magnitude: deltas are wrapping, so a run that is not in seq order
//! only costs more bytes.
//!
//! Decoding accepts only the canonical form: models distinct, each first used in table order,
//! none unused, none longer than [`MAX_MODEL_NAME`](crate::MAX_MODEL_NAME), a tombstone with no data, a counter that
//! fits its `u32`, and `Any` only where `Next` does not apply. So a run has one canonical encoding (postcard itself also accepts over-long
//! varints, which re-encode shorter), and re-encoding what a peer sent is never longer than what
//! it sent. Decoding allocates in proportion to the input: a bounded reservation up front, and
//! each change's copy of its model name at most [`MAX_MODEL_NAME`](crate::MAX_MODEL_NAME) bytes.

use crate::compact::{check_models, join_id, split_id};
use crate::owned::OwnedChange;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// How many changes a decoder reserves room for before it has seen them.
const PREALLOCATE: usize = 1024;

/// Serializes `changes` in the compact run form (for `#[serde(with = "owned_batch")]`).
pub(crate) fn serialize<S: Serializer>(changes: &[OwnedChange], s: S) -> Result<S::Ok, S::Error> {
    let mut models: Vec<&str> = Vec::new();
    for c in changes {
        if !models.contains(&c.model.as_str()) {
            models.push(&c.model);
        }
    }
    let mut run = s.serialize_tuple(2)?;
    run.serialize_element(&models)?;
    run.serialize_element(&Changes {
        changes,
        models: &models,
    })?;
    run.end()
}

/// Deserializes a run in the compact form (for `#[serde(with = "owned_batch")]`).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OwnedChange>, D::Error> {
    d.deserialize_tuple(2, RunVisitor)
}

/// The previous change's values the next one is a delta from.
#[derive(Default)]
struct Previous {
    seq: u64,
    time_ms: u64,
    counter: u32,
    id_high: u64,
    model: usize,
}

/// The stamp counter a `Next` implies after a time step of `time_delta` (`None` after the
/// largest counter within one millisecond: such a change is an `Any`).
fn next_counter(prev: &Previous, time_delta: u64) -> Option<u32> {
    if time_delta == 0 {
        prev.counter.checked_add(1)
    } else {
        Some(0)
    }
}

/// Whether a change is encoded as `Next`: the seq after the previous one, the counter that
/// follows the previous stamp, live, and the previous change's model.
fn is_next(
    prev: &Previous,
    seq_delta: u64,
    time_delta: u64,
    counter: u32,
    tombstone: bool,
    model: usize,
) -> bool {
    seq_delta == 1
        && next_counter(prev, time_delta) == Some(counter)
        && !tombstone
        && model == prev.model
}

/// One change as encoded (borrowed; the variants mirror [`WireChange`]).
#[derive(Serialize)]
enum WireChangeRef<'a> {
    /// `(time_delta, id_high_delta, id_low, data)`: the next seq, the counter that follows,
    /// the previous change's model, live.
    Next(i64, i64, [u8; 8], &'a serde_bytes::Bytes),
    /// `(seq_delta, time_delta, meta, id_high_delta, id_low, data)`.
    Any(u64, i64, u128, i64, [u8; 8], &'a serde_bytes::Bytes),
}

/// One change as decoded (the variants mirror [`WireChangeRef`]).
#[derive(Deserialize)]
enum WireChange {
    Next(i64, i64, [u8; 8], serde_bytes::ByteBuf),
    Any(u64, i64, u128, i64, [u8; 8], serde_bytes::ByteBuf),
}

/// The changes of a run, serialized against its model table.
struct Changes<'a> {
    changes: &'a [OwnedChange],
    models: &'a [&'a str],
}

impl Serialize for Changes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.models.len() as u128;
        let mut seq = s.serialize_seq(Some(self.changes.len()))?;
        let mut prev = Previous::default();
        // The previous change's model name (its index is `prev.model`).
        let mut prev_name = self.models.first().copied().unwrap_or_default();
        for c in self.changes {
            let index = if c.model == prev_name {
                prev.model
            } else {
                self.models.iter().position(|m| *m == c.model).unwrap_or(0)
            };
            let (id_high, id_low) = split_id(&c.uuid);
            let seq_delta = c.seq.wrapping_sub(prev.seq);
            let time_delta = c.time_ms.wrapping_sub(prev.time_ms) as i64;
            let high_delta = id_high.wrapping_sub(prev.id_high) as i64;
            let data = serde_bytes::Bytes::new(c.data.as_deref().unwrap_or_default());
            let change = if is_next(
                &prev,
                seq_delta,
                time_delta as u64,
                c.counter,
                c.data.is_none(),
                index,
            ) {
                WireChangeRef::Next(time_delta, high_delta, id_low, data)
            } else {
                // counter < 2^32 and index < n < 2^64: cannot overflow.
                let meta = ((u128::from(c.counter) * n + index as u128) << 1)
                    | u128::from(c.data.is_none());
                WireChangeRef::Any(seq_delta, time_delta, meta, high_delta, id_low, data)
            };
            seq.serialize_element(&change)?;
            prev = Previous {
                seq: c.seq,
                time_ms: c.time_ms,
                counter: c.counter,
                id_high,
                model: index,
            };
            prev_name = &c.model;
        }
        seq.end()
    }
}

/// Visits the `(models, changes)` pair of a run.
struct RunVisitor;

impl<'de> Visitor<'de> for RunVisitor {
    type Value = Vec<OwnedChange>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a run of device-owned changes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut run: A) -> Result<Self::Value, A::Error> {
        let models: Vec<String> = run
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        check_models(&models)?;
        let (changes, used) = run
            .next_element_seed(ChangesSeed { models: &models })?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if used != models.len() {
            return Err(de::Error::custom("a listed model is never used"));
        }
        Ok(changes)
    }
}

/// Decodes the changes against the model table; also yields how many models they used.
struct ChangesSeed<'a> {
    models: &'a [String],
}

impl<'de> DeserializeSeed<'de> for ChangesSeed<'_> {
    type Value = (Vec<OwnedChange>, usize);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChangesSeed<'_> {
    type Value = (Vec<OwnedChange>, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of device-owned changes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Untrusted length: reserve at most a bounded amount, grow with what actually arrives.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOCATE));
        let n = self.models.len() as u128;
        let mut used = 0usize;
        let mut prev = Previous::default();
        while let Some(wire) = seq.next_element::<WireChange>()? {
            let (seq_delta, time_delta, counter, tombstone, index, high_delta, id_low, data) =
                match wire {
                    WireChange::Next(time_delta, high_delta, id_low, data) => {
                        let Some(counter) = next_counter(&prev, time_delta as u64) else {
                            return Err(de::Error::custom("`Next` after the largest counter"));
                        };
                        (
                            1, time_delta, counter, false, prev.model, high_delta, id_low, data,
                        )
                    }
                    WireChange::Any(seq_delta, time_delta, meta, high_delta, id_low, data) => {
                        let tombstone = meta & 1 == 1;
                        let rest = meta >> 1;
                        let Some(index) = rest.checked_rem(n) else {
                            return Err(de::Error::custom("a change without a model"));
                        };
                        let counter = u32::try_from(rest / n)
                            .map_err(|_| de::Error::custom("stamp counter out of range"))?;
                        let index = index as usize;
                        if is_next(
                            &prev,
                            seq_delta,
                            time_delta as u64,
                            counter,
                            tombstone,
                            index,
                        ) {
                            return Err(de::Error::custom("`Any` where `Next` applies"));
                        }
                        (
                            seq_delta, time_delta, counter, tombstone, index, high_delta, id_low,
                            data,
                        )
                    }
                };
            if index >= self.models.len() {
                return Err(de::Error::custom("a change without a model"));
            }
            match index.cmp(&used) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => used += 1,
                std::cmp::Ordering::Greater => {
                    return Err(de::Error::custom("models not listed in order of first use"))
                }
            }
            if tombstone && !data.is_empty() {
                return Err(de::Error::custom("a tombstone with data"));
            }
            let id_high = prev.id_high.wrapping_add(high_delta as u64);
            let c = OwnedChange {
                seq: prev.seq.wrapping_add(seq_delta),
                time_ms: prev.time_ms.wrapping_add(time_delta as u64),
                counter,
                model: self.models[index].clone(),
                uuid: join_id(id_high, id_low),
                data: (!tombstone).then(|| data.into_vec()),
            };
            prev = Previous {
                seq: c.seq,
                time_ms: c.time_ms,
                counter: c.counter,
                id_high,
                model: index,
            };
            out.push(c);
        }
        Ok((out, used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_MODEL_NAME;
    use proptest::prelude::*;
    use serde_bytes::Bytes;
    use uuid::Uuid;

    /// A `StateBatch`-like wrapper to encode a run on its own.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Run(#[serde(with = "super")] Vec<OwnedChange>);

    fn change(seq: u64, model: &str, id: u128, data: Option<&[u8]>) -> OwnedChange {
        OwnedChange {
            seq,
            time_ms: seq.wrapping_add(1_700_000_000_000),
            counter: 0,
            model: model.into(),
            uuid: Uuid::from_u128(id),
            data: data.map(<[u8]>::to_vec),
        }
    }

    fn encode(run: &Run) -> Vec<u8> {
        postcard::to_stdvec(run).expect("encodes")
    }

    fn round_trip(run: &Run) -> Run {
        postcard::from_bytes(&encode(run)).expect("decodes")
    }

    #[test]
    fn contiguous_run_costs_a_few_bytes_per_change_beyond_payload() {
        let changes: Vec<OwnedChange> = (1..=1000)
            .map(|i| {
                change(
                    i,
                    "entry",
                    (0x0190_0000_7000 << 64) | (i as u128),
                    Some(&[7; 20]),
                )
            })
            .collect();
        let run = Run(changes);
        let bytes = postcard::to_stdvec(&run).expect("encodes");
        // Variant 1 + time 1 + id high 1 + id low 8 + length 1 + payload 20.
        assert!(bytes.len() <= 1000 * 32 + 32, "{} bytes", bytes.len());
        assert_eq!(round_trip(&run), run);
    }

    #[test]
    fn a_burst_within_one_millisecond_costs_what_one_change_per_millisecond_does() {
        // 16 writes a millisecond, counters 0..16 in each: every change after the first is a
        // `Next`, as with one write a millisecond.
        let burst: Vec<OwnedChange> = (1..=1000u64)
            .map(|i| OwnedChange {
                time_ms: 1_700_000_000_000 + i / 16,
                counter: (i % 16) as u32,
                ..change(
                    i,
                    "entry",
                    (0x0190_0000_7000 << 64) | u128::from(i),
                    Some(&[7; 20]),
                )
            })
            .collect();
        let spread: Vec<OwnedChange> = (1..=1000u64)
            .map(|i| {
                change(
                    i,
                    "entry",
                    (0x0190_0000_7000 << 64) | u128::from(i),
                    Some(&[7; 20]),
                )
            })
            .collect();
        let (burst, spread) = (Run(burst), Run(spread));
        let (b, s) = (encode(&burst), encode(&spread));
        // (The burst's first change, counter 1, is an `Any`: a few bytes more, once.)
        assert!(
            b.len() <= s.len() + 8,
            "burst {} B, spread {} B",
            b.len(),
            s.len()
        );
        assert_eq!(round_trip(&burst), burst);
    }

    #[test]
    fn next_after_the_largest_counter_in_the_same_millisecond_is_refused() {
        let top = WireChangeRef::Any(2, 1, u128::from(u32::MAX) << 1, 0, [0; 8], Bytes::new(b""));
        let next = WireChangeRef::Next(0, 0, [0; 8], Bytes::new(b""));
        let bytes = postcard::to_stdvec(&(["a"], vec![top, next])).expect("encodes");
        assert!(decodes(&bytes).is_err());
    }

    #[test]
    fn mixed_models_tombstones_and_empty_payloads_round_trip_in_order() {
        let run = Run(vec![
            change(9, "b", 1, Some(b"x")),
            change(3, "a", 2, None),
            change(4, "b", 3, Some(b"")),
            change(u64::MAX, "c", u128::MAX, None),
            change(0, "a", 0, Some(b"yz")),
        ]);
        assert_eq!(round_trip(&run), run);
        assert_eq!(round_trip(&Run(Vec::new())), Run(Vec::new()));
    }

    /// One change as its raw wire fields.
    type RawChange<'a> = (u64, i64, u128, i64, [u8; 8], &'a [u8]);

    /// Encodes a run by hand: `(models, changes)` with every change as an `Any`.
    fn raw(models: &[&str], changes: &[RawChange<'_>]) -> Vec<u8> {
        let changes: Vec<_> = changes
            .iter()
            .map(|&(a, b, c, d, e, f)| {
                WireChangeRef::Any(a, b, c, d, e, serde_bytes::Bytes::new(f))
            })
            .collect();
        postcard::to_stdvec(&(models, changes)).expect("encodes")
    }

    fn decodes(bytes: &[u8]) -> Result<Run, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    #[test]
    fn non_canonical_runs_are_refused() {
        // (A seq step of 2: `Next` does not apply, `Any` is the canonical form.)
        let ok = raw(&["a"], &[(2, 1, 0, 1, [0; 8], b"x")]);
        assert!(decodes(&ok).is_ok());
        // `Any` for a change `Next` encodes (seq + 1, counter 0, same model, live).
        assert!(decodes(&raw(&["a"], &[(1, 1, 0, 1, [0; 8], b"x")])).is_err());
        // A tombstone carrying data.
        assert!(decodes(&raw(&["a"], &[(2, 1, 1, 1, [0; 8], b"x")])).is_err());
        // A model listed twice, or never used.
        assert!(decodes(&raw(&["a", "a"], &[(2, 1, 0, 1, [0; 8], b"")])).is_err());
        assert!(decodes(&raw(&["a", "b"], &[(2, 1, 0, 1, [0; 8], b"")])).is_err());
        // Second model used before the first.
        assert!(decodes(&raw(
            &["a", "b"],
            &[(2, 1, 2, 1, [0; 8], b""), (2, 1, 0, 1, [0; 8], b"")]
        ))
        .is_err());
        // A change with no model table (either variant), and a counter beyond u32.
        assert!(decodes(&raw(&[], &[(2, 1, 0, 1, [0; 8], b"")])).is_err());
        let next = WireChangeRef::Next(1, 1, [0; 8], serde_bytes::Bytes::new(b""));
        let empty: &[&str] = &[];
        let bytes = postcard::to_stdvec(&(empty, vec![next])).expect("encodes");
        assert!(decodes(&bytes).is_err());
        assert!(decodes(&raw(&["a"], &[(1, 1, 1 << 34, 1, [0; 8], b"")])).is_err());
    }

    #[test]
    fn model_names_past_the_cap_are_refused() {
        let name = "m".repeat(MAX_MODEL_NAME);
        assert!(decodes(&raw(&[&name], &[(2, 1, 0, 1, [0; 8], b"")])).is_ok());
        // One long name and many tiny changes would be copied into every change.
        let long = "m".repeat(MAX_MODEL_NAME + 1);
        let tiny: Vec<RawChange<'_>> = (0..1000).map(|_| (0, 0, 0, 0, [0; 8], &b""[..])).collect();
        assert!(decodes(&raw(&[&long], &tiny)).is_err());
    }

    #[test]
    fn large_model_tables_are_checked_for_duplicates() {
        let names: Vec<String> = (0..40_000).map(|i| format!("m{i}")).collect();
        let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // Distinct but unused: refused (canonical form), after an n log n duplicate check.
        assert!(decodes(&raw(&refs, &[])).is_err());
        refs.push("m17");
        assert!(decodes(&raw(&refs, &[])).is_err());
    }

    #[test]
    fn huge_claimed_length_is_refused_without_allocating_it() {
        // `models: []` then a change count of 2^62 and nothing else.
        let mut bytes = vec![0u8];
        bytes.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        assert!(decodes(&bytes).is_err());
    }

    fn arb_change() -> impl Strategy<Value = OwnedChange> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            prop::sample::select(vec!["entry", "location", "volume"]),
            any::<u128>(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        )
            .prop_map(|(seq, time_ms, counter, model, id, data)| OwnedChange {
                seq,
                time_ms,
                counter,
                model: model.into(),
                uuid: Uuid::from_u128(id),
                data,
            })
    }

    proptest! {
        #[test]
        fn any_run_round_trips_exactly(changes in prop::collection::vec(arb_change(), 0..40)) {
            let run = Run(changes);
            let bytes = postcard::to_stdvec(&run).expect("encodes");
            let back: Run = postcard::from_bytes(&bytes).expect("decodes");
            prop_assert_eq!(&back, &run);
            prop_assert_eq!(postcard::to_stdvec(&back).expect("encodes"), bytes);
        }
    }
}
