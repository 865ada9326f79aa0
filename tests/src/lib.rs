//! `hybridsync-sim`: a deterministic simulator for the hybridsync engine.
//!
//! N replicas, each a [`hybridsync_core::Replica`] with a [`hybridsync_core::MemStore`], run in
//! virtual time over a simulated network. Every message goes through the real codec. A seed
//! drives every fault: loss, duplication, reordering and delay, partitions, crash-restarts
//! (also in the middle of a step), power losses that roll back committed batches, a device lost
//! for good, delayed storage completions, clock
//! skew and backward clock steps, one device with a clock far in the future, a device that
//! joins late and one that is
//! removed. After the faults stop, the run must reach quiescence and pass every check:
//!
//! - identical content on every replica (digests of records and registers);
//! - that content equals the expected state computed by the independent [`reference`](mod@reference) model
//!   from every operation issued (so replicas that agree on a wrong state fail);
//! - the member set is the expected one;
//! - the shared log is fully pruned once every member acknowledged it;
//! - stamps strictly increase per device, sequences never repeat, and no device was dragged
//!   beyond its clock plus the drift bound;
//! - the same seed gives the same trace (see [`SeedReport::trace_hash`]).
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod bench;
pub mod cluster;
pub mod fuzz;
pub mod reference;
pub mod rng;
mod world;

pub use world::device;

/// What a simulation run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Initial members.
    pub peers: usize,
    /// Workload operations.
    pub ops: usize,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub dup: f64,
    /// Probability that a message is delayed by up to 300 ms (reordering).
    pub reorder: f64,
    /// Random partitions.
    pub partitions: bool,
    /// Crash-restarts, some in the middle of an engine step.
    pub crashes: bool,
    /// Per-device clock skew and backward clock steps.
    pub skew: bool,
    /// One device's clock is 8 minutes ahead (beyond the 5-minute drift bound).
    pub future_clock: bool,
    /// One more device joins during the run.
    pub late_join: bool,
    /// One device is removed after healing.
    pub removal: bool,
    /// In half the seeds (of three or more devices), device 1 is lost for good during the
    /// run, its disk with it: its neighbours are re-paired with each other, and once the
    /// others agree on how much of its streams survived, a member removes it. Whatever any
    /// live device held of it must reach every live device; the reference then expects
    /// exactly that surviving prefix of its writes (each record of it, a version it wrote
    /// within that prefix, the same on every live device).
    pub lost_device: bool,
    /// Storage completions arrive late.
    pub storage_delay: bool,
    /// Power losses: besides what a crash loses, the last one to three committed batches roll
    /// back, as with SQLite under `synchronous = NORMAL`, except batches the engine marked
    /// `FullSync` (its own writes) and every batch before those.
    pub power_loss: bool,
    /// Which devices are paired (connect at all); see [`Topology`].
    pub topology: Topology,
    /// Some writes are large: near, at and beyond the frame limit the simulated network
    /// enforces (it enforces it always: an engine message above it is a failed check).
    pub large_writes: bool,
    /// Rolling upgrade: some devices start without the models `album` and `volume`, which the
    /// others write; a crash-restart may upgrade them.
    pub rolling_upgrade: bool,
    /// After quiescence, run this much longer with nothing to do and report the traffic of
    /// that idle time apart ([`SeedReport::idle_bytes`]).
    pub idle_ms: u64,
    /// Record a human-readable trace.
    pub trace: bool,
}

impl SimConfig {
    /// Every fault on.
    pub fn all_faults(peers: usize, ops: usize) -> Self {
        SimConfig {
            peers,
            ops,
            loss: 0.05,
            dup: 0.05,
            reorder: 0.1,
            partitions: true,
            crashes: true,
            skew: true,
            future_clock: true,
            late_join: true,
            removal: true,
            lost_device: true,
            storage_delay: true,
            power_loss: true,
            topology: Topology::Random,
            large_writes: true,
            rolling_upgrade: true,
            idle_ms: 0,
            trace: false,
        }
    }

    /// A perfect network and no faults.
    pub fn calm(peers: usize, ops: usize) -> Self {
        SimConfig {
            peers,
            ops,
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            partitions: false,
            crashes: false,
            skew: false,
            future_clock: false,
            late_join: false,
            removal: false,
            lost_device: false,
            storage_delay: false,
            power_loss: false,
            topology: Topology::FullMesh,
            large_writes: false,
            rolling_upgrade: false,
            idle_ms: 0,
            trace: false,
        }
    }
}

/// The pairing graph: devices connect only along its edges, as real devices connect only to
/// devices they were paired with. A device that joins during the run is paired with its
/// sponsor (and knows only it); a removed device's neighbours are paired with each other so the
/// graph stays connected, as a user would re-pair them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Each seed draws one of the shapes below.
    Random,
    /// Every pair of devices.
    FullMesh,
    /// `0 - 1 - 2 - ...`
    Chain,
    /// Everyone paired with device 0 only.
    Star,
    /// A chain closed into a cycle.
    Ring,
    /// A random spanning tree.
    Tree,
    /// A random spanning tree plus a few random extra pairs.
    Sparse,
}

impl Topology {
    /// The concrete shapes [`Topology::Random`] draws from.
    pub const SHAPES: [Topology; 6] = [
        Topology::FullMesh,
        Topology::Chain,
        Topology::Star,
        Topology::Ring,
        Topology::Tree,
        Topology::Sparse,
    ];
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Every check that failed (empty: the seed passed).
    pub failures: Vec<String>,
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent (encoded).
    pub bytes: u64,
    /// Simulated time.
    pub sim_time_ms: u64,
    /// Wall time of the run.
    pub wall_ms: u64,
    /// Operations that became durable.
    pub ops: usize,
    /// Hash of every message sent, with time and endpoints: equal for equal seeds.
    pub trace_hash: u64,
    /// Human-readable trace (when [`SimConfig::trace`] is set).
    pub trace: Vec<String>,
    /// Messages sent during [`SimConfig::idle_ms`] of idling after quiescence.
    pub idle_messages: u64,
    /// Bytes sent during that idle time.
    pub idle_bytes: u64,
    /// Pairs of devices paired at the end (edges of the pairing graph).
    pub edges: usize,
    /// How often each fault and recovery path happened (crashes, snapshots, refusals...).
    pub stats: std::collections::BTreeMap<&'static str, u64>,
}

impl SeedReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs one seed.
pub fn run_seed(cfg: &SimConfig, seed: u64) -> SeedReport {
    let wall = std::time::Instant::now();
    let mut report = world::World::new(cfg.clone(), seed).run(wall);
    report.seed = seed;
    report
}
