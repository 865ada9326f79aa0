//! Simultaneous dials settle on one connection per pair, the same on both sides.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_core::Event;
use hybridsync_iroh::{offline_endpoint, IrohConfig, IrohTransport};
use hybridsync_tokio::Node;
use iroh::SecretKey;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4u8 {
        let (ka, kb) = (
            SecretKey::from_bytes(&[100 + 2 * round; 32]),
            SecretKey::from_bytes(&[101 + 2 * round; 32]),
        );
        let any = "127.0.0.1:0".parse().unwrap();
        let (ea, eb) = (
            offline_endpoint(ka.clone(), any).await.unwrap(),
            offline_endpoint(kb.clone(), any).await.unwrap(),
        );
        let (da, db) = (
            device_id(u128::from(round) * 2 + 1),
            device_id(u128::from(round) * 2 + 2),
        );
        let (ra, rb) = (
            hybridsync_iroh::DeviceRegistry::new(),
            hybridsync_iroh::DeviceRegistry::new(),
        );
        ra.insert(db, eb.addr()).unwrap();
        rb.insert(da, ea.addr()).unwrap();
        // No grace delay and no backoff: both sides dial at once.
        let cfg = IrohConfig {
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(50),
            dial_grace: Duration::ZERO,
            ..IrohConfig::default()
        };
        let (ta, tb) = (
            IrohTransport::new(ea, ra, cfg.clone()),
            IrohTransport::new(eb, rb, cfg),
        );
        ta.spawn_router();
        tb.spawn_router();
        let ba = Node::builder(config(da)).bootstrap_members([da, db]);
        let bb = Node::builder(config(db)).bootstrap_members([da, db]);
        let mut events_b = bb.subscribe();
        let (na, nb) = tokio::join!(
            ba.start(
                store::open(&dir.path().join(format!("a{round}.db"))),
                ta.clone()
            ),
            bb.start(
                store::open(&dir.path().join(format!("b{round}.db"))),
                tb.clone()
            ),
        );
        let (na, nb) = (na.unwrap(), nb.unwrap());
        connected(&na, &[db], Duration::from_secs(10)).await;
        connected(&nb, &[da], Duration::from_secs(10)).await;
        // Let any duplicate be resolved, then the survivor must be stable and work.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ta.connected().into_iter().collect::<Vec<_>>(), vec![db]);
        assert_eq!(tb.connected().into_iter().collect::<Vec<_>>(), vec![da]);
        while events_b.try_recv().is_ok() {}
        na.put("entry", Uuid::from_u128(1), b"x".to_vec())
            .await
            .unwrap();
        let e = wait_event(&mut events_b, Duration::from_secs(10), |e| {
            matches!(e, Event::RecordChanged { .. } | Event::PeerDisconnected(_))
        })
        .await;
        assert!(
            matches!(e, Event::RecordChanged { .. }),
            "round {round}: {e:?}"
        );
        na.shutdown().await.unwrap();
        nb.shutdown().await.unwrap();
    }
}
