//! Driver tests over the in-process channel transport and `MemStore`.

use hybridsync_core::{
    CommandError, Config, DeviceId, Event, MemStore, ModelRegistry, Refusal, StorageBackend,
    StorageCommand, StorageDone, Stream, SyncMessage, Value,
};
use hybridsync_tokio::{
    BoxFuture, ChannelNetwork, EventSink, Node, NodeError, Transport, TransportEvent,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const A: DeviceId = DeviceId::from_u128(0xa);
const B: DeviceId = DeviceId::from_u128(0xb);
const C: DeviceId = DeviceId::from_u128(0xc);

fn config(device: DeviceId) -> Config {
    let mut c = Config::new(device, ModelRegistry::spacedrive());
    c.heartbeat_interval = Duration::from_millis(200);
    c.ack_delay = Duration::from_millis(10);
    c
}

async fn start(net: &ChannelNetwork, device: DeviceId, store: MemStore) -> Node<MemStore> {
    Node::builder(config(device))
        .bootstrap_members([A, B, C])
        .start(store, net.transport(device))
        .await
        .expect("node starts")
}

async fn digest(node: &Node<MemStore>) -> u64 {
    node.inspect(|s: &mut MemStore| s.state().content_digest())
        .await
        .expect("running")
}

/// Waits until every node holds the same content; returns the digest.
async fn converged(nodes: &[&Node<MemStore>]) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut digests = Vec::new();
        for n in nodes {
            digests.push(digest(n).await);
        }
        if digests.windows(2).all(|w| w[0] == w[1]) {
            return digests[0];
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: {digests:x?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect()
}

#[tokio::test]
async fn local_write_resolves_once_stored() {
    let net = ChannelNetwork::new();
    let a = start(&net, A, MemStore::new()).await;
    a.put("location", Uuid::from_u128(1), b"/home".to_vec())
        .await
        .expect("put");
    let owned = a
        .inspect(|s: &mut MemStore| s.state().owned.len())
        .await
        .expect("running");
    assert_eq!(owned, 1);
    let status = a.status().await.expect("status");
    assert_eq!(status.watermarks.get(&A), Some(&1));
    a.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn invalid_command_fails_with_typed_reason() {
    let net = ChannelNetwork::new();
    let a = start(&net, A, MemStore::new()).await;
    let err = a
        .put("tag", Uuid::from_u128(1), vec![])
        .await
        .expect_err("tag is shared");
    assert_eq!(
        err,
        NodeError::Command(CommandError::WrongModelKind("tag".into()))
    );
    let err = a
        .insert_shared("nope", Uuid::from_u128(1), BTreeMap::new())
        .await
        .expect_err("unknown model");
    assert_eq!(
        err,
        NodeError::Command(CommandError::UnknownModel("nope".into()))
    );
    a.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn three_nodes_converge_on_owned_and_shared_writes() {
    let net = ChannelNetwork::new();
    net.link_all(&[A, B, C]);
    let a = start(&net, A, MemStore::new()).await;
    let b = start(&net, B, MemStore::new()).await;
    let c = start(&net, C, MemStore::new()).await;
    let tag = Uuid::from_u128(100);
    a.insert_shared("tag", tag, fields(&[("name", "holiday"), ("color", "red")]))
        .await
        .expect("insert");
    for (i, n) in [&a, &b, &c].into_iter().enumerate() {
        n.put("entry", Uuid::from_u128(i as u128), vec![i as u8; 8])
            .await
            .expect("put");
    }
    converged(&[&a, &b, &c]).await;
    b.update_shared("tag", tag, fields(&[("name", "trip")]))
        .await
        .expect("update");
    c.update_shared("tag", tag, fields(&[("color", "blue")]))
        .await
        .expect("update");
    c.delete("entry", Uuid::from_u128(2)).await.expect("delete");
    converged(&[&a, &b, &c]).await;
    let visible = a
        .inspect(move |s: &mut MemStore| {
            s.state()
                .shared
                .get(&("tag".to_owned(), tag))
                .and_then(|r| r.visible())
        })
        .await
        .expect("running");
    assert_eq!(
        visible,
        Some(fields(&[("color", "blue"), ("name", "trip")]))
    );
    for n in [a, b, c] {
        n.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn offline_node_catches_up_after_reconnect() {
    let net = ChannelNetwork::new();
    net.link_all(&[A, B, C]);
    let a = start(&net, A, MemStore::new()).await;
    let b = start(&net, B, MemStore::new()).await;
    let c = start(&net, C, MemStore::new()).await;
    net.isolate(C);
    for i in 0..50u128 {
        a.put("entry", Uuid::from_u128(i), vec![1; 16])
            .await
            .expect("put");
        b.insert_shared("tag", Uuid::from_u128(1000 + i), fields(&[("n", "x")]))
            .await
            .expect("insert");
    }
    let ab = converged(&[&a, &b]).await;
    assert_ne!(digest(&c).await, ab);
    net.link(C, A);
    net.link(C, B);
    assert_eq!(converged(&[&a, &b, &c]).await, ab);
    for n in [a, b, c] {
        n.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn restart_from_store_resumes_from_watermarks() {
    let net = ChannelNetwork::new();
    net.link_all(&[A, B]);
    let a = start(&net, A, MemStore::new()).await;
    let b = start(&net, B, MemStore::new()).await;
    for i in 0..20u128 {
        a.put("entry", Uuid::from_u128(i), vec![2; 4])
            .await
            .expect("put");
    }
    converged(&[&a, &b]).await;
    let store = b.shutdown().await.expect("shutdown hands the store back");
    a.put("entry", Uuid::from_u128(99), vec![3])
        .await
        .expect("put");
    let b = start(&net, B, store).await;
    let mut events = b.subscribe();
    converged(&[&a, &b]).await;
    // Only the one missing change was fetched, not the 20 it already had.
    let mut applied = 0;
    while let Ok(e) = events.try_recv() {
        if let Event::CatchUpProgress {
            stream: Stream::Owned(owner),
            applied: n,
            ..
        } = e
        {
            assert_eq!(owner, A);
            applied += n;
        }
    }
    assert!(applied <= 1, "re-fetched {applied} records");
    assert_eq!(
        b.status().await.expect("status").watermarks.get(&A),
        Some(&21)
    );
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn request_state_reports_progress_then_completes() {
    let net = ChannelNetwork::new();
    let mut cfg_b = config(B);
    cfg_b.page_records = 10;
    // No periodic anti-entropy: B fetches only when asked.
    cfg_b.heartbeat_interval = Duration::from_secs(3600);
    let a = Node::builder(config(A))
        .bootstrap_members([A, B])
        .start(MemStore::new(), net.transport(A))
        .await
        .expect("start");
    for i in 0..35u128 {
        a.put("entry", Uuid::from_u128(i), vec![4; 4])
            .await
            .expect("put");
    }
    let b = Node::builder(cfg_b)
        .bootstrap_members([A, B])
        .start(MemStore::new(), net.transport(B))
        .await
        .expect("start");
    let mut events = b.subscribe();
    net.link(A, B);
    // Wait for the session, then ask explicitly (the summary may already have started one).
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(Event::PeerConnected(p))) if p == A => break,
            Ok(Ok(_)) => {}
            other => panic!("no session: {other:?}"),
        }
    }
    let mut fetch = b.request_state(A, A, Some(0)).await;
    let mut pages = 0;
    while let Some(p) = fetch.next_progress().await {
        assert_eq!(p.stream, Stream::Owned(A));
        pages += 1;
    }
    match fetch.finish().await {
        Ok(()) => assert!(pages >= 4, "{pages} pages"),
        // The engine's own catch-up got there first: one fetch per owner at a time.
        Err(NodeError::Command(CommandError::AlreadyFetching)) => {}
        Err(e) => panic!("fetch failed: {e}"),
    }
    converged(&[&a, &b]).await;
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}

/// A backend that logs when writes become durable, and a transport that logs sends, to check
/// the write-ahead rule end to end.
struct LoggingStore {
    inner: MemStore,
    log: Arc<Mutex<Vec<String>>>,
}

impl StorageBackend for LoggingStore {
    type Error = std::convert::Infallible;

    fn execute(&mut self, commands: Vec<StorageCommand>) -> Result<Vec<StorageDone>, Self::Error> {
        let mut durable = Vec::new();
        for c in &commands {
            if let StorageCommand::PutOwned(rs) = c {
                durable.extend(rs.iter().map(|r| format!("durable {}", r.seq)));
            }
        }
        // Make the commit slow so a driver that does not wait would be caught.
        std::thread::sleep(Duration::from_millis(5));
        let done = StorageBackend::execute(&mut self.inner, commands)?;
        self.log.lock().expect("log").extend(durable);
        Ok(done)
    }

    fn load_restored(&mut self) -> Result<hybridsync_core::Restored, Self::Error> {
        StorageBackend::load_restored(&mut self.inner)
    }
}

struct LoggingTransport {
    log: Arc<Mutex<Vec<String>>>,
    sink: Option<EventSink>,
}

impl Transport for LoggingTransport {
    fn start(&mut self, sink: EventSink) {
        let s = sink.clone();
        tokio::spawn(async move {
            let _ = s.peer_up(B).await;
        });
        self.sink = Some(sink);
    }

    fn send(&mut self, _to: DeviceId, msg: SyncMessage) {
        if let SyncMessage::StateChange(r) = msg {
            self.log
                .lock()
                .expect("log")
                .push(format!("sent {}", r.seq));
        }
    }

    fn disconnect(&mut self, _peer: DeviceId, _reason: Refusal) {}

    fn shutdown(&mut self) -> BoxFuture {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn sends_wait_until_earlier_writes_are_durable() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = LoggingStore {
        inner: MemStore::new(),
        log: log.clone(),
    };
    let transport = LoggingTransport {
        log: log.clone(),
        sink: None,
    };
    let a = Node::builder(config(A))
        .bootstrap_members([A, B])
        .start(store, transport)
        .await
        .expect("start");
    let mut events = a.subscribe();
    loop {
        if let Ok(Ok(Event::PeerConnected(_))) =
            tokio::time::timeout(Duration::from_secs(5), events.recv()).await
        {
            break;
        }
    }
    let writers: Vec<_> = (0..20u128)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.put("entry", Uuid::from_u128(i), vec![1]).await })
        })
        .collect();
    for w in writers {
        w.await.expect("join").expect("put");
    }
    a.shutdown().await.expect("shutdown");
    let log = log.lock().expect("log").clone();
    for seq in 1..=20 {
        let durable = log.iter().position(|l| *l == format!("durable {seq}"));
        let sent = log.iter().position(|l| *l == format!("sent {seq}"));
        let (Some(d), Some(s)) = (durable, sent) else {
            panic!("seq {seq} missing in {log:?}");
        };
        assert!(d < s, "seq {seq} sent before durable: {log:?}");
    }
}

#[tokio::test]
async fn messages_from_a_peer_that_is_not_up_are_dropped() {
    // A transport that delivers a message without PeerUp: the driver must drop it.
    struct Rogue;
    impl Transport for Rogue {
        fn start(&mut self, sink: EventSink) {
            tokio::spawn(async move {
                let rec = hybridsync_core::OwnedRecord {
                    owner: B,
                    seq: 1,
                    hlc: hybridsync_core::Hlc::new(1, 0, B),
                    model: "entry".into(),
                    uuid: Uuid::from_u128(5),
                    data: Some(vec![1]),
                };
                let _ = sink.message(B, SyncMessage::StateChange(rec.into())).await;
            });
        }
        fn send(&mut self, _: DeviceId, _: SyncMessage) {}
        fn disconnect(&mut self, _: DeviceId, _: Refusal) {}
        fn shutdown(&mut self) -> BoxFuture {
            Box::pin(async {})
        }
    }
    let a = Node::builder(config(A))
        .bootstrap_members([A, B])
        .start(MemStore::new(), Rogue)
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let owned = a
        .inspect(|s: &mut MemStore| s.state().owned.len())
        .await
        .expect("running");
    assert_eq!(owned, 0);
    a.shutdown().await.expect("shutdown");
    let _ = TransportEvent::PeerUp(A);
}

/// A backend whose disk "fails" on the first batch that stores a device-owned record.
struct FailingStore {
    inner: MemStore,
}

#[derive(Debug, thiserror::Error)]
#[error("disk full")]
struct DiskFull;

impl StorageBackend for FailingStore {
    type Error = DiskFull;

    fn execute(&mut self, commands: Vec<StorageCommand>) -> Result<Vec<StorageDone>, DiskFull> {
        if commands
            .iter()
            .any(|c| matches!(c, StorageCommand::PutOwned(_)))
        {
            return Err(DiskFull);
        }
        Ok(StorageBackend::execute(&mut self.inner, commands).unwrap_or_default())
    }

    fn load_restored(&mut self) -> Result<hybridsync_core::Restored, DiskFull> {
        Ok(self.inner.restored())
    }
}

#[tokio::test]
async fn storage_failure_stops_the_node_before_anything_is_sent() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let transport = LoggingTransport {
        log: log.clone(),
        sink: None,
    };
    let a = Node::builder(config(A))
        .bootstrap_members([A, B])
        .start(
            FailingStore {
                inner: MemStore::new(),
            },
            transport,
        )
        .await
        .expect("start");
    let mut events = a.subscribe();
    loop {
        if let Ok(Ok(Event::PeerConnected(_))) =
            tokio::time::timeout(Duration::from_secs(5), events.recv()).await
        {
            break;
        }
    }
    let err = a
        .put("entry", Uuid::from_u128(1), vec![1])
        .await
        .expect_err("the write cannot be made durable");
    assert!(
        matches!(
            err,
            NodeError::Stopped | NodeError::Command(CommandError::Interrupted(_))
        ),
        "{err:?}"
    );
    // The backend's own error comes back, as the failure's error (not only its message).
    match a.shutdown().await {
        Err(NodeError::Storage(failure)) => {
            assert!(
                failure.get_ref().downcast_ref::<DiskFull>().is_some(),
                "{failure:?}"
            );
        }
        other => panic!("expected a storage failure: {:?}", other.err()),
    }
    assert!(
        log.lock()
            .expect("log")
            .iter()
            .all(|l| !l.starts_with("sent")),
        "a change was sent although it never became durable"
    );
    assert_eq!(a.status().await, Err(NodeError::Stopped));
}

/// A transport that logs the catch-up window reports it is asked to send.
struct RequestLog<T> {
    inner: T,
    log: Arc<Mutex<Vec<String>>>,
}

impl<T: Transport> Transport for RequestLog<T> {
    fn start(&mut self, sink: EventSink) {
        self.inner.start(sink);
    }

    fn send(&mut self, to: DeviceId, msg: SyncMessage) {
        if let SyncMessage::PagesReceived(hybridsync_core::PagesReceived { pages, .. }) = &msg {
            self.log
                .lock()
                .expect("log")
                .push(format!("received {pages}"));
        }
        self.inner.send(to, msg);
    }

    fn disconnect(&mut self, peer: DeviceId, reason: Refusal) {
        self.inner.disconnect(peer, reason);
    }

    fn shutdown(&mut self) -> BoxFuture {
        self.inner.shutdown()
    }
}

#[tokio::test]
async fn catch_up_window_moves_while_the_page_commits() {
    let net = ChannelNetwork::new();
    let mut cfg_a = config(A);
    cfg_a.heartbeat_interval = Duration::from_secs(3600);
    let a = Node::builder(cfg_a)
        .bootstrap_members([A, B])
        .start(MemStore::new(), net.transport(A))
        .await
        .expect("start");
    for i in 0..30u128 {
        a.put("entry", Uuid::from_u128(i), vec![4; 4])
            .await
            .expect("put");
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut cfg_b = config(B);
    cfg_b.page_records = 10;
    cfg_b.heartbeat_interval = Duration::from_secs(3600);
    let b = Node::builder(cfg_b)
        .bootstrap_members([A, B])
        .start(
            LoggingStore {
                inner: MemStore::new(),
                log: log.clone(),
            },
            RequestLog {
                inner: net.transport(B),
                log: log.clone(),
            },
        )
        .await
        .expect("start");
    net.link(A, B);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.status().await.expect("running").watermarks.get(&A) != Some(&30) {
        assert!(tokio::time::Instant::now() < deadline, "no catch-up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
    let log = log.lock().expect("log").clone();
    // The report of the page ending at seq 10 (the first), which lets A read on, does not
    // wait for that page to commit (the slow store takes 5 ms per batch); nothing is
    // advertised by it.
    let request = log.iter().position(|l| l == "received 1");
    let durable = log.iter().position(|l| l == "durable 10");
    assert!(
        matches!((request, durable), (Some(r), Some(d)) if r < d),
        "{log:?}"
    );
}

/// What a scripted transport saw the driver do.
#[derive(Default)]
struct Seen {
    disconnects: Vec<(DeviceId, Refusal)>,
    /// Messages sent to each peer.
    sent: Vec<DeviceId>,
    /// Every member set the driver handed the transport.
    members: Vec<std::collections::BTreeSet<DeviceId>>,
}

/// A transport that delivers a fixed script of events (back to back, so later ones are
/// already queued when the engine refuses the peer) and never reports a `PeerDown` itself.
struct Scripted {
    script: Vec<TransportEvent>,
    seen: Arc<Mutex<Seen>>,
}

impl Transport for Scripted {
    fn start(&mut self, sink: EventSink) {
        let script = std::mem::take(&mut self.script);
        tokio::spawn(async move {
            for ev in script {
                let r = match ev {
                    TransportEvent::PeerUp(p) => sink.peer_up(p).await,
                    TransportEvent::PeerDown(p) => sink.peer_down(p).await,
                    TransportEvent::Message { from, msg } => sink.message(from, msg).await,
                };
                if r.is_err() {
                    return;
                }
            }
        });
    }

    fn send(&mut self, to: DeviceId, _msg: SyncMessage) {
        self.seen.lock().expect("seen").sent.push(to);
    }

    fn disconnect(&mut self, peer: DeviceId, reason: Refusal) {
        self.seen
            .lock()
            .expect("seen")
            .disconnects
            .push((peer, reason));
    }

    fn set_members(&mut self, members: &std::collections::BTreeSet<DeviceId>) {
        self.seen
            .lock()
            .expect("seen")
            .members
            .push(members.clone());
    }

    fn shutdown(&mut self) -> BoxFuture {
        Box::pin(async {})
    }
}

fn push_from(owner: DeviceId, seq: u64, uuid: u128) -> SyncMessage {
    let rec = hybridsync_core::OwnedRecord {
        owner,
        seq,
        hlc: hybridsync_core::Hlc::new(1, 0, owner),
        model: "entry".into(),
        uuid: Uuid::from_u128(uuid),
        data: Some(vec![1]),
    };
    SyncMessage::StateChange(rec.into())
}

/// Collects the events the node emitted so far (the subscription was taken before start).
async fn drain_events(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        out.push(e);
    }
    out
}

/// Issue 13 item 3: a member the engine refused is not re-admitted by the messages it had
/// already queued (the transport reports it down only later).
#[tokio::test]
async fn a_refused_member_is_not_readmitted_by_its_queued_messages() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let transport = Scripted {
        script: vec![
            TransportEvent::PeerUp(B),
            // An ack naming another acker: refused, B is disconnected.
            TransportEvent::Message {
                from: B,
                msg: SyncMessage::AckSharedChanges(hybridsync_core::Ack {
                    acker: C,
                    vv: hybridsync_core::VersionVector::new(),
                }),
            },
            // Already queued behind it: must reach no engine.
            TransportEvent::Message {
                from: B,
                msg: push_from(B, 1, 5),
            },
        ],
        seen: seen.clone(),
    };
    let builder = Node::builder(config(A)).bootstrap_members([A, B, C]);
    let mut events = builder.subscribe();
    let a = builder
        .start(MemStore::new(), transport)
        .await
        .expect("start");
    let events = drain_events(&mut events).await;
    let owned = a
        .inspect(|s: &mut MemStore| s.state().owned.len())
        .await
        .expect("running");
    let status = a.status().await.expect("running");
    a.shutdown().await.expect("shutdown");
    let connected = events
        .iter()
        .filter(|e| **e == Event::PeerConnected(B))
        .count();
    assert_eq!(connected, 1, "B was re-admitted: {events:?}");
    assert_eq!(owned, 0, "a refused peer's queued push was applied");
    assert!(!status.peers.contains(&B), "{status:?}");
    assert!(!status.connected.contains(&B), "{status:?}");
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.disconnects, vec![(B, Refusal::AckerMismatch)]);
}

/// Issue 13 item 3: a non-member's messages, queued behind its refused `PeerUp`, cost the
/// engine nothing (one refusal, not one per message).
#[tokio::test]
async fn a_non_member_is_refused_once_and_its_queued_messages_are_dropped() {
    const X: DeviceId = DeviceId::from_u128(0xee);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut script = vec![TransportEvent::PeerUp(X)];
    for i in 0..5 {
        script.push(TransportEvent::Message {
            from: X,
            msg: push_from(X, i + 1, 10 + u128::from(i)),
        });
    }
    let transport = Scripted {
        script,
        seen: seen.clone(),
    };
    let builder = Node::builder(config(A)).bootstrap_members([A, B]);
    let mut events = builder.subscribe();
    let a = builder
        .start(MemStore::new(), transport)
        .await
        .expect("start");
    let events = drain_events(&mut events).await;
    a.shutdown().await.expect("shutdown");
    let refusals = events
        .iter()
        .filter(|e| matches!(e, Event::PeerMisbehaved { peer, .. } if *peer == X))
        .count();
    assert_eq!(refusals, 1, "{events:?}");
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.disconnects, vec![(X, Refusal::NotMember)]);
    assert!(!seen.sent.contains(&X));
}

/// Issue 13 item 3: the transport learns the member set at start and every change of it, so
/// it can stop dialing a removed device.
#[tokio::test]
async fn the_transport_learns_every_change_of_the_member_set() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let transport = Scripted {
        script: vec![],
        seen: seen.clone(),
    };
    let a = Node::builder(config(A))
        .bootstrap_members([A, B, C])
        .start(MemStore::new(), transport)
        .await
        .expect("start");
    a.remove_member(C).await.expect("remove");
    a.add_member(DeviceId::from_u128(0xd)).await.expect("add");
    a.shutdown().await.expect("shutdown");
    let seen = seen.lock().expect("seen");
    let sets: Vec<Vec<DeviceId>> = seen
        .members
        .iter()
        .map(|s| s.iter().copied().collect())
        .collect();
    assert_eq!(
        sets,
        vec![
            vec![A, B, C],
            vec![A, B],
            vec![A, B, DeviceId::from_u128(0xd)]
        ]
    );
}
