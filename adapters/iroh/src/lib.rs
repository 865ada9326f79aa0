//! The iroh transport for hybridsync.
//!
//! [`IrohTransport`] implements [`hybridsync_tokio::Transport`] over iroh 1.x QUIC
//! connections: an ALPN protocol (`/spacedrive/sync/2.0.0` by default) registered on an iroh
//! [`iroh::protocol::Router`], a [`DeviceRegistry`] mapping authenticated endpoint ids to
//! device ids, one connection per device with deterministic de-duplication, reconnects with
//! backoff and jitter, and separate prioritised streams for real-time and bulk traffic.
//!
//! [`bind_endpoint`] binds the endpoint a [`NetworkConfig`] describes: relay servers (iroh's
//! public ones, or your own) so that devices on different networks reach each other by
//! endpoint id, address lookup, or neither. [`offline_endpoint`] binds one that never leaves
//! the machine's configured addresses: no relays, no address lookup, no port mapping (for
//! tests, demos and LANs where peers exchange [`Ticket`]s). A [`Ticket`] carries the device's
//! endpoint id, its direct addresses and its home relay's URL, so a device whose direct
//! addresses changed is still reached through its relay, without a new ticket.
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
#![warn(unreachable_pub)]

mod registry;
mod transport;

pub use registry::{device_id_for, DeviceRegistry, RegistryError, Ticket, TicketError};
pub use transport::{
    close_code, IrohConfig, IrohTransport, SyncProtocol, DEFAULT_ALPN, REALTIME_LANE,
};

use iroh::address_lookup::{DnsAddressLookup, PkarrPublisher, PkarrResolver};
use iroh::endpoint::{
    presets, BindError, InvalidSocketAddr, PortmapperConfig, QuicTransportConfig,
};
use iroh::tls::CaTlsConfig;
use iroh::{Endpoint, NetReportConfig, RelayMode, SecretKey};
use std::net::SocketAddr;
use std::time::Duration;

/// An endpoint could not be bound. iroh's own error is the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The bind address is not usable.
    #[error("invalid bind address")]
    Address(#[from] InvalidSocketAddr),
    /// Binding failed.
    #[error("bind failed")]
    Bind(#[from] BindError),
    /// A QUIC setting is out of range (a duration too long for QUIC's variable-length
    /// integers).
    #[error("QUIC setting out of range")]
    Setting(#[from] iroh::endpoint::VarIntBoundsExceeded),
    /// The configuration asks for no way to reach anyone (no socket and no relay).
    #[error("no direct socket and no relay: the endpoint could reach no one")]
    Unreachable,
}

/// How an endpoint finds a device whose [`iroh::EndpointAddr`] holds no usable address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lookup {
    /// None: a device is dialed only at the addresses and relay URLs the registry holds.
    #[default]
    Disabled,
    /// iroh's default address lookup, run by number 0 on the public internet: the endpoint
    /// publishes its home relay (signed with its key, via pkarr) and resolves other devices'
    /// by endpoint id (pkarr over HTTPS, and DNS). A device that moved to another relay is
    /// found again by its id alone.
    N0,
}

/// Where an endpoint listens and which servers help it reach devices (see [`bind_endpoint`]).
///
/// [`NetworkConfig::offline`] talks only to addresses it is given (tests, the demo,
/// benchmarks, a LAN); [`NetworkConfig::n0`] is what an iroh application on the internet
/// uses (iroh's public relays and address lookup); [`NetworkConfig::relays`] uses the given
/// relay servers and nothing else. Port mapping (UPnP, NAT-PMP, PCP) is never enabled.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Local UDP address for direct paths (`0.0.0.0:0` for any interface, a new port at each
    /// start); `None` binds no socket at all, so every packet goes through a relay.
    pub bind: Option<SocketAddr>,
    /// Relay servers: the endpoint keeps a connection to the closest one (its home relay,
    /// which its [`Ticket`] names), and reaches a device through the device's home relay
    /// until a direct path is found (hole punching). [`RelayMode::Disabled`]: direct paths only.
    pub relays: RelayMode,
    /// Address lookup services (publish this endpoint's relay, resolve devices by id).
    pub lookup: Lookup,
    /// Which certificates the relays' (and lookup services') TLS must chain to; `None`:
    /// iroh's default, the Mozilla roots compiled in. A self-hosted relay with its own CA (or
    /// a test relay's self-signed certificate) needs [`CaTlsConfig::custom_roots`] or
    /// [`CaTlsConfig::with_extra_roots`].
    pub relay_tls: Option<CaTlsConfig>,
    /// What the endpoint measures about its network (latency to each relay, to choose its
    /// home relay; a captive-portal check on port 80 of a relay's host). iroh's default.
    pub net_report: NetReportConfig,
}

impl NetworkConfig {
    /// Direct paths only, on one UDP socket at `bind`: no relay, no address lookup. A device
    /// is reached only at the addresses the registry holds, so one that restarts on another
    /// port must be paired again (or come back on the same port).
    pub fn offline(bind: SocketAddr) -> Self {
        NetworkConfig {
            bind: Some(bind),
            relays: RelayMode::Disabled,
            lookup: Lookup::Disabled,
            relay_tls: None,
            net_report: NetReportConfig::default(),
        }
    }

    /// iroh's defaults for devices on different networks: its public relays
    /// ([`iroh::endpoint::default_relay_mode`]) and its address lookup ([`Lookup::N0`]), with a
    /// direct socket at `bind` for the paths hole punching finds.
    pub fn n0(bind: SocketAddr) -> Self {
        NetworkConfig {
            relays: iroh::endpoint::default_relay_mode(),
            lookup: Lookup::N0,
            ..Self::offline(bind)
        }
    }

    /// The relay servers of `relays` and no other server: no address lookup. A device is
    /// reached through the relay URL its ticket names (its home relay), so with more than one
    /// relay a device whose home relay changed is reached once it dials back.
    pub fn relays(bind: Option<SocketAddr>, relays: iroh::RelayMap) -> Self {
        NetworkConfig {
            bind,
            relays: RelayMode::Custom(relays),
            lookup: Lookup::Disabled,
            relay_tls: None,
            net_report: NetReportConfig::default(),
        }
    }
}

/// Binds an endpoint as `network` says. Connections send keep-alives every second and time
/// out after 5 s of silence, so a vanished peer is noticed quickly. A peer may open at most
/// 4 unidirectional streams towards it (the sync protocol uses all four: one real-time, three
/// bulk lanes) and no bidirectional
/// stream, from the handshake on (an endpoint bound otherwise grants the library's default of
/// 100 until [`IrohTransport`] lowers it after the device is reported up). Port mapping is
/// always disabled. Never call `Endpoint::online()` on an endpoint without relays: it never
/// returns.
pub async fn bind_endpoint(
    secret: SecretKey,
    network: &NetworkConfig,
) -> Result<Endpoint, EndpointError> {
    if network.bind.is_none() && network.relays == RelayMode::Disabled {
        return Err(EndpointError::Unreachable);
    }
    let idle: iroh::endpoint::IdleTimeout = Duration::from_secs(5).try_into()?;
    let quic = QuicTransportConfig::builder()
        .keep_alive_interval(Duration::from_secs(1))
        .max_idle_timeout(Some(idle))
        .max_concurrent_uni_streams(transport::MAX_INBOUND_STREAMS.into())
        .max_concurrent_bidi_streams(0u32.into())
        // QUIC's flow-control windows stay at the library's defaults (1.25 MB per stream,
        // about 100 Mbit/s at 100 ms RTT); catch-up spreads over three bulk lanes, so three
        // of them are in flight per round trip. Larger windows are not safe: a receiver that reads slower than its peer sends (the driver
        // stops reading past its inbound budget while the disk catches up) then buffers more
        // than the QUIC library's 1,024 chunks per stream and the connection fails with
        // "too many gaps in stream buffer" (`slow_peer.rs` failed so with 8 MiB).
        .build();
    // `Minimal` sets only the crypto provider: every service below is chosen here.
    let mut builder = Endpoint::builder(presets::Minimal)
        .secret_key(secret)
        .relay_mode(network.relays.clone())
        .clear_address_lookup()
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(network.net_report.clone())
        .transport_config(quic)
        .clear_ip_transports();
    if let Some(tls) = &network.relay_tls {
        builder = builder.ca_tls_config(tls.clone());
    }
    if network.lookup == Lookup::N0 {
        builder = builder
            .address_lookup(PkarrPublisher::n0_dns())
            .address_lookup(PkarrResolver::n0_dns())
            .address_lookup(DnsAddressLookup::n0_dns());
    }
    if let Some(bind) = network.bind {
        builder = builder.bind_addr(bind)?;
    }
    Ok(builder.bind().await?)
}

/// Binds an endpoint that talks only to addresses it is given ([`NetworkConfig::offline`]):
/// relays disabled, address lookup cleared, port mapping disabled, one IP socket at `bind`
/// (use `127.0.0.1:0` for tests). See [`bind_endpoint`] for its QUIC limits.
pub async fn offline_endpoint(
    secret: SecretKey,
    bind: SocketAddr,
) -> Result<Endpoint, EndpointError> {
    bind_endpoint(secret, &NetworkConfig::offline(bind)).await
}
