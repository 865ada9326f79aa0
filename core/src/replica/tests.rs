//! Engine tests driven by hand through a tiny in-memory network (a `Pair`-style harness).

use super::*;
use crate::codec::{decode, encode};
use crate::memstore::MemStore;
use crate::model::ModelRegistry;
use crate::owned::OwnedRecord;
use crate::shared::{ChangeKind, SharedChange};
use crate::value::Value;
use crate::Hlc;
use std::collections::BTreeSet;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

fn dev(n: u128) -> DeviceId {
    DeviceId::from_u128(n)
}

struct Node {
    replica: Replica,
    store: MemStore,
    events: Vec<Event>,
    disconnects: Vec<(DeviceId, Refusal)>,
    sent: Vec<(DeviceId, SyncMessage)>,
}

/// A deterministic network of replicas with `MemStore`s; messages go through the codec.
struct Net {
    nodes: BTreeMap<DeviceId, Node>,
    queue: VecDeque<(DeviceId, DeviceId, Vec<u8>)>,
    links: BTreeSet<(DeviceId, DeviceId)>,
    now: Now,
    next_cmd: u64,
    bytes: usize,
}

fn config(d: DeviceId) -> Config {
    let mut c = Config::new(d, ModelRegistry::spacedrive());
    c.page_records = 3; // small pages exercise paging
    c
}

impl Net {
    fn new(n: u128) -> Net {
        let members: Vec<DeviceId> = (1..=n).map(dev).collect();
        let mut net = Net {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            links: BTreeSet::new(),
            now: Now::new(Instant::ZERO, T0),
            next_cmd: 0,
            bytes: 0,
        };
        for d in &members {
            net.add_node(*d, Restored::bootstrap(members.clone()), config(*d));
        }
        net
    }

    fn add_node(&mut self, d: DeviceId, restored: Restored, config: Config) {
        let replica = Replica::new(config, restored, self.now);
        self.nodes.insert(
            d,
            Node {
                replica,
                store: MemStore::new(),
                events: Vec::new(),
                disconnects: Vec::new(),
                sent: Vec::new(),
            },
        );
        self.drain(d);
    }

    fn node(&self, d: DeviceId) -> &Node {
        &self.nodes[&d]
    }

    fn input(&mut self, d: DeviceId, input: Input) {
        let now = self.now;
        if let Some(n) = self.nodes.get_mut(&d) {
            n.replica.handle(now, input);
        }
        self.drain(d);
    }

    fn drain(&mut self, d: DeviceId) {
        loop {
            let mut completions = Vec::new();
            let Some(n) = self.nodes.get_mut(&d) else {
                return;
            };
            while let Some(out) = n.replica.poll_output() {
                match out {
                    Output::Storage(cmd) => completions.extend(n.store.execute(cmd)),
                    Output::Send { to, msg } => {
                        n.store.sync();
                        n.sent.push((to, msg.clone()));
                        if self.links.contains(&(d, to)) {
                            let bytes = encode(&msg);
                            self.bytes += bytes.len();
                            self.queue.push_back((d, to, bytes));
                        }
                    }
                    Output::Disconnect { peer, reason } => {
                        n.disconnects.push((peer, reason));
                        self.links.remove(&(d, peer));
                        self.links.remove(&(peer, d));
                    }
                    Output::Event(e) => n.events.push(e),
                }
            }
            n.store.sync();
            if completions.is_empty() {
                return;
            }
            let now = self.now;
            for c in completions {
                n.replica.handle(now, Input::Storage(c));
            }
        }
    }

    fn connect(&mut self, a: DeviceId, b: DeviceId) {
        self.links.insert((a, b));
        self.links.insert((b, a));
        self.input(a, Input::PeerUp { peer: b });
        self.input(b, Input::PeerUp { peer: a });
    }

    fn disconnect(&mut self, a: DeviceId, b: DeviceId) {
        self.links.remove(&(a, b));
        self.links.remove(&(b, a));
        self.queue
            .retain(|(f, t, _)| !((*f == a && *t == b) || (*f == b && *t == a)));
        self.input(a, Input::PeerDown { peer: b });
        self.input(b, Input::PeerDown { peer: a });
    }

    /// Delivers every queued message (and what it causes).
    fn run(&mut self) -> usize {
        let mut delivered = 0;
        while let Some((from, to, bytes)) = self.queue.pop_front() {
            delivered += 1;
            assert!(delivered < 100_000, "no quiescence");
            let msg = decode(&bytes).expect("engine output decodes");
            self.input(to, Input::Message { from, msg });
        }
        delivered
    }

    /// Advances time by `ms`, ticking every node, and delivers.
    fn advance(&mut self, ms: u64) {
        self.now.mono = self.now.mono + Duration::from_millis(ms);
        self.now.wall_ms += ms;
        let ds: Vec<DeviceId> = self.nodes.keys().copied().collect();
        for d in ds {
            self.input(d, Input::Tick);
        }
        self.run();
    }

    /// Lets timers (acks, heartbeats) run until nothing is in flight.
    fn settle(&mut self) {
        self.run();
        for _ in 0..4 {
            self.advance(6_000);
        }
    }

    /// `d` asks `peer` for `owner`'s records from 0; returns the request id. Everything in
    /// flight is dropped, so the test answers the request itself.
    fn request_state_held(&mut self, d: DeviceId, peer: DeviceId, owner: DeviceId) -> u64 {
        self.cmd(
            d,
            Command::RequestState {
                peer,
                owner,
                since: Some(0),
            },
        );
        let rid = self
            .node(d)
            .sent
            .iter()
            .rev()
            .find_map(|(_, m)| match m {
                SyncMessage::StateRequest(crate::StateRequest { request_id, .. }) => {
                    Some(*request_id)
                }
                _ => None,
            })
            .expect("request sent");
        self.queue.clear();
        rid
    }

    fn cmd(&mut self, d: DeviceId, cmd: Command) -> CommandId {
        self.next_cmd += 1;
        let id = CommandId(self.next_cmd);
        self.input(d, Input::Command { id, cmd });
        id
    }

    fn put(&mut self, d: DeviceId, uuid: u128, data: &[u8]) {
        let id = self.cmd(
            d,
            Command::PutOwned {
                model: "entry".into(),
                uuid: Uuid::from_u128(uuid),
                data: data.to_vec(),
            },
        );
        assert!(self.node(d).events.contains(&Event::CommandDone(id)));
    }

    fn tag(&mut self, d: DeviceId, uuid: u128, kind: ChangeKind, name: &str) {
        let fields: BTreeMap<String, Value> = [("name".to_owned(), Value::from(name))].into();
        let model = "tag".to_owned();
        let uuid = Uuid::from_u128(uuid);
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
        let id = self.cmd(d, cmd);
        assert!(self.node(d).events.contains(&Event::CommandDone(id)));
    }

    fn digest(&self, d: DeviceId) -> u64 {
        self.node(d).store.state().content_digest()
    }

    fn assert_converged(&self) {
        let digests: Vec<(DeviceId, u64)> =
            self.nodes.keys().map(|d| (*d, self.digest(*d))).collect();
        assert!(
            digests.windows(2).all(|w| w[0].1 == w[1].1),
            "diverged: {digests:?}"
        );
    }

    fn owned(&self, d: DeviceId, owner: DeviceId, uuid: u128) -> Option<OwnedRecord> {
        self.node(d)
            .store
            .state()
            .owned
            .get(&(owner, "entry".to_owned(), Uuid::from_u128(uuid)))
            .cloned()
    }

    fn tag_name(&self, d: DeviceId, uuid: u128) -> Option<Value> {
        let rec = self
            .node(d)
            .store
            .state()
            .shared
            .get(&("tag".to_owned(), Uuid::from_u128(uuid)))?
            .visible()?;
        rec.get("name").cloned()
    }

    /// Delivers only the first queued message, drops the rest, then loses `gone` for good
    /// (disconnected from `peer` and removed from the network).
    fn deliver_first_then_lose(&mut self, gone: DeviceId, peer: DeviceId) {
        let (from, to, bytes) = self.queue.pop_front().expect("a queued message");
        self.queue.clear();
        let msg = decode(&bytes).expect("engine output decodes");
        self.input(to, Input::Message { from, msg });
        self.disconnect(gone, peer);
        self.nodes.remove(&gone);
    }

    /// Delivers queued messages until two that `selects` picks are queued, then swaps the first
    /// two of them (the later one overtakes the earlier); returns where the overtaking one is.
    fn swap_first_two_queued(&mut self, selects: impl Fn(&SyncMessage) -> bool) -> usize {
        let picked = |q: &(DeviceId, DeviceId, Vec<u8>)| decode(&q.2).is_ok_and(|m| selects(&m));
        while self.queue.iter().filter(|q| picked(q)).count() < 2 {
            let (from, to, bytes) = self
                .queue
                .pop_front()
                .expect("traffic until two are queued");
            let msg = decode(&bytes).expect("engine output decodes");
            self.input(to, Input::Message { from, msg });
        }
        let first = self.queue.iter().position(picked).expect("one queued");
        let second = first
            + 1
            + self
                .queue
                .iter()
                .skip(first + 1)
                .position(picked)
                .expect("two queued");
        self.queue.swap(first, second);
        first
    }

    /// Injects a message as if `from` had sent it to `to` (the transport authenticated `from`).
    fn inject(&mut self, from: DeviceId, to: DeviceId, msg: SyncMessage) {
        self.input(to, Input::Message { from, msg });
    }

    fn storage_writes_since(&self, d: DeviceId, mark: usize) -> usize {
        self.node(d).events.len().saturating_sub(mark)
    }
}

fn rec(owner: DeviceId, seq: u64, uuid: u128, data: Option<&[u8]>) -> OwnedRecord {
    OwnedRecord {
        owner,
        seq,
        hlc: Hlc::new(T0, seq as u32, owner),
        model: "entry".into(),
        uuid: Uuid::from_u128(uuid),
        data: data.map(<[u8]>::to_vec),
    }
}

fn shared(origin: DeviceId, seq: u64, time_ms: u64, name: &str) -> SharedChange {
    SharedChange {
        origin,
        seq,
        hlc: Hlc::new(time_ms, 0, origin),
        model: "tag".into(),
        record: Uuid::from_u128(500),
        kind: ChangeKind::Insert,
        fields: [("name".to_owned(), Value::from(name))].into(),
    }
}

// ------------------------------------------------------------------ convergence by hand

#[test]
fn two_replicas_converge_through_catch_up_after_one_missed_changes() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for i in 0..10 {
        net.put(a, i, format!("v{i}").as_bytes());
    }
    net.tag(a, 100, ChangeKind::Insert, "holiday");
    net.tag(b, 101, ChangeKind::Insert, "work");
    net.connect(a, b);
    net.settle();
    net.assert_converged();
    assert_eq!(
        net.owned(b, a, 9).and_then(|r| r.data),
        Some(b"v9".to_vec())
    );
    assert_eq!(net.tag_name(a, 101), Some(Value::from("work")));
    assert_eq!(net.node(b).replica.watermark(a), 10);
}

#[test]
fn three_replicas_converge_when_third_catches_up_from_relay_while_owner_is_offline() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    for i in 0..7 {
        net.put(a, i, b"x");
    }
    net.tag(a, 100, ChangeKind::Insert, "from-a");
    net.settle();
    net.disconnect(a, b);
    // a is offline; c learns a's records from b alone.
    net.connect(b, c);
    net.settle();
    assert_eq!(net.node(c).replica.watermark(a), 7);
    assert_eq!(net.tag_name(c, 100), Some(Value::from("from-a")));
    net.connect(a, c);
    net.settle();
    net.assert_converged();
}

#[test]
fn lost_push_is_repaired_by_gap_detection() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    net.put(a, 1, b"one");
    net.queue.clear(); // the push of seq 1 is lost
    net.put(a, 2, b"two");
    net.run();
    // seq 2 arrived above a gap: the catch-up it caused brought both, in order.
    assert_eq!(
        net.owned(b, a, 1).and_then(|r| r.data),
        Some(b"one".to_vec())
    );
    assert_eq!(net.node(b).replica.watermark(a), 2);
    net.assert_converged();
}

/// Whatever a live device holds, every live device eventually holds, even once the owner is
/// gone for good: a push that arrived above a gap (its predecessor was lost) must not leave
/// the receiver holding a record that no catch-up can ever pass on.
#[test]
fn owned_change_above_a_gap_never_strands_when_its_owner_is_gone() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    net.settle();
    net.put(a, 1, b"one");
    net.run();
    net.put(a, 2, b"two");
    net.queue.clear(); // the push of seq 2 is lost
    net.put(a, 3, b"three");
    // Seq 3 reaches b above its gap; a is gone for good before it answers b's catch-up.
    net.deliver_first_then_lose(a, b);
    net.connect(b, c);
    net.settle();
    for uuid in 1..=3 {
        assert_eq!(
            net.owned(b, a, uuid),
            net.owned(c, a, uuid),
            "record {uuid} of the gone owner differs between the two live devices"
        );
    }
    assert_eq!(
        net.owned(c, a, 1).and_then(|r| r.data),
        Some(b"one".to_vec())
    );
    net.assert_converged();
}

/// A catch-up page omits a record its server holds in a newer version above the page, so a
/// device whose catch-up is cut short there holds no version of that record, while a device
/// that got the older version in real time holds it, at the same watermark. Once the owner is
/// gone for good and removed, the survivors must still end up holding the same records.
#[test]
fn a_removed_owners_records_are_the_same_on_every_survivor_after_a_cut_short_catch_up() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    for uuid in 1..=4 {
        net.put(a, uuid, b"first");
    }
    net.settle();
    // b holds record 1 at seq 1; a overwrites it at seq 5, which b never gets.
    net.disconnect(a, b);
    net.put(a, 1, b"second");
    // c catches up from a: its first page (three records: seqs 2, 3, 4) omits record 1, which
    // a holds only at seq 5; a is lost for good right after that page.
    net.connect(a, c);
    let mut pages = 0;
    while let Some((from, to, bytes)) = net.queue.pop_front() {
        let msg = decode(&bytes).expect("decodes");
        let page = matches!(msg, SyncMessage::StateResponse(crate::StateResponse { .. }));
        net.input(to, Input::Message { from, msg });
        if page && to == c {
            pages += 1;
            break;
        }
    }
    assert_eq!(pages, 1, "c took a page from a");
    net.queue.clear();
    net.disconnect(a, c);
    net.nodes.remove(&a);
    assert_eq!(net.node(c).replica.watermark(a), 4);
    assert_eq!(net.node(b).replica.watermark(a), 4);
    assert_eq!(net.owned(c, a, 1), None, "the page left record 1 out");
    net.connect(b, c);
    net.cmd(b, Command::RemoveMember(a));
    for _ in 0..30 {
        net.advance(6_000);
    }
    for uuid in 1..=4 {
        assert_eq!(
            net.owned(b, a, uuid),
            net.owned(c, a, uuid),
            "record {uuid} of the removed owner differs between the survivors"
        );
    }
    assert_eq!(
        net.owned(c, a, 1).and_then(|r| r.data),
        Some(b"first".to_vec())
    );
    net.assert_converged();
}

/// A member sending made-up digests of a removed member's records in a loop gets one read of
/// its records a summary period, not one per digest; digests of devices outside the library
/// are ignored.
#[test]
fn digests_of_removed_members_records_in_a_loop_get_one_read_a_summary_period() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    net.connect(b, c);
    for uuid in 1..=4 {
        net.put(a, uuid, b"x");
    }
    net.settle();
    net.disconnect(a, b);
    net.nodes.remove(&a);
    net.cmd(b, Command::RemoveMember(a));
    net.settle();
    net.assert_converged();
    let through = net.node(b).replica.watermark(a);
    assert_eq!(through, 4);
    let rereads = |net: &Net| {
        net.node(b)
            .sent
            .iter()
            .filter(|(to, m)| {
                *to == c
                    && matches!(m, SyncMessage::StateRequest(crate::StateRequest { owner, since: 0, .. }) if *owner == a)
            })
            .count()
    };
    let before = rereads(&net);
    for digest in 0..100 {
        let claim = |owner| {
            SyncMessage::OwnedDigest(crate::OwnedDigest {
                owner,
                through,
                digest,
            })
        };
        net.inject(c, b, claim(a));
        net.inject(c, b, claim(dev(99)));
    }
    net.run();
    assert_eq!(rereads(&net) - before, 1, "one read for 100 digests");
    assert_eq!(net.node(b).replica.watermark(dev(99)), 0);
    net.assert_converged();
}

/// Simulator finding (seeds 2041494, 2088338, 2090812): a copy of a snapshot request (a
/// network that duplicates) arrived while the server's read for the first copy was pending.
/// The server started the stream again under the same request id and sent the first copy's
/// read as a page of the second, numbered from 0 again; the requester skipped the records in
/// between and kept a snapshot without them.
#[test]
fn a_duplicated_snapshot_request_never_makes_the_server_skip_records() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for uuid in 0..10 {
        net.tag(a, uuid, ChangeKind::Insert, "t");
    }
    let now = net.now;
    let node = net.nodes.get_mut(&a).expect("a");
    // Storage runs at once; its completions are held until the test feeds them.
    fn handle(node: &mut Node, now: Now, input: Input, held: &mut Vec<StorageDone>) -> Vec<Output> {
        node.replica.handle(now, input);
        let mut sent = Vec::new();
        while let Some(out) = node.replica.poll_output() {
            match out {
                Output::Storage(cmd) => held.extend(node.store.execute(cmd)),
                other => sent.push(other),
            }
        }
        sent
    }
    let mut pending = Vec::new();
    handle(node, now, Input::PeerUp { peer: b }, &mut pending);
    let request = SyncMessage::SharedSnapshotRequest(crate::SharedSnapshotRequest {
        request_id: 7,
        after: None,
        limit: 3,
        window: 1,
    });
    let first = Input::Message {
        from: b,
        msg: request.clone(),
    };
    handle(node, now, first, &mut pending);
    assert_eq!(pending.len(), 1, "the first page's read is pending");
    // The copy arrives before the read completes.
    let copy = Input::Message {
        from: b,
        msg: request,
    };
    handle(node, now, copy, &mut pending);
    let mut pages = Vec::new();
    // Completions in the order the reads were issued: the first copy's read first.
    while !pending.is_empty() {
        let done = pending.remove(0);
        for out in handle(node, now, Input::Storage(done), &mut pending) {
            if let Output::Send {
                msg: SyncMessage::SharedSnapshotResponse(page),
                ..
            } = out
            {
                let received = SyncMessage::PagesReceived(crate::PagesReceived {
                    request_id: 7,
                    pages: page.page + 1,
                });
                pages.push(page);
                let report = Input::Message {
                    from: b,
                    msg: received,
                };
                handle(node, now, report, &mut pending);
            }
        }
    }
    let numbers: Vec<u32> = pages.iter().map(|p| p.page).collect();
    let expected: Vec<u32> = (0..pages.len() as u32).collect();
    assert_eq!(numbers, expected, "pages numbered once each, in order");
    let keys: Vec<SharedKey> = pages
        .iter()
        .flat_map(|p| p.records.iter().map(SharedRecord::key))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys rise across the pages: {keys:?}"
    );
    let tags = keys.iter().filter(|k| k.0 == "tag").count();
    assert_eq!(tags, 10, "every tag in the snapshot");
    assert!(!pages.last().expect("pages").has_more);
}

/// The shared stream's version of the above: a change merged above a gap at one device must
/// reach the others, or not be held at all, once its origin is gone for good.
#[test]
fn shared_change_above_a_gap_never_strands_when_its_origin_is_gone() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    net.settle();
    net.tag(a, 100, ChangeKind::Insert, "one");
    net.run();
    net.tag(a, 101, ChangeKind::Insert, "two");
    net.queue.clear(); // the push of the second change is lost
    net.tag(a, 102, ChangeKind::Insert, "three");
    net.deliver_first_then_lose(a, b);
    net.connect(b, c);
    net.settle();
    for uuid in 100..=102 {
        assert_eq!(
            net.tag_name(b, uuid),
            net.tag_name(c, uuid),
            "tag {uuid} of the gone origin differs between the two live devices"
        );
    }
    assert_eq!(net.tag_name(c, 100), Some(Value::from("one")));
    net.assert_converged();
}

#[test]
fn reconnecting_a_synced_pair_costs_one_round_trip() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    for i in 0..50 {
        net.put(a, i, b"payload");
        net.tag(b, 1000 + i, ChangeKind::Insert, "t");
    }
    net.settle();
    net.disconnect(a, b);
    let before = net.bytes;
    net.connect(a, b);
    let messages = net.run();
    // A full summary (also the ack), member registers and neighbours each way; nothing
    // requested.
    assert_eq!(messages, 6);
    assert!(net.bytes - before < 1024, "{} bytes", net.bytes - before);
    assert!(!net.node(a).replica.is_fetching() && !net.node(b).replica.is_fetching());
}

#[test]
fn member_registers_travel_only_to_a_peer_whose_registers_differ() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let members_sent = |net: &Net, d: DeviceId| {
        let sent = &net.node(d).sent;
        sent.iter()
            .filter(|(_, m)| matches!(m, SyncMessage::Members(_)))
            .count()
    };
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    // The same bootstrap registers on both sides: a digest each way, no registers.
    assert_eq!(members_sent(&net, a) + members_sent(&net, b), 0);
    // A joiner that knows only itself and its sponsor lacks b's bootstrap registers (they
    // were never in the log): the digests differ, and the registers go both ways.
    net.cmd(a, Command::AddMember(c));
    net.add_node(c, Restored::bootstrap([c, a]), config(c));
    net.connect(a, c);
    net.settle();
    assert!(members_sent(&net, a) >= 1);
    assert!(
        net.node(c).replica.is_member(b),
        "c learned b from a's registers"
    );
    assert_eq!(
        net.node(a).replica.members().collect::<Vec<_>>(),
        net.node(c).replica.members().collect::<Vec<_>>()
    );
}

#[test]
fn digests_in_a_loop_get_one_answer_a_summary_period() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let answers = |net: &Net| {
        let sent = &net.node(a).sent;
        sent.iter()
            .filter(|(to, m)| *to == b && matches!(m, SyncMessage::Members(_)))
            .count()
    };
    let before = answers(&net);
    for digest in 0..100 {
        net.inject(b, a, SyncMessage::MembersDigest(digest));
    }
    assert_eq!(answers(&net) - before, 1, "one answer to 100 digests");
    net.advance(5_000);
    net.inject(b, a, SyncMessage::MembersDigest(7));
    assert_eq!(answers(&net) - before, 2, "and one more a period later");
}

// ------------------------------------------------------------------ device-owned rules

#[test]
fn delete_never_resurrects_after_late_older_version() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    net.inject(
        a,
        b,
        SyncMessage::StateChange(rec(a, 1, 5, Some(b"v1")).into()),
    );
    net.inject(a, b, SyncMessage::StateChange(rec(a, 2, 5, None).into()));
    net.inject(
        a,
        b,
        SyncMessage::StateChange(rec(a, 1, 5, Some(b"v1")).into()),
    );
    let stored = net.owned(b, a, 5).expect("tombstone stored");
    assert!(stored.is_tombstone());
    assert_eq!(stored.seq, 2);
}

/// The record `(owner, "entry", uuid)` as stored at `d`.
fn stored(net: &Net, d: DeviceId, owner: DeviceId, uuid: u128) -> Option<OwnedRecord> {
    let key = (owner, "entry".to_owned(), Uuid::from_u128(uuid));
    net.node(d).store.state().owned.get(&key).cloned()
}

#[test]
fn push_is_always_the_senders_own_record() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    net.connect(b, c);
    net.put(a, 5, b"genuine");
    net.settle();
    let genuine = stored(&net, b, a, 5).expect("a's record reached b");
    // c pushes a change with the id and a newer seq of a's record: a push names no owner, so
    // it can only ever be c's own record.
    net.inject(
        c,
        b,
        SyncMessage::StateChange(rec(a, 1, 5, Some(b"forged")).into()),
    );
    assert_eq!(stored(&net, b, a, 5), Some(genuine));
    assert_eq!(net.node(b).replica.watermark(a), 1);
    let forged = stored(&net, b, c, 5).expect("stored as c's record");
    assert_eq!((forged.owner, forged.hlc.device), (c, c));
}

#[test]
fn catch_up_page_can_never_hold_the_requesters_own_records() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.put(a, 5, b"mine");
    net.settle();
    let before = net.digest(a);
    let rid = net.request_state_held(a, b, b);
    // b answers a's request for b's records with a "newer" version of a's own record, as a
    // page of a's records: a fetches no such stream, so it is ignored...
    net.inject(
        b,
        a,
        SyncMessage::StateResponse(crate::StateResponse {
            request_id: rid,
            owner: a,
            since: 0,
            through: 9,
            records: vec![rec(a, 9, 5, Some(b"forged")).into()],
            has_more: false,
        }),
    );
    assert_eq!(net.digest(a), before);
    assert_eq!(net.node(a).replica.watermark(a), 1, "own head untouched");
    // ...and in the page of b's records it asked for, the change is b's record.
    net.inject(
        b,
        a,
        SyncMessage::StateResponse(crate::StateResponse {
            request_id: rid,
            owner: b,
            since: 0,
            through: 9,
            records: vec![rec(a, 9, 5, Some(b"forged")).into()],
            has_more: false,
        }),
    );
    assert_eq!(
        stored(&net, a, a, 5).and_then(|r| r.data),
        Some(b"mine".to_vec())
    );
    assert_eq!(stored(&net, a, b, 5).map(|r| r.owner), Some(b));
}

#[test]
fn watermark_advances_only_over_contiguous_changes() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.links.clear();
    net.input(b, Input::PeerUp { peer: a });
    net.inject(
        a,
        b,
        SyncMessage::StateChange(rec(a, 1, 1, Some(b"1")).into()),
    );
    net.inject(
        a,
        b,
        SyncMessage::StateChange(rec(a, 3, 3, Some(b"3")).into()),
    );
    assert_eq!(net.node(b).replica.watermark(a), 1);
    assert!(
        net.owned(b, a, 3).is_none(),
        "a change above a gap is not held: catch-up brings it in order"
    );
    net.inject(
        a,
        b,
        SyncMessage::StateChange(rec(a, 2, 2, Some(b"2")).into()),
    );
    assert_eq!(net.node(b).replica.watermark(a), 2);
    net.inject(
        a,
        b,
        SyncMessage::StateChange(rec(a, 3, 3, Some(b"3")).into()),
    );
    assert_eq!(net.node(b).replica.watermark(a), 3);
    assert!(net.owned(b, a, 3).is_some());
}

#[test]
fn restart_resumes_from_persisted_watermark_without_full_resync() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    for i in 0..20 {
        net.put(a, i, b"x");
    }
    net.settle();
    net.disconnect(a, b);
    net.put(a, 100, b"new");
    // b restarts from its store.
    let restored = net.node(b).store.restored();
    let store = net.nodes.get(&b).map(|n| n.store.clone()).expect("b");
    net.nodes.remove(&b);
    net.add_node(b, restored, config(b));
    if let Some(n) = net.nodes.get_mut(&b) {
        n.store = store;
    }
    net.connect(a, b);
    net.run();
    let requests: Vec<u64> = net
        .node(b)
        .sent
        .iter()
        .filter_map(|(_, m)| match m {
            SyncMessage::StateRequest(crate::StateRequest { since, .. }) => Some(*since),
            _ => None,
        })
        .collect();
    assert_eq!(requests, vec![20], "only the missing change is requested");
    net.settle();
    net.assert_converged();
}

#[test]
fn hlc_is_restored_across_restart() {
    let a = dev(1);
    let mut net = Net::new(1);
    net.put(a, 1, b"x");
    let last = net.node(a).replica.hlc();
    let restored = net.node(a).store.restored();
    assert_eq!(restored.hlc, last);
    // Wall clock stepped back an hour.
    net.now.wall_ms -= 3_600_000;
    let replica = Replica::new(config(a), restored, net.now);
    let mut r = replica;
    r.handle(
        net.now,
        Input::Command {
            id: CommandId(9),
            cmd: Command::PutOwned {
                model: "entry".into(),
                uuid: Uuid::from_u128(2),
                data: vec![],
            },
        },
    );
    assert!(r.hlc() > last);
}

#[test]
fn lost_database_raises_own_counters_from_peer_heads() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    for i in 0..5 {
        net.put(a, i, b"x");
    }
    net.settle();
    net.disconnect(a, b);
    // a loses its database and comes back under the same id.
    net.nodes.remove(&a);
    net.add_node(a, Restored::bootstrap([a, b]), config(a));
    net.connect(a, b);
    net.run();
    assert!(net
        .node(a)
        .events
        .contains(&Event::OwnHeadRaised { seq: 5 }));
    net.put(a, 0, b"after-loss");
    net.settle();
    assert_eq!(
        net.owned(b, a, 0).and_then(|r| r.data),
        Some(b"after-loss".to_vec())
    );
}

// ------------------------------------------------------------------ shared rules

#[test]
fn concurrent_shared_edits_converge_to_highest_hlc() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.tag(a, 7, ChangeKind::Insert, "from-a");
    net.now.wall_ms += 1;
    net.tag(b, 7, ChangeKind::Insert, "from-b");
    net.connect(a, b);
    net.settle();
    net.assert_converged();
    assert_eq!(net.tag_name(a, 7), Some(Value::from("from-b")));
}

#[test]
fn far_future_shared_change_is_refused_until_time_catches_up() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let future = net.now.wall_ms + 10 * 60_000;
    let clock_before = net.node(b).replica.hlc();
    net.inject(
        a,
        b,
        SyncMessage::SharedChange(shared(a, 1, future, "2099")),
    );
    assert_eq!(net.node(b).replica.version_vector().get(a), 0);
    assert_eq!(net.tag_name(b, 500), None);
    assert_eq!(
        net.node(b).replica.hlc(),
        clock_before,
        "clock not dragged forward"
    );
    assert!(net
        .node(b)
        .events
        .iter()
        .any(|e| matches!(e, Event::ClockSkew { device, .. } if *device == a)));
    // Ten minutes later the same change is within the bound and accepted.
    net.now.wall_ms += 10 * 60_000;
    net.inject(
        a,
        b,
        SyncMessage::SharedChange(shared(a, 1, future, "2099")),
    );
    assert_eq!(net.node(b).replica.version_vector().get(a), 1);
}

#[test]
fn shared_change_whose_origin_is_not_its_stamp_device_is_refused() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let mut c = shared(a, 1, T0, "x");
    c.hlc.device = b;
    let before = net.digest(b);
    net.inject(a, b, SyncMessage::SharedChange(c));
    assert_eq!(net.digest(b), before);
    assert!(net
        .node(b)
        .disconnects
        .contains(&(a, Refusal::OriginMismatch)));
}

#[test]
fn unknown_model_is_kept_and_logged_but_the_wrong_kind_is_refused() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    // A model b does not know yet (a rolling upgrade): kept, logged, counted, not a block.
    let mut c = shared(a, 1, T0, "x");
    c.model = "no-such-model".into();
    net.inject(a, b, SyncMessage::SharedChange(c.clone()));
    assert_eq!(net.node(b).replica.version_vector().get(a), 1);
    let key = ("no-such-model".to_owned(), c.record);
    assert_eq!(
        net.node(b)
            .store
            .state()
            .shared
            .get(&key)
            .and_then(|r| r.visible()),
        c.to_record().visible()
    );
    let mut r = rec(a, 1, 1, Some(b"y"));
    r.model = "no-such-owned-model".into();
    net.inject(a, b, SyncMessage::StateChange(r.clone().into()));
    assert_eq!(net.node(b).replica.watermark(a), 1);
    let stored = net.node(b).store.state().owned.get(&r.key()).cloned();
    assert_eq!(stored, Some(r));
    // A model b knows as shared, pushed as device-owned (and the reverse): refused.
    let before = net.digest(b);
    let mut r = rec(a, 2, 2, Some(b"x"));
    r.model = "tag".into();
    net.inject(a, b, SyncMessage::StateChange(r.into()));
    let mut c = shared(a, 2, T0 + 1, "x");
    c.model = "entry".into();
    net.inject(a, b, SyncMessage::SharedChange(c));
    assert_eq!(net.digest(b), before);
    assert_eq!(net.node(b).replica.watermark(a), 1);
    assert_eq!(net.node(b).replica.version_vector().get(a), 1);
}

#[test]
fn local_command_on_unknown_or_wrong_model_fails_with_typed_reason() {
    let a = dev(1);
    let mut net = Net::new(1);
    let id = net.cmd(
        a,
        Command::PutOwned {
            model: "tag".into(),
            uuid: Uuid::nil(),
            data: vec![],
        },
    );
    assert!(net.node(a).events.contains(&Event::CommandFailed {
        id,
        reason: CommandError::WrongModelKind("tag".into())
    }));
    let id = net.cmd(
        a,
        Command::DeleteShared {
            model: "nope".into(),
            uuid: Uuid::nil(),
        },
    );
    assert!(net.node(a).events.contains(&Event::CommandFailed {
        id,
        reason: CommandError::UnknownModel("nope".into())
    }));
    assert_eq!(net.node(a).replica.version_vector().get(a), 0);
}

// ------------------------------------------------------------------ acks and pruning

#[test]
fn acks_are_cumulative_debounced_and_from_the_authenticated_sender() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let mark = net.node(b).sent.len();
    for i in 0..20 {
        net.tag(a, i, ChangeKind::Insert, "t");
    }
    net.run();
    net.advance(5_100); // past the 5 s ack delay: the next summary carries the ack
    let acks = net.node(b).sent[mark..]
        .iter()
        .filter(|(_, m)| matches!(m, SyncMessage::AckSharedChanges(crate::Ack { .. })))
        .count();
    let summaries = net.node(b).sent[mark..]
        .iter()
        .filter(|(_, m)| {
            matches!(
                m,
                SyncMessage::Heartbeat(crate::Summary { .. })
                    | SyncMessage::HeartbeatDelta(crate::Summary { .. })
            )
        })
        .count();
    assert_eq!(
        (summaries, acks),
        (1, 0),
        "one summary carries the cumulative ack for 20 changes"
    );
    assert_eq!(
        net.node(a).replica.horizon().get(a),
        20,
        "pruned once b acked"
    );
}

#[test]
fn ack_naming_another_device_is_refused() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    net.tag(a, 1, ChangeKind::Insert, "t");
    net.settle();
    let vv: VersionVector = [(a, 1)].into_iter().collect();
    net.inject(
        b,
        a,
        SyncMessage::AckSharedChanges(crate::Ack { acker: c, vv }),
    );
    assert!(net
        .node(a)
        .disconnects
        .contains(&(b, Refusal::AckerMismatch)));
    assert_eq!(
        net.node(a).replica.horizon().get(a),
        0,
        "c never acked: log pinned"
    );
}

#[test]
fn member_that_never_acked_pins_the_log() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(3);
    net.connect(a, b);
    for i in 0..5 {
        net.tag(a, i, ChangeKind::Insert, "t");
    }
    net.settle();
    assert_eq!(net.node(a).replica.horizon().get(a), 0);
    assert_eq!(net.node(a).store.state().log_len(), 5);
}

#[test]
fn new_member_gets_pruned_history_by_snapshot() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(2);
    net.connect(a, b);
    for i in 0..10 {
        net.tag(a, i, ChangeKind::Insert, &format!("t{i}"));
    }
    net.run(); // b has seen the inserts, so its rename is causally later
    net.tag(b, 3, ChangeKind::Update, "renamed");
    net.settle();
    assert_eq!(net.node(a).replica.horizon().get(a), 10, "fully pruned");
    // c joins: a adds it, c boots knowing the members.
    net.cmd(a, Command::AddMember(c));
    net.settle();
    net.add_node(c, Restored::bootstrap([a, b, c]), config(c));
    net.connect(a, c);
    net.settle();
    assert!(net.node(c).events.iter().any(|e| matches!(
        e,
        Event::CaughtUp {
            stream: Stream::SharedSnapshot,
            ..
        }
    )));
    assert_eq!(net.tag_name(c, 3), Some(Value::from("renamed")));
    net.connect(b, c);
    net.settle();
    net.assert_converged();
    // c's own horizon answers truncated below the snapshot it took.
    // (a logged 10 tags and the AddMember: 11 changes)
    assert_eq!(net.node(c).replica.horizon().get(a), 11);
}

/// A snapshot cut short must leave nothing behind: its pages are staged and applied only once
/// the last one arrived. Merged page by page, a device whose snapshot server was lost for good
/// after the first page kept registers no other device would ever get.
#[test]
fn snapshot_cut_short_by_a_lost_server_leaves_nothing_behind() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(2);
    net.connect(a, b);
    for i in 0..10 {
        net.tag(a, i, ChangeKind::Insert, &format!("t{i}"));
    }
    net.settle();
    net.cmd(a, Command::AddMember(c));
    net.settle();
    assert!(
        net.node(a).replica.horizon().get(a) >= 10,
        "pruned: c needs a snapshot"
    );
    // a writes a record b never gets; it sorts first, so it is on the snapshot's first page.
    net.disconnect(a, b);
    let fields: BTreeMap<String, Value> = [("name".to_owned(), Value::from("only-a"))].into();
    let done = net.cmd(
        a,
        Command::InsertShared {
            model: "album".into(),
            uuid: Uuid::from_u128(0),
            fields,
        },
    );
    assert!(net.node(a).events.contains(&Event::CommandDone(done)));
    net.add_node(c, Restored::bootstrap([a, b, c]), config(c));
    net.connect(a, c);
    // Deliver until c has the first snapshot page; then a is lost for good.
    let mut pages = 0;
    while let Some((from, to, bytes)) = net.queue.pop_front() {
        let msg = decode(&bytes).expect("decodes");
        let page = matches!(
            msg,
            SyncMessage::SharedSnapshotResponse(crate::SharedSnapshotResponse { .. })
        );
        net.input(to, Input::Message { from, msg });
        if page && to == c {
            pages += 1;
            break;
        }
    }
    assert_eq!(pages, 1, "c took a snapshot from a");
    net.queue.clear();
    net.disconnect(a, c);
    net.nodes.remove(&a);
    net.connect(b, c);
    net.settle();
    let album = |net: &Net, d: DeviceId| {
        net.node(d)
            .store
            .state()
            .shared
            .get(&("album".to_owned(), Uuid::from_u128(0)))
            .cloned()
    };
    assert_eq!(
        album(&net, c),
        album(&net, b),
        "c kept what no one else has"
    );
    net.assert_converged();
}

#[test]
fn evicted_member_stops_pinning_and_returns_through_snapshot() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    for d in [a, b, c] {
        let mut cfg = config(d);
        cfg.eviction_after = Some(Duration::from_secs(60));
        let restored = Restored::bootstrap([a, b, c]);
        net.nodes.remove(&d);
        net.add_node(d, restored, cfg);
    }
    net.connect(a, b);
    for i in 0..5 {
        net.tag(a, i, ChangeKind::Insert, "t");
    }
    net.settle();
    assert_eq!(net.node(a).replica.horizon().get(a), 0, "c pins the log");
    for _ in 0..12 {
        net.advance(6_000);
    }
    assert_eq!(net.node(a).replica.horizon().get(a), 5, "c evicted");
    net.connect(a, c);
    net.settle();
    assert_eq!(net.tag_name(c, 4), Some(Value::from("t")));
    net.connect(b, c);
    net.settle();
    net.assert_converged();
}

#[test]
fn removed_member_is_refused() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(3);
    net.connect(a, b);
    net.connect(a, c);
    net.settle();
    net.cmd(a, Command::RemoveMember(c));
    net.settle();
    assert!(!net.node(b).replica.is_member(c));
    assert!(net.node(a).disconnects.contains(&(c, Refusal::NotMember)));
    let before = net.digest(b);
    net.links.insert((c, b));
    net.input(b, Input::PeerUp { peer: c });
    net.inject(
        c,
        b,
        SyncMessage::StateChange(rec(c, 1, 1, Some(b"late")).into()),
    );
    assert_eq!(net.digest(b), before);
    assert!(net.node(b).disconnects.contains(&(c, Refusal::NotMember)));
}

/// A device that joins after a member was removed still gets what that member wrote: its
/// records stay part of the library, on the devices that joined before and after alike.
#[test]
fn device_joining_after_a_removal_gets_the_removed_members_records() {
    let (a, b, c) = (dev(1), dev(2), dev(3));
    let mut net = Net::new(2);
    net.connect(a, b);
    for i in 0..5 {
        net.put(b, i, b"from b");
    }
    net.tag(b, 100, ChangeKind::Insert, "tag of b");
    net.settle();
    net.disconnect(a, b);
    net.cmd(a, Command::RemoveMember(b));
    net.cmd(a, Command::AddMember(c));
    net.settle();
    net.nodes.remove(&b);
    net.add_node(c, Restored::bootstrap([a, c]), config(c));
    net.connect(a, c);
    // Long enough for a full summary (every 2 minutes) after c learned of b.
    for _ in 0..30 {
        net.advance(6_000);
    }
    for i in 0..5 {
        assert_eq!(
            net.owned(c, b, i).and_then(|r| r.data),
            Some(b"from b".to_vec()),
            "record {i} of the removed member"
        );
    }
    assert_eq!(net.tag_name(c, 100), Some(Value::from("tag of b")));
    net.assert_converged();
}

// ------------------------------------------------------------------ hostile input

#[test]
fn non_member_is_refused_before_any_state_change() {
    let (a, x) = (dev(1), dev(99));
    let mut net = Net::new(1);
    let before = net.digest(a);
    net.input(a, Input::PeerUp { peer: x });
    net.inject(
        x,
        a,
        SyncMessage::StateChange(rec(x, 1, 1, Some(b"x")).into()),
    );
    assert_eq!(net.digest(a), before);
    assert_eq!(net.node(a).disconnects.len(), 2);
    assert!(net
        .node(a)
        .disconnects
        .iter()
        .all(|(p, r)| *p == x && *r == Refusal::NotMember));
    assert_eq!(net.node(a).replica.peers().count(), 0);
}

#[test]
fn request_flood_keeps_pending_reads_bounded() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.links.clear();
    for i in 0..10 {
        net.put(a, i, b"x");
    }
    let now = net.now;
    let n = net.nodes.get_mut(&a).expect("a");
    n.replica.handle(now, Input::PeerUp { peer: b });
    for i in 0..1000 {
        n.replica.handle(
            now,
            Input::Message {
                from: b,
                msg: SyncMessage::StateRequest(crate::StateRequest {
                    request_id: i,
                    owner: a,
                    since: 0,
                    limit: u32::MAX,
                    window: 1,
                }),
            },
        );
    }
    assert_eq!(n.replica.pending_reads(), 4);
    let mut busy = 0;
    let mut reads = Vec::new();
    while let Some(o) = n.replica.poll_output() {
        match o {
            Output::Send {
                msg:
                    SyncMessage::Error(crate::ErrorReply {
                        code: ErrorCode::Busy,
                        ..
                    }),
                ..
            } => busy += 1,
            Output::Storage(cmd @ StorageCommand::ReadOwned { .. }) => reads.push(cmd),
            _ => {}
        }
    }
    assert_eq!(busy, 996);
    assert!(reads
        .iter()
        .all(|c| matches!(c, StorageCommand::ReadOwned { limit, .. } if *limit == 4096)));
}

#[test]
fn absurd_limit_is_capped() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for i in 0..10 {
        net.put(a, i, b"x");
    }
    if let Some(n) = net.nodes.get_mut(&a) {
        n.replica.config.max_page_records = 4;
    }
    net.links.insert((a, b));
    net.input(a, Input::PeerUp { peer: b });
    net.queue.clear();
    net.inject(
        b,
        a,
        SyncMessage::StateRequest(crate::StateRequest {
            request_id: 1,
            owner: a,
            since: 0,
            limit: u32::MAX,
            window: 1,
        }),
    );
    let page = net.node(a).sent.iter().rev().find_map(|(_, m)| match m {
        SyncMessage::StateResponse(crate::StateResponse {
            records,
            has_more,
            through,
            ..
        }) => Some((records.len(), *has_more, *through)),
        _ => None,
    });
    assert_eq!(page, Some((4, true, 4)));
}

#[test]
fn unsolicited_responses_and_unknown_completions_are_ignored() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let before = net.digest(a);
    let events = net.node(a).events.len();
    net.inject(
        b,
        a,
        SyncMessage::StateResponse(crate::StateResponse {
            request_id: 777,
            owner: b,
            since: 0,
            through: 1,
            records: vec![rec(b, 1, 1, Some(b"x")).into()],
            has_more: false,
        }),
    );
    net.input(
        a,
        Input::Storage(StorageDone::Owned {
            id: ReadId(12345),
            records: vec![],
            more: false,
        }),
    );
    assert_eq!(net.digest(a), before);
    assert_eq!(net.storage_writes_since(a, events), 0);
}

#[test]
fn spurious_ticks_are_no_ops() {
    let a = dev(1);
    let mut net = Net::new(1);
    let before = net.digest(a);
    for _ in 0..10 {
        net.input(a, Input::Tick);
    }
    assert_eq!(net.digest(a), before);
    assert!(net.node(a).replica.poll_timeout().is_some());
}

#[test]
fn batch_of_writes_is_pushed_as_batches() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let mut cmds: Vec<Command> = (0..5)
        .map(|i| Command::PutOwned {
            model: "entry".into(),
            uuid: Uuid::from_u128(i),
            data: vec![1],
        })
        .collect();
    cmds.push(Command::InsertShared {
        model: "tag".into(),
        uuid: Uuid::from_u128(9),
        fields: BTreeMap::new(),
    });
    cmds.push(Command::DeleteShared {
        model: "tag".into(),
        uuid: Uuid::from_u128(8),
    });
    let id = net.cmd(a, Command::Batch(cmds));
    assert!(net.node(a).events.contains(&Event::CommandDone(id)));
    let kinds: Vec<&str> = net
        .queue
        .iter()
        .map(|(_, _, b)| decode(b).map_or("?", |m| m.kind()))
        .collect();
    assert_eq!(kinds, ["StateBatch", "SharedChangeBatch"]);
    net.settle();
    net.assert_converged();
    assert_eq!(net.node(b).replica.watermark(a), 5);
    assert_eq!(net.node(b).replica.version_vector().get(a), 2);
}

#[test]
fn batch_with_one_invalid_write_changes_nothing() {
    let a = dev(1);
    let mut net = Net::new(1);
    let before = net.digest(a);
    let cmds = vec![
        Command::PutOwned {
            model: "entry".into(),
            uuid: Uuid::from_u128(1),
            data: vec![1],
        },
        Command::PutOwned {
            model: "nope".into(),
            uuid: Uuid::from_u128(2),
            data: vec![1],
        },
    ];
    let id = net.cmd(a, Command::Batch(cmds));
    assert!(net.node(a).events.contains(&Event::CommandFailed {
        id,
        reason: CommandError::UnknownModel("nope".into())
    }));
    assert_eq!(net.digest(a), before);
    assert_eq!(net.node(a).replica.watermark(a), 0);
    let nested = net.cmd(a, Command::Batch(vec![Command::Batch(vec![])]));
    assert!(net.node(a).events.contains(&Event::CommandFailed {
        id: nested,
        reason: CommandError::NotBatchable
    }));
}

/// Summaries carry only what changed: an idle pair exchanges no summary at all but a full
/// one every two minutes; after a write, the next summary carries the one entry that rose.
#[test]
fn summaries_carry_only_what_rose_and_idle_links_stay_quiet() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let summaries = |net: &Net, mark: usize| -> Vec<SyncMessage> {
        net.node(a).sent[mark..]
            .iter()
            .filter(|(to, _)| *to == b)
            .map(|(_, m)| m.clone())
            .filter(|m| {
                matches!(
                    m,
                    SyncMessage::Heartbeat(crate::Summary { .. })
                        | SyncMessage::HeartbeatDelta(crate::Summary { .. })
                )
            })
            .collect()
    };
    let mark = net.node(a).sent.len();
    for _ in 0..26 {
        net.advance(5_000);
    }
    let idle = summaries(&net, mark);
    assert_eq!(
        idle.len(),
        1,
        "one full summary in 130 s of idling: {idle:?}"
    );
    assert!(matches!(
        idle[0],
        SyncMessage::Heartbeat(crate::Summary { .. })
    ));
    net.tag(a, 1, ChangeKind::Insert, "x");
    net.put(a, 2, b"y");
    let mark = net.node(a).sent.len();
    net.run();
    net.advance(5_000);
    let after = summaries(&net, mark);
    let vv_a: VersionVector = [(a, 1)].into_iter().collect();
    assert_eq!(
        after,
        vec![SyncMessage::HeartbeatDelta(crate::Summary {
            heads: BTreeMap::new(),
            vv: vv_a
        })],
        "the delta names what rose and b cannot learn first-hand: a's vector entry (its ack), \
         not a's own head (a pushed b the change itself)"
    );
}

#[test]
fn summaries_name_heads_only_to_peers_that_cannot_learn_them_first_hand() {
    // A chain a - b - c, and d paired with b and a: b's summaries tell c of a's head (c is
    // not connected to a), never d (a pushes d its changes itself).
    let (a, b, c, d) = (dev(1), dev(2), dev(3), dev(4));
    let mut net = Net::new(4);
    net.connect(a, b);
    net.connect(b, c);
    net.connect(b, d);
    net.connect(a, d);
    net.settle();
    net.advance(1_000); // neighbour lists are out
    let mark = net.node(b).sent.len();
    net.put(a, 1, b"x");
    net.run();
    net.advance(5_000);
    let heads_to = |to: DeviceId| -> Vec<BTreeMap<DeviceId, u64>> {
        net.node(b).sent[mark..]
            .iter()
            .filter(|(t, _)| *t == to)
            .filter_map(|(_, m)| match m {
                SyncMessage::HeartbeatDelta(s) => Some(s.heads.clone()),
                _ => None,
            })
            .collect()
    };
    assert!(
        heads_to(c).iter().any(|h| h.get(&a) == Some(&1)),
        "{:?}",
        heads_to(c)
    );
    assert!(
        heads_to(d).iter().all(|h| !h.contains_key(&a)),
        "{:?}",
        heads_to(d)
    );
    net.settle();
    net.assert_converged();
}

#[test]
fn single_member_library_prunes_its_own_log_after_the_append() {
    let a = dev(1);
    let mut net = Net::new(1);
    net.tag(a, 1, ChangeKind::Insert, "x");
    net.tag(a, 2, ChangeKind::Insert, "y");
    net.advance(5_100); // the debounced ack step (5 s) recomputes pruning
    assert!(net.node(a).store.state().log.is_empty());
    assert_eq!(net.node(a).replica.horizon().get(a), 2);
}

#[test]
fn response_page_larger_than_requested_is_refused() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let rid = net.request_state_held(a, b, b);
    let before = net.digest(a);
    let records: Vec<OwnedRecord> = (1..=4)
        .map(|s| rec(b, s, u128::from(s), Some(b"x")))
        .collect();
    net.inject(
        b,
        a,
        SyncMessage::StateResponse(crate::StateResponse {
            request_id: rid,
            owner: b,
            since: 0,
            through: 4,
            records: records.into_iter().map(Into::into).collect(),
            has_more: false,
        }),
    );
    assert_eq!(net.digest(a), before, "page of 4 when 3 were asked");
    assert!(net
        .node(a)
        .disconnects
        .contains(&(b, Refusal::MalformedResponse)));
}

#[test]
fn clock_observed_from_device_owned_changes_survives_restart() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    // b's stamp is a minute ahead of a's clock (within the drift bound).
    let mut r = rec(b, 1, 1, Some(b"x"));
    r.hlc = Hlc::new(net.now.wall_ms + 60_000, 3, b);
    net.inject(b, a, SyncMessage::StateChange(r.clone().into()));
    assert!(net.node(a).replica.hlc() > r.hlc);
    let restored = net.node(a).store.restored();
    let restarted = Replica::new(config(a), restored, net.now);
    assert!(restarted.hlc() > r.hlc, "observed stamp persisted");
}

#[test]
fn pages_received_goes_out_before_the_page_is_stored() {
    // Pipelining: moving the responder's window does not depend on this page being durable,
    // so the report is emitted ahead of the page's writes and a driver can send it while
    // they commit.
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    net.connect(a, b);
    net.settle();
    let rid = net.request_state_held(a, b, b);
    let now = net.now;
    let node = net.nodes.get_mut(&a).expect("node a");
    // Stamps a little ahead of a's clock: a persists the clock it observed, after the request.
    let records: Vec<OwnedRecord> = (1..=3)
        .map(|s| {
            let mut r = rec(b, s, u128::from(s), Some(b"x"));
            r.hlc = Hlc::new(now.wall_ms + 1_000, 0, b);
            r
        })
        .collect();
    node.replica.handle(
        now,
        Input::Message {
            from: b,
            msg: SyncMessage::StateResponse(crate::StateResponse {
                request_id: rid,
                owner: b,
                since: 0,
                through: 3,
                records: records.into_iter().map(Into::into).collect(),
                has_more: true,
            }),
        },
    );
    let outputs: Vec<Output> = std::iter::from_fn(|| node.replica.poll_output()).collect();
    let request = outputs.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                msg: SyncMessage::PagesReceived(crate::PagesReceived { pages: 1, .. }),
                ..
            }
        )
    });
    let put = outputs
        .iter()
        .position(|o| matches!(o, Output::Storage(StorageCommand::PutOwned(_))));
    let first_write = outputs.iter().position(|o| matches!(o, Output::Storage(_)));
    let watermark = outputs.iter().position(|o| {
        matches!(
            o,
            Output::Storage(StorageCommand::SetWatermark { seq: 3, .. })
        )
    });
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Storage(StorageCommand::SetHlc(_)))),
        "{outputs:?}"
    );
    assert!(
        matches!(
            (request, first_write, put, watermark),
            (Some(r), Some(f), Some(p), Some(w)) if r < f && f <= p && p < w
        ),
        "{outputs:?}"
    );
}

/// The pages `d` sent `to` answering `request_id`: (since, through, has_more).
fn pages_sent(net: &Net, d: DeviceId, to: DeviceId, rid: u64) -> Vec<(u64, u64, bool)> {
    net.node(d)
        .sent
        .iter()
        .filter_map(|(t, m)| match m {
            SyncMessage::StateResponse(crate::StateResponse {
                request_id,
                since,
                through,
                has_more,
                ..
            }) if *t == to && *request_id == rid => Some((*since, *through, *has_more)),
            _ => None,
        })
        .collect()
}

/// A (owner of 20 records, pages of at most 3) serving B, which is connected but asked
/// nothing yet.
fn serving_twenty_records() -> (Net, DeviceId, DeviceId) {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for i in 0..20 {
        net.put(a, i, b"x");
    }
    if let Some(n) = net.nodes.get_mut(&a) {
        n.replica.config.max_page_records = 3;
    }
    net.links.insert((a, b));
    net.input(a, Input::PeerUp { peer: b });
    net.queue.clear();
    (net, a, b)
}

fn state_request(owner: DeviceId, window: u32) -> SyncMessage {
    SyncMessage::StateRequest(crate::StateRequest {
        request_id: 7,
        owner,
        since: 0,
        limit: 3,
        window,
    })
}

#[test]
fn catch_up_streams_a_window_of_pages_and_moves_it_as_pages_arrive() {
    let (mut net, a, b) = serving_twenty_records();
    net.inject(b, a, state_request(a, 3));
    // One page at first (slow start), then one more in flight for every page reported, up
    // to the window of three, without a request per page.
    assert_eq!(pages_sent(&net, a, b, 7), vec![(0, 3, true)]);
    net.inject(
        b,
        a,
        SyncMessage::PagesReceived(crate::PagesReceived {
            request_id: 7,
            pages: 1,
        }),
    );
    let pages = pages_sent(&net, a, b, 7);
    assert_eq!(pages[1..], [(3, 6, true), (6, 9, true)], "two in flight");
    net.inject(
        b,
        a,
        SyncMessage::PagesReceived(crate::PagesReceived {
            request_id: 7,
            pages: 3,
        }),
    );
    assert_eq!(
        pages_sent(&net, a, b, 7).len(),
        6,
        "three in flight: the window"
    );
    // A repeated, older or unknown report moves nothing.
    for (request_id, pages) in [(7, 3), (7, 1), (8, 6)] {
        net.inject(
            b,
            a,
            SyncMessage::PagesReceived(crate::PagesReceived { request_id, pages }),
        );
    }
    assert_eq!(pages_sent(&net, a, b, 7).len(), 6);
    // A report beyond what was sent counts as all of it.
    net.inject(
        b,
        a,
        SyncMessage::PagesReceived(crate::PagesReceived {
            request_id: 7,
            pages: u32::MAX,
        }),
    );
    let pages = pages_sent(&net, a, b, 7);
    assert_eq!(pages.len(), 7, "{pages:?}");
    assert_eq!(pages.last(), Some(&(18, 20, false)));
    // Each page starts where the previous one ended.
    assert!(pages.windows(2).all(|w| w[0].1 == w[1].0), "{pages:?}");
    // The stream ended: nothing more, whatever B reports.
    net.inject(
        b,
        a,
        SyncMessage::PagesReceived(crate::PagesReceived {
            request_id: 7,
            pages: 7,
        }),
    );
    assert_eq!(pages_sent(&net, a, b, 7).len(), 7);
}

#[test]
fn served_pages_in_flight_are_bounded_in_bytes_whatever_the_window() {
    let (mut net, a, b) = serving_twenty_records();
    if let Some(n) = net.nodes.get_mut(&a) {
        n.replica.config.serve_window_bytes = 1;
    }
    net.inject(b, a, state_request(a, 1000));
    assert_eq!(pages_sent(&net, a, b, 7).len(), 1, "one page at a time");
    net.inject(
        b,
        a,
        SyncMessage::PagesReceived(crate::PagesReceived {
            request_id: 7,
            pages: 1,
        }),
    );
    assert_eq!(pages_sent(&net, a, b, 7).len(), 2);
}

#[test]
fn a_new_request_for_the_same_stream_ends_the_previous_one() {
    let (mut net, a, b) = serving_twenty_records();
    net.inject(b, a, state_request(a, 1));
    net.inject(
        b,
        a,
        SyncMessage::StateRequest(crate::StateRequest {
            request_id: 8,
            owner: a,
            since: 9,
            limit: 3,
            window: 1,
        }),
    );
    // Request 7's report no longer moves anything; request 8's does.
    for request_id in [7, 8] {
        net.inject(
            b,
            a,
            SyncMessage::PagesReceived(crate::PagesReceived {
                request_id,
                pages: 1,
            }),
        );
    }
    assert_eq!(pages_sent(&net, a, b, 7).len(), 1);
    assert_eq!(
        pages_sent(&net, a, b, 8),
        vec![(9, 12, true), (12, 15, true)]
    );
}

#[test]
fn catch_up_over_a_reordering_network_restarts_from_the_last_page_applied() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for i in 0..20 {
        net.put(a, i, b"x");
    }
    net.connect(a, b);
    // Deliver until A has streamed B some pages, then swap the first two in the queue.
    net.swap_first_two_queued(|m| {
        matches!(m, SyncMessage::StateResponse(crate::StateResponse { .. }))
    });
    let requests_before = net
        .node(b)
        .sent
        .iter()
        .filter(|(_, m)| matches!(m, SyncMessage::StateRequest(crate::StateRequest { .. })))
        .count();
    net.settle();
    let restarts: Vec<u64> = net
        .node(b)
        .sent
        .iter()
        .filter_map(|(_, m)| match m {
            SyncMessage::StateRequest(crate::StateRequest { since, .. }) => Some(*since),
            _ => None,
        })
        .skip(requests_before)
        .collect();
    assert_eq!(restarts.len(), 1, "one restart: {restarts:?}");
    assert!(
        restarts[0].is_multiple_of(3) && restarts[0] < 20,
        "from the end of a page applied: {restarts:?}"
    );
    assert!(
        net.node(b).disconnects.is_empty(),
        "reordering is not misbehaviour"
    );
    net.assert_converged();
    for i in 0..20 {
        assert_eq!(net.owned(b, a, i).and_then(|r| r.data), Some(b"x".to_vec()));
    }
}

/// The log pages `d` sent `to` answering `request_id`: (page, entries, has_more).
fn log_pages_sent(net: &Net, d: DeviceId, to: DeviceId, rid: u64) -> Vec<(u32, usize, bool)> {
    net.node(d)
        .sent
        .iter()
        .filter_map(|(t, m)| match m {
            SyncMessage::SharedChangeResponse(crate::SharedChangeResponse {
                request_id,
                page,
                entries,
                has_more,
                ..
            }) if *t == to && *request_id == rid => Some((*page, entries.len(), *has_more)),
            _ => None,
        })
        .collect()
}

#[test]
fn shared_log_catch_up_streams_a_window_of_pages_and_moves_it_as_pages_arrive() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for i in 0..20 {
        net.tag(a, i, ChangeKind::Insert, "t");
    }
    if let Some(n) = net.nodes.get_mut(&a) {
        n.replica.config.max_page_records = 3;
    }
    net.links.insert((a, b));
    net.input(a, Input::PeerUp { peer: b });
    net.queue.clear();
    net.inject(
        b,
        a,
        SyncMessage::SharedChangeRequest(crate::SharedChangeRequest {
            request_id: 7,
            since: VersionVector::new(),
            limit: 3,
            window: 2,
        }),
    );
    assert_eq!(
        log_pages_sent(&net, a, b, 7),
        vec![(0, 3, true)],
        "one page at first, then A waits"
    );
    net.inject(
        b,
        a,
        SyncMessage::PagesReceived(crate::PagesReceived {
            request_id: 7,
            pages: 1,
        }),
    );
    let pages = log_pages_sent(&net, a, b, 7);
    assert_eq!(
        pages,
        vec![(0, 3, true), (1, 3, true), (2, 3, true)],
        "the window of two, numbered in stream order"
    );
}

#[test]
fn shared_catch_up_over_a_reordering_network_restarts_from_what_it_applied() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for i in 0..20 {
        net.tag(a, i, ChangeKind::Insert, &format!("t{i}"));
    }
    net.connect(a, b);
    let overtaking = net.swap_first_two_queued(|m| {
        matches!(
            m,
            SyncMessage::SharedChangeResponse(crate::SharedChangeResponse { .. })
        )
    });
    // Up to and including the page that overtook its predecessor. A catch-up runs, so only
    // the restart can make B ask for log entries meanwhile.
    let requests = |net: &Net| {
        net.node(b)
            .sent
            .iter()
            .filter(|(_, m)| {
                matches!(
                    m,
                    SyncMessage::SharedChangeRequest(crate::SharedChangeRequest { .. })
                )
            })
            .count()
    };
    let before = requests(&net);
    for _ in 0..=overtaking {
        let (from, to, bytes) = net.queue.pop_front().expect("queued");
        let msg = decode(&bytes).expect("decodes");
        net.input(to, Input::Message { from, msg });
    }
    assert_eq!(
        requests(&net),
        before + 1,
        "B asked again from what it applied"
    );
    net.settle();
    assert!(
        net.node(b).disconnects.is_empty(),
        "reordering is not misbehaviour"
    );
    net.assert_converged();
    for i in 0..20 {
        assert_eq!(net.tag_name(b, i), Some(Value::from(format!("t{i}"))));
    }
}

/// Delivers queued messages one at a time until `until` holds.
fn deliver_until(net: &mut Net, until: impl Fn(&Net) -> bool) {
    while !until(net) {
        let (from, to, bytes) = net.queue.pop_front().expect("condition reached");
        let msg = decode(&bytes).expect("engine output decodes");
        net.input(to, Input::Message { from, msg });
    }
}

fn failures(net: &Net, d: DeviceId, id: CommandId) -> Vec<CommandError> {
    net.node(d)
        .events
        .iter()
        .filter_map(|e| match e {
            Event::CommandFailed { id: i, reason } if *i == id => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn request_state_joins_the_engines_own_catch_up_of_that_stream() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for k in 1..=7 {
        net.put(b, k, b"offline");
    }
    net.connect(a, b);
    let asked = |net: &Net| {
        net.node(a)
            .sent
            .iter()
            .any(|(_, m)| matches!(m, SyncMessage::StateRequest(crate::StateRequest { owner, .. }) if *owner == b))
    };
    deliver_until(&mut net, asked);
    // The engine is catching up b's records from b: a request for the same range joins it...
    let joined = net.cmd(
        a,
        Command::RequestState {
            peer: b,
            owner: b,
            since: None,
        },
    );
    assert_eq!(failures(&net, a, joined), []);
    // ...one for another range of that stream cannot.
    let other = net.cmd(
        a,
        Command::RequestState {
            peer: b,
            owner: b,
            since: Some(0),
        },
    );
    assert_eq!(failures(&net, a, other), [CommandError::AlreadyFetching]);
    net.settle();
    assert!(net.node(a).events.contains(&Event::CommandDone(joined)));
    assert_eq!(net.node(a).replica.watermark(b), 7);
    assert_eq!(net.digest(a), net.digest(b));
}

#[test]
fn request_shared_changes_joins_the_engines_own_catch_up() {
    let (a, b) = (dev(1), dev(2));
    let mut net = Net::new(2);
    for k in 1..=5 {
        net.tag(b, k, ChangeKind::Insert, "offline");
    }
    net.connect(a, b);
    let asked = |net: &Net| {
        net.node(a).sent.iter().any(|(_, m)| {
            matches!(
                m,
                SyncMessage::SharedChangeRequest(crate::SharedChangeRequest { .. })
            )
        })
    };
    deliver_until(&mut net, asked);
    let joined = net.cmd(
        a,
        Command::RequestSharedChanges {
            peer: b,
            since: None,
        },
    );
    assert_eq!(failures(&net, a, joined), []);
    let other = net.cmd(
        a,
        Command::RequestSharedChanges {
            peer: b,
            since: Some(VersionVector::new()),
        },
    );
    assert_eq!(failures(&net, a, other), [CommandError::AlreadyFetching]);
    net.settle();
    assert!(net.node(a).events.contains(&Event::CommandDone(joined)));
    assert_eq!(net.digest(a), net.digest(b));
}
