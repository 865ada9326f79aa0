//! The pure, sans-IO hybridsync engine.
//!
//! `hybridsync-core` holds everything that decides *what* happens when devices sync, and nothing
//! that decides *how* bytes move or where they are stored:
//!
//! - identities and clocks: [`DeviceId`], [`Hlc`], [`HlcClock`], [`VersionVector`];
//! - the data model: [`Value`], device-owned [`OwnedRecord`]s, shared [`SharedChange`]s and the
//!   per-field last-writer-wins [`SharedRecord`] registers, the [`ModelRegistry`];
//! - the wire protocol: [`SyncMessage`], its postcard encoding ([`encode`], [`decode`]) and the length-prefixed
//!   [`FrameDecoder`];
//! - the [`Replica`] state machine (`handle` / `poll_output` / `poll_timeout`);
//! - the storage contract ([`StorageCommand`], [`StorageDone`], [`Restored`]) and its reference
//!   implementation [`MemStore`].
//!
//! The engine never reads a clock, never draws a random number and never touches a socket or a
//! file: time, messages and storage results are inputs; messages, storage commands and events are
//! outputs. The documentation of [`Replica`] states the whole run-loop contract (the calls, the
//! write-ahead rule for storage and sends, totality, the two clocks) with a complete host loop.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod codec;
mod compact;
#[cfg(feature = "test-support")]
pub mod conformance;
mod digest;
mod hlc;
mod id;
mod memstore;
mod message;
mod model;
mod owned;
mod owned_batch;
mod replica;
mod shared;
mod shared_batch;
mod storage;
mod time;
mod value;
mod version_vector;
mod write_ahead;

// Every public item has exactly one path: here, at the crate root (the modules are private).
// Only the storage conformance suite, a test-support namespace of its own, is a public module.
pub use codec::{
    decode, encode, encode_frame, CodecError, FrameDecoder, FrameError, DEFAULT_MAX_FRAME,
};
pub use digest::Fnv64;
pub use hlc::{ClockError, Hlc, HlcClock};
pub use id::DeviceId;
pub use memstore::{MemState, MemStore};
pub use message::{
    Ack, ErrorCode, ErrorReply, Neighbours, OwnedDigest, PagesReceived, SharedChangeRequest,
    SharedChangeResponse, SharedSnapshotRequest, SharedSnapshotResponse, StateRelay, StateRequest,
    StateResponse, Summary, SyncMessage,
};
pub use model::{ModelKind, ModelRegistry, MAX_MODEL_NAME, MEMBER_MODEL};
pub use owned::{supersedes, OwnedChange, OwnedKey, OwnedRecord};
pub use replica::{
    Command, CommandError, CommandId, Config, Event, Input, Output, Refusal, Replica, Stream,
    FRAME_ENVELOPE, MAX_CLAIMED_OWN_HEAD, MAX_MEMBERS, MAX_ORIGINS,
};
pub use shared::{ChangeKind, Register, SharedChange, SharedKey, SharedRecord};
pub use storage::{
    bootstrap_member, empty_record, is_member_record, member_of, OwnedCursor, Page, ReadId,
    RecordReader, Restored, SharedView, StorageBackend, StorageCommand, StorageDone,
};
pub use time::{Instant, Now};
pub use value::{
    check_fields_decode, value_budget, Value, FIELDS_EXCESS_ALLOWANCE, LIST_ITEM_COST,
    MAP_ENTRY_COST, MAX_NESTING, VALUE_BUDGET_BASE, VALUE_BYTES_PER_INPUT_BYTE,
};
pub use version_vector::VersionVector;
pub use write_ahead::{Flush, WriteAhead};
