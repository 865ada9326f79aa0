//! `MemStore`: the reference storage backend, in memory, with a model of durability.

use crate::digest::Fnv64;
use crate::hlc::Hlc;
use crate::id::DeviceId;
use crate::owned::{supersedes, OwnedKey, OwnedRecord};
use crate::shared::{SharedChange, SharedKey, SharedRecord};
use crate::storage::{
    empty_record, OwnedCursor, Page, RecordReader, Restored, SharedView, StorageCommand,
    StorageDone,
};
use crate::version_vector::VersionVector;
use crate::MEMBER_MODEL;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// The complete stored state of one replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemState {
    /// Device-owned records by `(owner, model, uuid)`.
    pub owned: BTreeMap<OwnedKey, OwnedRecord>,
    /// Index for catch-up: `(owner, seq)` to key.
    /// (A hostile owner may reuse a seq for two records: both stay indexed and readable.)
    owned_by_seq: BTreeSet<(DeviceId, u64, OwnedKey)>,
    /// Shared records (registers) by `(model, uuid)`.
    pub shared: BTreeMap<SharedKey, SharedRecord>,
    /// The shared log: per origin, by seq (one map per origin, so an append compares seqs,
    /// not device ids; an origin with no entries has no map).
    pub log: BTreeMap<DeviceId, BTreeMap<u64, SharedChange>>,
    /// HLC high-water mark.
    pub hlc: Hlc,
    /// Per-owner watermarks.
    pub watermarks: BTreeMap<DeviceId, u64>,
    /// Shared version vector.
    pub vv: VersionVector,
    /// Pruned horizon per origin.
    pub horizon: VersionVector,
    /// Acks per member.
    pub acks: BTreeMap<DeviceId, VersionVector>,
    /// The snapshot stage ([`StorageCommand::StageShared`]): not content, not read.
    pub staged: BTreeMap<SharedKey, SharedRecord>,
}

impl MemState {
    /// Entries in the shared log.
    pub fn log_len(&self) -> usize {
        self.log.values().map(BTreeMap::len).sum()
    }

    /// Executes one command; reads return their completion.
    pub fn execute(&mut self, cmd: StorageCommand) -> Option<StorageDone> {
        match cmd {
            StorageCommand::PutOwned(records) => {
                for r in records {
                    self.put_owned(r);
                }
                None
            }
            StorageCommand::MergeShared(records) => {
                for r in &records {
                    self.merge_shared(r);
                }
                None
            }
            StorageCommand::StageShared(records) => {
                for r in &records {
                    self.staged
                        .entry(r.key())
                        .or_insert_with_key(empty_record)
                        .merge(r);
                }
                None
            }
            StorageCommand::ApplyStaged => {
                for r in std::mem::take(&mut self.staged).into_values() {
                    self.merge_shared(&r);
                }
                None
            }
            StorageCommand::FullSync => None,
            StorageCommand::ClearStaged => {
                self.staged.clear();
                None
            }
            StorageCommand::AppendLog(entries) => {
                for e in entries {
                    self.shared
                        .entry(e.key())
                        .or_insert_with_key(empty_record)
                        .apply(&e);
                    self.vv.raise(e.origin, e.seq);
                    self.log.entry(e.origin).or_default().insert(e.seq, e);
                }
                None
            }
            StorageCommand::SetWatermark { owner, seq } => {
                let w = self.watermarks.entry(owner).or_insert(0);
                *w = (*w).max(seq);
                None
            }
            StorageCommand::SetHlc(h) => {
                self.hlc = self.hlc.max(h);
                None
            }
            StorageCommand::SetAck { member, vv } => {
                self.acks.insert(member, vv);
                None
            }
            StorageCommand::PruneLog { origin, through } => {
                if let Some(entries) = self.log.get_mut(&origin) {
                    *entries = match through.checked_add(1) {
                        Some(first_kept) => entries.split_off(&first_kept),
                        None => BTreeMap::new(),
                    };
                    if entries.is_empty() {
                        self.log.remove(&origin);
                    }
                }
                self.horizon.raise(origin, through);
                self.vv.raise(origin, through);
                None
            }
            StorageCommand::ReadOwned {
                id,
                owner,
                after,
                upto,
                limit,
                max_bytes,
            } => {
                let rows = match after.checked_add(1) {
                    Some(lo) if lo <= upto => Some(
                        self.owned_by_seq
                            .range((owner, lo, min_key())..)
                            .take_while(move |(o, s, _)| *o == owner && *s <= upto)
                            .filter_map(|(_, _, k)| self.owned.get(k)),
                    ),
                    _ => None,
                };
                let (records, more) = page(
                    rows.into_iter().flatten(),
                    limit,
                    max_bytes,
                    OwnedRecord::budget_size,
                );
                Some(StorageDone::Owned { id, records, more })
            }
            StorageCommand::ReadLog {
                id,
                since,
                limit,
                max_bytes,
            } => {
                let rows = log_after(&self.log, &since);
                let (entries, more) = page(rows, limit, max_bytes, SharedChange::budget_size);
                Some(StorageDone::Log { id, entries, more })
            }
            StorageCommand::ReadSharedSnapshot {
                id,
                after,
                limit,
                max_bytes,
            } => {
                let lower = match after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                };
                let rows = self.shared.range((lower, Bound::Unbounded)).map(|(_, r)| r);
                let (records, more) = page(rows, limit, max_bytes, SharedRecord::budget_size);
                Some(StorageDone::Snapshot { id, records, more })
            }
        }
    }

    fn put_owned(&mut self, r: OwnedRecord) {
        let key = r.key();
        let existing = self.owned.get(&key);
        if supersedes(&r, existing) {
            if let Some(old) = existing {
                self.owned_by_seq.remove(&(old.owner, old.seq, key.clone()));
            }
            self.owned_by_seq.insert((r.owner, r.seq, key.clone()));
            self.owned.insert(key, r);
        }
    }

    fn merge_shared(&mut self, r: &SharedRecord) {
        let key = r.key();
        self.shared
            .entry(key)
            .or_insert_with_key(empty_record)
            .merge(r);
    }

    /// The durable state the engine restarts from.
    pub fn restored(&self) -> Restored {
        Restored {
            hlc: self.hlc,
            watermarks: self.watermarks.clone(),
            vv: self.vv.clone(),
            horizon: self.horizon.clone(),
            acks: self.acks.clone(),
            members: self
                .shared
                .range((MEMBER_MODEL.to_owned(), uuid::Uuid::nil())..)
                .take_while(|((m, _), _)| m == MEMBER_MODEL)
                .map(|(_, r)| r.clone())
                .collect(),
        }
    }

    /// A digest of the replicated content: every device-owned record (tombstones included)
    /// and every shared register that can matter (hidden ones are left out). Two replicas
    /// that converged have equal digests.
    pub fn content_digest(&self) -> u64 {
        let mut h = Fnv64::default();
        for r in self.owned.values() {
            h.write(&postcard::to_stdvec(r).unwrap_or_default());
        }
        h.write(b"|shared|");
        // Hidden registers are left out: they never affect what is visible, and a device that
        // took a snapshot does not hold them (see `SharedRecord::without_hidden`).
        for r in self.shared.values() {
            let canonical = r.clone().without_hidden();
            h.write(&postcard::to_stdvec(&canonical).unwrap_or_default());
        }
        h.finish()
    }
}

impl MemState {
    /// The first owner of a device-owned record at or above `from`.
    fn owner_from(&self, from: DeviceId) -> Option<DeviceId> {
        let lo = (from, String::new(), uuid::Uuid::nil());
        self.owned.range(lo..).next().map(|(k, _)| k.0)
    }

    /// The owner of a device-owned record after `owner` (owners are visited by range jumps,
    /// not by scanning every record).
    fn owner_after(&self, owner: DeviceId) -> Option<DeviceId> {
        let next = owner.0.as_u128().checked_add(1)?;
        self.owner_from(DeviceId::from_u128(next))
    }

    /// `owner`'s records of `model` with uuid in `after..` (exclusive when `Some`).
    fn owned_of<'a>(
        &'a self,
        owner: DeviceId,
        model: &'a str,
        after: Option<uuid::Uuid>,
    ) -> impl Iterator<Item = &'a OwnedRecord> + 'a {
        let lo = match after {
            Some(u) => Bound::Excluded((owner, model.to_owned(), u)),
            None => Bound::Included((owner, model.to_owned(), uuid::Uuid::nil())),
        };
        self.owned
            .range((lo, Bound::Unbounded))
            .take_while(move |(k, _)| k.0 == owner && k.1 == model)
            .map(|(_, r)| r)
    }

    /// Shared records of `model` with uuid in `after..` (exclusive when `Some`).
    fn shared_of<'a>(
        &'a self,
        model: &'a str,
        after: Option<uuid::Uuid>,
    ) -> impl Iterator<Item = &'a SharedRecord> + 'a {
        let lo = match after {
            Some(u) => Bound::Excluded((model.to_owned(), u)),
            None => Bound::Included((model.to_owned(), uuid::Uuid::nil())),
        };
        self.shared
            .range((lo, Bound::Unbounded))
            .take_while(move |(k, _)| k.0 == model)
            .map(|(_, r)| r)
    }
}

/// The reference answers of the application's reads (see [`RecordReader`]).
impl RecordReader for MemState {
    type Error = std::convert::Infallible;

    fn get_owned(
        &self,
        owner: DeviceId,
        model: &str,
        uuid: uuid::Uuid,
    ) -> Result<Option<OwnedRecord>, Self::Error> {
        Ok(self.owned.get(&(owner, model.to_owned(), uuid)).cloned())
    }

    fn get_shared(&self, model: &str, uuid: uuid::Uuid) -> Result<Option<SharedView>, Self::Error> {
        Ok(self
            .shared
            .get(&(model.to_owned(), uuid))
            .and_then(SharedView::of))
    }

    fn list_owned(
        &self,
        model: &str,
        after: Option<OwnedCursor>,
        limit: u32,
    ) -> Result<Page<OwnedRecord, OwnedCursor>, Self::Error> {
        let limit = limit.max(1) as usize;
        let mut items: Vec<OwnedRecord> = Vec::new();
        let (mut owner, mut from) = match after {
            Some((o, u)) => (Some(o), Some(u)),
            None => (self.owner_from(DeviceId::NIL), None),
        };
        while let Some(o) = owner {
            for r in self.owned_of(o, model, from).filter(|r| !r.is_tombstone()) {
                if items.len() == limit {
                    let next = items.last().map(|l| (l.owner, l.uuid));
                    return Ok(Page { items, next });
                }
                items.push(r.clone());
            }
            owner = self.owner_after(o);
            from = None;
        }
        Ok(Page { items, next: None })
    }

    fn list_shared(
        &self,
        model: &str,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> Result<Page<SharedView, uuid::Uuid>, Self::Error> {
        let limit = limit.max(1) as usize;
        let mut items: Vec<SharedView> = Vec::new();
        for v in self.shared_of(model, after).filter_map(SharedView::of) {
            if items.len() == limit {
                let next = items.last().map(|l| l.uuid);
                return Ok(Page { items, next });
            }
            items.push(v);
        }
        Ok(Page { items, next: None })
    }

    fn count_owned(&self, model: &str) -> Result<u64, Self::Error> {
        let mut n = 0u64;
        let mut owner = self.owner_from(DeviceId::NIL);
        while let Some(o) = owner {
            n += self
                .owned_of(o, model, None)
                .filter(|r| !r.is_tombstone())
                .count() as u64;
            owner = self.owner_after(o);
        }
        Ok(n)
    }

    fn count_shared(&self, model: &str) -> Result<u64, Self::Error> {
        Ok(self
            .shared_of(model, None)
            .filter(|r| r.visible().is_some())
            .count() as u64)
    }
}

/// The smallest record key (a range start).
fn min_key() -> OwnedKey {
    (DeviceId::NIL, String::new(), uuid::Uuid::nil())
}

/// Takes rows into a page of at most `limit` rows and `max_bytes` (the first row always fits);
/// reports whether rows remain.
fn page<'a, T: Clone + 'a>(
    mut rows: impl Iterator<Item = &'a T>,
    limit: u32,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> (Vec<T>, bool) {
    let limit = limit.max(1) as usize;
    let mut out: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for row in rows.by_ref() {
        let s = size(row);
        if out.len() >= limit || (!out.is_empty() && bytes + s > max_bytes) {
            return (out, true);
        }
        bytes += s;
        out.push(row.clone());
    }
    (out, false)
}

/// The reference storage backend: a [`MemState`] plus a model of durability.
///
/// Commands apply to the live state at once and are journaled. [`MemStore::sync`] makes the
/// journal durable (a commit); [`MemStore::crash`] throws away whatever was not synced, as a
/// process crash would. The simulator syncs at the end of each engine step (group commit),
/// before performing that step's sends.
///
/// With [`MemStore::with_power_loss`], it also models a backend that commits lazily (SQLite in
/// WAL mode with `synchronous = NORMAL`): [`MemStore::power_loss`] rolls back the last
/// committed batches too, except that a batch holding [`StorageCommand::FullSync`] is fully
/// durable, and so is every batch before it (syncing the log syncs what precedes it).
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    live: MemState,
    durable: MemState,
    journal: Vec<StorageCommand>,
    /// How many lazily committed batches a power loss may roll back (0: not modelled).
    window: usize,
    /// Lazily committed batches a power loss may still roll back, oldest first.
    lazy: std::collections::VecDeque<Vec<StorageCommand>>,
    /// The durable state before `lazy`: what no power loss can take.
    safe: MemState,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Executes one command against the live state.
    pub fn execute(&mut self, cmd: StorageCommand) -> Option<StorageDone> {
        if cmd.read_id().is_none() {
            self.journal.push(cmd.clone());
        }
        self.live.execute(cmd)
    }

    /// An empty store whose power losses can roll back up to `window` lazily committed
    /// batches (see the type's docs).
    pub fn with_power_loss(window: usize) -> Self {
        MemStore {
            window,
            ..Self::default()
        }
    }

    /// Makes every executed write durable (against a power loss too only if the batch holds
    /// [`StorageCommand::FullSync`], or power losses are not modelled).
    pub fn sync(&mut self) {
        if self.window == 0 {
            for cmd in self.journal.drain(..) {
                self.durable.execute(cmd);
            }
            return;
        }
        let batch: Vec<StorageCommand> = std::mem::take(&mut self.journal);
        let full = batch.contains(&StorageCommand::FullSync);
        for cmd in &batch {
            self.durable.execute(cmd.clone());
        }
        if full {
            self.safe = self.durable.clone();
            self.lazy.clear();
        } else {
            self.lazy.push_back(batch);
            // Older batches are beyond any rollback (the log was checkpointed since).
            while self.lazy.len() > self.window {
                if let Some(old) = self.lazy.pop_front() {
                    for cmd in old {
                        self.safe.execute(cmd);
                    }
                }
            }
        }
    }

    /// Loses every write since the last sync.
    pub fn crash(&mut self) {
        self.journal.clear();
        self.live = self.durable.clone();
    }

    /// A power loss: loses every write since the last sync and rolls back the last `batches`
    /// lazily committed ones (at most the window given to [`MemStore::with_power_loss`]).
    pub fn power_loss(&mut self, batches: usize) {
        self.journal.clear();
        let keep = self.lazy.len().saturating_sub(batches);
        self.lazy.truncate(keep);
        let mut state = self.safe.clone();
        for batch in &self.lazy {
            for cmd in batch {
                state.execute(cmd.clone());
            }
        }
        self.durable = state;
        self.live = self.durable.clone();
    }

    /// The live state.
    pub fn state(&self) -> &MemState {
        &self.live
    }

    /// The state to restart from (the live state: call [`MemStore::crash`] first to model a
    /// power loss).
    pub fn restored(&self) -> Restored {
        self.live.restored()
    }
}

/// Reads the live state (what every executed command wrote, synced or not).
impl RecordReader for MemStore {
    type Error = std::convert::Infallible;

    fn get_owned(
        &self,
        owner: DeviceId,
        model: &str,
        uuid: uuid::Uuid,
    ) -> Result<Option<OwnedRecord>, Self::Error> {
        self.live.get_owned(owner, model, uuid)
    }

    fn get_shared(&self, model: &str, uuid: uuid::Uuid) -> Result<Option<SharedView>, Self::Error> {
        self.live.get_shared(model, uuid)
    }

    fn list_owned(
        &self,
        model: &str,
        after: Option<OwnedCursor>,
        limit: u32,
    ) -> Result<Page<OwnedRecord, OwnedCursor>, Self::Error> {
        self.live.list_owned(model, after, limit)
    }

    fn list_shared(
        &self,
        model: &str,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> Result<Page<SharedView, uuid::Uuid>, Self::Error> {
        self.live.list_shared(model, after, limit)
    }

    fn count_owned(&self, model: &str) -> Result<u64, Self::Error> {
        self.live.count_owned(model)
    }

    fn count_shared(&self, model: &str) -> Result<u64, Self::Error> {
        self.live.count_shared(model)
    }
}

impl crate::storage::StorageBackend for MemStore {
    type Error = std::convert::Infallible;

    fn execute(&mut self, commands: Vec<StorageCommand>) -> Result<Vec<StorageDone>, Self::Error> {
        let done = commands
            .into_iter()
            .filter_map(|c| MemStore::execute(self, c))
            .collect();
        self.sync();
        Ok(done)
    }

    fn load_restored(&mut self) -> Result<Restored, Self::Error> {
        Ok(self.restored())
    }
}

/// The entries of `log` above `since`, ordered by `(origin, seq)`: one range per origin, so a
/// page costs what it returns, not a scan of the whole log.
fn log_after<'a>(
    log: &'a BTreeMap<DeviceId, BTreeMap<u64, SharedChange>>,
    since: &'a VersionVector,
) -> impl Iterator<Item = &'a SharedChange> + 'a {
    log.iter().flat_map(move |(origin, entries)| {
        entries
            .range((Bound::Excluded(since.get(*origin)), Bound::Unbounded))
            .map(|(_, e)| e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_rolls_back_lazy_batches_but_never_a_full_sync_one() {
        let d = DeviceId::from_u128(1);
        let e = DeviceId::from_u128(2);
        let mut s = MemStore::with_power_loss(3);
        let mark = |s: &mut MemStore, owner, seq, full: bool| {
            s.execute(StorageCommand::SetWatermark { owner, seq });
            if full {
                s.execute(StorageCommand::FullSync);
            }
            s.sync();
        };
        mark(&mut s, e, 1, false);
        mark(&mut s, d, 1, true); // makes itself and everything before it safe
        mark(&mut s, e, 2, false);
        mark(&mut s, e, 3, false);
        s.power_loss(1);
        let r = s.restored();
        assert_eq!(
            (r.watermarks.get(&d), r.watermarks.get(&e)),
            (Some(&1), Some(&2))
        );
        s.power_loss(3);
        let r = s.restored();
        assert_eq!(
            (r.watermarks.get(&d), r.watermarks.get(&e)),
            (Some(&1), Some(&1))
        );
    }

    #[test]
    fn crash_loses_only_unsynced_writes() {
        let d = DeviceId::from_u128(1);
        let mut s = MemStore::new();
        s.execute(StorageCommand::SetWatermark { owner: d, seq: 3 });
        s.sync();
        s.execute(StorageCommand::SetWatermark { owner: d, seq: 9 });
        assert_eq!(s.restored().watermarks.get(&d), Some(&9));
        s.crash();
        assert_eq!(s.restored().watermarks.get(&d), Some(&3));
    }

    #[test]
    fn two_records_claiming_one_seq_both_stay_readable() {
        let o = DeviceId::from_u128(1);
        let rec = |u: u128| OwnedRecord {
            owner: o,
            seq: 7,
            hlc: Hlc::new(1, 0, o),
            model: "entry".into(),
            uuid: uuid::Uuid::from_u128(u),
            data: Some(vec![1]),
        };
        let mut s = MemState::default();
        s.execute(StorageCommand::PutOwned(vec![rec(1), rec(2)]));
        let read = s.execute(StorageCommand::ReadOwned {
            id: crate::ReadId(1),
            owner: o,
            after: 0,
            upto: 10,
            limit: 10,
            max_bytes: 1 << 20,
        });
        match read {
            Some(StorageDone::Owned { records, more, .. }) => {
                assert_eq!(records.len(), 2);
                assert!(!more);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
