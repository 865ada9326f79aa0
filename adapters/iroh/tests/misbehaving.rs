//! Hostile peers over real iroh connections: garbage, oversized frames, ownership and ack
//! spoofing, unknown endpoints. Each is refused and disconnected, and nothing changes.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_core::{
    encode_frame, ChangeKind, DeviceId, ErrorCode, FrameDecoder, Hlc, OwnedRecord, SharedChange,
    SyncMessage, Value, VersionVector,
};
use hybridsync_iroh::{close_code, offline_endpoint, DEFAULT_ALPN, REALTIME_LANE};
use hybridsync_tokio::Node;
use iroh::endpoint::{Connection, ConnectionError};
use iroh::{Endpoint, SecretKey};
use std::time::Duration;
use uuid::Uuid;

const T: Duration = Duration::from_secs(20);

/// A raw endpoint with a key of our choosing (registered or not at the victim).
async fn rogue(n: u8) -> (Endpoint, DeviceId) {
    let key = SecretKey::from_bytes(&[n; 32]);
    let ep = offline_endpoint(key, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (ep, device_id(u128::from(n)))
}

/// Reads the victim's frames until an `Error` arrives; returns its code.
async fn first_error(conn: Connection) -> Option<ErrorCode> {
    // The victim may open several streams (real-time and bulk) in either order: read them all.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let accept = tokio::spawn(async move {
        while let Ok(recv) = conn.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(code) = stream_error(recv).await {
                    let _ = tx.send(code);
                }
            });
        }
    });
    let code = rx.recv().await;
    accept.abort();
    code
}

/// The code of the first `Error` frame on one stream (after its lane header).
async fn stream_error(mut recv: iroh::endpoint::RecvStream) -> Option<ErrorCode> {
    let mut decoder = FrameDecoder::default();
    recv.read_chunk(1).await.ok()??;
    loop {
        while let Ok(Some(msg)) = decoder.next_message() {
            if let SyncMessage::Error(hybridsync_core::ErrorReply { code, .. }) = msg {
                return Some(code);
            }
        }
        let chunk = recv.read_chunk(64 * 1024).await.ok()??;
        decoder.push(&chunk);
    }
}

/// Sends `bytes` on a fresh real-time stream (after its lane header); returns the victim's
/// close code and its `Error` code.
async fn attack(ep: &Endpoint, victim: &Dev, bytes: Vec<u8>) -> (u64, Option<ErrorCode>) {
    let mut stream = vec![REALTIME_LANE];
    stream.extend(bytes);
    attack_raw(ep, victim, vec![stream]).await
}

/// Sends each of `streams` (lane header included) on a fresh stream of one connection;
/// returns the victim's close code and its `Error` code.
async fn attack_raw(
    ep: &Endpoint,
    victim: &Dev,
    streams: Vec<Vec<u8>>,
) -> (u64, Option<ErrorCode>) {
    let conn = ep
        .connect(victim.endpoint_addr(), DEFAULT_ALPN)
        .await
        .unwrap();
    let errors = tokio::spawn(first_error(conn.clone()));
    for bytes in streams {
        if let Ok(mut s) = conn.open_uni().await {
            let _ = s.write_all(&bytes).await;
            let _ = s.finish();
        }
    }
    let closed = tokio::time::timeout(T, conn.closed())
        .await
        .expect("the victim closes the connection");
    let code = match closed {
        ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("unexpected close: {other:?}"),
    };
    let error = tokio::time::timeout(Duration::from_secs(2), errors)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    (code, error)
}

struct Victim {
    dev: Dev,
    node: Node<Store>,
    peer: Dev,
    rogues: Vec<(Endpoint, DeviceId)>,
    _dir: tempfile::TempDir,
}

/// A victim device A with some content, a (stopped) member B, and four registered rogue
/// members.
async fn victim() -> Victim {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Dev::new(61, dir.path()).await;
    // B is a member that is not running (registered by identity only: never dialed).
    let b = Dev::accept_only(device_id(62), SecretKey::from_bytes(&[62; 32]));
    let mut rogues = Vec::new();
    for n in 71..75u8 {
        rogues.push(rogue(n).await);
    }
    let mut members = vec![a.id, b.id];
    members.extend(rogues.iter().map(|(_, d)| *d));
    let rogue_devs: Vec<Dev> = rogues
        .iter()
        .map(|(ep, d)| Dev::accept_only(*d, ep.secret_key().clone()))
        .collect();
    let mut peers: Vec<&Dev> = vec![&b];
    peers.extend(rogue_devs.iter());
    let node = start(&mut a, &peers, &members, None).await;
    node.put("entry", Uuid::from_u128(1), b"precious".to_vec())
        .await
        .unwrap();
    node.insert_shared(
        "tag",
        Uuid::from_u128(2),
        [("name".to_owned(), Value::from("keep"))]
            .into_iter()
            .collect(),
    )
    .await
    .unwrap();
    Victim {
        dev: a,
        node,
        peer: b,
        rogues,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_refused_and_change_nothing() {
    let v = victim().await;
    let before = digest(&v.node).await;

    let garbage = vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff];
    let (code, error) = attack(&v.rogues[0].0, &v.dev, garbage).await;
    assert_eq!(code, u64::from(close_code::BAD_FRAME));
    assert_eq!(error, Some(ErrorCode::BadFrame));

    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0; 1024]);
    let (code, error) = attack(&v.rogues[1].0, &v.dev, oversized).await;
    assert_eq!(code, u64::from(close_code::BAD_FRAME));
    assert_eq!(error, Some(ErrorCode::FrameTooLarge));

    assert_eq!(digest(&v.node).await, before);
    let _ = &v.peer;
    v.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_repeated_stream_lanes_are_refused_and_change_nothing() {
    let v = victim().await;
    let before = digest(&v.node).await;
    // A lane header no lane has.
    let (code, error) = attack_raw(&v.rogues[0].0, &v.dev, vec![vec![9, 0, 0, 0, 1]]).await;
    assert_eq!(code, u64::from(close_code::BAD_FRAME));
    assert_eq!(error, Some(ErrorCode::ProtocolViolation));
    // Two streams that both claim bulk lane 1 (their frames' order would be ambiguous).
    let (code, error) = attack_raw(&v.rogues[1].0, &v.dev, vec![vec![1], vec![1]]).await;
    assert_eq!(code, u64::from(close_code::BAD_FRAME));
    assert_eq!(error, Some(ErrorCode::ProtocolViolation));
    assert_eq!(digest(&v.node).await, before);
    let _ = &v.peer;
    v.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_ack_spoofing_are_refused_and_change_nothing() {
    let v = victim().await;
    let before = digest(&v.node).await;
    let status_before = v.node.status().await.unwrap();

    // A rogue member pushes a shared change in B's name, stamped with its own device. (It
    // cannot even express a device-owned record of B's: a push names no owner, its records
    // are the sender's.)
    let spoofed = SharedChange {
        origin: v.peer.id,
        seq: 1,
        hlc: Hlc::new(1, 0, v.rogues[2].1),
        model: "tag".into(),
        record: Uuid::from_u128(99),
        kind: ChangeKind::Insert,
        fields: [("name".to_owned(), Value::String("forged".into()))].into(),
    };
    let frame = encode_frame(&SyncMessage::SharedChange(spoofed));
    let (code, error) = attack(&v.rogues[2].0, &v.dev, frame).await;
    assert_eq!(code, u64::from(close_code::REFUSED));
    assert_eq!(error, Some(ErrorCode::ProtocolViolation));

    // A rogue member acks for itself (fine), then claims to ack for B: if the second were
    // believed, A could prune entries B never received.
    let mut vv = VersionVector::new();
    vv.set(v.dev.id, 1_000);
    let mut frames = encode_frame(&SyncMessage::AckSharedChanges(hybridsync_core::Ack {
        acker: v.rogues[3].1,
        vv: vv.clone(),
    }));
    frames.extend(encode_frame(&SyncMessage::AckSharedChanges(
        hybridsync_core::Ack {
            acker: v.peer.id,
            vv,
        },
    )));
    let (code, error) = attack(&v.rogues[3].0, &v.dev, frames).await;
    assert_eq!(code, u64::from(close_code::REFUSED));
    assert_eq!(error, Some(ErrorCode::ProtocolViolation));

    assert_eq!(digest(&v.node).await, before);
    let status_after = v.node.status().await.unwrap();
    assert_eq!(status_after.horizon, status_before.horizon);
    assert_eq!(status_after.watermarks, status_before.watermarks);
    v.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_is_refused_before_any_message_is_read() {
    let v = victim().await;
    let before = digest(&v.node).await;
    let mut events = v.node.subscribe();
    let (stranger, stranger_id) = rogue(99).await;
    let record = OwnedRecord {
        owner: stranger_id,
        seq: 1,
        hlc: Hlc::new(1, 0, stranger_id),
        model: "entry".into(),
        uuid: Uuid::from_u128(7),
        data: Some(b"intruder".to_vec()),
    };
    let (code, error) = attack(
        &stranger,
        &v.dev,
        encode_frame(&SyncMessage::StateChange(record.into())),
    )
    .await;
    assert_eq!(code, u64::from(close_code::UNKNOWN_ENDPOINT));
    assert_eq!(error, None);
    assert_eq!(digest(&v.node).await, before);
    // The engine never heard of it.
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, hybridsync_core::Event::PeerConnected(d) | hybridsync_core::Event::PeerMisbehaved { peer: d, .. } if d == stranger_id),
            "{e:?}"
        );
    }
    v.node.shutdown().await.unwrap();
}
