//! The application's typed reads (`RecordReader`) give the same answers on `SqliteStore` as on
//! the reference `MemStore`, and those answers are the stored content.

use hybridsync_core::{
    ChangeKind, DeviceId, Hlc, MemStore, OwnedRecord, SharedChange, StorageCommand, Value,
};
use hybridsync_core::{Page, RecordReader, SharedView};
use hybridsync_sqlite::SqliteStore;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use uuid::Uuid;

/// A small deterministic generator (the same content on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const MODELS: [&str; 2] = ["entry", "location"];
const SHARED: [&str; 2] = ["tag", "album"];

/// Writes of 5 owners (two models, overwrites, tombstones) and shared changes (inserts,
/// updates, deletes, updates of records never inserted), in batches.
fn commands() -> Vec<Vec<StorageCommand>> {
    let mut rng = Lcg(17);
    let owners: Vec<DeviceId> = [3u128, 0xff, 1, u128::MAX, 1 << 64]
        .into_iter()
        .map(DeviceId::from_u128)
        .collect();
    let mut seqs: BTreeMap<DeviceId, u64> = BTreeMap::new();
    let mut batches = Vec::new();
    for b in 0..20u64 {
        let mut owned = Vec::new();
        for _ in 0..15 {
            let owner = owners[rng.next(owners.len() as u64) as usize];
            let seq = seqs.entry(owner).or_insert(0);
            *seq += 1;
            let data = (rng.next(4) != 0).then(|| vec![rng.next(256) as u8; 3]);
            owned.push(OwnedRecord {
                owner,
                seq: *seq,
                hlc: Hlc::new(1000 + *seq, 0, owner),
                model: MODELS[rng.next(2) as usize].to_owned(),
                uuid: Uuid::from_u128(u128::from(rng.next(40)) << 64 | 7),
                data,
            });
        }
        let mut log = Vec::new();
        for i in 0..10u64 {
            let origin = owners[0];
            let kind = match rng.next(4) {
                0 => ChangeKind::Delete,
                1 => ChangeKind::Update,
                _ => ChangeKind::Insert,
            };
            let fields = match kind {
                ChangeKind::Delete => BTreeMap::new(),
                _ => [("n".to_owned(), Value::from(format!("{b}-{i}")))].into(),
            };
            log.push(SharedChange {
                origin,
                seq: b * 10 + i + 1,
                hlc: Hlc::new(2000 + b * 10 + i, 0, origin),
                model: SHARED[rng.next(2) as usize].to_owned(),
                record: Uuid::from_u128(u128::from(rng.next(30))),
                kind,
                fields,
            });
        }
        batches.push(vec![
            StorageCommand::PutOwned(owned),
            StorageCommand::AppendLog(log),
        ]);
    }
    batches
}

fn stores() -> (MemStore, SqliteStore) {
    let mut mem = MemStore::new();
    let mut sql = SqliteStore::open_in_memory().expect("opens");
    for batch in commands() {
        for c in batch.clone() {
            mem.execute(c);
        }
        sql.execute(batch).expect("batch");
    }
    (mem, sql)
}

/// Every page of a listing, checking that pages are bounded and `next` is the last key.
fn pages<T: Clone + Debug, C: Clone + PartialEq + Debug>(
    limit: u32,
    key: impl Fn(&T) -> C,
    mut read: impl FnMut(Option<C>) -> Page<T, C>,
) -> Vec<Page<T, C>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = read(after.clone());
        assert!(page.items.len() <= limit.max(1) as usize);
        if let Some(next) = &page.next {
            assert_eq!(page.items.last().map(&key).as_ref(), Some(next));
        }
        after = page.next.clone();
        out.push(page);
        if after.is_none() {
            return out;
        }
    }
}

#[test]
fn both_stores_answer_every_read_alike_and_as_stored() {
    let (mem, sql) = stores();
    let state = mem.state();
    for model in MODELS {
        // What is stored: live records of the model, in (owner, uuid) order.
        let live: Vec<OwnedRecord> = state
            .owned
            .values()
            .filter(|r| r.model == model && !r.is_tombstone())
            .cloned()
            .collect();
        assert!(
            live.len() > 20,
            "a test worth its name: {} records",
            live.len()
        );
        assert!(state.owned.values().any(|r| r.is_tombstone()));
        for limit in [0, 1, 3, 7, 1000] {
            let read_mem = pages(
                limit,
                |r: &OwnedRecord| (r.owner, r.uuid),
                |a| mem.list_owned(model, a, limit).expect("reads"),
            );
            let read_sql = pages(
                limit,
                |r: &OwnedRecord| (r.owner, r.uuid),
                |a| sql.list_owned(model, a, limit).expect("reads"),
            );
            assert_eq!(read_mem, read_sql, "{model} limit {limit}");
            let all: Vec<OwnedRecord> = read_mem.into_iter().flat_map(|p| p.items).collect();
            assert_eq!(all, live, "{model} limit {limit}");
        }
        assert_eq!(mem.count_owned(model).ok(), Some(live.len() as u64));
        assert_eq!(sql.count_owned(model).ok(), Some(live.len() as u64));
    }
    for (key, r) in &state.owned {
        let got_mem = mem.get_owned(key.0, &key.1, key.2).expect("reads");
        let got_sql = sql.get_owned(key.0, &key.1, key.2).expect("reads");
        assert_eq!(got_mem.as_ref(), Some(r));
        assert_eq!(got_sql.as_ref(), Some(r), "tombstones included");
    }
    let absent = (DeviceId::from_u128(9), "entry", Uuid::from_u128(7));
    assert_eq!(sql.get_owned(absent.0, absent.1, absent.2).ok(), Some(None));
    assert_eq!(
        sql.list_owned("nope", None, 5).ok().map(|p| p.items.len()),
        Some(0)
    );

    for model in SHARED {
        let visible: Vec<SharedView> = state
            .shared
            .values()
            .filter(|r| r.model == model)
            .filter_map(SharedView::of)
            .collect();
        let hidden = state
            .shared
            .values()
            .filter(|r| r.model == model && r.visible().is_none())
            .count();
        assert!(
            visible.len() > 5 && hidden > 0,
            "{} / {hidden}",
            visible.len()
        );
        for limit in [1, 4, 1000] {
            let read_mem = pages(
                limit,
                |v: &SharedView| v.uuid,
                |a| mem.list_shared(model, a, limit).expect("reads"),
            );
            let read_sql = pages(
                limit,
                |v: &SharedView| v.uuid,
                |a| sql.list_shared(model, a, limit).expect("reads"),
            );
            assert_eq!(read_mem, read_sql, "{model} limit {limit}");
            let all: Vec<SharedView> = read_mem.into_iter().flat_map(|p| p.items).collect();
            assert_eq!(all, visible);
        }
        assert_eq!(mem.count_shared(model).ok(), Some(visible.len() as u64));
        assert_eq!(sql.count_shared(model).ok(), Some(visible.len() as u64));
    }
    let keys: BTreeSet<(String, Uuid)> = state.shared.keys().cloned().collect();
    for (model, uuid) in keys {
        let got_mem = mem.get_shared(&model, uuid).expect("reads");
        assert_eq!(
            got_mem,
            SharedView::of(&state.shared[&(model.clone(), uuid)])
        );
        assert_eq!(sql.get_shared(&model, uuid).expect("reads"), got_mem);
    }
}

#[test]
fn a_cursor_whose_record_was_deleted_still_resumes_after_it() {
    let (mut mem, mut sql) = stores();
    let first = mem.list_owned("entry", None, 3).expect("reads");
    let cursor = first.next.expect("more than one page");
    // The cursor's record and its owner's other records go away between pages.
    let doomed: Vec<OwnedRecord> = mem
        .state()
        .owned
        .values()
        .filter(|r| r.owner == cursor.0)
        .map(|r| OwnedRecord {
            seq: r.seq + 1000,
            data: None,
            ..r.clone()
        })
        .collect();
    mem.execute(StorageCommand::PutOwned(doomed.clone()));
    sql.execute(vec![StorageCommand::PutOwned(doomed)])
        .expect("batch");
    let a = mem.list_owned("entry", Some(cursor), 1000).expect("reads");
    let b = sql.list_owned("entry", Some(cursor), 1000).expect("reads");
    assert_eq!(a, b);
    assert!(a.items.iter().all(|r| r.owner > cursor.0));
}
