//! An in-process transport: nodes in one process exchange messages over tokio channels.
//!
//! Useful for fast tests and for embedding several replicas in one program. Links are explicit
//! ([`ChannelNetwork::link`] / [`ChannelNetwork::unlink`]) so a test can partition and heal the
//! network. Identity is the `DeviceId` the transport was created for: there is no
//! authentication, so use it only between replicas the program itself created.
//!
//! It enforces the same maximum frame size as the iroh transport, with the same outcome: a
//! message whose encoding exceeds it is not sent (an error is logged). Give every engine on
//! the network the same limit (`Config::max_frame`), and it never emits such a message.
//!
//! Each device's inbox is bounded in encoded bytes ([`CHANNEL_INBOX_BYTES`], on top of the
//! driver's own [`crate::INBOUND_BYTES`]): a message that would take an inbox past it is dropped
//! (logged), as a network drops what a peer cannot take; anti-entropy repairs what is lost.

use crate::transport::{BoxFuture, EventSink, Transport};
use hybridsync_core::DEFAULT_MAX_FRAME;
use hybridsync_core::{DeviceId, Refusal, SyncMessage};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Encoded bytes of messages one device's inbox holds before the driver's sink takes them
/// (16 MiB); a message that would go past it is dropped.
pub const CHANNEL_INBOX_BYTES: usize = 16 * 1024 * 1024;

enum Delivery {
    Up(DeviceId),
    Down(DeviceId),
    /// A message and its encoded length.
    Msg(DeviceId, SyncMessage, usize),
}

/// A started transport's inbox and the encoded bytes of the messages in it.
struct Inbox {
    tx: mpsc::UnboundedSender<Delivery>,
    bytes: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Hub {
    /// Started transports: their inbox.
    inboxes: BTreeMap<DeviceId, Inbox>,
    /// Links as ordered pairs `(min, max)`.
    links: BTreeSet<(DeviceId, DeviceId)>,
    /// Largest message body sent; `None` means [`DEFAULT_MAX_FRAME`].
    max_frame: Option<usize>,
}

fn pair(a: DeviceId, b: DeviceId) -> (DeviceId, DeviceId) {
    (a.min(b), a.max(b))
}

impl Hub {
    fn deliver(&self, to: DeviceId, d: Delivery) {
        let Some(inbox) = self.inboxes.get(&to) else {
            return;
        };
        if let Delivery::Msg(from, msg, bytes) = &d {
            let held = inbox.bytes.load(Ordering::Acquire);
            if held.saturating_add(*bytes) > CHANNEL_INBOX_BYTES {
                tracing::warn!(me = %from, peer = %to, kind = msg.kind(), bytes, held, "peer's inbox is full: message dropped");
                return;
            }
            inbox.bytes.fetch_add(*bytes, Ordering::AcqRel);
        }
        let _ = inbox.tx.send(d);
    }

    fn both_started(&self, a: DeviceId, b: DeviceId) -> bool {
        self.inboxes.contains_key(&a) && self.inboxes.contains_key(&b)
    }
}

/// A set of in-process links between devices. Cheap to clone.
#[derive(Clone, Default)]
pub struct ChannelNetwork {
    hub: Arc<Mutex<Hub>>,
}

impl std::fmt::Debug for ChannelNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelNetwork").finish_non_exhaustive()
    }
}

impl ChannelNetwork {
    /// An empty network with the iroh transport's default frame limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty network that refuses to send messages whose encoding is larger than
    /// `max_frame` bytes (as `IrohConfig::max_frame` does).
    pub fn with_max_frame(max_frame: usize) -> Self {
        let network = Self::default();
        network.hub().max_frame = Some(max_frame);
        network
    }

    /// The frame limit messages are checked against.
    pub fn max_frame(&self) -> usize {
        self.hub().max_frame.unwrap_or(DEFAULT_MAX_FRAME)
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A poisoned lock only means another thread panicked while holding it; the hub's
        // state is still consistent (every mutation is a single insert or remove).
        self.hub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A transport for `device` on this network (start it by starting a node with it).
    pub fn transport(&self, device: DeviceId) -> ChannelTransport {
        ChannelTransport {
            me: device,
            network: self.clone(),
        }
    }

    /// Connects `a` and `b`: both see `PeerUp` once both are started.
    pub fn link(&self, a: DeviceId, b: DeviceId) {
        let mut hub = self.hub();
        if a == b || !hub.links.insert(pair(a, b)) {
            return;
        }
        if hub.both_started(a, b) {
            hub.deliver(a, Delivery::Up(b));
            hub.deliver(b, Delivery::Up(a));
        }
    }

    /// Connects every pair of `devices`.
    pub fn link_all(&self, devices: &[DeviceId]) {
        for (i, a) in devices.iter().enumerate() {
            for b in devices.iter().skip(i + 1) {
                self.link(*a, *b);
            }
        }
    }

    /// Disconnects `a` and `b`: both see `PeerDown`; messages sent afterwards are dropped.
    pub fn unlink(&self, a: DeviceId, b: DeviceId) {
        let mut hub = self.hub();
        if !hub.links.remove(&pair(a, b)) {
            return;
        }
        if hub.both_started(a, b) {
            hub.deliver(a, Delivery::Down(b));
            hub.deliver(b, Delivery::Down(a));
        }
    }

    /// Disconnects `device` from everyone (it stays linkable).
    pub fn isolate(&self, device: DeviceId) {
        let peers: Vec<DeviceId> = self
            .hub()
            .links
            .iter()
            .filter_map(|(a, b)| {
                if *a == device {
                    Some(*b)
                } else if *b == device {
                    Some(*a)
                } else {
                    None
                }
            })
            .collect();
        for p in peers {
            self.unlink(device, p);
        }
    }

    /// Whether `a` and `b` are linked.
    pub fn is_linked(&self, a: DeviceId, b: DeviceId) -> bool {
        self.hub().links.contains(&pair(a, b))
    }
}

/// One device's end of a [`ChannelNetwork`].
pub struct ChannelTransport {
    me: DeviceId,
    network: ChannelNetwork,
}

impl std::fmt::Debug for ChannelTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelTransport")
            .field("device", &self.me)
            .finish()
    }
}

impl Transport for ChannelTransport {
    fn start(&mut self, sink: EventSink) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
        let bytes = Arc::new(AtomicUsize::new(0));
        let held = bytes.clone();
        // Forwarder: preserves order per receiver and lets the sink apply backpressure.
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let delivered = match d {
                    Delivery::Up(p) => sink.peer_up(p).await,
                    Delivery::Down(p) => sink.peer_down(p).await,
                    Delivery::Msg(from, msg, n) => {
                        let r = sink.message_sized(from, msg, n).await;
                        held.fetch_sub(n, Ordering::AcqRel);
                        r
                    }
                };
                if delivered.is_err() {
                    break;
                }
            }
        });
        let mut hub = self.network.hub();
        hub.inboxes.insert(self.me, Inbox { tx, bytes });
        let peers: Vec<DeviceId> = hub
            .links
            .iter()
            .filter_map(|(a, b)| match (*a == self.me, *b == self.me) {
                (true, _) => Some(*b),
                (_, true) => Some(*a),
                _ => None,
            })
            .filter(|p| hub.inboxes.contains_key(p))
            .collect();
        for p in peers {
            hub.deliver(self.me, Delivery::Up(p));
            hub.deliver(p, Delivery::Up(self.me));
        }
    }

    fn send(&mut self, to: DeviceId, msg: SyncMessage) {
        let hub = self.network.hub();
        if !hub.links.contains(&pair(self.me, to)) {
            return;
        }
        let max = hub.max_frame.unwrap_or(DEFAULT_MAX_FRAME);
        let bytes = hybridsync_core::encode(&msg).len();
        if bytes > max {
            tracing::error!(me = %self.me, peer = %to, kind = msg.kind(), bytes, max, "message exceeds the maximum frame size: not sent");
            return;
        }
        hub.deliver(to, Delivery::Msg(self.me, msg, bytes));
    }

    fn disconnect(&mut self, peer: DeviceId, reason: Refusal) {
        tracing::debug!(me = %self.me, peer = %peer, %reason, "channel transport: unlink");
        self.network.unlink(self.me, peer);
    }

    fn shutdown(&mut self) -> BoxFuture {
        let mut hub = self.network.hub();
        hub.inboxes.remove(&self.me);
        let peers: Vec<DeviceId> = hub
            .links
            .iter()
            .filter_map(|(a, b)| match (*a == self.me, *b == self.me) {
                (true, _) => Some(*b),
                (_, true) => Some(*a),
                _ => None,
            })
            .collect();
        for p in peers {
            hub.deliver(p, Delivery::Down(self.me));
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{EventSink, TransportEvent};

    fn error(len: usize) -> SyncMessage {
        SyncMessage::Error(hybridsync_core::ErrorReply {
            request_id: None,
            code: hybridsync_core::ErrorCode::Busy,
            message: "x".repeat(len),
        })
    }

    #[tokio::test]
    async fn message_above_the_frame_limit_is_not_sent_as_over_iroh() {
        let (a, b) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
        let net = ChannelNetwork::with_max_frame(1024);
        assert_eq!(net.max_frame(), 1024);
        let mut ta = net.transport(a);
        let mut tb = net.transport(b);
        let (sink_a, _source_a) = EventSink::channel();
        let (sink_b, mut source_b) = EventSink::channel();
        ta.start(sink_a);
        tb.start(sink_b);
        net.link(a, b);
        assert!(matches!(
            source_b.recv().await,
            Some(TransportEvent::PeerUp(p)) if p == a
        ));
        ta.send(b, error(2000));
        ta.send(b, error(10));
        // Only the small message arrives; the large one was dropped at the sender.
        match source_b.recv().await {
            Some(TransportEvent::Message { from, msg }) => {
                assert_eq!(from, a);
                assert_eq!(msg, error(10));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_flood_is_held_within_the_inbox_and_sink_budgets() {
        let (a, b) = (DeviceId::from_u128(1), DeviceId::from_u128(2));
        let net = ChannelNetwork::new();
        let mut ta = net.transport(a);
        let mut tb = net.transport(b);
        let (sink_a, _source_a) = EventSink::channel();
        let (sink_b, mut source_b) = EventSink::channel();
        ta.start(sink_a);
        tb.start(sink_b);
        net.link(a, b);
        assert!(matches!(
            source_b.recv().await,
            Some(TransportEvent::PeerUp(_))
        ));
        // 100 messages of 1 MiB for a driver that takes nothing meanwhile.
        for _ in 0..100 {
            ta.send(b, error(1024 * 1024));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut got = 0usize;
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), source_b.recv()).await
        {
            got += 1;
        }
        let held = (CHANNEL_INBOX_BYTES + crate::INBOUND_BYTES) / (1024 * 1024);
        assert!(got <= held, "{got} MiB were held for the driver");
        assert!(got >= CHANNEL_INBOX_BYTES / (1024 * 1024) - 1, "only {got}");
    }
}
