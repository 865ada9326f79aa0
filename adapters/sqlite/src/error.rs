//! Typed errors of the SQLite backend.

use std::path::{Path, PathBuf};

/// Why [`crate::SqliteStore::open`] refused to open a database. Nothing was written to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file is not an SQLite database at all (or its header is destroyed).
    #[error("{}: not a database file (or its header is damaged)", .path.display())]
    NotADatabase {
        /// The database path.
        path: PathBuf,
    },
    /// The file is a valid SQLite database of another application; it is left untouched.
    #[error(
        "{}: an SQLite database that is not a hybridsync database (application_id {application_id:#x}); refusing to touch it",
        .path.display()
    )]
    ForeignDatabase {
        /// The database path.
        path: PathBuf,
        /// The `PRAGMA application_id` found in the file.
        application_id: i32,
    },
    /// The database was written by a newer version of hybridsync; it is left untouched.
    #[error(
        "{}: schema version {found} is newer than this build supports ({supported}); upgrade hybridsync",
        .path.display()
    )]
    NewerSchema {
        /// The database path.
        path: PathBuf,
        /// The `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },
    /// The file system refused an operation on the database path.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The database path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// file at a time. The database is left untouched.
    #[error(
        "{}: the database is in use: its lock file {} is held by another open store (in this or another process)",
        .path.display(),
        .lock.display()
    )]
    Locked {
        /// The database path.
        path: PathBuf,
        /// The lock file (`<database>.lock`, symbolic links resolved).
        lock: PathBuf,
    },
    /// The file system does not support write-ahead logging for this database.
    #[error("{}: cannot enable WAL journal mode (got `{mode}`)", .path.display())]
    NoWal {
        /// The database path.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database file or its directory cannot be written (WAL needs its `-wal` and `-shm`
    /// files beside the database).
    #[error("{}: database is read-only: {reason}", .path.display())]
    ReadOnly {
        /// The database path.
        path: PathBuf,
        /// What is not writable.
        reason: String,
    },
    /// SQLite failed while the store was being opened or migrated (a corrupt database, a
    /// full disk...).
    #[error(transparent)]
    Store(#[from] SqliteError),
}

/// Why a batch ([`crate::SqliteStore::execute`]) or a read of an open store failed.
///
/// A failed `execute` has no effect: its transaction is rolled back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// SQLite reports the database image as malformed, or an integrity check failed.
    #[error("{}: database is corrupt: {detail}", .path.display())]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// A stored row cannot be decoded (damaged or written by something else).
    #[error("corrupt row in table `{table}`: {detail}")]
    CorruptRow {
        /// The table.
        table: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The database file or its directory cannot be written.
    #[error("{}: database is read-only: {reason}", .path.display())]
    ReadOnly {
        /// The database path.
        path: PathBuf,
        /// What is not writable.
        reason: String,
    },
    /// Another open [`crate::SqliteStore`] holds the database, in this process or another
    /// (for example a second `hybridsync node` on the same data directory): one store per
    /// Any other SQLite error.
    #[error("{}: sqlite: {source}", .path.display())]
    Sqlite {
        /// The database path (`:memory:` for an in-memory database).
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
}

impl SqliteError {
    /// Classifies an SQLite error on the database at `path`.
    pub(crate) fn from_sqlite(path: &Path, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let path = path.to_path_buf();
        match e.sqlite_error_code() {
            Some(C::NotADatabase | C::DatabaseCorrupt) => SqliteError::Corrupt {
                path,
                detail: e.to_string(),
            },
            Some(C::ReadOnly) => SqliteError::ReadOnly {
                path,
                reason: e.to_string(),
            },
            _ => SqliteError::Sqlite { path, source: e },
        }
    }

    /// A row that cannot be decoded.
    pub(crate) fn row(table: &'static str, detail: impl std::fmt::Display) -> Self {
        SqliteError::CorruptRow {
            table,
            detail: detail.to_string(),
        }
    }
}

impl OpenError {
    /// Classifies an SQLite error while opening the database at `path`.
    pub(crate) fn from_sqlite(path: &Path, e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => OpenError::NotADatabase {
                path: path.to_path_buf(),
            },
            _ => OpenError::Store(SqliteError::from_sqlite(path, e)),
        }
    }
}
