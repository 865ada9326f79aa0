//! Three devices over real iroh endpoints on 127.0.0.1 with real storage files.
//! Convergence is always checked by comparing content digests, never counts.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hybridsync_core::{Event, Stream, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const T: Duration = Duration::from_secs(20);

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_changes_propagate_both_ways() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Dev::new(1, dir.path()).await;
    let mut b = Dev::new(2, dir.path()).await;
    let mut c = Dev::new(3, dir.path()).await;
    let members = [a.id, b.id, c.id];
    let na = start(&mut a, &[&b, &c], &members, None).await;
    let nb = start(&mut b, &[&a, &c], &members, None).await;
    let nc = start(&mut c, &[&a, &b], &members, None).await;
    connected(&na, &[b.id, c.id], T).await;
    connected(&nb, &[a.id, c.id], T).await;
    connected(&nc, &[a.id, b.id], T).await;

    // A real-time write from each side, timed at the receiver.
    let mut eb = nb.subscribe();
    let started = Instant::now();
    na.put("location", Uuid::from_u128(1), b"/a".to_vec())
        .await
        .unwrap();
    wait_event(
        &mut eb,
        T,
        |e| matches!(e, Event::RecordChanged { by, .. } if *by == a.id),
    )
    .await;
    let a_to_b = started.elapsed();
    let mut ea = na.subscribe();
    let started = Instant::now();
    nc.insert_shared("tag", Uuid::from_u128(7), fields(&[("name", "c")]))
        .await
        .unwrap();
    wait_event(
        &mut ea,
        T,
        |e| matches!(e, Event::RecordChanged { by, .. } if *by == c.id),
    )
    .await;
    let c_to_a = started.elapsed();
    println!("real-time latency (debug build): a->b {a_to_b:?}, c->a {c_to_a:?}");

    nb.update_shared("tag", Uuid::from_u128(7), fields(&[("color", "b")]))
        .await
        .unwrap();
    nb.put("entry", Uuid::from_u128(2), b"b".to_vec())
        .await
        .unwrap();
    converged(&[&na, &nb, &nc], T).await;
    // Still one connection per pair after the dust settles.
    for n in [&na, &nb, &nc] {
        assert_eq!(n.status().await.unwrap().connected.len(), 2);
    }
    for n in [na, nb, nc] {
        n.shutdown().await.unwrap();
    }
}
