//! Property tests: generated interleavings against the reference model, and the merge laws.

use hybridsync_core::supersedes;
use hybridsync_core::{ChangeKind, DeviceId, Hlc, OwnedRecord, SharedChange, SharedRecord, Value};
use hybridsync_sim::cluster::Cluster;
use hybridsync_sim::device;
use proptest::prelude::*;
use uuid::Uuid;

/// One transition of the system, applied to the cluster (and, for writes, recorded in the
/// reference model by the cluster).
#[derive(Clone, Debug)]
enum Step {
    Put {
        dev: usize,
        key: u64,
        val: u8,
    },
    Delete {
        dev: usize,
        key: u64,
    },
    Tag {
        dev: usize,
        key: u64,
        kind: u8,
        name: Option<i64>,
        color: Option<i64>,
    },
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Connect(usize, usize),
    Disconnect(usize, usize),
    CrashRestart(usize),
    Advance(u64),
}

const DEVICES: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    let dev = 0..DEVICES;
    prop_oneof![
        1 => (dev.clone(), 0..4u64, any::<u8>()).prop_map(|(dev, key, val)| Step::Put { dev, key, val }),
        1 => (dev.clone(), 0..4u64).prop_map(|(dev, key)| Step::Delete { dev, key }),
        1 => (dev.clone(), 0..3u64, 0..3u8, proptest::option::of(0..5i64), proptest::option::of(0..5i64))
            .prop_map(|(dev, key, kind, name, color)| Step::Tag { dev, key, kind, name, color }),
        4 => (0..8usize).prop_map(Step::Deliver),
        1 => (0..8usize).prop_map(Step::Drop),
        1 => (0..8usize).prop_map(Step::Duplicate),
        2 => (dev.clone(), dev.clone()).prop_map(|(a, b)| Step::Connect(a, b)),
        1 => (dev.clone(), dev.clone()).prop_map(|(a, b)| Step::Disconnect(a, b)),
        1 => dev.prop_map(Step::CrashRestart),
        1 => (0..20_000u64).prop_map(Step::Advance),
    ]
}

fn apply(cl: &mut Cluster, s: &Step) {
    match s {
        Step::Put { dev, key, val } => {
            cl.put(device(*dev), *key, &[*val]);
        }
        Step::Delete { dev, key } => {
            cl.delete(device(*dev), *key);
        }
        Step::Tag {
            dev,
            key,
            kind,
            name,
            color,
        } => {
            let kind = match kind {
                0 => ChangeKind::Insert,
                1 => ChangeKind::Update,
                _ => ChangeKind::Delete,
            };
            let mut fields = Vec::new();
            if let Some(n) = name {
                fields.push(("name", *n));
            }
            if let Some(c) = color {
                fields.push(("color", *c));
            }
            cl.tag(device(*dev), *key, kind, &fields);
        }
        Step::Deliver(i) => {
            if !cl.in_flight.is_empty() {
                cl.deliver(i % cl.in_flight.len());
            }
        }
        Step::Drop(i) => {
            if !cl.in_flight.is_empty() {
                let n = cl.in_flight.len();
                cl.drop_message(i % n);
            }
        }
        Step::Duplicate(i) => {
            if !cl.in_flight.is_empty() {
                let n = cl.in_flight.len();
                cl.duplicate(i % n);
            }
        }
        Step::Connect(a, b) if a != b => cl.connect(device(*a), device(*b)),
        Step::Disconnect(a, b) if a != b => cl.disconnect(device(*a), device(*b)),
        Step::CrashRestart(d) => {
            cl.crash(device(*d));
            cl.restart(device(*d));
        }
        Step::Advance(ms) => cl.advance(*ms),
        Step::Connect(..) | Step::Disconnect(..) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the interleaving of writes, deliveries, losses, duplicates, link changes and
    /// crashes, once the network heals every replica holds the reference model's state.
    #[test]
    fn any_interleaving_converges_to_the_reference_model(steps in prop::collection::vec(step(), 1..80)) {
        let mut cl = Cluster::new(DEVICES);
        for s in &steps {
            apply(&mut cl, s);
        }
        cl.connect_all();
        cl.settle();
        let ids: Vec<DeviceId> = (0..DEVICES).map(device).collect();
        prop_assert_eq!(cl.check_converged(&ids), Ok(()));
    }
}

fn change() -> impl Strategy<Value = SharedChange> {
    (
        0..3u128,
        0..6u64,
        0..3u32,
        0..3u8,
        proptest::option::of(0..4i64),
        proptest::option::of(0..4i64),
    )
        .prop_map(|(dev, t, c, kind, a, b)| {
            let d = DeviceId::from_u128(dev + 1);
            let mut fields = std::collections::BTreeMap::new();
            if let Some(a) = a {
                fields.insert("a".to_owned(), Value::Int(a));
            }
            if let Some(b) = b {
                fields.insert("b".to_owned(), Value::Int(b));
            }
            SharedChange {
                origin: d,
                seq: 1,
                hlc: Hlc::new(t, c, d),
                model: "tag".into(),
                record: Uuid::nil(),
                kind: [ChangeKind::Insert, ChangeKind::Update, ChangeKind::Delete][kind as usize],
                fields,
            }
        })
}

/// Distinct changes only: an HLC names one event, so two changes never share a stamp.
fn changes() -> impl Strategy<Value = Vec<SharedChange>> {
    prop::collection::vec(change(), 0..8).prop_map(|mut v| {
        let mut seen = std::collections::BTreeSet::new();
        v.retain(|c| seen.insert(c.hlc));
        v
    })
}

fn fold(cs: &[SharedChange]) -> SharedRecord {
    let mut r = SharedRecord::empty("tag", Uuid::nil());
    for c in cs {
        r.merge(&c.to_record());
    }
    r
}

proptest! {
    #[test]
    fn shared_merge_is_commutative(cs in changes(), seed in any::<u64>()) {
        let mut shuffled = cs.clone();
        // A deterministic shuffle driven by the generated seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(fold(&cs), fold(&shuffled));
    }

    #[test]
    fn shared_merge_is_associative(cs in changes(), split in 0..8usize) {
        let split = split.min(cs.len());
        let mut left = fold(&cs[..split]);
        left.merge(&fold(&cs[split..]));
        prop_assert_eq!(left, fold(&cs));
    }

    #[test]
    fn duplicate_shared_changes_are_no_ops(cs in changes()) {
        let once = fold(&cs);
        let mut twice = once.clone();
        for c in &cs {
            prop_assert!(!twice.merge(&c.to_record()), "re-applying changed the record");
        }
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn visible_record_equals_sequential_replay_in_hlc_order(cs in changes()) {
        let mut r = hybridsync_sim::reference::Reference::default();
        for c in &cs {
            r.shared_write(c.clone());
        }
        let want = r.expected_shared(|_| true).get(&("tag".to_owned(), Uuid::nil())).cloned();
        prop_assert_eq!(fold(&cs).visible(), want);
    }

    #[test]
    fn device_owned_merge_keeps_the_highest_seq_in_any_order(seqs in prop::collection::vec(1..20u64, 1..10)) {
        let owner = DeviceId::from_u128(1);
        let rec = |seq: u64| OwnedRecord {
            owner,
            seq,
            hlc: Hlc::new(seq, 0, owner),
            model: "entry".into(),
            uuid: Uuid::nil(),
            data: (!seq.is_multiple_of(3)).then(|| seq.to_le_bytes().to_vec()),
        };
        let mut stored: Option<OwnedRecord> = None;
        for s in &seqs {
            let r = rec(*s);
            if supersedes(&r, stored.as_ref()) {
                stored = Some(r);
            }
        }
        let max = seqs.iter().copied().max().unwrap_or(0);
        prop_assert_eq!(stored.map(|r| r.seq), Some(max));
    }
}
