//! [`SqliteStore`]: the SQLite implementation of [`StorageBackend`].

use crate::error::{OpenError, SqliteError};
use crate::schema::{self, dec_hlc, dec_u64, dec_uuid, enc_hlc, enc_u64};
use hybridsync_core::empty_record;
use hybridsync_core::Fnv64;
use hybridsync_core::SharedKey;
use hybridsync_core::{
    DeviceId, Hlc, OwnedRecord, ReadId, Restored, SharedChange, SharedRecord, StorageBackend,
    StorageCommand, StorageDone, VersionVector, MEMBER_MODEL,
};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

mod reads;

/// Page cache size: `PRAGMA cache_size = -65536` (64 MiB); random-key inserts gain ~30 %.
const CACHE_SIZE_KIB: i64 = 65_536;
/// Page size of new databases. 8 KiB pages made bulk catch-up inserts (UUIDv7 keys) ~20-50 %
/// faster than 4 KiB here, and did not slow random keys.
const PAGE_SIZE: i64 = 8192;
/// WAL pages between automatic checkpoints (~32 MiB of WAL): fewer checkpoints during bulk
/// catch-up, each page written back once per checkpoint.
const WAL_AUTOCHECKPOINT: i64 = 4000;
/// The WAL file is truncated back to this size after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// The connection settings every hybridsync database runs with (the benchmark's raw baseline
/// uses the same): page size (on a `fresh` database), WAL (for a `file`), `synchronous =
/// NORMAL`, the page cache, checkpoint interval, in-memory temporary tables.
pub(crate) fn tune(conn: &Connection, fresh: bool, file: bool) -> rusqlite::Result<()> {
    if fresh {
        // Only possible before the first table exists and before WAL is on.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    }
    if file {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -CACHE_SIZE_KIB)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// The SQLite storage backend.
///
/// - One database file per replica, in WAL mode with `synchronous = NORMAL`.
/// - [`SqliteStore::execute`] runs a whole batch in one `IMMEDIATE` transaction (group commit):
///   either every command of the batch takes effect or none does.
/// - Prepared statements are cached; every merge decision is the core's: device-owned upserts
///   mirror [`hybridsync_core::supersedes`] in SQL (`WHERE excluded.seq > owned.seq`),
///   shared records are merged with [`SharedRecord::merge`] in Rust and written back.
/// - The schema ([`SCHEMA_VERSION`](crate::SCHEMA_VERSION)) is versioned with `PRAGMA user_version` and migrated on
///   open; a newer, foreign or damaged file is refused and never written.
/// - One store per file: a database file is held through an exclusive lock on `<file>.lock`
///   for the store's lifetime (see [`SqliteStore::open`]).
///
/// # Durability
///
/// With WAL and `synchronous = NORMAL` (the default), a batch whose `execute` returned `Ok`
/// survives the process being killed at any point: the WAL frames are written before the
/// commit returns (the crash test kills a writer with SIGKILL mid-stream). It does **not**
/// survive an OS crash or power loss for certain: the last committed batches may roll back
/// (consistently, never half a batch), because the WAL is only fsynced at checkpoints. The
/// storage contract's "durable before any later send" then does not hold for those batches:
/// peers may already hold acks, or the device's own changes, that the device no longer has
/// (its own sequence head would move back). So a batch holding this device's own writes (the
/// engine marks it with [`StorageCommand::FullSync`]) is committed with `synchronous = FULL`:
/// what the device wrote and sent is never rolled back, and no sequence number is issued
/// twice. What a power loss can still roll back is what the device received (a watermark, log
/// entries it may have acknowledged): it fetches them again, or takes a snapshot if peers
/// pruned them meanwhile. Call [`SqliteStore::set_full_sync`] (`synchronous = FULL`, one
/// fsync per batch) to make every batch survive a power loss.
///
/// # Reads and damaged rows
///
/// A read whose rows cannot be decoded completes as [`StorageDone::Failed`] (the engine answers
/// the peer with an error) instead of failing the whole batch; a write that would have to merge
/// into a damaged row fails the batch with [`SqliteError::CorruptRow`], so nothing is ever
/// silently overwritten.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    ids: Ids,
    /// `synchronous = FULL` for every batch ([`SqliteStore::set_full_sync`]); otherwise only
    /// for batches holding [`StorageCommand::FullSync`].
    full_sync: bool,
    /// The exclusive lock on `<file>.lock` (none in memory). Declared after `conn`: fields
    /// drop in order, so the connection is closed before the lock is released.
    _lock: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it to
    /// [`crate::SCHEMA_VERSION`].
    ///
    /// Refuses, without writing anything: a file that is not an SQLite database
    /// ([`OpenError::NotADatabase`]), another application's database
    /// ([`OpenError::ForeignDatabase`]), a database from a newer hybridsync
    /// ([`OpenError::NewerSchema`]), a database or directory that is not writable
    /// ([`OpenError::ReadOnly`]; WAL needs its `-wal` and `-shm` files beside the database).
    ///
    /// One store per file: the store holds an exclusive lock on `<path>.lock` (beside the
    /// database once symbolic links are resolved; created if missing, empty, never deleted)
    /// until it is dropped. While it lives, another open of the same file is refused with
    /// [`OpenError::Locked`], whether it comes from another process or from this one (the
    /// lock belongs to the open file, not to the process), and under any path that resolves
    /// to the same file (not through a hard link). The operating system releases the lock of
    /// a process that dies, so a killed process never blocks the next open.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, OpenError> {
        let path = path.as_ref().to_path_buf();
        check_writable(&path)?;
        let lock = lock(&path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| OpenError::from_sqlite(&path, e))?;
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| OpenError::from_sqlite(&path, e))?
        {
            return Err(OpenError::ReadOnly {
                path,
                reason: "SQLite opened the file read-only".to_owned(),
            });
        }
        Self::init(conn, path, Some(lock))
    }

    /// Opens a private in-memory database (tests, simulations). Nothing is durable.
    pub fn open_in_memory() -> Result<SqliteStore, OpenError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| OpenError::from_sqlite(&path, e))?;
        Self::init(conn, path, None)
    }

    /// `lock`: the file lock of a database file (`None`: in memory).
    fn init(conn: Connection, path: PathBuf, lock: Option<File>) -> Result<SqliteStore, OpenError> {
        let file = lock.is_some();
        let sql = |e| OpenError::from_sqlite(&path, e);
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // Identify the file before writing anything to it.
        let application_id: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(sql)?;
        if application_id != schema::APPLICATION_ID
            && (application_id != 0 || version != 0 || objects != 0)
        {
            return Err(OpenError::ForeignDatabase {
                path,
                application_id,
            });
        }
        if version > schema::SCHEMA_VERSION {
            return Err(OpenError::NewerSchema {
                path,
                found: version,
                supported: schema::SCHEMA_VERSION,
            });
        }
        let fresh = application_id == 0 && version == 0 && objects == 0;
        tune(&conn, fresh, file).map_err(sql)?;
        if file {
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .map_err(sql)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(OpenError::NoWal { path, mode });
            }
        }
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = SqliteStore {
            conn,
            path,
            ids: Ids::default(),
            full_sync: false,
            _lock: lock,
        };
        if version < schema::SCHEMA_VERSION {
            let path = store.path.clone();
            let tx = store
                .conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(|e| OpenError::from_sqlite(&path, e))?;
            schema::migrate(&tx, version).map_err(|e| OpenError::from_sqlite(&path, e))?;
            tx.commit().map_err(|e| OpenError::from_sqlite(&path, e))?;
        }
        Ok(store)
    }

    /// The database path (`:memory:` for an in-memory database).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chooses `synchronous = FULL` (`true`: every committed batch also survives a power loss,
    /// at the cost of an fsync per batch) or the default `NORMAL` (`false`).
    pub fn set_full_sync(&mut self, full: bool) -> Result<(), SqliteError> {
        let mode = if full { "FULL" } else { "NORMAL" };
        self.conn
            .pragma_update(None, "synchronous", mode)
            .map_err(|e| self.err(e))?;
        self.full_sync = full;
        Ok(())
    }

    /// Runs `PRAGMA integrity_check`; [`SqliteError::Corrupt`] with SQLite's report unless the
    /// database is sound.
    pub fn check_integrity(&self) -> Result<(), SqliteError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.err(e))?;
        if lines == ["ok"] {
            Ok(())
        } else {
            Err(SqliteError::Corrupt {
                path: self.path.clone(),
                detail: lines.join("; "),
            })
        }
    }

    /// Executes `commands` in order as one transaction and returns the read completions in
    /// order. See [`StorageBackend::execute`].
    pub fn execute(
        &mut self,
        commands: Vec<StorageCommand>,
    ) -> Result<Vec<StorageDone>, SqliteError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        // This device's own writes survive a power loss too: a sequence number once sent is
        // never issued again (the engine marks their batch with `FullSync`).
        let full = !self.full_sync && commands.contains(&StorageCommand::FullSync);
        if full {
            self.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(|e| self.err(e))?;
        }
        let result = self.execute_batch(&commands);
        if full {
            // Should this fail, the connection stays at FULL: slower, never less safe (and the
            // batch did commit, so it must not be reported as failed).
            let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
        }
        if result.is_err() {
            // The transaction rolled back: ids interned during it may not exist.
            self.ids.clear();
        }
        result
    }

    fn execute_batch(
        &mut self,
        commands: &[StorageCommand],
    ) -> Result<Vec<StorageDone>, SqliteError> {
        let SqliteStore {
            conn, path, ids, ..
        } = self;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| SqliteError::from_sqlite(path, e))?;
        let mut done = Vec::new();
        for cmd in commands {
            if let Some(d) = apply(&tx, ids, cmd).map_err(|e| e.at(path))? {
                done.push(d);
            }
        }
        tx.commit().map_err(|e| SqliteError::from_sqlite(path, e))?;
        Ok(done)
    }

    /// Loads the engine's durable state. See [`StorageBackend::load_restored`].
    pub fn load_restored(&mut self) -> Result<Restored, SqliteError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| SqliteError::from_sqlite(path, e))?;
        let restored = restored(&tx).map_err(|e| e.at(path))?;
        tx.commit().map_err(|e| SqliteError::from_sqlite(path, e))?;
        Ok(restored)
    }

    /// A digest of the replicated content, equal to
    /// [`MemState::content_digest`](hybridsync_core::MemState::content_digest) of a
    /// store holding the same records: every device-owned record (tombstones included) in key
    /// order, then every shared register set in key order.
    pub fn content_digest(&mut self) -> Result<u64, SqliteError> {
        let SqliteStore {
            conn, path, ids, ..
        } = self;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| SqliteError::from_sqlite(path, e))?;
        let digest = digest(&tx, ids).map_err(|e| e.at(path))?;
        tx.commit().map_err(|e| SqliteError::from_sqlite(path, e))?;
        Ok(digest)
    }

    /// The underlying connection, for diagnostics and tests. Writing through it bypasses the
    /// merge rules.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, e: rusqlite::Error) -> SqliteError {
        SqliteError::from_sqlite(&self.path, e)
    }
}

impl StorageBackend for SqliteStore {
    type Error = SqliteError;

    fn execute(&mut self, commands: Vec<StorageCommand>) -> Result<Vec<StorageDone>, SqliteError> {
        SqliteStore::execute(self, commands)
    }

    fn load_restored(&mut self) -> Result<Restored, SqliteError> {
        SqliteStore::load_restored(self)
    }
}

/// Refuses paths SQLite could open only read-only, or where WAL could not create its files.
/// Checked from the permission bits, so the answer is the same for every user (root included).
fn check_writable(path: &Path) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().readonly() => {
            return Err(OpenError::ReadOnly {
                path: path.to_path_buf(),
                reason: "the file is not writable".to_owned(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let m = std::fs::metadata(dir).map_err(io)?;
    if m.permissions().readonly() {
        return Err(OpenError::ReadOnly {
            path: path.to_path_buf(),
            reason: format!(
                "the directory {} is not writable (WAL keeps -wal and -shm files beside the database)",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Takes the exclusive lock of the database at `path`: `<path>.lock`, beside the file its
/// path resolves to (so two names of one file share one lock).
fn lock(path: &Path) -> Result<File, OpenError> {
    let io = |p: &Path, source| OpenError::Io {
        path: p.to_path_buf(),
        source,
    };
    let real = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A new database: resolve its directory instead.
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(io(path, e));
            };
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map_err(|e| io(path, e))?
                .join(name)
        }
        Err(e) => return Err(io(path, e)),
    };
    let mut lock = real.into_os_string();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| io(&lock, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(OpenError::Locked {
            path: path.to_path_buf(),
            lock,
        }),
        Err(TryLockError::Error(e)) => Err(io(&lock, e)),
    }
}

/// An error inside a transaction: an SQLite error (classified later with the path) or a row
/// that cannot be decoded.
enum TxError {
    Sql(rusqlite::Error),
    Row(SqliteError),
}

impl TxError {
    fn at(self, path: &Path) -> SqliteError {
        match self {
            TxError::Sql(e) => SqliteError::from_sqlite(path, e),
            TxError::Row(e) => e,
        }
    }
}

impl From<rusqlite::Error> for TxError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        match e {
            // A stored value of the wrong type or range: the row is damaged, not the database.
            E::InvalidColumnType(..)
            | E::FromSqlConversionFailure(..)
            | E::IntegralValueOutOfRange(..)
            | E::Utf8Error(..) => TxError::Row(SqliteError::row("(column type)", e)),
            e => TxError::Sql(e),
        }
    }
}

/// Column `i` of `row` as a blob; any other type is a damaged row of `table`.
fn blob<'a>(row: &'a rusqlite::Row<'_>, i: usize, table: &'static str) -> TxResult<&'a [u8]> {
    row.get_ref(i)?
        .as_blob()
        .map_err(|e| TxError::Row(SqliteError::row(table, format!("column {i}: {e}"))))
}

impl From<SqliteError> for TxError {
    fn from(e: SqliteError) -> Self {
        TxError::Row(e)
    }
}

type TxResult<T> = Result<T, TxError>;

fn apply(
    tx: &Transaction<'_>,
    ids: &mut Ids,
    cmd: &StorageCommand,
) -> TxResult<Option<StorageDone>> {
    match cmd {
        StorageCommand::PutOwned(records) => put_owned(tx, ids, records)?,
        StorageCommand::MergeShared(records) => {
            for r in records {
                merge_shared(tx, Registers::Shared, r)?;
            }
        }
        StorageCommand::StageShared(records) => {
            for r in records {
                merge_shared(tx, Registers::Staged, r)?;
            }
        }
        StorageCommand::ApplyStaged => apply_staged(tx)?,
        // Handled around the transaction (`execute_batch`).
        StorageCommand::FullSync => {}
        StorageCommand::ClearStaged => {
            tx.prepare_cached("DELETE FROM staged")?.execute([])?;
        }
        StorageCommand::AppendLog(entries) => {
            for e in entries {
                append_log(tx, e)?;
            }
        }
        StorageCommand::SetWatermark { owner, seq } => {
            // Like the reference, a watermark of 0 is still recorded.
            tx.prepare_cached(
                "INSERT INTO watermarks (owner, seq) VALUES (?1, ?2)
                 ON CONFLICT (owner) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![owner.0.as_bytes(), enc_u64(*seq)])?;
        }
        StorageCommand::SetHlc(h) => {
            tx.prepare_cached(
                "INSERT INTO hlc (id, hlc) VALUES (0, ?1)
                 ON CONFLICT (id) DO UPDATE SET hlc = excluded.hlc WHERE excluded.hlc > hlc.hlc",
            )?
            .execute(params![&enc_hlc(h)[..]])?;
        }
        StorageCommand::SetAck { member, vv } => {
            let blob = postcard::to_stdvec(vv).map_err(|e| SqliteError::row("acks", e))?;
            tx.prepare_cached("INSERT OR REPLACE INTO acks (member, vv) VALUES (?1, ?2)")?
                .execute(params![member.0.as_bytes(), blob])?;
        }
        StorageCommand::PruneLog { origin, through } => {
            tx.prepare_cached("DELETE FROM log WHERE origin = ?1 AND seq <= ?2")?
                .execute(params![origin.0.as_bytes(), enc_u64(*through)])?;
            raise(tx, VvTable::Horizon, *origin, *through)?;
            raise(tx, VvTable::Vv, *origin, *through)?;
        }
        StorageCommand::ReadOwned {
            id,
            owner,
            after,
            upto,
            limit,
            max_bytes,
        } => {
            let page = read_owned(tx, ids, *owner, *after, *upto, *limit, *max_bytes);
            return read_result(*id, page, |(records, more)| StorageDone::Owned {
                id: *id,
                records,
                more,
            });
        }
        StorageCommand::ReadLog {
            id,
            since,
            limit,
            max_bytes,
        } => {
            let page = read_log(tx, since, *limit, *max_bytes);
            return read_result(*id, page, |(entries, more)| StorageDone::Log {
                id: *id,
                entries,
                more,
            });
        }
        StorageCommand::ReadSharedSnapshot {
            id,
            after,
            limit,
            max_bytes,
        } => {
            let page = read_snapshot(tx, after.as_ref(), *limit, *max_bytes);
            return read_result(*id, page, |(records, more)| StorageDone::Snapshot {
                id: *id,
                records,
                more,
            });
        }
    }
    Ok(None)
}

/// A read's completion: a damaged row fails only the read; an SQLite error fails the batch.
fn read_result<T>(
    id: ReadId,
    page: TxResult<T>,
    done: impl FnOnce(T) -> StorageDone,
) -> TxResult<Option<StorageDone>> {
    match page {
        Ok(p) => Ok(Some(done(p))),
        Err(TxError::Row(_)) => Ok(Some(StorageDone::Failed { id })),
        Err(e) => Err(e),
    }
}

/// Records per multi-row `INSERT` of [`put_owned`]: one statement step per this many rows cuts
/// the per-statement cost (bind, step, reset) that dominates bulk catch-up, ~20 % more records
/// per CPU-second here than one statement per row.
const ROWS_PER_UPSERT: usize = 64;

/// The conditional upsert of `rows` device-owned records in one statement.
///
/// It is `supersedes` in SQL: a version replaces the stored one only if its seq is higher
/// (tombstones included). The conformance suite holds the two together. Rows of one statement
/// are inserted in order, so a later row with the key of an earlier one is judged against it,
/// exactly as with one statement per row.
fn upsert_owned_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO owned (owner, model, uuid, seq, hlc_ms, hlc_counter, hlc_device, data) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let p = row * 8;
        sql.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8
        ));
    }
    sql.push_str(
        " ON CONFLICT (owner, model, uuid) DO UPDATE
         SET seq = excluded.seq, hlc_ms = excluded.hlc_ms, hlc_counter = excluded.hlc_counter,
             hlc_device = excluded.hlc_device, data = excluded.data
         WHERE excluded.seq > owned.seq",
    );
    sql
}

fn put_owned(tx: &Transaction<'_>, ids: &mut Ids, records: &[OwnedRecord]) -> TxResult<()> {
    // Batches are usually one owner's records of a few models: skip the lookups for repeats.
    let mut last_owner: Option<(DeviceId, i64)> = None;
    let mut last_model: Option<(&str, i64)> = None;
    let mut rows: Vec<OwnedRow<'_>> = Vec::with_capacity(records.len());
    for r in records {
        let owner = match last_owner {
            Some((d, id)) if d == r.owner => id,
            _ => {
                let id = ids.intern_device(tx, r.owner)?;
                last_owner = Some((r.owner, id));
                id
            }
        };
        let model = match last_model {
            Some((m, id)) if m == r.model => id,
            _ => {
                let id = ids.intern_model(tx, &r.model)?;
                last_model = Some((&r.model, id));
                id
            }
        };
        let hlc_device = if r.hlc.device == r.owner {
            owner
        } else {
            ids.intern_device(tx, r.hlc.device)?
        };
        rows.push((owner, model, hlc_device, r));
    }
    static UPSERT_CHUNK: LazyLock<String> = LazyLock::new(|| upsert_owned_sql(ROWS_PER_UPSERT));
    static UPSERT_ONE: LazyLock<String> = LazyLock::new(|| upsert_owned_sql(1));
    let mut chunks = rows.chunks_exact(ROWS_PER_UPSERT);
    if chunks.len() > 0 {
        let mut stmt = tx.prepare_cached(&UPSERT_CHUNK)?;
        for chunk in chunks.by_ref() {
            bind_owned_rows(&mut stmt, chunk)?;
            stmt.raw_execute()?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = tx.prepare_cached(&UPSERT_ONE)?;
        for row in rest.chunks(1) {
            bind_owned_rows(&mut stmt, row)?;
            stmt.raw_execute()?;
        }
    }
    Ok(())
}

/// A record to upsert with its interned owner, model and stamp device.
type OwnedRow<'a> = (i64, i64, i64, &'a OwnedRecord);

/// Binds `rows` to the parameters of an [`upsert_owned_sql`] statement of as many rows.
fn bind_owned_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    rows: &[OwnedRow<'_>],
) -> TxResult<()> {
    for (i, &(owner, model, hlc_device, r)) in rows.iter().enumerate() {
        let p = i * 8;
        stmt.raw_bind_parameter(p + 1, owner)?;
        stmt.raw_bind_parameter(p + 2, model)?;
        stmt.raw_bind_parameter(p + 3, r.uuid.as_bytes())?;
        stmt.raw_bind_parameter(p + 4, enc_u64(r.seq))?;
        stmt.raw_bind_parameter(p + 5, enc_u64(r.hlc.time_ms))?;
        stmt.raw_bind_parameter(p + 6, r.hlc.counter)?;
        stmt.raw_bind_parameter(p + 7, hlc_device)?;
        stmt.raw_bind_parameter(p + 8, r.data.as_deref())?;
    }
    Ok(())
}

/// The two tables of shared registers: the records themselves and the snapshot stage.
#[derive(Clone, Copy)]
enum Registers {
    Shared,
    Staged,
}

impl Registers {
    fn select(self) -> &'static str {
        match self {
            Registers::Shared => "SELECT registers FROM shared WHERE model = ?1 AND uuid = ?2",
            Registers::Staged => "SELECT registers FROM staged WHERE model = ?1 AND uuid = ?2",
        }
    }

    fn upsert(self) -> &'static str {
        match self {
            Registers::Shared => {
                "INSERT INTO shared (model, uuid, hlc, registers) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (model, uuid) DO UPDATE SET hlc = excluded.hlc, registers = excluded.registers"
            }
            Registers::Staged => {
                "INSERT INTO staged (model, uuid, hlc, registers) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (model, uuid) DO UPDATE SET hlc = excluded.hlc, registers = excluded.registers"
            }
        }
    }
}

/// Merges every staged record into `shared`, then empties the stage. Rows are taken in key
/// order a chunk at a time, so a large snapshot never sits in memory whole.
fn apply_staged(tx: &Transaction<'_>) -> TxResult<()> {
    const CHUNK: i64 = 512;
    loop {
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT model, uuid, registers FROM staged ORDER BY model, uuid LIMIT ?1",
            )?
            .query_map([CHUNK], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        for (model, uuid, registers) in &rows {
            let uuid = uuid::Uuid::from_slice(uuid).map_err(|e| SqliteError::row("staged", e))?;
            let record = decode_shared(registers, &(model.clone(), uuid))?;
            merge_shared(tx, Registers::Shared, &record)?;
            tx.prepare_cached("DELETE FROM staged WHERE model = ?1 AND uuid = ?2")?
                .execute(params![model, uuid.as_bytes()])?;
        }
    }
}

/// Merges `incoming` into the stored registers of its record in `table` with
/// [`SharedRecord::merge`], creating the record (from [`empty_record`], as the reference does)
/// if absent.
fn merge_shared(tx: &Transaction<'_>, table: Registers, incoming: &SharedRecord) -> TxResult<()> {
    let key = incoming.key();
    let stored: Option<Vec<u8>> = tx
        .prepare_cached(table.select())?
        .query_row(params![key.0, key.1.as_bytes()], |r| r.get(0))
        .optional()?;
    let record = match stored {
        Some(bytes) => {
            let mut current = decode_shared(&bytes, &key)?;
            if !current.merge(incoming) {
                return Ok(());
            }
            current
        }
        None => {
            let mut fresh = empty_record(&key);
            fresh.merge(incoming);
            fresh
        }
    };
    let blob = postcard::to_stdvec(&record).map_err(|e| SqliteError::row("shared", e))?;
    tx.prepare_cached(table.upsert())?.execute(params![
        key.0,
        key.1.as_bytes(),
        &enc_hlc(&record.max_hlc())[..],
        blob
    ])?;
    Ok(())
}

/// Appends one log entry: merges it into its record, stores it (replacing an entry with the
/// same `(origin, seq)`, as the reference does) and raises the version vector.
fn append_log(tx: &Transaction<'_>, e: &SharedChange) -> TxResult<()> {
    merge_shared(tx, Registers::Shared, &e.to_record())?;
    let blob = postcard::to_stdvec(e).map_err(|err| SqliteError::row("log", err))?;
    tx.prepare_cached(
        "INSERT INTO log (origin, seq, hlc, entry) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (origin, seq) DO UPDATE SET hlc = excluded.hlc, entry = excluded.entry",
    )?
    .execute(params![
        e.origin.0.as_bytes(),
        enc_u64(e.seq),
        &enc_hlc(&e.hlc)[..],
        blob
    ])?;
    raise(tx, VvTable::Vv, e.origin, e.seq)
}

#[derive(Clone, Copy)]
enum VvTable {
    Vv,
    Horizon,
}

/// Raises a version-vector entry (0 is absent, as in [`VersionVector`]).
fn raise(tx: &Transaction<'_>, table: VvTable, origin: DeviceId, seq: u64) -> TxResult<()> {
    if seq == 0 {
        return Ok(());
    }
    let sql = match table {
        VvTable::Vv => {
            "INSERT INTO vv (origin, seq) VALUES (?1, ?2)
             ON CONFLICT (origin) DO UPDATE SET seq = max(seq, excluded.seq)"
        }
        VvTable::Horizon => {
            "INSERT INTO horizon (origin, seq) VALUES (?1, ?2)
             ON CONFLICT (origin) DO UPDATE SET seq = max(seq, excluded.seq)"
        }
    };
    tx.prepare_cached(sql)?
        .execute(params![origin.0.as_bytes(), enc_u64(seq)])?;
    Ok(())
}

/// The small integer ids `owned` stores instead of device ids and model names, cached.
///
/// Ids are created inside the batch's transaction; if the batch fails, the cache is cleared
/// (the rows it points to were rolled back).
#[derive(Default)]
struct Ids {
    device_ids: HashMap<DeviceId, i64>,
    devices: HashMap<i64, DeviceId>,
    model_ids: HashMap<String, i64>,
    models: HashMap<i64, String>,
}

impl Ids {
    fn clear(&mut self) {
        *self = Ids::default();
    }

    /// The id of `device`, if it has one.
    fn device_id(&mut self, tx: &Transaction<'_>, device: DeviceId) -> TxResult<Option<i64>> {
        if let Some(id) = self.device_ids.get(&device) {
            return Ok(Some(*id));
        }
        let id: Option<i64> = tx
            .prepare_cached("SELECT id FROM devices WHERE device = ?1")?
            .query_row(params![device.0.as_bytes()], |r| r.get(0))
            .optional()?;
        if let Some(id) = id {
            self.device_ids.insert(device, id);
            self.devices.insert(id, device);
        }
        Ok(id)
    }

    /// The id of `device`, created if needed.
    fn intern_device(&mut self, tx: &Transaction<'_>, device: DeviceId) -> TxResult<i64> {
        if let Some(id) = self.device_id(tx, device)? {
            return Ok(id);
        }
        tx.prepare_cached("INSERT INTO devices (device) VALUES (?1)")?
            .execute(params![device.0.as_bytes()])?;
        let id = tx.last_insert_rowid();
        self.device_ids.insert(device, id);
        self.devices.insert(id, device);
        Ok(id)
    }

    /// The id of `model`, created if needed.
    fn intern_model(&mut self, tx: &Transaction<'_>, model: &str) -> TxResult<i64> {
        if let Some(id) = self.model_ids.get(model) {
            return Ok(*id);
        }
        let found: Option<i64> = tx
            .prepare_cached("SELECT id FROM models WHERE name = ?1")?
            .query_row(params![model], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                tx.prepare_cached("INSERT INTO models (name) VALUES (?1)")?
                    .execute(params![model])?;
                tx.last_insert_rowid()
            }
        };
        self.model_ids.insert(model.to_owned(), id);
        self.models.insert(id, model.to_owned());
        Ok(id)
    }

    /// The device an id stands for; a dangling id is a damaged row.
    fn device(&mut self, tx: &Transaction<'_>, id: i64) -> TxResult<DeviceId> {
        if let Some(d) = self.devices.get(&id) {
            return Ok(*d);
        }
        let bytes: Option<Vec<u8>> = tx
            .prepare_cached("SELECT device FROM devices WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        let Some(bytes) = bytes else {
            return Err(SqliteError::row("owned", format!("unknown device id {id}")).into());
        };
        let device = DeviceId(dec_uuid("devices", &bytes)?);
        self.device_ids.insert(device, id);
        self.devices.insert(id, device);
        Ok(device)
    }

    /// The model name an id stands for; a dangling id is a damaged row.
    fn model(&mut self, tx: &Transaction<'_>, id: i64) -> TxResult<String> {
        if let Some(m) = self.models.get(&id) {
            return Ok(m.clone());
        }
        let name: Option<String> = tx
            .prepare_cached("SELECT name FROM models WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        let Some(name) = name else {
            return Err(SqliteError::row("owned", format!("unknown model id {id}")).into());
        };
        self.model_ids.insert(name.clone(), id);
        self.models.insert(id, name.clone());
        Ok(name)
    }
}

/// `(id, value)` rows of an id table, values decoded by `decode`.
fn id_table<T>(
    tx: &Transaction<'_>,
    sql: &str,
    decode: impl Fn(&[u8]) -> Result<T, SqliteError>,
) -> TxResult<Vec<(i64, T)>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push((row.get(0)?, decode(blob(row, 1, "devices")?)?));
    }
    Ok(out)
}

/// Fills a page exactly as the reference does: at most `limit` items (0 counts as 1) and,
/// past the first, at most `max_bytes` of budget size; `more` when an item was left out.
struct Pager<T> {
    limit: usize,
    max_bytes: usize,
    bytes: usize,
    items: Vec<T>,
}

impl<T> Pager<T> {
    fn new(limit: u32, max_bytes: usize) -> Self {
        Pager {
            limit: limit.max(1) as usize,
            max_bytes,
            bytes: 0,
            items: Vec::new(),
        }
    }

    /// Takes `item` if it fits; `false` means the page is full (and `more` is true).
    fn offer(&mut self, item: T, size: usize) -> bool {
        if self.items.len() >= self.limit
            || (!self.items.is_empty() && self.bytes.saturating_add(size) > self.max_bytes)
        {
            return false;
        }
        self.bytes = self.bytes.saturating_add(size);
        self.items.push(item);
        true
    }

    /// How many more rows to fetch to fill the page and learn whether more exist.
    fn fetch(&self) -> i64 {
        i64::try_from(self.limit - self.items.len() + 1).unwrap_or(i64::MAX)
    }
}

fn read_owned(
    tx: &Transaction<'_>,
    ids: &mut Ids,
    owner: DeviceId,
    after: u64,
    upto: u64,
    limit: u32,
    max_bytes: usize,
) -> TxResult<(Vec<OwnedRecord>, bool)> {
    let mut pager = Pager::new(limit, max_bytes);
    // The lower bound is exclusive, as in the reference: nothing lies above `u64::MAX`.
    let Some(lo) = after.checked_add(1) else {
        return Ok((Vec::new(), false));
    };
    let Some(owner_id) = ids.device_id(tx, owner)? else {
        return Ok((Vec::new(), false));
    };
    if lo > upto {
        return Ok((Vec::new(), false));
    }
    let mut stmt = tx.prepare_cached(
        "SELECT seq, hlc_ms, hlc_counter, hlc_device, model, uuid, data FROM owned
         WHERE owner = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![owner_id, enc_u64(lo), enc_u64(upto), pager.fetch()])?;
    while let Some(row) = rows.next()? {
        let record = OwnedRecord {
            owner,
            seq: dec_u64(row.get(0)?),
            hlc: Hlc::new(
                dec_u64(row.get(1)?),
                row.get(2)?,
                ids.device(tx, row.get(3)?)?,
            ),
            model: ids.model(tx, row.get(4)?)?,
            uuid: dec_uuid("owned", blob(row, 5, "owned")?)?,
            data: row.get(6)?,
        };
        let size = record.budget_size();
        if !pager.offer(record, size) {
            return Ok((pager.items, true));
        }
    }
    Ok((pager.items, false))
}

fn read_log(
    tx: &Transaction<'_>,
    since: &VersionVector,
    limit: u32,
    max_bytes: usize,
) -> TxResult<(Vec<SharedChange>, bool)> {
    let mut pager = Pager::new(limit, max_bytes);
    let mut next_origin =
        tx.prepare_cached("SELECT origin FROM log WHERE origin > ?1 ORDER BY origin LIMIT 1")?;
    let mut entries = tx.prepare_cached(
        "SELECT seq, entry FROM log WHERE origin = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    // Every origin present in the log, in order (an empty blob sorts before every id).
    let mut cursor: Vec<u8> = Vec::new();
    loop {
        let origin: Option<Vec<u8>> = next_origin
            .query_row(params![cursor], |r| r.get(0))
            .optional()?;
        let Some(origin) = origin else {
            return Ok((pager.items, false));
        };
        let device = DeviceId(dec_uuid("log", &origin)?);
        let mut rows = entries.query(params![origin, enc_u64(since.get(device)), pager.fetch()])?;
        while let Some(row) = rows.next()? {
            let seq = dec_u64(row.get(0)?);
            let entry: SharedChange = postcard::from_bytes(blob(row, 1, "log")?)
                .map_err(|e| SqliteError::row("log", e))?;
            if entry.origin != device || entry.seq != seq {
                return Err(SqliteError::row(
                    "log",
                    format!(
                        "entry {}#{} stored under {device}#{seq}",
                        entry.origin, entry.seq
                    ),
                )
                .into());
            }
            let size = entry.budget_size();
            if !pager.offer(entry, size) {
                return Ok((pager.items, true));
            }
        }
        cursor = origin;
    }
}

fn read_snapshot(
    tx: &Transaction<'_>,
    after: Option<&SharedKey>,
    limit: u32,
    max_bytes: usize,
) -> TxResult<(Vec<SharedRecord>, bool)> {
    let mut pager = Pager::new(limit, max_bytes);
    let mut stmt;
    let mut rows = match after {
        None => {
            stmt = tx.prepare_cached(
                "SELECT model, uuid, registers FROM shared ORDER BY model, uuid LIMIT ?1",
            )?;
            stmt.query(params![pager.fetch()])?
        }
        Some((model, uuid)) => {
            stmt = tx.prepare_cached(
                "SELECT model, uuid, registers FROM shared
                 WHERE (model, uuid) > (?1, ?2) ORDER BY model, uuid LIMIT ?3",
            )?;
            stmt.query(params![model, uuid.as_bytes(), pager.fetch()])?
        }
    };
    while let Some(row) = rows.next()? {
        let key = (row.get(0)?, dec_uuid("shared", blob(row, 1, "shared")?)?);
        let record = decode_shared(blob(row, 2, "shared")?, &key)?;
        let size = record.budget_size();
        if !pager.offer(record, size) {
            return Ok((pager.items, true));
        }
    }
    Ok((pager.items, false))
}

fn decode_shared(bytes: &[u8], key: &SharedKey) -> Result<SharedRecord, SqliteError> {
    let record: SharedRecord =
        postcard::from_bytes(bytes).map_err(|e| SqliteError::row("shared", e))?;
    if record.model != key.0 || record.uuid != key.1 {
        return Err(SqliteError::row(
            "shared",
            format!(
                "registers of {}/{} stored under {}/{}",
                record.model, record.uuid, key.0, key.1
            ),
        ));
    }
    Ok(record)
}

fn restored(tx: &Transaction<'_>) -> TxResult<Restored> {
    let hlc = match tx
        .query_row("SELECT hlc FROM hlc WHERE id = 0", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .optional()?
    {
        Some(b) => dec_hlc("hlc", &b)?,
        None => Hlc::ZERO,
    };
    let mut watermarks = BTreeMap::new();
    for (owner, seq) in seq_table(tx, "watermarks", "SELECT owner, seq FROM watermarks")? {
        watermarks.insert(owner, seq);
    }
    let vv = seq_table(tx, "vv", "SELECT origin, seq FROM vv")?
        .into_iter()
        .collect();
    let horizon = seq_table(tx, "horizon", "SELECT origin, seq FROM horizon")?
        .into_iter()
        .collect();
    let mut acks = BTreeMap::new();
    {
        let mut stmt = tx.prepare_cached("SELECT member, vv FROM acks")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let member = DeviceId(dec_uuid("acks", blob(row, 0, "acks")?)?);
            let vv: VersionVector = postcard::from_bytes(blob(row, 1, "acks")?)
                .map_err(|e| SqliteError::row("acks", e))?;
            acks.insert(member, vv);
        }
    }
    let mut members = Vec::new();
    {
        let mut stmt =
            tx.prepare_cached("SELECT uuid, registers FROM shared WHERE model = ?1 ORDER BY uuid")?;
        let mut rows = stmt.query(params![MEMBER_MODEL])?;
        while let Some(row) = rows.next()? {
            let key = (
                MEMBER_MODEL.to_owned(),
                dec_uuid("shared", blob(row, 0, "shared")?)?,
            );
            members.push(decode_shared(blob(row, 1, "shared")?, &key)?);
        }
    }
    Ok(Restored {
        hlc,
        watermarks,
        vv,
        horizon,
        acks,
        members,
    })
}

fn seq_table(
    tx: &Transaction<'_>,
    table: &'static str,
    sql: &str,
) -> TxResult<Vec<(DeviceId, u64)>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id = DeviceId(dec_uuid(table, blob(row, 0, table)?)?);
        out.push((id, dec_u64(row.get(1)?)));
    }
    Ok(out)
}

fn digest(tx: &Transaction<'_>, ids: &mut Ids) -> TxResult<u64> {
    let mut h = Fnv64::default();
    // The reference order is (owner, model, uuid) by value; `owned` is keyed by interned ids,
    // so walk owners and models in value order and each (owner, model) range by uuid.
    let devices = id_table(tx, "SELECT id, device FROM devices ORDER BY device", |b| {
        dec_uuid("devices", b).map(DeviceId)
    })?;
    let models: Vec<(i64, String)> = {
        let mut stmt = tx.prepare_cached("SELECT id, name FROM models ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut stmt = tx.prepare_cached(
        "SELECT seq, hlc_ms, hlc_counter, hlc_device, uuid, data FROM owned
         WHERE owner = ?1 AND model = ?2 ORDER BY uuid",
    )?;
    for (owner_id, owner) in &devices {
        for (model_id, model) in &models {
            let mut rows = stmt.query(params![owner_id, model_id])?;
            while let Some(row) = rows.next()? {
                let record = OwnedRecord {
                    owner: *owner,
                    seq: dec_u64(row.get(0)?),
                    hlc: Hlc::new(
                        dec_u64(row.get(1)?),
                        row.get(2)?,
                        ids.device(tx, row.get(3)?)?,
                    ),
                    model: model.clone(),
                    uuid: dec_uuid("owned", blob(row, 4, "owned")?)?,
                    data: row.get(5)?,
                };
                h.write(&postcard::to_stdvec(&record).map_err(|e| SqliteError::row("owned", e))?);
            }
        }
    }
    h.write(b"|shared|");
    let mut stmt =
        tx.prepare_cached("SELECT model, uuid, registers FROM shared ORDER BY model, uuid")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let key = (row.get(0)?, dec_uuid("shared", blob(row, 1, "shared")?)?);
        // As the reference: hidden registers never affect what is visible, and are left out.
        let record = decode_shared(blob(row, 2, "shared")?, &key)?.without_hidden();
        h.write(&postcard::to_stdvec(&record).map_err(|e| SqliteError::row("shared", e))?);
    }
    Ok(h.finish())
}
