//! Re-binding a device to another key closes the connection of the old key and refuses it.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_iroh::{device_id_for, offline_endpoint, DeviceRegistry, IrohTransport};
use hybridsync_tokio::Node;
use iroh::{EndpointAddr, SecretKey};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_a_device_closes_and_refuses_its_old_key() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb) = (
        SecretKey::from_bytes(&[31; 32]),
        SecretKey::from_bytes(&[32; 32]),
    );
    let any = "127.0.0.1:0".parse().unwrap();
    let (ea, eb) = (
        offline_endpoint(ka.clone(), any).await.unwrap(),
        offline_endpoint(kb.clone(), any).await.unwrap(),
    );
    let (da, db) = (device_id_for(&ka.public()), device_id_for(&kb.public()));
    let (ra, rb) = (DeviceRegistry::new(), DeviceRegistry::new());
    ra.insert(db, eb.addr()).unwrap();
    rb.insert(da, ea.addr()).unwrap();
    let (ta, tb) = (
        IrohTransport::new(ea, ra.clone(), iroh_config()),
        IrohTransport::new(eb, rb, iroh_config()),
    );
    ta.spawn_router();
    tb.spawn_router();
    let na = Node::builder(config(da))
        .bootstrap_members([da, db])
        .start(store::open(&dir.path().join("a.db")), ta.clone())
        .await
        .unwrap();
    let nb = Node::builder(config(db))
        .bootstrap_members([da, db])
        .start(store::open(&dir.path().join("b.db")), tb.clone())
        .await
        .unwrap();
    connected(&na, &[db], Duration::from_secs(10)).await;

    // B's device id now belongs to another key (with no address: accepted, never dialed).
    let other = SecretKey::from_bytes(&[33; 32]).public();
    assert_eq!(
        ra.rebind(db, EndpointAddr::new(other)),
        Ok(Some(kb.public()))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ta.connected().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old key's connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B keeps dialing with its (old) key and is refused every time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(ta.connected().is_empty(), "{:?}", ta.connected());
    assert!(!na.status().await.unwrap().peers.contains(&db));
    na.shutdown().await.unwrap();
    nb.shutdown().await.unwrap();
}
