//! The iroh transport for hybridsync.
//!
//! [`IrohTransport`] implements [`hybridsync_tokio::Transport`] over iroh 1.x QUIC
//! connections: an ALPN protocol (`/spacedrive/sync/2.0.0` by default) registered on an iroh
//! [`iroh::protocol::Router`], a [`DeviceRegistry`] mapping authenticated endpoint ids to
//! device ids, one connection per device with deterministic de-duplication, reconnects with
//! backoff and jitter, and separate prioritised streams for real-time and bulk traffic.
//!
//! [`offline_endpoint`] binds an endpoint that never leaves the machine's configured
//! addresses: no relays, no address lookup, no port mapping (for tests, demos and LANs
//! where peers exchange [`Ticket`]s).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use hybridsync_core::{Config, DeviceId, MemStore, ModelRegistry};
//! use hybridsync_iroh::{offline_endpoint, DeviceRegistry, IrohConfig, IrohTransport};
//! use hybridsync_tokio::Node;
//!
//! let me = DeviceId::from_u128(1);
//! let endpoint = offline_endpoint(iroh::SecretKey::generate(), "127.0.0.1:0".parse()?).await?;
//! let registry = DeviceRegistry::new(); // insert paired devices: registry.insert(id, addr)?
//! let transport = IrohTransport::new(endpoint, registry, IrohConfig::default());
//! let _router = transport.spawn_router();
//! let node = Node::builder(Config::new(me, ModelRegistry::spacedrive()))
//!     .bootstrap_members([me])
//!     .start(MemStore::new(), transport)
//!     .await?;
//! # drop(node); Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod registry;
mod transport;

pub use registry::{device_id_for, DeviceRegistry, RegistryError, Ticket, TicketError};
pub use transport::{close_code, IrohConfig, IrohTransport, SyncProtocol, DEFAULT_ALPN};

use iroh::endpoint::{
    presets, BindError, InvalidSocketAddr, PortmapperConfig, QuicTransportConfig,
};
use iroh::{Endpoint, RelayMode, SecretKey};
use std::net::SocketAddr;
use std::time::Duration;

/// An endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The bind address is not usable.
    #[error("invalid bind address: {0}")]
    Address(String),
    /// Binding failed.
    #[error("bind failed: {0}")]
    Bind(String),
}

impl From<InvalidSocketAddr> for EndpointError {
    fn from(e: InvalidSocketAddr) -> Self {
        EndpointError::Address(e.to_string())
    }
}

impl From<BindError> for EndpointError {
    fn from(e: BindError) -> Self {
        EndpointError::Bind(e.to_string())
    }
}

/// Bytes a peer may have in flight towards this device on one connection, all streams
/// together (8 MiB; QUIC's flow-control window). A catch-up moves at most this much per round
/// trip: 8 MiB keeps a 200 ms link at 40 MB/s, faster than a device applies pages, where the
/// library default (1.25 MiB per stream) held a 1M-record sync at 200 ms to about 6 MB/s. It
/// is also what QUIC may buffer for a peer that sends faster than this device reads.
pub const RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

/// Binds an iroh endpoint that talks only to addresses it is given: relays disabled, address
/// lookup cleared, port mapping disabled, one IP socket at `bind` (use `127.0.0.1:0` for tests).
/// Connections send keep-alives every second and time out after 5 s of silence, so a vanished
/// peer is noticed quickly. A peer may open at most 4 unidirectional streams towards it (the
/// sync protocol uses two) and no bidirectional stream, from the handshake on (an endpoint
/// bound otherwise grants the library's default of 100 until [`IrohTransport`] lowers it after
/// the device is reported up). Never call `Endpoint::online()` on it: with no relay it never
/// returns.
pub async fn offline_endpoint(
    secret: SecretKey,
    bind: SocketAddr,
) -> Result<Endpoint, EndpointError> {
    let idle = Duration::from_secs(5)
        .try_into()
        .map_err(|e: iroh::endpoint::VarIntBoundsExceeded| EndpointError::Bind(e.to_string()))?;
    let quic = QuicTransportConfig::builder()
        .keep_alive_interval(Duration::from_secs(1))
        .max_idle_timeout(Some(idle))
        .max_concurrent_uni_streams(transport::MAX_INBOUND_STREAMS.into())
        .max_concurrent_bidi_streams(0u32.into())
        .stream_receive_window(RECEIVE_WINDOW.into())
        .receive_window(RECEIVE_WINDOW.into())
        .build();
    let endpoint = Endpoint::builder(presets::Minimal)
        .secret_key(secret)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .portmapper_config(PortmapperConfig::Disabled)
        .transport_config(quic)
        .clear_ip_transports()
        .bind_addr(bind)?
        .bind()
        .await?;
    Ok(endpoint)
}
