//! The pure, sans-IO hybridsync engine.
//!
//! `hybridsync-core` holds everything that decides *what* happens when devices sync, and nothing
//! that decides *how* bytes move or where they are stored:
//!
//! - identities and clocks: [`DeviceId`], [`Hlc`], [`HlcClock`], [`VersionVector`];
//! - the data model: [`Value`], device-owned [`OwnedRecord`]s, shared [`SharedChange`]s and the
//!   per-field last-writer-wins [`SharedRecord`] registers, the [`ModelRegistry`];
//! - the wire protocol: [`SyncMessage`], its postcard [`codec`] and the length-prefixed
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

pub mod codec;
mod compact;
#[cfg(feature = "test-support")]
pub mod conformance;
pub mod digest;
pub mod hlc;
pub mod id;
pub mod memstore;
pub mod message;
pub mod model;
pub mod owned;
pub mod owned_batch;
pub mod replica;
pub mod shared;
pub mod shared_batch;
pub mod storage;
pub mod time;
pub mod value;
pub mod version_vector;
pub mod write_ahead;

pub use codec::{decode, encode, encode_frame, CodecError, FrameDecoder, FrameError};
pub use hlc::{ClockError, Hlc, HlcClock};
pub use id::DeviceId;
pub use memstore::MemStore;
pub use message::{ErrorCode, SyncMessage};
pub use model::{ModelKind, ModelRegistry, MAX_MODEL_NAME, MEMBER_MODEL};
pub use owned::{OwnedChange, OwnedRecord};
pub use replica::{
    Command, CommandError, CommandId, Config, Event, Input, Output, Refusal, Replica, Stream,
    FRAME_ENVELOPE,
};
pub use shared::{ChangeKind, Register, SharedChange, SharedRecord};
pub use storage::{ReadId, Restored, StorageBackend, StorageCommand, StorageDone};
pub use time::{Instant, Now};
pub use value::Value;
pub use version_vector::VersionVector;
