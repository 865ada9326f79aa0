//! The device-owned stream: local writes, owner pushes, catch-up requests and responses.

use super::{
    CommandError, CommandId, Event, OwnedFetch, OwnedRange, OwnedServe, ReadKind, Refusal, Replica,
    ServeWindow, Stream,
};
use crate::id::DeviceId;
use crate::message::{ErrorCode, PagesReceived, StateRequest, StateResponse, SyncMessage};
use crate::model::ModelKind;
use crate::owned::{OwnedChange, OwnedRecord};
use crate::storage::StorageCommand;
use std::ops::Bound;

impl Replica {
    /// Checks one incoming device-owned record; `Err` means the sender misbehaved, `Ok(false)`
    /// that the record names a model this device knows as shared (refused, not stored).
    ///
    /// A model this device does not know at all is kept: device-owned payloads are opaque to
    /// the engine, so the record is stored, relayed and acknowledged like any other, and the
    /// application finds it once it registers the model (rolling upgrades). Refusing it would
    /// stop the owner's whole stream at this device, and every device behind it.
    fn check_owned(&self, r: &OwnedRecord) -> Result<bool, Refusal> {
        // Unreachable from the wire today (a push's owner is its sender, and this device never
        // fetches its own stream); kept so no future path can overwrite this device's records.
        if r.owner == self.config.device {
            return Err(Refusal::ForeignVersionOfOwnRecord);
        }
        if r.model.len() > crate::MAX_MODEL_NAME {
            return Err(Refusal::MalformedResponse);
        }
        Ok(self.config.models.kind(&r.model) != Some(ModelKind::Shared))
    }

    /// Real-time pushes of the sender's own records (their owner is `from` by construction).
    pub(super) fn on_owned_push(&mut self, from: DeviceId, records: Vec<OwnedRecord>) {
        self.apply_owned_realtime(from, from, records);
    }

    /// Real-time changes of `owner` relayed by `from`. This device's own records are never
    /// taken back, and a non-member's are not taken at all.
    pub(super) fn on_owned_relay(
        &mut self,
        from: DeviceId,
        owner: DeviceId,
        records: Vec<OwnedRecord>,
    ) {
        if owner == self.config.device || !self.is_member(owner) {
            return;
        }
        if !records.windows(2).all(|w| w[0].seq < w[1].seq) {
            return self.misbehaved(from, Refusal::MalformedResponse);
        }
        self.apply_owned_realtime(from, owner, records);
    }

    /// Applies real-time changes of `owner` received from `from` (the owner itself or a
    /// relay), then relays the newly applied ones onwards.
    ///
    /// Only the part contiguous with this device's watermark is applied; what lies beyond a
    /// gap is dropped and fetched by catch-up from `from` (which holds it: an owner holds its
    /// whole stream, a relay relays only what it holds contiguously). Holding it instead would
    /// strand it: catch-up serves a stream only up to the watermark, so if the owner were gone
    /// for good, no other device could ever get what this one held above its gap. So every
    /// device holds a prefix of each owner's stream, and whatever any live device holds, every
    /// live device can fetch from it.
    fn apply_owned_realtime(
        &mut self,
        from: DeviceId,
        owner: DeviceId,
        mut records: Vec<OwnedRecord>,
    ) {
        for r in &records {
            match self.check_owned(r) {
                Err(reason) => return self.misbehaved(from, reason),
                Ok(false) => {
                    self.event(Event::ChangeRefused {
                        from,
                        origin: r.owner,
                        reason: Refusal::UnknownModel,
                    });
                    self.error_reply(from, None, ErrorCode::UnknownModel, &r.model);
                    return;
                }
                Ok(true) => {}
            }
        }
        let start = self.watermark(owner);
        let mut wm = start;
        let contiguous = records
            .iter()
            .take_while(|r| {
                let ok = r.seq <= wm || wm.checked_add(1) == Some(r.seq);
                wm = wm.max(r.seq);
                ok
            })
            .count();
        let beyond = records.iter().skip(contiguous).map(|r| r.seq).max();
        records.truncate(contiguous);
        let wm = records.iter().map(|r| r.seq).fold(start, u64::max);
        let fresh: Vec<OwnedRecord> = records.into_iter().filter(|r| r.seq > start).collect();
        if !fresh.is_empty() {
            self.observe_owned_stamps(&fresh);
            let changed: Vec<Event> = fresh
                .iter()
                .map(|r| Event::RecordChanged {
                    model: r.model.clone(),
                    uuid: r.uuid,
                    by: r.owner,
                })
                .collect();
            let targets = self.relay_peers(from, owner, wm);
            let relay = if targets.is_empty() {
                Vec::new()
            } else {
                fresh.clone()
            };
            self.store(StorageCommand::PutOwned(fresh));
            self.watermarks.insert(owner, wm);
            self.store(StorageCommand::SetWatermark { owner, seq: wm });
            // After the writes: an event reports only what is stored (see `Event`).
            for e in changed {
                self.event(e);
            }
            self.relay_owned(owner, &targets, relay);
        }
        if let Some(head) = beyond.filter(|h| *h > wm) {
            // `from` holds everything up to what it sent (see above): fetch the gap from it.
            if let Some(p) = self.peers.get_mut(&from) {
                let h = p.heads.entry(owner).or_insert(0);
                *h = (*h).max(head);
            }
            self.plan_owned(from);
        }
    }

    /// The peers a real-time change of `owner` up to `seq`, received from `from`, is relayed
    /// to: connected peers other than the sender and the owner that are not connected to the
    /// owner themselves (they get it first-hand) and are not known to hold it already.
    fn relay_peers(&self, from: DeviceId, owner: DeviceId, seq: u64) -> Vec<DeviceId> {
        self.peers
            .iter()
            .filter(|(p, peer)| {
                **p != from
                    && **p != owner
                    && !peer.neighbours.contains(&owner)
                    && peer.heads.get(&owner).is_none_or(|h| *h < seq)
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Relays newly contiguous changes of `owner` to `targets` (written before this send:
    /// write-ahead).
    fn relay_owned(&mut self, owner: DeviceId, targets: &[DeviceId], records: Vec<OwnedRecord>) {
        let budget = self.config.relay_budget();
        for chunk in super::writes::chunks(records, budget, OwnedRecord::budget_size) {
            let msg = SyncMessage::StateRelay(crate::StateRelay {
                owner,
                records: chunk.into_iter().map(OwnedChange::from).collect(),
            });
            for to in targets {
                self.send(*to, msg.clone());
            }
        }
    }

    /// Device-owned changes are ordered by seq, not HLC: a stamp beyond the drift bound is
    /// simply not adopted (the change still applies).
    fn observe_owned_stamp(&mut self, r: &OwnedRecord) {
        if let Err(crate::ClockError::TooFarAhead { ahead_ms, .. }) =
            self.clock.observe(r.hlc, self.now.wall_ms)
        {
            self.event(Event::ClockSkew {
                device: r.owner,
                ahead_ms,
            });
        }
    }

    /// Observes the stamps of `records` and persists the clock if it moved, so the clock
    /// never goes back across a restart (causality survives crashes, not only own stamps).
    fn observe_owned_stamps(&mut self, records: &[OwnedRecord]) {
        let before = self.clock.last();
        for r in records {
            self.observe_owned_stamp(r);
        }
        if self.clock.last() > before {
            self.store(StorageCommand::SetHlc(self.clock.last()));
        }
    }

    /// Serves a `StateRequest` for any owner (relay), up to this device's watermark of that
    /// owner, so a response is never gapped: a stream of pages, each read when the previous
    /// one is sent, while the requester's window allows ([`Replica::continue_serve`]).
    pub(super) fn serve_owned(&mut self, from: DeviceId, request: StateRequest) {
        let StateRequest {
            request_id,
            owner,
            since,
            limit,
            window,
        } = request;
        // A copy of the request being served (a network that duplicates) changes nothing:
        // starting again would take a read begun for the first copy as a page of the second.
        let serving = self.serving.owned.get(&(from, owner));
        if serving.is_some_and(|s| s.request_id == request_id) {
            return;
        }
        // A new request from the same peer for the same owner ends the previous stream (the
        // requester restarted it, or gave up on it).
        self.serving.owned.remove(&(from, owner));
        if since >= self.watermark(owner) {
            self.send(
                from,
                SyncMessage::StateResponse(crate::StateResponse {
                    request_id,
                    owner,
                    since,
                    through: since,
                    records: Vec::new(),
                    has_more: false,
                }),
            );
            return;
        }
        // Streams held for one peer are bounded like its reads: each is idle or holds one.
        let held = self
            .serving
            .owned
            .range((from, DeviceId::NIL)..)
            .take_while(|((p, _), _)| *p == from);
        if held.count() >= self.config.max_pending_reads_per_peer {
            self.event(Event::PeerMisbehaved {
                peer: from,
                reason: Refusal::Busy,
            });
            return self.error_reply(
                from,
                Some(request_id),
                ErrorCode::Busy,
                "too many catch-ups in progress",
            );
        }
        self.serving.owned.insert(
            (from, owner),
            OwnedServe {
                request_id,
                since,
                limit: self.page_limit(limit),
                flow: ServeWindow::new(window),
            },
        );
        self.continue_serve(from, owner);
    }

    /// Reads the next page of the stream served to `peer` for `owner`, unless a read is
    /// pending or the requester's window is full: `window` pages, or
    /// [`Config::serve_window_bytes`] (always at least one page), sent and not yet reported
    /// received.
    ///
    /// [`Config::serve_window_bytes`]: crate::Config::serve_window_bytes
    fn continue_serve(&mut self, peer: DeviceId, owner: DeviceId) {
        let upto = self.watermark(owner);
        let byte_budget = self.config.serve_window_bytes;
        let Some(s) = self.serving.owned.get(&(peer, owner)) else {
            return;
        };
        if !s.flow.may_read(byte_budget) {
            return;
        }
        let (request_id, since, limit) = (s.request_id, s.since, s.limit);
        let kind = ReadKind::Owned(OwnedRange { owner, since, upto });
        let Some(id) = self.begin_read(peer, request_id, kind) else {
            self.serving.owned.remove(&(peer, owner));
            return;
        };
        if let Some(s) = self.serving.owned.get_mut(&(peer, owner)) {
            s.flow.reading = true;
        }
        let max_bytes = self.config.page_bytes;
        self.store(StorageCommand::ReadOwned {
            id,
            owner,
            after: since,
            upto,
            limit,
            max_bytes,
        });
    }

    /// Sends a page read from storage, then reads the next one if the stream goes on.
    pub(super) fn answer_owned(
        &mut self,
        peer: DeviceId,
        request_id: u64,
        range: OwnedRange,
        records: Vec<OwnedRecord>,
        more: bool,
    ) {
        let OwnedRange { owner, since, upto } = range;
        let Some(s) = self
            .serving
            .owned
            .get_mut(&(peer, owner))
            .filter(|s| s.request_id == request_id)
        else {
            return; // the stream ended meanwhile (a newer request replaced it)
        };
        let (through, has_more) = match records.last() {
            Some(last) if more => (last.seq, true),
            _ => (upto, false),
        };
        s.since = through;
        s.flow
            .sent_page(records.iter().map(OwnedRecord::budget_size).sum());
        self.send(
            peer,
            SyncMessage::StateResponse(crate::StateResponse {
                request_id,
                owner,
                since,
                through,
                records: records
                    .into_iter()
                    .inspect(|r| debug_assert_eq!(r.owner, owner, "storage served another owner"))
                    .map(OwnedChange::from)
                    .collect(),
                has_more,
            }),
        );
        if has_more {
            self.continue_serve(peer, owner);
        } else {
            self.serving.owned.remove(&(peer, owner));
        }
    }

    /// `PagesReceived`: the requester's window moved; read on. A count for a stream that
    /// ended, or below one already reported, changes nothing; one above the pages sent is
    /// taken as all of them.
    pub(super) fn on_pages_received(&mut self, from: DeviceId, received: PagesReceived) {
        let PagesReceived { request_id, pages } = received;
        let owned = self
            .serving
            .owned
            .range_mut((from, DeviceId::NIL)..)
            .take_while(|((p, _), _)| *p == from)
            .find(|(_, s)| s.request_id == request_id);
        if let Some((&key, s)) = owned {
            s.flow.received(pages);
            return self.continue_serve(key.0, key.1);
        }
        if let Some(s) = self.shared_serve(from, request_id) {
            s.flow.received(pages);
            self.continue_shared_serve(from);
        }
    }

    /// Applies a catch-up page after checking it against the request it answers.
    pub(super) fn on_owned_response(&mut self, from: DeviceId, page: StateResponse) {
        let StateResponse {
            request_id,
            owner,
            since,
            through,
            records,
            has_more,
        } = page;
        let records: Vec<OwnedRecord> = records.into_iter().map(|c| c.into_record(owner)).collect();
        let Some(fetch) = self.fetches.owned.get(&owner) else {
            return; // stale or unsolicited: ignore
        };
        if fetch.peer != from || fetch.request_id != request_id {
            return;
        }
        if since != fetch.since {
            // Not the page after the last one applied: a repeat of an earlier one (ignored), or
            // one that overtook or outlived its predecessor (a network that reorders or loses):
            // the pages in between are not coming, so the stream starts again from the last
            // page applied. Over one ordered connection this never happens.
            if since > fetch.since {
                self.restart_owned_fetch(owner);
            }
            return;
        }
        let well_formed = records.len() <= self.config.page_records as usize
            && through >= since
            && (!has_more || through > since)
            && records.windows(2).all(|w| w[0].seq < w[1].seq)
            && records.iter().all(|r| r.seq > since && r.seq <= through);
        if !well_formed {
            return self.misbehaved(from, Refusal::MalformedResponse);
        }
        for r in &records {
            match self.check_owned(r) {
                Err(reason) => return self.misbehaved(from, reason),
                Ok(false) => {
                    // Do not advance the watermark over a record we cannot store.
                    self.event(Event::ChangeRefused {
                        from,
                        origin: owner,
                        reason: Refusal::UnknownModel,
                    });
                    if let Some(f) = self.fetches.owned.remove(&owner) {
                        self.fail_command(
                            f.command,
                            CommandError::PeerError("unknown model".into()),
                        );
                    }
                    return;
                }
                Ok(true) => {}
            }
        }
        if has_more {
            // Move the window *before* any write of this page (stamps, records, watermark):
            // the report depends on none of them being durable (it acknowledges nothing and
            // carries no stamp), so the driver sends it at once and the responder reads on
            // while this page commits. Memory stays bounded all the same: the responder keeps
            // at most a window in flight, and this device reads no further frames than its
            // inbound budget while the disk catches up.
            let deadline = self.deadline();
            let mut pages = 0;
            if let Some(f) = self.fetches.owned.get_mut(&owner) {
                f.since = through;
                f.deadline = deadline;
                f.pages += 1;
                pages = f.pages;
            }
            self.send(
                from,
                SyncMessage::PagesReceived(crate::PagesReceived { request_id, pages }),
            );
        }
        self.observe_owned_stamps(&records);
        let applied = records.len();
        let keys = changed_keys(records.iter().map(|r| (&r.model, r.uuid)));
        if !records.is_empty() {
            self.store(StorageCommand::PutOwned(records));
        }
        let wm = self.watermark(owner);
        if since <= wm && through > wm {
            self.watermarks.insert(owner, through);
            self.store(StorageCommand::SetWatermark {
                owner,
                seq: through,
            });
        }
        if !keys.is_empty() {
            // After the page's writes (see `Event`): the application re-reads these keys.
            self.event(Event::RecordsChanged {
                peer: from,
                stream: Stream::Owned(owner),
                keys,
            });
        }
        let target = self
            .peers
            .get(&from)
            .and_then(|p| p.heads.get(&owner).copied());
        self.event(Event::CatchUpProgress {
            peer: from,
            stream: Stream::Owned(owner),
            applied,
            position: self.watermark(owner),
            target,
        });
        if !has_more {
            if let Some(f) = self.fetches.owned.remove(&owner) {
                if let Some(id) = f.command {
                    self.event(Event::CommandDone(id));
                }
            }
            if self.frozen.contains_key(&owner) {
                // A removed member's records may have changed: a new digest to compare.
                self.refresh_frozen();
            }
            self.event(Event::CaughtUp {
                peer: from,
                stream: Stream::Owned(owner),
            });
            self.plan_owned(from);
        }
    }

    /// Starts the next device-owned catch-up from `peer`, if it is ahead for some owner and
    /// no catch-up from it is running (one per peer and stream; one peer per owner).
    pub(super) fn plan_owned(&mut self, peer: DeviceId) {
        if self.fetches.owned.values().any(|f| f.peer == peer) {
            return;
        }
        let me = self.config.device;
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        // Round robin over owners, starting after the last one fetched from this peer.
        let (after, upto) = match p.last_owner {
            Some(last) => (
                p.heads.range((Bound::Excluded(last), Bound::Unbounded)),
                p.heads.range(..=last),
            ),
            None => (p.heads.range(..), p.heads.range(..DeviceId::NIL)),
        };
        let next = after.chain(upto).find(|(owner, head)| {
            **owner != me
                && **head > self.watermark(**owner)
                && !self.fetches.owned.contains_key(owner)
        });
        if let Some((&owner, _)) = next {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.last_owner = Some(owner);
            }
            let since = self.watermark(owner);
            self.start_owned_fetch(peer, owner, since, None);
        }
    }

    pub(super) fn start_owned_fetch(
        &mut self,
        peer: DeviceId,
        owner: DeviceId,
        since: u64,
        command: Option<CommandId>,
    ) {
        let request_id = self.next_request_id();
        let deadline = self.deadline();
        self.fetches.owned.insert(
            owner,
            OwnedFetch {
                peer,
                request_id,
                since,
                deadline,
                command,
                pages: 0,
            },
        );
        let limit = self.config.page_records;
        let window = self.config.catch_up_window;
        self.send(
            peer,
            SyncMessage::StateRequest(crate::StateRequest {
                request_id,
                owner,
                since,
                limit,
                window,
            }),
        );
    }

    /// Starts the running catch-up of `owner` again from its last page applied, from the same
    /// peer, under a new request id (pages still arriving for the old one are ignored, and the
    /// responder ends the old stream when the new request arrives).
    fn restart_owned_fetch(&mut self, owner: DeviceId) {
        if let Some(f) = self.fetches.owned.remove(&owner) {
            self.start_owned_fetch(f.peer, owner, f.since, f.command);
        }
    }

    /// `Command::RequestState`. A request for the stream the engine is already catching up
    /// from that peer (from the watermark, with no command attached) joins that catch-up: the
    /// command completes when it does.
    pub(super) fn request_state(
        &mut self,
        id: CommandId,
        peer: DeviceId,
        owner: DeviceId,
        since: Option<u64>,
    ) {
        if let Some(f) = self.fetches.owned.get_mut(&owner) {
            if f.peer == peer && f.command.is_none() && since.is_none() {
                f.command = Some(id);
                return;
            }
        }
        let reason = if !self.peers.contains_key(&peer) {
            Some(CommandError::PeerNotConnected(peer))
        } else if owner == self.config.device {
            Some(CommandError::OwnRecords)
        } else if self.fetches.owned.contains_key(&owner)
            || self.fetches.owned.values().any(|f| f.peer == peer)
        {
            Some(CommandError::AlreadyFetching)
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.event(Event::CommandFailed { id, reason });
        }
        let since = since.unwrap_or_else(|| self.watermark(owner));
        self.start_owned_fetch(peer, owner, since, Some(id));
    }
}

/// The keys of a page's records, each once, in page order (a page may hold two versions of
/// one record only from a misbehaving peer, but the event stays bounded by the page anyway).
pub(super) fn changed_keys<'a>(
    records: impl Iterator<Item = (&'a String, uuid::Uuid)>,
) -> Vec<(String, uuid::Uuid)> {
    let mut seen = std::collections::BTreeSet::new();
    records
        .filter(|(m, u)| seen.insert((*m, *u)))
        .map(|(m, u)| (m.clone(), u))
        .collect()
}

#[cfg(test)]
mod feed_tests {
    //! The change feed at the engine's outputs: catch-up reports its keys after its writes.
    use crate::{
        Command, CommandId, Config, DeviceId, Event, Input, Instant, ModelRegistry, Now, Output,
        OwnedChange, Restored, SharedChange, StorageCommand, Stream, SyncMessage, VersionVector,
    };
    use uuid::Uuid;

    const A: DeviceId = DeviceId::from_u128(1);
    const B: DeviceId = DeviceId::from_u128(2);

    fn now() -> Now {
        Now::new(Instant::ZERO, 1_700_000_000_000)
    }

    /// B, connected to A, with `cmd` issued; returns B and the request it sent A.
    fn fetching(cmd: Command) -> (super::Replica, SyncMessage) {
        let config = Config::new(B, ModelRegistry::spacedrive());
        let mut b = super::Replica::new(config, Restored::bootstrap([A, B]), now());
        b.handle(now(), Input::PeerUp { peer: A });
        b.handle(
            now(),
            Input::Command {
                id: CommandId(1),
                cmd,
            },
        );
        let request = drain(&mut b).into_iter().find_map(|o| match o {
            Output::Send {
                msg:
                    msg @ (SyncMessage::StateRequest(crate::StateRequest { .. })
                    | SyncMessage::SharedChangeRequest(crate::SharedChangeRequest { .. })),
                ..
            } => Some(msg),
            _ => None,
        });
        (b, request.expect("B asks A"))
    }

    fn drain(r: &mut super::Replica) -> Vec<Output> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn position(outs: &[Output], f: impl Fn(&Output) -> bool) -> usize {
        outs.iter().position(f).expect("emitted")
    }

    #[test]
    fn an_owned_catch_up_page_reports_its_keys_after_its_writes() {
        let cmd = Command::RequestState {
            peer: A,
            owner: A,
            since: None,
        };
        let (mut b, request) = fetching(cmd);
        let SyncMessage::StateRequest(crate::StateRequest { request_id, .. }) = request else {
            panic!("{request:?}")
        };
        // Three versions, two records: record 10 is named once.
        let records = [(1, 10u128), (2, 11), (3, 10)]
            .into_iter()
            .map(|(seq, u)| OwnedChange {
                seq,
                time_ms: 1_700_000_000_000,
                counter: 0,
                model: "entry".into(),
                uuid: Uuid::from_u128(u),
                data: Some(vec![1]),
            })
            .collect();
        let msg = SyncMessage::StateResponse(crate::StateResponse {
            request_id,
            owner: A,
            since: 0,
            through: 3,
            records,
            has_more: false,
        });
        b.handle(now(), Input::Message { from: A, msg });
        let outs = drain(&mut b);
        let put = position(&outs, |o| {
            matches!(o, Output::Storage(StorageCommand::PutOwned(_)))
        });
        let watermark = position(&outs, |o| {
            matches!(o, Output::Storage(StorageCommand::SetWatermark { .. }))
        });
        let changed = position(&outs, |o| {
            matches!(o, Output::Event(Event::RecordsChanged { .. }))
        });
        assert!(put < changed && watermark < changed, "{outs:?}");
        let Output::Event(Event::RecordsChanged { peer, stream, keys }) = &outs[changed] else {
            unreachable!()
        };
        assert_eq!((*peer, *stream), (A, Stream::Owned(A)));
        let want: Vec<(String, Uuid)> = vec![
            ("entry".into(), Uuid::from_u128(10)),
            ("entry".into(), Uuid::from_u128(11)),
        ];
        assert_eq!(keys, &want);
        let single = |o: &Output| matches!(o, Output::Event(Event::RecordChanged { .. }));
        assert!(!outs.iter().any(single), "one event per page");
    }

    #[test]
    fn a_shared_snapshot_reports_once_it_is_applied() {
        let cmd = Command::RequestSharedChanges {
            peer: A,
            since: None,
        };
        let (mut b, request) = fetching(cmd);
        let SyncMessage::SharedChangeRequest(crate::SharedChangeRequest { request_id, .. }) =
            request
        else {
            panic!("{request:?}")
        };
        let msg = SyncMessage::SharedChangeResponse(crate::SharedChangeResponse {
            request_id,
            page: 0,
            entries: Vec::new(),
            has_more: false,
            truncated: true,
        });
        b.handle(now(), Input::Message { from: A, msg });
        let Some(request_id) = drain(&mut b).into_iter().find_map(|o| match o {
            Output::Send {
                msg:
                    SyncMessage::SharedSnapshotRequest(crate::SharedSnapshotRequest {
                        request_id, ..
                    }),
                ..
            } => Some(request_id),
            _ => None,
        }) else {
            panic!("no snapshot request")
        };
        let tag = SharedChange {
            origin: A,
            seq: 1,
            hlc: crate::Hlc::new(1_700_000_000_000, 0, A),
            model: "tag".into(),
            record: Uuid::from_u128(5),
            kind: crate::ChangeKind::Insert,
            fields: Default::default(),
        };
        let mut vv = VersionVector::new();
        vv.set(A, 1);
        let page = |request_id, page, has_more| {
            SyncMessage::SharedSnapshotResponse(crate::SharedSnapshotResponse {
                request_id,
                page,
                vv: vv.clone(),
                records: vec![tag.to_record()],
                has_more,
            })
        };
        // A first page is only staged: nothing to report yet.
        b.handle(
            now(),
            Input::Message {
                from: A,
                msg: page(request_id, 0, true),
            },
        );
        let outs = drain(&mut b);
        let applied = |o: &Output| matches!(o, Output::Event(Event::SharedSnapshotApplied { .. }));
        assert!(!outs.iter().any(applied), "{outs:?}");
        assert!(
            outs.iter().any(|o| matches!(
                o,
                Output::Send {
                    msg: SyncMessage::PagesReceived(crate::PagesReceived { pages: 1, .. }),
                    ..
                }
            )),
            "the window moves: {outs:?}"
        );
        // The last page of the same stream: applied, then reported.
        let mut last = page(request_id, 1, false);
        if let SyncMessage::SharedSnapshotResponse(crate::SharedSnapshotResponse {
            records, ..
        }) = &mut last
        {
            records.clear();
        }
        b.handle(now(), Input::Message { from: A, msg: last });
        let outs = drain(&mut b);
        let apply = position(&outs, |o| {
            matches!(o, Output::Storage(StorageCommand::ApplyStaged))
        });
        let reported = position(&outs, applied);
        assert!(apply < reported, "{outs:?}");
    }
}
