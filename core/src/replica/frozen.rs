//! Removed members' device-owned streams: survivors compare what they hold and fill each
//! other's holes.
//!
//! A catch-up page carries the records whose *current* version lies in its seq range, so a
//! record its server overwrote above the page is left out: the requester holds no version of
//! it (or an older one) until it reaches the server's head. While the owner lives, every
//! device reaches that head in time. Once the owner is gone for good and removed, no head
//! moves any more, and a device whose catch-up was cut short at such a page holds a different
//! set of records than a device that got the older version in real time, at the same
//! watermark, for ever.
//!
//! So for every removed member it holds records of, a device keeps a digest of them (each
//! record's seq, model and uuid, in seq order: `(owner, seq)` names one change) and sends it
//! with its watermark to every peer ([`SyncMessage::OwnedDigest`]). A peer at the same
//! watermark with a different digest reads the sender's records of that owner again from the
//! start; storage keeps, per record, the version with the higher seq. Every such read only
//! adds versions the owner really wrote within what survived, and each device's set only
//! grows toward the union of what the survivors hold, so the exchange ends with every
//! survivor holding, per record, the newest surviving version. Whoever's set changed sends
//! its new digest, so the union travels along any connected pairing graph.

use super::Replica;
use crate::digest::Fnv64;
use crate::id::DeviceId;
use crate::message::{OwnedDigest, SyncMessage};
use crate::owned::OwnedRecord;
use crate::storage::{ReadId, StorageCommand, StorageDone};

/// What this device knows of its own records of one removed member.
#[derive(Debug, Default)]
pub(super) struct Frozen {
    /// The digest of the records held and the watermark it covers; `None` until computed,
    /// and again after any write of the owner's records or watermark.
    digest: Option<(u64, u64)>,
    /// Bumped by every such write: a digest read begun before one is stale.
    generation: u64,
    /// The digest being computed, page by page.
    read: Option<DigestRead>,
}

/// A digest computed by reading the owner's records from storage in seq order.
#[derive(Debug)]
struct DigestRead {
    id: ReadId,
    generation: u64,
    hash: Fnv64,
    upto: u64,
}

impl Replica {
    /// Removed members whose records this device holds (never itself).
    fn removed_owners(&self) -> Vec<DeviceId> {
        self.member_records
            .values()
            .filter(|r| !crate::storage::is_member_record(r))
            .map(crate::storage::member_of)
            .filter(|d| *d != self.config.device && self.watermark(*d) > 0)
            .collect()
    }

    /// Brings the set of removed members' streams up to date with the member records, starts
    /// the digests that are missing (only while some peer is connected: no one to tell
    /// otherwise), and compares them with the peers' (on every summary and peer up).
    pub(super) fn refresh_frozen(&mut self) {
        let removed = self.removed_owners();
        self.frozen.retain(|o, _| removed.contains(o));
        for owner in removed {
            self.frozen.entry(owner).or_default();
        }
        if self.peers.is_empty() {
            return;
        }
        let owners: Vec<DeviceId> = self.frozen.keys().copied().collect();
        for owner in owners {
            // Not while a catch-up of it runs: every page it writes would make the digest
            // stale (the catch-up's end refreshes).
            let needs_read = !self.fetches.owned.contains_key(&owner)
                && self
                    .frozen
                    .get(&owner)
                    .is_some_and(|f| f.digest.is_none() && f.read.is_none());
            if needs_read {
                self.start_digest_read(owner);
            } else {
                self.compare_digests(owner);
            }
        }
    }

    /// Called for every storage write: one naming a removed member's records or watermark
    /// makes its digest stale (recomputed at the next refresh).
    pub(super) fn frozen_written(&mut self, cmd: &StorageCommand) {
        if self.frozen.is_empty() {
            return;
        }
        let mut stale = |owner: DeviceId| {
            if let Some(f) = self.frozen.get_mut(&owner) {
                f.generation += 1;
                f.digest = None;
            }
        };
        match cmd {
            StorageCommand::PutOwned(records) => {
                let mut last = None;
                for r in records {
                    if last != Some(r.owner) {
                        stale(r.owner);
                        last = Some(r.owner);
                    }
                }
            }
            StorageCommand::SetWatermark { owner, .. } => stale(*owner),
            _ => {}
        }
    }

    fn start_digest_read(&mut self, owner: DeviceId) {
        let upto = self.watermark(owner);
        let Some(generation) = self.frozen.get(&owner).map(|f| f.generation) else {
            return;
        };
        let id = self.next_read_id();
        if let Some(f) = self.frozen.get_mut(&owner) {
            f.read = Some(DigestRead {
                id,
                generation,
                hash: Fnv64::default(),
                upto,
            });
        }
        self.read_digest_page(owner, id, 0, upto);
    }

    fn read_digest_page(&mut self, owner: DeviceId, id: ReadId, after: u64, upto: u64) {
        let limit = self.config.max_page_records.max(1);
        let max_bytes = self.config.page_bytes;
        self.store(StorageCommand::ReadOwned {
            id,
            owner,
            after,
            upto,
            limit,
            max_bytes,
        });
    }

    /// A storage completion for a digest read, if `done` is one (else it is handed back).
    pub(super) fn on_digest_page(&mut self, done: StorageDone) -> Option<StorageDone> {
        let id = match &done {
            StorageDone::Owned { id, .. } | StorageDone::Failed { id } => *id,
            _ => return Some(done),
        };
        let Some((&owner, f)) = self
            .frozen
            .iter_mut()
            .find(|(_, f)| f.read.as_ref().is_some_and(|r| r.id == id))
        else {
            return Some(done);
        };
        let mut read = f.read.take()?;
        let StorageDone::Owned { records, more, .. } = done else {
            return None; // failed: the next refresh starts again
        };
        if read.generation != f.generation {
            return None; // written meanwhile: the next refresh starts again
        }
        for r in &records {
            fold(&mut read.hash, r);
        }
        match records.last() {
            Some(last) if more => {
                let (after, upto) = (last.seq, read.upto);
                f.read = Some(read);
                self.read_digest_page(owner, id, after, upto);
            }
            _ => {
                f.digest = Some((read.upto, read.hash.finish()));
                self.announce_digest(owner);
                self.compare_digests(owner);
            }
        }
        None
    }

    /// Sends this device's digest of `owner` to every peer that has not been told it.
    fn announce_digest(&mut self, owner: DeviceId) {
        let peers: Vec<DeviceId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.tell_digest(peer, owner, false);
        }
    }

    /// Sends every digest this device knows to `peer` (`again`: also those it was told).
    pub(super) fn tell_digests(&mut self, peer: DeviceId, again: bool) {
        let owners: Vec<DeviceId> = self.frozen.keys().copied().collect();
        for owner in owners {
            self.tell_digest(peer, owner, again);
        }
    }

    fn tell_digest(&mut self, peer: DeviceId, owner: DeviceId, again: bool) {
        let Some((through, digest)) = self.frozen.get(&owner).and_then(|f| f.digest) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !again && p.digests_told.get(&owner) == Some(&(through, digest)) {
            return;
        }
        p.digests_told.insert(owner, (through, digest));
        self.send(
            peer,
            SyncMessage::OwnedDigest(OwnedDigest {
                owner,
                through,
                digest,
            }),
        );
    }

    /// A peer's [`SyncMessage::OwnedDigest`]: kept (a device may learn of the removal after
    /// its peer), and compared with this device's own.
    pub(super) fn on_owned_digest(&mut self, from: DeviceId, claim: OwnedDigest) {
        let OwnedDigest {
            owner,
            through,
            digest,
        } = claim;
        // Only devices of the library: a member naming made-up owners grows nothing.
        if owner == self.config.device || !self.known_device(owner) {
            return;
        }
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.digests.insert(owner, (through, digest));
        // It holds the stream that far: a catch-up fetches what this device lacks below it.
        let head = p.heads.entry(owner).or_insert(0);
        *head = (*head).max(through);
        self.compare_digests(owner);
        self.plan_owned(from);
    }

    /// Reads `owner`'s records again from the first peer that holds the same watermark and a
    /// different digest (one such read at a time per owner, and at most one per peer and
    /// owner every summary period: a member sending digests in a loop gets one read each).
    fn compare_digests(&mut self, owner: DeviceId) {
        let Some((through, mine)) = self.frozen.get(&owner).and_then(|f| f.digest) else {
            return;
        };
        if self.fetches.owned.contains_key(&owner) {
            return;
        }
        let (now, period) = (self.now.mono, self.config.heartbeat_interval);
        let busy: Vec<DeviceId> = self.fetches.owned.values().map(|f| f.peer).collect();
        let from = self.peers.iter().find_map(|(id, p)| {
            let differs = p
                .digests
                .get(&owner)
                .is_some_and(|(t, d)| *t == through && *d != mine);
            let lately = p
                .reread
                .get(&owner)
                .is_some_and(|at| now.saturating_duration_since(*at) < period);
            (differs && !lately && !busy.contains(id)).then_some(*id)
        });
        let Some(from) = from else { return };
        if let Some(p) = self.peers.get_mut(&from) {
            p.digests.remove(&owner);
            p.reread.insert(owner, now);
        }
        self.start_owned_fetch(from, owner, 0, None);
    }
}

/// Feeds one record into a digest.
fn fold(hash: &mut Fnv64, r: &OwnedRecord) {
    hash.write(&r.seq.to_be_bytes());
    hash.write(&(r.model.len() as u64).to_be_bytes());
    hash.write(r.model.as_bytes());
    hash.write(r.uuid.as_bytes());
}
