//! Events for the application and typed reasons.

use crate::id::DeviceId;
use std::fmt;
use uuid::Uuid;

/// Which replication stream a catch-up concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// One owner's device-owned records.
    Owned(DeviceId),
    /// The shared log.
    SharedLog,
    /// A shared snapshot (after a `truncated` answer).
    SharedSnapshot,
}

/// Why a message or a peer was refused. Nothing a refused message carries is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The sender is not in the library's member set.
    #[error("sender is not a member of the library")]
    NotMember,
    /// Another device's version of a record this device owns.
    #[error("foreign version of one of this device's own records")]
    ForeignVersionOfOwnRecord,
    /// An acknowledgement whose body names another device than the sender.
    #[error("acknowledgement names another device than its sender")]
    AckerMismatch,
    /// A shared change whose origin is not the device of its stamp.
    #[error("shared change origin differs from its stamp's device")]
    OriginMismatch,
    /// A response that breaks the paging rules (gap, out of range, disorder).
    #[error("malformed response page")]
    MalformedResponse,
    /// A stamp too far in the future (not adopted, change not applied).
    #[error("stamp beyond the clock drift bound")]
    ClockDrift,
    /// A model type that is not in the registry, or of the other kind.
    #[error("unknown model type")]
    UnknownModel,
    /// Too many pending requests from the peer.
    #[error("too many pending requests")]
    Busy,
    /// A claim of this device's own head above
    /// [`MAX_CLAIMED_OWN_HEAD`](crate::replica::MAX_CLAIMED_OWN_HEAD): believing it would
    /// leave this device no sequence number to write with.
    #[error("claims this device's own head beyond the bound")]
    ClaimBeyondBound,
    /// A shared change from one more origin than
    /// [`MAX_ORIGINS`](crate::replica::MAX_ORIGINS) allows.
    #[error("shared change from more origins than a library may have")]
    TooManyOrigins,
}

/// Why a local command failed. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The model is not registered.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// The model is registered with the other replication kind.
    #[error("model {0:?} is not of the kind this command writes")]
    WrongModelKind(String),
    /// The built-in member model is written with `AddMember` / `RemoveMember` only.
    #[error("the member model is written with AddMember/RemoveMember")]
    ReservedModel,
    /// Only writes can be batched (no requests, no nested batches).
    #[error("only write commands can be batched")]
    NotBatchable,
    /// A field value nests lists and maps deeper than [`crate::value::MAX_NESTING`]: peers
    /// could not decode the change.
    #[error("a field value nests deeper than the wire allows")]
    ValueTooDeep,
    /// A field value holds more list items or map entries for its encoded size than a peer
    /// decodes ([`crate::value::VALUE_BYTES_PER_INPUT_BYTE`]; e.g. a long list of nulls, one
    /// byte each on the wire): peers would refuse the change, so it is not written.
    #[error("a field value holds more items for its size than peers decode")]
    ValueTooDense,
    /// This device's own sequence counter cannot number the write (a peer raised it to the
    /// top of its range); nothing was written.
    #[error("this device's sequence counter is exhausted")]
    SequenceExhausted,
    /// The write's change would not fit in one frame of the transport
    /// ([`Config::max_write_bytes`](crate::Config::max_write_bytes)): it could never reach a
    /// peer, so it is not stored. Split the value or raise `Config::max_frame` together with
    /// the transport's limit.
    #[error("the write is {bytes} bytes; at most {limit} fit in a frame")]
    TooLarge {
        /// The change's size (its page budget size).
        bytes: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// The peer is not connected.
    #[error("peer {0} is not connected")]
    PeerNotConnected(DeviceId),
    /// A device does not fetch its own records from others.
    #[error("a device does not fetch its own records")]
    OwnRecords,
    /// A catch-up of this stream is already running.
    #[error("a catch-up of this stream is already running")]
    AlreadyFetching,
    /// The peer disconnected or the request timed out before the fetch finished.
    #[error("the fetch was interrupted: {0}")]
    Interrupted(&'static str),
    /// The peer refused the request.
    #[error("the peer answered an error: {0}")]
    PeerError(String),
}

/// Something the application may want to know.
///
/// # The change feed
///
/// Three events together report every record a peer's change writes, so an application can
/// keep a view or an index up to date from events alone, re-reading what they name (the
/// typed reads of [`RecordReader`](crate::storage::RecordReader)):
///
/// - [`Event::RecordChanged`]: one record, written by a real-time change;
/// - [`Event::RecordsChanged`]: the keys one catch-up page wrote (a device-owned page or a
///   shared log page), at most a page of them;
/// - [`Event::SharedSnapshotApplied`]: a shared snapshot was applied, which may have changed
///   any shared record: re-read every shared model (its keys are not listed, there may be
///   millions).
///
/// The guarantee, for a host that follows the write-ahead rule (the `hybridsync-tokio`
/// driver, [`WriteAhead`](crate::write_ahead::WriteAhead)):
///
/// - **After the write.** An event is performed only once the writes it reports are durable,
///   so a read issued after receiving it sees them (or a newer version of the record).
/// - **At least once while the process runs.** Every record a peer's change writes is named
///   by at least one of the three events; a key may be named when its content did not change
///   (storage already held the same or a newer version), and more than once. Re-reading is
///   idempotent, so a view that re-reads what events name converges to the store.
/// - **In write order.** Events are performed in the order of the writes they report. A
///   device-owned stream is applied in its owner's sequence order, so the first report of
///   each of its changes comes in that order (a later page may name a key again). Shared
///   changes carry no such order across origins. Since an event names keys and the view
///   re-reads their current state, order never makes a view wrong.
/// - **Not across a crash.** Events are not stored: an event whose writes committed just
///   before a crash is never emitted again (catch-up does not fetch what is already
///   durable). After a start, build the view with a full read, subscribing first (with
///   `hybridsync-tokio`: `NodeBuilder::subscribe`), then follow events; do the same after
///   missing events (a lagging broadcast receiver).
/// - **The member model is followed through [`Event::MembershipChanged`].** Its records
///   ([`MEMBER_MODEL`](crate::MEMBER_MODEL)) also arrive outside the change log (member
///   registers passed on between peers, merged at once from snapshot pages), and record
///   events do not report those.
/// - **Not this device's own writes.** A local write is reported by its command's completion
///   ([`Event::CommandDone`], or the resolved `Node` call), not by a change event.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A record was written by a peer's real-time change (it may have been a no-op if storage
    /// already held a newer version). Catch-up pages report [`Event::RecordsChanged`]; see
    /// [the change feed](Event#the-change-feed) for the guarantee.
    RecordChanged {
        /// The model.
        model: String,
        /// The record.
        uuid: Uuid,
        /// The device that made the change.
        by: DeviceId,
    },
    /// A catch-up page was applied: the keys it wrote, each once, in page order (at most
    /// [`Config::page_records`](crate::Config::page_records) of them). Emitted after the
    /// page's writes, before its [`Event::CatchUpProgress`]; see
    /// [the change feed](Event#the-change-feed) for the guarantee.
    RecordsChanged {
        /// Who served the page.
        peer: DeviceId,
        /// [`Stream::Owned`]`(owner)`: the keys are device-owned records of `owner` (their
        /// full key is `(owner, model, uuid)`); [`Stream::SharedLog`]: shared records.
        stream: Stream,
        /// `(model, uuid)` of every record the page wrote.
        keys: Vec<(String, Uuid)>,
    },
    /// A shared snapshot was applied (its staged pages merged at once, after its last page):
    /// any shared record, of any model, may have changed, and its keys are not listed (a
    /// snapshot can hold every shared record of the library). Re-read the shared models the
    /// application follows. Emitted after the merge is written, before
    /// [`Event::CaughtUp`] for [`Stream::SharedSnapshot`].
    SharedSnapshotApplied {
        /// Who served the snapshot.
        peer: DeviceId,
    },
    /// A peer connected and is a member.
    PeerConnected(DeviceId),
    /// A peer disconnected.
    PeerDisconnected(DeviceId),
    /// A catch-up page was applied.
    CatchUpProgress {
        /// Who serves it.
        peer: DeviceId,
        /// Which stream.
        stream: Stream,
        /// Records or entries in the page.
        applied: usize,
        /// For device-owned streams: the watermark reached; for shared: entries so far.
        position: u64,
        /// For device-owned streams: the head the peer announced, if known.
        target: Option<u64>,
    },
    /// A catch-up finished: this device has everything `peer` had for `stream`.
    CaughtUp {
        /// Who served it.
        peer: DeviceId,
        /// Which stream.
        stream: Stream,
    },
    /// A peer broke a protocol rule and was disconnected (or its message was refused).
    PeerMisbehaved {
        /// The peer.
        peer: DeviceId,
        /// What it did.
        reason: Refusal,
    },
    /// A change was refused without blaming the sender (unknown model, clock drift); it will
    /// be retried by anti-entropy.
    ChangeRefused {
        /// Who sent it.
        from: DeviceId,
        /// The device that made it.
        origin: DeviceId,
        /// Why.
        reason: Refusal,
    },
    /// A device's stamps are too far ahead of local time.
    ClockSkew {
        /// The device whose clock is ahead.
        device: DeviceId,
        /// How far ahead, in milliseconds.
        ahead_ms: u64,
    },
    /// The member set changed.
    MembershipChanged {
        /// The device.
        device: DeviceId,
        /// Whether it is now a member.
        member: bool,
    },
    /// A peer knows a higher head of this device's own sequence than this device (its
    /// database was restored from an old backup or lost): counters were raised past it.
    OwnHeadRaised {
        /// The new own head.
        seq: u64,
    },
    /// A local command completed.
    CommandDone(super::CommandId),
    /// A local command failed; nothing changed.
    CommandFailed {
        /// The command.
        id: super::CommandId,
        /// Why.
        reason: CommandError,
    },
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Owned(o) => write!(f, "owned:{o}"),
            Stream::SharedLog => write!(f, "shared-log"),
            Stream::SharedSnapshot => write!(f, "shared-snapshot"),
        }
    }
}
