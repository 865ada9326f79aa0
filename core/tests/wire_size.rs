//! What a change costs on the wire, with realistic inputs: a batch written within one
//! millisecond has rising stamp counters, record ids are random (UUIDv4) or time-ordered
//! (UUIDv7), and a change sets one small field.

use hybridsync_core::conformance::SplitMix64;
use hybridsync_core::{ChangeKind, DeviceId, Hlc, OwnedChange, SharedChange, SyncMessage, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

const ORIGIN: DeviceId = DeviceId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
const START_MS: u64 = 1_764_000_000_000;

/// Random (version 4) record ids, one per change, from a fixed seed.
fn random_ids(n: u64) -> Vec<Uuid> {
    let mut rng = SplitMix64::new(7);
    (0..n)
        .map(|_| {
            let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
        })
        .collect()
}

/// `n` shared changes of one device as one write batch: 8 per millisecond (the counter rises
/// within each), one small string field each.
fn shared_batch(n: u64) -> Vec<SharedChange> {
    random_ids(n)
        .into_iter()
        .zip(0..)
        .map(|(record, i)| SharedChange {
            origin: ORIGIN,
            seq: 1 + i,
            hlc: Hlc::new(START_MS + i / 8, (i % 8) as u32, ORIGIN),
            model: "tag".into(),
            record,
            kind: ChangeKind::Update,
            fields: BTreeMap::from([("name".to_owned(), Value::from("blue"))]),
        })
        .collect()
}

/// The same writes as device-owned changes with the same payload.
fn owned_batch(n: u64) -> Vec<OwnedChange> {
    let payload = BTreeMap::from([("name".to_owned(), Value::from("blue"))]);
    random_ids(n)
        .into_iter()
        .zip(0..)
        .map(|(uuid, i)| OwnedChange {
            seq: 1 + i,
            time_ms: START_MS + i / 8,
            counter: (i % 8) as u32,
            model: "tag".into(),
            uuid,
            data: Some(Value::Map(payload.clone()).to_bytes()),
        })
        .collect()
}

fn per_change(msg: &SyncMessage, n: u64) -> f64 {
    hybridsync_core::encode(msg).len() as f64 / n as f64
}

#[test]
fn shared_change_in_a_batch_costs_no_more_than_an_owned_one() {
    let n = 1000;
    let shared = per_change(&SyncMessage::SharedChangeBatch(shared_batch(n)), n);
    let owned = per_change(&SyncMessage::StateBatch(owned_batch(n)), n);
    assert!(shared <= 64.0, "shared: {shared:.1} B per change");
    assert!(
        shared <= owned,
        "shared {shared:.1} B, owned {owned:.1} B per change"
    );
}

#[test]
fn shared_log_page_costs_what_a_batch_does() {
    let n = 1000;
    let page = SyncMessage::SharedChangeResponse(hybridsync_core::SharedChangeResponse {
        request_id: 7,
        page: 3,
        entries: shared_batch(n),
        has_more: true,
        truncated: false,
    });
    let bytes = per_change(&page, n);
    assert!(bytes <= 64.0, "{bytes:.1} B per change");
}

#[test]
fn owned_change_with_rising_counters_stays_within_65_bytes() {
    let n = 1000;
    let payload = Value::from("x".repeat(20)).to_bytes();
    let batch: Vec<OwnedChange> = owned_batch(n)
        .into_iter()
        .map(|c| OwnedChange {
            model: "entry".into(),
            data: Some(payload.clone()),
            ..c
        })
        .collect();
    let bytes = per_change(&SyncMessage::StateBatch(batch), n);
    assert!(bytes <= 65.0, "{bytes:.1} B per change");
}
