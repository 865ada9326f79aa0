//! Harness: devices with real iroh endpoints on 127.0.0.1 and real storage files.

#![allow(dead_code, clippy::unwrap_used)]

use hybridsync_core::{Config, DeviceId, Event, ModelRegistry};
use hybridsync_iroh::{offline_endpoint, DeviceRegistry, IrohConfig, IrohTransport};
use hybridsync_tokio::Node;
use iroh::{Endpoint, EndpointAddr, SecretKey};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use store::Store;

/// The storage backend under test: real SQLite files.
pub mod store {
    use std::path::Path;

    /// Real SQLite files (WAL, group commit).
    pub type Store = hybridsync_sqlite::SqliteStore;

    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Store {
        Store::open(path).unwrap()
    }

    /// Re-opens the store from its file after a shutdown handed back `previous` (dropped
    /// first, as a restarted process would).
    pub fn reopen(path: &Path, previous: Store) -> Store {
        drop(previous);
        open(path)
    }

    /// Digest of the replicated content.
    pub fn digest(s: &mut Store) -> u64 {
        s.content_digest().unwrap()
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A device: identity, fixed loopback address, database path.
pub struct Dev {
    pub id: DeviceId,
    pub key: SecretKey,
    pub addr: SocketAddr,
    pub db: PathBuf,
    endpoint: Option<iroh::Endpoint>,
    /// Registered without an address: accepted, never dialed.
    accept_only: bool,
}

impl Dev {
    /// Binds an endpoint on a free loopback port (kept for restarts).
    pub async fn new(n: u128, dir: &std::path::Path) -> Dev {
        let key = SecretKey::from_bytes(&[n as u8; 32]);
        let endpoint = offline_endpoint(key.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = *endpoint.addr().ip_addrs().next().expect("bound address");
        Dev {
            id: device_id(n),
            key,
            addr,
            db: dir.join(format!("device-{n}.db")),
            endpoint: Some(endpoint),
            accept_only: false,
        }
    }

    /// A peer known only by identity (a raw endpoint in a test).
    pub fn accept_only(id: DeviceId, key: SecretKey) -> Dev {
        Dev {
            id,
            key,
            addr: "127.0.0.1:1".parse().unwrap(),
            db: PathBuf::new(),
            endpoint: None,
            accept_only: true,
        }
    }

    pub fn endpoint_addr(&self) -> EndpointAddr {
        let addr = EndpointAddr::new(self.key.public());
        if self.accept_only {
            addr
        } else {
            addr.with_ip_addr(self.addr)
        }
    }

    async fn endpoint(&mut self) -> iroh::Endpoint {
        match self.endpoint.take() {
            Some(e) => e,
            None => {
                // Rebind the same port so peers find the device where they left it.
                let mut tries = 0;
                loop {
                    match offline_endpoint(self.key.clone(), self.addr).await {
                        Ok(e) => break e,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            tracing::debug!(error = %e, "rebind failed; retrying");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("cannot rebind {}: {e}", self.addr),
                    }
                }
            }
        }
    }
}

/// A device id that reads well in logs (`DeviceId` displays its first 8 hex digits).
/// A member that is nothing but a raw endpoint (offline, on 127.0.0.1), and its `Dev` to
/// register it with: the test drives the connection itself, as a misbehaving peer would.
pub async fn raw_member(n: u8) -> (Endpoint, Dev) {
    let key = SecretKey::from_bytes(&[n; 32]);
    let endpoint = offline_endpoint(key.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (endpoint, Dev::accept_only(device_id(u128::from(n)), key))
}

pub fn device_id(n: u128) -> DeviceId {
    DeviceId::from_u128((n << 96) | n)
}

pub fn config(device: DeviceId) -> Config {
    let mut c = Config::new(device, ModelRegistry::spacedrive());
    c.heartbeat_interval = Duration::from_millis(300);
    c.ack_delay = Duration::from_millis(20);
    c
}

pub fn iroh_config() -> IrohConfig {
    IrohConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        refusal_cooldown: Duration::from_millis(500),
        ..IrohConfig::default()
    }
}

/// A registry knowing `peers` (identity and address).
pub fn registry(peers: &[&Dev]) -> DeviceRegistry {
    let r = DeviceRegistry::new();
    for p in peers {
        r.insert(p.id, p.endpoint_addr()).unwrap();
    }
    r
}

/// Starts `dev` knowing `peers`, with `members` as bootstrap member set, on its database
/// (`previous`: what the last shutdown handed back, for a restart).
pub async fn start_with(
    dev: &mut Dev,
    peers: &[&Dev],
    members: &[DeviceId],
    previous: Option<Store>,
    config: Config,
) -> Node<Store> {
    start_inner(dev, peers, members, previous, Some(config))
        .await
        .0
}

/// Like [`start`], with an event subscription taken before the node starts.
pub async fn start_subscribed(
    dev: &mut Dev,
    peers: &[&Dev],
    members: &[DeviceId],
    previous: Option<Store>,
) -> (Node<Store>, tokio::sync::broadcast::Receiver<Event>) {
    start_inner(dev, peers, members, previous, None).await
}

async fn start_inner(
    dev: &mut Dev,
    peers: &[&Dev],
    members: &[DeviceId],
    previous: Option<Store>,
    config_override: Option<Config>,
) -> (Node<Store>, tokio::sync::broadcast::Receiver<Event>) {
    let config = config_override.unwrap_or_else(|| config(dev.id));
    let store = match previous {
        None => store::open(&dev.db),
        Some(p) => store::reopen(&dev.db, p),
    };
    let endpoint = dev.endpoint().await;
    let transport = IrohTransport::new(endpoint, registry(peers), iroh_config());
    transport.spawn_router();
    let builder = Node::builder(config).bootstrap_members(members.iter().copied());
    let events = builder.subscribe();
    (builder.start(store, transport).await.unwrap(), events)
}

pub async fn start(
    dev: &mut Dev,
    peers: &[&Dev],
    members: &[DeviceId],
    previous: Option<Store>,
) -> Node<Store> {
    let c = config(dev.id);
    start_with(dev, peers, members, previous, c).await
}

pub async fn digest(node: &Node<Store>) -> u64 {
    node.inspect(store::digest).await.unwrap()
}

/// Waits until every node holds the same content (compared by digest); returns it.
pub async fn converged(nodes: &[&Node<Store>], within: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
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
            "no convergence within {within:?}: {digests:x?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `node` has a session with every device of `peers`.
pub async fn connected(node: &Node<Store>, peers: &[DeviceId], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = node.status().await.unwrap();
        if peers.iter().all(|p| s.peers.contains(p)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} not connected to {peers:?}: {:?}",
            node.device(),
            s.peers
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for an event matching `f`.
pub async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    within: Duration,
    mut f: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(within, async {
        loop {
            match rx.recv().await {
                Ok(e) if f(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    })
    .await
    .expect("event in time")
}
