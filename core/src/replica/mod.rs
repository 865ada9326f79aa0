//! The `Replica` state machine: `handle` inputs, drain `poll_output`, wake at `poll_timeout`.
//!
//! The engine owns protocol state (clock, counters, watermarks, version vectors, acks, pending
//! requests); records live in storage and are reached only through emitted
//! [`StorageCommand`]s. `handle` is total: whatever the input, it never panics and never
//! returns an error. A misbehaving peer gets [`Output::Disconnect`] and an event; a bad local
//! command gets [`Event::CommandFailed`].

mod config;
mod event;
mod io;
mod members;
mod owned;
mod shared;
mod writes;

pub use config::{Config, FRAME_ENVELOPE};
pub use event::{CommandError, Event, Refusal, Stream};
pub use io::{Command, CommandId, Input, Output};

use crate::hlc::HlcClock;
use crate::id::DeviceId;
use crate::message::{ErrorCode, SyncMessage};
use crate::shared::{SharedKey, SharedRecord};
use crate::storage::{ReadId, Restored, StorageCommand, StorageDone};
use crate::time::{Instant, Now};
use crate::version_vector::VersionVector;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use uuid::Uuid;

/// Every this many summaries, the member registers go out again (once a minute by default).
const MEMBERS_EVERY: u64 = 12;

/// What this device knows about a connected peer.
#[derive(Debug, Default)]
struct Peer {
    /// The peer's per-owner heads from its last summary (raised by gaps seen in pushes).
    heads: BTreeMap<DeviceId, u64>,
    /// The peer's shared version vector from its last summary.
    vv: VersionVector,
    /// Storage reads pending to answer this peer's requests.
    pending_reads: usize,
    /// The peer's connected peers, from its newest `Neighbours`.
    neighbours: BTreeSet<DeviceId>,
    /// The version of that list.
    neighbours_version: u64,
    /// What this device knows the peer knows of each member's acks (what it sent the peer,
    /// what the peer sent it): relayed acks carry only what rose beyond it.
    told: BTreeMap<DeviceId, VersionVector>,
    /// The owner last fetched from this peer: the planner starts after it, so one stream
    /// that keeps failing never starves the owners after it.
    last_owner: Option<DeviceId>,
}

/// A running catch-up of one owner's device-owned records.
#[derive(Debug)]
struct OwnedFetch {
    peer: DeviceId,
    request_id: u64,
    since: u64,
    deadline: Instant,
    command: Option<CommandId>,
}

/// A running catch-up of the shared stream.
#[derive(Debug)]
struct SharedFetch {
    peer: DeviceId,
    request_id: u64,
    mode: SharedMode,
    deadline: Instant,
    command: Option<CommandId>,
    applied: u64,
}

#[derive(Debug)]
enum SharedMode {
    /// Reading the log from `since`.
    Log { since: VersionVector },
    /// Reading a snapshot; `vv` is the snapshot's claim, from its first page.
    Snapshot {
        after: Option<SharedKey>,
        vv: Option<VersionVector>,
    },
}

/// A storage read serving a peer's request.
#[derive(Debug)]
struct PendingRead {
    peer: DeviceId,
    request_id: u64,
    kind: ReadKind,
}

#[derive(Debug)]
enum ReadKind {
    Owned {
        owner: DeviceId,
        since: u64,
        upto: u64,
    },
    Log,
    Snapshot {
        vv: VersionVector,
    },
}

/// The sans-IO sync engine of one device.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    clock: HlcClock,
    now: Now,
    /// Per-owner watermarks; `watermarks[me]` is this device's own device-owned head.
    watermarks: BTreeMap<DeviceId, u64>,
    /// Shared version vector; `vv[me]` is this device's own shared head.
    vv: VersionVector,
    horizon: VersionVector,
    acks: BTreeMap<DeviceId, VersionVector>,
    /// Registers of the built-in member model, by device uuid.
    member_records: BTreeMap<Uuid, SharedRecord>,
    last_seen: BTreeMap<DeviceId, Instant>,
    peers: BTreeMap<DeviceId, Peer>,
    owned_fetches: BTreeMap<DeviceId, OwnedFetch>,
    shared_fetch: Option<SharedFetch>,
    reads: BTreeMap<ReadId, PendingRead>,
    next_read: u64,
    next_request: u64,
    heartbeat_due: Instant,
    /// The version vector at the previous summary: log entries it covers that are still
    /// unpruned have waited a whole period (the log is pinned; see `Neighbours`).
    vv_at_heartbeat: VersionVector,
    /// Summaries sent; every [`MEMBERS_EVERY`]th also carries the member registers again.
    heartbeats: u64,
    /// Versions this device's `Neighbours` lists.
    neighbours_sent: u64,
    ack_due: Option<Instant>,
    prune_due: bool,
    outputs: VecDeque<Output>,
}

impl Replica {
    /// An engine restarting from `restored` (use [`Restored::bootstrap`] for a new device).
    pub fn new(config: Config, restored: Restored, now: Now) -> Replica {
        let me = config.device;
        let clock = HlcClock::restore(me, config.max_drift_ms(), restored.hlc);
        let member_records: BTreeMap<Uuid, SharedRecord> =
            restored.members.into_iter().map(|r| (r.uuid, r)).collect();
        let mut replica = Replica {
            heartbeat_due: now.mono + config.heartbeat_interval,
            config,
            clock,
            now,
            watermarks: restored.watermarks,
            vv: restored.vv,
            horizon: restored.horizon,
            acks: restored.acks,
            member_records,
            last_seen: BTreeMap::new(),
            peers: BTreeMap::new(),
            owned_fetches: BTreeMap::new(),
            shared_fetch: None,
            reads: BTreeMap::new(),
            next_read: 0,
            next_request: 0,
            vv_at_heartbeat: VersionVector::new(),
            heartbeats: 0,
            neighbours_sent: 0,
            ack_due: None,
            prune_due: false,
            outputs: VecDeque::new(),
        };
        // Bootstrap members must be durable too (merging is idempotent on restart).
        let members: Vec<SharedRecord> = replica.member_records.values().cloned().collect();
        if !members.is_empty() {
            replica.store(StorageCommand::MergeShared(members));
        }
        replica
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.config.device
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Feeds one input. Total: never panics, never fails; drain [`Replica::poll_output`] after.
    pub fn handle(&mut self, now: Now, input: Input) {
        self.now = now;
        match input {
            Input::PeerUp { peer } => self.on_peer_up(peer),
            Input::PeerDown { peer } => self.on_peer_down(peer),
            Input::Message { from, msg } => self.on_message(from, msg),
            Input::Storage(done) => self.on_storage(done),
            Input::Command { id, cmd } => self.on_command(id, cmd),
            Input::Tick => self.on_tick(),
        }
        if self.prune_due {
            self.prune();
        }
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the engine next wants [`Input::Tick`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let fetch_deadlines = self
            .owned_fetches
            .values()
            .map(|f| f.deadline)
            .chain(self.shared_fetch.as_ref().map(|f| f.deadline));
        std::iter::once(self.heartbeat_due)
            .chain(self.ack_due)
            .chain(fetch_deadlines)
            .min()
    }

    /// The current member set.
    pub fn members(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.member_records
            .values()
            .filter(|r| crate::storage::is_member_record(r))
            .map(crate::storage::member_of)
    }

    /// Whether `device` is a member.
    pub fn is_member(&self, device: DeviceId) -> bool {
        self.member_records
            .get(&device.0)
            .is_some_and(crate::storage::is_member_record)
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.peers.keys().copied()
    }

    /// The watermark of `owner` (this device's own head for itself).
    pub fn watermark(&self, owner: DeviceId) -> u64 {
        self.watermarks.get(&owner).copied().unwrap_or(0)
    }

    /// Every non-zero watermark, in owner order (this device's own head included).
    pub fn watermarks(&self) -> impl Iterator<Item = (DeviceId, u64)> + '_ {
        self.watermarks
            .iter()
            .filter(|(_, s)| **s > 0)
            .map(|(o, s)| (*o, *s))
    }

    /// The shared version vector.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The pruned horizon of the shared log.
    pub fn horizon(&self) -> &VersionVector {
        &self.horizon
    }

    /// The last HLC issued or observed.
    pub fn hlc(&self) -> crate::hlc::Hlc {
        self.clock.last()
    }

    /// Storage reads in flight (bounded by peers × `max_pending_reads_per_peer`).
    pub fn pending_reads(&self) -> usize {
        self.reads.len()
    }

    /// Whether a catch-up is running.
    pub fn is_fetching(&self) -> bool {
        !self.owned_fetches.is_empty() || self.shared_fetch.is_some()
    }

    // ---------------------------------------------------------------- outputs

    fn store(&mut self, cmd: StorageCommand) {
        self.outputs.push_back(Output::Storage(cmd));
    }

    fn send(&mut self, to: DeviceId, msg: SyncMessage) {
        self.outputs.push_back(Output::Send { to, msg });
    }

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    fn broadcast(&mut self, msg: SyncMessage) {
        let peers: Vec<DeviceId> = self.peers.keys().copied().collect();
        if let Some((last, rest)) = peers.split_last() {
            for p in rest {
                self.send(*p, msg.clone());
            }
            self.send(*last, msg);
        }
    }

    fn next_request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn next_read_id(&mut self) -> ReadId {
        self.next_read += 1;
        ReadId(self.next_read)
    }

    fn error_reply(&mut self, to: DeviceId, request_id: Option<u64>, code: ErrorCode, msg: &str) {
        self.send(
            to,
            SyncMessage::Error {
                request_id,
                code,
                message: msg.to_owned(),
            },
        );
    }

    /// Refuses a misbehaving peer: an event and a disconnect; nothing it sent is applied.
    fn misbehaved(&mut self, peer: DeviceId, reason: Refusal) {
        self.event(Event::PeerMisbehaved { peer, reason });
        self.outputs.push_back(Output::Disconnect { peer, reason });
        self.on_peer_down(peer);
    }

    fn deadline(&self) -> Instant {
        self.now.mono + self.config.request_timeout
    }

    // ---------------------------------------------------------------- sessions

    fn heartbeat(&self) -> SyncMessage {
        let mut heads = self.watermarks.clone();
        heads.retain(|_, s| *s > 0);
        SyncMessage::Heartbeat {
            heads,
            vv: self.vv.clone(),
        }
    }

    fn on_peer_up(&mut self, peer: DeviceId) {
        if peer == self.config.device {
            return;
        }
        if !self.is_member(peer) {
            self.event(Event::PeerMisbehaved {
                peer,
                reason: Refusal::NotMember,
            });
            self.outputs.push_back(Output::Disconnect {
                peer,
                reason: Refusal::NotMember,
            });
            return;
        }
        self.last_seen.insert(peer, self.now.mono);
        if self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(peer, Peer::default());
        self.event(Event::PeerConnected(peer));
        let hb = self.heartbeat();
        self.send(peer, hb);
        self.send(
            peer,
            SyncMessage::AckSharedChanges {
                acker: self.config.device,
                vv: self.vv.clone(),
            },
        );
        if let Some(p) = self.peers.get_mut(&peer) {
            p.told.insert(self.config.device, self.vv.clone());
        }
        // The member registers, bootstrap ones included: those exist only as registers (never
        // in the log), so a device that catches up from the log would otherwise never learn
        // them, and refuse their connections.
        let members: Vec<SharedRecord> = self.member_records.values().cloned().collect();
        self.send(peer, SyncMessage::Members(members));
        // The new peer learns who this device reaches; the others, that it reaches one more.
        self.send_neighbours(false);
        // And every ack this device knows that the new peer may not.
        self.schedule_ack();
    }

    fn on_peer_down(&mut self, peer: DeviceId) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.last_seen.insert(peer, self.now.mono);
        self.event(Event::PeerDisconnected(peer));
        self.send_neighbours(false);
        let owners: Vec<DeviceId> = self
            .owned_fetches
            .iter()
            .filter(|(_, f)| f.peer == peer)
            .map(|(o, _)| *o)
            .collect();
        for o in owners {
            if let Some(f) = self.owned_fetches.remove(&o) {
                self.fail_command(f.command, CommandError::Interrupted("peer disconnected"));
            }
        }
        if self.shared_fetch.as_ref().is_some_and(|f| f.peer == peer) {
            if let Some(f) = self.shared_fetch.take() {
                self.fail_command(f.command, CommandError::Interrupted("peer disconnected"));
            }
        }
        self.reads.retain(|_, r| r.peer != peer);
    }

    fn fail_command(&mut self, id: Option<CommandId>, reason: CommandError) {
        if let Some(id) = id {
            self.event(Event::CommandFailed { id, reason });
        }
    }

    fn on_message(&mut self, from: DeviceId, msg: SyncMessage) {
        if from == self.config.device {
            return;
        }
        if !self.is_member(from) {
            self.event(Event::PeerMisbehaved {
                peer: from,
                reason: Refusal::NotMember,
            });
            self.outputs.push_back(Output::Disconnect {
                peer: from,
                reason: Refusal::NotMember,
            });
            self.on_peer_down(from);
            return;
        }
        self.last_seen.insert(from, self.now.mono);
        if !self.peers.contains_key(&from) {
            // A message without PeerUp: the transport connected; treat it as up.
            self.on_peer_up(from);
        }
        match msg {
            SyncMessage::Heartbeat { heads, vv } => self.on_heartbeat(from, heads, vv),
            // A push holds the sender's own changes: their owner is the authenticated sender.
            SyncMessage::StateChange(c) => self.on_owned_push(from, vec![c.into_record(from)]),
            SyncMessage::StateBatch(cs) => {
                let records = cs.into_iter().map(|c| c.into_record(from)).collect();
                self.on_owned_push(from, records)
            }
            SyncMessage::StateRequest {
                request_id,
                owner,
                since,
                limit,
            } => self.serve_owned(from, request_id, owner, since, limit),
            SyncMessage::StateResponse {
                request_id,
                owner,
                since,
                through,
                records,
                has_more,
            } => {
                let records = records.into_iter().map(|c| c.into_record(owner)).collect();
                self.on_owned_response(from, request_id, owner, since, through, records, has_more)
            }
            SyncMessage::SharedChange(c) => self.on_shared_push(from, vec![c]),
            SyncMessage::SharedChangeBatch(cs) => self.on_shared_push(from, cs),
            SyncMessage::SharedChangeRequest {
                request_id,
                since,
                limit,
            } => self.serve_log(from, request_id, since, limit),
            SyncMessage::SharedChangeResponse {
                request_id,
                entries,
                has_more,
                truncated,
            } => self.on_log_response(from, request_id, entries, has_more, truncated),
            SyncMessage::AckSharedChanges { acker, vv } => self.on_ack(from, acker, vv),
            SyncMessage::SharedSnapshotRequest {
                request_id,
                after,
                limit,
            } => self.serve_snapshot(from, request_id, after, limit),
            SyncMessage::SharedSnapshotResponse {
                request_id,
                vv,
                records,
                has_more,
            } => self.on_snapshot_response(from, request_id, vv, records, has_more),
            SyncMessage::Error {
                request_id,
                code,
                message,
            } => self.on_error(from, request_id, code, message),
            SyncMessage::AckRelay(acks) => self.on_ack_relay(from, acks),
            SyncMessage::Members(records) => self.on_members(from, records),
            SyncMessage::Neighbours {
                version,
                peers,
                pinned,
            } => self.on_neighbours(from, version, peers, pinned),
            SyncMessage::StateRelay { owner, records } => {
                let records = records.into_iter().map(|c| c.into_record(owner)).collect();
                self.on_owned_relay(from, owner, records)
            }
        }
    }

    fn on_heartbeat(&mut self, from: DeviceId, heads: BTreeMap<DeviceId, u64>, vv: VersionVector) {
        let me = self.config.device;
        // A peer that knows a higher head of our own counters than we do: our database was
        // lost or restored from an old backup. Raise the counters past it so new changes are
        // never mistaken for old ones.
        if let Some(&head) = heads.get(&me) {
            if head > self.watermark(me) {
                self.watermarks.insert(me, head);
                self.store(StorageCommand::SetWatermark {
                    owner: me,
                    seq: head,
                });
                self.event(Event::OwnHeadRaised { seq: head });
            }
        }
        // The summary's version vector is a cumulative ack from the authenticated sender (it
        // sent it after the entries were durable, like an ack), so a lost ack is repaired by
        // the next summary instead of pinning the log until the next write.
        self.on_ack(from, from, vv.clone());
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.heads = heads;
            peer.vv = vv;
        }
        self.plan_owned(from);
        self.plan_shared(from);
    }

    fn on_error(
        &mut self,
        from: DeviceId,
        request_id: Option<u64>,
        code: ErrorCode,
        message: String,
    ) {
        let Some(rid) = request_id else { return };
        let owner = self
            .owned_fetches
            .iter()
            .find(|(_, f)| f.peer == from && f.request_id == rid)
            .map(|(o, _)| *o);
        if let Some(o) = owner {
            if let Some(f) = self.owned_fetches.remove(&o) {
                self.fail_command(
                    f.command,
                    CommandError::PeerError(format!("{code:?}: {message}")),
                );
            }
            return;
        }
        if self
            .shared_fetch
            .as_ref()
            .is_some_and(|f| f.peer == from && f.request_id == rid)
        {
            if let Some(f) = self.shared_fetch.take() {
                self.fail_command(
                    f.command,
                    CommandError::PeerError(format!("{code:?}: {message}")),
                );
            }
        }
    }

    // ---------------------------------------------------------------- storage

    fn on_storage(&mut self, done: StorageDone) {
        let id = match &done {
            StorageDone::Owned { id, .. }
            | StorageDone::Log { id, .. }
            | StorageDone::Snapshot { id, .. }
            | StorageDone::Failed { id } => *id,
        };
        let Some(read) = self.reads.remove(&id) else {
            return; // unknown or cancelled
        };
        if let Some(p) = self.peers.get_mut(&read.peer) {
            p.pending_reads = p.pending_reads.saturating_sub(1);
        } else {
            return;
        }
        match (read.kind, done) {
            (ReadKind::Owned { owner, since, upto }, StorageDone::Owned { records, more, .. }) => {
                self.answer_owned(
                    read.peer,
                    read.request_id,
                    owner,
                    since,
                    upto,
                    records,
                    more,
                )
            }
            (ReadKind::Log, StorageDone::Log { entries, more, .. }) => self.send(
                read.peer,
                SyncMessage::SharedChangeResponse {
                    request_id: read.request_id,
                    entries,
                    has_more: more,
                    truncated: false,
                },
            ),
            (ReadKind::Snapshot { vv }, StorageDone::Snapshot { records, more, .. }) => self.send(
                read.peer,
                SyncMessage::SharedSnapshotResponse {
                    request_id: read.request_id,
                    vv,
                    // Hidden registers carry nothing the requester can see or needs: without
                    // them a record is never larger than its visible fields.
                    records: records
                        .into_iter()
                        .map(SharedRecord::without_hidden)
                        .collect(),
                    has_more: more,
                },
            ),
            _ => self.error_reply(
                read.peer,
                Some(read.request_id),
                ErrorCode::Busy,
                "storage read failed",
            ),
        }
    }

    /// Registers a read serving `peer`, or answers `Busy` when too many are pending.
    fn begin_read(&mut self, peer: DeviceId, request_id: u64, kind: ReadKind) -> Option<ReadId> {
        let limit = self.config.max_pending_reads_per_peer;
        let p = self.peers.get_mut(&peer)?;
        if p.pending_reads >= limit {
            self.event(Event::PeerMisbehaved {
                peer,
                reason: Refusal::Busy,
            });
            self.error_reply(
                peer,
                Some(request_id),
                ErrorCode::Busy,
                "too many pending requests",
            );
            return None;
        }
        p.pending_reads += 1;
        let id = self.next_read_id();
        self.reads.insert(
            id,
            PendingRead {
                peer,
                request_id,
                kind,
            },
        );
        Some(id)
    }

    fn page_limit(&self, asked: u32) -> u32 {
        asked.clamp(1, self.config.max_page_records.max(1))
    }

    // ---------------------------------------------------------------- timers

    fn on_tick(&mut self) {
        let now = self.now.mono;
        if self.ack_due.is_some_and(|t| t <= now) {
            self.ack_due = None;
            self.send_acks();
        }
        if self.heartbeat_due <= now {
            self.heartbeat_due = now + self.config.heartbeat_interval;
            let hb = self.heartbeat();
            self.broadcast(hb);
            self.heartbeats += 1;
            if self.heartbeats % MEMBERS_EVERY == 0 && !self.peers.is_empty() {
                // Anti-entropy for the member registers (a lost `Members` is repaired).
                let members: Vec<SharedRecord> = self.member_records.values().cloned().collect();
                self.broadcast(SyncMessage::Members(members));
            }
            // Entries held since the previous summary and still unpruned: some ack did not
            // arrive (a relayed one may have been lost); ask the peers to relay them all again.
            let pinned = self
                .vv_at_heartbeat
                .iter()
                .any(|(o, s)| self.horizon.get(o) < s);
            if pinned {
                self.send_neighbours(true);
            }
            self.vv_at_heartbeat = self.vv.clone();
            self.recompute_pruning();
        }
        let expired: Vec<DeviceId> = self
            .owned_fetches
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(o, _)| *o)
            .collect();
        for o in expired {
            if let Some(f) = self.owned_fetches.remove(&o) {
                self.fail_command(f.command, CommandError::Interrupted("request timed out"));
            }
        }
        if self
            .shared_fetch
            .as_ref()
            .is_some_and(|f| f.deadline <= now)
        {
            if let Some(f) = self.shared_fetch.take() {
                self.fail_command(f.command, CommandError::Interrupted("request timed out"));
            }
        }
    }

    // ---------------------------------------------------------------- commands

    fn on_command(&mut self, id: CommandId, cmd: Command) {
        match cmd {
            Command::RequestState { peer, owner, since } => {
                self.request_state(id, peer, owner, since)
            }
            Command::RequestSharedChanges { peer, since } => self.request_shared(id, peer, since),
            Command::Batch(cmds) => self.write_batch(id, cmds),
            write => self.write_batch(id, vec![write]),
        }
    }
}

#[cfg(test)]
mod tests;
