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
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

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
/// Encoded bytes of inbound messages an [`EventSink`] holds for the driver, across every peer
/// and both queues (8 MiB: two maximal frames). A frame's bytes are taken before its body is
/// read ([`EventSink::reserve`]) and given back once the storage batch holding what the
/// message caused is committed (at once if it caused nothing to store), so the frames being
/// read, the messages queued and the records waiting for the disk never hold more; a frame
/// larger than the budget takes all of it. Decoded, a message takes at most
/// [`hybridsync_core::VALUE_BYTES_PER_INPUT_BYTE`] (24) bytes per encoded byte plus 4 KiB
/// ([`hybridsync_core::value_budget`]).
pub const INBOUND_BYTES: usize = 8 * 1024 * 1024;

/// Where a transport reports inbound events. Cheap to clone (one per connection task).
///
/// Two bounded queues: connection events and real-time messages in one, bulk catch-up traffic
/// in the other; the driver always empties the first before taking from the second, so a
/// backlog of large pages never delays a real-time change. Both are bounded in messages
/// ([`REALTIME_QUEUE`], [`BULK_QUEUE`]) and together in encoded bytes ([`INBOUND_BYTES`]). A
/// full queue or an exhausted byte budget makes the sending task wait: backpressure reaches
/// the peer through the transport's flow control (a reader that waits stops reading).
#[derive(Clone, Debug)]
pub struct EventSink {
    realtime: mpsc::Sender<Queued>,
    bulk: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

/// An event with the inbound bytes it holds until the driver takes it.
#[derive(Debug)]
pub(crate) struct Queued {
    event: TransportEvent,
    bytes: Option<InboundPermit>,
}

/// Encoded bytes of one inbound message, taken from the [`EventSink`]'s budget
/// ([`EventSink::reserve`]) and given back when the driver takes the message (or when the
/// permit is dropped).
#[derive(Debug)]
pub struct InboundPermit {
    _permit: OwnedSemaphorePermit,
    _peer: Option<OwnedSemaphorePermit>,
}

/// One peer's share of an [`EventSink`]'s budget: with [`EventSink::reserve_within`], what
/// one peer holds (frames being read, queued, waiting for the disk) stays within it, so a
/// peer that floods cannot take the whole budget from the others. One per connection.
#[derive(Clone, Debug)]
pub struct PeerBudget {
    bytes: Arc<Semaphore>,
    budget: usize,
}

impl PeerBudget {
    /// A peer budget of `budget` encoded bytes (at least 1).
    pub fn new(budget: usize) -> Self {
        let budget = budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        PeerBudget {
            bytes: Arc::new(Semaphore::new(budget)),
            budget,
        }
    }
}

/// The driver's receiving end of an [`EventSink`].
#[derive(Debug)]
pub struct EventSource {
    pub(crate) realtime: mpsc::Receiver<Queued>,
    pub(crate) bulk: mpsc::Receiver<Queued>,
}

/// The driver (or any other consumer) is gone; the event was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the driver is gone")]
pub struct SinkClosed;

impl EventSink {
    /// A connected sink and source, with a budget of [`INBOUND_BYTES`].
    pub fn channel() -> (EventSink, EventSource) {
        Self::with_budget(INBOUND_BYTES)
    }

    /// A connected sink and source holding at most `budget` encoded bytes of messages (at
    /// least 1).
    pub fn with_budget(budget: usize) -> (EventSink, EventSource) {
        let budget = budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (rt_tx, rt_rx) = mpsc::channel(REALTIME_QUEUE);
        let (bulk_tx, bulk_rx) = mpsc::channel(BULK_QUEUE);
        (
            EventSink {
                realtime: rt_tx,
                bulk: bulk_tx,
                bytes: Arc::new(Semaphore::new(budget)),
                budget,
            },
            EventSource {
                realtime: rt_rx,
                bulk: bulk_rx,
            },
        )
    }

    /// The sink's byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Encoded bytes the sink can still take without waiting.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `bytes` (at most the whole budget) from the budget, waiting while it is held by
    /// frames being read or messages the driver has not taken yet. A reader calls it once a
    /// frame's length is known, before reading its body, so a peer that sends faster than
    /// the driver takes is not read from.
    pub async fn reserve(&self, bytes: usize) -> Result<InboundPermit, SinkClosed> {
        let permit = self.take(&self.bytes, bytes, self.budget).await?;
        Ok(InboundPermit {
            _permit: permit,
            _peer: None,
        })
    }

    /// Like [`EventSink::reserve`], taking the bytes from `peer`'s share first (at most all
    /// of it), then from the sink's budget.
    pub async fn reserve_within(
        &self,
        peer: &PeerBudget,
        bytes: usize,
    ) -> Result<InboundPermit, SinkClosed> {
        let share = self.take(&peer.bytes, bytes, peer.budget).await?;
        let permit = self.take(&self.bytes, bytes, self.budget).await?;
        Ok(InboundPermit {
            _permit: permit,
            _peer: Some(share),
        })
    }

    async fn take(
        &self,
        from: &Arc<Semaphore>,
        bytes: usize,
        budget: usize,
    ) -> Result<OwnedSemaphorePermit, SinkClosed> {
        let n = u32::try_from(bytes.clamp(1, budget)).unwrap_or(u32::MAX);
        tokio::select! {
            p = from.clone().acquire_many_owned(n) => p.map_err(|_| SinkClosed),
            _ = self.realtime.closed() => Err(SinkClosed),
        }
    }

    /// Reports that `peer` is connected.
    pub async fn peer_up(&self, peer: DeviceId) -> Result<(), SinkClosed> {
        self.push(TransportEvent::PeerUp(peer), None).await
    }

    /// Reports that `peer` is disconnected.
    pub async fn peer_down(&self, peer: DeviceId) -> Result<(), SinkClosed> {
        self.push(TransportEvent::PeerDown(peer), None).await
    }

    /// Delivers a message from the authenticated device `from`, waiting while the queue is
    /// full or the byte budget is held. Real-time messages take the priority queue. The
    /// message's bytes are its encoded length (it is encoded once to measure it); a transport
    /// that knows the frame length uses [`EventSink::reserve`] and
    /// [`EventSink::message_reserved`] instead.
    pub async fn message(&self, from: DeviceId, msg: SyncMessage) -> Result<(), SinkClosed> {
        let bytes = hybridsync_core::encode(&msg).len();
        self.message_sized(from, msg, bytes).await
    }

    /// Delivers a message whose encoding is `bytes` long, as [`EventSink::message`].
    pub async fn message_sized(
        &self,
        from: DeviceId,
        msg: SyncMessage,
        bytes: usize,
    ) -> Result<(), SinkClosed> {
        let permit = self.reserve(bytes).await?;
        self.message_reserved(from, msg, permit).await
    }

    /// Delivers a message whose bytes were already taken with [`EventSink::reserve`]; they
    /// are given back when the driver takes it.
    pub async fn message_reserved(
        &self,
        from: DeviceId,
        msg: SyncMessage,
        permit: InboundPermit,
    ) -> Result<(), SinkClosed> {
        self.push(TransportEvent::Message { from, msg }, Some(permit))
            .await
    }

    async fn push(
        &self,
        event: TransportEvent,
        bytes: Option<InboundPermit>,
    ) -> Result<(), SinkClosed> {
        let queue = match &event {
            TransportEvent::Message { msg, .. } if !msg.is_realtime() => &self.bulk,
            _ => &self.realtime,
        };
        queue
            .send(Queued { event, bytes })
            .await
            .map_err(|_| SinkClosed)
    }

    /// Whether the driver is gone.
    pub fn is_closed(&self) -> bool {
        self.realtime.is_closed()
    }
}

impl EventSource {
    /// The next event, real-time queue first; `None` once every sink is dropped. A message's
    /// bytes go back to the sink's budget here.
    pub async fn recv(&mut self) -> Option<TransportEvent> {
        self.recv_held().await.map(|(event, _)| event)
    }

    /// The next event and the bytes it holds; they go back to the sink's budget when the
    /// permit is dropped (the driver keeps it until what the message caused is committed).
    pub(crate) async fn recv_held(&mut self) -> Option<(TransportEvent, Option<InboundPermit>)> {
        let q = tokio::select! {
            biased;
            Some(e) = self.realtime.recv() => e,
            Some(e) = self.bulk.recv() => e,
            else => return None,
        };
        Some((q.event, q.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn page(len: usize) -> SyncMessage {
        SyncMessage::Error(hybridsync_core::ErrorReply {
            request_id: None,
            code: hybridsync_core::ErrorCode::Busy,
            message: "x".repeat(len),
        })
    }

    /// Queues `msg` until a delivery waits (the driver takes nothing); returns the bytes taken.
    async fn fill(sink: &EventSink, msg: &SyncMessage, limit: usize) -> usize {
        let bytes = hybridsync_core::encode(msg).len();
        let mut queued = 0;
        while queued <= limit {
            let send = sink.message(DeviceId::from_u128(1), msg.clone());
            match tokio::time::timeout(Duration::from_millis(200), send).await {
                Ok(r) => r.expect("driver alive"),
                Err(_) => break,
            }
            queued += bytes;
        }
        queued
    }

    #[tokio::test]
    async fn inbound_queues_are_bounded_in_bytes_not_only_in_messages() {
        let (sink, mut source) = EventSink::channel();
        // 1 MiB messages: 64 fit the bulk queue's count, 8 the byte budget.
        let msg = page(1024 * 1024);
        let queued = fill(&sink, &msg, 64 * 1024 * 1024).await;
        assert!(
            queued <= 8 * 1024 * 1024,
            "{queued} bytes queued for a driver that takes nothing"
        );
        assert!(queued >= 7 * 1024 * 1024, "only {queued} bytes queued");
        // Real-time messages share the budget.
        let (rt_sink, _rt_source) = EventSink::channel();
        let rt = SyncMessage::HeartbeatDelta(hybridsync_core::Summary {
            heads: BTreeSet::new()
                .into_iter()
                .map(|d: DeviceId| (d, 0))
                .collect(),
            vv: hybridsync_core::VersionVector::new(),
        });
        let rt_bytes = hybridsync_core::encode(&rt).len();
        let rt_queued = fill(&rt_sink, &rt, 4096 * rt_bytes).await;
        assert_eq!(
            rt_queued,
            REALTIME_QUEUE * rt_bytes,
            "count bound unchanged"
        );
        // Once the driver takes a message, a waiting delivery goes through.
        let waiting = tokio::spawn({
            let sink = sink.clone();
            let msg = msg.clone();
            async move { sink.message(DeviceId::from_u128(1), msg).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        assert!(matches!(
            source.recv().await,
            Some(TransportEvent::Message { .. })
        ));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("delivered once the driver took one")
            .expect("task")
            .expect("driver alive");
    }

    #[tokio::test]
    async fn a_flooding_peer_leaves_the_others_room() {
        let (sink, _source) = EventSink::channel();
        let (flooder, other) = (
            PeerBudget::new(INBOUND_BYTES / 2),
            PeerBudget::new(INBOUND_BYTES / 2),
        );
        // The flooder reserves 1 MiB frames until it has to wait.
        let mut held = Vec::new();
        loop {
            let r = sink.reserve_within(&flooder, 1024 * 1024);
            match tokio::time::timeout(Duration::from_millis(100), r).await {
                Ok(p) => held.push(p.expect("alive")),
                Err(_) => break,
            }
            assert!(held.len() <= 8, "the flooder took the whole budget");
        }
        assert_eq!(held.len(), 4, "the flooder holds its share");
        // Another peer still gets a maximal frame in.
        let r = sink.reserve_within(&other, 4 * 1024 * 1024);
        tokio::time::timeout(Duration::from_millis(100), r)
            .await
            .expect("room for another peer")
            .expect("alive");
    }
}
