//! Shared records: HLC-stamped changes merged per field by last-writer-wins.
//!
//! A shared record is a set of registers: `exists` and one per field, each holding the value
//! with the highest HLC it has seen, plus the HLC of the latest `Insert`. Merging two register
//! sets takes the maximum of each register, so it is commutative, associative and idempotent:
//! applying changes in any order, any number of times, gives the same record. The version lives
//! on the record, not in the prunable log, so this stays true after the log is pruned.

use crate::hlc::Hlc;
use crate::id::DeviceId;
use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// What a shared change does to its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ChangeKind {
    /// Creates (or re-creates) the record: a full write of the given fields.
    Insert,
    /// Sets only the given fields.
    Update,
    /// Deletes the record.
    Delete,
}

/// One entry of the shared change log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SharedChange {
    /// The device that made the change; always `hlc.device`.
    pub origin: DeviceId,
    /// The origin's sequence number of its shared changes (1, 2, 3...).
    pub seq: u64,
    /// The stamp the change wins conflicts with.
    pub hlc: Hlc,
    /// The model type (a shared model of the registry).
    pub model: String,
    /// The record id.
    pub record: Uuid,
    /// Insert, update or delete.
    pub kind: ChangeKind,
    /// Fields written (empty for a delete).
    pub fields: BTreeMap<String, Value>,
}

impl SharedChange {
    /// The storage key of the record this change touches.
    pub fn key(&self) -> SharedKey {
        (self.model.clone(), self.record)
    }

    /// The register set this change writes (merge it into the record to apply the change).
    pub fn to_record(&self) -> SharedRecord {
        let exists = match self.kind {
            ChangeKind::Insert => Some(Register::new(self.hlc, true)),
            ChangeKind::Update => None,
            ChangeKind::Delete => Some(Register::new(self.hlc, false)),
        };
        let fields = match self.kind {
            ChangeKind::Delete => BTreeMap::new(),
            _ => self
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), Register::new(self.hlc, v.clone())))
                .collect(),
        };
        SharedRecord {
            model: self.model.clone(),
            uuid: self.record,
            exists,
            last_insert: (self.kind == ChangeKind::Insert).then_some(self.hlc),
            fields,
        }
    }

    /// The size this entry counts against a page's byte budget (an upper bound of its
    /// encoding, shared by every backend).
    pub fn budget_size(&self) -> usize {
        64 + self.model.len() + fields_size(self.fields.iter())
    }
}

/// The storage key of a shared record: `(model, uuid)`.
pub type SharedKey = (String, Uuid);

/// A last-writer-wins register.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Register<T> {
    /// The stamp of the write that set the value.
    pub hlc: Hlc,
    /// The value.
    pub value: T,
}

impl<T> Register<T> {
    /// A register holding `value` written at `hlc`.
    pub fn new(hlc: Hlc, value: T) -> Self {
        Register { hlc, value }
    }
}

/// Keeps the register with the higher stamp; returns whether `slot` changed.
fn merge_register<T: Clone>(slot: &mut Option<Register<T>>, other: &Option<Register<T>>) -> bool {
    match (slot.as_ref(), other) {
        (_, None) => false,
        (Some(mine), Some(theirs)) if mine.hlc >= theirs.hlc => false,
        (_, Some(theirs)) => {
            *slot = Some(theirs.clone());
            true
        }
    }
}

/// The replicated state of one shared record: its registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SharedRecord {
    /// The model type.
    pub model: String,
    /// The record id.
    pub uuid: Uuid,
    /// Whether the record exists (`None`: no insert or delete seen yet).
    pub exists: Option<Register<bool>>,
    /// The stamp of the latest `Insert`; older field registers are hidden.
    pub last_insert: Option<Hlc>,
    /// One register per field ever written.
    pub fields: BTreeMap<String, Register<Value>>,
}

impl SharedRecord {
    /// A record with no registers set.
    pub fn empty(model: &str, uuid: Uuid) -> Self {
        SharedRecord {
            model: model.to_owned(),
            uuid,
            exists: None,
            last_insert: None,
            fields: BTreeMap::new(),
        }
    }

    /// The storage key `(model, uuid)`.
    pub fn key(&self) -> SharedKey {
        (self.model.clone(), self.uuid)
    }

    /// Merges `other` (same key) into `self`, register by register; returns whether anything
    /// changed. This is the single definition of shared conflict resolution: real-time changes,
    /// catch-up and snapshots all go through it.
    pub fn merge(&mut self, other: &SharedRecord) -> bool {
        let mut changed = merge_register(&mut self.exists, &other.exists);
        if other.last_insert > self.last_insert {
            self.last_insert = other.last_insert;
            changed = true;
        }
        for (name, theirs) in &other.fields {
            match self.fields.get_mut(name) {
                Some(mine) if mine.hlc >= theirs.hlc => {}
                Some(mine) => {
                    *mine = theirs.clone();
                    changed = true;
                }
                None => {
                    self.fields.insert(name.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Merges the registers `change` writes into `self`; returns whether anything changed.
    ///
    /// The same as `self.merge(&change.to_record())` (a property test holds them together),
    /// without building the intermediate record: one clone of each written field instead of
    /// two. `change` must be for this record's key.
    pub fn apply(&mut self, change: &SharedChange) -> bool {
        let hlc = change.hlc;
        let newer = |mine: Option<Hlc>| mine.is_none_or(|m| m < hlc);
        let mut changed = false;
        let exists = match change.kind {
            ChangeKind::Insert => Some(true),
            ChangeKind::Update => None,
            ChangeKind::Delete => Some(false),
        };
        if let Some(value) = exists {
            if newer(self.exists.as_ref().map(|r| r.hlc)) {
                self.exists = Some(Register::new(hlc, value));
                changed = true;
            }
        }
        if change.kind == ChangeKind::Insert && newer(self.last_insert) {
            self.last_insert = Some(hlc);
            changed = true;
        }
        if change.kind == ChangeKind::Delete {
            return changed;
        }
        for (name, value) in &change.fields {
            match self.fields.get_mut(name) {
                Some(mine) if mine.hlc >= hlc => {}
                Some(mine) => {
                    *mine = Register::new(hlc, value.clone());
                    changed = true;
                }
                None => {
                    self.fields
                        .insert(name.clone(), Register::new(hlc, value.clone()));
                    changed = true;
                }
            }
        }
        changed
    }

    /// The highest stamp in any register.
    pub fn max_hlc(&self) -> Hlc {
        let fields = self.fields.values().map(|r| r.hlc);
        let exists = self.exists.iter().map(|r| r.hlc);
        fields
            .chain(exists)
            .chain(self.last_insert)
            .max()
            .unwrap_or(Hlc::ZERO)
    }

    /// The record as the application sees it: `None` if it does not exist, else the fields
    /// written at or after the latest `Insert`.
    pub fn visible(&self) -> Option<BTreeMap<String, Value>> {
        if !self.exists.as_ref().is_some_and(|r| r.value) {
            return None;
        }
        let since = self.last_insert.unwrap_or(Hlc::ZERO);
        Some(
            self.fields
                .iter()
                .filter(|(_, r)| r.hlc >= since)
                .map(|(k, r)| (k.clone(), r.value.clone()))
                .collect(),
        )
    }

    /// The record without its hidden field registers (older than the latest `Insert`).
    ///
    /// Dropping them loses nothing: a hidden register can never become visible again (only a
    /// newer write to that field could, and it replaces the register), and any register the
    /// receiver holds for that field that is older than `last_insert` is hidden there too once
    /// it merges `last_insert`. Snapshots send records in this form, so re-inserting a record
    /// with other large fields does not make it grow beyond what the application sees.
    pub fn without_hidden(mut self) -> Self {
        if let Some(since) = self.last_insert {
            self.fields.retain(|_, r| r.hlc >= since);
        }
        self
    }

    /// This record as parts of at most `budget` [`budget_size`](Self::budget_size) bytes each
    /// (a part holds at least one field, so a field larger than `budget` makes a part of its
    /// own), in field order; the first part carries `exists` and `last_insert`. Registers
    /// merge one by one, so merging the parts in any order equals merging the whole record:
    /// a record whose fields together outgrow a frame travels in several messages.
    pub(crate) fn into_parts(self, budget: usize) -> Vec<SharedRecord> {
        if self.budget_size() <= budget {
            return vec![self];
        }
        let SharedRecord {
            model,
            uuid,
            exists,
            last_insert,
            fields,
        } = self;
        let mut parts = vec![SharedRecord {
            exists,
            last_insert,
            ..SharedRecord::empty(&model, uuid)
        }];
        // The size of the last part, kept as fields go in (not summed again per field).
        let mut used = parts[0].budget_size();
        for (name, register) in fields {
            let size = fields_size(std::iter::once((&name, &register.value)));
            let fits = parts
                .last()
                .is_some_and(|p| p.fields.is_empty() || used + size <= budget);
            if !fits {
                let part = SharedRecord::empty(&model, uuid);
                used = part.budget_size();
                parts.push(part);
            }
            if let Some(part) = parts.last_mut() {
                part.fields.insert(name, register);
                used += size;
            }
        }
        parts
    }

    /// The size this record counts against a snapshot page's byte budget.
    pub fn budget_size(&self) -> usize {
        96 + self.model.len() + fields_size(self.fields.iter().map(|(k, r)| (k, &r.value)))
    }

    /// The devices whose stamps appear in this record.
    pub fn devices(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.fields.values().map(|r| r.hlc.device)
    }
}

/// The largest budget size a shared write of `fields` can take on any path: as a change in a
/// push or log page, or as the snapshot record it builds (the larger of the two).
pub(crate) fn write_budget(model: &str, fields: &BTreeMap<String, Value>) -> usize {
    96 + model.len() + fields_size(fields.iter())
}

fn fields_size<'a>(fields: impl Iterator<Item = (&'a String, &'a Value)>) -> usize {
    fields.map(|(k, v)| 24 + k.len() + value_size(v)).sum()
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 1,
        Value::Int(_) | Value::UInt(_) | Value::Float(_) => 9,
        Value::String(s) => 5 + s.len(),
        Value::Bytes(b) => 5 + b.len(),
        Value::List(l) => 5 + l.iter().map(value_size).sum::<usize>(),
        Value::Map(m) => {
            5 + m
                .iter()
                .map(|(k, v)| 5 + k.len() + value_size(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_in_parts_merges_back_into_the_whole_record() {
        let mut whole = SharedRecord::empty("tag", Uuid::from_u128(7));
        whole.exists = Some(Register::new(Hlc::new(5, 0, A), true));
        whole.last_insert = Some(Hlc::new(5, 0, A));
        for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let value = Value::Bytes(vec![i as u8; 100 * (i + 1)]);
            whole.fields.insert(
                name.to_owned(),
                Register::new(Hlc::new(6 + i as u64, 0, B), value),
            );
        }
        let budget = 400;
        let parts = whole.clone().into_parts(budget);
        assert!(parts.len() > 1, "{} bytes in one part", whole.budget_size());
        for part in &parts {
            // A part over the budget holds one field only (a field is never split).
            assert!(part.budget_size() <= budget || part.fields.len() == 1);
            assert_eq!(part.key(), whole.key());
        }
        assert!(parts[1..]
            .iter()
            .all(|p| p.exists.is_none() && p.last_insert.is_none()));
        // In any order, the parts merge back into exactly the whole record.
        for rotation in 0..parts.len() {
            let mut merged = SharedRecord::empty("tag", Uuid::from_u128(7));
            for part in parts.iter().cycle().skip(rotation).take(parts.len()) {
                merged.merge(part);
            }
            assert_eq!(merged, whole);
        }
        // A record within the budget stays one part.
        assert_eq!(whole.clone().into_parts(usize::MAX), vec![whole]);
    }

    const A: DeviceId = DeviceId::from_u128(1);
    const B: DeviceId = DeviceId::from_u128(2);

    fn change(t: u64, dev: DeviceId, kind: ChangeKind, fields: &[(&str, i64)]) -> SharedChange {
        SharedChange {
            origin: dev,
            seq: t,
            hlc: Hlc::new(t, 0, dev),
            model: "tag".into(),
            record: Uuid::from_u128(7),
            kind,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
                .collect(),
        }
    }

    fn apply_all(changes: &[SharedChange]) -> SharedRecord {
        let mut r = SharedRecord::empty("tag", Uuid::from_u128(7));
        for c in changes {
            r.merge(&c.to_record());
        }
        r
    }

    fn fields(pairs: &[(&str, i64)]) -> Option<BTreeMap<String, Value>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
                .collect(),
        )
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let ins = change(1, A, ChangeKind::Insert, &[("name", 0), ("color", 0)]);
        let a = change(2, A, ChangeKind::Update, &[("name", 1)]);
        let b = change(2, B, ChangeKind::Update, &[("color", 2)]);
        let r1 = apply_all(&[ins.clone(), a.clone(), b.clone()]);
        let r2 = apply_all(&[b, a, ins]);
        assert_eq!(r1, r2);
        assert_eq!(r1.visible(), fields(&[("color", 2), ("name", 1)]));
    }

    #[test]
    fn same_field_conflict_goes_to_highest_hlc() {
        let x = change(5, A, ChangeKind::Update, &[("name", 1)]);
        let y = change(5, B, ChangeKind::Update, &[("name", 2)]);
        let ins = change(1, A, ChangeKind::Insert, &[]);
        assert_eq!(
            apply_all(&[ins.clone(), x.clone(), y.clone()]).visible(),
            fields(&[("name", 2)])
        );
        assert_eq!(apply_all(&[y, ins, x]).visible(), fields(&[("name", 2)]));
    }

    #[test]
    fn old_duplicate_after_newer_change_is_a_no_op() {
        // Trap 5: the version lives on the row, so an old change re-delivered after the log was
        // pruned cannot overwrite newer state.
        let old = change(1, A, ChangeKind::Insert, &[("name", 1)]);
        let new = change(2, B, ChangeKind::Update, &[("name", 2)]);
        let mut r = apply_all(&[old.clone(), new]);
        let before = r.clone();
        assert!(!r.merge(&old.to_record()));
        assert_eq!(r, before);
    }

    #[test]
    fn delete_beats_older_update_in_any_order() {
        let ins = change(1, A, ChangeKind::Insert, &[("name", 1)]);
        let del = change(3, B, ChangeKind::Delete, &[]);
        let upd = change(2, A, ChangeKind::Update, &[("name", 2)]);
        assert_eq!(
            apply_all(&[ins.clone(), del.clone(), upd.clone()]).visible(),
            None
        );
        assert_eq!(apply_all(&[upd, del, ins]).visible(), None);
    }

    #[test]
    fn reinsert_after_delete_hides_stale_fields() {
        let ins = change(1, A, ChangeKind::Insert, &[("name", 1), ("color", 1)]);
        let del = change(2, A, ChangeKind::Delete, &[]);
        let re = change(3, B, ChangeKind::Insert, &[("name", 3)]);
        let r = apply_all(&[re.clone(), ins.clone(), del.clone()]);
        assert_eq!(r.visible(), fields(&[("name", 3)]));
        assert_eq!(r, apply_all(&[ins, del, re]));
    }

    #[test]
    fn update_without_insert_is_invisible_until_inserted() {
        let upd = change(2, A, ChangeKind::Update, &[("name", 2)]);
        let ins = change(1, B, ChangeKind::Insert, &[("color", 1)]);
        assert_eq!(apply_all(std::slice::from_ref(&upd)).visible(), None);
        assert_eq!(
            apply_all(&[upd, ins]).visible(),
            fields(&[("color", 1), ("name", 2)])
        );
    }

    #[test]
    fn merge_is_idempotent_commutative_and_associative() {
        let cs = [
            change(1, A, ChangeKind::Insert, &[("a", 1)]),
            change(2, B, ChangeKind::Update, &[("b", 2)]),
            change(3, A, ChangeKind::Delete, &[]),
            change(4, B, ChangeKind::Insert, &[("a", 4)]),
        ];
        let x = apply_all(&cs);
        let mut rev = cs.to_vec();
        rev.reverse();
        assert_eq!(x, apply_all(&rev));
        let mut twice = cs.to_vec();
        twice.extend(cs.iter().cloned());
        assert_eq!(x, apply_all(&twice));
        // (c0 ⊔ c1) ⊔ (c2 ⊔ c3) == c0 ⊔ (c1 ⊔ (c2 ⊔ c3))
        let left = {
            let mut l = apply_all(&cs[..2]);
            l.merge(&apply_all(&cs[2..]));
            l
        };
        let right = {
            let mut inner = apply_all(&cs[2..]);
            inner.merge(&cs[1].to_record());
            let mut r = apply_all(&cs[..1]);
            r.merge(&inner);
            r
        };
        assert_eq!(left, right);
        assert_eq!(left, x);
    }

    fn arb_change() -> impl proptest::strategy::Strategy<Value = SharedChange> {
        use proptest::prelude::*;
        (
            0u64..6,
            0u32..2,
            prop::sample::select(vec![A, B]),
            prop::sample::select(vec![
                ChangeKind::Insert,
                ChangeKind::Update,
                ChangeKind::Delete,
            ]),
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), 0i64..4, 0..3),
        )
            .prop_map(|(t, counter, dev, kind, fields)| SharedChange {
                origin: dev,
                seq: t + 1,
                hlc: Hlc::new(t, counter, dev),
                model: "tag".into(),
                record: Uuid::from_u128(7),
                kind,
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::Int(v)))
                    .collect(),
            })
    }

    proptest::proptest! {
        #[test]
        fn apply_equals_merging_the_changes_register_set(
            changes in proptest::collection::vec(arb_change(), 0..12)
        ) {
            let mut applied = SharedRecord::empty("tag", Uuid::from_u128(7));
            let mut merged = applied.clone();
            for c in &changes {
                let a = applied.apply(c);
                let m = merged.merge(&c.to_record());
                proptest::prop_assert_eq!(a, m, "same `changed` answer");
                proptest::prop_assert_eq!(&applied, &merged);
            }
        }
    }
}
