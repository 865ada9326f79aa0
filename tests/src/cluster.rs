//! `Cluster`: replicas under manual control, for scenario and property tests.
//!
//! Unlike the seeded [`crate::run_seed`] world, a test decides every step: which message is
//! delivered, dropped or duplicated, which link is up, who crashes and when time moves. Every
//! local write is recorded in a [`Reference`] so the final state can be checked against the
//! expected one.

use crate::reference::{OwnedView, Reference, SharedView};
use hybridsync_core::{
    decode, encode, ChangeKind, Command, CommandId, Config, DeviceId, Event, Input, Instant,
    MemStore, ModelRegistry, Now, Output, Replica, Restored, StorageCommand, SyncMessage, Value,
    MEMBER_MODEL,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

/// Wall-clock origin of a cluster (Unix ms).
pub const T0: u64 = 1_750_000_000_000;

/// A message in flight.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// Sender.
    pub from: DeviceId,
    /// Recipient.
    pub to: DeviceId,
    /// Encoded message.
    pub bytes: Vec<u8>,
}

impl InFlight {
    /// The decoded message.
    pub fn msg(&self) -> Option<SyncMessage> {
        decode(&self.bytes).ok()
    }
}

/// One replica of the cluster.
pub struct Member {
    /// The engine (`None` while crashed).
    pub replica: Option<Replica>,
    /// Its storage.
    pub store: MemStore,
    /// Events it emitted.
    pub events: Vec<Event>,
    /// Wall-clock offset from the cluster clock, in ms.
    pub skew_ms: i64,
    config: Config,
}

/// Replicas, links and messages in flight, all under the test's control.
pub struct Cluster {
    /// The replicas by device.
    pub members: BTreeMap<DeviceId, Member>,
    /// Messages sent and not yet delivered, in send order.
    pub in_flight: Vec<InFlight>,
    /// Messages an engine emitted above its configured frame limit (`Config::max_frame`):
    /// dropped, as the iroh transport drops them. Every test expects none.
    pub oversized: Vec<(DeviceId, DeviceId, &'static str, usize)>,
    links: BTreeSet<(DeviceId, DeviceId)>,
    mono_us: u64,
    reference: Reference,
    next_cmd: u64,
    in_command: bool,
}

fn pair(a: DeviceId, b: DeviceId) -> (DeviceId, DeviceId) {
    (a.min(b), a.max(b))
}

impl Cluster {
    /// `n` devices (`device(0..n)`), all members, none connected.
    pub fn new(n: usize) -> Cluster {
        let ids: Vec<DeviceId> = (0..n).map(crate::device).collect();
        let mut c = Cluster {
            members: BTreeMap::new(),
            in_flight: Vec::new(),
            oversized: Vec::new(),
            links: BTreeSet::new(),
            mono_us: 0,
            reference: Reference::default(),
            next_cmd: 0,
            in_command: false,
        };
        for id in &ids {
            c.add(*id, Restored::bootstrap(ids.clone()));
        }
        c
    }

    /// The engine configuration used for `id` (small pages to exercise paging).
    pub fn config(id: DeviceId) -> Config {
        let mut cfg = Config::new(id, ModelRegistry::spacedrive());
        cfg.page_records = 4;
        cfg
    }

    /// Adds (or replaces) a device that starts from `restored`.
    pub fn add(&mut self, id: DeviceId, restored: Restored) {
        let config = Self::config(id);
        self.add_with(id, restored, config);
    }

    /// Adds a device with a custom configuration.
    pub fn add_with(&mut self, id: DeviceId, restored: Restored, config: Config) {
        let now = self.now_of(0);
        let replica = Replica::new(config.clone(), restored, now);
        self.members.insert(
            id,
            Member {
                replica: Some(replica),
                store: MemStore::new(),
                events: Vec::new(),
                skew_ms: 0,
                config,
            },
        );
        self.drain(id);
    }

    fn now_of(&self, skew_ms: i64) -> Now {
        let wall = (T0 as i64 + (self.mono_us / 1000) as i64 + skew_ms).max(0) as u64;
        Now::new(Instant::from_micros(self.mono_us), wall)
    }

    /// The clocks `id` sees now.
    pub fn now(&self, id: DeviceId) -> Now {
        self.now_of(self.members.get(&id).map_or(0, |m| m.skew_ms))
    }

    /// Sets `id`'s wall-clock skew.
    pub fn set_skew(&mut self, id: DeviceId, skew_ms: i64) {
        if let Some(m) = self.members.get_mut(&id) {
            m.skew_ms = skew_ms;
        }
    }

    /// The member `id`.
    pub fn member(&self, id: DeviceId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// The operations recorded so far.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Feeds one input to `id` and processes its outputs.
    pub fn input(&mut self, id: DeviceId, input: Input) {
        let now = self.now(id);
        let Some(r) = self.members.get_mut(&id).and_then(|m| m.replica.as_mut()) else {
            return;
        };
        r.handle(now, input);
        self.drain(id);
    }

    fn drain(&mut self, id: DeviceId) {
        loop {
            let mut completions = Vec::new();
            let Some(m) = self.members.get_mut(&id) else {
                return;
            };
            let Some(replica) = m.replica.as_mut() else {
                return;
            };
            let mut closed = Vec::new();
            while let Some(out) = replica.poll_output() {
                match out {
                    Output::Storage(cmd) => {
                        if self.in_command {
                            record(&mut self.reference, id, &cmd);
                        }
                        completions.extend(m.store.execute(cmd));
                    }
                    Output::Send { to, msg } => {
                        m.store.sync();
                        let bytes = encode(&msg);
                        if bytes.len() > m.config.max_frame {
                            self.oversized.push((id, to, msg.kind(), bytes.len()));
                        } else if self.links.contains(&pair(id, to)) {
                            self.in_flight.push(InFlight {
                                from: id,
                                to,
                                bytes,
                            });
                        }
                    }
                    Output::Disconnect { peer, .. } => closed.push(peer),
                    Output::Event(e) => m.events.push(e),
                }
            }
            m.store.sync();
            for peer in closed {
                self.disconnect(id, peer);
            }
            if completions.is_empty() {
                return;
            }
            let now = self.now(id);
            if let Some(r) = self.members.get_mut(&id).and_then(|m| m.replica.as_mut()) {
                for c in completions {
                    r.handle(now, Input::Storage(c));
                }
            }
        }
    }

    /// Connects `a` and `b` (both get `PeerUp`).
    pub fn connect(&mut self, a: DeviceId, b: DeviceId) {
        if self.links.insert(pair(a, b)) {
            self.input(a, Input::PeerUp { peer: b });
            self.input(b, Input::PeerUp { peer: a });
        }
    }

    /// Whether `a` and `b` are connected.
    pub fn connected(&self, a: DeviceId, b: DeviceId) -> bool {
        self.links.contains(&pair(a, b))
    }

    /// Cuts the link between `a` and `b`; messages in flight on it are lost.
    pub fn disconnect(&mut self, a: DeviceId, b: DeviceId) {
        if self.links.remove(&pair(a, b)) {
            self.in_flight.retain(|m| pair(m.from, m.to) != pair(a, b));
            self.input(a, Input::PeerDown { peer: b });
            self.input(b, Input::PeerDown { peer: a });
        }
    }

    /// Connects every pair of running devices.
    pub fn connect_all(&mut self) {
        let ids: Vec<DeviceId> = self.running().collect();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                self.connect(*a, *b);
            }
        }
    }

    /// Devices that are not crashed.
    pub fn running(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.replica.is_some())
            .map(|(id, _)| *id)
    }

    /// Delivers the in-flight message at `index`; returns false if there is none.
    pub fn deliver(&mut self, index: usize) -> bool {
        if index >= self.in_flight.len() {
            return false;
        }
        let m = self.in_flight.remove(index);
        if let Some(msg) = m.msg() {
            self.input(m.to, Input::Message { from: m.from, msg });
        }
        true
    }

    /// Drops the in-flight message at `index`.
    pub fn drop_message(&mut self, index: usize) {
        if index < self.in_flight.len() {
            self.in_flight.remove(index);
        }
    }

    /// Duplicates the in-flight message at `index`.
    pub fn duplicate(&mut self, index: usize) {
        if let Some(m) = self.in_flight.get(index).cloned() {
            self.in_flight.push(m);
        }
    }

    /// Delivers messages in send order until none is in flight (bounded).
    pub fn deliver_all(&mut self) -> usize {
        let mut n = 0;
        while self.deliver(0) {
            n += 1;
            if n > 1_000_000 {
                break;
            }
        }
        n
    }

    /// Advances time by `ms`, ticks every device, and delivers everything.
    pub fn advance(&mut self, ms: u64) {
        self.mono_us += ms * 1000;
        let ids: Vec<DeviceId> = self.running().collect();
        for id in ids {
            self.input(id, Input::Tick);
        }
        self.deliver_all();
    }

    /// Lets acks, heartbeats and catch-ups run to completion: two and a half minutes, so a
    /// lost summary delta is repaired by the next full summary (every two minutes).
    pub fn settle(&mut self) {
        self.deliver_all();
        for _ in 0..25 {
            self.advance(6_000);
        }
    }

    /// Crashes `id`: unsynced writes are lost and its links drop.
    pub fn crash(&mut self, id: DeviceId) {
        let peers: Vec<DeviceId> = self
            .links
            .iter()
            .filter_map(|(a, b)| {
                if *a == id {
                    Some(*b)
                } else if *b == id {
                    Some(*a)
                } else {
                    None
                }
            })
            .collect();
        for p in peers {
            self.disconnect(id, p);
        }
        if let Some(m) = self.members.get_mut(&id) {
            m.store.crash();
            m.replica = None;
        }
    }

    /// Restarts a crashed `id` from its durable storage.
    pub fn restart(&mut self, id: DeviceId) {
        let now = self.now(id);
        if let Some(m) = self.members.get_mut(&id) {
            if m.replica.is_none() {
                let restored = m.store.restored();
                m.replica = Some(Replica::new(m.config.clone(), restored, now));
            }
        }
        self.drain(id);
    }

    /// Runs a local command on `id`; returns whether it completed.
    pub fn command(&mut self, id: DeviceId, cmd: Command) -> bool {
        self.next_cmd += 1;
        let cid = CommandId(self.next_cmd);
        self.in_command = true;
        self.input(id, Input::Command { id: cid, cmd });
        self.in_command = false;
        self.members
            .get(&id)
            .is_some_and(|m| m.events.contains(&Event::CommandDone(cid)))
    }

    /// Puts device-owned record `key` of `id` with `data`.
    pub fn put(&mut self, id: DeviceId, key: u64, data: &[u8]) -> bool {
        self.command(
            id,
            Command::PutOwned {
                model: "entry".into(),
                uuid: owned_uuid(id, key),
                data: data.to_vec(),
            },
        )
    }

    /// Deletes device-owned record `key` of `id`.
    pub fn delete(&mut self, id: DeviceId, key: u64) -> bool {
        self.command(
            id,
            Command::DeleteOwned {
                model: "entry".into(),
                uuid: owned_uuid(id, key),
            },
        )
    }

    /// Writes shared tag `key` on `id`.
    pub fn tag(
        &mut self,
        id: DeviceId,
        key: u64,
        kind: ChangeKind,
        fields: &[(&str, i64)],
    ) -> bool {
        let uuid = tag_uuid(key);
        let model = "tag".to_owned();
        let fields: BTreeMap<String, Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
            .collect();
        let cmd = match kind {
            ChangeKind::Insert => Command::InsertShared {
                model,
                uuid,
                fields,
            },
            ChangeKind::Update => Command::UpdateShared {
                model,
                uuid,
                fields,
            },
            ChangeKind::Delete => Command::DeleteShared { model, uuid },
        };
        self.command(id, cmd)
    }

    /// The visible fields of tag `key` on `id`.
    pub fn tag_fields(&self, id: DeviceId, key: u64) -> Option<BTreeMap<String, Value>> {
        self.members
            .get(&id)?
            .store
            .state()
            .shared
            .get(&("tag".to_owned(), tag_uuid(key)))?
            .visible()
    }

    /// `id`'s device-owned view.
    pub fn owned_view(&self, id: DeviceId) -> OwnedView {
        self.members
            .get(&id)
            .map(|m| {
                m.store
                    .state()
                    .owned
                    .iter()
                    .map(|(k, r)| (k.clone(), (r.seq, r.data.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `id`'s visible shared records (user models).
    pub fn shared_view(&self, id: DeviceId) -> SharedView {
        self.members
            .get(&id)
            .map(|m| {
                m.store
                    .state()
                    .shared
                    .iter()
                    .filter(|((model, _), _)| model != MEMBER_MODEL)
                    .filter_map(|(k, r)| r.visible().map(|v| (k.clone(), v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Content digest of `id`'s store.
    pub fn digest(&self, id: DeviceId) -> u64 {
        self.members
            .get(&id)
            .map_or(0, |m| m.store.state().content_digest())
    }

    /// Checks that `ids` hold identical content equal to the expected state of every
    /// operation recorded.
    pub fn check_converged(&self, ids: &[DeviceId]) -> Result<(), String> {
        let want_owned = self.reference.expected_owned();
        let want_shared = self.reference.expected_shared(|m| m != MEMBER_MODEL);
        let digests: BTreeSet<u64> = ids.iter().map(|d| self.digest(*d)).collect();
        if digests.len() > 1 {
            return Err(format!("replicas diverged: {digests:x?}"));
        }
        for id in ids {
            if self.owned_view(*id) != want_owned {
                return Err(format!(
                    "{id}: device-owned records differ from the expected state"
                ));
            }
            if self.shared_view(*id) != want_shared {
                return Err(format!(
                    "{id}: shared records differ: got {:?}, want {want_shared:?}",
                    self.shared_view(*id)
                ));
            }
        }
        Ok(())
    }
}

fn record(reference: &mut Reference, me: DeviceId, cmd: &StorageCommand) {
    match cmd {
        StorageCommand::PutOwned(rs) => {
            for r in rs.iter().filter(|r| r.owner == me) {
                reference.owned_write(r.clone());
            }
        }
        StorageCommand::AppendLog(cs) => {
            for c in cs.iter().filter(|c| c.origin == me) {
                reference.shared_write(c.clone());
            }
        }
        _ => {}
    }
}

/// The uuid of device-owned record `key` of `owner`.
pub fn owned_uuid(owner: DeviceId, key: u64) -> Uuid {
    Uuid::from_u128((owner.0.as_u128() & !0xffff_ffff_ffff_ffff) | u128::from(key))
}

/// The uuid of shared tag `key`.
pub fn tag_uuid(key: u64) -> Uuid {
    Uuid::from_u128(0x7a6_0000_0000 + u128::from(key))
}

/// Advances a cluster by a duration (convenience for scenario tests).
pub fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}
