//! Devices that know each other only by endpoint id and relay URL, through a real relay server
//! started in this process on 127.0.0.1 (the `iroh-relay` crate's server, TLS with a throwaway
//! self-signed certificate that only these endpoints trust). Nothing here contacts any other
//! server: no public relay, no DNS, no address lookup, no port mapping.
//!
//! Two kinds of device:
//! - **relay only** (no UDP socket of their own): every packet crosses the relay, so the
//!   relay's byte counters prove the records went through it, and a relay outage really cuts
//!   the devices off;
//! - **direct socket too** (a real device): the relay introduces the devices, then iroh may
//!   hole-punch a direct 127.0.0.1 path; the test reports which path carried the data.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/local_relay.rs"]
mod local_relay;

use common::{config, converged, init_tracing, iroh_config, store, Store};
use hybridsync_core::{DeviceId, OwnedRecord, Value};
use hybridsync_iroh::{bind_endpoint, device_id_for, DeviceRegistry, IrohTransport};
use hybridsync_tokio::Node;
use iroh::{EndpointAddr, SecretKey};
use local_relay::{LocalRelay, T};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// A device of these tests: a key, a database, and how it reaches the network.
struct Dev {
    key: SecretKey,
    id: DeviceId,
    db: PathBuf,
    direct: bool,
}

impl Dev {
    fn new(n: u8, dir: &Path, direct: bool) -> Dev {
        let key = SecretKey::from_bytes(&[n; 32]);
        Dev {
            id: device_id_for(&key.public()),
            key,
            db: dir.join(format!("relay-{n}.db")),
            direct,
        }
    }

    /// What another device knows of this one: its endpoint id and the relay's URL, no
    /// direct address.
    fn by_relay(&self, relay: &LocalRelay) -> EndpointAddr {
        EndpointAddr::new(self.key.public()).with_relay_url(relay.url().clone())
    }

    /// Binds a new endpoint (a new port, for a device with a direct socket) and starts the
    /// node on its database; `peers` is what its registry holds.
    async fn start(
        &self,
        relay: &LocalRelay,
        peers: &[(DeviceId, EndpointAddr)],
        members: &[DeviceId],
        previous: Option<Store>,
    ) -> (Node<Store>, IrohTransport) {
        let endpoint = bind_endpoint(self.key.clone(), &relay.network(self.direct))
            .await
            .unwrap();
        // Online: the endpoint holds a connection to the relay (its home relay).
        tokio::time::timeout(T, endpoint.online())
            .await
            .expect("connected to the local relay");
        let registry = DeviceRegistry::new();
        for (device, addr) in peers {
            registry.insert(*device, addr.clone()).unwrap();
        }
        let transport = IrohTransport::new(endpoint, registry, iroh_config());
        transport.spawn_router();
        let store = match previous {
            None => store::open(&self.db),
            Some(p) => store::reopen(&self.db, p),
        };
        let node = Node::builder(config(self.id))
            .bootstrap_members(members.iter().copied())
            .start(store, transport.clone())
            .await
            .unwrap();
        (node, transport)
    }
}

/// An `entry` payload that says who wrote what, padded to 2 KiB so that the records
/// outweigh the protocol's own messages in the relay's byte count.
fn entry(text: &str) -> Vec<u8> {
    Value::from(format!("{text:-<2048}")).to_bytes()
}

fn key(owner: u8, n: u32) -> Uuid {
    Uuid::from_u128((u128::from(owner) << 64) | u128::from(n))
}

/// Every live `entry` record `node` holds: (owner, uuid) -> (seq, payload).
async fn entries(node: &Node<Store>) -> BTreeMap<(DeviceId, Uuid), (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let page = node.list_owned("entry", after, 256).await.unwrap();
        for OwnedRecord {
            owner,
            uuid,
            seq,
            data,
            ..
        } in page.items
        {
            let previous = out.insert((owner, uuid), (seq, data.unwrap()));
            assert!(previous.is_none(), "{owner} {uuid} listed twice");
        }
        after = page.next;
        if after.is_none() {
            return out;
        }
    }
}

/// Every visible `tag` record: uuid -> fields.
async fn tags(node: &Node<Store>) -> BTreeMap<Uuid, BTreeMap<String, Value>> {
    let page = node.list_shared("tag", None, 1024).await.unwrap();
    assert!(page.next.is_none());
    page.items.into_iter().map(|v| (v.uuid, v.fields)).collect()
}

fn tag_fields(name: &str, color: &str) -> BTreeMap<String, Value> {
    [
        ("name".to_owned(), Value::from(name)),
        ("color".to_owned(), Value::from(color)),
    ]
    .into_iter()
    .collect()
}

/// What the test wrote: (owner, uuid) -> payload.
type Written = BTreeMap<(DeviceId, Uuid), Vec<u8>>;

async fn write(node: &Node<Store>, owner: u8, range: std::ops::Range<u32>, written: &mut Written) {
    for n in range {
        let payload = entry(&format!("device {owner} record {n}"));
        node.put("entry", key(owner, n), payload.clone())
            .await
            .unwrap();
        written.insert((node.device(), key(owner, n)), payload);
    }
}

/// Waits until both nodes hold the same content; then checks that both hold the same entries
/// (same sequence numbers and payloads), exactly those written (none lost, none extra, none
/// listed twice), and the same tags.
async fn same_records(a: &Node<Store>, b: &Node<Store>, written: &Written) {
    converged(&[a, b], T).await;
    let (ea, eb) = (entries(a).await, entries(b).await);
    assert_eq!(ea, eb, "the two devices hold different entries");
    let payloads: Written = ea.iter().map(|(k, (_, p))| (*k, p.clone())).collect();
    assert_eq!(&payloads, written, "entries lost or invented");
    assert_eq!(
        tags(a).await,
        tags(b).await,
        "the two devices hold different tags"
    );
}

/// How `transport`'s connection to `peer` is carried, for the test's output: its open paths,
/// the selected one marked `*`, with the bytes each sent.
fn paths(transport: &IrohTransport, peer: &Dev) -> String {
    let Some(conn) = transport.connection(peer.id) else {
        return "not connected".to_owned();
    };
    let paths: Vec<String> = conn
        .paths()
        .iter()
        .map(|p| {
            let mark = if p.is_selected() { "*" } else { "" };
            format!(
                "{mark}{:?} sent {} B",
                p.remote_addr(),
                p.stats().udp_tx.bytes
            )
        })
        .collect();
    paths.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_known_only_by_id_and_relay_url_pair_and_sync_through_the_relay() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let relay = LocalRelay::start().await;
    // Relay only: neither device has a socket of its own, so every byte crosses the relay.
    let (a, b) = (
        Dev::new(41, dir.path(), false),
        Dev::new(42, dir.path(), false),
    );
    let members = [a.id, b.id];
    let (na, ta) = a
        .start(&relay, &[(b.id, b.by_relay(&relay))], &members, None)
        .await;
    let (nb, _tb) = b
        .start(&relay, &[(a.id, a.by_relay(&relay))], &members, None)
        .await;

    let mut written = Written::new();
    write(&na, 41, 0..20, &mut written).await;
    write(&nb, 42, 0..20, &mut written).await;
    na.insert_shared("tag", key(0, 1), tag_fields("holiday", "red"))
        .await
        .unwrap();
    nb.insert_shared("tag", key(0, 2), tag_fields("work", "blue"))
        .await
        .unwrap();
    same_records(&na, &nb, &written).await;
    let payload: usize = written.values().map(Vec::len).sum();
    let delivered = relay.delivered();
    eprintln!(
        "relay delivered {delivered} bytes for {payload} bytes of entries; a->b {}",
        paths(&ta, &b)
    );
    // Each side's payloads crossed the relay once, inside QUIC packets.
    assert!(
        delivered > payload as u64,
        "the relay delivered {delivered} bytes, less than the {payload} bytes of entries"
    );
    na.shutdown().await.unwrap();
    nb.shutdown().await.unwrap();
}

/// B never dials (it knows A only by id, accept-only), so reaching B again is A's job, with
/// B's id and the relay URL, while B's old direct address leads nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_restarting_on_another_port_is_reached_again_through_the_relay() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let relay = LocalRelay::start().await;
    // Real devices: a direct socket each, besides the relay.
    let (a, b) = (
        Dev::new(51, dir.path(), true),
        Dev::new(52, dir.path(), true),
    );
    let members = [a.id, b.id];
    let a_peers = [(b.id, b.by_relay(&relay))];
    let b_peers = [(a.id, EndpointAddr::new(a.key.public()))];
    let (na, ta) = a.start(&relay, &a_peers, &members, None).await;
    let (nb, tb) = b.start(&relay, &b_peers, &members, None).await;
    let mut written = Written::new();
    write(&na, 51, 0..5, &mut written).await;
    write(&nb, 52, 0..5, &mut written).await;
    same_records(&na, &nb, &written).await;
    eprintln!("before the restart: a->b {}", paths(&ta, &b));
    let old_port = tb.endpoint().bound_sockets()[0];

    let stored = nb.shutdown().await.unwrap();
    drop((nb, tb)); // the last handles on B's old endpoint: its socket closes
                    // Hold B's old port (once the old endpoint let it go) so that B cannot get it back: its
                    // old address is now a dead end.
    let deadline = tokio::time::Instant::now() + T;
    let _old = loop {
        match std::net::UdpSocket::bind(old_port) {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{old_port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    write(&na, 51, 5..10, &mut written).await;
    let (nb, tb) = b.start(&relay, &b_peers, &members, Some(stored)).await;
    let new_port = tb.endpoint().bound_sockets()[0];
    assert_ne!(new_port, old_port);
    write(&nb, 52, 5..10, &mut written).await;
    same_records(&na, &nb, &written).await;
    eprintln!(
        "after the restart ({old_port} -> {new_port}): a->b {}; relay delivered {} bytes",
        paths(&ta, &b),
        relay.delivered()
    );
    na.shutdown().await.unwrap();
    nb.shutdown().await.unwrap();
}

/// Waits until neither transport has a connection.
async fn cut_off(transports: &[&IrohTransport]) {
    let deadline = tokio::time::Instant::now() + T;
    while transports.iter().any(|t| !t.connected().is_empty()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected without the relay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_outage_loses_and_duplicates_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut relay = LocalRelay::start().await;
    // Relay only: the outage really cuts the devices off from each other.
    let (a, b) = (
        Dev::new(61, dir.path(), false),
        Dev::new(62, dir.path(), false),
    );
    let members = [a.id, b.id];
    let (na, ta) = a
        .start(&relay, &[(b.id, b.by_relay(&relay))], &members, None)
        .await;
    let (nb, tb) = b
        .start(&relay, &[(a.id, a.by_relay(&relay))], &members, None)
        .await;
    let mut written = Written::new();
    write(&na, 61, 0..10, &mut written).await;
    write(&nb, 62, 0..10, &mut written).await;
    na.insert_shared("tag", key(0, 1), tag_fields("holiday", "red"))
        .await
        .unwrap();
    same_records(&na, &nb, &written).await;

    relay.stop().await;
    cut_off(&[&ta, &tb]).await;
    // Both sides write while apart, the same tag included.
    write(&na, 61, 10..20, &mut written).await;
    write(&nb, 62, 10..20, &mut written).await;
    let color = |c: &str| [("color".to_owned(), Value::from(c))].into_iter().collect();
    na.update_shared("tag", key(0, 1), color("green"))
        .await
        .unwrap();
    nb.update_shared("tag", key(0, 1), color("blue"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ta.connected().is_empty() && tb.connected().is_empty());

    let restarted = tokio::time::Instant::now();
    relay.restart().await;
    same_records(&na, &nb, &written).await;
    eprintln!(
        "converged {:?} after the relay came back",
        restarted.elapsed()
    );
    let tag = tags(&na).await.remove(&key(0, 1)).expect("the tag");
    assert!(
        [Value::from("green"), Value::from("blue")].contains(&tag["color"]),
        "{tag:?}"
    );
    na.shutdown().await.unwrap();
    nb.shutdown().await.unwrap();
}
