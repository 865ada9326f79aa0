//! Issue 13 item 5: what a device queues for a peer that does not read is bounded in bytes,
//! not only in frames: past `IrohConfig::realtime_queue_bytes` the peer is disconnected as
//! too slow.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_iroh::{close_code, offline_endpoint, DEFAULT_ALPN};
use iroh::endpoint::ConnectionError;
use iroh::SecretKey;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_disconnected_past_the_byte_budget() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Dev::new(91, dir.path()).await;
    let key = SecretKey::from_bytes(&[92; 32]);
    let reader = device_id(92);
    let ep = offline_endpoint(key.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let reader_dev = Dev::accept_only(reader, key);
    let me = a.id;
    let node = start(&mut a, &[&reader_dev], &[me, reader], None).await;
    // A member that connects and never reads a byte.
    let conn = ep.connect(a.endpoint_addr(), DEFAULT_ALPN).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 24 real-time pushes of 2 MiB (48 MiB): far fewer frames than `realtime_queue`, more bytes
    // than `realtime_queue_bytes` (32 MiB).
    for i in 0..24u128 {
        node.put("entry", Uuid::from_u128(i), vec![i as u8; 2 * 1024 * 1024])
            .await
            .unwrap();
    }
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the device disconnects a peer that holds 48 MiB of its queue");
    match closed {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), u64::from(close_code::SLOW_PEER));
        }
        other => panic!("unexpected close: {other:?}"),
    }
    node.shutdown().await.unwrap();
}
