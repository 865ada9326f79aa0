//! Hostile input from outside the crate, through the public API only: frames as a transport
//! receives them, messages from members that lie and from devices that are not members.
//!
//! Each case must end in a typed error (a decode error, a `SyncMessage::Error` reply, an
//! `Event`) and/or a disconnect, and must leave the stored content unchanged (compared by
//! `MemState::content_digest`). The engine's own unit tests (`core/src/replica/tests.rs`)
//! cover the single-message cases from the inside; these cover batches, catch-up paths,
//! durable state and the wire.

use hybridsync_core::DEFAULT_MAX_FRAME;
use hybridsync_core::MAX_NESTING;
use hybridsync_core::{
    decode, encode, encode_frame, ChangeKind, CodecError, Config, DeviceId, ErrorCode, Event,
    FrameDecoder, FrameError, Hlc, Input, Instant, MemStore, ModelRegistry, Now, Output,
    OwnedRecord, Refusal, Register, Replica, Restored, SharedChange, SharedRecord, StorageCommand,
    StorageDone, SyncMessage, Value, VersionVector, MAX_MODEL_NAME,
};
use hybridsync_core::{MAX_CLAIMED_OWN_HEAD, MAX_MEMBERS, MAX_ORIGINS};
use std::collections::BTreeMap;
use uuid::Uuid;

const T0: u64 = 1_750_000_000_000;
const HOUR_MS: u64 = 3_600_000;

/// The replica under test: `dev(1)`, in a library of `dev(1)`, `dev(2)` and `dev(3)`.
const ME: DeviceId = DeviceId::from_u128(1);
const B: DeviceId = DeviceId::from_u128(2);
const C: DeviceId = DeviceId::from_u128(3);
/// Not a member.
const STRANGER: DeviceId = DeviceId::from_u128(66);

/// One replica and its store, driven by hand.
struct Node {
    replica: Replica,
    store: MemStore,
    now: Now,
}

impl Node {
    fn new() -> Node {
        Node::with(Config::new(ME, ModelRegistry::spacedrive()))
    }

    fn with(config: Config) -> Node {
        let now = Now::new(Instant::ZERO, T0);
        let replica = Replica::new(config, Restored::bootstrap([ME, B, C]), now);
        let mut n = Node {
            replica,
            store: MemStore::new(),
            now,
        };
        n.drain();
        n
    }

    /// Feeds one input; storage runs at once and read completions are fed back.
    fn feed(&mut self, input: Input) -> Vec<Output> {
        self.replica.handle(self.now, input);
        self.drain()
    }

    fn from(&mut self, peer: DeviceId, msg: SyncMessage) -> Vec<Output> {
        self.feed(Input::Message { from: peer, msg })
    }

    /// Feeds one input; storage runs, read completions are returned instead of fed back.
    fn feed_holding_reads(&mut self, input: Input) -> (Vec<Output>, Vec<StorageDone>) {
        self.replica.handle(self.now, input);
        let mut outs = Vec::new();
        let mut reads = Vec::new();
        while let Some(o) = self.replica.poll_output() {
            if let Output::Storage(cmd) = &o {
                reads.extend(self.store.execute(cmd.clone()));
            }
            outs.push(o);
        }
        self.store.sync();
        (outs, reads)
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut all = Vec::new();
        loop {
            let mut completions = Vec::new();
            while let Some(o) = self.replica.poll_output() {
                if let Output::Storage(cmd) = &o {
                    completions.extend(self.store.execute(cmd.clone()));
                }
                all.push(o);
            }
            self.store.sync();
            if completions.is_empty() {
                return all;
            }
            for c in completions {
                self.replica.handle(self.now, Input::Storage(c));
            }
        }
    }

    fn digest(&self) -> u64 {
        self.store.state().content_digest()
    }

    /// A connected member peer.
    fn connected(peer: DeviceId) -> Node {
        let mut n = Node::new();
        n.feed(Input::PeerUp { peer });
        n
    }
}

fn disconnects(outs: &[Output]) -> Vec<(DeviceId, Refusal)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Disconnect { peer, reason } => Some((*peer, *reason)),
            _ => None,
        })
        .collect()
}

fn sent_to(outs: &[Output], to: DeviceId) -> Vec<&SyncMessage> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { to: t, msg } if *t == to => Some(msg),
            _ => None,
        })
        .collect()
}

fn writes(outs: &[Output]) -> Vec<&StorageCommand> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Storage(cmd) if cmd.read_id().is_none() => Some(cmd),
            _ => None,
        })
        .collect()
}

fn events(outs: &[Output]) -> Vec<&Event> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn owned(owner: DeviceId, seq: u64, key: u128) -> OwnedRecord {
    OwnedRecord {
        owner,
        seq,
        hlc: Hlc::new(T0, 0, owner),
        model: "entry".into(),
        uuid: Uuid::from_u128(key),
        data: Some(b"payload".to_vec()),
    }
}

fn tag_change(origin: DeviceId, seq: u64, time_ms: u64) -> SharedChange {
    SharedChange {
        origin,
        seq,
        hlc: Hlc::new(time_ms, 0, origin),
        model: "tag".into(),
        record: Uuid::from_u128(500),
        kind: ChangeKind::Insert,
        fields: [("name".to_owned(), Value::from("x"))].into(),
    }
}

fn tag_registers(time_ms: u64, by: DeviceId) -> SharedRecord {
    let mut r = SharedRecord::empty("tag", Uuid::from_u128(700));
    let hlc = Hlc::new(time_ms, 0, by);
    r.exists = Some(Register::new(hlc, true));
    r.last_insert = Some(hlc);
    r.fields
        .insert("name".into(), Register::new(hlc, Value::from("snap")));
    r
}

/// One of every message kind (the contents do not matter to a refusal).
fn every_kind(from: DeviceId) -> Vec<SyncMessage> {
    let vv: VersionVector = [(from, 3)].into_iter().collect();
    vec![
        SyncMessage::StateChange(owned(from, 1, 1).into()),
        SyncMessage::StateBatch(vec![owned(from, 1, 1).into(), owned(from, 2, 2).into()]),
        SyncMessage::StateRequest(hybridsync_core::StateRequest {
            request_id: 1,
            owner: ME,
            since: 0,
            limit: 10,
            window: 1,
        }),
        SyncMessage::PagesReceived(hybridsync_core::PagesReceived {
            request_id: 1,
            pages: 1,
        }),
        SyncMessage::StateResponse(hybridsync_core::StateResponse {
            request_id: 1,
            owner: from,
            since: 0,
            through: 1,
            records: vec![owned(from, 1, 1).into()],
            has_more: false,
        }),
        SyncMessage::SharedChange(tag_change(from, 1, T0)),
        SyncMessage::SharedChangeBatch(vec![tag_change(from, 1, T0), tag_change(from, 2, T0)]),
        SyncMessage::SharedChangeRequest(hybridsync_core::SharedChangeRequest {
            request_id: 1,
            since: VersionVector::new(),
            limit: 10,
            window: 1,
        }),
        SyncMessage::SharedChangeResponse(hybridsync_core::SharedChangeResponse {
            request_id: 1,
            page: 0,
            entries: vec![tag_change(from, 1, T0)],
            has_more: false,
            truncated: false,
        }),
        SyncMessage::AckSharedChanges(hybridsync_core::Ack {
            acker: from,
            vv: vv.clone(),
        }),
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads: [(from, 9)].into(),
            vv: vv.clone(),
        }),
        SyncMessage::HeartbeatDelta(hybridsync_core::Summary {
            heads: [(from, 10)].into(),
            vv: vv.clone(),
        }),
        SyncMessage::SharedSnapshotRequest(hybridsync_core::SharedSnapshotRequest {
            request_id: 1,
            after: None,
            limit: 10,
            window: 1,
        }),
        SyncMessage::SharedSnapshotResponse(hybridsync_core::SharedSnapshotResponse {
            request_id: 1,
            page: 0,
            vv,
            records: vec![tag_registers(T0, from)],
            has_more: false,
        }),
        SyncMessage::Error(hybridsync_core::ErrorReply {
            request_id: Some(1),
            code: ErrorCode::Busy,
            message: "x".into(),
        }),
    ]
}

// ------------------------------------------------------------------ frames

/// What a transport does with received bytes: every decoded message goes to the engine; a
/// frame error closes the connection (`PeerDown`) and drops the stream.
fn receive(
    n: &mut Node,
    d: &mut FrameDecoder,
    from: DeviceId,
    bytes: &[u8],
) -> Result<usize, FrameError> {
    d.push(bytes);
    let mut delivered = 0;
    loop {
        match d.next_message() {
            Ok(Some(msg)) => {
                n.from(from, msg);
                delivered += 1;
            }
            Ok(None) => return Ok(delivered),
            Err(e) => {
                n.feed(Input::PeerDown { peer: from });
                return Err(e);
            }
        }
    }
}

#[test]
fn truncated_frame_delivers_nothing_until_complete_and_a_short_length_is_a_typed_error() {
    let mut n = Node::connected(B);
    let before = n.digest();
    let frame = encode_frame(&SyncMessage::StateChange(owned(B, 1, 1).into()));
    let mut d = FrameDecoder::default();
    for byte in &frame[..frame.len() - 1] {
        assert_eq!(
            receive(&mut n, &mut d, B, std::slice::from_ref(byte)).ok(),
            Some(0)
        );
    }
    assert_eq!(d.buffered(), frame.len() - 1);
    assert_eq!(n.digest(), before, "nothing applied from a partial frame");
    // Control: the last byte completes it.
    assert_eq!(
        receive(&mut n, &mut d, B, &frame[frame.len() - 1..]).ok(),
        Some(1)
    );
    assert_ne!(n.digest(), before);

    // A length prefix shorter than the message cuts it: a typed decode error, no message, the
    // connection closes and the rest of the stream is never read.
    let mut n = Node::connected(B);
    let mut short = frame.clone();
    let len = u32::try_from(frame.len() - 5).expect("small");
    short[..4].copy_from_slice(&len.to_be_bytes());
    let mut d = FrameDecoder::default();
    assert!(matches!(
        receive(&mut n, &mut d, B, &short),
        Err(FrameError::Codec(_))
    ));
    assert_eq!(d.buffered(), 0, "the stream is dropped");
    assert_eq!(n.digest(), before);
    assert_eq!(n.replica.peers().count(), 0);
    assert_eq!(receive(&mut n, &mut d, B, &frame).ok(), Some(0), "poisoned");
    assert_eq!(n.digest(), before);
}

#[test]
fn oversized_length_prefix_is_refused_before_its_body_arrives() {
    for (max, len) in [
        (DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME + 1),
        (DEFAULT_MAX_FRAME, u32::MAX as usize),
        (1024, 1025),
    ] {
        let mut n = Node::connected(B);
        let before = n.digest();
        let mut d = FrameDecoder::new(max);
        let prefix = u32::try_from(len).expect("fits").to_be_bytes();
        match receive(&mut n, &mut d, B, &prefix) {
            Err(FrameError::TooLarge { len: l, max: m }) => assert_eq!((l, m), (len, max)),
            other => panic!("{len} > {max} not refused: {other:?}"),
        }
        assert_eq!(d.buffered(), 0, "nothing kept for the announced body");
        // The decoder stays poisoned: a valid frame afterwards is not decoded.
        let valid = encode_frame(&SyncMessage::StateChange(owned(B, 1, 1).into()));
        assert_eq!(receive(&mut n, &mut d, B, &valid).ok(), Some(0));
        assert_eq!(d.buffered(), 0);
        assert_eq!(n.digest(), before);
    }
    // A frame of exactly the maximum is accepted (the body is then decoded as usual).
    let body = encode(&SyncMessage::StateChange(owned(B, 1, 1).into()));
    let mut d = FrameDecoder::new(body.len());
    d.push(&encode_frame(&SyncMessage::StateChange(
        owned(B, 1, 1).into(),
    )));
    assert!(matches!(d.next_message(), Ok(Some(_))));
}

#[test]
fn unknown_variants_anywhere_in_a_message_are_typed_decode_errors() {
    // Top-level variant index past the last message kind.
    assert!(matches!(decode(&[13]), Err(CodecError::Malformed(_))));
    assert!(matches!(
        decode(&[0xff, 0x01]),
        Err(CodecError::Malformed(_))
    ));
    // An unknown error code inside a valid `Error` message: `[12, None, code, ""]`.
    let ok = encode(&SyncMessage::Error(hybridsync_core::ErrorReply {
        request_id: None,
        code: ErrorCode::Busy,
        message: String::new(),
    }));
    assert_eq!(ok, [12, 0, 4, 0]);
    assert!(decode(&[12, 0, 7, 0]).is_err(), "ErrorCode has 7 variants");
    // An unknown `ChangeKind` and an unknown `Value` variant inside a shared change.
    let mut change = tag_change(B, 1, T0);
    change.fields = [("n".to_owned(), Value::Null)].into();
    change.kind = ChangeKind::Delete;
    let bytes = encode(&SyncMessage::SharedChange(change.clone()));
    // The fields come last: count 1, key "n" (length 1, b'n'), `Null` (tag 0).
    let null_at = bytes.len() - 1;
    // The kind is the one byte that differs from the same change as an update.
    change.kind = ChangeKind::Update;
    let update = encode(&SyncMessage::SharedChange(change));
    assert_eq!(update.len(), bytes.len());
    let kind_at = (0..bytes.len())
        .find(|&i| bytes[i] != update[i])
        .expect("the kinds differ");
    assert_eq!((bytes[kind_at], update[kind_at], bytes[null_at]), (2, 1, 0));
    let mut bad_kind = bytes.clone();
    bad_kind[kind_at] = 3;
    assert!(matches!(decode(&bad_kind), Err(CodecError::Malformed(_))));
    let mut bad_value = bytes.clone();
    bad_value[null_at] = 9;
    assert!(matches!(decode(&bad_value), Err(CodecError::Malformed(_))));
    // Trailing bytes after a whole message.
    let mut trailing = bytes;
    trailing.push(0);
    assert!(matches!(
        decode(&trailing),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn state_batch_naming_an_overlong_model_is_a_typed_decode_error() {
    // `StateBatch` (variant 1), one model name past the cap, then 10,000 minimal changes:
    // decoded, every change would hold its own copy of the name.
    let long = "m".repeat(MAX_MODEL_NAME + 1);
    // Each change an `Any` (variant 1) with a seq step of 0.
    let change = (
        1u8,
        0u64,
        0i64,
        0u128,
        0i64,
        [0u8; 8],
        serde_bytes::Bytes::new(b""),
    );
    let mut bytes = vec![1u8];
    bytes.extend(
        postcard::to_stdvec(&(vec![long.as_str()], vec![change; 10_000])).expect("encodes"),
    );
    assert!(matches!(decode(&bytes), Err(CodecError::Malformed(_))));
    // At the cap it decodes: the refusal is the cap, not the shape of the frame.
    let name = "m".repeat(MAX_MODEL_NAME);
    let mut ok = vec![1u8];
    ok.extend(postcard::to_stdvec(&(vec![name.as_str()], vec![change; 10_000])).expect("encodes"));
    let decoded = decode(&ok);
    assert!(
        matches!(&decoded, Ok(SyncMessage::StateBatch(cs)) if cs.len() == 10_000),
        "{:?}",
        decoded.err()
    );
}

#[test]
fn value_nested_past_the_limit_is_a_typed_decode_error_and_never_reaches_the_engine() {
    let mut deep = Value::Null;
    for _ in 0..=MAX_NESTING {
        deep = Value::List(vec![deep]);
    }
    assert_eq!(deep.nesting(), MAX_NESTING + 1);
    let mut change = tag_change(B, 1, T0);
    change.fields = [("deep".to_owned(), deep)].into();
    let mut d = FrameDecoder::default();
    d.push(&encode_frame(&SyncMessage::SharedChange(change)));
    assert!(matches!(
        d.next_message(),
        Err(FrameError::Codec(CodecError::Malformed(_)))
    ));
}

// ------------------------------------------------------------------ non-members

#[test]
fn every_message_kind_from_a_non_member_is_refused_with_a_disconnect_and_no_state_change() {
    for msg in every_kind(STRANGER) {
        let kind = msg.kind();
        let mut n = Node::new();
        let before = n.digest();
        let up = n.feed(Input::PeerUp { peer: STRANGER });
        assert_eq!(disconnects(&up), [(STRANGER, Refusal::NotMember)], "{kind}");
        let outs = n.from(STRANGER, msg);
        assert_eq!(
            disconnects(&outs),
            [(STRANGER, Refusal::NotMember)],
            "{kind}"
        );
        assert!(events(&outs).contains(&&Event::PeerMisbehaved {
            peer: STRANGER,
            reason: Refusal::NotMember
        }));
        assert!(
            writes(&outs).is_empty(),
            "{kind}: wrote {:?}",
            writes(&outs)
        );
        assert!(
            sent_to(&outs, STRANGER).is_empty(),
            "{kind}: answered a stranger"
        );
        assert_eq!(n.replica.peers().count(), 0);
        assert_eq!(n.digest(), before, "{kind}");
        assert_eq!(n.store.restored(), Node::new().store.restored(), "{kind}");
    }
}

// ------------------------------------------------------------------ ownership

#[test]
fn pushed_changes_are_stored_as_the_senders_own_records() {
    let mut n = Node::connected(B);
    // A push carries no owner: whatever ids it uses, its records are the sender's.
    let batch = vec![owned(B, 1, 1).into(), owned(C, 2, 2).into()];
    let outs = n.from(B, SyncMessage::StateBatch(batch));
    assert!(disconnects(&outs).is_empty());
    let stored: Vec<&OwnedRecord> = writes(&outs)
        .into_iter()
        .filter_map(|w| match w {
            StorageCommand::PutOwned(rs) => Some(rs),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|r| r.owner == B && r.hlc.device == B));
    assert_eq!(n.replica.watermark(B), 2);
    assert_eq!(n.replica.watermark(C), 0, "no other owner's stream moved");
}

#[test]
fn push_cannot_touch_the_receivers_own_records() {
    let mut n = Node::connected(B);
    // B pushes a change with the id of one of ME's records: it is B's record, not ME's.
    let outs = n.from(B, SyncMessage::StateChange(owned(ME, 1, 1).into()));
    assert!(disconnects(&outs).is_empty());
    assert_eq!(n.replica.watermark(ME), 0, "own counters untouched");
    let owners: Vec<DeviceId> = writes(&outs)
        .into_iter()
        .filter_map(|w| match w {
            StorageCommand::PutOwned(rs) => Some(rs),
            _ => None,
        })
        .flatten()
        .map(|r| r.owner)
        .collect();
    assert_eq!(owners, [B], "stored as B's record");
}

#[test]
fn malformed_catch_up_page_is_refused_without_state_change() {
    let mut n = Node::connected(B);
    // B announces records of C; the replica asks B for them.
    let outs = n.from(
        B,
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads: [(C, 10)].into(),
            vv: VersionVector::new(),
        }),
    );
    let request_id = sent_to(&outs, B)
        .into_iter()
        .find_map(|m| match m {
            SyncMessage::StateRequest(hybridsync_core::StateRequest {
                request_id, owner, ..
            }) if *owner == C => Some(*request_id),
            _ => None,
        })
        .expect("asked B for C's records");
    let before = n.digest();
    let bad_pages = [
        // A record beyond `through`.
        (3, vec![owned(C, 1, 1), owned(C, 5, 2)]),
        // Out of order.
        (5, vec![owned(C, 2, 1), owned(C, 1, 2)]),
        // A record at the request's own bound (`since` is exclusive).
        (5, vec![owned(C, 0, 1), owned(C, 2, 2)]),
    ];
    for (through, records) in bad_pages {
        let mut n2 = Node::connected(B);
        n2.from(
            B,
            SyncMessage::Heartbeat(hybridsync_core::Summary {
                heads: [(C, 10)].into(),
                vv: VersionVector::new(),
            }),
        );
        let outs = n2.from(
            B,
            SyncMessage::StateResponse(hybridsync_core::StateResponse {
                request_id,
                owner: C,
                since: 0,
                through,
                records: records.into_iter().map(Into::into).collect(),
                has_more: false,
            }),
        );
        assert_eq!(disconnects(&outs), [(B, Refusal::MalformedResponse)]);
        assert!(writes(&outs).is_empty());
        assert_eq!(n2.digest(), before);
        assert_eq!(n2.replica.watermark(C), 0);
        assert!(!n2.replica.is_fetching(), "the fetch was abandoned");
    }
    // Control: the well-formed page is applied.
    let outs = n.from(
        B,
        SyncMessage::StateResponse(hybridsync_core::StateResponse {
            request_id,
            owner: C,
            since: 0,
            through: 2,
            records: vec![owned(C, 1, 1).into(), owned(C, 2, 2).into()],
            has_more: false,
        }),
    );
    assert!(disconnects(&outs).is_empty());
    assert_eq!(n.replica.watermark(C), 2);
}

// ------------------------------------------------------------------ ack spoofing

#[test]
fn ack_for_another_member_is_refused_and_never_stored() {
    let mut n = Node::connected(B);
    n.feed(Input::PeerUp { peer: C });
    n.feed(Input::Command {
        id: hybridsync_core::CommandId(1),
        cmd: hybridsync_core::Command::InsertShared {
            model: "tag".into(),
            uuid: Uuid::from_u128(1),
            fields: BTreeMap::new(),
        },
    });
    let before = n.digest();
    let vv: VersionVector = [(ME, 1)].into_iter().collect();
    let outs = n.from(
        B,
        SyncMessage::AckSharedChanges(hybridsync_core::Ack { acker: C, vv }),
    );
    assert_eq!(disconnects(&outs), [(B, Refusal::AckerMismatch)]);
    assert!(writes(&outs).is_empty(), "no ack stored, nothing pruned");
    assert_eq!(n.digest(), before);
    assert!(!n.store.restored().acks.contains_key(&C));
    assert_eq!(n.replica.horizon().get(ME), 0, "the log stays pinned");
    assert_eq!(n.store.state().log.len(), 1);
}

#[test]
fn heartbeat_acks_only_for_its_authenticated_sender() {
    let mut n = Node::connected(B);
    n.feed(Input::Command {
        id: hybridsync_core::CommandId(1),
        cmd: hybridsync_core::Command::InsertShared {
            model: "tag".into(),
            uuid: Uuid::from_u128(1),
            fields: BTreeMap::new(),
        },
    });
    // B's summary covers the change: it counts as B's ack, and only B's.
    let vv: VersionVector = [(ME, 1)].into_iter().collect();
    n.from(
        B,
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads: BTreeMap::new(),
            vv: vv.clone(),
        }),
    );
    let acks = n.store.restored().acks;
    assert_eq!(acks.get(&B), Some(&vv));
    assert!(!acks.contains_key(&C));
    assert_eq!(
        n.replica.horizon().get(ME),
        0,
        "C never acked: still pinned"
    );
    assert_eq!(n.store.state().log.len(), 1);
}

// ------------------------------------------------------------------ far-future stamps

#[test]
fn far_future_owned_stamp_applies_by_seq_without_dragging_the_clock() {
    let mut n = Node::connected(B);
    let clock = n.replica.hlc();
    let mut r = owned(B, 1, 1);
    r.hlc = Hlc::new(T0 + 24 * HOUR_MS, 0, B);
    let outs = n.from(B, SyncMessage::StateChange(r.into()));
    assert!(disconnects(&outs).is_empty());
    assert_eq!(n.replica.watermark(B), 1, "ordered by seq: applied");
    assert_eq!(n.replica.hlc(), clock, "stamp not adopted");
    assert!(events(&outs)
        .iter()
        .any(|e| matches!(e, Event::ClockSkew { device, .. } if *device == B)));
    assert!(n.store.state().hlc.time_ms < T0 + HOUR_MS);
}

/// B announces `head` shared changes of its own; returns the id of the log request it gets.
fn log_requested(n: &mut Node, head: u64) -> u64 {
    let outs = n.from(
        B,
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads: BTreeMap::new(),
            vv: [(B, head)].into_iter().collect(),
        }),
    );
    sent_to(&outs, B)
        .into_iter()
        .find_map(|m| match m {
            SyncMessage::SharedChangeRequest(hybridsync_core::SharedChangeRequest {
                request_id,
                ..
            }) => Some(*request_id),
            _ => None,
        })
        .expect("log requested")
}

/// Drives a shared catch-up from B down to a snapshot request; returns its request id.
fn snapshot_requested(n: &mut Node) -> u64 {
    let log_request = log_requested(n, 5);
    let outs = n.from(
        B,
        SyncMessage::SharedChangeResponse(hybridsync_core::SharedChangeResponse {
            request_id: log_request,
            page: 0,
            entries: Vec::new(),
            has_more: false,
            truncated: true,
        }),
    );
    sent_to(&outs, B)
        .into_iter()
        .find_map(|m| match m {
            SyncMessage::SharedSnapshotRequest(hybridsync_core::SharedSnapshotRequest {
                request_id,
                ..
            }) => Some(*request_id),
            _ => None,
        })
        .expect("snapshot requested")
}

#[test]
fn far_future_snapshot_page_is_refused_without_state_change() {
    let mut n = Node::connected(B);
    let request_id = snapshot_requested(&mut n);
    let before = n.digest();
    let clock = n.replica.hlc();
    let outs = n.from(
        B,
        SyncMessage::SharedSnapshotResponse(hybridsync_core::SharedSnapshotResponse {
            request_id,
            page: 0,
            vv: [(B, 5)].into_iter().collect(),
            records: vec![tag_registers(T0 + HOUR_MS, B)],
            has_more: false,
        }),
    );
    assert!(events(&outs).contains(&&Event::ChangeRefused {
        from: B,
        origin: B,
        reason: Refusal::ClockDrift
    }));
    assert!(writes(&outs).is_empty());
    assert_eq!(n.digest(), before);
    assert_eq!(n.replica.hlc(), clock);
    assert_eq!(
        n.replica.version_vector().get(B),
        0,
        "snapshot claim not adopted"
    );
    assert!(!n.replica.is_fetching());

    // Control: the same page within the drift bound is applied.
    let mut n = Node::connected(B);
    let request_id = snapshot_requested(&mut n);
    n.from(
        B,
        SyncMessage::SharedSnapshotResponse(hybridsync_core::SharedSnapshotResponse {
            request_id,
            page: 0,
            vv: [(B, 5)].into_iter().collect(),
            records: vec![tag_registers(T0, B)],
            has_more: false,
        }),
    );
    assert_ne!(n.digest(), before);
    assert_eq!(n.replica.version_vector().get(B), 5);
}

#[test]
fn snapshot_claim_naming_more_origins_than_a_device_tracks_is_refused_without_state_change() {
    // A member's snapshot claims a version vector over more origins than `MAX_ORIGINS`: a
    // device that adopted it would track (and send in every summary and ack) all of them, and
    // the next snapshot could name as many again.
    let mut n = Node::connected(B);
    let request_id = snapshot_requested(&mut n);
    let before = n.digest();
    let claim: VersionVector = (0..=MAX_ORIGINS as u128)
        .map(|i| (DeviceId::from_u128(1 << 64 | i), 1))
        .collect();
    let outs = n.from(
        B,
        SyncMessage::SharedSnapshotResponse(hybridsync_core::SharedSnapshotResponse {
            request_id,
            page: 0,
            vv: claim,
            records: vec![tag_registers(T0, B)],
            has_more: false,
        }),
    );
    assert_eq!(disconnects(&outs), vec![(B, Refusal::TooManyOrigins)]);
    assert_eq!(n.digest(), before);
    assert!(n.replica.version_vector().len() <= MAX_ORIGINS);
    assert_eq!(n.replica.version_vector().len(), 0, "claim not adopted");
}

// ------------------------------------------------------------------ floods and limits

#[test]
fn log_and_snapshot_request_floods_from_two_peers_keep_pending_reads_bounded() {
    let mut config = Config::new(ME, ModelRegistry::spacedrive());
    config.max_pending_reads_per_peer = 3;
    let mut n = Node::with(config);
    n.feed(Input::Command {
        id: hybridsync_core::CommandId(1),
        cmd: hybridsync_core::Command::InsertShared {
            model: "tag".into(),
            uuid: Uuid::from_u128(1),
            fields: BTreeMap::new(),
        },
    });
    n.feed(Input::PeerUp { peer: B });
    n.feed(Input::PeerUp { peer: C });
    let before = n.digest();
    let mut held = Vec::new();
    let mut busy = 0;
    for i in 0..500u64 {
        for peer in [B, C] {
            let msg = if i % 2 == 0 {
                SyncMessage::SharedChangeRequest(hybridsync_core::SharedChangeRequest {
                    request_id: i,
                    since: VersionVector::new(),
                    limit: 10,
                    window: 1,
                })
            } else {
                SyncMessage::SharedSnapshotRequest(hybridsync_core::SharedSnapshotRequest {
                    request_id: i,
                    after: None,
                    limit: 10,
                    window: 1,
                })
            };
            let (outs, reads) = n.feed_holding_reads(Input::Message { from: peer, msg });
            held.extend(reads);
            busy += sent_to(&outs, peer)
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        SyncMessage::Error(hybridsync_core::ErrorReply {
                            code: ErrorCode::Busy,
                            ..
                        })
                    )
                })
                .count();
            assert!(n.replica.pending_reads() <= 2 * 3);
        }
    }
    assert_eq!(n.replica.pending_reads(), 6);
    assert_eq!(held.len(), 6);
    assert_eq!(
        busy,
        1000 - 6,
        "every refused request got a typed Busy reply"
    );
    assert_eq!(n.digest(), before, "serving reads changes nothing");
    // Completing the reads frees the slots.
    for done in held {
        n.feed(Input::Storage(done));
    }
    assert_eq!(n.replica.pending_reads(), 0);
}

#[test]
fn absurd_limits_in_log_and_snapshot_requests_are_capped() {
    let mut config = Config::new(ME, ModelRegistry::spacedrive());
    config.max_page_records = 4;
    let mut n = Node::with(config);
    for i in 0..10 {
        n.feed(Input::Command {
            id: hybridsync_core::CommandId(i),
            cmd: hybridsync_core::Command::InsertShared {
                model: "tag".into(),
                uuid: Uuid::from_u128(u128::from(i)),
                fields: BTreeMap::new(),
            },
        });
    }
    n.feed(Input::PeerUp { peer: B });
    for (asked, capped) in [(u32::MAX, 4), (0, 1)] {
        let (outs, _) = n.feed_holding_reads(Input::Message {
            from: B,
            msg: SyncMessage::SharedChangeRequest(hybridsync_core::SharedChangeRequest {
                request_id: 1,
                since: VersionVector::new(),
                limit: asked,
                window: 1,
            }),
        });
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Storage(StorageCommand::ReadLog { limit, .. }) if *limit == capped
        )));
        let (outs, _) = n.feed_holding_reads(Input::Message {
            from: B,
            msg: SyncMessage::SharedSnapshotRequest(hybridsync_core::SharedSnapshotRequest {
                request_id: 2,
                after: None,
                limit: asked,
                window: 1,
            }),
        });
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Storage(StorageCommand::ReadSharedSnapshot { limit, .. }) if *limit == capped
        )));
    }
    // And the page actually served is capped.
    let mut n2 = Node::with({
        let mut c = Config::new(ME, ModelRegistry::spacedrive());
        c.max_page_records = 4;
        c
    });
    for i in 0..10 {
        n2.feed(Input::Command {
            id: hybridsync_core::CommandId(i),
            cmd: hybridsync_core::Command::InsertShared {
                model: "tag".into(),
                uuid: Uuid::from_u128(u128::from(i)),
                fields: BTreeMap::new(),
            },
        });
    }
    n2.feed(Input::PeerUp { peer: B });
    let outs = n2.from(
        B,
        SyncMessage::SharedChangeRequest(hybridsync_core::SharedChangeRequest {
            request_id: 3,
            since: VersionVector::new(),
            limit: u32::MAX,
            window: 1,
        }),
    );
    let page = sent_to(&outs, B).into_iter().find_map(|m| match m {
        SyncMessage::SharedChangeResponse(hybridsync_core::SharedChangeResponse {
            entries,
            has_more,
            ..
        }) => Some((entries.len(), *has_more)),
        _ => None,
    });
    assert_eq!(page, Some((4, true)));
}

// ------------------------------------------------------------------ counters at the top

fn put(n: &mut Node, id: u64) -> Vec<Output> {
    n.feed(Input::Command {
        id: hybridsync_core::CommandId(id),
        cmd: hybridsync_core::Command::PutOwned {
            model: "entry".into(),
            uuid: Uuid::from_u128(u128::from(id)),
            data: vec![1],
        },
    })
}

fn insert_tag(n: &mut Node, id: u64, value: Value) -> Vec<Output> {
    n.feed(Input::Command {
        id: hybridsync_core::CommandId(id),
        cmd: hybridsync_core::Command::InsertShared {
            model: "tag".into(),
            uuid: Uuid::from_u128(u128::from(id)),
            fields: [("name".to_owned(), value)].into(),
        },
    })
}

fn failed(outs: &[Output], id: u64) -> Option<hybridsync_core::CommandError> {
    events(outs).into_iter().find_map(|e| match e {
        Event::CommandFailed { id: c, reason } if c.0 == id => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn own_head_claimed_at_the_top_of_its_range_is_refused_and_the_device_keeps_writing() {
    let mut n = Node::connected(B);
    // B claims this device's own head is u64::MAX (the lost-database path raises counters to
    // what peers report): believing it would leave no sequence number to write with.
    let outs = n.from(
        B,
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads: [(ME, u64::MAX)].into(),
            vv: VersionVector::new(),
        }),
    );
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Disconnect { peer, reason: Refusal::ClaimBeyondBound } if *peer == B
    )));
    assert_eq!(n.replica.watermark(ME), 0, "no raise");
    let outs = put(&mut n, 1);
    assert_eq!(failed(&outs, 1), None);
    assert_eq!(n.replica.watermark(ME), 1, "the write took the next seq");
}

#[test]
fn own_head_claimed_at_the_bound_is_raised_and_the_device_keeps_writing() {
    let mut n = Node::connected(B);
    n.from(
        B,
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads: [(ME, MAX_CLAIMED_OWN_HEAD)].into(),
            vv: VersionVector::new(),
        }),
    );
    assert_eq!(n.replica.watermark(ME), MAX_CLAIMED_OWN_HEAD);
    let outs = put(&mut n, 1);
    assert_eq!(failed(&outs, 1), None);
    assert_eq!(n.replica.watermark(ME), MAX_CLAIMED_OWN_HEAD + 1);
}

#[test]
fn own_shared_head_claimed_at_the_top_by_a_snapshot_is_refused_and_the_device_keeps_writing() {
    let mut n = Node::connected(B);
    let request_id = snapshot_requested(&mut n);
    let outs = n.from(
        B,
        SyncMessage::SharedSnapshotResponse(hybridsync_core::SharedSnapshotResponse {
            request_id,
            page: 0,
            vv: [(ME, u64::MAX), (B, 5)].into_iter().collect(),
            records: Vec::new(),
            has_more: false,
        }),
    );
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Disconnect { peer, reason: Refusal::ClaimBeyondBound } if *peer == B
    )));
    assert_eq!(n.replica.version_vector().get(ME), 0, "no raise");
    let outs = insert_tag(&mut n, 1, Value::from("x"));
    assert_eq!(failed(&outs, 1), None);
    assert_eq!(n.replica.version_vector().get(ME), 1);
}

#[test]
fn owner_push_after_its_watermark_reached_the_top_is_a_no_op_not_a_panic() {
    let mut n = Node::connected(B);
    n.feed(Input::PeerUp { peer: C });
    let outs = n.from(
        B,
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads: [(C, 10)].into(),
            vv: VersionVector::new(),
        }),
    );
    let request_id = sent_to(&outs, B)
        .into_iter()
        .find_map(|m| match m {
            SyncMessage::StateRequest(hybridsync_core::StateRequest {
                request_id, owner, ..
            }) if *owner == C => Some(*request_id),
            _ => None,
        })
        .expect("asked B for C's records");
    // B answers that C's records run up to u64::MAX (it may relay; the page is well formed).
    let outs = n.from(
        B,
        SyncMessage::StateResponse(hybridsync_core::StateResponse {
            request_id,
            owner: C,
            since: 0,
            through: u64::MAX,
            records: Vec::new(),
            has_more: false,
        }),
    );
    assert!(disconnects(&outs).is_empty());
    assert_eq!(n.replica.watermark(C), u64::MAX);
    let before = n.digest();
    let outs = n.from(C, SyncMessage::StateChange(owned(C, 1, 1).into()));
    assert!(disconnects(&outs).is_empty());
    assert!(writes(&outs).is_empty(), "an old change for this replica");
    assert_eq!(n.digest(), before);
}

#[test]
fn log_page_above_a_bound_at_the_top_of_the_range_is_malformed_not_a_panic() {
    let mut n = Node::connected(B);
    let outs = n.feed(Input::Command {
        id: hybridsync_core::CommandId(1),
        cmd: hybridsync_core::Command::RequestSharedChanges {
            peer: B,
            since: Some([(C, u64::MAX)].into_iter().collect()),
        },
    });
    let request_id = sent_to(&outs, B)
        .into_iter()
        .find_map(|m| match m {
            SyncMessage::SharedChangeRequest(hybridsync_core::SharedChangeRequest {
                request_id,
                ..
            }) => Some(*request_id),
            _ => None,
        })
        .expect("log requested");
    let before = n.digest();
    let outs = n.from(
        B,
        SyncMessage::SharedChangeResponse(hybridsync_core::SharedChangeResponse {
            request_id,
            page: 0,
            entries: vec![tag_change(C, u64::MAX, T0)],
            has_more: false,
            truncated: false,
        }),
    );
    assert_eq!(disconnects(&outs), [(B, Refusal::MalformedResponse)]);
    assert!(writes(&outs).is_empty());
    assert_eq!(n.digest(), before);
    assert_eq!(
        failed(&outs, 1),
        Some(hybridsync_core::CommandError::Interrupted(
            "peer disconnected"
        ))
    );
}

#[test]
fn local_value_nested_past_the_wire_limit_fails_with_a_typed_error() {
    let mut n = Node::connected(B);
    let mut deep = Value::Null;
    for _ in 0..=MAX_NESTING {
        deep = Value::Map([("k".to_owned(), deep)].into());
    }
    let before = n.digest();
    let outs = insert_tag(&mut n, 1, deep);
    assert_eq!(
        failed(&outs, 1),
        Some(hybridsync_core::CommandError::ValueTooDeep)
    );
    assert!(writes(&outs).is_empty());
    assert!(
        sent_to(&outs, B).is_empty(),
        "nothing peers could not decode"
    );
    assert_eq!(n.digest(), before);
    // One level less is fine (keys of a few characters: a map entry of a one-character key
    // and nothing else is denser than peers decode, `ValueTooDense`).
    let mut ok = Value::Null;
    for _ in 0..MAX_NESTING {
        ok = Value::Map([("level".to_owned(), ok)].into());
    }
    let outs = insert_tag(&mut n, 2, ok);
    assert!(failed(&outs, 2).is_none());
    assert!(events(&outs).contains(&&Event::CommandDone(hybridsync_core::CommandId(2))));
}

// ------------------------------------------------------------------ pages that remove their sender

fn member_removal(of: DeviceId, seq: u64) -> SharedChange {
    SharedChange {
        origin: of,
        seq,
        hlc: Hlc::new(T0, 0, of),
        model: hybridsync_core::MEMBER_MODEL.into(),
        record: of.0,
        kind: ChangeKind::Delete,
        fields: BTreeMap::new(),
    }
}

/// Messages sent to `peer` after the first disconnect of it.
fn sent_after_disconnect(outs: &[Output], peer: DeviceId) -> Vec<&Output> {
    outs.iter()
        .skip_while(|o| !matches!(o, Output::Disconnect { peer: p, .. } if *p == peer))
        .filter(|o| matches!(o, Output::Send { to, .. } if *to == peer))
        .collect()
}

#[test]
fn log_page_removing_its_sender_ends_the_fetch_without_asking_it_for_more() {
    let mut n = Node::connected(B);
    let request_id = log_requested(&mut n, 3);
    let outs = n.from(
        B,
        SyncMessage::SharedChangeResponse(hybridsync_core::SharedChangeResponse {
            request_id,
            page: 0,
            entries: vec![member_removal(B, 1)],
            has_more: true,
            truncated: false,
        }),
    );
    assert!(
        !n.replica.is_member(B),
        "the removal is applied (it is a valid change)"
    );
    assert_eq!(disconnects(&outs), [(B, Refusal::NotMember)]);
    let late = sent_after_disconnect(&outs, B);
    assert!(late.is_empty(), "sent to a removed member: {late:?}");
    assert!(!n.replica.is_fetching());
    // What was applied is durable and counted.
    assert_eq!(n.store.state().vv.get(B), 1);
    assert_eq!(n.replica.version_vector().get(B), 1);
}

#[test]
fn snapshot_page_removing_its_sender_is_stored_but_its_claim_is_not_adopted() {
    let mut n = Node::connected(B);
    let request_id = snapshot_requested(&mut n);
    let outs = n.from(
        B,
        SyncMessage::SharedSnapshotResponse(hybridsync_core::SharedSnapshotResponse {
            request_id,
            page: 0,
            vv: [(B, 5)].into_iter().collect(),
            records: vec![member_removal(B, 1).to_record()],
            has_more: true,
        }),
    );
    assert!(!n.replica.is_member(B));
    assert_eq!(disconnects(&outs), [(B, Refusal::NotMember)]);
    let late = sent_after_disconnect(&outs, B);
    assert!(late.is_empty(), "sent to a removed member: {late:?}");
    assert!(!n
        .store
        .restored()
        .members
        .iter()
        .any(|r| r.uuid == B.0 && hybridsync_core::is_member_record(r)));
    assert_eq!(n.replica.version_vector().get(B), 0, "claim not adopted");
}

#[test]
fn member_register_flood_is_capped_at_the_member_limit() {
    let mut n = Node::connected(B);
    // A member sends the registers of thousands of made-up members (any stamp passes: zero).
    let fake: Vec<SharedRecord> = (0..3 * MAX_MEMBERS as u128)
        .map(|i| hybridsync_core::bootstrap_member(DeviceId::from_u128(0xF000_0000 + i)))
        .collect();
    for chunk in fake.chunks(1000) {
        n.from(B, SyncMessage::Members(chunk.to_vec()));
    }
    let members = n.replica.members().count();
    assert!(members <= MAX_MEMBERS, "{members} members tracked");
    // The real members are still known, and the device still works.
    assert!(n.replica.is_member(B) && n.replica.is_member(ME));
    let outs = put(&mut n, 1);
    assert_eq!(failed(&outs, 1), None);
}

#[test]
fn members_message_of_another_model_is_refused_without_state_change() {
    let mut n = Node::connected(B);
    let before = n.digest();
    let mut r = hybridsync_core::bootstrap_member(DeviceId::from_u128(77));
    r.model = "tag".into();
    let outs = n.from(B, SyncMessage::Members(vec![r]));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Disconnect { peer, .. } if *peer == B)));
    assert_eq!(n.digest(), before);
    assert!(!n.replica.is_member(DeviceId::from_u128(77)));
}

#[test]
fn heads_of_devices_that_are_not_members_are_never_fetched_nor_tracked() {
    let mut n = Node::connected(B);
    // A member's summary names a hundred made-up owners, each ahead of this device.
    let strangers: Vec<DeviceId> = (0..100u128)
        .map(|i| DeviceId::from_u128(0xE000_0000 + i))
        .collect();
    let heads: BTreeMap<DeviceId, u64> = strangers.iter().map(|s| (*s, 5)).collect();
    let outs = n.from(
        B,
        SyncMessage::Heartbeat(hybridsync_core::Summary {
            heads,
            vv: VersionVector::new(),
        }),
    );
    let fetched: Vec<DeviceId> = sent_to(&outs, B)
        .into_iter()
        .filter_map(|m| match m {
            SyncMessage::StateRequest(hybridsync_core::StateRequest { owner, .. }) => Some(*owner),
            _ => None,
        })
        .filter(|o| strangers.contains(o))
        .collect();
    assert!(
        fetched.is_empty(),
        "fetched the streams of non-members: {fetched:?}"
    );
    // Pages for them, answered anyway, are not taken either: no watermark, nothing stored.
    let before = n.digest();
    for (i, s) in strangers.iter().enumerate() {
        n.from(
            B,
            SyncMessage::StateResponse(hybridsync_core::StateResponse {
                request_id: i as u64 + 1,
                owner: *s,
                since: 0,
                through: 1,
                records: vec![owned(*s, 1, 1).into()],
                has_more: false,
            }),
        );
    }
    assert_eq!(n.digest(), before);
    assert!(strangers.iter().all(|s| n.replica.watermark(*s) == 0));
    // This device's own summary never names them.
    n.now = Now::new(Instant::from_micros(60_000_000), T0 + 60_000);
    let outs = n.feed(Input::Tick);
    for m in sent_to(&outs, B) {
        if let SyncMessage::Heartbeat(hybridsync_core::Summary { heads, .. }) = m {
            assert!(heads.keys().all(|o| !strangers.contains(o)), "{heads:?}");
        }
    }
}

#[test]
fn changes_from_more_origins_than_a_library_may_have_are_refused_and_the_device_keeps_working() {
    use hybridsync_core::MAX_ORIGINS;
    let mut n = Node::connected(B);
    // A member relays one change from each of thousands of made-up origins.
    let mut refused = false;
    for chunk in (0..(MAX_ORIGINS as u128 + 100))
        .collect::<Vec<_>>()
        .chunks(500)
    {
        let changes: Vec<SharedChange> = chunk
            .iter()
            .map(|i| tag_change(DeviceId::from_u128(0xD000_0000 + i), 1, T0))
            .collect();
        let outs = n.from(B, SyncMessage::SharedChangeBatch(changes));
        if disconnects(&outs).contains(&(B, Refusal::TooManyOrigins)) {
            refused = true;
            break;
        }
    }
    assert!(refused, "the flood was never refused");
    let vv = n.replica.version_vector();
    assert!(vv.len() <= MAX_ORIGINS, "{} origins tracked", vv.len());
    // Every summary this device sends still fits a frame, and it keeps writing.
    let summary = SyncMessage::Heartbeat(hybridsync_core::Summary {
        heads: BTreeMap::new(),
        vv: vv.clone(),
    });
    assert!(encode(&summary).len() < DEFAULT_MAX_FRAME);
    let outs = insert_tag(&mut n, 1, Value::from("still here"));
    assert_eq!(failed(&outs, 1), None);
}

#[test]
fn own_writes_are_marked_to_survive_a_power_loss_before_anything_is_sent() {
    let mut n = Node::connected(B);
    let outs = put(&mut n, 1);
    let full = outs
        .iter()
        .rposition(|o| matches!(o, Output::Storage(StorageCommand::FullSync)))
        .expect("the batch of an own write is marked FullSync");
    let write = outs
        .iter()
        .position(|o| matches!(o, Output::Storage(StorageCommand::PutOwned(_))))
        .expect("the write");
    let first_send = outs
        .iter()
        .position(|o| matches!(o, Output::Send { .. }))
        .expect("the push");
    assert!(write < full && full < first_send, "{outs:?}");
    // What the device receives is not: a power loss may roll it back, and it fetches it again.
    let outs = n.from(B, SyncMessage::StateChange(owned(B, 1, 1).into()));
    assert!(!outs
        .iter()
        .any(|o| matches!(o, Output::Storage(StorageCommand::FullSync))));
}

/// A write the engine accepts must decode at every peer: a field value denser in list items
/// than the decode budget allows peers to take (a long list of nulls: one byte on the wire
/// each) is refused up front with a typed error, and a list just as long of small integers is
/// accepted and decodes.
#[test]
fn a_write_peers_could_not_decode_is_refused_up_front() {
    let mut n = Node::connected(B);
    let dense = Value::List(vec![Value::Null; 20_000]);
    let outs = insert_tag(&mut n, 1, dense);
    assert_eq!(
        failed(&outs, 1),
        Some(hybridsync_core::CommandError::ValueTooDense)
    );
    let fine = Value::List((0..20_000).map(|i| Value::Int(i % 50)).collect());
    let outs = insert_tag(&mut n, 2, fine);
    assert_eq!(failed(&outs, 2), None);
    for m in sent_to(&outs, B) {
        decode(&encode(m)).expect("every message the engine sends decodes at its peer");
    }
}

/// The decode budget must never refuse ordinary data: a metadata map of many short keys with
/// small values (about 8 bytes an entry on the wire, 160 bytes decoded), written and sent, is
/// accepted and decodes at every peer.
#[test]
fn a_metadata_map_of_short_keys_is_accepted_and_decodes_everywhere() {
    let mut n = Node::connected(B);
    let map: BTreeMap<String, Value> = (0..200)
        .map(|i| (format!("k{i:03}"), Value::Int(i % 60)))
        .collect();
    let outs = insert_tag(&mut n, 1, Value::Map(map));
    assert_eq!(failed(&outs, 1), None);
    for m in sent_to(&outs, B) {
        decode(&encode(m)).expect("every message the engine sends decodes at its peer");
    }
}
