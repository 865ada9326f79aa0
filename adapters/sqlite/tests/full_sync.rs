//! A batch marked `FullSync` (this device's own writes) is committed with `synchronous = FULL`
//! even though the store runs at `NORMAL`; the store goes back to `NORMAL` after it, and a store
//! set to full sync stays there.

use hybridsync_core::{DeviceId, StorageCommand};
use hybridsync_sqlite::SqliteStore;

fn synchronous(store: &SqliteStore) -> i64 {
    store
        .connection()
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .expect("synchronous")
}

const NORMAL: i64 = 1;
const FULL: i64 = 2;

#[test]
fn a_full_sync_batch_commits_at_full_and_the_store_returns_to_normal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SqliteStore::open(dir.path().join("sync.db")).expect("open");
    assert_eq!(synchronous(&store), NORMAL);
    let me = DeviceId::from_u128(1);
    store
        .execute(vec![
            StorageCommand::SetWatermark { owner: me, seq: 1 },
            StorageCommand::FullSync,
        ])
        .expect("batch");
    assert_eq!(synchronous(&store), NORMAL);
    assert_eq!(
        store.load_restored().expect("load").watermarks.get(&me),
        Some(&1)
    );
    store.set_full_sync(true).expect("full");
    store
        .execute(vec![
            StorageCommand::SetWatermark { owner: me, seq: 2 },
            StorageCommand::FullSync,
        ])
        .expect("batch");
    assert_eq!(
        synchronous(&store),
        FULL,
        "a store set to full sync stays there"
    );
}
