//! The transport contract: how the driver reaches peers.
//!
//! A transport moves [`SyncMessage`]s between *authenticated* devices. It owns connections,
//! framing, reconnects and identity; it contains no protocol logic. The driver talks to it in
//! two directions:
//!
//! - **in**: the transport reports [`TransportEvent`]s through the [`EventSink`] it is given in
//!   [`Transport::start`]: `PeerUp` when a connection to a device is usable, `PeerDown` when it
//!   is gone, and every decoded message with the authenticated sender. `from` must come from
//!   the transport's own authentication (a TLS key, a pairing), never from the message body.
//! - **out**: the driver calls [`Transport::send`] and [`Transport::disconnect`]. Both must
//!   return at once (queue internally); the driver calls `send` only once every storage write
//!   emitted before the message is durable.
//!
//! Rules every implementation follows:
//!
//! 1. Report `PeerUp(d)` before any message from `d`; messages from a device that is not up
//!    are dropped by the driver (they belong to a connection that is already gone).
//! 2. Messages from one device are delivered in the order they were sent *on one stream*;
//!    the engine tolerates reordering across streams, loss and duplication.
//! 3. Real-time messages ([`SyncMessage::is_realtime`]) must not queue behind bulk catch-up
//!    traffic. [`EventSink::message`] already routes them to a separate, prioritised queue on
//!    the inbound side; the outbound side is the transport's job (separate streams, priorities).
//! 4. A frame that cannot be decoded or is too large is a transport matter: answer
//!    `SyncMessage::Error` if possible, close the connection, report `PeerDown`. Nothing reaches
//!    the engine.
//!
//! See `examples/tcp_transport.rs` for a complete, commented implementation over TCP.

use hybridsync_core::{DeviceId, Refusal, SyncMessage};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

/// Something a transport reports to the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum TransportEvent {
    /// A connection to this authenticated device is usable.
    PeerUp(DeviceId),
    /// The connection to this device is gone.
    PeerDown(DeviceId),
    /// A message from an authenticated device.
    Message {
        /// The authenticated sender (never taken from the message body).
        from: DeviceId,
        /// The decoded message.
        msg: SyncMessage,
    },
}

/// A boxed future, for the transport's `shutdown`.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The driver's end of a transport, implemented by iroh, the in-process
/// [`crate::ChannelNetwork`] and anything else that can move authenticated messages.
pub trait Transport: Send + 'static {
    /// Called once, before the driver sends anything: from now on report events to `sink`.
    fn start(&mut self, sink: EventSink);

    /// Queues `msg` for `to`. Must not block. A message for a device that is not connected is
    /// dropped (anti-entropy repairs whatever is lost).
    fn send(&mut self, to: DeviceId, msg: SyncMessage);

    /// Closes the connection to `peer`, which the engine refused for `reason`. Must not block.
    /// The driver drops whatever `peer` had already queued and gives the engine nothing more
    /// from it until the transport reports a new connection (`PeerUp`).
    fn disconnect(&mut self, peer: DeviceId, reason: Refusal);

    /// The library's member set: called once before [`Transport::start`], then after every
    /// change (a member added or removed, here or by a peer). A transport should neither dial
    /// nor accept a device outside it, and close its connection if it has one: the engine
    /// refuses non-members anyway, this spares the dials and the engine work. Must not block.
    /// The default does nothing (the engine still refuses non-members).
    fn set_members(&mut self, members: &BTreeSet<DeviceId>) {
        let _ = members;
    }

    /// Closes every connection and stops background tasks.
    fn shutdown(&mut self) -> BoxFuture;
}

/// Capacity of the control/real-time inbound queue.
pub const REALTIME_QUEUE: usize = 1024;
/// Capacity of the bulk inbound queue (catch-up requests and pages).
pub const BULK_QUEUE: usize = 64;

/// Where a transport reports inbound events. Cheap to clone (one per connection task).
///
/// Two bounded queues: connection events and real-time messages in one, bulk catch-up traffic
/// in the other; the driver always empties the first before taking from the second, so a
/// backlog of large pages never delays a real-time change. A full queue makes the sending task
/// wait: backpressure reaches the peer through the transport's flow control.
#[derive(Clone, Debug)]
pub struct EventSink {
    realtime: mpsc::Sender<TransportEvent>,
    bulk: mpsc::Sender<TransportEvent>,
}

/// The driver's receiving end of an [`EventSink`].
#[derive(Debug)]
pub struct EventSource {
    pub(crate) realtime: mpsc::Receiver<TransportEvent>,
    pub(crate) bulk: mpsc::Receiver<TransportEvent>,
}

/// The driver (or any other consumer) is gone; the event was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the driver is gone")]
pub struct SinkClosed;

impl EventSink {
    /// A connected sink and source.
    pub fn channel() -> (EventSink, EventSource) {
        let (rt_tx, rt_rx) = mpsc::channel(REALTIME_QUEUE);
        let (bulk_tx, bulk_rx) = mpsc::channel(BULK_QUEUE);
        (
            EventSink {
                realtime: rt_tx,
                bulk: bulk_tx,
            },
            EventSource {
                realtime: rt_rx,
                bulk: bulk_rx,
            },
        )
    }

    /// Reports that `peer` is connected.
    pub async fn peer_up(&self, peer: DeviceId) -> Result<(), SinkClosed> {
        self.realtime
            .send(TransportEvent::PeerUp(peer))
            .await
            .map_err(|_| SinkClosed)
    }

    /// Reports that `peer` is disconnected.
    pub async fn peer_down(&self, peer: DeviceId) -> Result<(), SinkClosed> {
        self.realtime
            .send(TransportEvent::PeerDown(peer))
            .await
            .map_err(|_| SinkClosed)
    }

    /// Delivers a message from the authenticated device `from`, waiting while the queue is
    /// full. Real-time messages take the priority queue.
    pub async fn message(&self, from: DeviceId, msg: SyncMessage) -> Result<(), SinkClosed> {
        let queue = if msg.is_realtime() {
            &self.realtime
        } else {
            &self.bulk
        };
        queue
            .send(TransportEvent::Message { from, msg })
            .await
            .map_err(|_| SinkClosed)
    }

    /// Whether the driver is gone.
    pub fn is_closed(&self) -> bool {
        self.realtime.is_closed()
    }
}

impl EventSource {
    /// The next event, real-time queue first; `None` once every sink is dropped.
    pub async fn recv(&mut self) -> Option<TransportEvent> {
        tokio::select! {
            biased;
            Some(e) = self.realtime.recv() => Some(e),
            Some(e) = self.bulk.recv() => Some(e),
            else => None,
        }
    }
}
