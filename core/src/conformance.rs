//! The storage conformance suite (feature `test-support`).
//!
//! Every [`StorageBackend`] must behave exactly like the reference [`MemStore`]: the same
//! commands in give the same completions out, the same [`Restored`] state, and the same stored
//! content. The suite feeds identical command batches to a `MemStore` and to the backend under
//! test through a [`Harness`], and compares:
//!
//! - every read completion ([`StorageDone`]) of every batch;
//! - [`StorageBackend::load_restored`];
//! - the whole stored content, enumerated through paged reads only (so the suite needs nothing
//!   but the trait): every owner's device-owned records ([`StorageCommand::ReadOwned`]), the
//!   shared log ([`StorageCommand::ReadLog`]) and the shared registers
//!   ([`StorageCommand::ReadSharedSnapshot`]), once with tiny pages and once with unbounded
//!   ones. See [`dump`].
//!
//! Run everything with [`run_all`], or a single check by its function:
//!
//! ```
//! use hybridsync_core::{conformance, MemStore};
//!
//! conformance::run_all(MemStore::new);
//! conformance::tombstone_is_kept_and_beaten_only_by_newer_seq(MemStore::new());
//! ```
//!
//! A backend with persistence should also pass [`run_reopen`], which checks that everything a
//! successful `execute` wrote is still there after the backend is closed and reopened.
//!
//! Device-owned records with `seq == 0` are stored by `PutOwned` but can never be read back
//! (`ReadOwned` bounds are exclusive below), so the suite always uses `seq >= 1`. The suite also
//! keeps `(owner, seq)` unique per record key, as every well-formed owner does: the reference
//! indexes records by `(owner, seq)` and is not defined for two keys sharing one.
//!
//! Every check panics with the check name and the batch number on the first difference.

use crate::hlc::Hlc;
use crate::id::DeviceId;
use crate::memstore::MemStore;
use crate::owned::OwnedRecord;
use crate::shared::{ChangeKind, SharedChange, SharedKey, SharedRecord};
use crate::storage::{ReadId, Restored, StorageBackend, StorageCommand, StorageDone};
use crate::value::Value;
use crate::version_vector::VersionVector;
use crate::MEMBER_MODEL;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use uuid::Uuid;

/// Runs every check of the suite, each on a fresh backend from `make`.
pub fn run_all<B: StorageBackend>(mut make: impl FnMut() -> B) {
    conditional_upsert_never_regresses_owned_record(make());
    large_put_batch_with_repeated_keys_keeps_highest_seq(make());
    tombstone_is_kept_and_beaten_only_by_newer_seq(make());
    empty_payload_is_distinct_from_tombstone(make());
    owned_keys_are_owner_model_and_uuid(make());
    shared_merges_converge_in_any_order(make());
    merging_empty_register_set_creates_empty_record(make());
    staged_records_are_invisible_until_applied(make());
    append_log_merges_into_record_and_raises_vv(make());
    prune_log_deletes_through_and_raises_horizon_and_vv(make());
    watermark_and_hlc_only_rise(make());
    set_ack_replaces_previous_ack(make());
    owned_reads_page_by_limit_and_bytes_with_exclusive_cursor(make());
    log_reads_page_across_origins_in_origin_seq_order(make());
    snapshot_reads_page_with_exclusive_key_cursor(make());
    reads_observe_earlier_writes_of_the_same_batch(make());
    members_are_restored_from_member_model(make());
    extreme_values_round_trip(make());
    for seed in 0..RANDOM_SEEDS {
        randomized_command_sequences_match_reference(make(), seed);
    }
}

/// How many seeds [`run_all`] runs [`randomized_command_sequences_match_reference`] with.
pub const RANDOM_SEEDS: u64 = 12;

/// Runs the persistence check: the state written by successful batches survives `reopen`
/// (which closes the backend and opens the same storage again) and equals the reference.
pub fn run_reopen<B: StorageBackend>(mut make: impl FnMut() -> B, mut reopen: impl FnMut(B) -> B) {
    durable_state_survives_reopen(make(), &mut reopen);
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Feeds the same batches to the reference [`MemStore`] and to a backend under test, and
/// compares the results.
pub struct Harness<B: StorageBackend> {
    name: String,
    reference: MemStore,
    backend: B,
    owners: BTreeSet<DeviceId>,
    batches: usize,
    next_read: u64,
}

impl<B: StorageBackend> Harness<B> {
    /// A harness for the check `name` (used in failure messages) over an empty `backend`.
    pub fn new(name: &str, backend: B) -> Self {
        Harness {
            name: name.to_owned(),
            reference: MemStore::new(),
            backend,
            owners: BTreeSet::new(),
            batches: 0,
            next_read: 1_000_000,
        }
    }

    /// Executes `batch` on both stores; panics unless the backend succeeds and returns the same
    /// completions as the reference. Returns the completions.
    pub fn apply(&mut self, batch: Vec<StorageCommand>) -> Vec<StorageDone> {
        self.batches += 1;
        for cmd in &batch {
            match cmd {
                StorageCommand::PutOwned(rs) => self.owners.extend(rs.iter().map(|r| r.owner)),
                StorageCommand::SetWatermark { owner, .. } => {
                    self.owners.insert(*owner);
                }
                _ => {}
            }
        }
        let expected = match StorageBackend::execute(&mut self.reference, batch.clone()) {
            Ok(done) => done,
            Err(never) => match never {},
        };
        let got = self.backend.execute(batch.clone()).unwrap_or_else(|e| {
            panic!(
                "{}: batch {} failed in the backend: {e}\nbatch: {batch:?}",
                self.name, self.batches
            )
        });
        same(&self.ctx("read completions"), &expected, &got);
        got
    }

    /// Applies one command as its own batch.
    pub fn apply_one(&mut self, cmd: StorageCommand) -> Vec<StorageDone> {
        self.apply(vec![cmd])
    }

    /// A fresh read id (ids the suite uses for its own enumerating reads never collide with
    /// the ones checks choose).
    fn read_id(&mut self) -> ReadId {
        self.next_read += 1;
        ReadId(self.next_read)
    }

    /// Compares the whole state: [`Restored`], and the content enumerated through small and
    /// unbounded pages. Also checks that the enumeration of the reference sees exactly its
    /// stored maps, so a gap in [`dump`] cannot hide a difference.
    pub fn check_state(&mut self) {
        let owners: Vec<DeviceId> = self.owners.iter().copied().collect();
        let ctx = self.ctx("state");
        let id = self.read_id();
        let small_ref = dump(&mut self.reference, &owners, 3, 200, id);
        let big_ref = dump(&mut self.reference, &owners, u32::MAX, usize::MAX, id);
        let small = dump(&mut self.backend, &owners, 3, 200, id);
        let big = dump(&mut self.backend, &owners, u32::MAX, usize::MAX, id);
        same_dump(
            &format!("{ctx} (reference, small vs unbounded pages)"),
            &small_ref,
            &big_ref,
        );
        self.check_dump_covers_reference(&ctx, &big_ref);
        same_dump(&format!("{ctx} (small pages)"), &small_ref, &small);
        same_dump(&format!("{ctx} (unbounded pages)"), &big_ref, &big);
    }

    fn check_dump_covers_reference(&self, ctx: &str, d: &Dump) {
        let state = self.reference.state();
        let mut owned: BTreeMap<DeviceId, Vec<OwnedRecord>> = BTreeMap::new();
        for r in state.owned.values().filter(|r| r.seq > 0) {
            owned.entry(r.owner).or_default().push(r.clone());
        }
        for rs in owned.values_mut() {
            rs.sort_by_key(|r| r.seq);
        }
        let dumped: BTreeMap<DeviceId, Vec<OwnedRecord>> = d
            .owned
            .iter()
            .filter(|(_, rs)| !rs.is_empty())
            .map(|(o, rs)| (*o, rs.clone()))
            .collect();
        same(
            &format!("{ctx}: reference owned vs its dump"),
            &owned,
            &dumped,
        );
        let log: Vec<SharedChange> = state
            .log
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        same(&format!("{ctx}: reference log vs its dump"), &log, &d.log);
        let shared: Vec<SharedRecord> = state.shared.values().cloned().collect();
        same(
            &format!("{ctx}: reference shared vs its dump"),
            &shared,
            &d.shared,
        );
    }

    /// The reference store.
    pub fn reference(&self) -> &MemStore {
        &self.reference
    }

    /// The backend under test.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Replaces the backend by `f(backend)` (e.g. closes and reopens it), keeping the
    /// reference and the checks' bookkeeping.
    pub fn map_backend(self, f: impl FnOnce(B) -> B) -> Self {
        Harness {
            backend: f(self.backend),
            ..self
        }
    }

    fn ctx(&self, what: &str) -> String {
        format!("{}: batch {}: {what}", self.name, self.batches)
    }
}

/// The whole stored content of a backend, enumerated through paged reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Dump {
    /// [`StorageBackend::load_restored`].
    pub restored: Restored,
    /// Each owner's records with `seq >= 1`, in seq order.
    pub owned: BTreeMap<DeviceId, Vec<OwnedRecord>>,
    /// The shared log in `(origin, seq)` order.
    pub log: Vec<SharedChange>,
    /// The shared registers in `(model, uuid)` order.
    pub shared: Vec<SharedRecord>,
}

/// Reads the whole content of `backend` through pages of at most `limit` items and
/// `max_bytes`, following the exclusive cursors. `id` is the read id used for every read.
/// Panics if the backend fails, answers the wrong kind of completion, or claims `more` with an
/// empty page.
pub fn dump<B: StorageBackend>(
    backend: &mut B,
    owners: &[DeviceId],
    limit: u32,
    max_bytes: usize,
    id: ReadId,
) -> Dump {
    let restored = backend
        .load_restored()
        .unwrap_or_else(|e| panic!("load_restored failed: {e}"));
    let mut owned = BTreeMap::new();
    for &owner in owners {
        let mut after = 0;
        let mut out: Vec<OwnedRecord> = Vec::new();
        loop {
            let cmd = StorageCommand::ReadOwned {
                id,
                owner,
                after,
                upto: u64::MAX,
                limit,
                max_bytes,
            };
            let (records, more) = match read_one(backend, cmd) {
                StorageDone::Owned {
                    id: got,
                    records,
                    more,
                } if got == id => (records, more),
                other => panic!("ReadOwned answered {other:?}"),
            };
            assert!(
                records.iter().all(|r| r.owner == owner && r.seq > after),
                "ReadOwned after {after} served a record at or below the cursor: {records:?}"
            );
            assert!(
                records.windows(2).all(|w| w[0].seq < w[1].seq),
                "ReadOwned page not in seq order: {records:?}"
            );
            if let Some(last) = records.last() {
                after = last.seq;
            }
            let empty = records.is_empty();
            out.extend(records);
            if !more {
                break;
            }
            assert!(!empty, "ReadOwned claimed more with an empty page");
        }
        owned.insert(owner, out);
    }
    let mut since = VersionVector::new();
    let mut log: Vec<SharedChange> = Vec::new();
    loop {
        let cmd = StorageCommand::ReadLog {
            id,
            since: since.clone(),
            limit,
            max_bytes,
        };
        let (entries, more) = match read_one(backend, cmd) {
            StorageDone::Log {
                id: got,
                entries,
                more,
            } if got == id => (entries, more),
            other => panic!("ReadLog answered {other:?}"),
        };
        for e in &entries {
            assert!(
                e.seq > since.get(e.origin),
                "ReadLog served {}#{} at or below since {since:?}",
                e.origin,
                e.seq
            );
            since.raise(e.origin, e.seq);
        }
        let empty = entries.is_empty();
        log.extend(entries);
        if !more {
            break;
        }
        assert!(!empty, "ReadLog claimed more with an empty page");
    }
    let mut after: Option<SharedKey> = None;
    let mut shared: Vec<SharedRecord> = Vec::new();
    loop {
        let cmd = StorageCommand::ReadSharedSnapshot {
            id,
            after: after.clone(),
            limit,
            max_bytes,
        };
        let (records, more) = match read_one(backend, cmd) {
            StorageDone::Snapshot {
                id: got,
                records,
                more,
            } if got == id => (records, more),
            other => panic!("ReadSharedSnapshot answered {other:?}"),
        };
        let mut cursor = after.clone();
        for r in &records {
            let key = r.key();
            assert!(
                cursor.as_ref().is_none_or(|c| key > *c),
                "ReadSharedSnapshot served {key:?} at or below the cursor {cursor:?}"
            );
            cursor = Some(key);
        }
        after = cursor;
        let empty = records.is_empty();
        shared.extend(records);
        if !more {
            break;
        }
        assert!(!empty, "ReadSharedSnapshot claimed more with an empty page");
    }
    Dump {
        restored,
        owned,
        log,
        shared,
    }
}

fn read_one<B: StorageBackend>(backend: &mut B, cmd: StorageCommand) -> StorageDone {
    let mut done = backend
        .execute(vec![cmd.clone()])
        .unwrap_or_else(|e| panic!("read {cmd:?} failed: {e}"));
    assert_eq!(done.len(), 1, "one read must give one completion: {cmd:?}");
    done.remove(0)
}

fn same<T: PartialEq + Debug>(ctx: &str, expected: &T, got: &T) {
    if expected != got {
        panic!("{ctx}: backend differs from the reference\nexpected: {expected:#?}\n     got: {got:#?}");
    }
}

fn same_dump(ctx: &str, expected: &Dump, got: &Dump) {
    same(
        &format!("{ctx}: restored"),
        &expected.restored,
        &got.restored,
    );
    for (owner, rs) in &expected.owned {
        let empty = Vec::new();
        let other = got.owned.get(owner).unwrap_or(&empty);
        same_list(&format!("{ctx}: owned records of {owner}"), rs, other);
    }
    same_list(&format!("{ctx}: log"), &expected.log, &got.log);
    same_list(
        &format!("{ctx}: shared records"),
        &expected.shared,
        &got.shared,
    );
}

/// Compares two lists and reports the first differing position (lists can be long).
fn same_list<T: PartialEq + Debug>(ctx: &str, expected: &[T], got: &[T]) {
    if expected == got {
        return;
    }
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    panic!(
        "{ctx}: backend differs from the reference at index {at} (lengths {} vs {})\nexpected: {:#?}\n     got: {:#?}",
        expected.len(),
        got.len(),
        expected.get(at),
        got.get(at)
    );
}

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

const A: DeviceId = DeviceId::from_u128(0xa);
const B: DeviceId = DeviceId::from_u128(0xb);
const C: DeviceId = DeviceId::from_u128(0xc);

fn owned(owner: DeviceId, model: &str, id: u128, seq: u64, data: Option<&[u8]>) -> OwnedRecord {
    OwnedRecord {
        owner,
        seq,
        hlc: Hlc::new(seq.saturating_add(1_000), 0, owner),
        model: model.to_owned(),
        uuid: Uuid::from_u128(id),
        data: data.map(<[u8]>::to_vec),
    }
}

fn change(
    origin: DeviceId,
    seq: u64,
    time_ms: u64,
    model: &str,
    id: u128,
    kind: ChangeKind,
    fields: &[(&str, Value)],
) -> SharedChange {
    SharedChange {
        origin,
        seq,
        hlc: Hlc::new(time_ms, 0, origin),
        model: model.to_owned(),
        record: Uuid::from_u128(id),
        kind,
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

fn read_owned(
    id: u64,
    owner: DeviceId,
    after: u64,
    upto: u64,
    limit: u32,
    max_bytes: usize,
) -> StorageCommand {
    StorageCommand::ReadOwned {
        id: ReadId(id),
        owner,
        after,
        upto,
        limit,
        max_bytes,
    }
}

fn vv(entries: &[(DeviceId, u64)]) -> VersionVector {
    entries.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Trap 7: an older or duplicated version of a device-owned record never replaces the stored
/// one; a newer one does.
pub fn conditional_upsert_never_regresses_owned_record<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("conditional_upsert_never_regresses_owned_record", backend);
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A,
        "entry",
        1,
        5,
        Some(b"v5"),
    )]));
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A,
        "entry",
        1,
        3,
        Some(b"v3"),
    )]));
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A,
        "entry",
        1,
        5,
        Some(b"dup"),
    )]));
    let done = h.apply_one(read_owned(1, A, 0, u64::MAX, 10, usize::MAX));
    assert_eq!(
        done,
        vec![StorageDone::Owned {
            id: ReadId(1),
            records: vec![owned(A, "entry", 1, 5, Some(b"v5"))],
            more: false,
        }],
        "an older or duplicate seq regressed the record"
    );
    // Older and newer versions in one batch, in both orders.
    h.apply(vec![StorageCommand::PutOwned(vec![
        owned(A, "entry", 1, 9, Some(b"v9")),
        owned(A, "entry", 1, 7, Some(b"v7")),
        owned(A, "entry", 2, 6, Some(b"k2-6")),
        owned(A, "entry", 2, 8, Some(b"k2-8")),
    ])]);
    h.apply_one(read_owned(2, A, 0, u64::MAX, 10, usize::MAX));
    h.check_state();
}

/// A large `PutOwned` (as catch-up writes, hundreds of records; backends may split it into
/// multi-row statements) in which keys repeat with higher and lower seqs, tombstones, owners and
/// models mixed: every record ends as the version with the highest seq, wherever in the batch
/// its versions were.
pub fn large_put_batch_with_repeated_keys_keeps_highest_seq<B: StorageBackend>(backend: B) {
    let mut h = Harness::new(
        "large_put_batch_with_repeated_keys_keeps_highest_seq",
        backend,
    );
    let mut rng = SplitMix64::new(0x5eed);
    // An owner never uses one seq twice; versions of a key arrive in any seq order.
    let mut used = BTreeSet::new();
    for size in [1, 63, 64, 65, 129, 500] {
        let mut batch = Vec::with_capacity(size);
        for _ in 0..size {
            let owner = *rng.pick(&[A, B, C]);
            let model = *rng.pick(&["entry", "location"]);
            let id = u128::from(rng.below(24));
            let mut seq = rng.below(100_000);
            while !used.insert((owner, seq)) {
                seq = rng.below(100_000);
            }
            let data = (!rng.percent(15)).then(|| seq.to_be_bytes().to_vec());
            batch.push(owned(owner, model, id, seq, data.as_deref()));
            if rng.percent(5) {
                // The same version twice (a duplicated delivery), and a rival with its seq.
                batch.push(owned(owner, model, id, seq, data.as_deref()));
                batch.push(owned(owner, model, id, seq, Some(b"rival")));
            }
        }
        h.apply(vec![StorageCommand::PutOwned(batch)]);
        h.check_state();
    }
}

/// Trap 16: a tombstone is stored with its version, beats older versions (also ones that
/// arrive later) and is beaten only by a newer version.
pub fn tombstone_is_kept_and_beaten_only_by_newer_seq<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("tombstone_is_kept_and_beaten_only_by_newer_seq", backend);
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A,
        "entry",
        1,
        2,
        Some(b"a"),
    )]));
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A, "entry", 1, 4, None,
    )]));
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A,
        "entry",
        1,
        3,
        Some(b"late"),
    )]));
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A,
        "entry",
        1,
        4,
        Some(b"dup"),
    )]));
    let done = h.apply_one(read_owned(1, A, 0, u64::MAX, 10, usize::MAX));
    assert_eq!(
        done,
        vec![StorageDone::Owned {
            id: ReadId(1),
            records: vec![owned(A, "entry", 1, 4, None)],
            more: false,
        }],
        "the tombstone was lost or resurrected"
    );
    // A tombstone for a record never seen is stored too.
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A, "entry", 2, 5, None,
    )]));
    h.check_state();
    h.apply_one(StorageCommand::PutOwned(vec![owned(
        A,
        "entry",
        1,
        6,
        Some(b"again"),
    )]));
    h.apply_one(read_owned(2, A, 0, u64::MAX, 10, usize::MAX));
    h.check_state();
}

/// `Some(vec![])` is an empty payload, not a deletion; both survive storage as they are.
pub fn empty_payload_is_distinct_from_tombstone<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("empty_payload_is_distinct_from_tombstone", backend);
    h.apply_one(StorageCommand::PutOwned(vec![
        owned(A, "entry", 1, 1, Some(b"")),
        owned(A, "entry", 2, 2, None),
    ]));
    let done = h.apply_one(read_owned(1, A, 0, u64::MAX, 10, usize::MAX));
    match done.as_slice() {
        [StorageDone::Owned { records, .. }] => {
            assert_eq!(
                records[0].data,
                Some(Vec::new()),
                "empty payload became a tombstone"
            );
            assert_eq!(records[1].data, None, "tombstone became a payload");
        }
        other => panic!("unexpected completions {other:?}"),
    }
    h.check_state();
}

/// Records are keyed by `(owner, model, uuid)`: the same uuid under another model or owner is
/// another record.
pub fn owned_keys_are_owner_model_and_uuid<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("owned_keys_are_owner_model_and_uuid", backend);
    h.apply_one(StorageCommand::PutOwned(vec![
        owned(A, "entry", 1, 1, Some(b"a-entry")),
        owned(A, "location", 1, 2, Some(b"a-location")),
        owned(B, "entry", 1, 1, Some(b"b-entry")),
        owned(A, "entry", 2, 3, Some(b"a-entry-2")),
    ]));
    h.apply_one(read_owned(1, A, 0, u64::MAX, 10, usize::MAX));
    h.apply_one(read_owned(2, B, 0, u64::MAX, 10, usize::MAX));
    h.apply_one(read_owned(3, C, 0, u64::MAX, 10, usize::MAX));
    h.check_state();
}

/// Trap 5/6: shared registers merge per field by HLC; any delivery order, with duplicates,
/// gives the same registers.
pub fn shared_merges_converge_in_any_order<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("shared_merges_converge_in_any_order", backend);
    let changes = |id: u128| {
        vec![
            change(
                A,
                1,
                10,
                "tag",
                id,
                ChangeKind::Insert,
                &[("name", "x".into()), ("color", 1.into())],
            ),
            change(
                B,
                1,
                11,
                "tag",
                id,
                ChangeKind::Update,
                &[("name", "y".into())],
            ),
            change(
                C,
                1,
                12,
                "tag",
                id,
                ChangeKind::Update,
                &[("color", 3.into())],
            ),
            change(A, 2, 13, "tag", id, ChangeKind::Delete, &[]),
            change(
                B,
                2,
                14,
                "tag",
                id,
                ChangeKind::Insert,
                &[("size", Value::Float(2.5))],
            ),
            change(
                C,
                2,
                15,
                "tag",
                id,
                ChangeKind::Update,
                &[("name", "z".into())],
            ),
        ]
    };
    let orders: [&[usize]; 5] = [
        &[0, 1, 2, 3, 4, 5],
        &[5, 4, 3, 2, 1, 0],
        &[2, 0, 5, 1, 3, 4],
        &[4, 4, 1, 3, 0, 5, 2, 0],
        &[3, 5, 1],
    ];
    for (n, order) in orders.iter().enumerate() {
        let cs = changes(100 + n as u128);
        // One record per batch, then several per batch.
        if n % 2 == 0 {
            for &i in order.iter() {
                h.apply_one(StorageCommand::MergeShared(vec![cs[i].to_record()]));
            }
        } else {
            h.apply_one(StorageCommand::MergeShared(
                order.iter().map(|&i| cs[i].to_record()).collect(),
            ));
        }
    }
    // Merging whole register sets (as a snapshot does) is the same as merging the changes.
    let mut folded = SharedRecord::empty("tag", Uuid::from_u128(200));
    for c in changes(200) {
        folded.merge(&c.to_record());
    }
    h.apply_one(StorageCommand::MergeShared(vec![folded]));
    h.check_state();
    let snapshot = h.apply_one(StorageCommand::ReadSharedSnapshot {
        id: ReadId(1),
        after: None,
        limit: 100,
        max_bytes: usize::MAX,
    });
    let records = match snapshot.as_slice() {
        [StorageDone::Snapshot { records, .. }] => records.clone(),
        other => panic!("unexpected completions {other:?}"),
    };
    let full: Vec<_> = records
        .iter()
        .filter(|r| [100, 101, 102, 103, 200].contains(&r.uuid.as_u128()))
        .map(|r| (r.exists.clone(), r.last_insert, r.fields.clone()))
        .collect();
    assert_eq!(full.len(), 5);
    assert!(
        full.windows(2).all(|w| w[0] == w[1]),
        "delivery order changed the registers: {full:#?}"
    );
}

/// Merging a register set with no registers still creates the (empty) record, as the
/// reference does.
pub fn merging_empty_register_set_creates_empty_record<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("merging_empty_register_set_creates_empty_record", backend);
    h.apply_one(StorageCommand::MergeShared(vec![SharedRecord::empty(
        "album",
        Uuid::from_u128(3),
    )]));
    h.check_state();
}

/// Staged snapshot records are invisible until `ApplyStaged` merges them (register by register,
/// with what is stored); `ClearStaged` drops them; the stage is empty after applying.
pub fn staged_records_are_invisible_until_applied<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("staged_records_are_invisible_until_applied", backend);
    let shared_of = |h: &mut Harness<B>| {
        let id = ReadId(77);
        dump(h.backend_mut(), &[], 1000, usize::MAX, id).shared
    };
    let c1 = change(
        A,
        1,
        10,
        "tag",
        1,
        ChangeKind::Insert,
        &[("name", "a".into())],
    );
    let c2 = change(
        B,
        1,
        20,
        "tag",
        1,
        ChangeKind::Update,
        &[("color", 2.into())],
    );
    let dropped = change(C, 1, 30, "album", 7, ChangeKind::Insert, &[]);
    h.apply_one(StorageCommand::StageShared(vec![dropped.to_record()]));
    h.apply_one(StorageCommand::ClearStaged);
    h.apply_one(StorageCommand::MergeShared(vec![c1.to_record()]));
    h.apply_one(StorageCommand::StageShared(vec![c2.to_record()]));
    h.check_state();
    let before = shared_of(&mut h);
    assert_eq!(before, vec![c1.to_record()], "a staged record was visible");
    h.apply_one(StorageCommand::ApplyStaged);
    h.check_state();
    let mut merged = c1.to_record();
    merged.merge(&c2.to_record());
    assert_eq!(
        shared_of(&mut h),
        vec![merged.clone()],
        "ApplyStaged did not merge"
    );
    // The stage is empty now: applying again changes nothing.
    h.apply_one(StorageCommand::ApplyStaged);
    assert_eq!(shared_of(&mut h), vec![merged]);
    h.check_state();
}

/// `AppendLog` stores each entry, merges it into its record, and raises the version vector,
/// atomically; re-appending an entry is idempotent.
pub fn append_log_merges_into_record_and_raises_vv<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("append_log_merges_into_record_and_raises_vv", backend);
    let a1 = change(
        A,
        1,
        10,
        "tag",
        1,
        ChangeKind::Insert,
        &[("name", "a".into())],
    );
    let a2 = change(
        A,
        2,
        20,
        "tag",
        1,
        ChangeKind::Update,
        &[("name", "b".into())],
    );
    let b1 = change(B, 1, 15, "tag", 2, ChangeKind::Insert, &[]);
    h.apply_one(StorageCommand::AppendLog(vec![a1.clone(), b1.clone()]));
    h.apply_one(StorageCommand::AppendLog(vec![a2.clone()]));
    h.apply_one(StorageCommand::AppendLog(vec![a1.clone(), a2.clone()]));
    let restored = h
        .backend_mut()
        .load_restored()
        .unwrap_or_else(|e| panic!("load_restored failed: {e}"));
    assert_eq!(
        restored.vv,
        vv(&[(A, 2), (B, 1)]),
        "AppendLog did not raise the vv"
    );
    // A later entry that arrives first raises the vv to its seq (storage does not judge
    // contiguity: the engine only appends contiguous entries).
    h.apply_one(StorageCommand::AppendLog(vec![change(
        C,
        4,
        30,
        "album",
        9,
        ChangeKind::Delete,
        &[],
    )]));
    h.check_state();
}

/// `PruneLog` deletes the origin's entries with `seq <= through` (only that origin's), and
/// raises its horizon and version vector to `through`.
pub fn prune_log_deletes_through_and_raises_horizon_and_vv<B: StorageBackend>(backend: B) {
    let mut h = Harness::new(
        "prune_log_deletes_through_and_raises_horizon_and_vv",
        backend,
    );
    let entries: Vec<SharedChange> = (1..=6)
        .flat_map(|s| {
            [
                change(
                    A,
                    s,
                    10 * s,
                    "tag",
                    u128::from(s),
                    ChangeKind::Insert,
                    &[("n", Value::UInt(s))],
                ),
                change(
                    B,
                    s,
                    10 * s + 1,
                    "tag",
                    u128::from(s),
                    ChangeKind::Update,
                    &[("m", Value::UInt(s))],
                ),
            ]
        })
        .collect();
    h.apply_one(StorageCommand::AppendLog(entries));
    h.apply_one(StorageCommand::PruneLog {
        origin: A,
        through: 3,
    });
    h.check_state();
    let done = h.apply_one(StorageCommand::ReadLog {
        id: ReadId(1),
        since: VersionVector::new(),
        limit: 100,
        max_bytes: usize::MAX,
    });
    match done.as_slice() {
        [StorageDone::Log { entries, .. }] => {
            assert!(
                entries.iter().all(|e| e.origin != A || e.seq > 3),
                "pruned entries remain"
            );
            assert_eq!(
                entries.iter().filter(|e| e.origin == B).count(),
                6,
                "pruned another origin"
            );
        }
        other => panic!("unexpected completions {other:?}"),
    }
    // Pruning below the horizon does not lower it; pruning past the vv raises the vv; pruning
    // an unknown origin records its horizon.
    h.apply_one(StorageCommand::PruneLog {
        origin: A,
        through: 1,
    });
    h.apply_one(StorageCommand::PruneLog {
        origin: B,
        through: 9,
    });
    h.apply_one(StorageCommand::PruneLog {
        origin: C,
        through: 0,
    });
    h.apply_one(StorageCommand::PruneLog {
        origin: C,
        through: 2,
    });
    let restored = h
        .backend_mut()
        .load_restored()
        .unwrap_or_else(|e| panic!("load_restored failed: {e}"));
    assert_eq!(restored.horizon, vv(&[(A, 3), (B, 9), (C, 2)]));
    assert_eq!(restored.vv, vv(&[(A, 6), (B, 9), (C, 2)]));
    // The records merged by the pruned entries stay: the version lives on the row.
    h.check_state();
}

/// Watermarks and the HLC high-water mark only rise; a watermark of 0 is still recorded.
pub fn watermark_and_hlc_only_rise<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("watermark_and_hlc_only_rise", backend);
    h.apply(vec![
        StorageCommand::SetWatermark { owner: A, seq: 5 },
        StorageCommand::SetWatermark { owner: A, seq: 3 },
        StorageCommand::SetWatermark { owner: B, seq: 0 },
        StorageCommand::SetHlc(Hlc::new(50, 2, A)),
        StorageCommand::SetHlc(Hlc::new(50, 1, B)),
    ]);
    h.apply_one(StorageCommand::SetWatermark { owner: A, seq: 4 });
    h.apply_one(StorageCommand::SetHlc(Hlc::new(49, 9, C)));
    h.apply_one(StorageCommand::SetHlc(Hlc::new(50, 2, B)));
    let restored = h
        .backend_mut()
        .load_restored()
        .unwrap_or_else(|e| panic!("load_restored failed: {e}"));
    assert_eq!(restored.watermarks, BTreeMap::from([(A, 5), (B, 0)]));
    assert_eq!(restored.hlc, Hlc::new(50, 2, B));
    h.apply_one(StorageCommand::SetWatermark { owner: A, seq: 6 });
    h.apply_one(StorageCommand::SetHlc(Hlc::new(51, 0, A)));
    h.check_state();
}

/// `SetAck` replaces the member's previous acknowledgement wholesale (even by a lower or
/// empty vector: the engine decides what to store).
pub fn set_ack_replaces_previous_ack<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("set_ack_replaces_previous_ack", backend);
    h.apply_one(StorageCommand::SetAck {
        member: A,
        vv: vv(&[(A, 3), (B, 2)]),
    });
    h.apply_one(StorageCommand::SetAck {
        member: B,
        vv: vv(&[(C, 1)]),
    });
    h.apply_one(StorageCommand::SetAck {
        member: A,
        vv: vv(&[(B, 1)]),
    });
    h.apply_one(StorageCommand::SetAck {
        member: C,
        vv: VersionVector::new(),
    });
    let restored = h
        .backend_mut()
        .load_restored()
        .unwrap_or_else(|e| panic!("load_restored failed: {e}"));
    assert_eq!(
        restored.acks,
        BTreeMap::from([
            (A, vv(&[(B, 1)])),
            (B, vv(&[(C, 1)])),
            (C, VersionVector::new())
        ])
    );
    h.check_state();
}

/// Trap 15: `ReadOwned` pages by seq with an exclusive cursor and an inclusive upper bound,
/// by record count (0 counts as 1) and byte budget (the first record always fits), and says
/// whether more records remain in the range.
pub fn owned_reads_page_by_limit_and_bytes_with_exclusive_cursor<B: StorageBackend>(backend: B) {
    let mut h = Harness::new(
        "owned_reads_page_by_limit_and_bytes_with_exclusive_cursor",
        backend,
    );
    let payload = |n: u64| vec![n as u8; (n as usize * 7) % 50];
    let mut records = Vec::new();
    for seq in 1..=20u64 {
        records.push(owned(
            A,
            "entry",
            u128::from(seq % 8),
            seq,
            Some(&payload(seq)),
        ));
    }
    for seq in 1..=5u64 {
        records.push(owned(B, "location", u128::from(seq), seq * 2, None));
    }
    h.apply_one(StorageCommand::PutOwned(records));
    let mut id = 0;
    let mut read = |h: &mut Harness<B>, owner, after, upto, limit, max_bytes| {
        id += 1;
        h.apply_one(read_owned(id, owner, after, upto, limit, max_bytes))
    };
    for (after, upto) in [
        (0, u64::MAX),
        (12, u64::MAX),
        (12, 16),
        (12, 12),
        (16, 12),
        (19, 20),
        (20, 30),
        (u64::MAX, u64::MAX),
    ] {
        for limit in [0, 1, 2, 5, 100] {
            for max_bytes in [0, 49, 60, 120, 500, usize::MAX] {
                read(&mut h, A, after, upto, limit, max_bytes);
                read(&mut h, B, after, upto, limit, max_bytes);
            }
        }
    }
    // Follow the cursor to the end with several page shapes: every record exactly once.
    for (limit, max_bytes) in [(1, usize::MAX), (3, 100), (100, 0), (7, 250)] {
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let done = read(&mut h, A, after, u64::MAX, limit, max_bytes);
            let (records, more) = match done.as_slice() {
                [StorageDone::Owned { records, more, .. }] => (records.clone(), *more),
                other => panic!("unexpected completions {other:?}"),
            };
            seen.extend(records.iter().map(|r| r.seq));
            if let Some(last) = records.last() {
                after = last.seq;
            }
            if !more {
                break;
            }
        }
        let distinct: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(distinct.len(), seen.len(), "a record was served twice");
    }
    h.check_state();
}

/// `ReadLog` serves entries above each origin's `since`, in `(origin, seq)` order, paged by
/// count and bytes, with `more`.
pub fn log_reads_page_across_origins_in_origin_seq_order<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("log_reads_page_across_origins_in_origin_seq_order", backend);
    let mut entries = Vec::new();
    for s in 1..=7u64 {
        for (i, o) in [C, A, B].into_iter().enumerate() {
            let fields: Vec<(&str, Value)> = (0..(s % 3))
                .map(|_| ("f", Value::Bytes(vec![1; 10 * i])))
                .collect();
            entries.push(change(
                o,
                s,
                100 * s + i as u64,
                "tag",
                u128::from(s),
                ChangeKind::Update,
                &fields,
            ));
        }
    }
    h.apply_one(StorageCommand::AppendLog(entries));
    let sinces = [
        VersionVector::new(),
        vv(&[(A, 3)]),
        vv(&[(A, 7), (B, 2)]),
        vv(&[(A, 7), (B, 7), (C, 6)]),
        vv(&[(A, 9), (B, 9), (C, 9)]),
        vv(&[(DeviceId::from_u128(0xd), 4)]),
    ];
    let mut id = 0;
    for since in &sinces {
        for limit in [0, 1, 4, 100] {
            for max_bytes in [0, 70, 200, 1000, usize::MAX] {
                id += 1;
                h.apply_one(StorageCommand::ReadLog {
                    id: ReadId(id),
                    since: since.clone(),
                    limit,
                    max_bytes,
                });
            }
        }
    }
    h.apply_one(StorageCommand::PruneLog {
        origin: B,
        through: 7,
    });
    h.apply_one(StorageCommand::ReadLog {
        id: ReadId(0),
        since: VersionVector::new(),
        limit: 8,
        max_bytes: usize::MAX,
    });
    h.check_state();
}

/// `ReadSharedSnapshot` pages records in `(model, uuid)` order after an exclusive key, which
/// need not exist.
pub fn snapshot_reads_page_with_exclusive_key_cursor<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("snapshot_reads_page_with_exclusive_key_cursor", backend);
    let mut records = Vec::new();
    for (i, model) in ["tag", "album", "user_metadata", MEMBER_MODEL]
        .into_iter()
        .enumerate()
    {
        for id in [1u128, 5, 3, u128::MAX, 1 << 100] {
            let fields: Vec<(&str, Value)> = (0..(id % 4) as usize)
                .map(|k| (["a", "b", "c"][k % 3], Value::String("v".repeat(i * 9))))
                .collect();
            records.push(change(A, 1, 10, model, id, ChangeKind::Insert, &fields).to_record());
        }
    }
    h.apply_one(StorageCommand::MergeShared(records));
    let cursors = [
        None,
        Some(("album".to_owned(), Uuid::from_u128(3))),
        Some(("album".to_owned(), Uuid::from_u128(4))),
        Some(("tag".to_owned(), Uuid::from_u128(0))),
        Some(("ta".to_owned(), Uuid::from_u128(u128::MAX))),
        Some(("tag".to_owned(), Uuid::from_u128(u128::MAX))),
        Some(("zzz".to_owned(), Uuid::nil())),
        Some((String::new(), Uuid::nil())),
    ];
    let mut id = 0;
    for after in &cursors {
        for limit in [0, 1, 3, 100] {
            for max_bytes in [0, 100, 300, usize::MAX] {
                id += 1;
                h.apply_one(StorageCommand::ReadSharedSnapshot {
                    id: ReadId(id),
                    after: after.clone(),
                    limit,
                    max_bytes,
                });
            }
        }
    }
    h.check_state();
}

/// A read observes every write emitted before it, in the same batch; reads between writes
/// see exactly the writes before them.
pub fn reads_observe_earlier_writes_of_the_same_batch<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("reads_observe_earlier_writes_of_the_same_batch", backend);
    let c1 = change(
        A,
        1,
        10,
        "tag",
        1,
        ChangeKind::Insert,
        &[("name", "a".into())],
    );
    let c2 = change(
        B,
        1,
        11,
        "tag",
        1,
        ChangeKind::Update,
        &[("name", "b".into())],
    );
    let done = h.apply(vec![
        read_owned(1, A, 0, u64::MAX, 10, usize::MAX),
        StorageCommand::PutOwned(vec![owned(A, "entry", 1, 1, Some(b"one"))]),
        read_owned(2, A, 0, u64::MAX, 10, usize::MAX),
        StorageCommand::PutOwned(vec![owned(A, "entry", 1, 2, None)]),
        read_owned(3, A, 0, u64::MAX, 10, usize::MAX),
        StorageCommand::AppendLog(vec![c1]),
        StorageCommand::ReadLog {
            id: ReadId(4),
            since: VersionVector::new(),
            limit: 10,
            max_bytes: usize::MAX,
        },
        StorageCommand::MergeShared(vec![c2.to_record()]),
        StorageCommand::ReadSharedSnapshot {
            id: ReadId(5),
            after: None,
            limit: 10,
            max_bytes: usize::MAX,
        },
        StorageCommand::PruneLog {
            origin: A,
            through: 1,
        },
        StorageCommand::ReadLog {
            id: ReadId(6),
            since: VersionVector::new(),
            limit: 10,
            max_bytes: usize::MAX,
        },
    ]);
    assert_eq!(done.len(), 6, "one completion per read, in order");
    let ids: Vec<ReadId> = done
        .iter()
        .map(|d| match d {
            StorageDone::Owned { id, .. }
            | StorageDone::Log { id, .. }
            | StorageDone::Snapshot { id, .. }
            | StorageDone::Failed { id } => *id,
        })
        .collect();
    assert_eq!(
        ids,
        (1..=6).map(ReadId).collect::<Vec<_>>(),
        "completions out of order"
    );
    h.check_state();
}

/// `Restored::members` holds the registers of every record of the member model, whatever
/// they say (removed members included), in uuid order.
pub fn members_are_restored_from_member_model<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("members_are_restored_from_member_model", backend);
    h.apply(vec![
        StorageCommand::MergeShared(vec![
            crate::storage::bootstrap_member(B),
            crate::storage::bootstrap_member(A),
        ]),
        StorageCommand::AppendLog(vec![
            change(
                A,
                1,
                10,
                MEMBER_MODEL,
                C.0.as_u128(),
                ChangeKind::Insert,
                &[],
            ),
            change(
                A,
                2,
                20,
                MEMBER_MODEL,
                B.0.as_u128(),
                ChangeKind::Delete,
                &[],
            ),
            // Models that sort right before and after the member model are not members.
            change(A, 3, 30, "hybridsync.membe", 1, ChangeKind::Insert, &[]),
            change(A, 4, 40, "hybridsync.memberz", 1, ChangeKind::Insert, &[]),
        ]),
    ]);
    let restored = h
        .backend_mut()
        .load_restored()
        .unwrap_or_else(|e| panic!("load_restored failed: {e}"));
    let members: Vec<DeviceId> = restored
        .members
        .iter()
        .map(crate::storage::member_of)
        .collect();
    assert_eq!(members, vec![A, B, C]);
    h.check_state();
}

/// Boundary values survive storage unchanged: seq and time at `u64::MAX`, counters at
/// `u32::MAX`, nil and max ids, empty and non-ASCII model names, every [`Value`] variant.
pub fn extreme_values_round_trip<B: StorageBackend>(backend: B) {
    let mut h = Harness::new("extreme_values_round_trip", backend);
    let max_dev = DeviceId::from_u128(u128::MAX);
    let big = Hlc::new(u64::MAX, u32::MAX, max_dev);
    let mut r1 = owned(max_dev, "", u128::MAX, u64::MAX, Some(&[0, 255, 0]));
    r1.hlc = big;
    let mut r2 = owned(DeviceId::NIL, "éntrée ✓", 0, 1, Some(&[7; 300]));
    r2.hlc = Hlc::ZERO;
    let r3 = owned(max_dev, "", 1, u64::MAX - 1, None);
    let r4 = owned(max_dev, "", 2, 1 << 63, Some(b"mid"));
    let mut r5 = owned(max_dev, "", 3, (1 << 63) - 1, Some(b"mid-1"));
    // The stamp's device need not be the owner's (storage keeps what it is given).
    r5.hlc = Hlc::new(3, 1, A);
    h.apply_one(StorageCommand::PutOwned(vec![r1, r2, r3, r4, r5]));
    let nested = Value::Map(BTreeMap::from([
        (
            "list".to_owned(),
            Value::List(vec![Value::Null, Value::Bool(true), Value::Int(i64::MIN)]),
        ),
        ("bytes".to_owned(), Value::Bytes(vec![0, 1, 2])),
        ("".to_owned(), Value::UInt(u64::MAX)),
    ]));
    let mut c = change(
        max_dev,
        u64::MAX,
        u64::MAX,
        "",
        u128::MAX,
        ChangeKind::Insert,
        &[
            ("", Value::Float(-0.0)),
            ("f", Value::Float(f64::MAX)),
            ("n", nested),
            ("ü", Value::String("ß∂ƒ©".to_owned())),
        ],
    );
    c.hlc = big;
    h.apply_one(StorageCommand::AppendLog(vec![c]));
    h.apply_one(StorageCommand::AppendLog(vec![change(
        DeviceId::NIL,
        1,
        0,
        "tag",
        0,
        ChangeKind::Update,
        &[],
    )]));
    h.apply(vec![
        StorageCommand::SetWatermark {
            owner: max_dev,
            seq: u64::MAX,
        },
        StorageCommand::SetWatermark {
            owner: DeviceId::NIL,
            seq: 1 << 63,
        },
        StorageCommand::SetHlc(big),
        StorageCommand::SetAck {
            member: max_dev,
            vv: vv(&[(max_dev, u64::MAX), (DeviceId::NIL, 1 << 63)]),
        },
        StorageCommand::PruneLog {
            origin: DeviceId::NIL,
            through: u64::MAX,
        },
    ]);
    for (after, upto) in [
        (u64::MAX - 1, u64::MAX),
        ((1 << 63) - 2, 1 << 63),
        (0, (1 << 63) - 1),
        (u64::MAX, u64::MAX),
    ] {
        h.apply_one(read_owned(9, max_dev, after, upto, 10, usize::MAX));
    }
    h.apply_one(StorageCommand::ReadLog {
        id: ReadId(10),
        since: vv(&[(max_dev, u64::MAX - 1)]),
        limit: 10,
        max_bytes: usize::MAX,
    });
    h.check_state();
}

/// Checks that what successful batches wrote is still there after `reopen`.
pub fn durable_state_survives_reopen<B: StorageBackend>(
    backend: B,
    reopen: &mut impl FnMut(B) -> B,
) {
    let mut h = Harness::new("durable_state_survives_reopen", backend);
    let mut gen = Generator::new(0xdead_beef);
    for _ in 0..60 {
        let batch = gen.batch();
        h.apply(batch);
    }
    h.check_state();
    h = h.map_backend(&mut *reopen);
    h.check_state();
    for _ in 0..30 {
        let batch = gen.batch();
        h.apply(batch);
    }
    h = h.map_backend(&mut *reopen);
    h.check_state();
}

/// Random batches of every command (duplicates, reordering, conflicting stamps, reads with
/// random bounds and budgets) from a deterministic generator seeded with `seed`; completions
/// compared after every batch, the whole state every 20 batches.
pub fn randomized_command_sequences_match_reference<B: StorageBackend>(backend: B, seed: u64) {
    let mut h = Harness::new(
        &format!("randomized_command_sequences_match_reference(seed {seed})"),
        backend,
    );
    let mut gen = Generator::new(seed);
    for n in 1..=150 {
        let batch = gen.batch();
        h.apply(batch);
        if n % 20 == 0 {
            h.check_state();
        }
    }
    h.check_state();
}

/// The random batches [`randomized_command_sequences_match_reference`] feeds for `seed`
/// (first `count`), for backend tests that want the same workload (e.g. comparing digests).
pub fn random_batches(seed: u64, count: usize) -> Vec<Vec<StorageCommand>> {
    let mut gen = Generator::new(seed);
    (0..count).map(|_| gen.batch()).collect()
}

// ---------------------------------------------------------------------------------------------
// Deterministic generator
// ---------------------------------------------------------------------------------------------

/// A small deterministic PRNG (SplitMix64): the suite draws no randomness from the
/// environment, so a failing seed always fails the same way.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 if `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A random element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const OWNERS: [DeviceId; 3] = [A, B, C];
const OWNED_MODELS: [&str; 2] = ["entry", "location"];
const SHARED_MODELS: [&str; 3] = ["album", "tag", MEMBER_MODEL];
const FIELDS: [&str; 4] = ["color", "name", "note", "size"];

struct Generator {
    rng: SplitMix64,
    /// Every device-owned version ever made, per owner (index = seq - 1).
    owned_history: BTreeMap<DeviceId, Vec<OwnedRecord>>,
    /// Every shared change ever made, per origin (index = seq - 1).
    shared_history: BTreeMap<DeviceId, Vec<SharedChange>>,
    last_hlc: BTreeMap<DeviceId, Hlc>,
    time: u64,
}

impl Generator {
    fn new(seed: u64) -> Self {
        Generator {
            rng: SplitMix64::new(seed),
            owned_history: BTreeMap::new(),
            shared_history: BTreeMap::new(),
            last_hlc: BTreeMap::new(),
            time: 1_000,
        }
    }

    fn hlc(&mut self, device: DeviceId) -> Hlc {
        self.time += self.rng.below(3);
        // Another device may lag behind: stamps of different devices interleave.
        let t = self.time.saturating_sub(self.rng.below(4));
        let last = self
            .last_hlc
            .get(&device)
            .copied()
            .unwrap_or(Hlc::new(0, 0, device));
        let h = if t > last.time_ms {
            Hlc::new(t, 0, device)
        } else {
            Hlc::new(last.time_ms, last.counter + 1, device)
        };
        self.last_hlc.insert(device, h);
        h
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.rng.below(if depth == 0 { 9 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.percent(50)),
            2 => Value::Int(self.rng.next_u64() as i64 >> self.rng.below(64)),
            3 => Value::UInt(self.rng.next_u64()),
            4 => Value::Float((self.rng.below(2_000_001) as f64 - 1e6) / 7.0),
            5 => Value::String("sxyz".repeat(self.rng.below(6) as usize)),
            6 => Value::Bytes(vec![self.rng.below(256) as u8; self.rng.below(20) as usize]),
            7 => Value::List(
                (0..self.rng.below(3))
                    .map(|_| self.value(depth + 1))
                    .collect(),
            ),
            _ => Value::Map(
                (0..self.rng.below(3))
                    .map(|i| (format!("k{i}"), self.value(depth + 1)))
                    .collect(),
            ),
        }
    }

    fn new_owned(&mut self) -> OwnedRecord {
        let owner = *self.rng.pick(&OWNERS);
        let seq = self.owned_history.get(&owner).map_or(0, Vec::len) as u64 + 1;
        let data = match self.rng.below(10) {
            0 | 1 => None,
            2 => Some(Vec::new()),
            _ => Some(vec![self.rng.below(256) as u8; self.rng.below(60) as usize]),
        };
        let stamper = if self.rng.percent(10) {
            self.any_device()
        } else {
            owner
        };
        let r = OwnedRecord {
            owner,
            seq,
            hlc: self.hlc(stamper),
            model: (*self.rng.pick(&OWNED_MODELS)).to_owned(),
            uuid: Uuid::from_u128(u128::from(self.rng.below(6))),
            data,
        };
        self.owned_history.entry(owner).or_default().push(r.clone());
        r
    }

    /// A version to deliver: usually a new one, else an old one again (duplicate or late).
    fn owned_delivery(&mut self) -> OwnedRecord {
        let owner = *self.rng.pick(&OWNERS);
        let len = self.owned_history.get(&owner).map_or(0, Vec::len) as u64;
        if len == 0 || self.rng.percent(55) {
            return self.new_owned();
        }
        let i = self.rng.below(len) as usize;
        let mut r = self.owned_history[&owner][i].clone();
        if self.rng.percent(10) {
            // A conflicting duplicate: same key and seq, other content. It never wins.
            r.data = Some(b"conflicting duplicate".to_vec());
        }
        r
    }

    fn new_shared(&mut self) -> SharedChange {
        let origin = *self.rng.pick(&OWNERS);
        let seq = self.shared_history.get(&origin).map_or(0, Vec::len) as u64 + 1;
        let kind = match self.rng.below(10) {
            0..=3 => ChangeKind::Insert,
            4..=7 => ChangeKind::Update,
            _ => ChangeKind::Delete,
        };
        let mut fields = BTreeMap::new();
        if kind != ChangeKind::Delete {
            for f in FIELDS {
                if self.rng.percent(40) {
                    fields.insert(f.to_owned(), self.value(0));
                }
            }
        }
        let c = SharedChange {
            origin,
            seq,
            hlc: self.hlc(origin),
            model: (*self.rng.pick(&SHARED_MODELS)).to_owned(),
            record: Uuid::from_u128(u128::from(self.rng.below(5))),
            kind,
            fields,
        };
        self.shared_history
            .entry(origin)
            .or_default()
            .push(c.clone());
        c
    }

    fn shared_delivery(&mut self) -> SharedChange {
        let origin = *self.rng.pick(&OWNERS);
        let len = self.shared_history.get(&origin).map_or(0, Vec::len) as u64;
        if len == 0 || self.rng.percent(55) {
            return self.new_shared();
        }
        let i = self.rng.below(len) as usize;
        self.shared_history[&origin][i].clone()
    }

    fn head(&self, d: DeviceId) -> u64 {
        self.owned_history.get(&d).map_or(0, Vec::len) as u64
    }

    fn shared_head(&self, d: DeviceId) -> u64 {
        self.shared_history.get(&d).map_or(0, Vec::len) as u64
    }

    fn any_device(&mut self) -> DeviceId {
        if self.rng.percent(10) {
            DeviceId::from_u128(0xee)
        } else {
            *self.rng.pick(&OWNERS)
        }
    }

    fn random_vv(&mut self) -> VersionVector {
        let mut v = VersionVector::new();
        for d in OWNERS {
            if self.rng.percent(60) {
                let head = self.shared_head(d);
                v.set(d, self.rng.below(head + 3));
            }
        }
        v
    }

    fn budget(&mut self) -> (u32, usize) {
        let limit = *self.rng.pick(&[0u32, 1, 2, 3, 5, 8, 1000]);
        let max_bytes = *self.rng.pick(&[0usize, 1, 60, 150, 400, 2000, usize::MAX]);
        (limit, max_bytes)
    }

    /// One to three register sets, as a snapshot page or a merge carries them.
    fn shared_records(&mut self) -> Vec<SharedRecord> {
        (0..1 + self.rng.below(3))
            .map(|_| match self.rng.below(10) {
                0 => SharedRecord::empty(self.rng.pick::<&str>(&SHARED_MODELS), Uuid::from_u128(9)),
                1..=3 => {
                    // A register set folded from several changes (a snapshot page).
                    let c = self.shared_delivery();
                    let mut r = c.to_record();
                    for _ in 0..3 {
                        let mut d = self.shared_delivery();
                        d.model = c.model.clone();
                        d.record = c.record;
                        r.merge(&d.to_record());
                    }
                    r
                }
                _ => self.shared_delivery().to_record(),
            })
            .collect()
    }

    fn command(&mut self) -> StorageCommand {
        let id = ReadId(self.rng.below(1_000));
        match self.rng.below(100) {
            0..=21 => StorageCommand::PutOwned(
                (0..1 + self.rng.below(5))
                    .map(|_| self.owned_delivery())
                    .collect(),
            ),
            22..=33 => {
                let records = self.shared_records();
                if self.rng.percent(30) {
                    StorageCommand::StageShared(records)
                } else {
                    StorageCommand::MergeShared(records)
                }
            }
            34..=51 => StorageCommand::AppendLog(
                (0..1 + self.rng.below(4))
                    .map(|_| self.shared_delivery())
                    .collect(),
            ),
            52..=56 => {
                let origin = self.any_device();
                let head = self.shared_head(origin);
                StorageCommand::PruneLog {
                    origin,
                    through: self.rng.below(head + 2),
                }
            }
            57..=61 => {
                let owner = self.any_device();
                let head = self.head(owner);
                StorageCommand::SetWatermark {
                    owner,
                    seq: self.rng.below(head + 3),
                }
            }
            62 => StorageCommand::ApplyStaged,
            63 => StorageCommand::ClearStaged,
            64..=65 => {
                let d = self.any_device();
                let h = Hlc::new(
                    self.time.saturating_sub(self.rng.below(8)),
                    self.rng.below(3) as u32,
                    d,
                );
                StorageCommand::SetHlc(h)
            }
            66..=69 => StorageCommand::SetAck {
                member: self.any_device(),
                vv: self.random_vv(),
            },
            70..=81 => {
                let owner = self.any_device();
                let head = self.head(owner);
                let after = self.rng.below(head + 2);
                let upto = if self.rng.percent(50) {
                    u64::MAX
                } else {
                    after.saturating_sub(1) + self.rng.below(head + 3)
                };
                let (limit, max_bytes) = self.budget();
                StorageCommand::ReadOwned {
                    id,
                    owner,
                    after,
                    upto,
                    limit,
                    max_bytes,
                }
            }
            82..=90 => {
                let since = self.random_vv();
                let (limit, max_bytes) = self.budget();
                StorageCommand::ReadLog {
                    id,
                    since,
                    limit,
                    max_bytes,
                }
            }
            _ => {
                let after = match self.rng.below(4) {
                    0 => None,
                    1 => Some((
                        "ta".to_owned(),
                        Uuid::from_u128(u128::from(self.rng.below(5))),
                    )),
                    _ => Some((
                        (*self.rng.pick(&SHARED_MODELS)).to_owned(),
                        Uuid::from_u128(u128::from(self.rng.below(6))),
                    )),
                };
                let (limit, max_bytes) = self.budget();
                StorageCommand::ReadSharedSnapshot {
                    id,
                    after,
                    limit,
                    max_bytes,
                }
            }
        }
    }

    fn batch(&mut self) -> Vec<StorageCommand> {
        (0..1 + self.rng.below(6)).map(|_| self.command()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memstore_passes_the_conformance_suite() {
        run_all(MemStore::new);
    }

    #[test]
    fn memstore_synced_state_survives_crash() {
        run_reopen(MemStore::new, |mut s| {
            s.crash();
            s
        });
    }

    #[test]
    fn splitmix_is_deterministic() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }

    /// A backend that gets one rule wrong must fail the suite (the suite is not vacuous).
    #[test]
    fn suite_catches_a_backend_that_lets_older_versions_win() {
        struct LastWriteWins(MemStore);
        impl StorageBackend for LastWriteWins {
            type Error = std::convert::Infallible;
            fn execute(
                &mut self,
                commands: Vec<StorageCommand>,
            ) -> Result<Vec<StorageDone>, Self::Error> {
                let mut done = Vec::new();
                for c in commands {
                    if let StorageCommand::PutOwned(rs) = &c {
                        // Wrong: bump every incoming version so it always wins.
                        let bumped = rs
                            .iter()
                            .map(|r| {
                                let existing =
                                    self.0.state().owned.get(&r.key()).map_or(0, |e| e.seq);
                                let mut r = r.clone();
                                r.seq = r.seq.max(existing + 1);
                                r
                            })
                            .collect();
                        self.0.execute(StorageCommand::PutOwned(bumped));
                        continue;
                    }
                    done.extend(self.0.execute(c));
                }
                self.0.sync();
                Ok(done)
            }
            fn load_restored(&mut self) -> Result<Restored, Self::Error> {
                Ok(self.0.restored())
            }
        }
        let caught = std::panic::catch_unwind(|| {
            conditional_upsert_never_regresses_owned_record(LastWriteWins(MemStore::new()))
        });
        assert!(
            caught.is_err(),
            "the suite accepted a backend that regresses records"
        );
    }
}
