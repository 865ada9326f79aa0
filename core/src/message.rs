//! The wire protocol: every message two replicas exchange.

use crate::id::DeviceId;
use crate::owned::OwnedChange;
use crate::shared::{SharedChange, SharedKey, SharedRecord};
use crate::version_vector::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A message between two replicas. The sender is never taken from the body: the transport
/// supplies the authenticated sender with every message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum SyncMessage {
    /// A real-time push of one device-owned change of the sender (its owner).
    StateChange(OwnedChange),
    /// Several consecutive device-owned changes of the sender, in seq order (compact
    /// `owned_batch` form).
    StateBatch(#[serde(with = "crate::owned_batch")] Vec<OwnedChange>),
    /// Asks for `owner`'s device-owned records with `seq > since`: a stream of pages, each
    /// starting where the previous one ended, up to `window` of them ahead of what the
    /// requester reported received ([`PagesReceived`](SyncMessage::PagesReceived)). A new
    /// request for the same owner from the same peer ends the previous stream.
    StateRequest(StateRequest),
    /// One page of `owner`'s records with `since < seq <= through`, ordered by seq.
    StateResponse(StateResponse),
    /// A real-time push of one shared change (compact `shared_batch`
    /// form, as a run of one).
    SharedChange(#[serde(with = "crate::shared_batch::one")] SharedChange),
    /// Several shared changes (compact `shared_batch` form).
    SharedChangeBatch(#[serde(with = "crate::shared_batch")] Vec<SharedChange>),
    /// Asks for log entries with `seq > since[origin]`, per origin.
    SharedChangeRequest(SharedChangeRequest),
    /// One page of log entries, ordered by `(origin, seq)`, contiguous per origin from where
    /// the previous page of the stream ended (the request's `since` for the first).
    SharedChangeResponse(SharedChangeResponse),
    /// The acker's whole version vector: every change it covers is durable at the acker.
    AckSharedChanges(Ack),
    /// Summary for anti-entropy: sent on connect and periodically.
    Heartbeat(Summary),
    /// Asks for the current registers of every shared record, as a stream of pages (see
    /// [`StateRequest`](SyncMessage::StateRequest) for the window).
    SharedSnapshotRequest(SharedSnapshotRequest),
    /// One page of a shared snapshot, ordered by `(model, uuid)`, starting after the last
    /// record of the previous page of the stream (after the request's `after` for the first).
    SharedSnapshotResponse(SharedSnapshotResponse),
    /// A typed refusal of a request or of a message.
    Error(ErrorReply),
    /// Other members' acknowledgements, relayed: per member, the entries of its cumulative
    /// version vector that rose since the sender last told this peer. In a pairing graph that
    /// is not a full mesh most members never talk to each other directly; relayed acks are
    /// how every device learns that every member holds a change, and prunes it.
    AckRelay(BTreeMap<DeviceId, VersionVector>),
    /// The sender's connected peers: a device relays changes only to peers that are not
    /// connected to the change's owner or origin (they get them first-hand). `pinned` asks the
    /// receiver to relay every acknowledgement it knows again: the sender has held log entries
    /// for a whole summary period without learning that every member has them.
    Neighbours(Neighbours),
    /// The sender's registers of the built-in member model, sent on connect. Members given at
    /// bootstrap exist only as registers, never in the log: this is how a device that joined
    /// through one sponsor and caught up from the log learns them. Merged register by
    /// register, like a snapshot.
    Members(Vec<SharedRecord>),
    /// Device-owned changes of `owner`, relayed in real time by a device that just applied
    /// them, to a peer not connected to `owner` (compact `owned_batch`
    /// form, seq order). Applied only where contiguous with the receiver's watermark.
    StateRelay(StateRelay),
    /// A summary that carries only what changed: the entries of the sender's heads and version
    /// vector that rose since its last summary on this connection (heads the receiver itself
    /// reported at or above are left out: it needs them for nothing). Merged by maximum; a
    /// full [`Heartbeat`](SyncMessage::Heartbeat) (on connect and every few minutes) replaces.
    HeartbeatDelta(Summary),
    /// Flow control of a streamed catch-up: the requester has received `pages` pages of
    /// `request_id`. Cumulative, so a lost, repeated or reordered one is harmless (the
    /// responder keeps the highest); it never travels ahead of the request it names.
    PagesReceived(PagesReceived),
    /// A digest of the sender's member registers ([`Members`](SyncMessage::Members) would
    /// carry), sent on connect and every few minutes instead of the registers themselves: a
    /// receiver whose own registers differ answers with its `Members`, and as both sides send
    /// one, each gets what it lacks. Peers that already agree (every pair, after the first
    /// exchange) send nothing more.
    MembersDigest(u64),
    /// A digest of the sender's device-owned records of `owner`, a removed member, through
    /// `through` (the sender's watermark of it). No one can add to a removed member's stream,
    /// so survivors compare what they hold of it: a receiver holding the same watermark and a
    /// different digest reads the sender's records of it again from the start and keeps, per
    /// record, the newer version. Sent on connect, when the sender's records of `owner`
    /// change, and with every full summary.
    OwnedDigest(OwnedDigest),
}

/// The body of [`SyncMessage::OwnedDigest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnedDigest {
    /// The removed member whose records the digest covers.
    pub owner: DeviceId,
    /// The sender's watermark of `owner`.
    pub through: u64,
    /// A hash of the sender's records of `owner`: each record's seq, model and uuid, in seq
    /// order (a change is named by its owner and seq, so these identify the content).
    pub digest: u64,
}

/// The body of [`SyncMessage::StateRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StateRequest {
    /// Echoed by every page of the response.
    pub request_id: u64,
    /// Whose records.
    pub owner: DeviceId,
    /// Exclusive lower bound.
    pub since: u64,
    /// Maximum records in a page (the responder caps it).
    pub limit: u32,
    /// Pages the responder may have sent beyond those reported received; 0 counts as 1
    /// (one page per round trip). The responder caps it, in pages and in bytes.
    pub window: u32,
}

/// The body of [`SyncMessage::StateResponse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StateResponse {
    /// The request this answers.
    pub request_id: u64,
    /// Whose records.
    pub owner: DeviceId,
    /// The request's exclusive lower bound.
    pub since: u64,
    /// Every change of `owner` with `seq <= through` is reflected by this page and earlier
    /// ones; the next page starts after it (exclusive cursor).
    pub through: u64,
    /// `owner`'s changes, ordered by seq (compact `owned_batch` form).
    #[serde(with = "crate::owned_batch")]
    pub records: Vec<OwnedChange>,
    /// Whether the responder has more records after `through`.
    pub has_more: bool,
}

/// The body of [`SyncMessage::SharedChangeRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SharedChangeRequest {
    /// Echoed by the response.
    pub request_id: u64,
    /// The requester's version vector.
    pub since: VersionVector,
    /// Maximum entries in a page (the responder caps it).
    pub limit: u32,
    /// Pages the responder may have sent beyond those reported received
    /// ([`PagesReceived`](SyncMessage::PagesReceived)); as for
    /// [`StateRequest`](SyncMessage::StateRequest).
    pub window: u32,
}

/// The body of [`SyncMessage::SharedChangeResponse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SharedChangeResponse {
    /// The request this answers.
    pub request_id: u64,
    /// This page's place in the request's stream, from 0: a requester that sees a gap
    /// (a page lost or overtaken) asks again from what it applied.
    pub page: u32,
    /// The entries (compact `shared_batch` form).
    #[serde(with = "crate::shared_batch")]
    pub entries: Vec<SharedChange>,
    /// Whether more entries follow.
    pub has_more: bool,
    /// The request reached below the responder's pruned horizon: no entries are sent, the
    /// requester must take a snapshot.
    pub truncated: bool,
}

/// The body of [`SyncMessage::AckSharedChanges`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Ack {
    /// Must equal the authenticated sender.
    pub acker: DeviceId,
    /// Cumulative, per origin.
    pub vv: VersionVector,
}

/// The body of a summary ([`SyncMessage::Heartbeat`], whole, and [`SyncMessage::HeartbeatDelta`],
/// what rose).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Summary {
    /// Per owner, the sender's watermark of device-owned changes (its own head for itself).
    pub heads: BTreeMap<DeviceId, u64>,
    /// The sender's shared version vector.
    pub vv: VersionVector,
}

/// The body of [`SyncMessage::SharedSnapshotRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SharedSnapshotRequest {
    /// Echoed by the response.
    pub request_id: u64,
    /// Exclusive cursor: start after this record (`None`: from the beginning).
    pub after: Option<SharedKey>,
    /// Maximum records in a page (the responder caps it).
    pub limit: u32,
    /// Pages the responder may have sent beyond those reported received, as for
    /// [`StateRequest`](SyncMessage::StateRequest).
    pub window: u32,
}

/// The body of [`SyncMessage::SharedSnapshotResponse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SharedSnapshotResponse {
    /// The request this answers.
    pub request_id: u64,
    /// This page's place in the request's stream, from 0.
    pub page: u32,
    /// The responder's version vector when the page was read; the snapshot as a whole
    /// covers the vector of its first page.
    pub vv: VersionVector,
    /// The records' registers.
    pub records: Vec<SharedRecord>,
    /// Whether more pages follow (continue after the last record).
    pub has_more: bool,
}

/// The body of [`SyncMessage::Error`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ErrorReply {
    /// The request it answers, if any.
    pub request_id: Option<u64>,
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// The body of [`SyncMessage::Neighbours`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Neighbours {
    /// Numbers the sender's lists on this connection: a receiver ignores a list older
    /// than one it already has (messages may be reordered).
    pub version: u64,
    /// The sender's connected peers.
    pub peers: Vec<DeviceId>,
    /// The sender's log is pinned: resend relayed acks.
    pub pinned: bool,
}

/// The body of [`SyncMessage::StateRelay`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StateRelay {
    /// Whose records (never the receiver: a device never takes its own records back).
    pub owner: DeviceId,
    /// The changes, ordered by seq.
    #[serde(with = "crate::owned_batch")]
    pub records: Vec<OwnedChange>,
}

/// The body of [`SyncMessage::PagesReceived`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PagesReceived {
    /// The request whose pages arrived.
    pub request_id: u64,
    /// Pages of it received so far.
    pub pages: u32,
}

/// Machine-readable error codes carried by [`SyncMessage::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded.
    BadFrame,
    /// The frame is larger than the maximum frame size.
    FrameTooLarge,
    /// The sender is not a member of the library.
    NotMember,
    /// The message broke a protocol rule (spoofed owner or acker, malformed page...).
    ProtocolViolation,
    /// Too many requests are pending from this peer; retry later.
    Busy,
    /// The model type is unknown here.
    UnknownModel,
    /// A stamp was too far in the future; the change was not applied.
    ClockDrift,
}

impl SyncMessage {
    /// A short name of the variant, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncMessage::StateChange(_) => "StateChange",
            SyncMessage::StateBatch(_) => "StateBatch",
            SyncMessage::StateRequest { .. } => "StateRequest",
            SyncMessage::StateResponse { .. } => "StateResponse",
            SyncMessage::PagesReceived { .. } => "PagesReceived",
            SyncMessage::SharedChange(_) => "SharedChange",
            SyncMessage::SharedChangeBatch(_) => "SharedChangeBatch",
            SyncMessage::SharedChangeRequest { .. } => "SharedChangeRequest",
            SyncMessage::SharedChangeResponse { .. } => "SharedChangeResponse",
            SyncMessage::AckSharedChanges { .. } => "AckSharedChanges",
            SyncMessage::Heartbeat { .. } => "Heartbeat",
            SyncMessage::SharedSnapshotRequest { .. } => "SharedSnapshotRequest",
            SyncMessage::SharedSnapshotResponse { .. } => "SharedSnapshotResponse",
            SyncMessage::Error { .. } => "Error",
            SyncMessage::AckRelay(_) => "AckRelay",
            SyncMessage::Members(_) => "Members",
            SyncMessage::Neighbours { .. } => "Neighbours",
            SyncMessage::StateRelay { .. } => "StateRelay",
            SyncMessage::HeartbeatDelta { .. } => "HeartbeatDelta",
            SyncMessage::MembersDigest(_) => "MembersDigest",
            SyncMessage::OwnedDigest(_) => "OwnedDigest",
        }
    }

    /// Whether this message carries real-time changes (transports should never queue these
    /// behind bulk catch-up traffic).
    pub fn is_realtime(&self) -> bool {
        matches!(
            self,
            SyncMessage::StateChange(_)
                | SyncMessage::StateBatch(_)
                | SyncMessage::SharedChange(_)
                | SyncMessage::SharedChangeBatch(_)
                | SyncMessage::AckSharedChanges { .. }
                | SyncMessage::Heartbeat { .. }
                | SyncMessage::AckRelay(_)
                | SyncMessage::Members(_)
                | SyncMessage::MembersDigest(_)
                | SyncMessage::OwnedDigest(_)
                | SyncMessage::Neighbours { .. }
                | SyncMessage::StateRelay { .. }
                | SyncMessage::HeartbeatDelta { .. }
        )
    }
}
