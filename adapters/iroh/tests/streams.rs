//! The transport's streams. Issue 13 item 6: a connection never gets more inbound stream
//! credit than the transport's limit, not even in the moments before the transport lowers it
//! (the initial credit comes from the endpoint's transport config, sent in the handshake).
//! And bulk frames spread over several lanes reach the engine in the order they were sent.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_core::{encode_frame, FrameDecoder, SyncMessage};
use hybridsync_iroh::DEFAULT_ALPN;
use std::time::Duration;

/// Streams the sync protocol lets a peer have open towards a device (it uses four: one
/// real-time, three bulk lanes).
const LIMIT: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_open_more_streams_than_the_limit() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Dev::new(95, dir.path()).await;
    // A registered member with a raw endpoint: it does whatever it likes with the connection.
    let (rogue, rogue_dev) = raw_member(96).await;
    let members = [a.id, rogue_dev.id];
    let node = start(&mut a, &[&rogue_dev], &members, None).await;

    let conn = rogue
        .connect(a.endpoint_addr(), DEFAULT_ALPN)
        .await
        .unwrap();
    // Open streams at once, each carrying a byte (so the victim counts it), without waiting
    // for the victim to do anything.
    let mut uni = Vec::new();
    for _ in 0..LIMIT * 4 {
        match tokio::time::timeout(Duration::from_millis(500), conn.open_uni()).await {
            Ok(Ok(mut s)) => {
                let _ = s.write_all(&[0]).await;
                uni.push(s);
            }
            Ok(Err(e)) => panic!("connection failed: {e}"),
            Err(_) => break,
        }
    }
    let bidi = tokio::time::timeout(Duration::from_millis(500), conn.open_bi())
        .await
        .is_ok();
    assert!(
        uni.len() <= LIMIT,
        "a peer opened {} unidirectional streams (limit {LIMIT})",
        uni.len()
    );
    assert!(!bidi, "a peer opened a bidirectional stream");
    drop(uni);
    conn.close(0u32.into(), b"done");
    rogue.close().await;
    node.shutdown().await.unwrap();
}

/// The `StateResponse`s a peer's bulk lanes carry, as `(place in the bulk order, request id)`
/// in arrival order: frame `j` of lane header `h` is bulk frame `3 j + h - 1`. (Arrival order
/// across streams is not send order; the place is.)
async fn state_responses(
    conn: iroh::endpoint::Connection,
) -> tokio::sync::mpsc::UnboundedReceiver<(u64, u64)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(mut recv) = conn.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(lane) = recv.read_chunk(1).await.ok().flatten() else {
                    return;
                };
                let Some(&lane) = lane.first() else { return };
                let lane = u64::from(lane);
                if lane == 0 {
                    return; // the real-time stream
                }
                let mut decoder = FrameDecoder::default();
                let mut frames = 0u64;
                loop {
                    while let Ok(Some(msg)) = decoder.next_message() {
                        if let SyncMessage::StateResponse(hybridsync_core::StateResponse {
                            request_id,
                            ..
                        }) = msg
                        {
                            let _ = tx.send((3 * frames + lane - 1, request_id));
                        }
                        frames += 1;
                    }
                    match recv.read_chunk(64 * 1024).await {
                        Ok(Some(chunk)) => decoder.push(&chunk),
                        _ => return,
                    }
                }
            });
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_frames_reach_the_engine_in_send_order_across_lanes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Dev::new(97, dir.path()).await;
    let (peer, peer_dev) = raw_member(98).await;
    let members = [a.id, peer_dev.id];
    let node = start(&mut a, &[&peer_dev], &members, None).await;
    let conn = peer.connect(a.endpoint_addr(), DEFAULT_ALPN).await.unwrap();
    let mut responses = state_responses(conn.clone()).await;
    let request = |request_id: u64| {
        encode_frame(&SyncMessage::StateRequest(hybridsync_core::StateRequest {
            request_id,
            owner: a.id,
            since: 0,
            limit: 100,
            window: 1,
        }))
    };
    // Bulk frame 1 (second lane) first; bulk frame 0 (first lane) only after a pause.
    let mut second = conn.open_uni().await.unwrap();
    second.write_all(&[2]).await.unwrap();
    second.write_all(&request(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        responses.try_recv().is_err(),
        "frame 1 was handed to the engine before frame 0 arrived"
    );
    let mut first = conn.open_uni().await.unwrap();
    first.write_all(&[1]).await.unwrap();
    first.write_all(&request(1)).await.unwrap();
    // In order, request 2 came last: it ends request 1's stream, so the last answer (in the
    // device's send order) is its.
    let mut seen = Vec::new();
    while let Ok(Some(response)) =
        tokio::time::timeout(Duration::from_millis(1_500), responses.recv()).await
    {
        seen.push(response);
    }
    seen.sort_unstable();
    assert_eq!(
        seen.last().map(|(_, id)| *id),
        Some(2),
        "the requests were not applied in send order: {seen:?}"
    );
    conn.close(0u32.into(), b"done");
    peer.close().await;
    node.shutdown().await.unwrap();
}
