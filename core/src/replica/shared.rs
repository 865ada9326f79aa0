//! The shared stream: local writes, pushes, log catch-up and the snapshot fallback.

use super::{
    CommandError, CommandId, Event, ReadKind, Refusal, Replica, ServeWindow, SharedCursor,
    SharedFetch, SharedMode, SharedServe, Stream,
};
use crate::id::DeviceId;
use crate::message::{
    SharedChangeRequest, SharedChangeResponse, SharedSnapshotRequest, SharedSnapshotResponse,
    SyncMessage,
};
use crate::model::{ModelKind, MEMBER_MODEL};
use crate::shared::{SharedChange, SharedKey, SharedRecord};
use crate::storage::StorageCommand;
use crate::version_vector::VersionVector;
use crate::ClockError;

/// A storage read a served shared catch-up asks for.
enum ReadCommand {
    Log(VersionVector),
    Snapshot(Option<SharedKey>),
}

/// What became of one incoming shared change.
enum Accepted {
    /// Appended to the log (contiguous).
    Logged(SharedChange),
    /// Above a gap in its origin's stream: not applied, catch-up brings it in order.
    Gap,
    /// Already covered by the version vector.
    Duplicate,
    /// Not applied (drift or unknown model): later entries of its origin cannot be logged.
    Refused,
}

/// Why a change shows that its sender misbehaved, if it does.
fn misbehaviour(c: &SharedChange) -> Option<Refusal> {
    if c.origin != c.hlc.device {
        Some(Refusal::OriginMismatch)
    } else if c.seq == 0 || c.model.len() > crate::MAX_MODEL_NAME {
        Some(Refusal::MalformedResponse)
    } else {
        None
    }
}

impl Replica {
    /// Checks, stamps and applies one incoming change (storage commands are batched by the
    /// caller). `Err` means the sender misbehaved.
    fn accept_shared(&mut self, from: DeviceId, c: SharedChange) -> Result<Accepted, Refusal> {
        if let Some(reason) = misbehaviour(&c) {
            return Err(reason);
        }
        // A model this device does not know is kept (registers merge without interpreting
        // the fields): refusing it would stop the origin's stream here. A model known as
        // device-owned cannot be a shared change.
        if self.config.models.kind(&c.model) == Some(ModelKind::DeviceOwned) {
            self.event(Event::ChangeRefused {
                from,
                origin: c.origin,
                reason: Refusal::UnknownModel,
            });
            return Ok(Accepted::Refused);
        }
        if c.seq <= self.vv.get(c.origin) {
            return Ok(Accepted::Duplicate);
        }
        // Above a gap: dropped, not merged. A change merged out of order could never be passed
        // on (the log and its catch-up are contiguous per origin), so with its origin gone for
        // good the device that merged it would hold it alone for ever. Every device holds a
        // prefix of every origin's stream instead, which any other device can fetch.
        if c.seq != self.vv.get(c.origin) + 1 {
            return Ok(Accepted::Gap);
        }
        if let Err(ClockError::TooFarAhead { ahead_ms, .. }) =
            self.clock.observe(c.hlc, self.now.wall_ms)
        {
            self.event(Event::ClockSkew {
                device: c.origin,
                ahead_ms,
            });
            self.event(Event::ChangeRefused {
                from,
                origin: c.origin,
                reason: Refusal::ClockDrift,
            });
            return Ok(Accepted::Refused);
        }
        if c.model == MEMBER_MODEL {
            self.merge_member(&c.to_record());
        }
        self.vv.set(c.origin, c.seq);
        Ok(Accepted::Logged(c))
    }

    /// Applies a list of changes; returns whether a gap was seen, or `Err` on misbehaviour.
    /// With `relay`, the changes it logs are relayed onwards (real-time pushes only).
    fn apply_shared(
        &mut self,
        from: DeviceId,
        changes: Vec<SharedChange>,
        relay: bool,
    ) -> Result<bool, Refusal> {
        // Refuse the whole message before applying any of it: a refusal halfway through left
        // the version vector (and member set) ahead of what was stored.
        if let Some(reason) = changes.iter().find_map(misbehaviour) {
            return Err(reason);
        }
        let new_origins: std::collections::BTreeSet<DeviceId> = changes
            .iter()
            .map(|c| c.origin)
            .filter(|o| self.vv.get(*o) == 0)
            .collect();
        if self.vv.len() + new_origins.len() > self.config.max_origins {
            return Err(Refusal::TooManyOrigins);
        }
        let mut logged = Vec::new();
        let mut blocked: Vec<DeviceId> = Vec::new();
        let mut gap = false;
        for c in changes {
            if blocked.contains(&c.origin) {
                gap = true;
                continue;
            }
            let origin = c.origin;
            match self.accept_shared(from, c)? {
                Accepted::Logged(c) => logged.push(c),
                Accepted::Gap => gap = true,
                Accepted::Duplicate => {}
                Accepted::Refused => blocked.push(origin),
            }
        }
        // Real-time changes are reported one by one, a catch-up page in one event; both after
        // the writes (see `Event`).
        let changed = if relay {
            logged
                .iter()
                .map(|c| Event::RecordChanged {
                    model: c.model.clone(),
                    uuid: c.record,
                    by: c.origin,
                })
                .collect()
        } else {
            let keys = super::owned::changed_keys(logged.iter().map(|c| (&c.model, c.record)));
            if keys.is_empty() {
                Vec::new()
            } else {
                vec![Event::RecordsChanged {
                    peer: from,
                    stream: Stream::SharedLog,
                    keys,
                }]
            }
        };
        let stored = !logged.is_empty();
        let relayed = if relay {
            self.relay_plan(from, &logged)
        } else {
            Vec::new()
        };
        if !logged.is_empty() {
            self.store(StorageCommand::AppendLog(logged));
            self.schedule_ack();
        }
        // The clock adopted the stamps of what was stored: persist it with them, or after a
        // restart a local edit could be stamped below a register it overwrites (and lose).
        if stored {
            self.store(StorageCommand::SetHlc(self.clock.last()));
        }
        for e in changed {
            self.event(e);
        }
        // After the writes: a relay advertises what this device now holds (write-ahead).
        for (to, changes) in relayed {
            for msg in self.shared_messages(changes) {
                self.send(to, msg);
            }
        }
        Ok(gap)
    }

    /// Which of the just-logged `changes` go to which peer: real-time changes cross relays,
    /// so in a chain A - B - C a change of A reaches C when B gets it, not at C's next
    /// catch-up. A peer gets a change if it is not its sender or origin, is not connected to
    /// the origin (it gets it first-hand) and is not known to hold it.
    fn relay_plan(
        &self,
        from: DeviceId,
        changes: &[SharedChange],
    ) -> Vec<(DeviceId, Vec<SharedChange>)> {
        if self.peers.len() < 2 {
            return Vec::new();
        }
        let mut plan: Vec<(DeviceId, Vec<SharedChange>)> = Vec::new();
        for (to, peer) in &self.peers {
            if *to == from {
                continue;
            }
            let wanted: Vec<SharedChange> = changes
                .iter()
                .filter(|c| {
                    c.origin != *to
                        && !peer.neighbours.contains(&c.origin)
                        && peer.vv.get(c.origin) < c.seq
                })
                .cloned()
                .collect();
            if !wanted.is_empty() {
                plan.push((*to, wanted));
            }
        }
        plan
    }

    /// Real-time shared pushes (from any member: relays keep the original origin).
    pub(super) fn on_shared_push(&mut self, from: DeviceId, changes: Vec<SharedChange>) {
        let heads: Vec<(DeviceId, u64)> = changes.iter().map(|c| (c.origin, c.seq)).collect();
        match self.apply_shared(from, changes, true) {
            Err(reason) => self.misbehaved(from, reason),
            Ok(true) => {
                if let Some(p) = self.peers.get_mut(&from) {
                    for (o, s) in heads {
                        p.vv.raise(o, s);
                    }
                }
                self.plan_shared(from);
            }
            Ok(false) => {}
        }
    }

    /// Serves a log request: `truncated` below the pruned horizon, else a stream of pages
    /// from storage ([`Replica::continue_shared_serve`]).
    pub(super) fn serve_log(&mut self, from: DeviceId, request: SharedChangeRequest) {
        let SharedChangeRequest {
            request_id,
            since,
            limit,
            window,
        } = request;
        if self.serving_shared(from, request_id) {
            return;
        }
        // A requester runs one shared catch-up at a time: a new request ends the previous.
        self.serving.shared.remove(&from);
        let truncated = self.horizon.iter().any(|(o, h)| since.get(o) < h);
        if truncated || !since.is_behind(&self.vv) {
            self.send(
                from,
                SyncMessage::SharedChangeResponse(crate::SharedChangeResponse {
                    request_id,
                    page: 0,
                    entries: Vec::new(),
                    has_more: false,
                    truncated,
                }),
            );
            return;
        }
        self.begin_shared_serve(from, request_id, SharedCursor::Log(since), limit, window);
    }

    /// Serves a snapshot as a stream of pages; the first page's vector is what the whole
    /// snapshot covers.
    pub(super) fn serve_snapshot(&mut self, from: DeviceId, request: SharedSnapshotRequest) {
        let SharedSnapshotRequest {
            request_id,
            after,
            limit,
            window,
        } = request;
        if self.serving_shared(from, request_id) {
            return;
        }
        self.serving.shared.remove(&from);
        let cursor = SharedCursor::Snapshot { after, vv: None };
        self.begin_shared_serve(from, request_id, cursor, limit, window);
    }

    /// Whether `request_id` is the shared catch-up already served to `from`: a copy of its
    /// request (a network that duplicates) changes nothing. Starting it again would take the
    /// page of a read begun for the first copy as a page of the second, and number the pages
    /// from 0 again: the requester would skip the records between them.
    fn serving_shared(&self, from: DeviceId, request_id: u64) -> bool {
        self.serving
            .shared
            .get(&from)
            .is_some_and(|s| s.request_id == request_id)
    }

    fn begin_shared_serve(
        &mut self,
        from: DeviceId,
        request_id: u64,
        cursor: SharedCursor,
        limit: u32,
        window: u32,
    ) {
        let limit = self.page_limit(limit);
        self.serving.shared.insert(
            from,
            SharedServe {
                request_id,
                cursor,
                limit,
                flow: ServeWindow::new(window),
            },
        );
        self.continue_shared_serve(from);
    }

    /// Reads the next page of the shared catch-up served to `peer`, unless a read is pending
    /// or the requester's window is full (as [`Replica::continue_serve`]). A log that was
    /// pruned below the stream's cursor meanwhile ends the stream with `truncated`.
    pub(super) fn continue_shared_serve(&mut self, peer: DeviceId) {
        let byte_budget = self.config.serve_window_bytes;
        let max_bytes = self.config.page_bytes;
        let Some(s) = self.serving.shared.get(&peer) else {
            return;
        };
        if !s.flow.may_read(byte_budget) {
            return;
        }
        let (request_id, limit, page) = (s.request_id, s.limit, s.flow.sent);
        let (kind, read) = match &s.cursor {
            SharedCursor::Log(since) => {
                if self.horizon.iter().any(|(o, h)| since.get(o) < h) {
                    self.serving.shared.remove(&peer);
                    return self.send(
                        peer,
                        SyncMessage::SharedChangeResponse(crate::SharedChangeResponse {
                            request_id,
                            page,
                            entries: Vec::new(),
                            has_more: false,
                            truncated: true,
                        }),
                    );
                }
                let since = since.clone();
                (ReadKind::Log, ReadCommand::Log(since))
            }
            SharedCursor::Snapshot { after, vv } => {
                let vv = vv.clone().unwrap_or_else(|| self.vv.clone());
                (
                    ReadKind::Snapshot { vv },
                    ReadCommand::Snapshot(after.clone()),
                )
            }
        };
        let Some(id) = self.begin_read(peer, request_id, kind) else {
            self.serving.shared.remove(&peer);
            return;
        };
        if let Some(s) = self.serving.shared.get_mut(&peer) {
            s.flow.reading = true;
        }
        self.store(match read {
            ReadCommand::Log(since) => StorageCommand::ReadLog {
                id,
                since,
                limit,
                max_bytes,
            },
            ReadCommand::Snapshot(after) => StorageCommand::ReadSharedSnapshot {
                id,
                after,
                limit,
                max_bytes,
            },
        });
    }

    /// Sends a log page read from storage, then reads the next one if the stream goes on.
    pub(super) fn answer_log(
        &mut self,
        peer: DeviceId,
        request_id: u64,
        entries: Vec<SharedChange>,
        more: bool,
    ) {
        let Some(s) = self.shared_serve(peer, request_id) else {
            return;
        };
        if let SharedCursor::Log(since) = &mut s.cursor {
            for e in &entries {
                since.raise(e.origin, e.seq);
            }
        }
        let page = s
            .flow
            .sent_page(entries.iter().map(SharedChange::budget_size).sum());
        self.send(
            peer,
            SyncMessage::SharedChangeResponse(crate::SharedChangeResponse {
                request_id,
                page,
                entries,
                has_more: more,
                truncated: false,
            }),
        );
        self.end_or_continue_shared_serve(peer, more);
    }

    /// Sends a snapshot page read from storage, then reads the next one if the stream goes on.
    pub(super) fn answer_snapshot(
        &mut self,
        peer: DeviceId,
        request_id: u64,
        vv: VersionVector,
        records: Vec<SharedRecord>,
        more: bool,
    ) {
        let Some(s) = self.shared_serve(peer, request_id) else {
            return;
        };
        if let SharedCursor::Snapshot { after, vv: claim } = &mut s.cursor {
            if let Some(last) = records.last() {
                *after = Some(last.key());
            }
            claim.get_or_insert_with(|| vv.clone());
        }
        // Hidden registers carry nothing the requester can see or needs. The visible fields
        // of one record, written by separate updates, can still outgrow a frame together: such
        // a record goes in parts, one message each, which the requester stages and merges.
        // The page read from storage goes out as as many messages as its bytes need.
        let budget = self.config.relay_budget();
        let parts = records
            .into_iter()
            .flat_map(|r| r.without_hidden().into_parts(budget));
        let mut messages: Vec<(usize, Vec<SharedRecord>)> = Vec::new();
        for part in parts {
            let size = part.budget_size();
            match messages.last_mut() {
                // Two parts of one record never share a message: keys within one are distinct.
                Some((used, m))
                    if *used + size <= budget && m.last().is_none_or(|l| l.key() != part.key()) =>
                {
                    *used += size;
                    m.push(part);
                }
                _ => messages.push((size, vec![part])),
            }
        }
        let count = messages.len();
        for (i, (bytes, records)) in messages.into_iter().enumerate() {
            let Some(s) = self.shared_serve(peer, request_id) else {
                return;
            };
            let page = s.flow.sent_page(bytes);
            self.send(
                peer,
                SyncMessage::SharedSnapshotResponse(crate::SharedSnapshotResponse {
                    request_id,
                    page,
                    vv: vv.clone(),
                    records,
                    has_more: more || i + 1 < count,
                }),
            );
        }
        if count == 0 {
            // An empty last page still tells the requester the snapshot is complete.
            let Some(s) = self.shared_serve(peer, request_id) else {
                return;
            };
            let page = s.flow.sent_page(0);
            self.send(
                peer,
                SyncMessage::SharedSnapshotResponse(crate::SharedSnapshotResponse {
                    request_id,
                    page,
                    vv,
                    records: Vec::new(),
                    has_more: more,
                }),
            );
        }
        self.end_or_continue_shared_serve(peer, more);
    }

    /// The shared catch-up served to `peer` under `request_id`, unless it ended meanwhile (a
    /// newer request from the peer replaced it).
    pub(super) fn shared_serve(
        &mut self,
        peer: DeviceId,
        request_id: u64,
    ) -> Option<&mut SharedServe> {
        self.serving
            .shared
            .get_mut(&peer)
            .filter(|s| s.request_id == request_id)
    }

    fn end_or_continue_shared_serve(&mut self, peer: DeviceId, more: bool) {
        if more {
            self.continue_shared_serve(peer);
        } else {
            self.serving.shared.remove(&peer);
        }
    }

    fn current_shared_fetch(&self, from: DeviceId, request_id: u64) -> bool {
        self.fetches
            .shared
            .as_ref()
            .is_some_and(|f| f.peer == from && f.request_id == request_id)
    }

    /// Whether `page` is the next page of the running shared catch-up; if it is a later one
    /// (a page was lost or overtaken: the network reorders), the catch-up starts again from
    /// what this device applied. An earlier one (a repeat) is ignored.
    fn next_shared_page(&mut self, from: DeviceId, page: u32) -> bool {
        let expected = self.fetches.shared.as_ref().map_or(0, |f| f.pages);
        if page == expected {
            return true;
        }
        if page > expected {
            match self.fetches.shared.as_ref().map(|f| &f.mode) {
                Some(SharedMode::Log { .. }) => {
                    let since = self.vv.clone();
                    self.send_log_request(from, since);
                }
                Some(SharedMode::Snapshot { resume, vv, .. }) => {
                    let (resume, vv) = (resume.clone(), vv.clone());
                    self.start_snapshot_page(from, resume, vv);
                }
                None => {}
            }
        }
        false
    }

    /// Tells the server of the running shared catch-up that one more page arrived, so it
    /// reads on.
    fn shared_page_received(&mut self, from: DeviceId, request_id: u64) {
        let deadline = self.deadline();
        let Some(f) = self.fetches.shared.as_mut() else {
            return;
        };
        f.pages += 1;
        f.deadline = deadline;
        let pages = f.pages;
        self.send(
            from,
            SyncMessage::PagesReceived(crate::PagesReceived { request_id, pages }),
        );
    }

    /// Applies a log page after checking it is contiguous per origin from where the previous
    /// page ended.
    pub(super) fn on_log_response(&mut self, from: DeviceId, response: SharedChangeResponse) {
        let SharedChangeResponse {
            request_id,
            page,
            entries,
            has_more,
            truncated,
        } = response;
        if !self.current_shared_fetch(from, request_id) || !self.next_shared_page(from, page) {
            return;
        }
        let Some(SharedMode::Log { since }) = self.fetches.shared.as_ref().map(|f| &f.mode) else {
            return;
        };
        if truncated {
            return self.start_snapshot_page(from, None, None);
        }
        let mut expect = since.clone();
        let contiguous = entries.iter().all(|e| {
            let ok = expect.get(e.origin).checked_add(1) == Some(e.seq);
            expect.set(e.origin, e.seq);
            ok
        });
        let ordered = entries
            .windows(2)
            .all(|w| (w[0].origin, w[0].seq) < (w[1].origin, w[1].seq));
        let oversized = entries.len() > self.config.page_records as usize;
        if !contiguous || !ordered || oversized || (has_more && entries.is_empty()) {
            return self.misbehaved(from, Refusal::MalformedResponse);
        }
        let before = self.vv.clone();
        let count = entries.len();
        if let Err(reason) = self.apply_shared(from, entries, false) {
            return self.misbehaved(from, reason);
        }
        if !self.current_shared_fetch(from, request_id) {
            return; // the page removed its sender from the library: the fetch ended with it
        }
        let progressed = self.vv != before;
        let applied = match self.fetches.shared.as_mut() {
            Some(f) => {
                f.applied += count as u64;
                f.applied
            }
            None => 0,
        };
        let remaining: u64 = self.peers.get(&from).map_or(0, |p| {
            p.vv.iter()
                .map(|(o, s)| s.saturating_sub(self.vv.get(o)))
                .fold(0u64, u64::saturating_add)
        });
        self.event(Event::CatchUpProgress {
            peer: from,
            stream: Stream::SharedLog,
            applied: count,
            position: applied,
            target: Some(applied.saturating_add(remaining)),
        });
        if has_more && progressed {
            // The server streams on from where this page ended. Reported after this page's
            // writes, not before as for device-owned pages: a page that applied nothing (its
            // entries refused or held) ends the catch-up here, and the server, which sends one
            // page more for each page reported, has sent nothing more for it.
            self.shared_page_received(from, request_id);
            if let Some(f) = self.fetches.shared.as_mut() {
                f.mode = SharedMode::Log { since: expect };
            }
        } else {
            // Nothing applied (refused or held entries): stop here rather than take pages
            // that would all sit above the same gap; a later summary starts again.
            self.finish_shared_fetch(from, Stream::SharedLog);
        }
    }

    fn finish_shared_fetch(&mut self, from: DeviceId, stream: Stream) {
        if let Some(f) = self.fetches.shared.take() {
            if let Some(id) = f.command {
                self.event(Event::CommandDone(id));
            }
        }
        self.event(Event::CaughtUp { peer: from, stream });
    }

    fn send_log_request(&mut self, peer: DeviceId, since: VersionVector) {
        let request_id = self.next_request_id();
        let deadline = self.deadline();
        if let Some(f) = self.fetches.shared.as_mut() {
            f.request_id = request_id;
            f.deadline = deadline;
            f.pages = 0;
            f.mode = SharedMode::Log {
                since: since.clone(),
            };
        }
        let limit = self.config.page_records;
        let window = self.config.catch_up_window;
        self.send(
            peer,
            SyncMessage::SharedChangeRequest(crate::SharedChangeRequest {
                request_id,
                since,
                limit,
                window,
            }),
        );
    }

    fn start_snapshot_page(
        &mut self,
        peer: DeviceId,
        after: Option<SharedKey>,
        vv: Option<VersionVector>,
    ) {
        let request_id = self.next_request_id();
        let deadline = self.deadline();
        if let Some(f) = self.fetches.shared.as_mut() {
            f.request_id = request_id;
            f.deadline = deadline;
            f.pages = 0;
            f.mode = SharedMode::Snapshot {
                after: after.clone(),
                resume: after.clone(),
                vv,
            };
        }
        let limit = self.config.page_records;
        let window = self.config.catch_up_window;
        self.send(
            peer,
            SyncMessage::SharedSnapshotRequest(crate::SharedSnapshotRequest {
                request_id,
                after,
                limit,
                window,
            }),
        );
    }

    /// Stages a snapshot page (see [`StorageCommand::StageShared`]). After the last page the
    /// staged records are merged through the same register merge as every other path, the
    /// snapshot's vector becomes this device's version vector and log horizon, and the log
    /// catch-up resumes from it.
    pub(super) fn on_snapshot_response(
        &mut self,
        from: DeviceId,
        response: SharedSnapshotResponse,
    ) {
        let SharedSnapshotResponse {
            request_id,
            page,
            vv: page_vv,
            records,
            has_more,
        } = response;
        if !self.current_shared_fetch(from, request_id) || !self.next_shared_page(from, page) {
            return;
        }
        let Some(SharedMode::Snapshot { after, resume, vv }) =
            self.fetches.shared.as_ref().map(|f| &f.mode)
        else {
            return;
        };
        // Every record before this page's last one is whole (a greater key followed it), and
        // so is the previous page's last one once a greater key arrives.
        let resume = match records.iter().rev().nth(1) {
            Some(before_last) => Some(before_last.key()),
            None if records.first().map(SharedRecord::key) != *after => after.clone(),
            None => resume.clone(),
        };
        let first_page = vv.is_none();
        let claim = vv.clone().unwrap_or(page_vv);
        if claim.get(self.config.device) > super::MAX_CLAIMED_OWN_HEAD {
            return self.misbehaved(from, Refusal::ClaimBeyondBound);
        }
        // The claim becomes this device's version vector: it may name no more origins than a
        // change could add (`Config::max_origins`).
        let new_origins = claim.iter().filter(|(o, _)| self.vv.get(*o) == 0).count();
        if first_page && self.vv.len() + new_origins > self.config.max_origins {
            return self.misbehaved(from, Refusal::TooManyOrigins);
        }
        // Keys rise within a page. A page may start with the last record of the previous one:
        // a record larger than a frame comes in parts, one page each.
        let ordered = records.windows(2).all(|w| w[0].key() < w[1].key())
            && match (after, records.first()) {
                (Some(a), Some(first)) => first.key() >= *a,
                _ => true,
            };
        let oversized = records.len() > self.config.page_records as usize;
        if !ordered || oversized || (has_more && records.is_empty()) {
            return self.misbehaved(from, Refusal::MalformedResponse);
        }
        let known = records
            .iter()
            .all(|r| self.config.models.kind(&r.model) != Some(ModelKind::DeviceOwned));
        let newest = records.iter().map(SharedRecord::max_hlc).max();
        let drift = newest.map(|h| self.clock.check_drift(h, self.now.wall_ms));
        if !known || matches!(drift, Some(Err(_))) {
            let reason = if known {
                Refusal::ClockDrift
            } else {
                Refusal::UnknownModel
            };
            if let Some(Err(ClockError::TooFarAhead { ahead_ms, .. })) = drift {
                let device = newest.map(|h| h.device).unwrap_or(from);
                self.event(Event::ClockSkew { device, ahead_ms });
            }
            self.event(Event::ChangeRefused {
                from,
                origin: from,
                reason,
            });
            if let Some(f) = self.fetches.shared.take() {
                self.fail_command(f.command, CommandError::PeerError(reason.to_string()));
            }
            return;
        }
        if let Some(h) = newest {
            let _ = self.clock.observe(h, self.now.wall_ms);
        }
        for r in records.iter().filter(|r| r.model == MEMBER_MODEL) {
            self.merge_member(r);
        }
        let last = records.last().map(SharedRecord::key);
        let count = records.len();
        if first_page {
            self.store(StorageCommand::ClearStaged);
        }
        if !records.is_empty() {
            self.store(StorageCommand::SetHlc(self.clock.last()));
            // Member registers are merged at once (the member set above already took them, and
            // `Members` passes current members' registers on); the rest is staged and applied
            // with the last page, so a snapshot cut short leaves nothing behind.
            let (members, staged): (Vec<_>, Vec<_>) =
                records.into_iter().partition(|r| r.model == MEMBER_MODEL);
            if !members.is_empty() {
                self.store(StorageCommand::MergeShared(members));
            }
            if !staged.is_empty() {
                self.store(StorageCommand::StageShared(staged));
            }
        }
        if !self.current_shared_fetch(from, request_id) {
            return; // the page removed its sender from the library: its claim is not adopted
        }
        self.event(Event::CatchUpProgress {
            peer: from,
            stream: Stream::SharedSnapshot,
            applied: count,
            position: count as u64,
            target: None,
        });
        if has_more {
            // The server streams on after this page's last record; the claim stays the first
            // page's.
            self.shared_page_received(from, request_id);
            if let Some(f) = self.fetches.shared.as_mut() {
                f.mode = SharedMode::Snapshot {
                    after: last,
                    resume,
                    vv: Some(claim),
                };
            }
            return;
        }
        // The snapshot covers `claim`: apply it, and adopt its vector as version vector and
        // horizon (in that order, one batch: write-ahead).
        self.store(StorageCommand::ApplyStaged);
        for (origin, seq) in claim.iter() {
            if seq > self.vv.get(origin) {
                self.vv.set(origin, seq);
                self.horizon.raise(origin, seq);
                self.store(StorageCommand::PruneLog {
                    origin,
                    through: seq,
                });
            }
        }
        self.schedule_ack();
        // After `ApplyStaged`: any shared record may have changed (see `Event`).
        self.event(Event::SharedSnapshotApplied { peer: from });
        self.event(Event::CaughtUp {
            peer: from,
            stream: Stream::SharedSnapshot,
        });
        let since = self.vv.clone();
        self.send_log_request(from, since);
    }

    /// Starts a shared catch-up from `peer` if it is ahead and none is running.
    pub(super) fn plan_shared(&mut self, peer: DeviceId) {
        if self.fetches.shared.is_some() {
            return;
        }
        let ahead = self
            .peers
            .get(&peer)
            .is_some_and(|p| self.vv.is_behind(&p.vv));
        if ahead {
            self.start_shared_fetch(peer, self.vv.clone(), None);
        }
    }

    fn start_shared_fetch(
        &mut self,
        peer: DeviceId,
        since: VersionVector,
        command: Option<CommandId>,
    ) {
        self.fetches.shared = Some(SharedFetch {
            peer,
            request_id: 0,
            mode: SharedMode::Log {
                since: since.clone(),
            },
            deadline: self.deadline(),
            command,
            applied: 0,
            pages: 0,
        });
        self.send_log_request(peer, since);
    }

    /// `Command::RequestSharedChanges`. A request to the peer the engine is already catching up
    /// from (from this device's version vector, with no command attached) joins that catch-up:
    /// the command completes when it does.
    pub(super) fn request_shared(
        &mut self,
        id: CommandId,
        peer: DeviceId,
        since: Option<VersionVector>,
    ) {
        if let Some(f) = self.fetches.shared.as_mut() {
            if f.peer == peer && f.command.is_none() && since.is_none() {
                f.command = Some(id);
                return;
            }
        }
        let reason = if !self.peers.contains_key(&peer) {
            Some(CommandError::PeerNotConnected(peer))
        } else if self.fetches.shared.is_some() {
            Some(CommandError::AlreadyFetching)
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.event(Event::CommandFailed { id, reason });
        }
        let since = since.unwrap_or_else(|| self.vv.clone());
        self.start_shared_fetch(peer, since, Some(id));
    }
}
