//! What goes into and comes out of the engine.

use super::event::Event;
use crate::id::DeviceId;
use crate::message::SyncMessage;
use crate::storage::{StorageCommand, StorageDone};
use crate::value::Value;
use crate::version_vector::VersionVector;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Identifies a local command; its [`Event::CommandDone`] or [`Event::CommandFailed`] echoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CommandId(pub u64);

/// One input to [`crate::Replica::handle`].
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Input {
    /// The transport connected to `peer` (an authenticated device).
    PeerUp {
        /// The peer.
        peer: DeviceId,
    },
    /// The connection to `peer` is gone.
    PeerDown {
        /// The peer.
        peer: DeviceId,
    },
    /// A message from the authenticated device `from`.
    Message {
        /// Authenticated sender, supplied by the transport.
        from: DeviceId,
        /// The decoded message.
        msg: SyncMessage,
    },
    /// A storage read completed.
    Storage(StorageDone),
    /// A local command from the application.
    Command {
        /// Echoed by the completion event.
        id: CommandId,
        /// The command.
        cmd: Command,
    },
    /// A timer fired (spurious ticks are harmless).
    Tick,
}

/// A local command.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Command {
    /// Creates or replaces one of this device's records.
    PutOwned {
        /// A device-owned model.
        model: String,
        /// The record id.
        uuid: Uuid,
        /// Opaque payload.
        data: Vec<u8>,
    },
    /// Deletes one of this device's records (a versioned tombstone).
    DeleteOwned {
        /// A device-owned model.
        model: String,
        /// The record id.
        uuid: Uuid,
    },
    /// Creates (or re-creates) a shared record with exactly these fields.
    InsertShared {
        /// A shared model.
        model: String,
        /// The record id.
        uuid: Uuid,
        /// The fields.
        fields: BTreeMap<String, Value>,
    },
    /// Sets some fields of a shared record.
    UpdateShared {
        /// A shared model.
        model: String,
        /// The record id.
        uuid: Uuid,
        /// The fields to set.
        fields: BTreeMap<String, Value>,
    },
    /// Deletes a shared record.
    DeleteShared {
        /// A shared model.
        model: String,
        /// The record id.
        uuid: Uuid,
    },
    /// Adds a device to the library's member set.
    AddMember(DeviceId),
    /// Removes a device from the member set: its messages are refused from then on.
    RemoveMember(DeviceId),
    /// Several writes applied together: validated first (all or nothing), stored in one group
    /// and pushed as `StateBatch` / `SharedChangeBatch`. Only write commands may be batched.
    Batch(Vec<Command>),
    /// Fetches `owner`'s device-owned records from `peer`; done when the last page is applied.
    ///
    /// If the engine is already catching up that stream from `peer` on its own and `since` is
    /// `None`, the command joins that catch-up. Any other overlap fails with
    /// [`CommandError::AlreadyFetching`](crate::CommandError::AlreadyFetching).
    RequestState {
        /// The connected peer to ask.
        peer: DeviceId,
        /// Whose records.
        owner: DeviceId,
        /// Exclusive lower bound (default: the current watermark).
        since: Option<u64>,
    },
    /// Fetches shared changes from `peer`; done when the last page is applied.
    ///
    /// Joins the engine's own catch-up from `peer` if one is running and `since` is `None`;
    /// any other running shared catch-up makes it fail with `AlreadyFetching`.
    RequestSharedChanges {
        /// The connected peer to ask.
        peer: DeviceId,
        /// Lower bounds (default: the current version vector).
        since: Option<VersionVector>,
    },
}

/// One output, drained with [`crate::Replica::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `msg` to `to` (after every earlier storage write is durable).
    Send {
        /// The recipient.
        to: DeviceId,
        /// The message.
        msg: SyncMessage,
    },
    /// Close the connection to `peer`.
    Disconnect {
        /// The peer.
        peer: DeviceId,
        /// Why.
        reason: super::Refusal,
    },
    /// Execute a storage command (in order).
    Storage(StorageCommand),
    /// Tell the application.
    Event(Event),
}
