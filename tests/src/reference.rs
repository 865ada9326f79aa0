//! The reference model: the expected state computed independently from every operation issued.
//!
//! It does not use the engine's merge code: device-owned records keep the version with the
//! highest seq; a shared record is the sequential replay, in HLC order, of every change ever
//! made to it (an insert replaces all fields, an update sets some, a delete hides the record).

use hybridsync_core::{ChangeKind, DeviceId, Hlc, OwnedRecord, SharedChange, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A device-owned record as the application sees it: `(seq, data)`, `None` data = deleted.
pub type OwnedView = BTreeMap<(DeviceId, String, Uuid), (u64, Option<Vec<u8>>)>;

/// Shared records as the application sees them (existing records only).
pub type SharedView = BTreeMap<(String, Uuid), BTreeMap<String, Value>>;

/// Every operation the workload issued and that became durable.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    owned: Vec<OwnedRecord>,
    shared: Vec<SharedChange>,
}

impl Reference {
    /// Records a durable local device-owned write.
    pub fn owned_write(&mut self, r: OwnedRecord) {
        self.owned.push(r);
    }

    /// Records a durable local shared write.
    pub fn shared_write(&mut self, c: SharedChange) {
        self.shared.push(c);
    }

    /// Number of operations recorded.
    pub fn len(&self) -> usize {
        self.owned.len() + self.shared.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every shared change issued, in issue order.
    pub fn shared_changes(&self) -> &[SharedChange] {
        &self.shared
    }

    /// Every device-owned change issued, in issue order.
    pub fn owned_changes(&self) -> &[OwnedRecord] {
        &self.owned
    }

    /// The operations that survive `device` being lost for good, given that the live devices
    /// hold its device-owned stream through `owned_through` and its shared stream through
    /// `shared_through`: its later writes reached no one that survives.
    pub fn surviving(&self, device: DeviceId, owned_through: u64, shared_through: u64) -> Self {
        Reference {
            owned: self
                .owned
                .iter()
                .filter(|r| r.owner != device || r.seq <= owned_through)
                .cloned()
                .collect(),
            shared: self
                .shared
                .iter()
                .filter(|c| c.origin != device || c.seq <= shared_through)
                .cloned()
                .collect(),
        }
    }

    /// The data `key`'s owner wrote at `seq` (`Some(None)`: it deleted the record then).
    pub fn owned_version(
        &self,
        key: &(DeviceId, String, Uuid),
        seq: u64,
    ) -> Option<&Option<Vec<u8>>> {
        self.owned
            .iter()
            .find(|r| r.owner == key.0 && r.seq == seq && r.model == key.1 && r.uuid == key.2)
            .map(|r| &r.data)
    }

    /// Expected device-owned records: the highest seq per key.
    pub fn expected_owned(&self) -> OwnedView {
        let mut out: OwnedView = BTreeMap::new();
        for r in &self.owned {
            let key = (r.owner, r.model.clone(), r.uuid);
            match out.get(&key) {
                Some((seq, _)) if *seq >= r.seq => {}
                _ => {
                    out.insert(key, (r.seq, r.data.clone()));
                }
            }
        }
        out
    }

    /// Expected visible shared records of `models` (sequential replay in HLC order).
    pub fn expected_shared(&self, include: impl Fn(&str) -> bool) -> SharedView {
        let mut by_record: BTreeMap<(String, Uuid), Vec<&SharedChange>> = BTreeMap::new();
        for c in self.shared.iter().filter(|c| include(&c.model)) {
            by_record
                .entry((c.model.clone(), c.record))
                .or_default()
                .push(c);
        }
        let mut out = SharedView::new();
        for (key, mut changes) in by_record {
            changes.sort_by_key(|c| c.hlc);
            let mut exists = false;
            let mut fields: BTreeMap<String, Value> = BTreeMap::new();
            for c in changes {
                match c.kind {
                    ChangeKind::Insert => {
                        exists = true;
                        fields = c.fields.clone();
                    }
                    ChangeKind::Update => {
                        for (k, v) in &c.fields {
                            fields.insert(k.clone(), v.clone());
                        }
                    }
                    ChangeKind::Delete => exists = false,
                }
            }
            if exists {
                out.insert(key, fields);
            }
        }
        out
    }

    /// The highest stamp issued.
    pub fn max_hlc(&self) -> Hlc {
        let owned = self.owned.iter().map(|r| r.hlc);
        let shared = self.shared.iter().map(|c| c.hlc);
        owned.chain(shared).max().unwrap_or(Hlc::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: u64, dev: u128, kind: ChangeKind, fields: &[(&str, i64)]) -> SharedChange {
        let d = DeviceId::from_u128(dev);
        SharedChange {
            origin: d,
            seq: 1,
            hlc: Hlc::new(t, 0, d),
            model: "tag".into(),
            record: Uuid::nil(),
            kind,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
                .collect(),
        }
    }

    #[test]
    fn replay_in_hlc_order_whatever_the_issue_order() {
        let mut r = Reference::default();
        r.shared_write(c(3, 1, ChangeKind::Update, &[("b", 3)]));
        r.shared_write(c(1, 2, ChangeKind::Insert, &[("a", 1)]));
        r.shared_write(c(2, 1, ChangeKind::Delete, &[]));
        r.shared_write(c(4, 2, ChangeKind::Insert, &[("c", 4)]));
        let got = r.expected_shared(|_| true);
        let fields: BTreeMap<String, Value> = [("c".to_owned(), Value::Int(4))].into();
        assert_eq!(got.get(&("tag".to_owned(), Uuid::nil())), Some(&fields));
    }
}
