//! The iroh transport: connections, streams, framing, reconnects.

use crate::registry::DeviceRegistry;
use hybridsync_core::DEFAULT_MAX_FRAME;
use hybridsync_core::{
    encode_frame, DeviceId, ErrorCode, FrameDecoder, FrameError, Refusal, SyncMessage,
};
use hybridsync_tokio::{BoxFuture, EventSink, PeerBudget, Transport};
use iroh::endpoint::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

/// The default ALPN of the sync protocol.
pub const DEFAULT_ALPN: &[u8] = b"/spacedrive/sync/2.0.0";

/// Unidirectional streams a peer may have open towards us (it uses four: one real-time, three
/// bulk lanes). [`crate::offline_endpoint`] sets it (and no bidirectional streams) in the
/// endpoint's transport config, so it is the credit of the handshake; the transport sets it
/// again on each connection, for endpoints bound otherwise (whose handshake credit is then the
/// library default, 100).
pub(crate) const MAX_INBOUND_STREAMS: u32 = 4;

/// The first byte of every unidirectional stream names its lane: this one for real-time
/// messages, 1 to 3 for the three bulk lanes (catch-up, whose frames go round-robin over
/// them and are read back in that order). A stream whose first byte is anything else, or
/// names a bulk lane another stream of the connection already carries, closes the connection
/// (`close_code::BAD_FRAME`, `ErrorCode::ProtocolViolation`).
pub const REALTIME_LANE: u8 = 0;

/// Bulk frames (catch-up pages and requests) are written round-robin over this many streams:
/// frame `k` of a connection on lane `k % BULK_LANES`, and the receiver reads them back in
/// that order. Each stream has its own QUIC flow-control window (1.25 MB, the library's
/// default; larger ones are not safe, see [`crate::bind_endpoint`]), so three lanes keep three
/// windows in flight per round trip instead of one.
const BULK_LANES: u8 = 3;

/// The lane header bytes of the bulk lanes, in round-robin order: `1..=BULK_LANES`.
const BULK_HEADERS: [u8; BULK_LANES as usize] = {
    let mut headers = [0; BULK_LANES as usize];
    let mut i = 0;
    while i < headers.len() {
        headers[i] = i as u8 + 1;
        i += 1;
    }
    headers
};

/// QUIC application close codes used by this transport.
pub mod close_code {
    /// The transport shut down.
    pub const SHUTDOWN: u32 = 0;
    /// The remote endpoint is not in the device registry.
    pub const UNKNOWN_ENDPOINT: u32 = 1;
    /// A connection to the same device already exists and wins the de-duplication rule.
    pub const DUPLICATE: u32 = 2;
    /// A frame could not be decoded or was too large.
    pub const BAD_FRAME: u32 = 3;
    /// The engine refused the peer (protocol violation, not a member...).
    pub const REFUSED: u32 = 4;
    /// The peer is cooling down after a refusal.
    pub const COOLDOWN: u32 = 5;
    /// The peer cannot keep up with what we send.
    pub const SLOW_PEER: u32 = 6;
    /// The remote device is registered but not (or no longer) a member of the library.
    pub const NOT_MEMBER: u32 = 7;
}

/// Tuning of the iroh transport.
#[derive(Clone, Debug)]
pub struct IrohConfig {
    /// ALPN the protocol is registered under (default [`DEFAULT_ALPN`]).
    pub alpn: Vec<u8>,
    /// Largest frame accepted or sent (default 4 MiB), checked before allocating.
    pub max_frame: usize,
    /// Give up a dial attempt after this long (default 5 s).
    pub connect_timeout: Duration,
    /// First reconnect delay (default 100 ms); doubles up to `backoff_max`, plus jitter.
    pub backoff_min: Duration,
    /// Largest reconnect delay (default 10 s).
    pub backoff_max: Duration,
    /// How long a refused peer (bad frames, engine refusal) is neither dialed nor accepted
    /// (default 10 s).
    pub refusal_cooldown: Duration,
    /// Outbound real-time messages queued per peer before the peer is declared too slow and
    /// disconnected (default 65 536).
    pub realtime_queue: usize,
    /// Outbound bulk messages (catch-up pages) queued per peer (default 256).
    pub bulk_queue: usize,
    /// Encoded bytes of outbound real-time frames queued per peer (default 32 MiB); past it the
    /// peer is too slow and disconnected, as past [`IrohConfig::realtime_queue`].
    pub realtime_queue_bytes: usize,
    /// Encoded bytes of outbound bulk frames (catch-up pages and requests) queued per peer
    /// (default 16 MiB: four maximal frames); past it the peer is disconnected as too slow (a
    /// requester that waits for each page never has more than one or two queued).
    pub bulk_queue_bytes: usize,
    /// Encoded bytes one peer's inbound frames may hold of the driver's inbound budget (being
    /// read, queued, waiting for the disk; default half of `hybridsync_tokio::INBOUND_BYTES`,
    /// 4 MiB), so one peer that floods leaves the others room. A frame larger than it takes all
    /// of it.
    pub inbound_bytes_per_peer: usize,
    /// Before its first dial of a device, the side with the larger endpoint id waits this long
    /// (plus jitter) so the smaller side's dial usually wins without a duplicate (default
    /// 200 ms; both sides dial anyway, duplicates are resolved deterministically).
    pub dial_grace: Duration,
    /// Seed of the reconnect jitter (default: derived from the endpoint id).
    pub jitter_seed: Option<u64>,
    /// On shutdown, an upper bound on waiting for peers to acknowledge the closing of
    /// connections (default `None`: iroh's graceful close, at most ~3 s, reached when a dial
    /// to a vanished peer is pending). With a bound, an endpoint not closed in time is dropped
    /// ungracefully and its port may stay busy for a while.
    pub close_timeout: Option<Duration>,
}

impl Default for IrohConfig {
    fn default() -> Self {
        IrohConfig {
            alpn: DEFAULT_ALPN.to_vec(),
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            refusal_cooldown: Duration::from_secs(10),
            realtime_queue: 65_536,
            bulk_queue: 256,
            realtime_queue_bytes: 32 * 1024 * 1024,
            bulk_queue_bytes: 16 * 1024 * 1024,
            inbound_bytes_per_peer: hybridsync_tokio::INBOUND_BYTES / 2,
            dial_grace: Duration::from_millis(200),
            jitter_seed: None,
            close_timeout: None,
        }
    }
}

/// What a writer task is asked to do.
enum Outbound {
    /// Write one encoded frame.
    Frame(Vec<u8>),
    /// Write a final `Error` frame, then close the connection.
    Close {
        error: Vec<u8>,
        code: u32,
        reason: &'static str,
    },
}

/// The live connection to one device.
struct Active {
    id: u64,
    conn: Connection,
    /// Who dialed it (for de-duplication).
    dialer: EndpointId,
    realtime: OutQueue,
    bulk: OutQueue,
}

/// One outbound queue of a connection and the encoded bytes of the frames in it.
struct OutQueue {
    tx: mpsc::Sender<Outbound>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl OutQueue {
    /// Queues `frame`; `false` if the queue is full in frames or in bytes.
    fn push(&self, frame: Vec<u8>) -> Result<(), mpsc::error::TrySendError<()>> {
        let len = frame.len();
        let held = self.bytes.fetch_add(len, Ordering::AcqRel);
        if held.saturating_add(len) > self.max_bytes.max(1) && held > 0 {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(mpsc::error::TrySendError::Full(()));
        }
        self.tx.try_send(Outbound::Frame(frame)).map_err(|e| {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            }
        })
    }
}

#[derive(Default)]
struct State {
    conns: BTreeMap<DeviceId, Active>,
    cooldown: BTreeMap<DeviceId, tokio::time::Instant>,
    dialers: BTreeMap<DeviceId, AbortHandle>,
    tasks: Vec<AbortHandle>,
    /// The library's member set ([`Transport::set_members`]); `None` until the driver gives
    /// one (then every registered device is dialed and accepted).
    members: Option<BTreeSet<DeviceId>>,
}

impl State {
    /// Whether `device` is known not to be a member: neither dialed nor accepted.
    fn excluded(&self, device: DeviceId) -> bool {
        self.members.as_ref().is_some_and(|m| !m.contains(&device))
    }
}

struct Shared {
    endpoint: Endpoint,
    me: EndpointId,
    /// The endpoint has address lookup services: a device known by its id alone is dialed
    /// (iroh resolves where it is).
    lookup: bool,
    registry: DeviceRegistry,
    config: IrohConfig,
    state: Mutex<State>,
    sink: OnceLock<EventSink>,
    shutdown: watch::Sender<bool>,
    started: watch::Sender<bool>,
    /// Held from a connection-state decision until its `PeerUp`/`PeerDown` is reported, so
    /// the driver sees connection changes in the order they were decided.
    peer_events: tokio::sync::Mutex<()>,
    next_conn: AtomicU64,
    rng: Mutex<u64>,
}

/// hybridsync over iroh QUIC. Implements [`Transport`]; register [`IrohTransport::protocol`]
/// on your [`Router`] (or let [`IrohTransport::spawn_router`] do it).
///
/// - **Identity**: the peer's authenticated [`EndpointId`] (TLS) is mapped to a `DeviceId`
///   through the [`DeviceRegistry`]; an unknown endpoint is closed before any stream is read.
/// - **Members only**: once the driver has handed over the member set
///   ([`Transport::set_members`]), a registered device that is not a member is neither dialed
///   nor accepted (closed with [`close_code::NOT_MEMBER`] before any stream is read), and a
///   device removed from the set has its connection closed and its dialing stopped.
/// - **One connection per device**: both sides dial every registered member that has an
///   address (direct or relay URL; any member, if the endpoint has address lookup); when two
///   connections meet, both sides keep the one dialed by the smaller endpoint id (a newer
///   connection from the same dialer replaces a stale one). The larger id waits a little
///   before its first dial so the usual case has no duplicate at all. A dial offers iroh every
///   address the registry holds: a stale direct address costs nothing while the relay URL
///   still reaches the device.
/// - **Reconnect** with exponential backoff and jitter (a seeded xorshift, no OS randomness).
/// - **Streams**: each side sends on four unidirectional streams, each opened with a lane
///   header byte: real-time messages ([`SyncMessage::is_realtime`]) on a high-priority one,
///   catch-up traffic round-robin on three low-priority bulk lanes (three QUIC stream windows
///   in flight per round trip instead of one), the real-time and the bulk queue each with its
///   own writer task, so a large backfill never delays a real-time change. Every inbound
///   stream has its own reader task; the bulk lanes' readers hand their frames to the engine
///   in the order they were sent (a frame waits for its turn before any budget is taken for
///   it). A reply travels on the
///   responder's own long-lived stream of the same connection (requests carry ids), so no
///   reply depends on a stream the requester already finished; if the connection drops,
///   `PeerDown` interrupts the request and anti-entropy asks again. A peer may open at most
///   4 unidirectional streams and no bidirectional one: from the handshake on with an endpoint
///   from [`crate::offline_endpoint`]; an endpoint bound otherwise should set the same limits
///   in its transport config (this transport lowers them only once the connection is up).
/// - **Frames**: `u32` big-endian length + postcard, via core's `encode_frame` and
///   `FrameDecoder`; the length is checked against `max_frame` before reading the body. A bad
///   or oversized frame gets an `Error` message, the connection is closed and the peer cools
///   down; nothing reaches the engine. A frame whose values would decode into more than 24
///   bytes per frame byte (plus 4 KiB) is a bad frame too (`CodecError::TooManyValues`).
/// - **Memory**: once a frame's length is known, its bytes are taken from the driver's inbound
///   budget (`hybridsync_tokio::INBOUND_BYTES`, 8 MiB across every peer, at most
///   [`IrohConfig::inbound_bytes_per_peer`] of it per peer) before its body is read, and given
///   back once what the message caused is committed: while the driver is behind, no stream is
///   read and QUIC flow control stops the peer. Each reader keeps at most one
///   frame's buffer (given back once a frame is delivered). Outbound queues are bounded per
///   peer in frames and in bytes ([`IrohConfig::realtime_queue_bytes`],
///   [`IrohConfig::bulk_queue_bytes`], plus the frame being written); a peer past either is
///   disconnected as too slow.
#[derive(Clone)]
pub struct IrohTransport {
    shared: Arc<Shared>,
    router: Arc<Mutex<Option<Router>>>,
}

impl std::fmt::Debug for IrohTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohTransport")
            .field("endpoint", &self.shared.me)
            .finish_non_exhaustive()
    }
}

/// The ALPN protocol handler of an [`IrohTransport`] (register it on a [`Router`]).
#[derive(Clone)]
pub struct SyncProtocol {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SyncProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncProtocol")
            .field("endpoint", &self.shared.me)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only insert and remove map entries: a poisoned lock is consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl IrohTransport {
    /// A transport on `endpoint` for the devices of `registry`.
    pub fn new(endpoint: Endpoint, registry: DeviceRegistry, config: IrohConfig) -> Self {
        let me = endpoint.id();
        let seed = config.jitter_seed.unwrap_or_else(|| {
            me.as_bytes().iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        });
        let lookup = endpoint
            .address_lookup()
            .is_ok_and(|services| !services.is_empty());
        IrohTransport {
            shared: Arc::new(Shared {
                endpoint,
                me,
                lookup,
                registry,
                config,
                state: Mutex::new(State::default()),
                sink: OnceLock::new(),
                shutdown: watch::channel(false).0,
                started: watch::channel(false).0,
                peer_events: tokio::sync::Mutex::new(()),
                next_conn: AtomicU64::new(1),
                rng: Mutex::new(seed | 1),
            }),
            router: Arc::new(Mutex::new(None)),
        }
    }

    /// The protocol handler to register on a [`Router`] under [`IrohConfig::alpn`].
    pub fn protocol(&self) -> SyncProtocol {
        SyncProtocol {
            shared: self.shared.clone(),
        }
    }

    /// Spawns a [`Router`] on the endpoint with only this protocol; the transport shuts it
    /// down (and with it the endpoint) in [`Transport::shutdown`].
    pub fn spawn_router(&self) -> Router {
        let router = Router::builder(self.shared.endpoint.clone())
            .accept(self.shared.config.alpn.clone(), self.protocol())
            .spawn();
        *lock(&self.router) = Some(router.clone());
        router
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Devices with a live connection.
    pub fn connected(&self) -> BTreeSet<DeviceId> {
        lock(&self.shared.state).conns.keys().copied().collect()
    }

    /// The live connection to `device`, to see how it is carried: [`Connection::paths`] lists
    /// its paths (through a relay, or direct once hole punching found one) and which one is
    /// selected; [`Connection::stats`] counts its traffic. Closing it makes the transport
    /// dial again.
    pub fn connection(&self, device: DeviceId) -> Option<Connection> {
        self.shared.active_conn(device)
    }
}

impl Shared {
    fn jitter(&self, max: Duration) -> Duration {
        let mut s = lock(&self.rng);
        // xorshift64: cheap, seeded, good enough to spread reconnects.
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(*s % ms)
    }

    /// The sink, waiting (up to the connect timeout) for [`Transport::start`]: a router may
    /// accept connections before the node is started.
    async fn wait_started(&self) -> Option<EventSink> {
        let mut started = self.started.subscribe();
        let wait = started.wait_for(|s| *s);
        let _ = tokio::time::timeout(self.config.connect_timeout, wait).await;
        self.sink.get().cloned()
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn cooling_down(&self, device: DeviceId) -> Option<tokio::time::Instant> {
        let st = lock(&self.state);
        st.cooldown
            .get(&device)
            .copied()
            .filter(|t| *t > tokio::time::Instant::now())
    }

    fn cool_down(&self, device: DeviceId) {
        let until = tokio::time::Instant::now() + self.config.refusal_cooldown;
        lock(&self.state).cooldown.insert(device, until);
    }

    fn excluded(&self, device: DeviceId) -> bool {
        lock(&self.state).excluded(device)
    }

    fn active_conn(&self, device: DeviceId) -> Option<Connection> {
        lock(&self.state).conns.get(&device).map(|a| a.conn.clone())
    }

    /// Installs an authenticated connection and runs it until it closes.
    async fn run_connection(
        self: Arc<Self>,
        conn: Connection,
        device: DeviceId,
        dialer: EndpointId,
    ) -> Option<ConnectionError> {
        let Some(sink) = self.wait_started().await else {
            conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"not started");
            return None;
        };
        let remote = conn.remote_id();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (rt_tx, rt_rx) = mpsc::channel(self.config.realtime_queue.max(1));
        let (bulk_tx, bulk_rx) = mpsc::channel(self.config.bulk_queue.max(1));
        let (rt_bytes, bulk_bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let order = self.peer_events.lock().await;
        let replaced = {
            let mut st = lock(&self.state);
            if self.is_shut_down() {
                conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"shutting down");
                return None;
            }
            if st.excluded(device) {
                conn.close(VarInt::from_u32(close_code::NOT_MEMBER), b"not a member");
                return None;
            }
            let replaced = match st.conns.get(&device) {
                None => false,
                Some(existing) => {
                    // Same dialer: the new one replaces a stale connection. Different
                    // dialers (simultaneous dial): keep the one dialed by the smaller id.
                    let keep_new = existing.dialer == dialer || dialer == self.me.min(remote);
                    if !keep_new {
                        tracing::debug!(peer = %device, "duplicate connection closed");
                        conn.close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
                        return None;
                    }
                    existing
                        .conn
                        .close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
                    true
                }
            };
            st.conns.insert(
                device,
                Active {
                    id,
                    conn: conn.clone(),
                    dialer,
                    realtime: OutQueue {
                        tx: rt_tx,
                        bytes: rt_bytes.clone(),
                        max_bytes: self.config.realtime_queue_bytes,
                    },
                    bulk: OutQueue {
                        tx: bulk_tx,
                        bytes: bulk_bytes.clone(),
                        max_bytes: self.config.bulk_queue_bytes,
                    },
                },
            );
            replaced
        };
        tracing::info!(peer = %device, endpoint = %remote.fmt_short(), conn = id, dialed_by_me = (dialer == self.me), "connected");
        if replaced && sink.peer_down(device).await.is_err() {
            return None;
        }
        if sink.peer_up(device).await.is_err() {
            return None;
        }
        drop(order);
        // Each side needs four streams; a peer opening more cannot make us buffer more frames.
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(MAX_INBOUND_STREAMS));
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(writer(conn.clone(), rt_rx, rt_bytes, 1, &[REALTIME_LANE]));
        tasks.spawn(writer(conn.clone(), bulk_rx, bulk_bytes, 0, &BULK_HEADERS));
        tasks.spawn(accept_streams(
            self.clone(),
            conn.clone(),
            device,
            sink.clone(),
            PeerBudget::new(self.config.inbound_bytes_per_peer),
        ));
        let reason = conn.closed().await;
        tasks.abort_all();
        let _order = self.peer_events.lock().await;
        let was_active = {
            let mut st = lock(&self.state);
            if st.conns.get(&device).is_some_and(|a| a.id == id) {
                st.conns.remove(&device);
                true
            } else {
                false
            }
        };
        tracing::info!(peer = %device, conn = id, %reason, "connection closed");
        if was_active {
            let _ = sink.peer_down(device).await;
        }
        Some(reason)
    }

    /// Closes `device`'s connection after sending it an `Error` message, and cools it down.
    fn refuse(
        &self,
        device: DeviceId,
        code: ErrorCode,
        message: String,
        close: u32,
        reason: &'static str,
    ) {
        self.cool_down(device);
        let st = lock(&self.state);
        let Some(active) = st.conns.get(&device) else {
            return;
        };
        let error = encode_frame(&SyncMessage::Error(hybridsync_core::ErrorReply {
            request_id: None,
            code,
            message,
        }));
        if active
            .realtime
            .tx
            .try_send(Outbound::Close {
                error,
                code: close,
                reason,
            })
            .is_err()
        {
            active
                .conn
                .close(VarInt::from_u32(close), reason.as_bytes());
        }
    }

    /// Keeps `device` connected: dial, then wait for the connection to end, with backoff.
    async fn dial_loop(self: Arc<Self>, device: DeviceId) {
        let mut shutdown = self.shutdown.subscribe();
        let mut backoff = self.config.backoff_min;
        let mut first = true;
        loop {
            if self.is_shut_down() || self.excluded(device) {
                return; // shut down, or no longer a member
            }
            let Some(addr) = self.shared_addr(device) else {
                return; // removed from the registry, or no address to dial
            };
            if let Some(conn) = self.active_conn(device) {
                let reason = tokio::select! {
                    r = conn.closed() => r,
                    _ = shutdown.changed() => return,
                };
                let pause = self.redial_pause(&reason, &mut backoff);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            if let Some(until) = self.cooling_down(device) {
                tokio::time::sleep_until(until).await;
                continue;
            }
            if first && self.me > addr.id {
                // The larger id lets the smaller one dial first.
                first = false;
                let grace = self.config.dial_grace + self.jitter(self.config.dial_grace);
                tokio::time::sleep(grace).await;
                continue;
            }
            first = false;
            let attempt = tokio::time::timeout(
                self.config.connect_timeout,
                self.endpoint.connect(addr.clone(), &self.config.alpn),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => {
                    if conn.remote_id() != addr.id {
                        conn.close(VarInt::from_u32(close_code::UNKNOWN_ENDPOINT), b"wrong id");
                        continue;
                    }
                    let reason = self.clone().run_connection(conn, device, self.me).await;
                    if let Some(reason) = reason {
                        let pause = self.redial_pause(&reason, &mut backoff);
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %device, error = %e, "dial failed");
                    let pause = backoff + self.jitter(backoff);
                    backoff = (backoff * 2).min(self.config.backoff_max);
                    tokio::time::sleep(pause).await;
                }
                Err(_) => {
                    tracing::debug!(peer = %device, "dial timed out");
                    let pause = backoff + self.jitter(backoff);
                    backoff = (backoff * 2).min(self.config.backoff_max);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// How long to wait before redialing a peer whose connection just ended.
    ///
    /// - The peer said goodbye (it shut down): not redialed for a while; it dials us when it
    ///   comes back, and a dial pending towards a dead port would hold our own shutdown ~3 s.
    /// - The peer refused us (it does not know us yet, or cools us down): exponential backoff,
    ///   so an unpaired peer is not hammered and the application does not see flapping.
    /// - Anything else (duplicate, idle timeout, reset): a short jitter, so both sides rarely
    ///   redial at the same instant; the backoff restarts from its minimum.
    fn redial_pause(&self, reason: &ConnectionError, backoff: &mut Duration) -> Duration {
        let code = match reason {
            ConnectionError::ApplicationClosed(c) => u32::try_from(c.error_code.into_inner()).ok(),
            _ => None,
        };
        match code {
            Some(close_code::SHUTDOWN) => {
                *backoff = self.config.backoff_min;
                self.config.backoff_max + self.jitter(self.config.backoff_max)
            }
            Some(
                close_code::UNKNOWN_ENDPOINT
                | close_code::NOT_MEMBER
                | close_code::REFUSED
                | close_code::COOLDOWN
                | close_code::BAD_FRAME,
            ) => {
                let pause = *backoff + self.jitter(*backoff);
                *backoff = (*backoff * 2).min(self.config.backoff_max);
                pause
            }
            _ => {
                *backoff = self.config.backoff_min;
                self.jitter(self.config.backoff_min * 3)
            }
        }
    }

    /// Where to dial `device`, if it can be dialed at all ([`Shared::dialable`]).
    fn shared_addr(&self, device: DeviceId) -> Option<iroh::EndpointAddr> {
        self.registry.addr_of(device).filter(|a| self.dialable(a))
    }

    /// Whether a device registered at `addr` is dialed: it has a direct address or a relay URL,
    /// or this endpoint has address lookup to find it by its id. A device with nothing to dial
    /// is only accepted.
    fn dialable(&self, addr: &iroh::EndpointAddr) -> bool {
        !addr.is_empty() || self.lookup
    }

    /// Starts a dial loop for every registered member that has none (and can be dialed).
    fn reconcile_dialers(self: &Arc<Self>) {
        let devices = self.registry.devices();
        let mut st = lock(&self.state);
        st.dialers.retain(|_, h| !h.is_finished());
        for (device, addr) in devices {
            if addr.id == self.me || st.dialers.contains_key(&device) || st.excluded(device) {
                continue;
            }
            if !self.dialable(&addr) {
                continue;
            }
            let task = tokio::spawn(self.clone().dial_loop(device));
            st.dialers.insert(device, task.abort_handle());
        }
    }
}

/// Writes queued frames round-robin to one unidirectional stream per header of `lanes`
/// (frame `k` to lane `k % lanes.len()`), each opened on first use with its header byte.
async fn writer(
    conn: Connection,
    mut rx: mpsc::Receiver<Outbound>,
    queued: Arc<AtomicUsize>,
    priority: i32,
    lanes: &'static [u8],
) {
    let mut streams: Vec<Option<SendStream>> = lanes.iter().map(|_| None).collect();
    let mut next = 0usize;
    while let Some(out) = rx.recv().await {
        let (bytes, close) = match out {
            Outbound::Frame(b) => {
                queued.fetch_sub(b.len(), Ordering::AcqRel);
                (b, None)
            }
            Outbound::Close {
                error,
                code,
                reason,
            } => (error, Some((code, reason))),
        };
        let lane = next % lanes.len().max(1);
        next = next.wrapping_add(1);
        let Some(slot) = streams.get_mut(lane) else {
            return;
        };
        if slot.is_none() {
            match conn.open_uni().await {
                Ok(mut s) => {
                    let _ = s.set_priority(priority);
                    if s.write_all(&lanes[lane..=lane]).await.is_err() {
                        return;
                    }
                    *slot = Some(s);
                }
                Err(_) => return,
            }
        }
        let Some(s) = slot.as_mut() else { return };
        if s.write_all(&bytes).await.is_err() {
            return;
        }
        if let Some((code, reason)) = close {
            let _ = s.finish();
            // Give the error frame a moment to reach the peer, then close.
            let _ = tokio::time::timeout(Duration::from_millis(250), s.stopped()).await;
            conn.close(VarInt::from_u32(code), reason.as_bytes());
            return;
        }
    }
}

/// The order of a connection's inbound bulk frames across its lanes: the index of the next
/// frame to deliver. A lane reader waits for its frame's turn before it takes budget for it or
/// reads its body, so frames reach the engine in the order they were sent and a frame waiting
/// for its turn holds nothing (its bytes wait in QUIC's window of its stream).
#[derive(Clone)]
struct BulkOrder {
    turn: Arc<watch::Sender<u64>>,
    /// Lanes some stream already claimed (bit `i` for lane `i`).
    claimed: Arc<Mutex<u8>>,
}

impl BulkOrder {
    fn new() -> Self {
        BulkOrder {
            turn: Arc::new(watch::channel(0).0),
            claimed: Arc::new(Mutex::new(0)),
        }
    }

    /// Claims bulk lane `lane`; `false` if another stream already did.
    fn claim(&self, lane: u8) -> bool {
        let mut claimed = lock(&self.claimed);
        let bit = 1u8 << lane;
        let free = *claimed & bit == 0;
        *claimed |= bit;
        free
    }

    /// Waits until frame `index` is next; `false` if the connection's readers are gone.
    async fn wait_turn(&self, index: u64) -> bool {
        self.turn
            .subscribe()
            .wait_for(|t| *t == index)
            .await
            .is_ok()
    }

    /// The frame whose turn it was is delivered: the next one may go.
    fn advance(&self) {
        self.turn.send_modify(|t| *t = t.wrapping_add(1));
    }
}

/// Which lane a reader serves and, for a bulk lane, where its frames go in the order.
enum Lane {
    Realtime,
    Bulk {
        order: BulkOrder,
        /// This lane's place in the round-robin, from 0.
        lane: u64,
        /// Frames this lane delivered so far.
        delivered: u64,
    },
}

impl Lane {
    /// Waits, for a bulk lane, until this lane's next frame is the connection's next one.
    async fn wait_turn(&self) -> bool {
        match self {
            Lane::Realtime => true,
            Lane::Bulk {
                order,
                lane,
                delivered,
            } => {
                let index = delivered
                    .wrapping_mul(u64::from(BULK_LANES))
                    .wrapping_add(*lane);
                order.wait_turn(index).await
            }
        }
    }

    /// This lane's frame is delivered.
    fn delivered(&mut self) {
        if let Lane::Bulk {
            order, delivered, ..
        } = self
        {
            *delivered += 1;
            order.advance();
        }
    }
}

/// Accepts the peer's unidirectional streams; one reader task each.
async fn accept_streams(
    shared: Arc<Shared>,
    conn: Connection,
    device: DeviceId,
    sink: EventSink,
    budget: PeerBudget,
) {
    let mut readers = tokio::task::JoinSet::new();
    let order = BulkOrder::new();
    while let Ok(recv) = conn.accept_uni().await {
        readers.spawn(reader(
            shared.clone(),
            recv,
            device,
            sink.clone(),
            budget.clone(),
            order.clone(),
        ));
    }
    readers.abort_all();
}

/// Reads frames from one stream: first its lane header, then exactly as many bytes as the
/// current frame needs, so a hostile length prefix is refused before anything is allocated for
/// its body. Once a frame's length is known (and, on a bulk lane, once it is the connection's
/// next bulk frame), its bytes are taken from the sink's budget ([`EventSink::reserve`])
/// before its body is read: while the driver is behind, the stream is not read and QUIC flow
/// control stops the peer.
async fn reader(
    shared: Arc<Shared>,
    mut recv: RecvStream,
    device: DeviceId,
    sink: EventSink,
    budget: PeerBudget,
    order: BulkOrder,
) {
    let header = match recv.read_chunk(1).await {
        Ok(Some(chunk)) => chunk.first().copied(),
        Ok(None) | Err(_) => return,
    };
    let mut lane = match header {
        Some(REALTIME_LANE) => Lane::Realtime,
        Some(h) if (1..=BULK_LANES).contains(&h) && order.claim(h - 1) => Lane::Bulk {
            order,
            lane: u64::from(h - 1),
            delivered: 0,
        },
        _ => {
            tracing::warn!(peer = %device, ?header, "unknown or repeated stream lane: closing");
            return shared.refuse(
                device,
                ErrorCode::ProtocolViolation,
                format!("stream lane {header:?} is unknown or already open"),
                close_code::BAD_FRAME,
                "bad stream lane",
            );
        }
    };
    let mut decoder = FrameDecoder::new(shared.config.max_frame);
    let mut permit = None;
    loop {
        let wanted = match decoder.wanted() {
            Ok(n) => n,
            Err(e) => return bad_frame(&shared, device, &e),
        };
        if permit.is_none() && decoder.buffered() >= 4 {
            // The prefix is in: `wanted` is the body's length. Its turn first (bulk lanes).
            if !lane.wait_turn().await {
                return;
            }
            match sink.reserve_within(&budget, 4 + wanted).await {
                Ok(p) => permit = Some(p),
                Err(_) => return,
            }
        }
        match recv.read_chunk(wanted.min(64 * 1024)).await {
            Ok(Some(chunk)) => decoder.push(&chunk),
            Ok(None) | Err(_) => return,
        }
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => {
                    let p = match permit.take() {
                        Some(p) => p,
                        None => {
                            if !lane.wait_turn().await {
                                return;
                            }
                            match sink.reserve_within(&budget, 4).await {
                                Ok(p) => p,
                                Err(_) => return,
                            }
                        }
                    };
                    if sink.message_reserved(device, msg, p).await.is_err() {
                        return;
                    }
                    lane.delivered();
                    if decoder.buffered() == 0 {
                        // Give back the buffer a large frame grew, so an idle stream holds
                        // nothing.
                        decoder = FrameDecoder::new(shared.config.max_frame);
                    }
                }
                Ok(None) => break,
                Err(e) => return bad_frame(&shared, device, &e),
            }
        }
    }
}

fn bad_frame(shared: &Shared, device: DeviceId, e: &FrameError) {
    tracing::warn!(peer = %device, error = %e, "bad frame: closing the connection");
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        // Undecodable, and whatever a later core refuses a frame for.
        _ => ErrorCode::BadFrame,
    };
    shared.refuse(
        device,
        code,
        e.to_string(),
        close_code::BAD_FRAME,
        "bad frame",
    );
}

impl ProtocolHandler for SyncProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let remote = conn.remote_id();
        let Some(device) = self.shared.registry.device_of(&remote) else {
            // Not a warning: pairing is mutual, so a device that paired with this one first
            // dials it (again, with backoff) until this one pairs back, which is the usual
            // order of two people exchanging tickets.
            tracing::info!(endpoint = %remote.fmt_short(), "unknown endpoint refused");
            conn.close(
                VarInt::from_u32(close_code::UNKNOWN_ENDPOINT),
                b"unknown endpoint",
            );
            return Ok(());
        };
        if self.shared.excluded(device) {
            tracing::debug!(peer = %device, "not a member: refused");
            conn.close(VarInt::from_u32(close_code::NOT_MEMBER), b"not a member");
            return Ok(());
        }
        if self.shared.cooling_down(device).is_some() {
            conn.close(VarInt::from_u32(close_code::COOLDOWN), b"refused");
            return Ok(());
        }
        self.shared
            .clone()
            .run_connection(conn, device, remote)
            .await;
        Ok(())
    }

    async fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
    }
}

impl Transport for IrohTransport {
    fn start(&mut self, sink: EventSink) {
        if self.shared.sink.set(sink).is_err() {
            tracing::warn!("iroh transport started twice");
            return;
        }
        self.shared.started.send_replace(true);
        self.shared.reconcile_dialers();
        let shared = self.shared.clone();
        let mut changes = shared.registry.watch();
        let mut shutdown = shared.shutdown.subscribe();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                shared.reconcile_dialers();
                // Close connections of devices that left the registry or were re-bound to
                // another key.
                let gone: Vec<Connection> = {
                    let st = lock(&shared.state);
                    st.conns
                        .iter()
                        .filter(|(d, a)| {
                            shared.registry.addr_of(**d).map(|addr| addr.id)
                                != Some(a.conn.remote_id())
                        })
                        .map(|(_, a)| a.conn.clone())
                        .collect()
                };
                for c in gone {
                    c.close(
                        VarInt::from_u32(close_code::UNKNOWN_ENDPOINT),
                        b"unregistered",
                    );
                }
            }
        });
        lock(&self.shared.state).tasks.push(watcher.abort_handle());
    }

    fn send(&mut self, to: DeviceId, msg: SyncMessage) {
        let frame = encode_frame(&msg);
        if frame.len().saturating_sub(4) > self.shared.config.max_frame {
            tracing::error!(peer = %to, kind = msg.kind(), bytes = frame.len(), "message exceeds the maximum frame size: not sent");
            return;
        }
        let st = lock(&self.shared.state);
        let Some(active) = st.conns.get(&to) else {
            tracing::trace!(peer = %to, kind = msg.kind(), "not connected: dropped");
            return;
        };
        let queue = if msg.is_realtime() {
            &active.realtime
        } else {
            &active.bulk
        };
        if let Err(e) = queue.push(frame) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                tracing::warn!(peer = %to, "peer too slow: closing the connection");
                active
                    .conn
                    .close(VarInt::from_u32(close_code::SLOW_PEER), b"too slow");
            }
        }
    }

    fn disconnect(&mut self, peer: DeviceId, reason: Refusal) {
        let code = match reason {
            Refusal::NotMember => ErrorCode::NotMember,
            Refusal::Busy => ErrorCode::Busy,
            _ => ErrorCode::ProtocolViolation,
        };
        self.shared.refuse(
            peer,
            code,
            reason.to_string(),
            close_code::REFUSED,
            "refused",
        );
    }

    /// Remembers the member set: a device outside it has its connection closed
    /// ([`close_code::NOT_MEMBER`]) and is neither dialed (its dial loop ends before the next
    /// attempt) nor accepted any more; a device that joins it is dialed.
    fn set_members(&mut self, members: &BTreeSet<DeviceId>) {
        let gone: Vec<(DeviceId, Connection)> = {
            let mut st = lock(&self.shared.state);
            st.members = Some(members.clone());
            st.conns
                .iter()
                .filter(|(d, _)| !members.contains(d))
                .map(|(d, a)| (*d, a.conn.clone()))
                .collect()
        };
        for (device, conn) in gone {
            tracing::info!(peer = %device, "no longer a member: closing");
            conn.close(VarInt::from_u32(close_code::NOT_MEMBER), b"not a member");
        }
        if *self.shared.started.borrow() && !self.shared.is_shut_down() {
            self.shared.reconcile_dialers();
        }
    }

    fn shutdown(&mut self) -> BoxFuture {
        let shared = self.shared.clone();
        let router = lock(&self.router).take();
        Box::pin(async move {
            let _ = shared.shutdown.send(true);
            let conns: Vec<Connection> = {
                let mut st = lock(&shared.state);
                for (_, h) in std::mem::take(&mut st.dialers) {
                    h.abort();
                }
                for h in std::mem::take(&mut st.tasks) {
                    h.abort();
                }
                std::mem::take(&mut st.conns)
                    .into_values()
                    .map(|a| a.conn)
                    .collect()
            };
            for c in conns {
                c.close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
            }
            if let Some(r) = router {
                let result = match shared.config.close_timeout {
                    Some(t) => tokio::time::timeout(t, r.shutdown()).await.ok(),
                    None => Some(r.shutdown().await),
                };
                match result {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "router shutdown failed"),
                    None => tracing::debug!("router shutdown timed out"),
                }
            }
        })
    }
}
