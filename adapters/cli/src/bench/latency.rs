//! Latency of one change: `put` on device A until `RecordChanged` on device B (direct) and on
//! device C (through B: C is paired with B only, as A and C were never paired), over iroh on
//! 127.0.0.1 with SQLite files on every side (the three nodes in this process), one change at a
//! time.

use super::child::{config, identity};
use super::link::{Link, LinkSpec};
use super::median;
use super::sync::remove_db;
use crate::support::{self, Store};
use anyhow::bail;
use hybridsync_core::{DeviceId, Event};
use hybridsync_iroh::{DeviceRegistry, IrohConfig, IrohTransport};
use hybridsync_sim::bench::{entry_payload, v7_like};
use hybridsync_tokio::Node;
use iroh::EndpointAddr;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Changes sent before timing starts.
const WARMUP: usize = 50;

/// Latency figures, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyFigures {
    /// Changes timed.
    pub samples: usize,
    /// Median put-to-event latency, A to B (direct).
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Median put-to-event latency, A to C through one relay (B).
    pub relay_p50_ms: f64,
    /// 99th percentile of the same.
    pub relay_p99_ms: f64,
    /// Median time for `put` to resolve on A (durable there, handed to the transport).
    pub put_p50_ms: f64,
    /// 99th percentile of the same.
    pub put_p99_ms: f64,
    /// Mean time the threads of this process (both nodes) spent runnable but waiting for a CPU
    /// during one of the slowest 1% of changes (`/proc/self/task/*/schedstat`), ms: when it is
    /// close to their latency, the tail is the machine's load, not the code path.
    pub tail_run_queue_wait_ms: f64,
    /// The same over all changes.
    pub mean_run_queue_wait_ms: f64,
}

/// Nanoseconds the threads of this process have spent waiting on a run queue (the second field
/// of each `/proc/self/task/*/schedstat`), summed.
fn run_queue_wait_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Starts a node for key seed `key` on `db`, in a library of `keys`.
async fn start(
    db: &Path,
    key: u8,
    keys: [u8; 3],
    v6: bool,
) -> anyhow::Result<(
    Node<Store>,
    broadcast::Receiver<Event>,
    DeviceRegistry,
    EndpointAddr,
)> {
    let (secret, me) = identity(key);
    let members = keys.map(|k| identity(k).1);
    let (endpoint, addr) = support::loopback_endpoint_at(secret.clone(), v6).await?;
    let registry = DeviceRegistry::new();
    let transport = IrohTransport::new(endpoint, registry.clone(), IrohConfig::default());
    transport.spawn_router();
    remove_db(db);
    let builder = Node::builder(config(me))
        .bootstrap_members(members)
        .event_capacity(1 << 14);
    let events = builder.subscribe();
    let node = builder.start(Store::open(db)?, transport).await?;
    Ok((
        node,
        events,
        registry,
        EndpointAddr::new(secret.public()).with_ip_addr(addr),
    ))
}

/// Waits for the `RecordChanged` of `uuid` by `by`.
async fn arrival(
    events: &mut broadcast::Receiver<Event>,
    uuid: uuid::Uuid,
    by: DeviceId,
    who: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(Event::RecordChanged { uuid: u, by: b, .. })) if u == uuid && b == by => {
                return Ok(())
            }
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("{who} stopped"),
            Err(_) => bail!("change {uuid} did not reach {who} within 10 s"),
        }
    }
}

/// Times `samples` changes from A to B and, through B, to C (after a warm-up), one at a time;
/// A and B talk across a [`Link`] of shape `link` when given (B and C over loopback).
pub async fn run(
    dir: &Path,
    samples: usize,
    link: Option<LinkSpec>,
) -> anyhow::Result<LatencyFigures> {
    let keys = [21u8, 22u8, 23u8];
    let [a_key, b_key, c_key] = keys;
    let (_, a_id) = identity(a_key);
    let (_, b_id) = identity(b_key);
    let (_, c_id) = identity(c_key);
    // Across a link, B and C listen on the IPv6 loopback and A on the IPv4 one, so A and B
    // have no path but the link (see `link`).
    let v6 = link.is_some();
    let (a, _a_events, a_registry, a_addr) =
        start(&dir.join("latency-a.db"), a_key, keys, false).await?;
    let (b, mut b_events, b_registry, b_addr) =
        start(&dir.join("latency-b.db"), b_key, keys, v6).await?;
    let (c, mut c_events, c_registry, c_addr) =
        start(&dir.join("latency-c.db"), c_key, keys, v6).await?;
    // Paired A - B and B - C only.
    let link = match link {
        Some(spec) => Some(Link::start(spec, Some(socket(&a_addr)?), socket(&b_addr)?)?),
        None => None,
    };
    match &link {
        Some(l) => {
            a_registry.insert(b_id, EndpointAddr::new(b_addr.id).with_ip_addr(l.to_b))?;
            b_registry.insert(a_id, EndpointAddr::new(a_addr.id).with_ip_addr(l.to_a))?;
        }
        None => {
            a_registry.insert(b_id, b_addr.clone())?;
            b_registry.insert(a_id, a_addr)?;
        }
    }
    b_registry.insert(c_id, c_addr)?;
    c_registry.insert(b_id, b_addr)?;
    wait_peer(&a, b_id).await?;
    wait_peer(&b, a_id).await?;
    wait_peer(&b, c_id).await?;
    wait_peer(&c, b_id).await?;

    let mut latencies = Vec::with_capacity(samples);
    let mut relayed = Vec::with_capacity(samples);
    let mut puts = Vec::with_capacity(samples);
    for i in 0..(WARMUP + samples) as u64 {
        let uuid = v7_like(i);
        let data = entry_payload(i).0;
        let waited = run_queue_wait_ns();
        let t = Instant::now();
        a.put("entry", uuid, data).await?;
        let put = t.elapsed();
        arrival(&mut b_events, uuid, a_id, "B").await?;
        let total = t.elapsed();
        let waited = run_queue_wait_ns().saturating_sub(waited);
        arrival(&mut c_events, uuid, a_id, "C").await?;
        let through = t.elapsed();
        if i as usize >= WARMUP {
            latencies.push((total.as_secs_f64() * 1e3, waited as f64 / 1e6));
            relayed.push(through.as_secs_f64() * 1e3);
            puts.push(put.as_secs_f64() * 1e3);
        }
    }
    a.shutdown().await?;
    b.shutdown().await?;
    c.shutdown().await?;
    drop(link);
    relayed.sort_by(f64::total_cmp);
    latencies.sort_by(|a, b| a.0.total_cmp(&b.0));
    puts.sort_by(f64::total_cmp);
    let waits: Vec<f64> = latencies.iter().map(|l| l.1).collect();
    let latencies: Vec<f64> = latencies.iter().map(|l| l.0).collect();
    let tail = samples.div_ceil(100);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(LatencyFigures {
        samples,
        p50_ms: median(&latencies),
        p90_ms: percentile(&latencies, 0.90),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        relay_p50_ms: median(&relayed),
        relay_p99_ms: percentile(&relayed, 0.99),
        put_p50_ms: median(&puts),
        put_p99_ms: percentile(&puts, 0.99),
        tail_run_queue_wait_ms: mean(&waits[waits.len().saturating_sub(tail)..]),
        mean_run_queue_wait_ms: mean(&waits),
    })
}

/// The one socket address of an endpoint address built by `start`.
fn socket(addr: &EndpointAddr) -> anyhow::Result<std::net::SocketAddr> {
    match addr.ip_addrs().next() {
        Some(a) => Ok(*a),
        None => bail!("no socket address"),
    }
}

async fn wait_peer(node: &Node<Store>, peer: DeviceId) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.status().await?.peers.contains(&peer) {
        if Instant::now() > deadline {
            bail!("{} did not connect to {peer}", node.device());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
