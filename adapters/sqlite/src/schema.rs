//! The database schema and its migrations (`PRAGMA user_version`).
//!
//! # Tables (schema version 2)
//!
//! | table | key | holds |
//! | --- | --- | --- |
//! | `owned` | `(owner, model, uuid)` (unique index `owned_by_key`) | device-owned records: `seq`, the HLC (`hlc_ms`, `hlc_counter`, `hlc_device`), `data` (`NULL` = tombstone), `deleted` (generated); stored in `(owner, seq)` order |
//! | `devices` | `id` | small integer ids of the device ids used in `owned` (`device`, unique) |
//! | `models` | `id` | small integer ids of the model names used in `owned` (`name`, unique) |
//! | `shared` | `(model, uuid)` | shared records: `registers` (postcard [`SharedRecord`](hybridsync_core::SharedRecord)), `hlc` (highest stamp in any register) |
//! | `log` | `(origin, seq)` | the shared change log: `entry` (postcard [`SharedChange`](hybridsync_core::SharedChange)), `hlc` |
//! | `watermarks` | `owner` | per-owner watermarks (the device's own entry: its sequence head) |
//! | `vv` | `origin` | the shared version vector |
//! | `horizon` | `origin` | the pruned log horizon |
//! | `acks` | `member` | each member's latest cumulative ack (postcard [`VersionVector`](hybridsync_core::VersionVector)) |
//! | `hlc` | `id = 0` | the HLC high-water mark |
//! | `staged` | `(model, uuid)` | the snapshot stage: shared records of a snapshot in progress, like `shared`, merged into it when the snapshot completes (version 2) |
//!
//! Catch-up is a range scan: `owned` is clustered by its primary key `(owner, seq, model, uuid)`
//! (a `WITHOUT ROWID` table), so "an owner's records after seq n" reads consecutive pages, and
//! the log by its primary key `(origin, seq)`. The record key `(owner, model, uuid)` is a
//! unique secondary index, used by the conditional upsert. Clustering by seq rather than by
//! record id also means inserts always append to the big tree, whatever the id order: with
//! random (UUIDv4) ids only the small key index takes random writes. Measured here for 1M
//! records against clustering by record id: the same insert cost with UUIDv7 ids, ~2x the
//! inserts with UUIDv4 ids, and catch-up reads ~3x (UUIDv7) to ~60x (UUIDv4) faster. (`seq`
//! is in the key only as a prefix: two records of one owner never share a seq, but a malformed
//! peer's would still both be stored rather than fail a batch.)
//!
//! The member set is the built-in member model's records in `shared` (it replicates like any
//! shared model), so it has no table of its own.
//!
//! `owned` is the bulk table (a library holds millions of device-owned records, and catch-up
//! inserts them by the thousand), so its owner, model and HLC device are small integers from
//! `devices` and `models`, not 16-byte ids and strings: rows and index entries are ~40 % smaller
//! and key comparisons are integer comparisons, which measured ~20 % more inserts per CPU-second.
//!
//! # Encodings
//!
//! - Device ids and record ids are 16-byte blobs (`memcmp` order = `Uuid` order); model names
//!   are `TEXT` (binary collation = Rust `str` order). So SQL `ORDER BY` on them agrees with the
//!   reference's `BTreeMap` order (`owned` is ordered by interned ids instead; the digest walks
//!   it owner by owner and model by model in the reference order).
//! - Every `u64` (sequence numbers, HLC milliseconds) is stored as the order-preserving `i64`
//!   `v XOR 2^63` ([`enc_u64`]): SQLite integers are signed, and the protocol allows the whole
//!   `u64` range. Sequence 0 is stored as `-9223372036854775808`, 1 as
//!   `-9223372036854775807`, and so on.
//! - Outside `owned`, HLC stamps are 28-byte big-endian blobs `time_ms ‖ counter ‖ device`
//!   ([`enc_hlc`]), whose `memcmp` order is the [`Hlc`] order, so "raise only" is a plain SQL
//!   comparison.

use crate::error::SqliteError;
use hybridsync_core::{DeviceId, Hlc};
use rusqlite::Transaction;
use uuid::Uuid;

/// `PRAGMA application_id` of a hybridsync database ("HySy"). A file with another non-zero id
/// belongs to another application and is never touched.
pub const APPLICATION_ID: i32 = 0x4879_5379;

/// The migrations, in order: `MIGRATIONS[v]` takes the schema from version `v` to `v + 1`.
const MIGRATIONS: &[&str] = &[V1, V2];

/// The schema version this build writes (`PRAGMA user_version`). Newer files are refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The device-owned record tables of schema version 1 (shared with the benchmark's raw
/// baseline, which must insert into the same shape).
macro_rules! owned_table_v1 {
    () => {
        "
CREATE TABLE devices (id INTEGER PRIMARY KEY, device BLOB NOT NULL UNIQUE);
CREATE TABLE models  (id INTEGER PRIMARY KEY, name   TEXT NOT NULL UNIQUE);
CREATE TABLE owned (
    owner       INTEGER NOT NULL,
    model       INTEGER NOT NULL,
    uuid        BLOB    NOT NULL,
    seq         INTEGER NOT NULL,
    hlc_ms      INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    hlc_device  INTEGER NOT NULL,
    data        BLOB,
    deleted     INTEGER GENERATED ALWAYS AS (data IS NULL) VIRTUAL,
    PRIMARY KEY (owner, seq, model, uuid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX owned_by_key ON owned (owner, model, uuid);
"
    };
}

/// Schema version 1. A released migration never changes: later versions add migrations.
const V1: &str = concat!(
    owned_table_v1!(),
    "
CREATE TABLE shared (
    model     TEXT NOT NULL,
    uuid      BLOB NOT NULL,
    hlc       BLOB NOT NULL,
    registers BLOB NOT NULL,
    PRIMARY KEY (model, uuid)
) WITHOUT ROWID;

CREATE TABLE log (
    origin BLOB    NOT NULL,
    seq    INTEGER NOT NULL,
    hlc    BLOB    NOT NULL,
    entry  BLOB    NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;

CREATE TABLE watermarks (owner  BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE vv         (origin BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE horizon    (origin BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE acks       (member BLOB PRIMARY KEY, vv  BLOB    NOT NULL) WITHOUT ROWID;
CREATE TABLE hlc        (id INTEGER PRIMARY KEY CHECK (id = 0), hlc BLOB NOT NULL);
"
);

/// Schema version 2: the snapshot stage (`StorageCommand::StageShared`), shaped like `shared`.
const V2: &str = "
CREATE TABLE staged (
    model     TEXT NOT NULL,
    uuid      BLOB NOT NULL,
    hlc       BLOB NOT NULL,
    registers BLOB NOT NULL,
    PRIMARY KEY (model, uuid)
) WITHOUT ROWID;
";

/// The current shape of the device-owned record tables and the catch-up index.
#[cfg(feature = "bench")]
pub(crate) const OWNED_TABLE: &str = owned_table_v1!();

/// Brings a database at `from` up to [`SCHEMA_VERSION`] inside `tx`.
pub(crate) fn migrate(tx: &Transaction<'_>, from: i64) -> rusqlite::Result<()> {
    for sql in MIGRATIONS
        .iter()
        .skip(usize::try_from(from).unwrap_or(usize::MAX))
    {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// The order-preserving `i64` encoding of a `u64` (see the module docs).
pub(crate) const fn enc_u64(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

/// Inverse of [`enc_u64`].
pub(crate) const fn dec_u64(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// Length of an encoded HLC.
pub(crate) const HLC_LEN: usize = 28;

/// The order-preserving blob encoding of an HLC (see the module docs).
pub(crate) fn enc_hlc(h: &Hlc) -> [u8; HLC_LEN] {
    let mut out = [0u8; HLC_LEN];
    out[..8].copy_from_slice(&h.time_ms.to_be_bytes());
    out[8..12].copy_from_slice(&h.counter.to_be_bytes());
    out[12..].copy_from_slice(h.device.0.as_bytes());
    out
}

/// Inverse of [`enc_hlc`].
pub(crate) fn dec_hlc(table: &'static str, b: &[u8]) -> Result<Hlc, SqliteError> {
    let b: &[u8; HLC_LEN] = b
        .try_into()
        .map_err(|_| SqliteError::row(table, format!("hlc of {} bytes", b.len())))?;
    let mut time = [0u8; 8];
    time.copy_from_slice(&b[..8]);
    let mut counter = [0u8; 4];
    counter.copy_from_slice(&b[8..12]);
    let mut device = [0u8; 16];
    device.copy_from_slice(&b[12..]);
    Ok(Hlc::new(
        u64::from_be_bytes(time),
        u32::from_be_bytes(counter),
        DeviceId(Uuid::from_bytes(device)),
    ))
}

/// A 16-byte id from a blob.
pub(crate) fn dec_uuid(table: &'static str, b: &[u8]) -> Result<Uuid, SqliteError> {
    Uuid::from_slice(b).map_err(|_| SqliteError::row(table, format!("id of {} bytes", b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_encoding_preserves_order_over_the_whole_range() {
        let vs = [
            0,
            1,
            2,
            (1 << 63) - 1,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        for w in vs.windows(2) {
            assert!(enc_u64(w[0]) < enc_u64(w[1]), "{} vs {}", w[0], w[1]);
        }
        for v in vs {
            assert_eq!(dec_u64(enc_u64(v)), v);
        }
    }

    #[test]
    fn hlc_encoding_preserves_order_and_round_trips() {
        let d1 = DeviceId::from_u128(1);
        let d2 = DeviceId::from_u128(u128::MAX);
        let hs = [
            Hlc::ZERO,
            Hlc::new(0, 0, d1),
            Hlc::new(0, 1, DeviceId::NIL),
            Hlc::new(0, u32::MAX, d2),
            Hlc::new(1, 0, DeviceId::NIL),
            Hlc::new(u64::MAX, u32::MAX, d1),
            Hlc::new(u64::MAX, u32::MAX, d2),
        ];
        for w in hs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(enc_hlc(&w[0]) < enc_hlc(&w[1]));
        }
        for h in hs {
            assert_eq!(dec_hlc("t", &enc_hlc(&h)).ok(), Some(h));
        }
        assert!(matches!(
            dec_hlc("t", &[1, 2, 3]),
            Err(SqliteError::CorruptRow { .. })
        ));
    }
}
