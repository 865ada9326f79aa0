//! Issue 13 item 6: a connection never gets more inbound stream credit than the transport's
//! limit, not even in the moments before the transport lowers it (the initial credit comes
//! from the endpoint's transport config, sent in the handshake).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_iroh::{offline_endpoint, DEFAULT_ALPN};
use iroh::SecretKey;
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
    let key = SecretKey::from_bytes(&[96; 32]);
    let rogue = offline_endpoint(key.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rogue_dev = Dev::accept_only(device_id(96), key);
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
