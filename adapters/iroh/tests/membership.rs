//! Issue 13 item 3: a removed member is neither dialed nor accepted by any device (not only by
//! the one that removed it), and a member added back is dialed again.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_iroh::{close_code, offline_endpoint, DEFAULT_ALPN};
use iroh::endpoint::{Connection, ConnectionError};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointId};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Stands in for a removed device at its address: records who dials it, and hangs up.
#[derive(Clone, Debug, Default)]
struct Counter {
    dialed_by: Arc<Mutex<Vec<EndpointId>>>,
}

impl ProtocolHandler for Counter {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.dialed_by.lock().unwrap().push(conn.remote_id());
        conn.close(0u32.into(), b"bye");
        Ok(())
    }
}

/// Binds `key`'s endpoint at `addr` again (the port was just released).
async fn rebind(dev: &Dev) -> Endpoint {
    let mut tries = 0;
    loop {
        match offline_endpoint(dev.key.clone(), dev.addr).await {
            Ok(e) => return e,
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!(error = %e, "rebind failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {}: {e}", dev.addr),
        }
    }
}

async fn members_of(node: &hybridsync_tokio::Node<Store>) -> Vec<hybridsync_core::DeviceId> {
    node.status().await.unwrap().members.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_neither_dialed_nor_accepted_by_any_device() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Dev::new(91, dir.path()).await;
    let mut b = Dev::new(92, dir.path()).await;
    let mut d = Dev::new(93, dir.path()).await;
    let members = [a.id, b.id, d.id];
    // Every registry keeps D (as an application that has not cleaned up yet would): the
    // member set alone must stop the dials.
    let na = start(&mut a, &[&b, &d], &members, None).await;
    let nb = start(&mut b, &[&a, &d], &members, None).await;
    let nd = start(&mut d, &[&a, &b], &members, None).await;
    connected(&na, &[b.id, d.id], T).await;
    connected(&nb, &[a.id, d.id], T).await;

    // A removes D; B learns it from A.
    na.remove_member(d.id).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while members_of(&nb).await.contains(&d.id) {
        assert!(tokio::time::Instant::now() < deadline, "B never learnt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // D goes away; something that counts dials takes its address.
    let d_store = nd.shutdown().await.unwrap();
    let raw = rebind(&d).await;
    let counter = Counter::default();
    let router = Router::builder(raw.clone())
        .accept(DEFAULT_ALPN, counter.clone())
        .spawn();
    // Well past the backoff and cooldown of the test config (at most 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dialed_by = counter.dialed_by.lock().unwrap().clone();
    let (ka, kb) = (a.key.public(), b.key.public());
    let a_dials = dialed_by.iter().filter(|e| **e == ka).count();
    let b_dials = dialed_by.iter().filter(|e| **e == kb).count();
    assert_eq!(
        (a_dials, b_dials),
        (0, 0),
        "the removed device was redialed (A {a_dials} times, B {b_dials} times)"
    );

    // And D's own dial is closed before any stream is read, without engine work.
    let conn = raw.connect(b.endpoint_addr(), DEFAULT_ALPN).await.unwrap();
    let closed = tokio::time::timeout(T, conn.closed()).await.unwrap();
    match closed {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), u64::from(close_code::NOT_MEMBER))
        }
        other => panic!("unexpected close: {other:?}"),
    }
    assert!(!nb.status().await.unwrap().connected.contains(&d.id));
    // Release D's port for its restart.
    drop(conn);
    router.shutdown().await.unwrap();
    raw.close().await;
    drop((router, raw));

    // Added back, D is dialed and accepted again.
    let nd = start(&mut d, &[&a, &b], &members, Some(d_store)).await;
    na.add_member(d.id).await.unwrap();
    connected(&na, &[b.id, d.id], T).await;
    connected(&nb, &[a.id, d.id], T).await;
    na.shutdown().await.unwrap();
    nb.shutdown().await.unwrap();
    nd.shutdown().await.unwrap();
}
