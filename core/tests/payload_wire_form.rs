//! Messages carry named payload structs (`SyncMessage::StateRequest(StateRequest { .. })`)
//! instead of struct variants. postcard encodes a newtype variant holding a struct exactly as
//! the struct variant with the same fields: the wire form did not change. The expected bytes
//! below were produced by the struct-variant encoding of the same messages (commit `e2e2f7c`),
//! so a payload whose fields are reordered, added or retyped fails here.

use hybridsync_core::*;
use std::collections::BTreeMap;

fn d(n: u128) -> DeviceId {
    DeviceId::from_u128(n)
}

fn vv() -> VersionVector {
    let mut v = VersionVector::new();
    v.set(d(1), 5);
    v.set(d(2), 300);
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn payload_structs_encode_as_the_struct_variants_they_replaced() {
    let change = OwnedChange {
        seq: 7,
        time_ms: 1_700_000_000_000,
        counter: 2,
        model: "entry".into(),
        uuid: uuid::Uuid::from_u128(9),
        data: Some(vec![1, 2, 3]),
    };
    let messages = vec![
        SyncMessage::StateRequest(StateRequest {
            request_id: 1,
            owner: d(1),
            since: 2,
            limit: 3,
            window: 4,
        }),
        SyncMessage::StateResponse(StateResponse {
            request_id: 5,
            owner: d(2),
            since: 6,
            through: 7,
            records: vec![change.clone()],
            has_more: true,
        }),
        SyncMessage::SharedChangeRequest(SharedChangeRequest {
            request_id: 8,
            since: vv(),
            limit: 9,
            window: 10,
        }),
        SyncMessage::SharedChangeResponse(SharedChangeResponse {
            request_id: 11,
            page: 12,
            entries: vec![],
            has_more: false,
            truncated: true,
        }),
        SyncMessage::AckSharedChanges(Ack {
            acker: d(4),
            vv: vv(),
        }),
        SyncMessage::Heartbeat(Summary {
            heads: BTreeMap::from([(d(1), 3), (d(5), 9)]),
            vv: vv(),
        }),
        SyncMessage::SharedSnapshotRequest(SharedSnapshotRequest {
            request_id: 13,
            after: Some(("tag".into(), uuid::Uuid::from_u128(14))),
            limit: 15,
            window: 16,
        }),
        SyncMessage::SharedSnapshotResponse(SharedSnapshotResponse {
            request_id: 17,
            page: 18,
            vv: vv(),
            records: vec![bootstrap_member(d(3))],
            has_more: true,
        }),
        SyncMessage::Error(ErrorReply {
            request_id: Some(19),
            code: ErrorCode::Busy,
            message: "busy".into(),
        }),
        SyncMessage::Neighbours(Neighbours {
            version: 20,
            peers: vec![d(6), d(7)],
            pinned: true,
        }),
        SyncMessage::StateRelay(StateRelay {
            owner: d(8),
            records: vec![change],
        }),
        SyncMessage::HeartbeatDelta(Summary {
            heads: BTreeMap::from([(d(9), 21)]),
            vv: vv(),
        }),
        SyncMessage::PagesReceived(PagesReceived {
            request_id: 22,
            pages: 23,
        }),
    ];
    let expected = [
        "02011000000000000000000000000000000001020304",
        "0305100000000000000000000000000000000206070105656e74727901010780a0abfef962040000000000000000090301020301",
        "0608021000000000000000000000000000000001051000000000000000000000000000000002ac02090a",
        "070b0c0000000001",
        "081000000000000000000000000000000004021000000000000000000000000000000001051000000000000000000000000000000002ac02",
        "0902100000000000000000000000000000000103100000000000000000000000000000000509021000000000000000000000000000000001051000000000000000000000000000000002ac02",
        "0a0d0103746167100000000000000000000000000000000e0f10",
        "0b1112021000000000000000000000000000000001051000000000000000000000000000000002ac02011168796272696473796e632e6d656d626572100000000000000000000000000000000301000010000000000000000000000000000000000101000010000000000000000000000000000000000001",
        "0c0113040462757379",
        "0e14021000000000000000000000000000000006100000000000000000000000000000000701",
        "1010000000000000000000000000000000080105656e74727901010780a0abfef9620400000000000000000903010203",
        "1101100000000000000000000000000000000915021000000000000000000000000000000001051000000000000000000000000000000002ac02",
        "121617",
    ];
    assert_eq!(messages.len(), expected.len());
    for (msg, want) in messages.iter().zip(expected) {
        let bytes = encode(msg);
        assert_eq!(hex(&bytes), want, "{msg:?}");
        assert_eq!(&decode(&bytes).expect("decodes"), msg);
    }
}
