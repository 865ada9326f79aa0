//! How to write a transport: hybridsync over plain TCP on 127.0.0.1.
//!
//! A transport only moves messages between authenticated devices; the engine does the rest.
//! This one shows every duty of the [`Transport`] contract in ~150 lines:
//!
//! 1. **identity**: each side sends its `DeviceId` first. *This is not authentication* — a
//!    real transport must prove identity (iroh does it with TLS keys); never trust a device id
//!    that a peer merely claims.
//! 2. **framing**: `encode_frame` out, `FrameDecoder` in (the length prefix is checked against
//!    the maximum frame size before anything is allocated); a bad frame closes the connection.
//! 3. **events**: `PeerUp` before the first message, every message with the authenticated
//!    sender, `PeerDown` when the connection ends.
//! 4. **non-blocking sends**: `send` queues to a per-peer writer task.
//!
//! A real transport also reconnects with backoff and keeps real-time messages off the bulk
//! stream (see `hybridsync-iroh`).
//!
//! Run it: `cargo run -p hybridsync-tokio --example tcp_transport`

use hybridsync_core::{
    encode_frame, Config, DeviceId, Event, FrameDecoder, MemStore, ModelRegistry, Refusal,
    SyncMessage,
};
use hybridsync_tokio::{BoxFuture, EventSink, Node, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Per connected peer: the writer queue and the reader task (aborted on disconnect).
type Peers = Arc<Mutex<HashMap<DeviceId, (mpsc::UnboundedSender<Vec<u8>>, AbortHandle)>>>;

struct TcpTransport {
    me: DeviceId,
    listener: Option<TcpListener>,
    dial: Vec<SocketAddr>,
    peers: Peers,
    tasks: Vec<AbortHandle>,
}

impl TcpTransport {
    fn new(me: DeviceId, listener: Option<TcpListener>, dial: Vec<SocketAddr>) -> Self {
        TcpTransport {
            me,
            listener,
            dial,
            peers: Arc::default(),
            tasks: Vec::new(),
        }
    }
}

/// Runs one connection: identity exchange, then a writer task and the reader loop.
async fn run_connection(me: DeviceId, mut stream: TcpStream, peers: Peers, sink: EventSink) {
    // 1. Identity (NOT authentication: see the module docs).
    if stream.write_all(me.0.as_bytes()).await.is_err() {
        return;
    }
    let mut id = [0u8; 16];
    if stream.read_exact(&mut id).await.is_err() {
        return;
    }
    let peer = DeviceId(uuid::Uuid::from_bytes(id));
    let (mut read, mut write) = stream.into_split();

    // 4. Sends are queued; this task writes them in order.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });

    // 3. PeerUp before any message from the peer.
    let reader = tokio::spawn({
        let sink = sink.clone();
        async move {
            let mut decoder = FrameDecoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // 2. Decode every complete frame; a bad one ends the connection.
                loop {
                    match decoder.next_message() {
                        Ok(Some(msg)) => {
                            if sink.message(peer, msg).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("bad frame from {peer}: {e}");
                            return;
                        }
                    }
                }
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => decoder.push(buf.get(..n).unwrap_or_default()),
                }
            }
        }
    });
    if let Ok(mut map) = peers.lock() {
        map.insert(peer, (tx, reader.abort_handle()));
    }
    let _ = sink.peer_up(peer).await;
    let _ = reader.await;
    if let Ok(mut map) = peers.lock() {
        map.remove(&peer);
    }
    let _ = sink.peer_down(peer).await;
}

impl Transport for TcpTransport {
    fn start(&mut self, sink: EventSink) {
        if let Some(listener) = self.listener.take() {
            let (me, peers, sink) = (self.me, self.peers.clone(), sink.clone());
            let accept = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(run_connection(me, stream, peers.clone(), sink.clone()));
                }
            });
            self.tasks.push(accept.abort_handle());
        }
        for addr in self.dial.drain(..) {
            let (me, peers, sink) = (self.me, self.peers.clone(), sink.clone());
            let dial = tokio::spawn(async move {
                if let Ok(stream) = TcpStream::connect(addr).await {
                    run_connection(me, stream, peers, sink).await;
                }
            });
            self.tasks.push(dial.abort_handle());
        }
    }

    fn send(&mut self, to: DeviceId, msg: SyncMessage) {
        if let Ok(map) = self.peers.lock() {
            if let Some((tx, _)) = map.get(&to) {
                let _ = tx.send(encode_frame(&msg));
            }
        }
    }

    fn disconnect(&mut self, peer: DeviceId, reason: Refusal) {
        eprintln!("engine refused {peer}: {reason}");
        if let Ok(map) = self.peers.lock() {
            if let Some((_, reader)) = map.get(&peer) {
                reader.abort();
            }
        }
    }

    fn shutdown(&mut self) -> BoxFuture {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Ok(map) = self.peers.lock() {
            for (_, reader) in map.values() {
                reader.abort();
            }
        }
        Box::pin(async {})
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    let node_a = Node::builder(Config::new(a, ModelRegistry::spacedrive()))
        .bootstrap_members([a, b])
        .start(
            MemStore::new(),
            TcpTransport::new(a, Some(listener), vec![]),
        )
        .await?;
    let node_b = Node::builder(Config::new(b, ModelRegistry::spacedrive()))
        .bootstrap_members([a, b])
        .start(MemStore::new(), TcpTransport::new(b, None, vec![addr]))
        .await?;
    let mut events = node_b.subscribe();
    // Wait for the session (a write made before it arrives by catch-up instead, which reports
    // `RecordsChanged` for the whole page rather than `RecordChanged`).
    while !node_a.status().await?.peers.contains(&b) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let record = uuid::Uuid::from_u128(42);
    node_a
        .put("location", record, b"/home/me/photos".to_vec())
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(e) = events.recv().await {
            if let Event::RecordChanged { uuid, by, .. } = e {
                if uuid == record && by == a {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    println!("b received a's record over TCP: {got}");
    node_a.shutdown().await?;
    node_b.shutdown().await?;
    if got {
        Ok(())
    } else {
        Err("record not received".into())
    }
}
