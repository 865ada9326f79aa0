//! Engine benchmarks (run by `hybridsync bench`; never timed tests).
//!
//! Each figure is compared with a raw baseline measured in the same run on the same inputs,
//! and reported as medians over several alternating rounds (the machine is small and noisy).

use hybridsync_core::MemState;
use hybridsync_core::{
    decode, encode, ChangeKind, Config, DeviceId, Hlc, Input, Instant, ModelRegistry, Now, Output,
    OwnedRecord, Replica, Restored, SharedChange, SharedRecord, SyncMessage, Value,
};
use std::collections::BTreeMap;
use std::time::Instant as WallInstant;
use uuid::Uuid;

pub mod pair;

const T0: u64 = 1_750_000_000_000;

/// Throughput of the engine against its raw baseline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    /// What was measured.
    pub name: String,
    /// Changes applied.
    pub changes: usize,
    /// Median changes per second through the engine.
    pub engine_per_s: f64,
    /// Median changes per second of the baseline.
    pub baseline_per_s: f64,
    /// `engine_per_s / baseline_per_s`.
    pub ratio: f64,
    /// The ratio of each round (engine and baseline alternate: each round runs one, then
    /// the other), in round order: the spread.
    pub ratios: Vec<f64>,
}

/// Encoded size of a representative change.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WireSize {
    /// One `StateChange`, postcard.
    pub single_postcard: usize,
    /// The same change as JSON with string UUIDs (the encoding this protocol replaces).
    pub single_json: usize,
    /// Per change inside a `StateBatch` of 1,000, postcard.
    pub batched_postcard: f64,
    /// Per change inside a JSON array of 1,000.
    pub batched_json: f64,
    /// Per change inside a `StateBatch` of 1,000 whose ids are UUIDv7 with random bits (the
    /// 12 `rand_a` and 62 `rand_b` bits drawn from a fixed-seed generator; 16 ids per
    /// millisecond), postcard.
    pub batched_postcard_random_v7: f64,
    /// Per change inside a `StateBatch` of 1,000 written 16 to a millisecond, so the stamp
    /// counters rise within each millisecond (as a real burst of writes does), postcard.
    pub batched_postcard_rising_counters: f64,
    /// One `SharedChange` of a tag (a UUIDv7 id, one small field), postcard.
    pub shared_single_postcard: usize,
    /// Per change inside a `SharedChangeBatch` of 1,000 such changes, 16 to a millisecond
    /// (rising counters), postcard.
    pub shared_batched_postcard: f64,
    /// The same batch with random (v4) record ids.
    pub shared_batched_postcard_random_ids: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A deterministic "entry"-like payload: name, size, created, modified, parent id.
pub fn entry_payload(i: u64) -> (Vec<u8>, serde_json::Value) {
    let name = format!("IMG_{:04}.jpg", i % 10_000);
    let size = 1_000_000 + (i * 7919) % 9_000_000;
    let created = 1_700_000_000 + i;
    let modified = created + 60;
    let parent = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | u128::from(i / 100));
    let value = Value::List(vec![
        Value::String(name.clone()),
        Value::Int(size as i64),
        Value::Int(created as i64),
        Value::Int(modified as i64),
        Value::Bytes(parent.as_bytes().to_vec()),
    ]);
    let json = serde_json::json!({
        "name": name, "size": size, "date_created": created, "date_modified": modified,
        "parent_id": parent.to_string(),
    });
    (value.to_bytes(), json)
}

/// Time-ordered (UUIDv7-like) record id number `i`.
pub fn v7_like(i: u64) -> Uuid {
    Uuid::from_u128((u128::from(T0 + i / 16) << 80) | 0x7000_8000_0000_0000_0000 | u128::from(i))
}

fn owned_records(owner: DeviceId, n: usize) -> Vec<OwnedRecord> {
    (0..n as u64)
        .map(|i| OwnedRecord {
            owner,
            seq: i + 1,
            hlc: Hlc::new(T0 + i, 0, owner),
            model: "entry".into(),
            uuid: v7_like(i),
            data: Some(entry_payload(i).0),
        })
        .collect()
}

fn shared_changes(origin: DeviceId, n: usize) -> Vec<SharedChange> {
    (0..n as u64)
        .map(|i| SharedChange {
            origin,
            seq: i + 1,
            hlc: Hlc::new(T0 + i, 0, origin),
            model: "tag".into(),
            record: v7_like(i % 5_000),
            kind: if i < 5_000 {
                ChangeKind::Insert
            } else {
                ChangeKind::Update
            },
            fields: [
                ("name".to_owned(), Value::String(format!("tag {i}"))),
                ("color".to_owned(), Value::Int((i % 7) as i64)),
            ]
            .into(),
        })
        .collect()
}

/// Drives `frames` (encoded messages from `from`) through a fresh engine + `MemState`;
/// returns the elapsed seconds and the final state.
fn run_engine(me: DeviceId, from: DeviceId, frames: &[Vec<u8>]) -> (f64, MemState) {
    let now = Now::new(Instant::ZERO, T0 + 10_000_000);
    let mut replica = Replica::new(
        Config::new(me, ModelRegistry::spacedrive()),
        Restored::bootstrap([me, from]),
        now,
    );
    let mut state = MemState::default();
    replica.handle(now, Input::PeerUp { peer: from });
    let start = WallInstant::now();
    for f in frames {
        let Ok(msg) = decode(f) else { continue };
        replica.handle(now, Input::Message { from, msg });
        while let Some(out) = replica.poll_output() {
            if let Output::Storage(cmd) = out {
                state.execute(cmd);
            }
        }
    }
    (start.elapsed().as_secs_f64(), state)
}

/// Engine apply throughput of remote device-owned changes against the raw baseline (postcard
/// decode + `BTreeMap` upsert keeping the higher seq).
pub fn apply_owned(n: usize, rounds: usize) -> Throughput {
    let (me, owner) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
    let frames: Vec<Vec<u8>> = owned_records(owner, n)
        .chunks(1000)
        .map(|c| {
            encode(&SyncMessage::StateBatch(
                c.iter().cloned().map(Into::into).collect(),
            ))
        })
        .collect();
    let engine = || {
        let (secs, state) = run_engine(me, owner, &frames);
        assert_eq!(state.owned.len(), n, "engine applied every record");
        n as f64 / secs
    };
    let base = || {
        let start = WallInstant::now();
        let mut map: BTreeMap<(DeviceId, String, Uuid), OwnedRecord> = BTreeMap::new();
        for f in &frames {
            if let Ok(SyncMessage::StateBatch(rs)) = decode(f) {
                for c in rs {
                    let r = c.into_record(owner);
                    let key = (r.owner, r.model.clone(), r.uuid);
                    match map.get(&key) {
                        Some(old) if old.seq >= r.seq => {}
                        _ => {
                            map.insert(key, r);
                        }
                    }
                }
            }
        }
        assert_eq!(map.len(), n);
        n as f64 / start.elapsed().as_secs_f64()
    };
    let (engine, base) = alternate(rounds, engine, base);
    throughput("device-owned apply", n, engine, base)
}

/// Engine apply throughput of remote shared changes against the raw baseline (postcard decode
/// + `BTreeMap` upsert of the record's registers).
pub fn apply_shared(n: usize, rounds: usize) -> Throughput {
    let (me, origin) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
    let frames: Vec<Vec<u8>> = shared_changes(origin, n)
        .chunks(1000)
        .map(|c| encode(&SyncMessage::SharedChangeBatch(c.to_vec())))
        .collect();
    let engine = || {
        let (secs, state) = run_engine(me, origin, &frames);
        assert_eq!(
            state.vv.get(origin),
            n as u64,
            "engine applied every change"
        );
        n as f64 / secs
    };
    let base = || {
        let start = WallInstant::now();
        let mut map: BTreeMap<(String, Uuid), SharedRecord> = BTreeMap::new();
        for f in &frames {
            if let Ok(SyncMessage::SharedChangeBatch(cs)) = decode(f) {
                for c in cs {
                    map.entry((c.model.clone(), c.record))
                        .or_insert_with(|| SharedRecord::empty(&c.model, c.record))
                        .apply(&c);
                }
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let (engine, base) = alternate(rounds, engine, base);
    throughput("shared apply", n, engine, base)
}

/// Runs `rounds` rounds of `a` and `b` after one unmeasured run of each, alternating which
/// goes first (AB, BA, AB...), so neither always runs on a heap the other just left; returns
/// each one's results in round order.
fn alternate(
    rounds: usize,
    mut a: impl FnMut() -> f64,
    mut b: impl FnMut() -> f64,
) -> (Vec<f64>, Vec<f64>) {
    // One unmeasured run of each first: the first runs of a process pay for growing its
    // heap (the first round read 0.44-0.59x where the others read 0.62-0.91x).
    a();
    b();
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        if round % 2 == 0 {
            ra.push(a());
            rb.push(b());
        } else {
            rb.push(b());
            ra.push(a());
        }
    }
    (ra, rb)
}

fn throughput(name: &str, changes: usize, engine: Vec<f64>, base: Vec<f64>) -> Throughput {
    let ratios: Vec<f64> = engine.iter().zip(&base).map(|(e, b)| e / b).collect();
    let (e, b) = (median(engine), median(base));
    Throughput {
        name: name.into(),
        changes,
        engine_per_s: e,
        baseline_per_s: b,
        ratio: e / b,
        ratios,
    }
}

fn json_change(r: &OwnedRecord, i: u64) -> serde_json::Value {
    serde_json::json!({
        "owner": r.owner.0.to_string(),
        "seq": r.seq,
        "hlc": {"time_ms": r.hlc.time_ms, "counter": r.hlc.counter, "device": r.hlc.device.0.to_string()},
        "model": r.model,
        "uuid": r.uuid.to_string(),
        "data": entry_payload(i).1,
    })
}

/// Bytes per representative `entry` change, postcard against JSON with string UUIDs.
pub fn wire_size() -> WireSize {
    let owner = DeviceId(Uuid::from_u128(0x0190_1234_5678_7abc_8def_0123_4567_89ab));
    let records = owned_records(owner, 1000);
    let single = encode(&SyncMessage::StateChange(records[500].clone().into())).len();
    let single_json = serde_json::json!({"StateChange": json_change(&records[500], 500)})
        .to_string()
        .len();
    let batch = encode(&SyncMessage::StateBatch(
        records.iter().cloned().map(Into::into).collect(),
    ))
    .len();
    let mut rng = hybridsync_core::conformance::SplitMix64::new(7);
    let random_ids: Vec<hybridsync_core::OwnedChange> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ms = u128::from(T0 + i as u64 / 16);
            let rand_a = u128::from(rng.next_u64() & 0xfff);
            let rand_b = u128::from(rng.next_u64() >> 2);
            let mut c = hybridsync_core::OwnedChange::from(r.clone());
            c.uuid =
                Uuid::from_u128((ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b);
            c
        })
        .collect();
    let batch_random = encode(&SyncMessage::StateBatch(random_ids)).len();
    let batch_json = serde_json::json!({"StateBatch": records
        .iter()
        .enumerate()
        .map(|(i, r)| json_change(r, i as u64))
        .collect::<Vec<_>>()})
    .to_string()
    .len();
    let rising: Vec<hybridsync_core::OwnedChange> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut c = hybridsync_core::OwnedChange::from(r.clone());
            c.time_ms = T0 + i as u64 / 16;
            c.counter = (i % 16) as u32;
            c
        })
        .collect();
    let batch_rising = encode(&SyncMessage::StateBatch(rising)).len();
    let tags = |id: &dyn Fn(u64) -> Uuid| -> Vec<SharedChange> {
        (0..1000u64)
            .map(|i| SharedChange {
                origin: owner,
                seq: 1 + i,
                hlc: Hlc::new(T0 + i / 16, (i % 16) as u32, owner),
                model: "tag".into(),
                record: id(i),
                kind: ChangeKind::Update,
                fields: [("name".to_owned(), Value::String(format!("tag {i}")))].into(),
            })
            .collect()
    };
    let shared = tags(&v7_like);
    let shared_single = encode(&SyncMessage::SharedChange(shared[500].clone())).len();
    let shared_batch = encode(&SyncMessage::SharedChangeBatch(shared)).len();
    let mut rng = hybridsync_core::conformance::SplitMix64::new(11);
    let v4: Vec<Uuid> = (0..1000)
        .map(|_| {
            let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
        })
        .collect();
    let shared_random = encode(&SyncMessage::SharedChangeBatch(tags(&|i| v4[i as usize]))).len();
    WireSize {
        batched_postcard_rising_counters: batch_rising as f64 / 1000.0,
        shared_single_postcard: shared_single,
        shared_batched_postcard: shared_batch as f64 / 1000.0,
        shared_batched_postcard_random_ids: shared_random as f64 / 1000.0,
        single_postcard: single,
        single_json,
        batched_postcard: batch as f64 / 1000.0,
        batched_json: batch_json as f64 / 1000.0,
        batched_postcard_random_v7: batch_random as f64 / 1000.0,
    }
}
