//! The storage contract: commands the engine emits, completions it consumes, and the durable
//! state it restarts from.
//!
//! # Contract for every backend
//!
//! - Commands are executed **in emission order**.
//! - A read observes every write emitted before it.
//! - A write is **durable before** any `Send` emitted after it is performed (write-ahead):
//!   adapters commit the commands of one engine step (group commit) before performing that
//!   step's sends. Nothing is acknowledged or advertised before it is on disk.
//! - Writes are idempotent and merge with [`crate::owned::supersedes`] and
//!   [`crate::SharedRecord::merge`]; the backend never decides a conflict differently.
//! - Completions may arrive arbitrarily late; the engine ignores completions for unknown or
//!   cancelled ids.
//!
//! [`crate::MemStore`] is the reference implementation and the conformance suite
//! (`conformance`, feature `test-support`) checks any backend against it.

use crate::hlc::Hlc;
use crate::id::DeviceId;
use crate::owned::OwnedRecord;
use crate::shared::{ChangeKind, SharedChange, SharedKey, SharedRecord};
use crate::value::Value;
use crate::version_vector::VersionVector;
use crate::MEMBER_MODEL;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Identifies a read; its completion echoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReadId(pub u64);

/// A command for the storage backend. See the module docs for the execution contract.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageCommand {
    /// Conditional upsert of device-owned records: each is stored only if it
    /// [supersedes](crate::owned::supersedes) the stored version of its key.
    PutOwned(Vec<OwnedRecord>),
    /// Merges register sets into shared records (creating them if absent).
    MergeShared(Vec<SharedRecord>),
    /// Merges register sets into the **snapshot stage**, a store of shared records kept apart
    /// from the shared records themselves: reads never see it, until [`ApplyStaged`].
    ///
    /// A shared snapshot is a cut at its first page's version vector; its pages are staged and
    /// applied together once the last one arrived. Merged page by page, a snapshot cut short
    /// (its server lost for good after a page) would leave registers that no other device
    /// holds and no catch-up can ever pass on.
    ///
    /// [`ApplyStaged`]: StorageCommand::ApplyStaged
    StageShared(Vec<SharedRecord>),
    /// Merges every staged record into the shared records, then empties the stage.
    ApplyStaged,
    /// Empties the snapshot stage (a snapshot starts over).
    ClearStaged,
    /// The batch holding this command must survive an OS crash or a power loss once
    /// committed, not only a process crash: it holds this device's own writes, and a sequence
    /// number (or stamp) once sent must never be issued again for another change. A backend
    /// that commits lazily (SQLite with `synchronous = NORMAL`) syncs this batch fully; writes
    /// nothing itself.
    FullSync,
    /// Appends contiguous entries to the shared log, merges each into its record, and raises
    /// the stored version vector to each entry's seq, atomically per entry.
    AppendLog(Vec<SharedChange>),
    /// Raises the stored watermark of `owner` to `seq` (for the device itself: its own head).
    SetWatermark {
        /// Whose watermark.
        owner: DeviceId,
        /// The new value (never lower than the stored one).
        seq: u64,
    },
    /// Raises the stored HLC high-water mark.
    SetHlc(Hlc),
    /// Stores `member`'s latest cumulative acknowledgement.
    SetAck {
        /// The acker.
        member: DeviceId,
        /// Its whole version vector.
        vv: VersionVector,
    },
    /// Deletes `origin`'s log entries with `seq <= through`, and raises the stored horizon and
    /// version vector of `origin` to `through` (covered, no longer served).
    PruneLog {
        /// Whose entries.
        origin: DeviceId,
        /// Inclusive upper bound.
        through: u64,
    },
    /// Reads `owner`'s records with `after < seq <= upto`, ordered by seq, at most `limit`
    /// records and, past the first, at most `max_bytes` of [`OwnedRecord::budget_size`].
    ReadOwned {
        /// Echoed by the completion.
        id: ReadId,
        /// Whose records.
        owner: DeviceId,
        /// Exclusive lower bound.
        after: u64,
        /// Inclusive upper bound.
        upto: u64,
        /// Maximum records.
        limit: u32,
        /// Byte budget.
        max_bytes: usize,
    },
    /// Reads log entries with `seq > since[origin]`, ordered by `(origin, seq)`, with the same
    /// limits (budget by [`SharedChange::budget_size`]).
    ReadLog {
        /// Echoed by the completion.
        id: ReadId,
        /// Exclusive lower bounds per origin.
        since: VersionVector,
        /// Maximum entries.
        limit: u32,
        /// Byte budget.
        max_bytes: usize,
    },
    /// Reads shared records with key `> after`, ordered by `(model, uuid)`, with the same
    /// limits (budget by [`SharedRecord::budget_size`]).
    ReadSharedSnapshot {
        /// Echoed by the completion.
        id: ReadId,
        /// Exclusive cursor.
        after: Option<SharedKey>,
        /// Maximum records.
        limit: u32,
        /// Byte budget.
        max_bytes: usize,
    },
}

impl StorageCommand {
    /// The read id, if this is a read.
    pub fn read_id(&self) -> Option<ReadId> {
        match self {
            StorageCommand::ReadOwned { id, .. }
            | StorageCommand::ReadLog { id, .. }
            | StorageCommand::ReadSharedSnapshot { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// The result of a read, fed back as [`crate::Input::Storage`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum StorageDone {
    /// Result of [`StorageCommand::ReadOwned`].
    Owned {
        /// The read.
        id: ReadId,
        /// The page.
        records: Vec<OwnedRecord>,
        /// Whether more records exist in the range after the page.
        more: bool,
    },
    /// Result of [`StorageCommand::ReadLog`].
    Log {
        /// The read.
        id: ReadId,
        /// The page.
        entries: Vec<SharedChange>,
        /// Whether more entries exist after the page.
        more: bool,
    },
    /// Result of [`StorageCommand::ReadSharedSnapshot`].
    Snapshot {
        /// The read.
        id: ReadId,
        /// The page.
        records: Vec<SharedRecord>,
        /// Whether more records exist after the page.
        more: bool,
    },
    /// A read failed in the backend; the engine answers the peer with an error.
    Failed {
        /// The read.
        id: ReadId,
    },
}

/// Everything durable the engine needs at start-up, loaded by the adapter from storage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restored {
    /// The HLC high-water mark.
    pub hlc: Hlc,
    /// Per-owner watermarks; the device's own entry is its device-owned sequence head.
    pub watermarks: BTreeMap<DeviceId, u64>,
    /// The shared version vector; the device's own entry is its shared sequence head.
    pub vv: VersionVector,
    /// Per origin, the highest pruned seq: requests below it are answered `truncated`.
    pub horizon: VersionVector,
    /// Every member's latest cumulative acknowledgement.
    pub acks: BTreeMap<DeviceId, VersionVector>,
    /// The registers of the built-in member model.
    pub members: Vec<SharedRecord>,
}

impl Restored {
    /// The state of a device joining (or founding) a library whose members it was told out of
    /// band (pairing). The members are registered at [`Hlc::ZERO`], so any logged change to the
    /// member set overrides them.
    pub fn bootstrap(members: impl IntoIterator<Item = DeviceId>) -> Self {
        Restored {
            members: members.into_iter().map(bootstrap_member).collect(),
            ..Restored::default()
        }
    }
}

/// The member record of a bootstrap member.
pub fn bootstrap_member(device: DeviceId) -> SharedRecord {
    SharedChange {
        origin: DeviceId::NIL,
        seq: 0,
        hlc: Hlc::ZERO,
        model: MEMBER_MODEL.to_owned(),
        record: device.0,
        kind: ChangeKind::Insert,
        fields: BTreeMap::new(),
    }
    .to_record()
}

/// Whether a member record says the device is a member.
pub fn is_member_record(r: &SharedRecord) -> bool {
    r.visible().is_some()
}

/// A helper for backends: the device id a member record names.
pub fn member_of(r: &SharedRecord) -> DeviceId {
    DeviceId(r.uuid)
}

/// An empty register set for `(model, uuid)` (backends start merges from it).
pub fn empty_record(key: &SharedKey) -> SharedRecord {
    SharedRecord::empty(&key.0, key.1)
}

/// A synchronous storage backend: what the drivers run on one dedicated thread.
///
/// [`crate::MemStore`] is the reference implementation; the SQLite adapter is the default one.
/// Every implementation must pass the conformance suite (`conformance`, feature
/// `test-support`).
pub trait StorageBackend {
    /// Why a batch failed (the batch had no effect).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Executes `commands` in order, as one atomic, durable unit (group commit), and returns
    /// the completion of every read in the batch, in order. When it returns `Ok`, every write
    /// of the batch is durable.
    fn execute(&mut self, commands: Vec<StorageCommand>) -> Result<Vec<StorageDone>, Self::Error>;

    /// Loads the engine's durable state.
    fn load_restored(&mut self) -> Result<Restored, Self::Error>;
}

/// Where a listing of a device-owned model resumes: `(owner, uuid)` of the last record of the
/// previous page (device-owned records are listed in `(owner, uuid)` order).
pub type OwnedCursor = (DeviceId, Uuid);

/// One page of a listing, in key order.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T, C> {
    /// The records of the page: at most the `limit` asked for.
    pub items: Vec<T>,
    /// The key of the last item when more records follow it: pass it back as `after` for the
    /// next page. `None`: this page is the last one.
    pub next: Option<C>,
}

/// A shared record as the application sees it: the fields written at or after its latest
/// insert ([`SharedRecord::visible`]), without the registers behind them.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedView {
    /// The model type.
    pub model: String,
    /// The record id.
    pub uuid: Uuid,
    /// The visible fields.
    pub fields: BTreeMap<String, Value>,
}

impl SharedView {
    /// The view of `r`, or `None` if the record does not exist for the application (deleted,
    /// or only updated and never inserted).
    pub fn of(r: &SharedRecord) -> Option<SharedView> {
        r.visible().map(|fields| SharedView {
            model: r.model.clone(),
            uuid: r.uuid,
            fields,
        })
    }
}

/// Typed, read-only reads for the application, apart from the engine's [`StorageCommand`]
/// protocol: a store implements both, and reads never change anything.
///
/// - A device-owned record is named by its full key `(owner, model, uuid)`: two owners can
///   hold records with the same `(model, uuid)`, and they are different records.
///   [`get_owned`](Self::get_owned) returns the stored version, a tombstone included
///   (`data: None`: deleted); listings and counts leave tombstones out.
/// - A shared record is named by `(model, uuid)` and read as its visible fields
///   ([`SharedView`]); a deleted or never inserted record reads as `None` and is not listed
///   or counted.
/// - Listings are paged with a cursor (the last key of the previous page): memory is bounded
///   by `limit` (0 counts as 1), whatever the size of the store, and a page reflects the
///   store when it was read (records written between pages appear if their key lies ahead
///   of the cursor).
/// - A read sees every write committed before it; with `hybridsync-tokio`'s `Node` that
///   includes every command that completed and every write an event reported.
///
/// `MemStore` and the SQLite store give the same answers (a test of the SQLite adapter holds
/// them together).
pub trait RecordReader {
    /// Why a read failed (a damaged row, the database).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The stored version of `owner`'s record `(model, uuid)`, tombstone included.
    fn get_owned(
        &self,
        owner: DeviceId,
        model: &str,
        uuid: Uuid,
    ) -> Result<Option<OwnedRecord>, Self::Error>;

    /// The visible fields of shared record `(model, uuid)`; `None` if it does not exist.
    fn get_shared(&self, model: &str, uuid: Uuid) -> Result<Option<SharedView>, Self::Error>;

    /// Live (not deleted) device-owned records of `model`, of every owner, in
    /// `(owner, uuid)` order, starting after `after`.
    fn list_owned(
        &self,
        model: &str,
        after: Option<OwnedCursor>,
        limit: u32,
    ) -> Result<Page<OwnedRecord, OwnedCursor>, Self::Error>;

    /// Visible shared records of `model`, in uuid order, starting after `after`.
    fn list_shared(
        &self,
        model: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<SharedView, Uuid>, Self::Error>;

    /// How many live device-owned records of `model` the store holds (every owner).
    fn count_owned(&self, model: &str) -> Result<u64, Self::Error>;

    /// How many visible shared records of `model` the store holds.
    fn count_shared(&self, model: &str) -> Result<u64, Self::Error>;
}
