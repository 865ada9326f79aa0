//! The `Replica` state machine: `handle` inputs, drain `poll_output`, wake at `poll_timeout`.
//!
//! The engine owns protocol state (clock, counters, watermarks, version vectors, acks, pending
//! requests); records live in storage and are reached only through emitted
//! [`StorageCommand`]s. `handle` is total: whatever the input, it never panics and never
//! returns an error. A misbehaving peer gets [`Output::Disconnect`] and an event; a bad local
//! command gets [`Event::CommandFailed`].

mod config;
mod event;
mod frozen;
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
use crate::message::{Ack, ErrorCode, ErrorReply, Summary, SyncMessage};
use crate::shared::{SharedKey, SharedRecord};
use crate::storage::{ReadId, Restored, StorageCommand, StorageDone};
use crate::time::{Instant, Now};
use crate::version_vector::VersionVector;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use uuid::Uuid;

/// The highest head of this device's own counters that a peer may claim (`2^63 - 1`).
///
/// A device whose database was lost raises its counters past what peers report they hold of
/// it. A peer, buggy or hostile, could report `u64::MAX` and leave no sequence number to
/// write with; a claim above this bound is refused as misbehaviour instead. The upper half of
/// the range stays this device's own: at a million writes a second it lasts 290,000 years.
pub const MAX_CLAIMED_OWN_HEAD: u64 = u64::MAX >> 1;

/// The most devices a library tracks (members and removed members): every message that lists
/// members stays within a frame for this many, and a peer cannot make a device track more.
pub const MAX_MEMBERS: usize = 1024;

/// The most shared-change origins a device tracks in its version vector (every device that
/// ever wrote a shared change, members or not). A change from one more origin is refused as
/// misbehaviour ([`Refusal::TooManyOrigins`]), so no member can grow this device's version
/// vector, and with it every summary and ack it sends, without bound. At about 26 bytes per
/// origin, a full vector is about 107 KB: it fits the default 4 MiB frame many times over.
pub const MAX_ORIGINS: usize = 4 * MAX_MEMBERS;

/// A pinned log asks for relayed acks again at most every this many summaries (30 s).
const PINNED_EVERY: u64 = 6;

/// Every this many summaries, the digest of the member registers goes out again (every 10
/// minutes by default), and the registers to a peer whose digest differs: a repair for a lost
/// `Members`, which a reliable transport never loses (digests are compared on every connect).
const MEMBERS_EVERY: u64 = 120;

/// Every this many summaries, a peer gets a full summary instead of a delta (every 2 minutes
/// by default): it replaces what the peer believes, so a lost delta, or heads that went back
/// (a peer restored from an old backup), are repaired.
const FULL_SUMMARY_EVERY: u64 = 24;

/// How long after a peer came up the other peers are told (one list for every peer that came
/// up meanwhile).
const NEIGHBOURS_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

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
    /// When a `pinned` request of this peer was last honoured.
    resent_at: Option<Instant>,
    /// The owner last fetched from this peer: the planner starts after it, so one stream
    /// that keeps failing never starves the owners after it.
    last_owner: Option<DeviceId>,
    /// The heads this device last told the peer in a summary: a delta carries what rose.
    heads_told: BTreeMap<DeviceId, u64>,
    /// The list of connected peers this device last told the peer (`Neighbours`): the same
    /// list is not sent twice.
    neighbours_told: Vec<DeviceId>,
    /// When this device last answered the peer's `MembersDigest` with its registers, and the
    /// digest they had then: the same registers go to a peer at most once a summary period,
    /// however many digests it sends.
    members_answered: Option<(Instant, u64)>,
    /// The peer's digests of removed members' records: (its watermark, digest) by owner.
    digests: BTreeMap<DeviceId, (u64, u64)>,
    /// The digests this device last told the peer, by owner.
    digests_told: BTreeMap<DeviceId, (u64, u64)>,
    /// When this device last read a removed member's records again from the peer, by owner.
    reread: BTreeMap<DeviceId, Instant>,
}

/// A running catch-up of one owner's device-owned records.
#[derive(Debug)]
struct OwnedFetch {
    peer: DeviceId,
    request_id: u64,
    since: u64,
    deadline: Instant,
    command: Option<CommandId>,
    /// Pages of this request received (what [`SyncMessage::PagesReceived`] reports).
    pages: u32,
}

/// The flow control of one catch-up this device serves: pages are read from storage one at a
/// time, each when the previous one is sent, while the requester's window allows.
#[derive(Debug)]
struct ServeWindow {
    /// Pages the requester allows beyond those it reported received (capped).
    window: u32,
    /// Pages sent, and pages the requester reported received.
    sent: u32,
    received: u32,
    /// Estimated bytes of each page sent and not yet reported received, oldest first.
    in_flight: VecDeque<usize>,
    /// A storage read for the next page is pending.
    reading: bool,
}

impl ServeWindow {
    fn new(window: u32) -> ServeWindow {
        ServeWindow {
            window: window.clamp(1, MAX_WINDOW),
            sent: 0,
            received: 0,
            in_flight: VecDeque::new(),
            reading: false,
        }
    }

    /// Whether the next page may be read now: no read pending, fewer pages in flight than
    /// the window allows so far, and fewer than `byte_budget` bytes (one page is always
    /// allowed). The window opens as pages arrive (slow start, doubling every round trip):
    /// one page at first, one more for every page reported received, up to the requested
    /// window, so a requester that stops early (its pages are refused, it gave up) has cost
    /// few pages more than it took.
    fn may_read(&self, byte_budget: usize) -> bool {
        let in_flight = self.sent - self.received;
        let window = self
            .window
            .min(self.received.saturating_add(INITIAL_WINDOW));
        !self.reading
            && in_flight < window
            && (in_flight == 0 || self.in_flight.iter().sum::<usize>() < byte_budget)
    }

    /// A page of about `bytes` was sent; returns its index in the stream.
    fn sent_page(&mut self, bytes: usize) -> u32 {
        self.reading = false;
        self.sent += 1;
        self.in_flight.push_back(bytes);
        self.sent - 1
    }

    /// The requester reports `pages` received (cumulative; one above the pages sent counts
    /// as all of them, an older report changes nothing).
    fn received(&mut self, pages: u32) {
        let pages = pages.min(self.sent);
        while self.received < pages {
            self.received += 1;
            self.in_flight.pop_front();
        }
    }
}

/// Cap on the pages a requester may ask to have in flight (the byte budget binds first with
/// pages of any size).
const MAX_WINDOW: u32 = 256;

/// Pages a served catch-up sends before the requester reports any (see
/// [`ServeWindow::may_read`]).
const INITIAL_WINDOW: u32 = 1;

/// A device-owned catch-up this device is serving.
#[derive(Debug)]
struct OwnedServe {
    request_id: u64,
    /// The next page starts after this seq.
    since: u64,
    limit: u32,
    flow: ServeWindow,
}

/// A shared catch-up this device is serving (one per requester: a requester runs one).
#[derive(Debug)]
struct SharedServe {
    request_id: u64,
    cursor: SharedCursor,
    limit: u32,
    flow: ServeWindow,
}

/// Where the next page of a served shared catch-up starts.
#[derive(Debug)]
enum SharedCursor {
    /// Log entries after this vector.
    Log(VersionVector),
    /// Records after `after`; `vv` is the first page's vector, which the snapshot covers.
    Snapshot {
        after: Option<SharedKey>,
        vv: Option<VersionVector>,
    },
}

/// What [`Replica::abort_fetches`] selects a running catch-up by, whatever its kind.
struct FetchView {
    peer: DeviceId,
    request_id: u64,
    deadline: Instant,
}

impl FetchView {
    fn of(peer: DeviceId, request_id: u64, deadline: Instant) -> FetchView {
        FetchView {
            peer,
            request_id,
            deadline,
        }
    }
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
    /// Pages of the current request received (the next page's expected index).
    pages: u32,
}

#[derive(Debug)]
enum SharedMode {
    /// Reading the log from `since`.
    Log { since: VersionVector },
    /// Reading a snapshot; `vv` is the snapshot's claim, from its first page.
    Snapshot {
        /// The last record received: the next page starts with it (the rest of a record
        /// sent in parts) or after it.
        after: Option<SharedKey>,
        /// The greatest record known received whole, where a restarted stream resumes: the
        /// last record received may be the first part of one that goes on in the next page.
        resume: Option<SharedKey>,
        vv: Option<VersionVector>,
    },
}

/// The records of one owner a device-owned page is read from: `since < seq <= upto`.
#[derive(Debug)]
struct OwnedRange {
    owner: DeviceId,
    since: u64,
    upto: u64,
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
    Owned(OwnedRange),
    Log,
    Snapshot { vv: VersionVector },
}

/// The catch-ups this device runs: one per owner for device-owned records, one for the shared
/// stream.
#[derive(Debug, Default)]
struct Fetches {
    owned: BTreeMap<DeviceId, OwnedFetch>,
    shared: Option<SharedFetch>,
    /// The last request id issued (unique across every kind of catch-up).
    next_request: u64,
}

/// What this device serves its peers: streamed catch-ups and the storage reads behind them.
#[derive(Debug, Default)]
struct Serving {
    /// Device-owned catch-ups, by (requester, owner).
    owned: BTreeMap<(DeviceId, DeviceId), OwnedServe>,
    /// Shared catch-ups, by requester (a requester runs one).
    shared: BTreeMap<DeviceId, SharedServe>,
    reads: BTreeMap<ReadId, PendingRead>,
    /// The last read id issued.
    next_read: u64,
}

/// The periodic summary: when it is due and what the last ones saw.
#[derive(Debug)]
struct Summaries {
    due: Instant,
    /// The version vector at the previous summary: log entries it covers that are still
    /// unpruned have waited a whole period (the log is pinned; see `Neighbours`).
    vv_at_last: VersionVector,
    /// The version vector at the summary before that one.
    vv_two_ago: VersionVector,
    /// Summaries sent; every [`MEMBERS_EVERY`]th also sends the member registers' digest again.
    sent: u64,
    /// The summary count when this device last asked for relayed acks again.
    pinned_at: u64,
}

impl Summaries {
    fn new(due: Instant) -> Summaries {
        Summaries {
            due,
            vv_at_last: VersionVector::new(),
            vv_two_ago: VersionVector::new(),
            sent: 0,
            pinned_at: 0,
        }
    }
}

/// The lists of connected peers this device sends (`Neighbours`).
#[derive(Debug, Default)]
struct NeighbourLists {
    /// Versions the lists sent so far.
    sent: u64,
    /// When the list goes to every peer (debounced after a peer came up).
    due: Option<Instant>,
}

/// The sans-IO sync engine of one device.
///
/// A `Replica` performs no I/O and reads no clock. The host that embeds it (the
/// `hybridsync-tokio` driver, the simulator, a fuzz target, your own loop) gives it every input
/// together with the current time and carries out the outputs it emits. The rules below are the
/// whole contract between the two; the [example](#example) is a complete host loop.
///
/// # Calls
///
/// 1. Create it with [`Replica::new`]`(config, restored, now)`, `restored` being the durable
///    state loaded from storage ([`Restored::bootstrap`] for a device without a database), then
///    drain [`poll_output`](Replica::poll_output) until it returns `None`: a new replica
///    already has storage commands to run.
/// 2. Give it each input with [`handle`](Replica::handle)`(now, input)`, then drain
///    `poll_output` until `None`. The inputs are [`Input::PeerUp`] and [`Input::PeerDown`] from
///    the transport, [`Input::Message`] (its `from` is the sender the transport
///    *authenticated*, never something the message claims: every message is checked against
///    it), [`Input::Storage`] with the completion of a read, [`Input::Command`] from the
///    application, and [`Input::Tick`].
/// 3. Call `handle(now, Input::Tick)` when the monotonic clock reaches
///    [`poll_timeout`](Replica::poll_timeout), then drain again. Read `poll_timeout` again
///    after every drain, as any input can move it; it may already be past (tick at once). A
///    spurious tick, early, late or repeated, is harmless: a tick runs only the timers that are
///    due at its `now`.
///
/// The outputs are [`Output::Storage`] (run it, see below), [`Output::Send`] (deliver the
/// message to `to`, for example as an [`encode_frame`](crate::encode_frame)),
/// [`Output::Disconnect`] (close the connection; the engine already counts the peer as gone, so
/// a later `PeerDown` for it is optional and harmless) and [`Output::Event`] (tell the
/// application).
///
/// # Storage and the write-ahead rule
///
/// - Storage commands are executed **in emission order**.
/// - A read ([`StorageCommand::read_id`] is `Some`) **observes every write emitted before it**.
///   Its [`StorageDone`] goes back through `handle(now, Input::Storage(done))`, as late as need
///   be; [`StorageDone::Failed`] makes the engine answer the peer `Busy`, and a completion the
///   engine no longer waits for (its peer left) is ignored.
/// - A `Send`, `Disconnect` or `Event` is performed only once **every storage command emitted
///   before it is durable**. This is what makes the engine's messages true: an acknowledgement
///   or a summary never claims what a crash could take back, a change reaches peers only after
///   it is stored together with the counters and the clock it was numbered and stamped from,
///   and the application never hears of a write that could still be lost. An output emitted
///   before a write does not wait for that write.
///
/// Committing each command on its own obeys the rule; committing them in groups is faster.
/// [`WriteAhead`](crate::write_ahead::WriteAhead) implements exactly this ordering with group
/// commit (one batch commits while the next one fills): push every output into it, perform the
/// actions it releases, commit the batches it hands out. A crash loses the batch that was
/// committing together with everything held behind it
/// ([`abandon`](crate::write_ahead::WriteAhead::abandon)): nothing already performed depended
/// on it.
///
/// # Totality
///
/// `handle` never panics and never returns an error, whatever it is fed: any message a peer
/// can encode, inputs in any order, duplicated or stale completions, any `now`. Every failure
/// is an output:
///
/// - A peer that breaks a protocol rule gets [`Event::PeerMisbehaved`] then
///   [`Output::Disconnect`], both with a typed [`Refusal`] (not a member, a malformed page, a
///   foreign version of one of this device's records, an acknowledgement naming another device
///   than its sender, a change whose origin is not its stamp's device). Nothing the offending
///   message carries is applied. A peer with too many reads pending is answered
///   [`ErrorCode::Busy`] and reported as `PeerMisbehaved` with [`Refusal::Busy`], but stays
///   connected.
/// - A change that can be refused without blaming its sender (a model of the other kind, a
///   stamp beyond the drift bound) gets [`Event::ChangeRefused`]; anti-entropy brings it again.
/// - Every [`Input::Command`] ends in exactly one [`Event::CommandDone`] or
///   [`Event::CommandFailed`] carrying its [`CommandId`] and, on failure, a typed
///   [`CommandError`]. A write ends in the step that issued it, and a failed write changed
///   nothing; a fetch ([`Command::RequestState`], [`Command::RequestSharedChanges`]) ends when
///   its last page is applied, or fails when the peer disconnects, answers an error or times
///   out.
///
/// # Time
///
/// `new` and every `handle` take a [`Now`] carrying two clocks, which the engine never compares:
///
/// - `now.mono`, an [`Instant`] on a monotonic clock (microseconds since any origin), times
///   everything local: the periodic summary ([`Config::heartbeat_interval`]), the debounced
///   acknowledgements ([`Config::ack_delay`]), catch-up request timeouts
///   ([`Config::request_timeout`]) and how long a member has been silent
///   ([`Config::eviction_after`]). Deadlines are absolute instants on this clock. It is never
///   stored, so each process may use its own origin.
/// - `now.wall_ms`, the wall clock in milliseconds since the Unix epoch, is the physical part
///   of the hybrid logical clock ([`HlcClock`]) that stamps every change, and the reference
///   against which remote stamps more than [`Config::max_clock_drift`] ahead are refused.
///
/// **The monotonic clock going backwards** only delays timers. The engine takes `now.mono` as
/// given; a deadline set before the step stays where it was and fires when the clock reaches it
/// again, so the next summary, a pending acknowledgement and catch-up timeouts come late by the
/// size of the step, and a member's silence counts as zero until the clock passes the instant
/// it was last heard from (which only postpones its eviction). Nothing fires early and nothing
/// is stamped from this clock. A jump forward fires every timer it passes at the next tick:
/// catch-ups in flight time out (their commands fail with [`CommandError::Interrupted`]) and,
/// with `eviction_after`, silent members may stop pinning the shared log.
///
/// **The wall clock stepping back** does not make stamps go back: the clock keeps the time of
/// its last stamp and counts up ([`HlcClock::tick`]) until the wall clock passes it again, so a
/// write made after the step still wins over everything this device wrote or saw before it.
/// The high-water mark is stored ([`StorageCommand::SetHlc`], ahead of what it stamps) and
/// restored ([`Restored::hlc`]), so this holds across restarts too. Remote stamps are judged
/// against the earlier wall time, though: after a step back larger than `max_clock_drift`,
/// peers' new shared changes look too far ahead and are refused ([`Event::ClockSkew`] and
/// `ChangeRefused` with [`Refusal::ClockDrift`], the clock left alone) until the wall clock
/// has caught up, and catch-up brings them after that. Their device-owned records, ordered by
/// sequence number, still apply; only their stamps are not adopted.
///
/// **The wall clock stepping forward** moves the stamps forward, and they stay ahead when the
/// wall clock is set back (see above). Peers adopt stamps up to `max_clock_drift` ahead of
/// their own wall clock, moving their clocks forward with them; shared changes stamped further
/// ahead are refused with `ClockSkew`, neither applied nor adopted, until the peers' wall
/// clocks are within the bound, so one device far in the future cannot drag the others' clocks
/// along.
///
/// # Example
///
/// A complete host loop on [`MemStore`](crate::MemStore), one device, with `WriteAhead` for the
/// ordering:
///
/// ```rust
/// use hybridsync_core::WriteAhead;
/// use hybridsync_core::*;
///
/// /// Performs released actions: sends and disconnects go to the transport, events to the app.
/// fn perform(actions: Vec<Output>, events: &mut Vec<Event>) {
///     for action in actions {
///         match action {
///             Output::Send { to: _, msg } => {
///                 let _frame = encode_frame(&msg); // write it to the connection with `to`
///             }
///             Output::Disconnect { .. } => {} // close the connection with `peer`
///             Output::Event(e) => events.push(e),
///             Output::Storage(_) => {} // never: `WriteAhead` hands storage out in batches
///         }
///     }
/// }
///
/// /// Drains `replica` in write-ahead order until it has nothing left to do at `now`.
/// fn settle(
///     replica: &mut Replica,
///     wal: &mut WriteAhead,
///     store: &mut MemStore,
///     now: Now,
///     events: &mut Vec<Event>,
/// ) {
///     loop {
///         while let Some(out) = replica.poll_output() {
///             wal.push(out);
///         }
///         let flush = wal.flush();
///         perform(flush.actions, events);
///         let Some(batch) = flush.batch else { return };
///         // One transaction: run the commands in order (a read sees the writes before it)...
///         let reads: Vec<StorageDone> =
///             batch.into_iter().filter_map(|cmd| store.execute(cmd)).collect();
///         store.sync(); // ...and commit: what waited for the batch may go now.
///         perform(wal.committed(), events);
///         for done in reads {
///             replica.handle(now, Input::Storage(done));
///         }
///     }
/// }
///
/// let me = DeviceId::from_u128(1);
/// let mut now = Now::new(Instant::ZERO, 1_700_000_000_000);
/// let (mut store, mut wal, mut events) = (MemStore::new(), WriteAhead::new(), Vec::new());
///
/// // 1. Start (a new device founding a library on its own) and drain.
/// let config = Config::new(me, ModelRegistry::spacedrive());
/// let mut replica = Replica::new(config, Restored::bootstrap([me]), now);
/// settle(&mut replica, &mut wal, &mut store, now, &mut events);
///
/// // 2. An input (the application inserts a tag) and drain.
/// let tag = uuid::Uuid::from_u128(7);
/// let fields = [("name".to_owned(), Value::from("holiday"))].into_iter().collect();
/// let cmd = Command::InsertShared { model: "tag".into(), uuid: tag, fields };
/// replica.handle(now, Input::Command { id: CommandId(1), cmd });
/// settle(&mut replica, &mut wal, &mut store, now, &mut events);
///
/// assert!(events.contains(&Event::CommandDone(CommandId(1))));
/// let record = &store.state().shared[&("tag".to_owned(), tag)];
/// assert_eq!(record.visible().unwrap()["name"], Value::from("holiday"));
///
/// // 3. Tick at the deadline (a real host sleeps until then, or until the next input).
/// let due = replica.poll_timeout().expect("the summary timer is always set");
/// let slept = due.saturating_duration_since(now.mono);
/// now = Now::new(due, now.wall_ms + slept.as_millis() as u64);
/// replica.handle(now, Input::Tick);
/// settle(&mut replica, &mut wal, &mut store, now, &mut events);
///
/// // A spurious tick does nothing.
/// replica.handle(now, Input::Tick);
/// assert!(replica.poll_output().is_none());
///
/// // What the application was told survives a crash: it was durable first.
/// assert!(wal.is_idle());
/// store.crash();
/// let config = Config::new(me, ModelRegistry::spacedrive());
/// let restarted = Replica::new(config, store.restored(), now);
/// assert_eq!(restarted.version_vector().get(me), 1);
/// ```
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
    /// The catch-ups this device runs.
    fetches: Fetches,
    /// The catch-ups and reads this device serves to its peers.
    serving: Serving,
    /// When and what the periodic summary last sent.
    summaries: Summaries,
    /// The lists of connected peers this device sends.
    neighbours: NeighbourLists,
    /// Removed members' streams and this device's digests of them.
    frozen: BTreeMap<DeviceId, frozen::Frozen>,
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
        let summaries = Summaries::new(now.mono + config.heartbeat_interval);
        let mut replica = Replica {
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
            fetches: Fetches::default(),
            serving: Serving::default(),
            summaries,
            neighbours: NeighbourLists::default(),
            frozen: BTreeMap::new(),
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
            .fetches
            .owned
            .values()
            .map(|f| f.deadline)
            .chain(self.fetches.shared.as_ref().map(|f| f.deadline));
        std::iter::once(self.summaries.due)
            .chain(self.ack_due)
            .chain(self.neighbours.due)
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

    /// Whether `device` belongs to the library's history: a member or a removed member (its
    /// records stay), or a stream this device holds.
    fn known_device(&self, device: DeviceId) -> bool {
        self.member_records.contains_key(&device.0)
            || self.watermarks.contains_key(&device)
            || self.vv.get(device) > 0
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
        self.serving.reads.len()
    }

    /// Whether a catch-up is running.
    pub fn is_fetching(&self) -> bool {
        !self.fetches.owned.is_empty() || self.fetches.shared.is_some()
    }

    // ---------------------------------------------------------------- outputs

    /// Emits a storage command; a command holding this device's own writes (records, log
    /// entries, its sequence head) is followed by [`StorageCommand::FullSync`]: a power loss
    /// must never roll back a write the device may have sent, or it would issue the same
    /// sequence number again for another change.
    fn store(&mut self, cmd: StorageCommand) {
        let me = self.config.device;
        let own = match &cmd {
            StorageCommand::PutOwned(records) => records.iter().any(|r| r.owner == me),
            StorageCommand::AppendLog(entries) => entries.iter().any(|e| e.origin == me),
            StorageCommand::SetWatermark { owner, .. } => *owner == me,
            _ => false,
        };
        self.frozen_written(&cmd);
        self.outputs.push_back(Output::Storage(cmd));
        if own {
            self.outputs
                .push_back(Output::Storage(StorageCommand::FullSync));
        }
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
        self.fetches.next_request += 1;
        self.fetches.next_request
    }

    fn next_read_id(&mut self) -> ReadId {
        self.serving.next_read += 1;
        ReadId(self.serving.next_read)
    }

    fn error_reply(&mut self, to: DeviceId, request_id: Option<u64>, code: ErrorCode, msg: &str) {
        self.send(
            to,
            SyncMessage::Error(crate::ErrorReply {
                request_id,
                code,
                message: msg.to_owned(),
            }),
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

    /// Sends `to` a summary: `full`, or only what rose since the last one it was told (nothing
    /// if nothing did). Either way its version vector is this device's cumulative ack, so
    /// what it carries counts as told (`Peer::told`).
    fn send_summary(&mut self, to: DeviceId, full: bool) {
        let me = self.config.device;
        let Some(p) = self.peers.get_mut(&to) else {
            return;
        };
        let mut heads = self.watermarks.clone();
        heads.retain(|_, s| *s > 0);
        let msg = if full {
            p.heads_told = heads.clone();
            p.told.insert(me, self.vv.clone());
            SyncMessage::Heartbeat(crate::Summary {
                heads,
                vv: self.vv.clone(),
            })
        } else {
            let told = p.told.entry(me).or_default();
            let mut vv = VersionVector::new();
            for (o, s) in self.vv.iter() {
                if told.get(o) < s {
                    vv.set(o, s);
                }
            }
            told.merge(&vv);
            // A head the peer reported at or above ours tells it nothing (it fetches from us
            // only what it lacks), nor does the head of an owner the peer is connected to,
            // this device included: the owner pushes it every change first-hand (a change
            // lost on the way is repaired by the next full summary). Its own stream's head is
            // always sent (a lost database).
            heads.retain(|o, s| {
                let first_hand = *o == me || p.neighbours.contains(o);
                p.heads_told.get(o).is_none_or(|t| t < s)
                    && (*o == to || (!first_hand && p.heads.get(o).is_none_or(|h| h < s)))
            });
            for (o, s) in &heads {
                p.heads_told.insert(*o, *s);
            }
            if heads.is_empty() && vv.is_empty() {
                return;
            }
            SyncMessage::HeartbeatDelta(crate::Summary { heads, vv })
        };
        self.send(to, msg);
        if full {
            // Digests of removed members' records go again too (a lost one is repaired).
            self.tell_digests(to, true);
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
        // A full summary: its version vector is also this device's cumulative ack.
        self.send_summary(peer, true);
        // The member registers, bootstrap ones included: those exist only as registers (never
        // in the log), so a device that catches up from the log would otherwise never learn
        // them, and refuse their connections. Their digest first: the registers themselves
        // go only where they differ (sent whole to every new peer, they were n^2 lists of n
        // records at start-up).
        let digest = self.members_digest();
        self.send(peer, SyncMessage::MembersDigest(digest));
        // What it holds of removed members (computed first if need be, then sent).
        self.refresh_frozen();
        // The new peer learns at once who this device reaches; the others learn that it
        // reaches one more a moment later, once for every peer that came up meanwhile (when a
        // device starts, its links come up one by one: one list per link per peer was n^3
        // messages). Until then they may relay to this device what it gets first-hand:
        // redundant, never missing.
        self.send_neighbours_to(peer);
        if self.neighbours.due.is_none() {
            self.neighbours.due = Some(self.now.mono + NEIGHBOURS_DELAY);
        }
        // And every ack this device knows that the new peer may not.
        self.schedule_ack();
    }

    fn on_peer_down(&mut self, peer: DeviceId) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.last_seen.insert(peer, self.now.mono);
        self.event(Event::PeerDisconnected(peer));
        // At once: a peer that believes this device still reaches `peer` would not relay it
        // `peer`'s changes.
        self.send_neighbours(false);
        self.abort_fetches(
            |f| f.peer == peer,
            CommandError::Interrupted("peer disconnected"),
        );
        self.serving.reads.retain(|_, r| r.peer != peer);
        self.serving.owned.retain(|(p, _), _| *p != peer);
        self.serving.shared.remove(&peer);
    }

    /// Abandons every running catch-up that `selects` picks (device-owned ones and the shared
    /// one alike), failing the command attached to each with `reason`.
    fn abort_fetches(&mut self, selects: impl Fn(&FetchView) -> bool, reason: CommandError) {
        let owners: Vec<DeviceId> = self
            .fetches
            .owned
            .iter()
            .filter(|(_, f)| selects(&FetchView::of(f.peer, f.request_id, f.deadline)))
            .map(|(o, _)| *o)
            .collect();
        let mut commands: Vec<Option<CommandId>> = owners
            .iter()
            .filter_map(|o| self.fetches.owned.remove(o))
            .map(|f| f.command)
            .collect();
        let shared = self
            .fetches
            .shared
            .as_ref()
            .is_some_and(|f| selects(&FetchView::of(f.peer, f.request_id, f.deadline)));
        if shared {
            commands.extend(self.fetches.shared.take().map(|f| f.command));
        }
        for command in commands {
            self.fail_command(command, reason.clone());
        }
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
            SyncMessage::Heartbeat(summary) => self.on_heartbeat(from, summary, true),
            SyncMessage::HeartbeatDelta(summary) => self.on_heartbeat(from, summary, false),
            // A push holds the sender's own changes: their owner is the authenticated sender.
            SyncMessage::StateChange(c) => self.on_owned_push(from, vec![c.into_record(from)]),
            SyncMessage::StateBatch(cs) => {
                let records = cs.into_iter().map(|c| c.into_record(from)).collect();
                self.on_owned_push(from, records)
            }
            SyncMessage::StateRequest(request) => self.serve_owned(from, request),
            SyncMessage::PagesReceived(received) => self.on_pages_received(from, received),
            SyncMessage::StateResponse(page) => self.on_owned_response(from, page),
            SyncMessage::SharedChange(c) => self.on_shared_push(from, vec![c]),
            SyncMessage::SharedChangeBatch(cs) => self.on_shared_push(from, cs),
            SyncMessage::SharedChangeRequest(request) => self.serve_log(from, request),
            SyncMessage::SharedChangeResponse(page) => self.on_log_response(from, page),
            SyncMessage::AckSharedChanges(Ack { acker, vv }) => self.on_ack(from, acker, vv),
            SyncMessage::SharedSnapshotRequest(request) => self.serve_snapshot(from, request),
            SyncMessage::SharedSnapshotResponse(page) => self.on_snapshot_response(from, page),
            SyncMessage::Error(reply) => self.on_error(from, reply),
            SyncMessage::AckRelay(acks) => self.on_ack_relay(from, acks),
            SyncMessage::Members(records) => self.on_members(from, records),
            SyncMessage::MembersDigest(digest) => self.on_members_digest(from, digest),
            SyncMessage::OwnedDigest(claim) => self.on_owned_digest(from, claim),
            SyncMessage::Neighbours(list) => self.on_neighbours(from, list),
            SyncMessage::StateRelay(crate::StateRelay { owner, records }) => {
                let records = records.into_iter().map(|c| c.into_record(owner)).collect();
                self.on_owned_relay(from, owner, records)
            }
        }
    }

    /// A summary: `full` replaces what this device believes of the peer, a delta raises it.
    fn on_heartbeat(&mut self, from: DeviceId, summary: Summary, full: bool) {
        let Summary { mut heads, vv } = summary;
        let me = self.config.device;
        // A peer that knows a higher head of our own counters than we do: our database was
        // lost or restored from an old backup. Raise the counters past it so new changes are
        // never mistaken for old ones.
        if heads.get(&me).is_some_and(|h| *h > MAX_CLAIMED_OWN_HEAD) {
            return self.misbehaved(from, Refusal::ClaimBeyondBound);
        }
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
        // Only the streams of devices of the library (members, removed members: their records
        // stay part of it) and of streams already held are tracked and fetched: a member naming
        // made-up owners must not grow this device's watermarks, and with them its own summary,
        // without bound (the member records are bounded by `MAX_MEMBERS`).
        heads.retain(|owner, _| self.known_device(*owner));
        let vv: VersionVector = vv.iter().filter(|(o, _)| self.known_device(*o)).collect();
        if let Some(peer) = self.peers.get_mut(&from) {
            if full {
                peer.heads = heads;
                peer.vv = vv;
            } else {
                for (owner, head) in heads {
                    let h = peer.heads.entry(owner).or_insert(0);
                    *h = (*h).max(head);
                }
                peer.vv.merge(&vv);
            }
        }
        self.plan_owned(from);
        self.plan_shared(from);
    }

    fn on_error(&mut self, from: DeviceId, reply: ErrorReply) {
        let ErrorReply {
            request_id,
            code,
            message,
        } = reply;
        let Some(rid) = request_id else { return };
        // Request ids are unique across every kind of catch-up: at most one matches.
        self.abort_fetches(
            |f| f.peer == from && f.request_id == rid,
            CommandError::PeerError(format!("{code:?}: {message}")),
        );
    }

    // ---------------------------------------------------------------- storage

    fn on_storage(&mut self, done: StorageDone) {
        let Some(done) = self.on_digest_page(done) else {
            return;
        };
        let id = match &done {
            StorageDone::Owned { id, .. }
            | StorageDone::Log { id, .. }
            | StorageDone::Snapshot { id, .. }
            | StorageDone::Failed { id } => *id,
        };
        let Some(read) = self.serving.reads.remove(&id) else {
            return; // unknown or cancelled
        };
        if let Some(p) = self.peers.get_mut(&read.peer) {
            p.pending_reads = p.pending_reads.saturating_sub(1);
        } else {
            return;
        }
        match (read.kind, done) {
            (ReadKind::Owned(range), StorageDone::Owned { records, more, .. }) => {
                self.answer_owned(read.peer, read.request_id, range, records, more)
            }
            (ReadKind::Log, StorageDone::Log { entries, more, .. }) => {
                self.answer_log(read.peer, read.request_id, entries, more)
            }
            (ReadKind::Snapshot { vv }, StorageDone::Snapshot { records, more, .. }) => {
                self.answer_snapshot(read.peer, read.request_id, vv, records, more)
            }
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
        self.serving.reads.insert(
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
        if self.neighbours.due.is_some_and(|t| t <= now) {
            self.neighbours.due = None;
            self.send_neighbours(false);
        }
        // The summary before the acks: its version vector is this device's cumulative ack,
        // so the acks that follow carry only what it does not (relayed acks).
        if self.summaries.due <= now {
            self.summaries.due = now + self.config.heartbeat_interval;
            let full = self.summaries.sent.is_multiple_of(FULL_SUMMARY_EVERY);
            let peers: Vec<DeviceId> = self.peers.keys().copied().collect();
            for peer in peers {
                self.send_summary(peer, full);
            }
            self.summaries.sent += 1;
            self.refresh_frozen();
            if self.summaries.sent.is_multiple_of(MEMBERS_EVERY) && !self.peers.is_empty() {
                // Anti-entropy for the member registers (a lost `Members` is repaired).
                let digest = self.members_digest();
                self.broadcast(SyncMessage::MembersDigest(digest));
            }
            // Entries held since the previous summary and still unpruned: some ack did not
            // arrive (a relayed one may have been lost); ask the peers to relay them all again.
            // At most every `PINNED_EVERY` summaries: a member that stays offline keeps the
            // log pinned for as long, and each request costs every neighbour its ack table.
            // Held for two whole periods: acks ride on summaries, so an entry logged just
            // after one is acknowledged by the peers' next ones, up to a period later.
            let pinned = self
                .summaries
                .vv_two_ago
                .iter()
                .any(|(o, s)| self.horizon.get(o) < s);
            if pinned && self.summaries.sent >= self.summaries.pinned_at + PINNED_EVERY {
                self.summaries.pinned_at = self.summaries.sent;
                self.send_neighbours(true);
            }
            self.summaries.vv_two_ago =
                std::mem::replace(&mut self.summaries.vv_at_last, self.vv.clone());
            self.recompute_pruning();
        }
        if self.ack_due.is_some_and(|t| t <= now) {
            self.ack_due = None;
            self.send_acks();
        }
        self.abort_fetches(
            |f| f.deadline <= now,
            CommandError::Interrupted("request timed out"),
        );
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
