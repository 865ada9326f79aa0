//! Per-origin version vectors.

use crate::id::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// For each origin, the highest sequence number of its shared changes that is covered
/// (contiguously, from 1). Missing entries are 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector (every origin at 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for `origin` (0 if absent).
    pub fn get(&self, origin: DeviceId) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Sets the entry for `origin`; 0 removes it so equal vectors compare equal.
    pub fn set(&mut self, origin: DeviceId, seq: u64) {
        if seq == 0 {
            self.0.remove(&origin);
        } else {
            self.0.insert(origin, seq);
        }
    }

    /// Raises the entry for `origin` to at least `seq`; returns whether it changed.
    pub fn raise(&mut self, origin: DeviceId, seq: u64) -> bool {
        if seq > self.get(origin) {
            self.set(origin, seq);
            true
        } else {
            false
        }
    }

    /// Pointwise maximum with `other`; returns whether anything changed.
    pub fn merge(&mut self, other: &VersionVector) -> bool {
        let mut changed = false;
        for (o, s) in other.iter() {
            changed |= self.raise(o, s);
        }
        changed
    }

    /// Whether some origin is ahead in `other`.
    pub fn is_behind(&self, other: &VersionVector) -> bool {
        other.iter().any(|(o, s)| s > self.get(o))
    }

    /// Non-zero entries in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceId, u64)> + '_ {
        self.0.iter().map(|(o, s)| (*o, *s))
    }

    /// Number of non-zero entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether every entry is zero.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(DeviceId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (DeviceId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (o, s) in iter {
            vv.raise(o, s);
        }
        vv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_entries_are_absent_so_vectors_compare_by_content() {
        let a = DeviceId::from_u128(1);
        let mut v = VersionVector::new();
        v.set(a, 3);
        v.set(a, 0);
        assert_eq!(v, VersionVector::new());
    }

    #[test]
    fn merge_is_pointwise_max() {
        let (a, b) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
        let mut x: VersionVector = [(a, 3), (b, 1)].into_iter().collect();
        let y: VersionVector = [(a, 2), (b, 5)].into_iter().collect();
        assert!(x.merge(&y));
        assert_eq!(x, [(a, 3), (b, 5)].into_iter().collect());
        assert!(!x.merge(&y));
        assert!(!x.is_behind(&y));
        assert!(VersionVector::new().is_behind(&y));
    }
}
