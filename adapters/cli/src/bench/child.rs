//! One device of the sync benchmark, in its own process (`hybridsync bench --child ...`), so
//! each device's peak RSS is its own.
//!
//! The parent talks to it with one command per line on stdin (`mark`, `stats`, `reconnect`,
//! `quit`) and reads one JSON [`Reply`] per line on stdout; logs go to stderr.
//!
//! - **source**: starts a node on an already-seeded database and accepts the sink (it knows the
//!   sink's identity but no address, so it never dials), then answers commands.
//! - **sink**: starts a node on a fresh database, dials the source, and reports when it has
//!   caught up with the source's records (the `CaughtUp` event, with the watermark at the
//!   head). On `reconnect` it shuts its node down and starts it again from its database, then
//!   reports what it sent in the first second of the new connection.

use super::counting::{Counter, Counting, Sent};
use crate::support::{self, Store};
use anyhow::{bail, Context};
use hybridsync_core::{Config, DeviceId, Event, ModelRegistry, Stream};
use hybridsync_iroh::{DeviceRegistry, IrohConfig, IrohTransport};
use hybridsync_tokio::Node;
use iroh::{EndpointAddr, SecretKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;

/// Which device a child process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Serves its seeded records.
    Source,
    /// Catches up from the source.
    Sink,
}

/// Hidden options of a device process (set by the parent).
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// Run as this device of the sync benchmark.
    #[arg(long = "child", hide = true)]
    pub role: Option<Role>,
    /// The device's database.
    #[arg(long = "child-db", hide = true)]
    pub db: Option<PathBuf>,
    /// Seed of the device's secret key (32 copies of this byte).
    #[arg(long = "child-key", hide = true, default_value_t = 0)]
    pub key: u8,
    /// Seed of the peer's secret key.
    #[arg(long = "child-peer-key", hide = true, default_value_t = 0)]
    pub peer_key: u8,
    /// Where the peer listens (the sink dials it; the source only accepts).
    #[arg(long = "child-peer-addr", hide = true)]
    pub peer_addr: Option<SocketAddr>,
    /// The sink is caught up when its watermark of the source reaches this.
    #[arg(long = "child-head", hide = true, default_value_t = 0)]
    pub head: u64,
    /// Give up after this many seconds.
    #[arg(long = "child-timeout", hide = true, default_value_t = 600)]
    pub timeout: u64,
    /// Listen on the IPv6 loopback instead of the IPv4 one (the source, behind a WAN link).
    #[arg(long = "child-v6", hide = true)]
    pub v6: bool,
    /// The sink's catch-up window in pages (default: the engine's).
    #[arg(long = "child-window", hide = true)]
    pub window: Option<u32>,
}

/// Memory and CPU time of a process, from `/proc/self/status` and `/proc/self/stat`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// Current resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// CPU time (user + system) since the process started, seconds.
    pub cpu_s: f64,
}

impl Memory {
    /// This process's memory and CPU time now.
    pub fn now() -> Memory {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Memory {
            hwm_kib: super::proc_kib(&status, "VmHWM:").unwrap_or(0),
            rss_kib: super::proc_kib(&status, "VmRSS:").unwrap_or(0),
            cpu_s: super::cpu_seconds(false),
        }
    }
}

/// What the sink reports once caught up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Synced {
    /// Node start (dial) to `PeerConnected`, ms.
    pub connect_ms: f64,
    /// Node start (dial) to caught up, ms.
    pub total_ms: f64,
    /// Catch-up pages applied (`CatchUpProgress` events).
    pub pages: u64,
    /// The sink's watermark of the source at the end.
    pub watermark: u64,
    /// Resident set size once the node had started, before it connected.
    pub idle_rss_kib: u64,
    /// Memory at the end.
    pub memory: Memory,
}

/// What the sink reports after a reconnect.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reconnected {
    /// Node start (dial) to `PeerConnected`, ms.
    pub connect_ms: f64,
    /// What the sink sent in the first second of the new connection.
    pub sent: Sent,
    /// Whether the watermark was still at the head afterwards (nothing to fetch).
    pub still_synced: bool,
}

/// One line a device process prints on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The node runs and listens here.
    Ready {
        /// The endpoint's socket address.
        addr: SocketAddr,
    },
    /// The sink caught up.
    Synced(Synced),
    /// The sink reconnected.
    Reconnected(Reconnected),
    /// Answer to `stats`: memory and what was sent since `mark`.
    Stats {
        /// Memory now.
        memory: Memory,
        /// Sent since `mark`.
        sent: Sent,
    },
    /// A command was done.
    Ok,
    /// The process failed.
    Error(String),
}

fn emit(reply: &Reply) {
    if let Ok(line) = serde_json::to_string(reply) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Runs a device process.
pub fn run(role: Role, args: &ChildArgs) -> anyhow::Result<()> {
    support::init_tracing("warn");
    let result = support::runtime()?.block_on(async {
        match role {
            Role::Source => source(args).await,
            Role::Sink => sink(args).await,
        }
    });
    if let Err(e) = &result {
        emit(&Reply::Error(format!("{e:#}")));
    }
    result
}

/// The secret key and device id of key seed `seed`.
pub fn identity(seed: u8) -> (SecretKey, DeviceId) {
    let key = SecretKey::from_bytes(&[seed; 32]);
    let id = hybridsync_iroh::device_id_for(&key.public());
    (key, id)
}

/// The engine configuration of both benchmark devices: the periodic summary is slowed down so
/// that only the summary sent on connect shows in the reconnect counts.
pub fn config(me: DeviceId) -> Config {
    let mut c = Config::new(me, ModelRegistry::spacedrive());
    c.heartbeat_interval = Duration::from_secs(60);
    c
}

/// A started device.
struct Device {
    node: Node<Store>,
    events: broadcast::Receiver<Event>,
    counter: Counter,
    addr: SocketAddr,
}

/// Starts a node on `db` for key seed `key`, knowing the peer `peer_key` at `peer_addr` (dialed)
/// or with no address (accepted only); what it sends is counted by `counter` once started.
async fn start(
    db: &Path,
    key: u8,
    peer_key: u8,
    peer_addr: Option<SocketAddr>,
    counter: Counter,
    window: Option<u32>,
    v6: bool,
) -> anyhow::Result<Device> {
    let (secret, me) = identity(key);
    let (peer_secret, peer) = identity(peer_key);
    let (endpoint, addr) = support::loopback_endpoint_at(secret, v6).await?;
    let registry = DeviceRegistry::new();
    let mut peer_endpoint = EndpointAddr::new(peer_secret.public());
    if let Some(a) = peer_addr {
        peer_endpoint = peer_endpoint.with_ip_addr(a);
    }
    registry.insert(peer, peer_endpoint)?;
    let iroh_config = IrohConfig {
        // Only the sink dials: no reason to let the other side go first.
        dial_grace: Duration::ZERO,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        ..IrohConfig::default()
    };
    let transport = IrohTransport::new(endpoint, registry, iroh_config);
    transport.spawn_router();
    let store = Store::open(db).with_context(|| format!("opening {}", db.display()))?;
    let mut config = config(me);
    if let Some(w) = window {
        config.catch_up_window = w;
    }
    let builder = Node::builder(config)
        .bootstrap_members([me, peer])
        .event_capacity(1 << 16);
    let events = builder.subscribe();
    let node = builder
        .start(store, Counting::new(transport, counter.clone()))
        .await?;
    Ok(Device {
        node,
        events,
        counter,
        addr,
    })
}

fn db_path(args: &ChildArgs) -> anyhow::Result<&Path> {
    args.db.as_deref().context("--child-db is required")
}

async fn source(args: &ChildArgs) -> anyhow::Result<()> {
    let dev = start(
        db_path(args)?,
        args.key,
        args.peer_key,
        None,
        Counter::default(),
        None,
        args.v6,
    )
    .await?;
    emit(&Reply::Ready { addr: dev.addr });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "mark" => {
                dev.counter.start();
                emit(&Reply::Ok);
            }
            "stats" => emit(&Reply::Stats {
                memory: Memory::now(),
                sent: dev.counter.snapshot(),
            }),
            "quit" => break,
            other => bail!("unknown command {other:?}"),
        }
    }
    dev.node.shutdown().await?;
    emit(&Reply::Ok);
    Ok(())
}

/// Waits until the sink's watermark of `owner` reaches `head` (the `CaughtUp` event, checked
/// against the engine's watermark; a status poll covers a lagged subscriber). Returns the
/// times of `PeerConnected` and of caught up since `t0`, and the pages applied.
async fn wait_caught_up(
    dev: &mut Device,
    owner: DeviceId,
    head: u64,
    t0: Instant,
    deadline: Instant,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let mut connected = None;
    let mut pages = 0u64;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        let check = tokio::select! {
            e = dev.events.recv() => match e {
                Ok(Event::PeerConnected(p)) if p == owner => {
                    connected.get_or_insert(t0.elapsed());
                    false
                }
                Ok(Event::CatchUpProgress { stream: Stream::Owned(o), .. }) if o == owner => {
                    pages += 1;
                    false
                }
                Ok(Event::CaughtUp { stream: Stream::Owned(o), .. }) => o == owner,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => false,
                Err(broadcast::error::RecvError::Closed) => bail!("the node stopped"),
            },
            _ = poll.tick() => true,
            () = tokio::time::sleep_until(deadline.into()) => {
                bail!("not caught up after {:?}", t0.elapsed())
            }
        };
        if check {
            let status = dev.node.status().await?;
            if status.watermarks.get(&owner).copied().unwrap_or(0) >= head {
                let done = t0.elapsed();
                return Ok((connected.unwrap_or(done), done, pages));
            }
        }
    }
}

async fn sink(args: &ChildArgs) -> anyhow::Result<()> {
    let db = db_path(args)?;
    let peer_addr = args.peer_addr.context("--child-peer-addr is required")?;
    let (_, source_id) = identity(args.peer_key);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    // The clock starts before the node: starting it starts the dial.
    let t0 = Instant::now();
    let mut dev = start(
        db,
        args.key,
        args.peer_key,
        Some(peer_addr),
        Counter::default(),
        args.window,
        args.v6,
    )
    .await?;
    let idle_rss_kib = Memory::now().rss_kib;
    let (connected, done, pages) =
        wait_caught_up(&mut dev, source_id, args.head, t0, deadline).await?;
    let status = dev.node.status().await?;
    emit(&Reply::Synced(Synced {
        connect_ms: connected.as_secs_f64() * 1e3,
        total_ms: done.as_secs_f64() * 1e3,
        pages,
        watermark: status.watermarks.get(&source_id).copied().unwrap_or(0),
        idle_rss_kib,
        memory: Memory::now(),
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "stats" => emit(&Reply::Stats {
                memory: Memory::now(),
                sent: dev.counter.snapshot(),
            }),
            "reconnect" => {
                drop(dev.node.shutdown().await?);
                let counter = Counter::default();
                counter.start();
                let t0 = Instant::now();
                dev = start(
                    db,
                    args.key,
                    args.peer_key,
                    Some(peer_addr),
                    counter,
                    args.window,
                    args.v6,
                )
                .await?;
                let connected = wait_connected(&mut dev, source_id, deadline).await?;
                let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(connected.elapsed()))
                    .await;
                let status = dev.node.status().await?;
                emit(&Reply::Reconnected(Reconnected {
                    connect_ms,
                    sent: dev.counter.snapshot(),
                    still_synced: status.watermarks.get(&source_id).copied().unwrap_or(0)
                        >= args.head
                        && !status.fetching,
                }));
            }
            "quit" => break,
            other => bail!("unknown command {other:?}"),
        }
    }
    dev.node.shutdown().await?;
    emit(&Reply::Ok);
    Ok(())
}

/// Waits for `PeerConnected(peer)`; returns when it happened.
async fn wait_connected(
    dev: &mut Device,
    peer: DeviceId,
    deadline: Instant,
) -> anyhow::Result<Instant> {
    loop {
        tokio::select! {
            e = dev.events.recv() => match e {
                Ok(Event::PeerConnected(p)) if p == peer => return Ok(Instant::now()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => bail!("the node stopped"),
            },
            () = tokio::time::sleep_until(deadline.into()) => bail!("did not reconnect"),
        }
    }
}
