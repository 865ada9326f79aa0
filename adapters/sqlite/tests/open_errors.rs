//! Opening databases: fresh files, migrations, and every typed refusal.

use hybridsync_core::{
    DeviceId, Hlc, ReadId, SharedChange, StorageCommand, StorageDone, VersionVector,
};
use hybridsync_sqlite::{OpenError, SqliteError, SqliteStore, APPLICATION_ID, SCHEMA_VERSION};
use rusqlite::Connection;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const ME: DeviceId = DeviceId::from_u128(1);

fn db_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("replica.db")
}

/// The main file and any WAL side files, to prove a refused open wrote nothing.
fn snapshot_files(path: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            (s.to_string(), std::fs::read(&p).ok())
        })
        .collect()
}

fn write_some_state(store: &mut SqliteStore) {
    store
        .execute(vec![
            StorageCommand::SetWatermark { owner: ME, seq: 42 },
            StorageCommand::SetHlc(Hlc::new(7, 1, ME)),
        ])
        .expect("writes");
}

#[test]
fn fresh_file_gets_current_schema_version_application_id_wal_and_page_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    drop(SqliteStore::open(&path).expect("opens"));
    let conn = Connection::open(&path).expect("raw open");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .expect("application_id");
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    let page_size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .expect("page_size");
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(app, APPLICATION_ID);
    assert_eq!(mode, "wal");
    assert_eq!(page_size, 8192);
}

#[test]
fn reopening_keeps_state_and_does_not_migrate_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    let mut store = SqliteStore::open(&path).expect("opens");
    write_some_state(&mut store);
    drop(store);
    let mut store = SqliteStore::open(&path).expect("reopens");
    let restored = store.load_restored().expect("restores");
    assert_eq!(restored.watermarks.get(&ME), Some(&42));
    assert_eq!(restored.hlc, Hlc::new(7, 1, ME));
    store.check_integrity().expect("sound");
}

#[test]
fn garbage_file_is_refused_as_not_a_database_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &garbage).expect("write garbage");
    let before = snapshot_files(&path);
    let err = SqliteStore::open(&path).expect_err("garbage must be refused");
    assert!(matches!(err, OpenError::NotADatabase { .. }), "{err:?}");
    assert_eq!(snapshot_files(&path), before, "a refused file was modified");
}

#[test]
fn foreign_sqlite_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO photos VALUES (1, 'cat');")
            .expect("foreign schema");
    }
    let before = snapshot_files(&path);
    let err = SqliteStore::open(&path).expect_err("a foreign database must be refused");
    assert!(
        matches!(
            err,
            OpenError::ForeignDatabase {
                application_id: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(snapshot_files(&path), before, "a refused file was modified");
}

#[test]
fn database_with_another_application_id_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "application_id", 0x1234)
            .expect("set id");
    }
    let err = SqliteStore::open(&path).expect_err("another application's file must be refused");
    assert!(
        matches!(
            err,
            OpenError::ForeignDatabase {
                application_id: 0x1234,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn newer_schema_version_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    let mut store = SqliteStore::open(&path).expect("opens");
    write_some_state(&mut store);
    drop(store);
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump version");
    }
    let before = snapshot_files(&path);
    let err = SqliteStore::open(&path).expect_err("a newer schema must be refused");
    match err {
        OpenError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(snapshot_files(&path), before, "a refused file was modified");
}

#[test]
fn damaged_database_is_refused_or_reported_corrupt_never_rewritten() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    let mut store = SqliteStore::open(&path).expect("opens");
    write_some_state(&mut store);
    drop(store);
    // Overwrite the schema page after the 100-byte header: SQLite cannot parse the schema.
    let mut bytes = std::fs::read(&path).expect("read");
    for b in bytes.iter_mut().take(4096).skip(100) {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).expect("write");
    let before = snapshot_files(&path);
    let err = SqliteStore::open(&path).expect_err("a damaged database must be refused");
    assert!(
        matches!(
            err,
            OpenError::Store(SqliteError::Corrupt { .. }) | OpenError::NotADatabase { .. }
        ),
        "{err:?}"
    );
    assert_eq!(
        snapshot_files(&path)[0],
        before[0],
        "a refused file was modified"
    );
}

#[test]
fn damaged_data_page_fails_the_integrity_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    let mut store = SqliteStore::open(&path).expect("opens");
    let records = (1..=2000u64)
        .map(|seq| hybridsync_core::OwnedRecord {
            owner: ME,
            seq,
            hlc: Hlc::new(seq, 0, ME),
            model: "entry".into(),
            uuid: uuid::Uuid::from_u128(u128::from(seq)),
            data: Some(vec![seq as u8; 64]),
        })
        .collect();
    store
        .execute(vec![StorageCommand::PutOwned(records)])
        .expect("writes");
    drop(store);
    let mut bytes = std::fs::read(&path).expect("read");
    const PAGE: usize = 8192;
    assert!(bytes.len() > 8 * PAGE, "database too small for the test");
    // Scribble over the b-tree page headers of every page but the first (the schema).
    for page in 1..bytes.len() / PAGE {
        for b in &mut bytes[page * PAGE..page * PAGE + 12] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&path, &bytes).expect("write");
    match SqliteStore::open(&path) {
        Ok(store) => {
            let err = store
                .check_integrity()
                .expect_err("integrity check must fail");
            assert!(matches!(err, SqliteError::Corrupt { .. }), "{err:?}");
        }
        Err(err) => assert!(
            matches!(
                err,
                OpenError::Store(SqliteError::Corrupt { .. }) | OpenError::NotADatabase { .. }
            ),
            "{err:?}"
        ),
    }
}

#[test]
fn read_only_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    drop(SqliteStore::open(&path).expect("opens"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let err = SqliteStore::open(&path).expect_err("a read-only file must be refused");
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod back");
    SqliteStore::open(&path).expect("opens once writable again");
}

#[test]
fn read_only_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sub = dir.path().join("ro");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let err = SqliteStore::open(sub.join("replica.db"))
        .expect_err("a database in a read-only directory must be refused");
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
    assert!(
        !sub.join("replica.db").exists(),
        "a refused open created the file"
    );
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
}

#[test]
fn missing_directory_is_an_io_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err =
        SqliteStore::open(dir.path().join("nope").join("replica.db")).expect_err("no directory");
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
}

/// A store whose one shared record (written by the returned change) has damaged registers.
fn store_with_damaged_register() -> (SqliteStore, SharedChange) {
    let mut store = SqliteStore::open_in_memory().expect("opens");
    let change = SharedChange {
        origin: ME,
        seq: 1,
        hlc: Hlc::new(5, 0, ME),
        model: "tag".into(),
        record: uuid::Uuid::from_u128(9),
        kind: hybridsync_core::ChangeKind::Insert,
        fields: Default::default(),
    };
    store
        .execute(vec![StorageCommand::AppendLog(vec![change.clone()])])
        .expect("append");
    store
        .connection()
        .execute("UPDATE shared SET registers = x'ffffffff'", [])
        .expect("damage");
    (store, change)
}

#[test]
fn damaged_register_row_fails_the_read_and_the_merge_but_not_the_store() {
    let (mut store, change) = store_with_damaged_register();
    // A read of the damaged row fails only that read; the batch's writes still commit.
    let done = store
        .execute(vec![
            StorageCommand::SetWatermark { owner: ME, seq: 3 },
            StorageCommand::ReadSharedSnapshot {
                id: ReadId(7),
                after: None,
                limit: 10,
                max_bytes: usize::MAX,
            },
        ])
        .expect("batch commits");
    assert_eq!(done, vec![StorageDone::Failed { id: ReadId(7) }]);
    assert_eq!(store.load_restored().expect("restores").watermarks[&ME], 3);
    // A write that would merge into the damaged row fails the whole batch, which has no effect.
    let mut later = change;
    later.seq = 2;
    later.hlc = Hlc::new(6, 0, ME);
    let err = store
        .execute(vec![
            StorageCommand::SetWatermark { owner: ME, seq: 9 },
            StorageCommand::AppendLog(vec![later]),
        ])
        .expect_err("merge into a damaged row must fail");
    assert!(
        matches!(
            err,
            SqliteError::CorruptRow {
                table: "shared",
                ..
            }
        ),
        "{err:?}"
    );
    let restored = store.load_restored().expect("restores");
    assert_eq!(
        restored.watermarks[&ME], 3,
        "a failed batch left a write behind"
    );
    assert_eq!(
        restored.vv,
        [(ME, 1)].into_iter().collect::<VersionVector>()
    );
}

#[test]
fn damaged_ack_row_fails_load_restored_with_a_typed_error() {
    let mut store = SqliteStore::open_in_memory().expect("opens");
    store
        .connection()
        .execute("INSERT INTO acks (member, vv) VALUES (x'00', x'ff')", [])
        .expect("damage");
    let err = store.load_restored().expect_err("damaged ack");
    assert!(
        matches!(err, SqliteError::CorruptRow { table: "acks", .. }),
        "{err:?}"
    );
}

#[test]
fn wrongly_typed_column_is_a_corrupt_row_not_a_panic() {
    let mut store = SqliteStore::open_in_memory().expect("opens");
    store
        .connection()
        .execute(
            "INSERT INTO watermarks (owner, seq) VALUES (?1, 'not a number')",
            [ME.0.as_bytes()],
        )
        .expect("damage");
    let err = store.load_restored().expect_err("damaged watermark");
    assert!(matches!(err, SqliteError::CorruptRow { .. }), "{err:?}");
}

#[test]
fn catch_up_reads_are_index_range_scans() {
    let store = SqliteStore::open_in_memory().expect("opens");
    let plan = |sql: &str| -> String {
        let mut stmt = store
            .connection()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("plan rows");
        rows.join(" | ")
    };
    let owned = plan(
        "SELECT seq, hlc_ms, hlc_counter, hlc_device, model, uuid, data FROM owned
         WHERE owner = 1 AND seq >= 1 AND seq <= 9 ORDER BY seq LIMIT 10",
    );
    assert!(
        owned.contains("USING PRIMARY KEY (owner=? AND seq>? AND seq<?)"),
        "{owned}"
    );
    assert!(!owned.contains("TEMP B-TREE"), "{owned}");
    let by_key = plan(
        "SELECT seq, hlc_ms, hlc_counter, hlc_device, uuid, data FROM owned
         WHERE owner = 1 AND model = 1 ORDER BY uuid",
    );
    assert!(
        by_key.contains("USING INDEX owned_by_key (owner=? AND model=?)"),
        "{by_key}"
    );
    assert!(!by_key.contains("TEMP B-TREE"), "{by_key}");
    let log =
        plan("SELECT seq, entry FROM log WHERE origin = x'01' AND seq > 3 ORDER BY seq LIMIT 10");
    assert!(
        log.contains("USING PRIMARY KEY (origin=? AND seq>?)"),
        "{log}"
    );
    assert!(!log.contains("TEMP B-TREE"), "{log}");
    let snapshot = plan(
        "SELECT model, uuid, registers FROM shared
         WHERE (model, uuid) > ('tag', x'01') ORDER BY model, uuid LIMIT 10",
    );
    assert!(snapshot.contains("USING PRIMARY KEY"), "{snapshot}");
    assert!(
        !snapshot.contains("TEMP B-TREE") && !snapshot.contains("SCAN"),
        "{snapshot}"
    );
}

#[test]
fn failed_batch_does_not_leave_stale_interned_ids_behind() {
    let (mut store, seed) = store_with_damaged_register();
    let stranger = DeviceId::from_u128(0x5742);
    let record = |seq| hybridsync_core::OwnedRecord {
        owner: stranger,
        seq,
        hlc: Hlc::new(seq, 0, DeviceId::from_u128(0x77)),
        model: "brand-new-model".into(),
        uuid: uuid::Uuid::from_u128(1),
        data: Some(vec![1, 2, 3]),
    };
    // This batch interns the stranger, the HLC device and the model, then fails: rolled back.
    let mut later = seed;
    later.seq = 2;
    store
        .execute(vec![
            StorageCommand::PutOwned(vec![record(1)]),
            StorageCommand::AppendLog(vec![later]),
        ])
        .expect_err("merge into a damaged row fails the batch");
    // The same ids are needed again: they must be created again, not taken from a stale cache.
    let done = store
        .execute(vec![
            StorageCommand::PutOwned(vec![record(2)]),
            StorageCommand::ReadOwned {
                id: ReadId(1),
                owner: stranger,
                after: 0,
                upto: u64::MAX,
                limit: 10,
                max_bytes: usize::MAX,
            },
        ])
        .expect("batch commits");
    assert_eq!(
        done,
        vec![StorageDone::Owned {
            id: ReadId(1),
            records: vec![record(2)],
            more: false
        }]
    );
    let devices: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM devices", [], |r| r.get(0))
        .expect("count");
    assert_eq!(devices, 2, "stranger and HLC device, once each");
}

#[test]
fn reopened_store_maps_interned_ids_back_to_devices_and_models() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = db_in(&dir);
    let record = |owner: u128, model: &str, seq| hybridsync_core::OwnedRecord {
        owner: DeviceId::from_u128(owner),
        seq,
        hlc: Hlc::new(seq, 3, DeviceId::from_u128(owner + 100)),
        model: model.into(),
        uuid: uuid::Uuid::from_u128(u128::from(seq)),
        data: None,
    };
    let written = vec![
        record(1, "entry", 1),
        record(2, "location", 1),
        record(1, "volume", 2),
    ];
    let mut store = SqliteStore::open(&path).expect("opens");
    store
        .execute(vec![StorageCommand::PutOwned(written.clone())])
        .expect("writes");
    let digest = store.content_digest().expect("digest");
    drop(store);
    let mut store = SqliteStore::open(&path).expect("reopens");
    assert_eq!(store.content_digest().expect("digest"), digest);
    let done = store
        .execute(vec![StorageCommand::ReadOwned {
            id: ReadId(1),
            owner: DeviceId::from_u128(1),
            after: 0,
            upto: u64::MAX,
            limit: 10,
            max_bytes: usize::MAX,
        }])
        .expect("reads");
    assert_eq!(
        done,
        vec![StorageDone::Owned {
            id: ReadId(1),
            records: vec![written[0].clone(), written[2].clone()],
            more: false
        }]
    );
}

#[test]
fn full_sync_can_be_chosen_and_reverted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(db_in(&dir)).expect("opens");
    let level = |s: &SqliteStore| -> i64 {
        s.connection()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous")
    };
    assert_eq!(level(&store), 1, "NORMAL by default");
    store.set_full_sync(true).expect("FULL");
    assert_eq!(level(&store), 2);
    write_some_state(&mut store);
    store.set_full_sync(false).expect("NORMAL");
    assert_eq!(level(&store), 1);
}
