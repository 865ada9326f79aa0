//! Membership, acknowledgements and log pruning.

use super::{Event, Output, Refusal, Replica};
use crate::id::DeviceId;
use crate::message::{Neighbours, SyncMessage};
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
            // No later than the next summary, which carries this device's own ack.
            self.ack_due = Some((self.now.mono + self.config.ack_delay).min(self.summaries.due));
        }
    }

    /// Sends each connected peer what it does not know yet: the entries of this device's
    /// version vector that rose since the peer last heard it (every entry was written before this
    /// send, so it is durable: write-ahead contract), and the acks of members the peer is
    /// not connected to, as far as they rose beyond what the peer was told.
    pub(super) fn send_acks(&mut self) {
        let me = self.config.device;
        let targets: Vec<DeviceId> = self.peers.keys().copied().collect();
        for to in targets {
            let Some(p) = self.peers.get(&to) else {
                continue;
            };
            // Only the origins that rose since the peer last heard: acks merge by maximum,
            // so a delta is as good as the whole vector and costs what changed.
            let mut own = VersionVector::new();
            for (o, s) in self.vv.iter() {
                if p.told.get(&me).is_none_or(|t| t.get(o) < s) {
                    own.set(o, s);
                }
            }
            let own_new = !own.is_empty();
            let mut relayed = std::collections::BTreeMap::new();
            for (member, vv) in &self.acks {
                if *member == to || *member == me || p.neighbours.contains(member) {
                    continue;
                }
                if !self.is_member(*member) {
                    continue;
                }
                let told = p.told.get(member);
                let mut delta = VersionVector::new();
                for (o, s) in vv.iter() {
                    if told.is_none_or(|t| t.get(o) < s) {
                        delta.set(o, s);
                    }
                }
                if !delta.is_empty() {
                    relayed.insert(*member, delta);
                }
            }
            if let Some(p) = self.peers.get_mut(&to) {
                if own_new {
                    p.told.entry(me).or_default().merge(&own);
                }
                for (m, d) in &relayed {
                    p.told.entry(*m).or_default().merge(d);
                }
            }
            if own_new {
                self.send(
                    to,
                    SyncMessage::AckSharedChanges(crate::Ack { acker: me, vv: own }),
                );
            }
            // Bounded like a page: with many members the table would outgrow a frame.
            let budget = self.config.relay_budget();
            let mut chunk = std::collections::BTreeMap::new();
            let mut used = 0;
            for (member, vv) in relayed {
                let size = 32 + 32 * vv.len();
                if used + size > budget && !chunk.is_empty() {
                    self.send(to, SyncMessage::AckRelay(std::mem::take(&mut chunk)));
                    used = 0;
                }
                used += size;
                chunk.insert(member, vv);
            }
            if !chunk.is_empty() {
                self.send(to, SyncMessage::AckRelay(chunk));
            }
        }
        self.recompute_pruning();
    }

    /// A cumulative ack from the authenticated sender; a body naming anyone else is refused.
    pub(super) fn on_ack(&mut self, from: DeviceId, acker: DeviceId, vv: VersionVector) {
        if acker != from {
            return self.misbehaved(from, Refusal::AckerMismatch);
        }
        let vv = self.nameable(&vv);
        if let Some(p) = self.peers.get_mut(&from) {
            p.told.entry(from).or_default().merge(&vv);
        }
        self.merge_ack(from, &vv);
    }

    /// The entries of `vv` for origins this device can name: members, or origins it holds
    /// entries of. Everything kept per peer or per member goes through it, so a peer naming
    /// made-up origins grows nothing.
    pub(super) fn nameable(&self, vv: &VersionVector) -> VersionVector {
        let mut out = VersionVector::new();
        for (origin, seq) in vv.iter() {
            if self.is_member(origin) || self.vv.get(origin) > 0 {
                out.set(origin, seq);
            }
        }
        out
    }

    /// A digest of the member registers (every member record, removed members' too): equal
    /// on two devices exactly when their registers are (up to a 64-bit collision).
    pub(super) fn members_digest(&self) -> u64 {
        let mut digest = crate::digest::Fnv64::default();
        for record in self.member_records.values() {
            digest.write(&postcard::to_stdvec(record).unwrap_or_default());
        }
        digest.finish()
    }

    /// A peer's [`SyncMessage::MembersDigest`]: registers that differ are sent whole, the
    /// same registers at most once a summary period to one peer (a member sending digests in
    /// a loop gets one answer, not one per digest).
    pub(super) fn on_members_digest(&mut self, from: DeviceId, digest: u64) {
        let mine = self.members_digest();
        if digest == mine {
            return;
        }
        let (now, period) = (self.now.mono, self.config.heartbeat_interval);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let answered_lately = p
            .members_answered
            .is_some_and(|(at, sent)| sent == mine && now.saturating_duration_since(at) < period);
        if answered_lately {
            return;
        }
        p.members_answered = Some((now, mine));
        for msg in self.member_messages() {
            self.send(from, msg);
        }
    }

    /// Every member record's registers, removed members' too, in messages of at most
    /// `max_write_bytes` (a record is under 128 bytes), for `Members`. Removed members' go
    /// too: a device that missed a member's bootstrap registers before its removal would
    /// otherwise hold that record differently for ever.
    pub(super) fn member_messages(&self) -> Vec<SyncMessage> {
        let per = (self.config.max_write_bytes() / 128).max(1);
        let members: Vec<SharedRecord> = self.member_records.values().cloned().collect();
        members
            .chunks(per)
            .map(|c| SyncMessage::Members(c.to_vec()))
            .collect()
    }

    /// Merges what `member` is known to hold into its ack (`vv` already [`nameable`], so no
    /// peer can grow the table without bound). Returns whether the ack rose (then it is
    /// persisted, and relayed).
    ///
    /// [`nameable`]: Replica::nameable
    fn merge_ack(&mut self, member: DeviceId, vv: &VersionVector) -> bool {
        let risen = self.acks.entry(member).or_default().merge(vv);
        if risen {
            let vv = self.acks.get(&member).cloned().unwrap_or_default();
            self.store(StorageCommand::SetAck { member, vv });
            self.recompute_pruning();
            self.schedule_ack();
        }
        risen
    }

    /// Acks of other members relayed by `from`. Acks only rise, and only members' count, so a
    /// relay can make pruning wait but cannot name anyone else's state into existence; an ack
    /// about this device itself is ignored (it knows its own state).
    pub(super) fn on_ack_relay(
        &mut self,
        from: DeviceId,
        acks: std::collections::BTreeMap<DeviceId, VersionVector>,
    ) {
        let me = self.config.device;
        for (member, vv) in acks {
            if member == me || member == from || !self.is_member(member) {
                continue;
            }
            let vv = self.nameable(&vv);
            if let Some(p) = self.peers.get_mut(&from) {
                p.told.entry(member).or_default().merge(&vv);
            }
            if self.merge_ack(member, &vv) {
                // A member whose acks still rise is alive, even if it is not a neighbour.
                self.last_seen.insert(member, self.now.mono);
            }
        }
    }

    /// Member registers from a peer, merged like snapshot registers. Anything but member
    /// registers refuses the message; a register stamped beyond the drift bound is skipped
    /// (the logged change it reflects arrives by catch-up once time allows; bootstrap
    /// registers, which only this message carries, are stamped zero and always pass).
    pub(super) fn on_members(&mut self, from: DeviceId, records: Vec<SharedRecord>) {
        let wall = self.now.wall_ms;
        let bad = records
            .iter()
            .any(|r| r.model != crate::model::MEMBER_MODEL || !r.fields.is_empty());
        if bad {
            return self.misbehaved(from, Refusal::MalformedResponse);
        }
        // A library has at most `MAX_MEMBERS` devices: a peer cannot make this device track
        // more (registers of devices it already knows still merge).
        let known = self.member_records.len();
        let mut room = super::MAX_MEMBERS.saturating_sub(known);
        let records: Vec<SharedRecord> = records
            .into_iter()
            .filter(|r| {
                if self.member_records.contains_key(&r.uuid) {
                    return true;
                }
                let fits = room > 0;
                room = room.saturating_sub(1);
                fits
            })
            .collect();
        let news: Vec<SharedRecord> = records
            .into_iter()
            .filter(|r| self.clock.check_drift(r.max_hlc(), wall).is_ok())
            .filter(|r| {
                let mut mine = self
                    .member_records
                    .get(&r.uuid)
                    .cloned()
                    .unwrap_or_else(|| SharedRecord::empty(&r.model, r.uuid));
                mine.merge(r)
            })
            .collect();
        if news.is_empty() {
            return;
        }
        if let Some(h) = news.iter().map(SharedRecord::max_hlc).max() {
            let _ = self.clock.observe(h, wall);
            self.store(StorageCommand::SetHlc(self.clock.last()));
        }
        for r in &news {
            self.merge_member(r);
        }
        self.store(StorageCommand::MergeShared(news));
    }

    /// The peer's connected peers; `pinned` asks for every known ack again.
    pub(super) fn on_neighbours(&mut self, from: DeviceId, list: Neighbours) {
        let Neighbours {
            version,
            peers,
            pinned,
        } = list;
        let members: std::collections::BTreeSet<DeviceId> =
            peers.into_iter().filter(|d| self.is_member(*d)).collect();
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let newer = version > p.neighbours_version;
        let changed = newer && p.neighbours != members;
        if newer {
            p.neighbours_version = version;
            p.neighbours = members;
        }
        // Honoured once per summary period at most: a peer repeating it cannot make this
        // device re-send its whole ack table at the ack rate.
        let now = self.now.mono;
        let period = self.config.heartbeat_interval;
        let pinned = pinned
            && p.resent_at
                .is_none_or(|t| now.saturating_duration_since(t) >= period);
        if pinned {
            p.resent_at = Some(now);
            // Forget what we believed it knows, except its own ack (it knows that best).
            p.told.retain(|m, _| *m == from);
        }
        if changed || pinned {
            self.schedule_ack();
        }
    }

    /// Tells every peer which peers this device is connected to (a pending debounced list is
    /// sent now, so it is not sent again).
    /// Peers told this very list already are skipped, unless `pinned`.
    pub(super) fn send_neighbours(&mut self, pinned: bool) {
        self.neighbours.due = None;
        let peers: Vec<DeviceId> = self.peers.keys().copied().collect();
        if peers.is_empty() {
            return;
        }
        self.neighbours.sent += 1;
        let version = self.neighbours.sent;
        for to in &peers {
            let Some(p) = self.peers.get_mut(to) else {
                continue;
            };
            if !pinned && p.neighbours_told == peers {
                continue;
            }
            p.neighbours_told.clone_from(&peers);
            let msg = SyncMessage::Neighbours(crate::Neighbours {
                version,
                peers: peers.clone(),
                pinned,
            });
            self.send(*to, msg);
        }
    }

    /// Tells one peer which peers this device is connected to.
    pub(super) fn send_neighbours_to(&mut self, to: DeviceId) {
        self.neighbours.sent += 1;
        let peers: Vec<DeviceId> = self.peers.keys().copied().collect();
        if let Some(p) = self.peers.get_mut(&to) {
            p.neighbours_told.clone_from(&peers);
        }
        let msg = SyncMessage::Neighbours(crate::Neighbours {
            version: self.neighbours.sent,
            peers,
            pinned: false,
        });
        self.send(to, msg);
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
