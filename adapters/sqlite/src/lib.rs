//! SQLite storage backend for hybridsync.
//!
//! [`SqliteStore`] implements the core's [`StorageBackend`](hybridsync_core::StorageBackend)
//! contract on one SQLite file per replica (rusqlite with bundled SQLite):
//!
//! - WAL journal, `synchronous = NORMAL`, 8 KiB pages, a 64 MiB page cache, cached prepared
//!   statements;
//! - one `IMMEDIATE` transaction per [`SqliteStore::execute`] batch (group commit): a batch
//!   takes effect entirely or not at all, and survives a process crash once `execute` returns
//!   (power loss: see [`SqliteStore`]'s durability notes and [`SqliteStore::set_full_sync`]);
//! - the version lives on every row (`seq` and `hlc` on device-owned records, the register
//!   stamps on shared records), so merges are idempotent and independent of the prunable log;
//! - the merge rules are the core's: [`hybridsync_core::supersedes`] (mirrored by the SQL
//!   upsert) and [`SharedRecord::merge`](hybridsync_core::SharedRecord::merge) (called in Rust);
//!   the core's conformance suite runs against this backend unchanged;
//! - the schema is versioned (`PRAGMA user_version`, [`SCHEMA_VERSION`]) and migrated on open;
//!   foreign, newer, damaged or read-only files are refused with a typed [`OpenError`] and
//!   never overwritten;
//! - one store per file: an open store holds an exclusive lock on `<file>.lock`, and a second
//!   open of the same file, from another process or from this one, is refused
//!   ([`OpenError::Locked`]) until the first store is dropped or its process dies.
//!
//! ```
//! use hybridsync_core::{DeviceId, StorageCommand};
//! use hybridsync_sqlite::SqliteStore;
//!
//! let mut store = SqliteStore::open_in_memory()?;
//! let me = DeviceId::from_u128(1);
//! store.execute(vec![StorageCommand::SetWatermark { owner: me, seq: 7 }])?;
//! assert_eq!(store.load_restored()?.watermarks[&me], 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Record ids
//!
//! Insert speed depends on key order: time-ordered record ids (UUIDv7) append to the B-trees,
//! random ones (UUIDv4) touch a random page per insert. Use UUIDv7 for record ids; the `bench` module (feature `bench`,
//! run by `hybridsync bench --only storage`) measures both against a raw rusqlite baseline.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

#[cfg(feature = "bench")]
pub mod bench;
mod error;
mod schema;
mod store;

pub use error::{OpenError, SqliteError};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use store::SqliteStore;
