//! The change feed covers catch-up: a device that catches up from scratch hears of every record
//! it receives, with its key, from events alone.

use hybridsync_core::{Config, DeviceId, Event, MemStore, ModelRegistry, Value};
use hybridsync_tokio::{ChannelNetwork, Node};
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

const A: DeviceId = DeviceId::from_u128(0xa);
const B: DeviceId = DeviceId::from_u128(0xb);

fn config(device: DeviceId) -> Config {
    let mut c = Config::new(device, ModelRegistry::spacedrive());
    c.heartbeat_interval = Duration::from_millis(200);
    c.ack_delay = Duration::from_millis(10);
    // Several catch-up pages.
    c.page_records = 7;
    c
}

/// The keys the events report as changed: `(model, uuid)`.
fn reported(e: &Event, keys: &mut BTreeSet<(String, Uuid)>) {
    match e {
        Event::RecordChanged { model, uuid, .. } => {
            keys.insert((model.clone(), *uuid));
        }
        Event::RecordsChanged { keys: page, .. } => keys.extend(page.iter().cloned()),
        _ => {}
    }
}

#[tokio::test]
async fn catch_up_from_scratch_reports_every_record_it_brings() {
    let net = ChannelNetwork::new();
    let a = Node::builder(config(A))
        .bootstrap_members([A, B])
        .start(MemStore::new(), net.transport(A))
        .await
        .expect("start");
    let mut want = BTreeSet::new();
    for i in 0..30u128 {
        a.put("entry", Uuid::from_u128(i), vec![1; 8])
            .await
            .expect("put");
        want.insert(("entry".to_owned(), Uuid::from_u128(i)));
        let fields = [("name".to_owned(), Value::from(format!("t{i}")))].into();
        a.insert_shared("tag", Uuid::from_u128(100 + i), fields)
            .await
            .expect("insert");
        want.insert(("tag".to_owned(), Uuid::from_u128(100 + i)));
    }
    let builder = Node::builder(config(B)).bootstrap_members([A, B]);
    let mut events = builder.subscribe();
    let b = builder
        .start(MemStore::new(), net.transport(B))
        .await
        .expect("start");
    net.link(A, B);
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !want.is_subset(&got) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) => reported(&e, &mut got),
            other => panic!(
                "{} of {} records never reported ({other:?})",
                want.difference(&got).count(),
                want.len()
            ),
        }
    }
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}
