//! Shared changes against device-owned ones, in-process: catch-up of an empty device and the
//! concurrent-edit workload, on two engines wired back to back.
//!
//! Every message is encoded, counted and decoded as it would cross a transport; storage is
//! the in-memory `MemState` (no durable copy), so the figures are the engine's and the wire
//! format's, not a disk's.

use super::{median, T0};
use hybridsync_core::MemState;
use hybridsync_core::{
    decode, encode, Command, CommandId, Config, DeviceId, Input, Instant, ModelRegistry, Now,
    Output, Replica, Restored, Value,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant as WallInstant;
use uuid::Uuid;

/// Writes per millisecond of the writers' clock: a burst of writes within one millisecond
/// gets stamps with rising counters, as a real one does.
const WRITES_PER_MS: u64 = 64;

/// One direction's traffic.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Traffic {
    /// Messages sent.
    pub messages: u64,
    /// Encoded bytes of those messages (no framing).
    pub bytes: u64,
}

/// Two engines on `MemState`s with a lossless in-order link between them.
struct Pair {
    ids: [DeviceId; 2],
    replicas: [Replica; 2],
    stores: [MemState; 2],
    /// Messages in flight: recipient index and bytes.
    queue: VecDeque<(usize, Vec<u8>)>,
    connected: bool,
    wall_ms: u64,
    writes: u64,
    next_cmd: u64,
    /// Traffic sent by each side while connected.
    sent: [Traffic; 2],
}

impl Pair {
    fn new() -> Pair {
        let ids = [DeviceId::from_u128(0xa1), DeviceId::from_u128(0xb2)];
        let now = Now::new(Instant::ZERO, T0);
        let replica = |me: DeviceId| {
            Replica::new(
                Config::new(me, ModelRegistry::spacedrive()),
                Restored::bootstrap(ids),
                now,
            )
        };
        let mut p = Pair {
            ids,
            replicas: [replica(ids[0]), replica(ids[1])],
            stores: [MemState::default(), MemState::default()],
            queue: VecDeque::new(),
            connected: false,
            wall_ms: T0,
            writes: 0,
            next_cmd: 0,
            sent: [Traffic::default(); 2],
        };
        p.drain(0);
        p.drain(1);
        p
    }

    fn now(&self) -> Now {
        Now::new(
            Instant::from_micros((self.wall_ms - T0) * 1000),
            self.wall_ms,
        )
    }

    fn input(&mut self, side: usize, input: Input) {
        let now = self.now();
        self.replicas[side].handle(now, input);
        self.drain(side);
    }

    fn drain(&mut self, side: usize) {
        loop {
            let mut done = Vec::new();
            while let Some(out) = self.replicas[side].poll_output() {
                match out {
                    Output::Storage(cmd) => done.extend(self.stores[side].execute(cmd)),
                    Output::Send { msg, .. } => {
                        if self.connected {
                            let bytes = encode(&msg);
                            self.sent[side].messages += 1;
                            self.sent[side].bytes += bytes.len() as u64;
                            self.queue.push_back((1 - side, bytes));
                        }
                    }
                    Output::Disconnect { .. } | Output::Event(_) => {}
                }
            }
            if done.is_empty() {
                return;
            }
            let now = self.now();
            for d in done {
                self.replicas[side].handle(now, Input::Storage(d));
            }
        }
    }

    /// One local write on `side`, as its own command.
    fn write(&mut self, side: usize, cmd: Command) {
        self.next_cmd += 1;
        self.writes += 1;
        if self.writes.is_multiple_of(WRITES_PER_MS) {
            self.wall_ms += 1;
        }
        self.input(
            side,
            Input::Command {
                id: CommandId(self.next_cmd),
                cmd,
            },
        );
    }

    fn connect(&mut self) {
        self.connected = true;
        self.input(0, Input::PeerUp { peer: self.ids[1] });
        self.input(1, Input::PeerUp { peer: self.ids[0] });
    }

    fn disconnect(&mut self) {
        self.connected = false;
        self.queue.clear();
        self.input(0, Input::PeerDown { peer: self.ids[1] });
        self.input(1, Input::PeerDown { peer: self.ids[0] });
    }

    /// Delivers until nothing is in flight, then lets a second pass of timers run (acks are
    /// debounced) and delivers again.
    fn run_until_quiet(&mut self) {
        for _ in 0..3 {
            while let Some((to, bytes)) = self.queue.pop_front() {
                let Ok(msg) = decode(&bytes) else { continue };
                let from = self.ids[1 - to];
                self.input(to, Input::Message { from, msg });
            }
            self.wall_ms += 1_000;
            self.input(0, Input::Tick);
            self.input(1, Input::Tick);
        }
    }

    fn reset_traffic(&mut self) {
        self.sent = [Traffic::default(); 2];
    }
}

fn record_id(i: u64) -> Uuid {
    super::v7_like(i)
}

fn name_field(text: String) -> BTreeMap<String, Value> {
    BTreeMap::from([("name".to_owned(), Value::String(text))])
}

/// One catch-up measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CatchUp {
    /// Records caught up.
    pub records: u64,
    /// Median seconds from connect to caught up, device-owned path.
    pub owned_s: f64,
    /// The same, shared path.
    pub shared_s: f64,
    /// `shared_s / owned_s` per round, in round order.
    pub ratios: Vec<f64>,
    /// Median of `ratios`.
    pub ratio: f64,
    /// Traffic of the last owned round: from the writer, to the writer.
    pub owned_traffic: [Traffic; 2],
    /// Traffic of the last shared round.
    pub shared_traffic: [Traffic; 2],
}

/// Catches up one path: the writer makes `n` records (each its own change, one field
/// `name`), then an empty device connects. Returns the seconds and the traffic.
fn catch_up_once(n: u64, shared: bool) -> (f64, [Traffic; 2]) {
    let mut p = Pair::new();
    for i in 0..n {
        let uuid = record_id(i);
        let fields = name_field(format!("tag {i}"));
        let cmd = if shared {
            Command::InsertShared {
                model: "tag".into(),
                uuid,
                fields,
            }
        } else {
            Command::PutOwned {
                model: "entry".into(),
                uuid,
                data: Value::Map(fields).to_bytes(),
            }
        };
        p.write(0, cmd);
    }
    let start = WallInstant::now();
    p.connect();
    p.run_until_quiet();
    let secs = start.elapsed().as_secs_f64();
    let (a, b) = (&p.stores[0], &p.stores[1]);
    if shared {
        assert_eq!(
            a.shared, b.shared,
            "the shared records are the same on both"
        );
        let tags = a.shared.keys().filter(|(model, _)| model == "tag").count();
        assert_eq!(tags as u64, n, "every record");
    } else {
        assert_eq!(a.owned, b.owned, "the owned records are the same on both");
        assert_eq!(a.owned.len() as u64, n);
    }
    (secs, p.sent)
}

/// Catch-up of `n` records by an empty device, device-owned against shared, alternating the
/// two paths round by round.
pub fn catch_up(n: u64, rounds: usize) -> CatchUp {
    let (mut owned_traffic, mut shared_traffic) = Default::default();
    // An even number of rounds: each pair runs the paths in both orders (the first runs of a
    // process read 1.7x where the others read 1.2-1.3x; `alternate` also warms both up).
    let (owned, shared) = super::alternate(
        rounds.max(1).next_multiple_of(2),
        || {
            let (secs, traffic) = catch_up_once(n, false);
            owned_traffic = traffic;
            secs
        },
        || {
            let (secs, traffic) = catch_up_once(n, true);
            shared_traffic = traffic;
            secs
        },
    );
    let ratios: Vec<f64> = shared.iter().zip(&owned).map(|(s, o)| s / o).collect();
    CatchUp {
        records: n,
        owned_s: median(owned),
        shared_s: median(shared),
        ratio: median(ratios.clone()),
        ratios,
        owned_traffic,
        shared_traffic,
    }
}

/// The concurrent-edit workload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConcurrentEdits {
    /// Shared records both devices edit.
    pub records: u64,
    /// Updates each device makes while the two are apart.
    pub updates_per_device: u64,
    /// Median seconds from connect to converged.
    pub seconds: f64,
    /// Traffic of the last round, each direction.
    pub traffic: [Traffic; 2],
    /// Both directions' bytes.
    pub total_bytes: u64,
}

/// Two devices that both hold `records` shared records each update them `updates` times
/// while apart (record `i % records`, a new name each time), then sync both ways.
pub fn concurrent_edits(records: u64, updates: u64, rounds: usize) -> ConcurrentEdits {
    let mut times = Vec::new();
    let mut traffic = [Traffic::default(); 2];
    for _ in 0..rounds.max(1) {
        let mut p = Pair::new();
        p.connect();
        for i in 0..records {
            p.write(
                0,
                Command::InsertShared {
                    model: "tag".into(),
                    uuid: record_id(i),
                    fields: name_field(format!("tag {i}")),
                },
            );
        }
        p.run_until_quiet();
        p.disconnect();
        for u in 0..updates {
            for side in 0..2 {
                p.write(
                    side,
                    Command::UpdateShared {
                        model: "tag".into(),
                        uuid: record_id(u % records),
                        fields: name_field(format!("edit {u} on {side}")),
                    },
                );
            }
        }
        p.reset_traffic();
        let start = WallInstant::now();
        p.connect();
        p.run_until_quiet();
        times.push(start.elapsed().as_secs_f64());
        let (a, b) = (&p.stores[0], &p.stores[1]);
        assert_eq!(a.shared, b.shared, "both devices hold the same records");
        traffic = p.sent;
    }
    ConcurrentEdits {
        records,
        updates_per_device: updates,
        seconds: median(times),
        traffic,
        total_bytes: traffic[0].bytes + traffic[1].bytes,
    }
}
