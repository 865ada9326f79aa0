//! Fuzz harnesses: the bodies of the `fuzz/` cargo-fuzz targets.
//!
//! Each function takes the fuzzer's raw bytes and **panics** when a property is violated; it
//! returns normally for any input that merely runs out of bytes. They live here, in the normal
//! workspace, so that every input a fuzzer ever found (committed under `tests/fuzz-regressions/`)
//! and the seed corpus (`fuzz/corpus/`) are replayed by `cargo test` with the exact same
//! checks, no nightly toolchain needed.
//!
//! - [`wire_decode`]: any bytes → `decode` never panics; whatever decodes re-encodes to bytes
//!   that decode to the same message.
//! - [`frame_decoder`]: a byte stream split at arbitrary chunk boundaries yields the same
//!   messages and error as the whole stream; oversized length prefixes are refused as soon as
//!   they are buffered, and the buffer never holds more than one frame.
//! - [`engine_inputs`]: one [`Replica`] with a [`MemStore`] (whose read completions the fuzzer
//!   delays and reorders) fed an arbitrary sequence of inputs; invariants checked after every
//!   step (see [`engine_inputs`]).
//! - [`sim_scenario`]: a simulated cluster built from the bytes must converge to the state the
//!   reference model computes.

use crate::cluster::Cluster;
use crate::{device, run_seed, SimConfig};
use arbitrary::{Arbitrary, Unstructured};
use hybridsync_core::{
    decode, encode, encode_frame, ChangeKind, Command, CommandId, Config, DeviceId, ErrorCode,
    Event, FrameDecoder, Hlc, Input, Instant, MemStore, ModelRegistry, Now, Output, OwnedRecord,
    Register, Replica, Restored, StorageCommand, StorageDone, SyncMessage, Value, VersionVector,
    MEMBER_MODEL,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

// ====================================================================== wire_decode

/// `wire_decode`: any bytes → [`decode`] returns (never panics); a message that decodes
/// re-encodes to bytes that decode to an equal message (compared by encoding, because a
/// `Value::Float(NaN)` is not equal to itself) and that frame and unframe unchanged.
pub fn wire_decode(data: &[u8]) {
    let _ = Value::from_bytes(data);
    let Ok(msg) = decode(data) else {
        return;
    };
    let bytes = encode(&msg);
    let again = match decode(&bytes) {
        Ok(m) => m,
        Err(e) => panic!("re-encoded {} does not decode: {e}", msg.kind()),
    };
    assert_eq!(
        encode(&again),
        bytes,
        "decode(encode(m)) re-encodes differently"
    );
    if reflexive(&msg) {
        assert_eq!(again, msg, "decode(encode(m)) != m");
    }
    // The canonical encoding is never longer than what the peer sent.
    assert!(bytes.len() <= data.len(), "re-encoding grew the message");
    let mut d = FrameDecoder::default();
    d.push(&encode_frame(&msg));
    match d.next_message() {
        Ok(Some(m)) => assert_eq!(encode(&m), bytes, "framing changed the message"),
        other => panic!("a framed message did not come back: {other:?}"),
    }
    assert_eq!(d.buffered(), 0);
}

/// Whether `v == v` (false when a float inside is NaN).
#[allow(clippy::eq_op)]
fn reflexive<T: PartialEq>(v: &T) -> bool {
    v == v
}

// ====================================================================== frame_decoder

/// One piece of a fuzzed byte stream.
#[derive(Arbitrary, Debug)]
enum Segment {
    /// A well-formed frame.
    Frame(SyncMessage),
    /// Arbitrary bytes (possibly a partial or bogus prefix).
    Raw(Vec<u8>),
    /// A bare length prefix (often oversized).
    Prefix(u32),
    /// A prefix announcing `len` bytes, followed by `len` copies of `fill` (a bad body).
    Filled { len: u16, fill: u8 },
}

/// What a decoder made of a stream: the messages (by encoding) and the error, if any.
#[derive(Debug, PartialEq)]
struct Decoded {
    messages: Vec<Vec<u8>>,
    error: Option<String>,
}

/// `frame_decoder`: builds a stream from frames, raw bytes and hostile prefixes, then feeds it
/// to one [`FrameDecoder`] whole and to another in arbitrary chunks. Both must yield the same
/// messages and the same error. After every drain the decoder holds less than one maximal
/// frame, a buffered oversized prefix has already been refused, `wanted()` is consistent, and
/// after an error the decoder is empty and stays silent.
pub fn frame_decoder(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = frame_decoder_from(&mut u);
}

fn frame_decoder_from(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let max_frame = match u.int_in_range(0u8..=3)? {
        0 => hybridsync_core::DEFAULT_MAX_FRAME,
        1 => usize::from(u.int_in_range(0u16..=64)?),
        _ => usize::from(u.arbitrary::<u16>()?),
    };
    let chunks: Vec<u16> = u.arbitrary()?;
    let segments: Vec<Segment> = u.arbitrary()?;
    let mut stream = Vec::new();
    for s in &segments {
        match s {
            Segment::Frame(m) => stream.extend(encode_frame(m)),
            Segment::Raw(b) => stream.extend_from_slice(b),
            Segment::Prefix(len) => stream.extend_from_slice(&len.to_be_bytes()),
            Segment::Filled { len, fill } => {
                stream.extend_from_slice(&u32::from(*len).to_be_bytes());
                stream.extend(std::iter::repeat_n(*fill, usize::from(*len)));
            }
        }
    }

    let mut whole = FrameDecoder::new(max_frame);
    whole.push(&stream);
    let mut want = Decoded {
        messages: Vec::new(),
        error: None,
    };
    drain_frames(&mut whole, &stream, max_frame, &mut want);

    let mut split = FrameDecoder::new(max_frame);
    let mut got = Decoded {
        messages: Vec::new(),
        error: None,
    };
    let mut pos = 0;
    let mut sizes = chunks.iter().map(|c| usize::from(*c));
    while got.error.is_none() && pos < stream.len() {
        let n = sizes.next().unwrap_or(stream.len()).min(stream.len() - pos);
        split.push(&stream[pos..pos + n]);
        pos += n;
        drain_frames(&mut split, &stream[..pos], max_frame, &mut got);
    }
    if got.error.is_some() {
        // Poisoned: whatever else arrives is ignored.
        split.push(&stream[pos..]);
        assert_eq!(split.buffered(), 0);
        assert!(matches!(split.next_message(), Ok(None)));
    }
    assert_eq!(got, want, "chunked decoding differs from whole decoding");
    Ok(())
}

/// Pops messages until the decoder wants more bytes or fails; checks the bounds.
fn drain_frames(d: &mut FrameDecoder, pushed: &[u8], max_frame: usize, out: &mut Decoded) {
    if out.error.is_some() {
        return;
    }
    loop {
        match d.next_message() {
            Ok(Some(m)) => out.messages.push(encode(&m)),
            Ok(None) => break,
            Err(e) => {
                assert_eq!(d.buffered(), 0, "a failed decoder keeps no buffer");
                assert!(
                    matches!(d.next_message(), Ok(None)),
                    "poisoned decoder spoke"
                );
                out.error = Some(e.to_string());
                return;
            }
        }
    }
    let held = d.buffered();
    assert!(
        held < 4 + max_frame,
        "decoder holds {held} bytes with a maximum frame of {max_frame}"
    );
    let start = pushed.len() - held;
    if let Some(prefix) = pushed.get(start..start + 4) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        assert!(
            len <= max_frame,
            "an oversized prefix ({len} > {max_frame}) was buffered instead of refused"
        );
    }
    match d.wanted() {
        Ok(n) => assert!(
            n >= 1 && held + n <= 4 + max_frame,
            "wanted() = {n} with {held} buffered"
        ),
        Err(e) => panic!("wanted() failed after a clean drain: {e}"),
    }
}

// ====================================================================== engine_inputs

/// Wall-clock origin of the engine harness (Unix ms).
const T0: u64 = 1_750_000_000_000;

/// A device as the fuzzer names it: mostly from a small pool so that messages meet state.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    /// The replica under test.
    Me,
    /// Member A.
    A,
    /// Member B.
    B,
    /// A device that is not a member (until some change adds it).
    Stranger,
    /// Any simulated device index.
    Index(u8),
    /// Any of 65,536 devices no one else knows: members naming arbitrary origins, owners
    /// and heads.
    Any(u16),
}

impl Who {
    fn id(self) -> DeviceId {
        match self {
            Who::Me => device(0),
            Who::A => device(1),
            Who::B => device(2),
            Who::Stranger => device(3),
            Who::Index(i) => device(usize::from(i % 8)),
            Who::Any(i) => DeviceId::from_u128(1 << 64 | u128::from(i)),
        }
    }
}

/// A model name: registered ones of both kinds, the member model, or anything.
#[derive(Arbitrary, Debug, Clone)]
enum ModelSel {
    Entry,
    Location,
    Tag,
    Album,
    Member,
    Unknown,
    Raw(String),
}

impl ModelSel {
    fn name(&self) -> String {
        match self {
            ModelSel::Entry => "entry".into(),
            ModelSel::Location => "location".into(),
            ModelSel::Tag => "tag".into(),
            ModelSel::Album => "album".into(),
            ModelSel::Member => MEMBER_MODEL.into(),
            ModelSel::Unknown => "no-such-model".into(),
            ModelSel::Raw(s) => s.clone(),
        }
    }
}

/// A stamp time relative to the replica's wall clock.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum When {
    /// Within a few seconds of now.
    Near(i16),
    /// Minutes in the past.
    Past(u16),
    /// Beyond the drift bound (5 minutes + up to ~18 hours).
    Future(u16),
    /// Any time at all.
    Raw(u64),
}

impl When {
    fn at(self, wall: u64) -> u64 {
        match self {
            When::Near(ms) => wall.saturating_add_signed(i64::from(ms)),
            When::Past(s) => wall.saturating_sub(u64::from(s) * 1000),
            When::Future(s) => wall + 300_001 + u64::from(s) * 1000,
            When::Raw(t) => t,
        }
    }
}

/// A record uuid from a small pool (or any).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Key {
    Small(u8),
    Device(Who),
    Raw(u128),
}

impl Key {
    fn uuid(self) -> Uuid {
        match self {
            Key::Small(k) => Uuid::from_u128(u128::from(k % 16) + 1),
            Key::Device(w) => w.id().0,
            Key::Raw(r) => Uuid::from_u128(r),
        }
    }
}

/// A device-owned record, relative to its sender.
#[derive(Arbitrary, Debug, Clone)]
struct Rec {
    /// `None`: the sender.
    owner: Option<Who>,
    seq: Seq,
    when: When,
    counter: u8,
    model: ModelSel,
    key: Key,
    data: Option<Vec<u8>>,
}

/// A shared change.
#[derive(Arbitrary, Debug, Clone)]
struct Chg {
    /// `None`: the sender.
    origin: Option<Who>,
    /// The stamp's device differs from the origin.
    spoof_device: Option<Who>,
    seq: Seq,
    when: When,
    counter: u8,
    model: ModelSel,
    key: Key,
    kind: ChangeKind,
    fields: Vec<(u8, Value)>,
}

/// A shared record's registers (for snapshot pages).
#[derive(Arbitrary, Debug, Clone)]
struct Regs {
    model: ModelSel,
    key: Key,
    exists: Option<(When, Who, bool)>,
    insert: Option<(When, Who)>,
    fields: Vec<(u8, When, Who, Value)>,
}

/// A sequence number, head or bound: mostly small, sometimes at the top of the range.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seq {
    Small(u16),
    /// `u64::MAX` minus a little.
    Top(u8),
    Raw(u64),
}

impl Seq {
    fn get(self) -> u64 {
        match self {
            Seq::Small(s) => u64::from(s),
            Seq::Top(d) => u64::MAX - u64::from(d),
            Seq::Raw(r) => r,
        }
    }
}

/// Version-vector-like entries.
type Entries = Vec<(Who, Seq)>;

fn vv_of(entries: &Entries) -> VersionVector {
    entries.iter().map(|(w, s)| (w.id(), s.get())).collect()
}

/// A message, built to meet the replica's state: responses answer requests it really sent.
#[derive(Arbitrary, Debug, Clone)]
enum Msg {
    OwnedPush(Vec<Rec>),
    StateRequest {
        owner: Who,
        since: Seq,
        limit: u32,
        window: u8,
    },
    /// Moves the window of this peer's state request numbered `limit` (its request id).
    PagesReceived {
        limit: u32,
        pages: u32,
    },
    /// Answers the `pick`-th state request sent to this peer.
    StateResponse {
        pick: u8,
        bad_since: bool,
        through: Seq,
        records: Vec<Rec>,
        has_more: bool,
    },
    SharedPush(Vec<Chg>),
    SharedChangeRequest {
        since: Entries,
        limit: u32,
        window: u8,
    },
    /// Answers the `pick`-th log request sent to this peer: the next page of its stream
    /// (from where the previous answer ended), or page `page` if given.
    SharedChangeResponse {
        pick: u8,
        page: Option<u8>,
        entries: Vec<Chg>,
        has_more: bool,
        truncated: bool,
    },
    Ack {
        acker: Option<Who>,
        vv: Entries,
    },
    Heartbeat {
        heads: Entries,
        vv: Entries,
    },
    SnapshotRequest {
        after: Option<(ModelSel, Key)>,
        limit: u32,
        window: u8,
    },
    /// Answers the `pick`-th snapshot request sent to this peer (next page, or page `page`).
    SnapshotResponse {
        pick: u8,
        page: Option<u8>,
        vv: Entries,
        records: Vec<Regs>,
        has_more: bool,
    },
    Error {
        pick: Option<u8>,
        code: ErrorCode,
        message: String,
    },
    /// A digest of a (possibly removed) member's device-owned records.
    OwnedDigest {
        owner: Who,
        through: Seq,
        digest: u64,
    },
    /// Anything at all.
    Raw(SyncMessage),
    /// Bytes through the codec (delivered only if they decode).
    Bytes(Vec<u8>),
}

/// A local command, mostly on registered models.
#[derive(Arbitrary, Debug, Clone)]
enum Cmd {
    Put {
        model: ModelSel,
        key: Key,
        data: Vec<u8>,
    },
    DeleteOwned {
        model: ModelSel,
        key: Key,
    },
    Shared {
        model: ModelSel,
        key: Key,
        kind: ChangeKind,
        fields: Vec<(u8, Value)>,
    },
    AddMember(Who),
    RemoveMember(Who),
    RequestState {
        peer: Who,
        owner: Who,
        since: Option<Seq>,
    },
    RequestShared {
        peer: Who,
        since: Option<Entries>,
    },
    Raw(Command),
}

/// One step of an engine run.
#[derive(Arbitrary, Debug, Clone)]
enum Step {
    /// Monotonic and wall time move forward together.
    Advance(u16),
    /// The wall clock steps (possibly backwards) by up to ~9 hours.
    WallClock(i16),
    /// `Input::Tick` (due or not).
    Tick,
    /// Ticks at `poll_timeout()`.
    Wake,
    PeerUp(Who),
    PeerDown(Who),
    Message(Who, Msg),
    Command(Cmd),
    /// Delivers the `n`-th pending storage completion (reordering).
    Complete(u8),
    /// Delivers every pending completion, newest first.
    CompleteAllReversed,
    /// A completion the store never produced (unknown, stale or mismatched id).
    FakeCompletion(StorageDone),
    /// Restarts the replica from its (durable) store.
    Restart,
}

/// Names a step in failure messages (formatted only on failure: fuzzing stays fast).
#[derive(Clone, Copy)]
struct Label(usize);

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {} (HYBRIDSYNC_FUZZ_TRACE=1 prints every step)",
            self.0
        )
    }
}

/// The fuzzed configuration knobs.
#[derive(Arbitrary, Debug)]
struct Knobs {
    page_records: u8,
    max_page_records: u8,
    page_bytes: u16,
    max_pending_reads: u8,
    evict: Option<u8>,
    /// `Config::max_origins` (1 to 32), so a run of a few kilobytes can reach the cap.
    max_origins: Option<u8>,
}

/// The replica under test, its store and everything the checks remember.
struct Harness {
    config: Config,
    replica: Replica,
    store: MemStore,
    now: Now,
    next_cmd: u64,
    /// Completions produced by the store and not yet fed back.
    pending: Vec<StorageDone>,
    /// Requests the replica sent, per peer (responses answer them).
    requests: BTreeMap<DeviceId, Vec<SyncMessage>>,
    /// Every device id the run has mentioned (watermarks are checked for these).
    seen: BTreeSet<DeviceId>,
    /// Owners the application asked to fetch (`Command::RequestState`): it may ask for any.
    asked: BTreeSet<DeviceId>,
    /// Per shared request answered: the pages sent and where the stream stands (log: the
    /// vector after the last page; snapshot: the last record's key).
    streams: BTreeMap<u64, (u32, VersionVector, Option<hybridsync_core::SharedKey>)>,
    /// Values before the step, for the monotonicity checks.
    hlc: Hlc,
    watermarks: BTreeMap<DeviceId, u64>,
    vv: VersionVector,
    horizon: VersionVector,
    /// The last stamp and sequence numbers the replica issued for its own writes.
    issued: Hlc,
    /// The highest stamp in any shared register or log entry written to storage.
    stored_shared: Hlc,
    own_owned_seq: u64,
    own_shared_seq: u64,
    /// Bound on outputs per step (linear in the input size).
    output_budget: usize,
    input_len: usize,
    steps: usize,
    /// Print every step (`HYBRIDSYNC_FUZZ_TRACE=1`, for replaying a finding).
    trace: bool,
}

/// `engine_inputs`: one [`Replica`] (members: itself, A and B; a stranger is not a member)
/// with a [`MemStore`] that executes its storage commands at once and returns read completions
/// when the fuzzer says so, in any order. The fuzzer picks a few configuration knobs and then a
/// sequence of steps: time moving (also the wall clock backwards), ticks, peers coming and
/// going, messages from members and non-members (structured so that responses answer real
/// requests, plus raw messages and raw bytes), local commands, real, reordered and fake
/// storage completions, and restarts from the store.
///
/// Checked after every step:
/// - `handle` returns (never panics) and emits a bounded number of outputs;
/// - the HLC, every watermark, the version vector and the pruned horizon never decrease, and
///   the horizon never exceeds the version vector;
/// - the durable store agrees with the engine (version vector, horizon, watermarks) and its
///   HLC high-water mark covers every stamp the replica issued and every shared stamp it
///   stored, so a restart resumes above both;
/// - `pending_reads() <= connected peers × max_pending_reads_per_peer`; connected peers are
///   members and never the replica itself;
/// - no `Send` to itself or to a non-member, and nothing sent to a peer after disconnecting
///   it in the same step;
/// - no foreign version of the replica's own device-owned records is ever stored;
/// - its own stamps strictly increase, its own sequence numbers never repeat, and every
///   command completes or fails exactly once;
/// - the engine's memory (its `Debug` rendering) stays linear in the input size.
pub fn engine_inputs(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(knobs) = Knobs::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness::new(&knobs, data.len());
    while !u.is_empty() {
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        h.step(step);
    }
    // Late completions after everything else.
    h.step(Step::CompleteAllReversed);
    h.step(Step::Wake);
    h.check_memory(data.len());
}

impl Harness {
    fn new(knobs: &Knobs, input_len: usize) -> Harness {
        let me = Who::Me.id();
        let mut config = Config::new(me, ModelRegistry::spacedrive());
        config.page_records = u32::from(knobs.page_records % 9);
        config.max_page_records = u32::from(knobs.max_page_records % 17);
        config.page_bytes = usize::from(knobs.page_bytes % 8192);
        config.max_pending_reads_per_peer = usize::from(knobs.max_pending_reads % 5);
        config.eviction_after = knobs.evict.map(|s| Duration::from_secs(u64::from(s)));
        if let Some(m) = knobs.max_origins {
            config.max_origins = 1 + usize::from(m % 32);
        }
        let now = Now::new(Instant::ZERO, T0);
        let restored = Restored::bootstrap([Who::Me.id(), Who::A.id(), Who::B.id()]);
        let replica = Replica::new(config.clone(), restored, now);
        let mut h = Harness {
            config,
            replica,
            store: MemStore::new(),
            now,
            next_cmd: 0,
            pending: Vec::new(),
            requests: BTreeMap::new(),
            seen: (0..8).map(device).collect(),
            asked: BTreeSet::new(),
            streams: BTreeMap::new(),
            hlc: Hlc::ZERO,
            watermarks: BTreeMap::new(),
            vv: VersionVector::new(),
            horizon: VersionVector::new(),
            issued: Hlc::ZERO,
            stored_shared: Hlc::ZERO,
            own_owned_seq: 0,
            own_shared_seq: 0,
            output_budget: 256 + 64 * input_len,
            input_len,
            steps: 0,
            trace: std::env::var_os("HYBRIDSYNC_FUZZ_TRACE").is_some(),
        };
        h.drain(false);
        h.check(Label(0));
        h
    }

    fn me(&self) -> DeviceId {
        self.config.device
    }

    fn step(&mut self, step: Step) {
        self.steps += 1;
        let label = Label(self.steps);
        if self.trace {
            eprintln!("{label}: {step:?}");
        }
        let mut command = None;
        match step {
            Step::Advance(ms) => {
                let d = Duration::from_millis(u64::from(ms));
                self.now.mono = self.now.mono + d;
                self.now.wall_ms += u64::from(ms);
            }
            Step::WallClock(s) => {
                self.now.wall_ms = self.now.wall_ms.saturating_add_signed(i64::from(s) * 1000);
            }
            Step::Tick => self.input(Input::Tick),
            Step::Wake => {
                if let Some(t) = self.replica.poll_timeout() {
                    if t > self.now.mono {
                        let d = t.as_micros() - self.now.mono.as_micros();
                        self.now.mono = t;
                        self.now.wall_ms += d / 1000;
                    }
                }
                self.input(Input::Tick);
            }
            Step::PeerUp(w) => self.input(Input::PeerUp { peer: w.id() }),
            Step::PeerDown(w) => self.input(Input::PeerDown { peer: w.id() }),
            Step::Message(from, msg) => {
                let from = from.id();
                if let Some(msg) = self.build(from, msg) {
                    self.note_devices(&msg);
                    self.input(Input::Message { from, msg });
                }
            }
            Step::Command(cmd) => {
                self.next_cmd += 1;
                let id = CommandId(self.next_cmd);
                let cmd = self.build_command(cmd);
                if let Command::RequestState { owner, .. } = &cmd {
                    self.asked.insert(*owner);
                }
                let is_request = matches!(
                    cmd,
                    Command::RequestState { .. } | Command::RequestSharedChanges { .. }
                );
                command = Some((id, is_request));
                self.replica.handle(self.now, Input::Command { id, cmd });
            }
            Step::Complete(n) => {
                if !self.pending.is_empty() {
                    let done = self.pending.remove(usize::from(n) % self.pending.len());
                    self.input(Input::Storage(done));
                }
            }
            Step::CompleteAllReversed => {
                while let Some(done) = self.pending.pop() {
                    self.input(Input::Storage(done));
                    let outputs = self.drain(false);
                    self.check_outputs(&outputs, None, label);
                    self.check(label);
                }
            }
            Step::FakeCompletion(done) => self.input(Input::Storage(done)),
            Step::Restart => {
                self.store.crash(); // everything was synced: nothing is lost
                let restored = self.store.restored();
                self.replica = Replica::new(self.config.clone(), restored, self.now);
                self.pending.clear();
                self.requests.clear();
                // The clock resumes from the durable high-water mark: it covers every stamp
                // issued and every shared stamp stored (checked after every step), so the next
                // local write beats everything this replica has shown. Stamps only observed on
                // device-owned records (ordered by seq, not by stamp) need not survive.
                assert!(
                    self.replica.hlc() >= self.issued.max(self.stored_shared),
                    "{label}: restarted HLC {:?} below an issued stamp {:?} or a stored one {:?}",
                    self.replica.hlc(),
                    self.issued,
                    self.stored_shared
                );
                self.hlc = self.replica.hlc();
            }
        }
        let outputs = self.drain(command.is_some());
        self.check_outputs(&outputs, command, label);
        self.check(label);
    }

    fn input(&mut self, input: Input) {
        self.replica.handle(self.now, input);
    }

    /// Drains the outputs: storage runs at once (reads complete later), sends are recorded.
    fn drain(&mut self, local_command: bool) -> Vec<Output> {
        let me = self.me();
        let mut outputs = Vec::new();
        while let Some(out) = self.replica.poll_output() {
            match &out {
                Output::Storage(cmd) => {
                    self.check_storage(cmd, local_command);
                    if let Some(done) = self.store.execute(cmd.clone()) {
                        self.pending.push(done);
                    }
                }
                Output::Send { to, msg } => {
                    self.store.sync();
                    if matches!(
                        msg,
                        SyncMessage::StateRequest(hybridsync_core::StateRequest { .. })
                            | SyncMessage::SharedChangeRequest(
                                hybridsync_core::SharedChangeRequest { .. }
                            )
                            | SyncMessage::SharedSnapshotRequest(
                                hybridsync_core::SharedSnapshotRequest { .. }
                            )
                    ) {
                        let list = self.requests.entry(*to).or_default();
                        list.push(msg.clone());
                        if list.len() > 8 {
                            list.remove(0);
                        }
                    }
                }
                Output::Disconnect { .. } | Output::Event(_) => {}
            }
            outputs.push(out);
            assert!(
                outputs.len() <= self.output_budget,
                "more than {} outputs in one step (me = {me})",
                self.output_budget
            );
        }
        self.store.sync();
        outputs
    }

    /// Checks one storage command as it is emitted.
    fn check_storage(&mut self, cmd: &StorageCommand, local_command: bool) {
        let me = self.me();
        match cmd {
            StorageCommand::PutOwned(records) => {
                for r in records.iter().filter(|r| r.owner == me) {
                    assert!(
                        local_command,
                        "a foreign version of an own record was stored: {r:?}"
                    );
                    assert!(r.seq > self.own_owned_seq, "own seq reused: {r:?}");
                    assert!(r.hlc > self.issued, "own stamp not increasing: {r:?}");
                    self.own_owned_seq = r.seq;
                    self.issued = r.hlc;
                }
            }
            StorageCommand::MergeShared(records) => {
                for r in records {
                    self.stored_shared = self.stored_shared.max(r.max_hlc());
                }
            }
            StorageCommand::AppendLog(entries) => {
                for e in entries {
                    self.stored_shared = self.stored_shared.max(e.hlc);
                }
                for e in entries.iter().filter(|e| e.origin == me && local_command) {
                    assert!(e.seq > self.own_shared_seq, "own shared seq reused: {e:?}");
                    assert!(e.hlc > self.issued, "own stamp not increasing: {e:?}");
                    self.own_shared_seq = e.seq;
                    self.issued = e.hlc;
                }
            }
            _ => {}
        }
    }

    /// Checks the outputs of one step.
    fn check_outputs(&self, outputs: &[Output], command: Option<(CommandId, bool)>, label: Label) {
        let me = self.me();
        let mut disconnected = BTreeSet::new();
        for out in outputs {
            match out {
                Output::Send { to, msg } => {
                    assert_ne!(*to, me, "{label}: sent {} to itself", msg.kind());
                    assert!(
                        self.replica.is_member(*to),
                        "{label}: sent {} to non-member {to}",
                        msg.kind()
                    );
                    assert!(
                        !disconnected.contains(to),
                        "{label}: sent {} to {to} after disconnecting it",
                        msg.kind()
                    );
                }
                Output::Disconnect { peer, .. } => {
                    disconnected.insert(*peer);
                }
                _ => {}
            }
        }
        if let Some((id, is_request)) = command {
            let completions = outputs
                .iter()
                .filter(|o| {
                    matches!(o, Output::Event(Event::CommandDone(c)) if *c == id)
                        || matches!(o, Output::Event(Event::CommandFailed { id: c, .. }) if *c == id)
                })
                .count();
            if is_request {
                assert!(completions <= 1, "{label}: request completed twice");
            } else {
                assert_eq!(
                    completions, 1,
                    "{label}: write did not complete exactly once"
                );
            }
        }
    }

    /// The invariants that hold between steps.
    fn check(&mut self, label: Label) {
        let r = &self.replica;
        let hlc = r.hlc();
        assert!(
            hlc >= self.hlc,
            "{label}: HLC went back from {:?} to {hlc:?}",
            self.hlc
        );
        self.hlc = hlc;
        let vv = r.version_vector().clone();
        let horizon = r.horizon().clone();
        assert!(
            !vv.is_behind(&self.vv),
            "{label}: version vector went back from {:?} to {vv:?}",
            self.vv
        );
        assert!(
            !horizon.is_behind(&self.horizon),
            "{label}: horizon went back from {:?} to {horizon:?}",
            self.horizon
        );
        assert!(
            !vv.is_behind(&horizon),
            "{label}: horizon {horizon:?} beyond the version vector {vv:?}"
        );
        for d in &self.seen {
            let w = r.watermark(*d);
            let before = self.watermarks.get(d).copied().unwrap_or(0);
            assert!(
                w >= before,
                "{label}: watermark of {d} went back from {before} to {w}"
            );
            if w > 0 {
                self.watermarks.insert(*d, w);
            }
        }
        // The durable state agrees with the engine (the engine restarts from it).
        let state = self.store.state();
        assert_eq!(&state.vv, r.version_vector(), "{label}: stored vv differs");
        assert_eq!(
            &state.horizon,
            r.horizon(),
            "{label}: stored horizon differs"
        );
        for (owner, seq) in &state.watermarks {
            assert_eq!(
                r.watermark(*owner),
                *seq,
                "{label}: stored watermark of {owner} differs"
            );
        }
        assert!(
            state.hlc >= self.issued,
            "{label}: stored HLC {:?} below an issued stamp {:?}",
            state.hlc,
            self.issued
        );
        // A restart must not issue stamps below what a record already shows (a local edit
        // after the restart would lose to an older remote one).
        assert!(
            state.hlc >= self.stored_shared,
            "{label}: stored HLC {:?} below a stored shared stamp {:?}",
            state.hlc,
            self.stored_shared
        );
        // Whatever members name (origins, owners, heads, acks, snapshot claims), what the
        // engine tracks stays bounded: at most `max_origins` origins, and a watermark only for
        // a device of the library (a member record, current or removed), an origin it tracks,
        // itself, or an owner the application asked for.
        assert!(
            vv.len() <= self.config.max_origins,
            "{label}: {} origins tracked, cap {}",
            vv.len(),
            self.config.max_origins
        );
        let library: BTreeSet<DeviceId> = state
            .shared
            .values()
            .filter(|rec| rec.model == MEMBER_MODEL)
            .map(|rec| DeviceId(rec.uuid))
            .collect();
        for (owner, _) in r.watermarks() {
            assert!(
                owner == self.me()
                    || library.contains(&owner)
                    || vv.get(owner) > 0
                    || self.asked.contains(&owner),
                "{label}: a watermark of {owner}, which is no device of the library"
            );
        }
        let peers: Vec<DeviceId> = r.peers().collect();
        assert!(!peers.contains(&self.me()), "{label}: connected to itself");
        assert!(
            peers.iter().all(|p| r.is_member(*p)),
            "{label}: a non-member is connected: {peers:?}"
        );
        assert!(
            r.pending_reads() <= peers.len() * self.config.max_pending_reads_per_peer,
            "{label}: {} pending reads for {} peers",
            r.pending_reads(),
            peers.len()
        );
        for d in &self.seen {
            let w = r.watermark(*d);
            if w > 0 {
                assert_eq!(
                    state.watermarks.get(d),
                    Some(&w),
                    "{label}: watermark of {d} not stored"
                );
            }
        }
        if self.steps.is_multiple_of(64) {
            self.check_memory(self.input_len);
        }
    }

    /// The engine's state stays linear in the input.
    fn check_memory(&self, input_len: usize) {
        let size = format!("{:?}", self.replica).len();
        assert!(
            size <= 64 * 1024 + 256 * input_len,
            "engine state grew to {size} bytes of Debug for {input_len} input bytes"
        );
    }

    fn note_devices(&mut self, msg: &SyncMessage) {
        if self.seen.len() >= 64 {
            return; // keep the per-step check cheap
        }
        match msg {
            SyncMessage::StateRequest(hybridsync_core::StateRequest { owner, .. })
            | SyncMessage::StateResponse(hybridsync_core::StateResponse { owner, .. }) => {
                self.seen.insert(*owner);
            }
            SyncMessage::Heartbeat(hybridsync_core::Summary { heads, .. }) => {
                self.seen.extend(heads.keys().copied())
            }
            _ => {}
        }
    }

    fn record(&self, from: DeviceId, r: &Rec) -> OwnedRecord {
        let owner = r.owner.map_or(from, Who::id);
        OwnedRecord {
            owner,
            seq: r.seq.get(),
            hlc: Hlc::new(r.when.at(self.now.wall_ms), u32::from(r.counter), owner),
            model: r.model.name(),
            uuid: r.key.uuid(),
            data: r.data.clone(),
        }
    }

    fn change(&self, from: DeviceId, c: &Chg) -> hybridsync_core::SharedChange {
        let origin = c.origin.map_or(from, Who::id);
        let device = c.spoof_device.map_or(origin, Who::id);
        hybridsync_core::SharedChange {
            origin,
            seq: c.seq.get(),
            hlc: Hlc::new(c.when.at(self.now.wall_ms), u32::from(c.counter), device),
            model: c.model.name(),
            record: c.key.uuid(),
            kind: c.kind,
            fields: fields(&c.fields),
        }
    }

    fn registers(&self, r: &Regs) -> hybridsync_core::SharedRecord {
        let wall = self.now.wall_ms;
        let stamp = |w: When, d: Who| Hlc::new(w.at(wall), 0, d.id());
        let mut rec = hybridsync_core::SharedRecord::empty(&r.model.name(), r.key.uuid());
        rec.exists = r.exists.map(|(w, d, e)| Register::new(stamp(w, d), e));
        rec.last_insert = r.insert.map(|(w, d)| stamp(w, d));
        for (k, w, d, v) in &r.fields {
            rec.fields
                .insert(field_name(*k), Register::new(stamp(*w, *d), v.clone()));
        }
        rec
    }

    /// The `pick`-th request of a kind sent to `from`.
    fn request(
        &self,
        from: DeviceId,
        pick: u8,
        f: impl Fn(&SyncMessage) -> bool,
    ) -> Option<&SyncMessage> {
        let list: Vec<&SyncMessage> = self.requests.get(&from)?.iter().filter(|m| f(m)).collect();
        if list.is_empty() {
            return None;
        }
        // Mostly the latest one (the one the replica waits for).
        let i = list.len() - 1 - (usize::from(pick) % list.len());
        list.get(i).copied()
    }

    fn build(&mut self, from: DeviceId, msg: Msg) -> Option<SyncMessage> {
        Some(match msg {
            Msg::OwnedPush(recs) => {
                let mut rs: Vec<OwnedRecord> = recs.iter().map(|r| self.record(from, r)).collect();
                // A push names no owner on the wire (the sender is the owner): `Rec::owner`
                // only shapes the stamp, which the wire form drops too.
                if rs.len() == 1 {
                    SyncMessage::StateChange(rs.pop()?.into())
                } else {
                    SyncMessage::StateBatch(rs.into_iter().map(Into::into).collect())
                }
            }
            Msg::StateRequest {
                owner,
                since,
                limit,
                window,
            } => SyncMessage::StateRequest(hybridsync_core::StateRequest {
                request_id: u64::from(limit),
                owner: owner.id(),
                since: since.get(),
                limit,
                window: u32::from(window),
            }),
            Msg::PagesReceived { limit, pages } => {
                SyncMessage::PagesReceived(hybridsync_core::PagesReceived {
                    request_id: u64::from(limit),
                    pages,
                })
            }
            Msg::StateResponse {
                pick,
                bad_since,
                through,
                records,
                has_more,
            } => {
                let req = self.request(from, pick, |m| {
                    matches!(
                        m,
                        SyncMessage::StateRequest(hybridsync_core::StateRequest { .. })
                    )
                });
                let (request_id, owner, since) = match req {
                    Some(SyncMessage::StateRequest(hybridsync_core::StateRequest {
                        request_id,
                        owner,
                        since,
                        ..
                    })) => (*request_id, *owner, *since),
                    _ => (u64::from(pick), from, 0),
                };
                let since = if bad_since {
                    since.wrapping_add(1)
                } else {
                    since
                };
                let mut records: Vec<OwnedRecord> = records
                    .iter()
                    .map(|r| {
                        let mut rec = self.record(owner, r);
                        if r.owner.is_none() {
                            rec.owner = owner;
                            rec.hlc.device = owner;
                        }
                        rec.seq = since.saturating_add(r.seq.get());
                        rec
                    })
                    .collect();
                records.sort_by_key(|r| r.seq);
                records.dedup_by_key(|r| r.seq);
                let last = records.last().map_or(since, |r| r.seq);
                SyncMessage::StateResponse(hybridsync_core::StateResponse {
                    request_id,
                    owner,
                    since,
                    through: last.saturating_add(through.get()),
                    records: records.into_iter().map(Into::into).collect(),
                    has_more,
                })
            }
            Msg::SharedPush(chgs) => {
                let mut cs: Vec<_> = chgs.iter().map(|c| self.change(from, c)).collect();
                if cs.len() == 1 {
                    SyncMessage::SharedChange(cs.pop()?)
                } else {
                    SyncMessage::SharedChangeBatch(cs)
                }
            }
            Msg::SharedChangeRequest {
                since,
                limit,
                window,
            } => SyncMessage::SharedChangeRequest(hybridsync_core::SharedChangeRequest {
                request_id: u64::from(limit),
                since: vv_of(&since),
                limit,
                window: u32::from(window),
            }),
            Msg::SharedChangeResponse {
                pick,
                page,
                entries,
                has_more,
                truncated,
            } => {
                let req = self.request(from, pick, |m| {
                    matches!(
                        m,
                        SyncMessage::SharedChangeRequest(
                            hybridsync_core::SharedChangeRequest { .. }
                        )
                    )
                });
                let (request_id, since) = match req {
                    Some(SyncMessage::SharedChangeRequest(
                        hybridsync_core::SharedChangeRequest {
                            request_id, since, ..
                        },
                    )) => (*request_id, since.clone()),
                    _ => (u64::from(pick), VersionVector::new()),
                };
                let (sent, since) = match self.streams.get(&request_id) {
                    Some((n, cursor, _)) => (*n, cursor.clone()),
                    None => (0, since),
                };
                // Entries numbered contiguously per origin from where the stream stands
                // (unless the fuzzer's seq says to skip).
                let mut next = since;
                let mut es: Vec<_> = entries.iter().map(|c| self.change(from, c)).collect();
                es.sort_by_key(|e| e.origin);
                for e in &mut es {
                    let skip = u64::from(e.seq % 8 == 7);
                    e.seq = next.get(e.origin).saturating_add(1 + skip);
                    next.set(e.origin, e.seq);
                }
                self.streams
                    .insert(request_id, (sent + 1, next.clone(), None));
                SyncMessage::SharedChangeResponse(hybridsync_core::SharedChangeResponse {
                    request_id,
                    page: page.map_or(sent, u32::from),
                    entries: es,
                    has_more,
                    truncated,
                })
            }
            Msg::Ack { acker, vv } => SyncMessage::AckSharedChanges(hybridsync_core::Ack {
                acker: acker.map_or(from, Who::id),
                vv: vv_of(&vv),
            }),
            Msg::Heartbeat { heads, vv } => SyncMessage::Heartbeat(hybridsync_core::Summary {
                heads: heads.iter().map(|(w, s)| (w.id(), s.get())).collect(),
                vv: vv_of(&vv),
            }),
            Msg::SnapshotRequest {
                after,
                limit,
                window,
            } => SyncMessage::SharedSnapshotRequest(hybridsync_core::SharedSnapshotRequest {
                request_id: u64::from(limit),
                after: after.map(|(m, k)| (m.name(), k.uuid())),
                limit,
                window: u32::from(window),
            }),
            Msg::SnapshotResponse {
                pick,
                page,
                vv,
                records,
                has_more,
            } => {
                let req = self.request(from, pick, |m| {
                    matches!(
                        m,
                        SyncMessage::SharedSnapshotRequest(
                            hybridsync_core::SharedSnapshotRequest { .. }
                        )
                    )
                });
                let (request_id, after) = match req {
                    Some(SyncMessage::SharedSnapshotRequest(
                        hybridsync_core::SharedSnapshotRequest {
                            request_id, after, ..
                        },
                    )) => (*request_id, after.clone()),
                    _ => (u64::from(pick), None),
                };
                let (sent, after) = match self.streams.get(&request_id) {
                    Some((n, _, last)) => (*n, last.clone().or(after)),
                    None => (0, after),
                };
                let mut rs: Vec<_> = records.iter().map(|r| self.registers(r)).collect();
                rs.sort_by_key(|r| r.key());
                rs.dedup_by_key(|r| r.key());
                if let Some(a) = &after {
                    rs.retain(|r| r.key() > *a);
                }
                let last = rs.last().map(|r| r.key()).or(after);
                self.streams
                    .insert(request_id, (sent + 1, VersionVector::new(), last));
                SyncMessage::SharedSnapshotResponse(hybridsync_core::SharedSnapshotResponse {
                    request_id,
                    page: page.map_or(sent, u32::from),
                    vv: vv_of(&vv),
                    records: rs,
                    has_more,
                })
            }
            Msg::Error {
                pick,
                code,
                message,
            } => {
                let request_id = pick.map(|p| {
                    let any = self.request(from, p, |_| true);
                    match any {
                        Some(
                            SyncMessage::StateRequest(hybridsync_core::StateRequest {
                                request_id,
                                ..
                            })
                            | SyncMessage::SharedChangeRequest(
                                hybridsync_core::SharedChangeRequest { request_id, .. },
                            )
                            | SyncMessage::SharedSnapshotRequest(
                                hybridsync_core::SharedSnapshotRequest { request_id, .. },
                            ),
                        ) => *request_id,
                        _ => u64::from(p),
                    }
                });
                SyncMessage::Error(hybridsync_core::ErrorReply {
                    request_id,
                    code,
                    message,
                })
            }
            Msg::OwnedDigest {
                owner,
                through,
                digest,
            } => SyncMessage::OwnedDigest(hybridsync_core::OwnedDigest {
                owner: owner.id(),
                through: through.get(),
                digest,
            }),
            Msg::Raw(m) => m,
            Msg::Bytes(b) => decode(&b).ok()?,
        })
    }

    fn build_command(&self, cmd: Cmd) -> Command {
        match cmd {
            Cmd::Put { model, key, data } => Command::PutOwned {
                model: model.name(),
                uuid: key.uuid(),
                data,
            },
            Cmd::DeleteOwned { model, key } => Command::DeleteOwned {
                model: model.name(),
                uuid: key.uuid(),
            },
            Cmd::Shared {
                model,
                key,
                kind,
                fields: fs,
            } => {
                let (model, uuid, fields) = (model.name(), key.uuid(), fields(&fs));
                match kind {
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
                }
            }
            Cmd::AddMember(w) => Command::AddMember(w.id()),
            Cmd::RemoveMember(w) => Command::RemoveMember(w.id()),
            Cmd::RequestState { peer, owner, since } => Command::RequestState {
                peer: peer.id(),
                owner: owner.id(),
                since: since.map(Seq::get),
            },
            Cmd::RequestShared { peer, since } => Command::RequestSharedChanges {
                peer: peer.id(),
                since: since.as_ref().map(vv_of),
            },
            Cmd::Raw(c) => c,
        }
    }
}

fn field_name(k: u8) -> String {
    format!("f{}", k % 4)
}

fn fields(fs: &[(u8, Value)]) -> BTreeMap<String, Value> {
    fs.iter()
        .map(|(k, v)| (field_name(*k), v.clone()))
        .collect()
}

// ====================================================================== sim_scenario

/// One step of a hand-driven cluster scenario.
#[derive(Arbitrary, Debug)]
enum ClusterStep {
    Put {
        dev: u8,
        key: u8,
        data: Vec<u8>,
    },
    Delete {
        dev: u8,
        key: u8,
    },
    Tag {
        dev: u8,
        key: u8,
        kind: ChangeKind,
        fields: Vec<(u8, i8)>,
    },
    Connect(u8, u8),
    Disconnect(u8, u8),
    Deliver(u8),
    Drop(u8),
    Duplicate(u8),
    DeliverAll,
    Advance(u16),
    Crash(u8),
    Restart(u8),
    /// Wall-clock skew within ±2 minutes (two devices stay within the 5-minute drift bound).
    Skew {
        dev: u8,
        seconds: i8,
    },
}

/// `sim_scenario`: the first byte picks the mode.
///
/// - Seeded world: a [`SimConfig`] (2–4 peers, up to 40 operations, fault probabilities and
///   switches) and a seed derived from the bytes; [`run_seed`] must pass every check.
/// - Hand-driven [`Cluster`]: 2–4 devices and a sequence of writes, link changes, message
///   deliveries, drops, duplicates, crashes, restarts, time and bounded clock skew; then
///   every device restarts, all connect, the cluster settles, and
///   [`Cluster::check_converged`] must hold for every device.
pub fn sim_scenario(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = match u.arbitrary::<u8>() {
        Ok(m) if m % 4 == 0 => seeded_world(&mut u),
        Ok(_) => hand_driven_cluster(&mut u),
        Err(_) => Ok(()),
    };
}

fn seeded_world(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let peers = u.int_in_range(2usize..=4)?;
    let ops = u.int_in_range(0usize..=40)?;
    let p = |u: &mut Unstructured<'_>| -> arbitrary::Result<f64> {
        Ok(f64::from(u.int_in_range(0u8..=30)?) / 100.0)
    };
    let cfg = SimConfig {
        peers,
        ops,
        loss: p(u)?,
        dup: p(u)?,
        reorder: p(u)?,
        partitions: u.arbitrary()?,
        crashes: u.arbitrary()?,
        skew: u.arbitrary()?,
        future_clock: u.arbitrary()?,
        late_join: u.arbitrary()?,
        removal: u.arbitrary()?,
        storage_delay: u.arbitrary()?,
        topology: *u.choose(&crate::Topology::SHAPES)?,
        large_writes: u.arbitrary()?,
        rolling_upgrade: u.arbitrary()?,
        lost_device: u.arbitrary()?,
        power_loss: u.arbitrary()?,
        idle_ms: 0,
        trace: false,
    };
    let seed: u64 = u.arbitrary()?;
    let report = run_seed(&cfg, seed);
    assert!(
        report.passed(),
        "seed {seed} with {cfg:?} failed: {:#?}",
        report.failures
    );
    Ok(())
}

fn hand_driven_cluster(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let n = u.int_in_range(2usize..=4)?;
    let mut cl = Cluster::new(n);
    let ids: Vec<DeviceId> = (0..n).map(device).collect();
    let dev = |i: u8| ids[usize::from(i) % ids.len()];
    let mut steps = 0;
    while !u.is_empty() && steps < 256 {
        steps += 1;
        match ClusterStep::arbitrary(u)? {
            ClusterStep::Put { dev: d, key, data } => {
                cl.put(dev(d), u64::from(key % 8), &data);
            }
            ClusterStep::Delete { dev: d, key } => {
                cl.delete(dev(d), u64::from(key % 8));
            }
            ClusterStep::Tag {
                dev: d,
                key,
                kind,
                fields,
            } => {
                let names = ["name", "color", "rank"];
                let fs: Vec<(&str, i64)> = fields
                    .iter()
                    .take(3)
                    .map(|(k, v)| (names[usize::from(*k) % 3], i64::from(*v)))
                    .collect();
                cl.tag(dev(d), u64::from(key % 8), kind, &fs);
            }
            ClusterStep::Connect(a, b) => {
                if dev(a) != dev(b) && is_running(&cl, dev(a)) && is_running(&cl, dev(b)) {
                    cl.connect(dev(a), dev(b));
                }
            }
            ClusterStep::Disconnect(a, b) => cl.disconnect(dev(a), dev(b)),
            ClusterStep::Deliver(i) => {
                if !cl.in_flight.is_empty() {
                    cl.deliver(usize::from(i) % cl.in_flight.len());
                }
            }
            ClusterStep::Drop(i) => {
                if !cl.in_flight.is_empty() {
                    cl.drop_message(usize::from(i) % cl.in_flight.len());
                }
            }
            ClusterStep::Duplicate(i) => {
                if !cl.in_flight.is_empty() && cl.in_flight.len() < 512 {
                    cl.duplicate(usize::from(i) % cl.in_flight.len());
                }
            }
            ClusterStep::DeliverAll => {
                cl.deliver_all();
            }
            ClusterStep::Advance(ms) => cl.advance(u64::from(ms % 20_000)),
            ClusterStep::Crash(d) => cl.crash(dev(d)),
            ClusterStep::Restart(d) => cl.restart(dev(d)),
            ClusterStep::Skew { dev: d, seconds } => {
                cl.set_skew(dev(d), i64::from(seconds).clamp(-120, 120) * 1000);
            }
        }
    }
    // Heal: everyone up and connected, then let anti-entropy finish.
    for id in &ids {
        cl.restart(*id);
    }
    cl.connect_all();
    cl.settle();
    cl.settle();
    if let Err(e) = cl.check_converged(&ids) {
        panic!("cluster did not converge after healing: {e}");
    }
    Ok(())
}

fn is_running(cl: &Cluster, id: DeviceId) -> bool {
    cl.member(id).is_some_and(|m| m.replica.is_some())
}
