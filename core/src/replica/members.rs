//! Membership, acknowledgements and log pruning.

use super::{Event, Output, Refusal, Replica};
use crate::id::DeviceId;
use crate::message::SyncMessage;
use crate::shared::SharedRecord;
use crate::storage::{is_member_record, StorageCommand};
use crate::version_vector::VersionVector;

impl Replica {
    /// Merges a member-model register set into the in-memory member set (storage gets the
    /// same merge through the log or `MergeShared`). A removed member is disconnected.
    pub(super) fn merge_member(&mut self, r: &SharedRecord) {
        let device = DeviceId(r.uuid);
        let was = self.is_member(device);
        self.member_records
            .entry(r.uuid)
            .or_insert_with(|| SharedRecord::empty(&r.model, r.uuid))
            .merge(r);
        let is = self.is_member(device);
        if was != is {
            self.event(Event::MembershipChanged { device, member: is });
            if !is && self.peers.contains_key(&device) {
                self.outputs.push_back(Output::Disconnect {
                    peer: device,
                    reason: Refusal::NotMember,
                });
                self.on_peer_down(device);
            }
            self.recompute_pruning();
        }
    }

    /// Acks are debounced: one cumulative ack per `ack_delay`, whatever the number of entries.
    pub(super) fn schedule_ack(&mut self) {
        if self.ack_due.is_none() {
            self.ack_due = Some(self.now.mono + self.config.ack_delay);
        }
    }

    /// Sends this device's whole version vector to every connected peer. Every entry it
    /// covers was written before this send, so it is durable (write-ahead contract).
    pub(super) fn send_acks(&mut self) {
        self.broadcast(SyncMessage::AckSharedChanges {
            acker: self.config.device,
            vv: self.vv.clone(),
        });
        self.recompute_pruning();
    }

    /// A cumulative ack from the authenticated sender; a body naming anyone else is refused.
    pub(super) fn on_ack(&mut self, from: DeviceId, acker: DeviceId, vv: VersionVector) {
        if acker != from {
            return self.misbehaved(from, Refusal::AckerMismatch);
        }
        let entry = self.acks.entry(from).or_default();
        if entry.merge(&vv) {
            let vv = entry.clone();
            self.store(StorageCommand::SetAck { member: from, vv });
            self.recompute_pruning();
        }
    }

    /// Members whose acks pin the log: every durable member but this device, minus members
    /// not heard from for longer than the eviction period.
    fn pinning_members(&self) -> Vec<DeviceId> {
        let me = self.config.device;
        let now = self.now.mono;
        let evict = self.config.eviction_after;
        self.member_records
            .values()
            .filter(|r| is_member_record(r))
            .map(crate::storage::member_of)
            .filter(|d| *d != me)
            .filter(|d| match evict {
                None => true,
                Some(after) => {
                    let seen = self
                        .last_seen
                        .get(d)
                        .copied()
                        .unwrap_or(crate::Instant::ZERO);
                    self.peers.contains_key(d) || now.saturating_duration_since(seen) < after
                }
            })
            .collect()
    }

    /// Asks for pruning to be recomputed at the end of the current step, after every write of
    /// the step was emitted (so a prune never precedes the append it covers).
    pub(super) fn recompute_pruning(&mut self) {
        self.prune_due = true;
    }

    /// Prunes each origin's log up to the minimum that every pinning member has acked. A
    /// member that never acked pins the log at zero.
    pub(super) fn prune(&mut self) {
        self.prune_due = false;
        let pinning = self.pinning_members();
        let origins: Vec<(DeviceId, u64)> = self.vv.iter().collect();
        for (origin, have) in origins {
            let acked = pinning
                .iter()
                .map(|m| self.acks.get(m).map_or(0, |vv| vv.get(origin)))
                .min()
                .unwrap_or(have);
            let through = acked.min(have);
            if through > self.horizon.get(origin) {
                self.horizon.set(origin, through);
                self.store(StorageCommand::PruneLog { origin, through });
            }
        }
    }
}
