//! The simulated world: replicas, virtual time, a faulty network, crashes and clocks.

use crate::reference::Reference;
use crate::rng::Rng;
use crate::{SeedReport, SimConfig, Topology};
use hybridsync_core::Fnv64;
use hybridsync_core::MemState;
use hybridsync_core::WriteAhead;
use hybridsync_core::{
    decode, encode, Command, CommandError, CommandId, Config, DeviceId, Event, Hlc, Input, Instant,
    MemStore, ModelKind, ModelRegistry, Now, Output, Replica, Restored, SharedRecord,
    StorageCommand, StorageDone, SyncMessage, Value, FRAME_ENVELOPE, MEMBER_MODEL,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

/// Wall-clock origin of the simulation (Unix ms).
const T0: u64 = 1_750_000_000_000;
const MAX_DRIFT_MS: u64 = 5 * 60_000;
const FUTURE_SKEW_MS: i64 = 8 * 60_000;
const SECOND: u64 = 1_000_000;
/// The simulated network's frame limit, small so that large writes reach it cheaply. A
/// message above it is dropped, as the iroh transport drops it, and fails the seed.
pub(crate) const MAX_FRAME: usize = 16 * 1024;
/// How many lazily committed batches a power loss may roll back (the window of SQLite's WAL
/// between checkpoints, small here so that rollbacks reach recent work).
const POWER_LOSS_WINDOW: usize = 3;
/// The largest write the engine must accept under [`MAX_FRAME`].
const MAX_WRITE: usize = MAX_FRAME - FRAME_ENVELOPE;

#[derive(Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        conn: u64,
        bytes: Vec<u8>,
    },
    /// The batch a device is committing is durable.
    Commit {
        dev: usize,
        epoch: u64,
        batch: Batch,
    },
    Wake {
        dev: usize,
        epoch: u64,
    },
    Input {
        dev: usize,
        epoch: u64,
        input: Input,
    },
    Op,
    Crash {
        dev: usize,
        mid_step: bool,
    },
    Restart {
        dev: usize,
    },
    /// A power loss: a crash that also rolls back the last `batches` lazily committed batches.
    PowerLoss {
        dev: usize,
        batches: usize,
    },
    /// The device is lost for good, its disk with it.
    Lose {
        dev: usize,
    },
    PartitionStart,
    PartitionEnd,
    ClockStep {
        dev: usize,
    },
    Links,
    Join,
    /// The sponsor's `AddMember` had time to commit: start the joiner if it is durable.
    JoinCheck {
        sponsor: usize,
    },
    /// Two devices pair during the run (a new edge of the pairing graph).
    Pair {
        a: usize,
        b: usize,
    },
    /// The `AddMember` commands of a pairing had time to commit: pair again where one was lost
    /// (a crash in the middle of its batch), as a user whose devices do not sync would.
    PairCheck {
        a: usize,
        b: usize,
    },
}

/// A batch executed on a device's store and not yet durable.
#[derive(Debug, Default)]
struct Batch {
    /// Read results, fed to the engine once the batch is durable.
    reads: Vec<StorageDone>,
    /// The device's own writes in it (recorded in the reference once durable).
    own: Vec<StorageCommand>,
}

struct Dev {
    id: DeviceId,
    replica: Option<Replica>,
    store: MemStore,
    /// The write-ahead ordering the tokio driver runs too.
    wal: WriteAhead,
    epoch: u64,
    skew_ms: i64,
    future: bool,
    started: bool,
    removed: bool,
    /// Lost for good: never restarts.
    lost: bool,
    wake: Option<u64>,
    /// Crash after this many storage commands of the next batch (the batch is lost).
    crash_after: Option<usize>,
    /// Stamps this device issued, in issue order, with the highest wall time the device had
    /// seen when it issued them (clocks step backwards; the bound is against the maximum).
    issued: Vec<(Hlc, u64)>,
    max_wall: u64,
    owned_seqs: Vec<u64>,
    shared_seqs: Vec<u64>,
    /// Knows the models `album` and `volume` (rolling upgrade).
    upgraded: bool,
    /// The members it was paired with: like `Node`, a restart on a database that holds no
    /// member (its first batch was lost) bootstraps again.
    bootstrap: Vec<DeviceId>,
}

/// One simulation run.
pub(crate) struct World {
    cfg: SimConfig,
    rng: Rng,
    now_us: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    devs: Vec<Dev>,
    links: BTreeMap<(usize, usize), u64>,
    /// The pairing graph: devices connect only along these edges.
    edges: BTreeSet<(usize, usize)>,
    /// Payload bytes of the large writes issued, by command id.
    large: BTreeMap<u64, usize>,
    next_conn: u64,
    cut: BTreeSet<usize>,
    faults: bool,
    reference: Reference,
    next_cmd: u64,
    messages: u64,
    bytes: u64,
    trace_hash: Fnv64,
    trace: Vec<String>,
    failures: Vec<String>,
    ops_done: usize,
    removal: Option<usize>,
    /// When device 1 is lost for good (virtual time), if it is in this seed.
    lose_at: Option<u64>,
    /// Seeds the power-loss schedule.
    power_seed: u64,
    /// What survived of the lost device's streams when it was removed: its id and the
    /// device-owned and shared seqs every live device held of it.
    survived: Option<(DeviceId, u64, u64)>,
    stop_links_to: BTreeSet<usize>,
    stats: BTreeMap<&'static str, u64>,
}

fn engine_config(id: DeviceId, upgraded: bool) -> Config {
    let models = if upgraded {
        ModelRegistry::spacedrive()
    } else {
        // The previous release: it does not know `volume` (device-owned) nor `album` (shared).
        ModelRegistry::new()
            .with("location", ModelKind::DeviceOwned)
            .with("entry", ModelKind::DeviceOwned)
            .with("tag", ModelKind::Shared)
            .with("user_metadata", ModelKind::Shared)
    };
    let mut c = Config::new(id, models);
    c.max_clock_drift = Duration::from_millis(MAX_DRIFT_MS);
    c.page_records = 16;
    c.page_bytes = 4096;
    c.max_frame = MAX_FRAME;
    c
}

/// Draws the pairing graph of `n` devices.
fn pairing_graph(rng: &mut Rng, topology: Topology, n: usize) -> BTreeSet<(usize, usize)> {
    let shape = match topology {
        Topology::Random => *rng.pick(&Topology::SHAPES).unwrap_or(&Topology::FullMesh),
        t => t,
    };
    let mut edges = BTreeSet::new();
    match shape {
        Topology::Random | Topology::FullMesh => {
            for a in 0..n {
                for b in a + 1..n {
                    edges.insert((a, b));
                }
            }
        }
        Topology::Chain | Topology::Ring => {
            for a in 1..n {
                edges.insert((a - 1, a));
            }
            if shape == Topology::Ring && n > 2 {
                edges.insert((0, n - 1));
            }
        }
        Topology::Star => {
            for a in 1..n {
                edges.insert((0, a));
            }
        }
        Topology::Tree | Topology::Sparse => {
            for a in 1..n {
                let parent = rng.below(a as u64) as usize;
                edges.insert((parent, a));
            }
            if shape == Topology::Sparse {
                for _ in 0..n / 2 {
                    let a = rng.below(n as u64) as usize;
                    let b = rng.below(n as u64) as usize;
                    if a != b {
                        edges.insert(pair(a, b));
                    }
                }
            }
        }
    }
    edges
}

impl World {
    pub(crate) fn new(cfg: SimConfig, seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let total = cfg.peers + usize::from(cfg.late_join);
        let initial: Vec<DeviceId> = (0..cfg.peers).map(device).collect();
        let edges = pairing_graph(&mut rng, cfg.topology, cfg.peers);
        let mut devs = Vec::new();
        for i in 0..total {
            let future = cfg.future_clock && i == 0 && total > 2;
            let skew_ms = if future {
                FUTURE_SKEW_MS
            } else if cfg.skew {
                rng.range(0, 240_000) as i64 - 120_000
            } else {
                0
            };
            devs.push(Dev {
                id: device(i),
                replica: None,
                store: MemStore::with_power_loss(POWER_LOSS_WINDOW),
                wal: WriteAhead::new(),
                epoch: 0,
                skew_ms,
                future,
                started: false,
                removed: false,
                lost: false,
                wake: None,
                crash_after: None,
                issued: Vec::new(),
                max_wall: 0,
                owned_seqs: Vec::new(),
                shared_seqs: Vec::new(),
                // Device 0 always runs the new release, so the new models are written.
                upgraded: !cfg.rolling_upgrade || i == 0 || rng.chance(0.5),
                bootstrap: Vec::new(),
            });
        }
        let mut w = World {
            cfg,
            rng,
            now_us: 0,
            seq: 0,
            queue: BTreeMap::new(),
            devs,
            links: BTreeMap::new(),
            edges,
            large: BTreeMap::new(),
            next_conn: 0,
            cut: BTreeSet::new(),
            faults: true,
            reference: Reference::default(),
            next_cmd: 0,
            messages: 0,
            bytes: 0,
            trace_hash: Fnv64::default(),
            trace: Vec::new(),
            failures: Vec::new(),
            ops_done: 0,
            removal: None,
            lose_at: None,
            power_seed: seed ^ 0x90E7_1055_0000_0000,
            survived: None,
            stop_links_to: BTreeSet::new(),
            stats: BTreeMap::new(),
        };
        if w.cfg.lost_device && w.cfg.peers >= 3 {
            // Drawn apart from the main generator, so seeds without a loss replay as before.
            let mut r = Rng::new(seed ^ 0x1057_DE71_CE00_0000);
            let phase = w.fault_phase_us();
            if r.chance(0.5) {
                w.lose_at = Some(r.range(phase / 4, phase));
            }
        }
        for i in 0..w.cfg.peers {
            w.devs[i].bootstrap = initial.clone();
            w.start(i, Restored::bootstrap(initial.clone()));
        }
        w
    }

    fn fault_phase_us(&self) -> u64 {
        // Ops arrive every ~100 ms of virtual time on average.
        (self.cfg.ops as u64 * 100_000).max(30 * SECOND)
    }

    fn at(&mut self, delay_us: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now_us + delay_us, self.seq), ev);
    }

    fn now_for(&self, d: usize) -> Now {
        let wall = (T0 as i64 + (self.now_us / 1000) as i64 + self.devs[d].skew_ms).max(0) as u64;
        Now::new(Instant::from_micros(self.now_us), wall)
    }

    fn start(&mut self, d: usize, restored: Restored) {
        let now = self.now_for(d);
        self.devs[d].max_wall = self.devs[d].max_wall.max(now.wall_ms);
        let id = self.devs[d].id;
        let config = engine_config(id, self.devs[d].upgraded);
        self.devs[d].replica = Some(Replica::new(config, restored, now));
        self.devs[d].started = true;
        self.devs[d].wake = None;
        self.drain(d);
    }

    fn schedule(&mut self) {
        let phase = self.fault_phase_us();
        for _ in 0..self.cfg.ops {
            let t = self.rng.below(phase);
            self.seq += 1;
            self.queue.insert((t, self.seq), Ev::Op);
        }
        self.at(0, Ev::Links);
        let n = self.devs.len();
        if self.cfg.partitions {
            for _ in 0..3 {
                let t = self.rng.below(phase);
                self.seq += 1;
                self.queue.insert((t, self.seq), Ev::PartitionStart);
                let end = t + self.rng.range(SECOND, 20 * SECOND);
                self.seq += 1;
                self.queue.insert((end, self.seq), Ev::PartitionEnd);
            }
        }
        if self.cfg.crashes {
            for _ in 0..3 {
                let t = self.rng.below(phase);
                let dev = self.rng.below(n as u64) as usize;
                let mid_step = self.rng.chance(0.5);
                self.seq += 1;
                self.queue
                    .insert((t, self.seq), Ev::Crash { dev, mid_step });
            }
        }
        if self.cfg.skew {
            for _ in 0..2 {
                let t = self.rng.below(phase);
                let dev = self.rng.below(n as u64) as usize;
                self.seq += 1;
                self.queue.insert((t, self.seq), Ev::ClockStep { dev });
            }
        }
        if self.cfg.late_join {
            let t = self.rng.range(phase / 5, phase / 2);
            self.seq += 1;
            self.queue.insert((t, self.seq), Ev::Join);
        }
        if let Some(t) = self.lose_at {
            self.seq += 1;
            self.queue.insert((t, self.seq), Ev::Lose { dev: 1 });
        }
        if self.cfg.power_loss {
            // Drawn apart from the main generator, so other faults replay as before.
            let mut r = Rng::new(self.power_seed);
            for _ in 0..2 {
                let t = r.below(phase);
                let dev = r.below(n as u64) as usize;
                let batches = r.range(1, POWER_LOSS_WINDOW as u64 + 1) as usize;
                self.seq += 1;
                self.queue
                    .insert((t, self.seq), Ev::PowerLoss { dev, batches });
            }
        }
    }

    // ------------------------------------------------------------------ engine steps

    fn step(&mut self, d: usize, input: Input) {
        let now = self.now_for(d);
        self.devs[d].max_wall = self.devs[d].max_wall.max(now.wall_ms);
        let Some(r) = self.devs[d].replica.as_mut() else {
            return;
        };
        r.handle(now, input);
        self.drain(d);
    }

    /// Takes the engine's outputs into the write-ahead ordering and runs it: actions go as
    /// soon as the writes before them are durable; a batch commits at once or, with storage
    /// delays, later (while the engine keeps running).
    fn drain(&mut self, d: usize) {
        loop {
            while let Some(out) = self.devs[d].replica.as_mut().and_then(Replica::poll_output) {
                self.devs[d].wal.push(out);
            }
            let flush = self.devs[d].wal.flush();
            for action in flush.actions {
                self.perform(d, action);
            }
            let Some(commands) = flush.batch else { break };
            let mut batch = Batch::default();
            for (i, cmd) in commands.into_iter().enumerate() {
                if self.devs[d].crash_after.is_some_and(|k| i >= k) {
                    // The process stops in the middle of the transaction: none of it is durable.
                    return self.crash(d);
                }
                if own_write(self.devs[d].id, &cmd) {
                    batch.own.push(cmd.clone());
                }
                batch.reads.extend(self.devs[d].store.execute(cmd));
            }
            if self.devs[d].crash_after.is_some() {
                // Before the commit: the batch is lost, and whatever waited for it.
                return self.crash(d);
            }
            if self.cfg.storage_delay {
                let delay = self.rng.range(0, 20_000);
                let epoch = self.devs[d].epoch;
                self.at(
                    delay,
                    Ev::Commit {
                        dev: d,
                        epoch,
                        batch,
                    },
                );
                break;
            }
            self.commit(d, batch);
            if self.devs[d].replica.is_none() {
                return;
            }
        }
        let timeout = self.devs[d]
            .replica
            .as_ref()
            .and_then(Replica::poll_timeout);
        if let Some(t) = timeout {
            let t = t.as_micros().max(self.now_us);
            if self.devs[d].wake.is_none_or(|w| t < w) {
                self.devs[d].wake = Some(t);
                let epoch = self.devs[d].epoch;
                self.seq += 1;
                self.queue.insert((t, self.seq), Ev::Wake { dev: d, epoch });
            }
        }
    }

    /// The committing batch of `d` is durable: perform what waited for it, then feed its reads.
    fn commit(&mut self, d: usize, batch: Batch) {
        self.devs[d].store.sync();
        for cmd in &batch.own {
            self.record_own_writes(d, cmd);
        }
        let actions = self.devs[d].wal.committed();
        for action in actions {
            self.perform(d, action);
        }
        let now = self.now_for(d);
        if let Some(r) = self.devs[d].replica.as_mut() {
            for done in batch.reads {
                r.handle(now, Input::Storage(done));
            }
        }
    }

    fn perform(&mut self, d: usize, action: Output) {
        match action {
            Output::Send { to, msg } => self.transmit(d, to, msg),
            Output::Disconnect { peer, reason } => {
                if self.cfg.trace {
                    self.trace.push(format!(
                        "{:>9} {} disconnects {peer}: {reason}",
                        self.now_us, self.devs[d].id
                    ));
                }
                if let Some(p) = self.index_of(peer) {
                    self.close_link(d, p);
                }
            }
            Output::Event(e) => self.on_event(d, e),
            Output::Storage(_) => {}
        }
    }

    fn record_own_writes(&mut self, d: usize, cmd: &StorageCommand) {
        let me = self.devs[d].id;
        let wall = self.devs[d].max_wall;
        match cmd {
            StorageCommand::PutOwned(rs) => {
                for r in rs.iter().filter(|r| r.owner == me) {
                    if self.cfg.trace {
                        self.trace.push(format!(
                            "{:>9} {me} wrote {} {} seq {} ({} B)",
                            self.now_us,
                            r.model,
                            r.uuid,
                            r.seq,
                            r.data.as_ref().map_or(0, Vec::len)
                        ));
                    }
                    self.devs[d].issued.push((r.hlc, wall));
                    self.devs[d].owned_seqs.push(r.seq);
                    self.reference.owned_write(r.clone());
                }
            }
            StorageCommand::AppendLog(cs) => {
                for c in cs.iter().filter(|c| c.origin == me) {
                    if self.cfg.trace {
                        self.trace.push(format!(
                            "{:>9} {me} wrote {:?} {} {} seq {} at {:?}",
                            self.now_us, c.kind, c.model, c.record, c.seq, c.hlc
                        ));
                    }
                    self.devs[d].issued.push((c.hlc, wall));
                    self.devs[d].shared_seqs.push(c.seq);
                    self.reference.shared_write(c.clone());
                }
            }
            _ => {}
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_insert(0) += 1;
    }

    fn on_event(&mut self, d: usize, e: Event) {
        match &e {
            Event::CaughtUp {
                stream: hybridsync_core::Stream::SharedSnapshot,
                ..
            } => self.count("snapshots"),
            Event::ClockSkew { .. } => self.count("clock_skew_refusals"),
            Event::PeerMisbehaved { .. } => self.count("peer_refusals"),
            Event::OwnHeadRaised { .. } => self.count("own_head_raised"),
            _ => {}
        }
        if self.cfg.trace {
            self.trace.push(format!(
                "{:>9} {} event {e:?}",
                self.now_us, self.devs[d].id
            ));
        }
        if let Event::CommandFailed { id, reason } = &e {
            // Only a write that really is beyond the limit may be refused as too large (the
            // budget adds less than 512 bytes to the payload).
            let beyond = self
                .large
                .get(&id.0)
                .is_some_and(|len| len + 512 > MAX_WRITE);
            if beyond && matches!(reason, CommandError::TooLarge { .. }) {
                self.count("refused_too_large");
            } else {
                self.failures.push(format!(
                    "{}: command {id:?} failed: {reason}",
                    self.devs[d].id
                ));
            }
        }
    }

    fn index_of(&self, d: DeviceId) -> Option<usize> {
        self.devs.iter().position(|x| x.id == d)
    }

    // ------------------------------------------------------------------ network

    fn transmit(&mut self, from: usize, to: DeviceId, msg: SyncMessage) {
        let Some(to) = self.index_of(to) else { return };
        let Some(&conn) = self.links.get(&pair(from, to)) else {
            return;
        };
        let bytes = encode(&msg);
        if bytes.len() > MAX_FRAME {
            // The iroh transport refuses to send it; so does this network. Any such message
            // is an engine bug: something accepted can no longer travel.
            self.failures.push(format!(
                "{} emitted a {} of {} bytes, above the {MAX_FRAME}-byte frame limit",
                self.devs[from].id,
                msg.kind(),
                bytes.len()
            ));
            return;
        }
        self.messages += 1;
        self.bytes += bytes.len() as u64;
        self.trace_hash.write(&self.now_us.to_le_bytes());
        self.trace_hash.write(&[from as u8, to as u8]);
        self.trace_hash.write(&bytes);
        if self.cfg.trace {
            self.trace.push(format!(
                "{:>9} {} -> {} {} ({} B)",
                self.now_us,
                self.devs[from].id,
                self.devs[to].id,
                msg.kind(),
                bytes.len()
            ));
            match &msg {
                SyncMessage::SharedSnapshotResponse(r) => self.trace.push(format!(
                    "{:>9}   request {} page {} has_more {} keys {:?}",
                    self.now_us,
                    r.request_id,
                    r.page,
                    r.has_more,
                    r.records
                        .iter()
                        .map(|x| (x.model.clone(), x.uuid.as_u128() & 0xffff, x.fields.len()))
                        .collect::<Vec<_>>()
                )),
                SyncMessage::SharedSnapshotRequest(r) => self.trace.push(format!(
                    "{:>9}   request {} after {:?}",
                    self.now_us,
                    r.request_id,
                    r.after
                        .as_ref()
                        .map(|(m, u)| (m.clone(), u.as_u128() & 0xffff))
                )),
                _ => {}
            }
        }
        let faults = self.faults;
        if faults && self.rng.chance(self.cfg.loss) {
            self.count("lost");
            if self.cfg.trace {
                self.trace.push(format!("{:>9}   (lost)", self.now_us));
            }
            return;
        }
        let copies = if faults && self.rng.chance(self.cfg.dup) {
            self.count("duplicated");
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.range(200, 3_000);
            if faults && self.rng.chance(self.cfg.reorder) {
                delay += self.rng.range(1_000, 300_000);
            }
            if self.cfg.trace {
                self.trace
                    .push(format!("{:>9}   (arrives +{delay} us)", self.now_us));
            }
            self.at(
                delay,
                Ev::Deliver {
                    from,
                    to,
                    conn,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn alive(&self, d: usize) -> bool {
        self.devs[d].replica.is_some()
    }

    fn may_link(&self, a: usize, b: usize) -> bool {
        self.alive(a)
            && self.alive(b)
            && !self.stop_links_to.contains(&a)
            && !self.stop_links_to.contains(&b)
            && self.edges.contains(&pair(a, b))
            && (self.cut.contains(&a) == self.cut.contains(&b))
    }

    fn open_link(&mut self, a: usize, b: usize) {
        self.next_conn += 1;
        self.links.insert(pair(a, b), self.next_conn);
        let (ia, ib) = (self.devs[a].id, self.devs[b].id);
        self.step(a, Input::PeerUp { peer: ib });
        if self.links.contains_key(&pair(a, b)) {
            self.step(b, Input::PeerUp { peer: ia });
        }
    }

    fn close_link(&mut self, a: usize, b: usize) {
        if self.links.remove(&pair(a, b)).is_none() {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            if self.alive(x) {
                let epoch = self.devs[x].epoch;
                let peer = self.devs[y].id;
                self.at(
                    0,
                    Ev::Input {
                        dev: x,
                        epoch,
                        input: Input::PeerDown { peer },
                    },
                );
            }
        }
    }

    fn maintain_links(&mut self) {
        let up: Vec<(usize, usize)> = self.links.keys().copied().collect();
        for (a, b) in up {
            if !self.may_link(a, b) {
                self.close_link(a, b);
            }
        }
        let edges: Vec<(usize, usize)> = self.edges.iter().copied().collect();
        for (a, b) in edges {
            if !self.links.contains_key(&(a, b)) && self.may_link(a, b) {
                self.open_link(a, b);
            }
        }
    }

    // ------------------------------------------------------------------ faults

    fn crash(&mut self, d: usize) {
        self.crash_rolling_back(d, 0);
    }

    /// A crash that also rolls back the last `batches` lazily committed batches (a power loss).
    fn crash_rolling_back(&mut self, d: usize, batches: usize) {
        if self.devs[d].crash_after.is_some() {
            self.count("crashes_mid_step");
        }
        self.count(if batches > 0 {
            "power_losses"
        } else {
            "crashes"
        });
        if self.cfg.trace {
            self.trace.push(format!(
                "{:>9} {} crashes, rolling back {batches} committed batches",
                self.now_us, self.devs[d].id
            ));
        }
        let dev = &mut self.devs[d];
        // The batch that was committing, and everything that waited for it, never happened.
        dev.store.power_loss(batches);
        dev.wal.abandon();
        dev.crash_after = None;
        dev.replica = None;
        dev.epoch += 1;
        dev.wake = None;
        let peers: Vec<usize> = (0..self.devs.len())
            .filter(|p| self.links.contains_key(&pair(d, *p)))
            .collect();
        for p in peers {
            self.close_link(d, p);
        }
        let down = self.rng.range(SECOND, 30 * SECOND);
        self.at(down, Ev::Restart { dev: d });
    }

    /// Device `d` is lost for good (stolen, its disk dead): whatever it wrote that no other
    /// device holds is gone. The user re-pairs its neighbours so the library stays connected,
    /// and removes it once healed (`maybe_remove`).
    fn lose(&mut self, d: usize) {
        if self.devs[d].lost {
            return;
        }
        self.count("devices_lost");
        if self.alive(d) {
            self.crash(d);
        }
        self.devs[d].lost = true;
        let neighbours = self.neighbours(d);
        if self.cfg.trace {
            let id = self.devs[d].id;
            let ids: Vec<DeviceId> = neighbours.iter().map(|n| self.devs[*n].id).collect();
            self.trace.push(format!(
                "{:>9} {id} is lost for good; its neighbours {ids:?}",
                self.now_us
            ));
        }
        for w in neighbours.windows(2) {
            let later = self.rng.range(SECOND, 10 * SECOND);
            self.at(later, Ev::Pair { a: w[0], b: w[1] });
        }
    }

    /// The devices `d` is paired with.
    fn neighbours(&self, d: usize) -> Vec<usize> {
        self.edges
            .iter()
            .filter_map(|&(a, b)| match (a == d, b == d) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn restart(&mut self, d: usize) {
        if self.alive(d) || !self.devs[d].started || self.devs[d].lost {
            return;
        }
        if self.cfg.rolling_upgrade && !self.devs[d].upgraded && self.rng.chance(0.5) {
            self.count("upgrades");
            self.devs[d].upgraded = true;
        }
        let mut restored = self.devs[d].store.restored();
        if restored.members.is_empty() {
            restored.members = Restored::bootstrap(self.devs[d].bootstrap.clone()).members;
        }
        self.start(d, restored);
    }

    // ------------------------------------------------------------------ workload

    fn command(&mut self, d: usize, cmd: Command) {
        self.next_cmd += 1;
        let id = CommandId(self.next_cmd);
        self.step(d, Input::Command { id, cmd });
    }

    fn op(&mut self) {
        let candidates: Vec<usize> = (0..self.devs.len())
            .filter(|d| self.alive(*d) && !self.devs[*d].removed && Some(*d) != self.removal)
            .collect();
        let Some(&d) = self.rng.pick(&candidates) else {
            return;
        };
        self.ops_done += 1;
        let roll = self.rng.below(100);
        // Upgraded devices write the models older ones do not know, under their own keys (the
        // model is part of the key).
        let new_model = self.devs[d].upgraded && self.cfg.rolling_upgrade && self.rng.chance(0.3);
        let (owned_model, shared_model) = if new_model {
            ("volume", "album")
        } else {
            ("entry", "tag")
        };
        let owned_uuid = Uuid::from_u128(((d as u128) << 64) | u128::from(self.rng.below(20)));
        let shared_uuid = Uuid::from_u128(0xAB00 + u128::from(self.rng.below(15)));
        if self.cfg.large_writes && self.rng.chance(0.04) {
            return self.large_write(d, owned_model, owned_uuid, shared_model, shared_uuid);
        }
        let cmd = match roll {
            0..=29 => Command::PutOwned {
                model: owned_model.into(),
                uuid: owned_uuid,
                data: self.rng.next_u64().to_le_bytes().to_vec(),
            },
            30..=39 => Command::DeleteOwned {
                model: owned_model.into(),
                uuid: owned_uuid,
            },
            40..=64 => Command::InsertShared {
                model: shared_model.into(),
                uuid: shared_uuid,
                fields: self.fields(),
            },
            65..=89 => Command::UpdateShared {
                model: shared_model.into(),
                uuid: shared_uuid,
                fields: self.fields(),
            },
            _ => Command::DeleteShared {
                model: shared_model.into(),
                uuid: shared_uuid,
            },
        };
        self.command(d, cmd);
    }

    /// A write near, at or beyond the frame limit: accepted writes must reach everyone, larger
    /// ones must be refused up front. Large shared values go under one of two field names, by
    /// `Insert` (a record re-inserted with the other name carries a large hidden register
    /// while the application sees one large field) or by `Update` (both large fields stay
    /// visible: the record the application sees is larger than a frame).
    fn large_write(
        &mut self,
        d: usize,
        owned_model: &str,
        owned_uuid: Uuid,
        shared_model: &str,
        shared_uuid: Uuid,
    ) {
        let len = self
            .rng
            .range(MAX_WRITE as u64 / 2, MAX_FRAME as u64 + 2048) as usize;
        let byte = self.rng.below(256) as u8;
        let cmd = if self.rng.chance(0.5) {
            Command::PutOwned {
                model: owned_model.into(),
                uuid: owned_uuid,
                data: vec![byte; len],
            }
        } else {
            let name = if self.rng.chance(0.5) {
                "blob"
            } else {
                "cover"
            };
            let mut fields = self.fields();
            fields.insert(name.to_owned(), Value::Bytes(vec![byte; len]));
            if self.rng.chance(0.5) {
                Command::InsertShared {
                    model: shared_model.into(),
                    uuid: shared_uuid,
                    fields,
                }
            } else {
                Command::UpdateShared {
                    model: shared_model.into(),
                    uuid: shared_uuid,
                    fields,
                }
            }
        };
        self.count("large_writes");
        self.large.insert(self.next_cmd + 1, len);
        self.command(d, cmd);
    }

    fn fields(&mut self) -> BTreeMap<String, Value> {
        let mut f = BTreeMap::new();
        for name in ["name", "color", "rank"] {
            if self.rng.chance(0.6) {
                f.insert(name.to_owned(), Value::Int(self.rng.below(1000) as i64));
            }
        }
        f
    }

    fn join(&mut self) {
        let joiner = self.devs.len() - 1;
        if self.devs[joiner].started {
            return;
        }
        let members: Vec<usize> = (0..self.cfg.peers).filter(|d| self.alive(*d)).collect();
        let Some(&sponsor) = self.rng.pick(&members) else {
            // Every member is down: try again once one is back.
            self.at(SECOND, Ev::Join);
            return;
        };
        let id = self.devs[joiner].id;
        self.command(sponsor, Command::AddMember(id));
        // Its batch may still be committing: look once it had the time.
        self.at(30_000, Ev::JoinCheck { sponsor });
    }

    /// The user pairs `a` and `b` as `hybridsync node`'s `add-member` does: each side learns
    /// the other's address (a new edge) and adds it as a member (idempotent if it already is:
    /// a device that joined through a sponsor may not know the other yet). A side that is down
    /// is paired once it is back.
    fn pair_devices(&mut self, a: usize, b: usize) {
        let gone = |d: &Dev| d.removed || d.lost;
        if gone(&self.devs[a]) || gone(&self.devs[b]) {
            return;
        }
        self.count("pairings");
        if self.cfg.trace {
            let (ia, ib) = (self.devs[a].id, self.devs[b].id);
            self.trace
                .push(format!("{:>9} the user pairs {ia} and {ib}", self.now_us));
        }
        self.edges.insert(pair(a, b));
        let mut retry = false;
        let mut added = false;
        for (x, y) in [(a, b), (b, a)] {
            let other = self.devs[y].id;
            let knows = self.devs[x].replica.as_ref().map(|r| r.is_member(other));
            match knows {
                Some(true) => {}
                Some(false) => {
                    self.command(x, Command::AddMember(other));
                    added = true;
                }
                None => retry = true,
            }
        }
        if retry {
            self.at(SECOND, Ev::Pair { a, b });
        }
        if added {
            self.at(SECOND, Ev::PairCheck { a, b });
        }
        self.maintain_links();
    }

    /// Pairs `a` and `b` again if either lost the other's membership in a crash; waits while
    /// it is still committing.
    fn pair_check(&mut self, a: usize, b: usize) {
        let gone = |d: &Dev| d.removed || d.lost;
        if gone(&self.devs[a]) || gone(&self.devs[b]) {
            return;
        }
        let mut lost = false;
        let mut committing = false;
        for (x, y) in [(a, b), (b, a)] {
            let other = self.devs[y].id;
            let durable = self.durably_member(x, other);
            let knows = self.devs[x].replica.as_ref().map(|r| r.is_member(other));
            match (durable, knows) {
                (true, _) => {}
                (false, Some(true)) => committing = true,
                (false, _) => lost = true,
            }
        }
        if lost {
            self.count("pairings_lost_to_crash");
            self.at(SECOND, Ev::Pair { a, b });
        } else if committing {
            self.at(SECOND, Ev::PairCheck { a, b });
        }
    }

    /// Whether device `d`'s durable store holds `member` as a member (what a restart of `d`
    /// would know).
    fn durably_member(&self, d: usize, member: DeviceId) -> bool {
        self.devs[d]
            .store
            .restored()
            .members
            .iter()
            .any(|r| r.uuid == member.0 && hybridsync_core::is_member_record(r))
    }

    fn join_check(&mut self, sponsor: usize) {
        let joiner = self.devs.len() - 1;
        if self.devs[joiner].started {
            return;
        }
        let id = self.devs[joiner].id;
        if self.devs[sponsor].lost {
            // The sponsor was lost for good before the new device was paired with it: the
            // user pairs it through another member (adding it again changes nothing where it
            // already is one).
            self.count("joins_sponsor_lost");
            self.at(SECOND, Ev::Join);
            return;
        }
        // A sponsor that crashes before the change is durable loses it: then the device is
        // not a member and must not start as one. Retry.
        if !self.durably_member(sponsor, id) {
            self.count("joins_lost_to_crash");
            self.at(SECOND, Ev::Join);
            return;
        }
        self.count("joins");
        // Paired with its sponsor, the joiner knows only itself and the sponsor; it learns the
        // rest of the library from the log. It may pair with another device later.
        self.edges.insert(pair(joiner, sponsor));
        let sponsor_id = self.devs[sponsor].id;
        self.devs[joiner].bootstrap = vec![id, sponsor_id];
        self.start(joiner, Restored::bootstrap([id, sponsor_id]));
        let others: Vec<usize> = (0..self.cfg.peers).filter(|d| *d != sponsor).collect();
        if let Some(&b) = self.rng.pick(&others) {
            if self.rng.chance(0.5) {
                let later = self.rng.range(SECOND, 20 * SECOND);
                self.at(later, Ev::Pair { a: joiner, b });
            }
        }
    }

    // ------------------------------------------------------------------ main loop

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                conn,
                bytes,
            } => {
                if self.links.get(&pair(from, to)) != Some(&conn) {
                    return;
                }
                match decode(&bytes) {
                    Ok(msg) => {
                        let from = self.devs[from].id;
                        self.step(to, Input::Message { from, msg });
                    }
                    Err(e) => self
                        .failures
                        .push(format!("engine sent undecodable bytes: {e}")),
                }
            }
            Ev::Commit { dev, epoch, batch } => {
                if self.devs[dev].epoch == epoch {
                    self.commit(dev, batch);
                    self.drain(dev);
                }
            }
            Ev::Wake { dev, epoch } => {
                if self.devs[dev].epoch == epoch
                    && self.devs[dev].wake.is_some_and(|w| w <= self.now_us)
                {
                    self.devs[dev].wake = None;
                    self.step(dev, Input::Tick);
                }
            }
            Ev::Input { dev, epoch, input } => {
                if self.devs[dev].epoch == epoch {
                    self.step(dev, input);
                }
            }
            Ev::Op => self.op(),
            Ev::Crash { dev, mid_step } => {
                if self.faults && self.alive(dev) {
                    if mid_step {
                        let k = self.rng.below(4) as usize;
                        self.devs[dev].crash_after = Some(k);
                    } else {
                        self.crash(dev);
                    }
                }
            }
            Ev::Restart { dev } => self.restart(dev),
            Ev::PowerLoss { dev, batches } => {
                if self.faults && self.alive(dev) {
                    self.crash_rolling_back(dev, batches);
                }
            }
            Ev::Lose { dev } => self.lose(dev),
            Ev::PartitionStart => {
                if self.faults {
                    self.count("partitions");
                    self.cut.clear();
                    for d in 0..self.devs.len() {
                        if self.rng.chance(0.4) {
                            self.cut.insert(d);
                        }
                    }
                    self.maintain_links();
                }
            }
            Ev::PartitionEnd => self.cut.clear(),
            Ev::ClockStep { dev } => {
                if !self.devs[dev].future {
                    self.devs[dev].skew_ms -= self.rng.range(1_000, 60_000) as i64;
                }
            }
            Ev::Links => {
                self.maintain_links();
                self.at(SECOND, Ev::Links);
            }
            Ev::Join => self.join(),
            Ev::JoinCheck { sponsor } => self.join_check(sponsor),
            Ev::Pair { a, b } => self.pair_devices(a, b),
            Ev::PairCheck { a, b } => self.pair_check(a, b),
        }
    }

    /// Runs events until virtual time `until` (exclusive).
    fn run_until(&mut self, until: u64) {
        while let Some(entry) = self.queue.first_entry() {
            let (t, _) = *entry.key();
            if t >= until {
                break;
            }
            let ev = entry.remove();
            self.now_us = self.now_us.max(t);
            self.dispatch(ev);
        }
        self.now_us = self.now_us.max(until);
    }

    fn heal(&mut self) {
        self.faults = false;
        self.cut.clear();
        for d in 0..self.devs.len() {
            self.devs[d].crash_after = None;
            if self.devs[d].started && !self.alive(d) {
                self.restart(d);
            }
        }
    }

    fn active(&self) -> Vec<usize> {
        (0..self.devs.len())
            .filter(|d| self.devs[*d].started && !self.devs[*d].removed)
            .collect()
    }

    fn state(&self, d: usize) -> &MemState {
        self.devs[d].store.state()
    }

    fn quiescent(&self) -> bool {
        let active = self.active();
        let digests: BTreeSet<u64> = active
            .iter()
            .map(|d| self.state(*d).content_digest())
            .collect();
        let idle = active.iter().all(|d| {
            self.devs[*d]
                .replica
                .as_ref()
                .is_some_and(|r| !r.is_fetching() && r.pending_reads() == 0)
                && self.devs[*d].wal.is_idle()
        });
        let pruned = active.iter().all(|d| self.state(*d).log.is_empty());
        digests.len() == 1 && idle && pruned
    }

    /// The removal phase: once every other member has everything the leaving device wrote, a
    /// member removes it.
    fn maybe_remove(&mut self) -> bool {
        let Some(r) = self.removal else { return false };
        if self.devs[r].removed {
            return false;
        }
        let rid = self.devs[r].id;
        let others: Vec<usize> = self.active().into_iter().filter(|d| *d != r).collect();
        let held: Option<Vec<(u64, u64)>> = others
            .iter()
            .map(|d| {
                let x = self.devs[*d].replica.as_ref()?;
                Some((x.watermark(rid), x.version_vector().get(rid)))
            })
            .collect();
        let Some(held) = held else { return false };
        let covered = if self.devs[r].lost {
            // Its own heads are gone with it: wait until the others agree on what survived.
            held.windows(2).all(|w| w[0] == w[1])
        } else {
            let Some(own) = self.devs[r]
                .replica
                .as_ref()
                .map(|x| (x.watermark(rid), x.version_vector().get(rid)))
            else {
                return false;
            };
            held.iter().all(|h| h.0 >= own.0 && h.1 >= own.1)
        };
        if !covered {
            return false;
        }
        if self.devs[r].lost {
            let (owned, shared) = held.first().copied().unwrap_or((0, 0));
            self.survived = Some((rid, owned, shared));
            if self.cfg.trace {
                self.trace.push(format!(
                    "{:>9} {rid} was lost; the others hold its streams through {owned} (device-owned) and {shared} (shared)",
                    self.now_us
                ));
            }
        }
        let Some(&sponsor) = others.first() else {
            return false;
        };
        self.count("removals");
        self.command(sponsor, Command::RemoveMember(rid));
        self.devs[r].removed = true;
        self.stop_links_to.insert(r);
        // The user re-pairs the removed device's neighbours so the library stays connected.
        let neighbours = self.neighbours(r);
        for w in neighbours.windows(2) {
            self.at(0, Ev::Pair { a: w[0], b: w[1] });
        }
        true
    }

    pub(crate) fn run(mut self, wall: std::time::Instant) -> SeedReport {
        self.schedule();
        let phase = self.fault_phase_us();
        self.run_until(phase);
        self.heal();
        if (self.cfg.removal && self.cfg.peers >= 3) || self.devs[1].lost {
            self.removal = Some(1);
        }
        // Heal: no new faults; run until quiescent (bounded).
        let limit = phase + 40 * 60 * SECOND;
        let mut stable = 0;
        while self.now_us < limit {
            let next = self.now_us + 5 * SECOND;
            self.run_until(next);
            if self.maybe_remove() {
                stable = 0;
                continue;
            }
            if self.removal.is_some_and(|r| !self.devs[r].removed) {
                continue;
            }
            if self.quiescent() {
                stable += 1;
                if stable >= 2 {
                    break;
                }
            } else {
                stable = 0;
            }
        }
        if stable < 2 {
            self.failures.push(format!(
                "no quiescence within {} s of healing",
                (limit - phase) / SECOND
            ));
        }
        let (messages, bytes) = (self.messages, self.bytes);
        if self.cfg.idle_ms > 0 {
            self.run_until(self.now_us + self.cfg.idle_ms * 1000);
        }
        let (idle_messages, idle_bytes) = (self.messages - messages, self.bytes - bytes);
        self.check();
        SeedReport {
            edges: self.edges.len(),
            idle_messages,
            idle_bytes,
            seed: 0,
            failures: self.failures,
            messages: self.messages,
            bytes: self.bytes,
            sim_time_ms: self.now_us / 1000,
            wall_ms: wall.elapsed().as_millis() as u64,
            ops: self.reference.len(),
            trace_hash: self.trace_hash.finish(),
            trace: self.trace,
            stats: self.stats,
        }
    }

    // ------------------------------------------------------------------ checks

    fn check(&mut self) {
        let mut failures = Vec::new();
        let active = self.active();
        // 1. Identical content on every replica (digests of records and registers).
        let digests: Vec<(DeviceId, u64)> = active
            .iter()
            .map(|d| (self.devs[*d].id, self.state(*d).content_digest()))
            .collect();
        if digests.windows(2).any(|w| w[0].1 != w[1].1) {
            failures.push(format!("replicas diverged: {digests:x?}"));
            if self.cfg.trace {
                // The first shared record that differs, as each device holds it.
                let keys: BTreeSet<_> = active
                    .iter()
                    .flat_map(|d| self.state(*d).shared.keys().cloned())
                    .collect();
                let differs = keys.into_iter().find(|k| {
                    let held: BTreeSet<String> = active
                        .iter()
                        .map(|d| {
                            let r = self.state(*d).shared.get(k).cloned();
                            format!("{:?}", r.map(SharedRecord::without_hidden))
                        })
                        .collect();
                    held.len() > 1
                });
                if let Some(k) = differs {
                    for d in &active {
                        self.trace.push(format!(
                            "{} holds {k:?}: {:?} with vv {:?}",
                            self.devs[*d].id,
                            self.state(*d).shared.get(&k),
                            self.state(*d).vv
                        ));
                    }
                }
                // And the first device-owned record that differs.
                let keys: BTreeSet<_> = active
                    .iter()
                    .flat_map(|d| self.state(*d).owned.keys().cloned())
                    .collect();
                let differs = keys.into_iter().find(|k| {
                    let held: BTreeSet<String> = active
                        .iter()
                        .map(|d| format!("{:?}", self.state(*d).owned.get(k)))
                        .collect();
                    held.len() > 1
                });
                if let Some(k) = differs {
                    for d in &active {
                        self.trace.push(format!(
                            "{} holds {k:?}: {:?} with watermark {:?}",
                            self.devs[*d].id,
                            self.state(*d).owned.get(&k),
                            self.state(*d).watermarks.get(&k.0)
                        ));
                    }
                }
            }
        }
        // 2. The content equals the expected state computed from every operation issued (of
        // a device lost for good, from what survived of it).
        let reference = match self.survived {
            Some((lost, owned, shared)) => self.reference.surviving(lost, owned, shared),
            None => self.reference.clone(),
        };
        let lost = self.survived.map(|(id, _, _)| id);
        // Of a lost device's device-owned records, only that each one held is a version it
        // really wrote within what survived can be checked (agreement is check 1): a catch-up
        // page omits a record superseded above the page, so a device whose owner died between
        // two pages keeps an older version of that record (or none), and so does everyone it
        // passes it on to.
        let want_owned: crate::reference::OwnedView = reference
            .expected_owned()
            .into_iter()
            .filter(|(k, _)| Some(k.0) != lost)
            .collect();
        let want_shared = reference.expected_shared(|m| m != MEMBER_MODEL);
        for &d in &active {
            let st = self.state(d);
            let (of_lost, got_owned): (Vec<_>, Vec<_>) = st
                .owned
                .iter()
                .map(|(k, r)| (k.clone(), (r.seq, r.data.clone())))
                .partition(|(k, _)| Some(k.0) == lost);
            let got_owned: crate::reference::OwnedView = got_owned.into_iter().collect();
            if let Some((_, through, _)) = self.survived {
                let forged = of_lost.iter().find(|(k, (seq, data))| {
                    *seq > through || reference.owned_version(k, *seq) != Some(data)
                });
                if let Some((k, (seq, _))) = forged {
                    failures.push(format!(
                        "{}: holds {k:?} at seq {seq}, which its lost owner never wrote or which lies beyond what survived ({through})",
                        self.devs[d].id
                    ));
                }
            }
            if got_owned != want_owned {
                let wrong: Vec<_> = want_owned
                    .iter()
                    .filter(|(k, v)| got_owned.get(*k) != Some(*v))
                    .collect();
                let missing = wrong.len();
                let first = wrong
                    .first()
                    .map(|(k, v)| {
                        format!(
                            "; first: {k:?} expected seq {}, got {:?}",
                            v.0,
                            got_owned.get(*k).map(|g| g.0)
                        )
                    })
                    .unwrap_or_default();
                let extra = got_owned
                    .keys()
                    .filter(|k| !want_owned.contains_key(*k))
                    .count();
                failures.push(format!(
                    "{}: device-owned records differ from the expected state ({missing} wrong or missing, {extra} unexpected{first})",
                    self.devs[d].id
                ));
            }
            let got_shared: crate::reference::SharedView = st
                .shared
                .iter()
                .filter(|((m, _), _)| m != MEMBER_MODEL)
                .filter_map(|(k, r)| r.visible().map(|v| (k.clone(), v)))
                .collect();
            if got_shared != want_shared {
                let wrong: Vec<_> = want_shared
                    .iter()
                    .filter(|(k, v)| got_shared.get(*k) != Some(*v))
                    .map(|(k, _)| k.1)
                    .chain(
                        got_shared
                            .keys()
                            .filter(|k| !want_shared.contains_key(*k))
                            .map(|k| k.1),
                    )
                    .collect();
                failures.push(format!(
                    "{}: shared records differ from the expected state (records {wrong:?})",
                    self.devs[d].id
                ));
            }
            // Membership.
            let want_members: BTreeSet<DeviceId> = self
                .devs
                .iter()
                .filter(|x| x.started && !x.removed)
                .map(|x| x.id)
                .collect();
            let got_members: BTreeSet<DeviceId> = self.devs[d]
                .replica
                .as_ref()
                .map(|r| r.members().collect())
                .unwrap_or_default();
            if got_members != want_members {
                failures.push(format!(
                    "{}: members {got_members:?}, expected {want_members:?}",
                    self.devs[d].id
                ));
            }
            // 3. The shared log is pruned once every member has acknowledged everything.
            let log = st.log_len();
            if log > 0 {
                failures.push(format!(
                    "{}: {log} log entries left after healing",
                    self.devs[d].id
                ));
            }
        }
        // 4. Stamps strictly increase per device; sequences never repeat.
        for dev in &self.devs {
            if dev.issued.windows(2).any(|w| w[0].0 >= w[1].0) {
                failures.push(format!("{}: HLC not strictly increasing", dev.id));
            }
            if dev.owned_seqs.windows(2).any(|w| w[0] >= w[1]) {
                failures.push(format!("{}: device-owned seq not increasing", dev.id));
            }
            let contiguous = dev
                .shared_seqs
                .iter()
                .enumerate()
                .all(|(i, s)| *s == i as u64 + 1);
            if !contiguous {
                failures.push(format!("{}: shared seqs not 1, 2, 3...", dev.id));
            }
            // 5. No device was dragged beyond its own clock plus the drift bound.
            if !dev.future {
                if let Some((h, wall)) = dev
                    .issued
                    .iter()
                    .find(|(h, wall)| h.time_ms > wall + MAX_DRIFT_MS)
                {
                    failures.push(format!(
                        "{}: issued {h:?} more than the drift bound ahead of its clock {wall}",
                        dev.id
                    ));
                }
            }
        }
        self.failures.extend(failures);
    }

    /// The reference model (for tests).
    #[allow(dead_code)]
    pub(crate) fn reference(&self) -> &Reference {
        &self.reference
    }
}

/// The device id of simulated device `i`.
pub fn device(i: usize) -> DeviceId {
    // The index goes in the top byte so the short (8 hex digit) display tells devices apart.
    DeviceId::from_u128(((i as u128 + 1) << 120) | 0x5157)
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// Whether `cmd` writes one of `me`'s own changes (the engine never stores another device's
/// version of them, so these come only from local writes).
fn own_write(me: DeviceId, cmd: &StorageCommand) -> bool {
    match cmd {
        StorageCommand::PutOwned(rs) => rs.iter().any(|r| r.owner == me),
        StorageCommand::AppendLog(cs) => cs.iter().any(|c| c.origin == me),
        _ => false,
    }
}
