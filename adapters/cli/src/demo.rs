//! `hybridsync demo`: three devices over iroh on 127.0.0.1 with SQLite files in a temporary
//! directory. They write device-owned and shared records (with a conflicting edit of one shared
//! field and deletes), one goes offline and comes back from its database, and the demo prints
//! a table showing that all three hold the same content.

use crate::support::{self, Dump, Store};
use anyhow::{bail, Context};
use hybridsync_core::{Config, DeviceId, Event, ModelRegistry, Stream, Value};
use hybridsync_iroh::{offline_endpoint, DeviceRegistry, IrohConfig, IrohTransport};
use hybridsync_tokio::Node;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use iroh::{EndpointAddr, SecretKey};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Options of `hybridsync demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device-owned records each device writes while the phone is offline.
    #[arg(long, default_value_t = 2000)]
    pub offline_writes: u32,
    /// Give up (exit non-zero) if the devices have not converged after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Keep the SQLite files in this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    support::init_tracing("warn");
    support::runtime()?.block_on(demo(args))
}

/// One demo device: identity, fixed loopback address, database file.
struct Device {
    name: &'static str,
    key: SecretKey,
    id: DeviceId,
    addr: SocketAddr,
    db: PathBuf,
    endpoint: Option<iroh::Endpoint>,
}

impl Device {
    async fn new(name: &'static str, seed: u8, dir: &std::path::Path) -> anyhow::Result<Device> {
        // Fixed keys keep the demo reproducible; a real device uses SecretKey::generate().
        let key = SecretKey::from_bytes(&[seed; 32]);
        let (endpoint, addr) = support::loopback_endpoint(key.clone()).await?;
        Ok(Device {
            name,
            id: hybridsync_iroh::device_id_for(&key.public()),
            key,
            addr,
            db: dir.join(format!("{name}.db")),
            endpoint: Some(endpoint),
        })
    }

    fn endpoint_addr(&self) -> EndpointAddr {
        EndpointAddr::new(self.key.public()).with_ip_addr(self.addr)
    }

    /// Starts the node on the device's database, subscribed to events from the start.
    async fn start(
        &mut self,
        peers: &[(DeviceId, EndpointAddr)],
        members: &[DeviceId],
    ) -> anyhow::Result<(Node<Store>, broadcast::Receiver<Event>)> {
        let endpoint = match self.endpoint.take() {
            Some(e) => e,
            // Restart: same key, same port, so the others find it where it was.
            None => offline_endpoint(self.key.clone(), self.addr).await?,
        };
        let registry = DeviceRegistry::new();
        for (id, addr) in peers.iter().filter(|(id, _)| *id != self.id) {
            registry.insert(*id, addr.clone())?;
        }
        let transport = IrohTransport::new(endpoint, registry, IrohConfig::default());
        transport.spawn_router();
        let store =
            Store::open(&self.db).with_context(|| format!("opening {}", self.db.display()))?;
        let mut config = Config::new(self.id, ModelRegistry::spacedrive());
        config.heartbeat_interval = Duration::from_secs(1);
        let builder = Node::builder(config).bootstrap_members(members.iter().copied());
        let events = builder.subscribe();
        let node = builder.start(store, transport).await?;
        Ok((node, events))
    }
}

fn entry(name: &str, size: i64) -> Vec<u8> {
    let fields: BTreeMap<String, Value> = [
        ("name".to_owned(), Value::from(name)),
        ("size".to_owned(), Value::Int(size)),
    ]
    .into_iter()
    .collect();
    Value::Map(fields).to_bytes()
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect()
}

/// Writes `count` device-owned entries, many in flight at once (group commit batches them).
async fn write_entries(node: &Node<Store>, prefix: &str, count: u32) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    for chunk in ids.chunks(256) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in chunk.iter().enumerate() {
            let (node, id, name) = (node.clone(), *id, format!("{prefix}-{i}.jpg"));
            tasks.spawn(async move { node.put("entry", id, entry(&name, 1024)).await });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    Ok(ids)
}

async fn wait_connected(nodes: &[&Node<Store>], deadline: Instant) -> anyhow::Result<()> {
    for n in nodes {
        loop {
            let s = n.status().await?;
            if s.peers.len() + 1 >= nodes.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not connect to its peers", n.device());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Shows catch-up progress bars from the restarted device's events until `stop` fires.
fn progress_task(
    mut events: broadcast::Receiver<Event>,
    names: BTreeMap<DeviceId, &'static str>,
    quiet: bool,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let bar_style = ProgressStyle::with_template(
            "  {prefix:<20} [{bar:30.cyan/blue}] {pos:>6}/{len:<6} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let count_style =
            ProgressStyle::with_template("  {prefix:<20} {spinner} {pos:>6} entries {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
        let label = |s: &Stream| match s {
            Stream::Owned(o) => format!("{}'s records", names.get(o).copied().unwrap_or("?")),
            Stream::SharedLog => "shared log".to_owned(),
            Stream::SharedSnapshot => "shared snapshot".to_owned(),
        };
        loop {
            let e = tokio::select! {
                _ = &mut stop => break,
                e = events.recv() => e,
            };
            match e {
                Ok(Event::CatchUpProgress {
                    peer,
                    stream,
                    position,
                    target,
                    applied,
                }) => {
                    let key = label(&stream);
                    let bar = bars.entry(key.clone()).or_insert_with(|| {
                        let b = match target {
                            Some(_) => ProgressBar::new(0).with_style(bar_style.clone()),
                            None => ProgressBar::new(0).with_style(count_style.clone()),
                        };
                        let b = multi.add(b);
                        b.set_prefix(key);
                        b
                    });
                    let from = names.get(&peer).copied().unwrap_or("?");
                    bar.set_message(format!("from {from}"));
                    match target {
                        Some(t) => {
                            bar.set_length(t.max(position));
                            bar.set_position(position);
                        }
                        None => {
                            bar.inc(applied as u64);
                            bar.set_length(bar.position());
                        }
                    }
                }
                Ok(Event::CaughtUp { stream, .. }) => {
                    if let Some(b) = bars.get(&label(&stream)) {
                        b.finish_with_message("caught up");
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        for b in bars.values() {
            if !b.is_finished() {
                b.finish();
            }
        }
    });
    (task, stop_tx)
}

/// One row of the final table.
struct Row {
    name: &'static str,
    id: DeviceId,
    owned: usize,
    tombstones: usize,
    tags: usize,
    color: String,
    digest: u64,
}

async fn row(
    name: &'static str,
    node: &Node<Store>,
    owners: Vec<DeviceId>,
    tag: Uuid,
) -> anyhow::Result<Row> {
    let dump = node
        .inspect(move |s: &mut Store| Dump::read(s, owners))
        .await??;
    let color = dump
        .shared
        .iter()
        .find(|r| r.model == "tag" && r.uuid == tag)
        .and_then(|r| r.visible())
        .and_then(|f| f.get("color").cloned())
        .map_or_else(
            || "-".to_owned(),
            |v| format!("{}", serde_json::Value::from(v)),
        );
    Ok(Row {
        name,
        id: node.device(),
        owned: dump.live_owned(),
        tombstones: dump.owned.len() - dump.live_owned(),
        tags: dump.visible("tag").count(),
        color,
        digest: support::digest(node).await?,
    })
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let tmp = tempfile::tempdir()?;
    let dir = support::work_dir(args.dir.as_deref(), tmp.path())?;
    println!(
        "hybridsync demo: 3 devices, iroh QUIC on 127.0.0.1 (no relay, no discovery), SQLite in {}",
        dir.display()
    );

    let mut laptop = Device::new("laptop", 1, &dir).await?;
    let mut desktop = Device::new("desktop", 2, &dir).await?;
    let mut phone = Device::new("phone", 3, &dir).await?;
    let peers: Vec<(DeviceId, EndpointAddr)> = [&laptop, &desktop, &phone]
        .iter()
        .map(|d| (d.id, d.endpoint_addr()))
        .collect();
    let members: Vec<DeviceId> = peers.iter().map(|(id, _)| *id).collect();
    let names: BTreeMap<DeviceId, &'static str> = [&laptop, &desktop, &phone]
        .iter()
        .map(|d| (d.id, d.name))
        .collect();

    println!("\n[1/6] starting laptop, desktop and phone");
    let (l, _) = laptop.start(&peers, &members).await?;
    let (d, mut d_events) = desktop.start(&peers, &members).await?;
    let (p, _) = phone.start(&peers, &members).await?;
    wait_connected(&[&l, &d, &p], deadline).await?;
    println!("      all connected after {:?}", started.elapsed());

    println!("[2/6] each device writes its own records; the laptop creates a shared tag");
    let tag = Uuid::now_v7();
    l.insert_shared("tag", tag, fields(&[("name", "holiday"), ("color", "red")]))
        .await?;
    let album = Uuid::now_v7();
    d.insert_shared("album", album, fields(&[("title", "Summer 2026")]))
        .await?;
    let mut laptop_entries = Vec::new();
    for (node, name) in [(&l, "laptop"), (&d, "desktop"), (&p, "phone")] {
        node.put(
            "location",
            Uuid::now_v7(),
            entry(&format!("/home/{name}"), 0),
        )
        .await?;
        let ids = write_entries(node, &format!("{name}-photo"), 100).await?;
        if name == "laptop" {
            laptop_entries = ids;
        }
    }
    // One real-time change, timed end to end (write, commit, QUIC, decode, commit at receiver).
    let probe = Uuid::now_v7();
    let t = Instant::now();
    l.put("entry", probe, entry("probe.txt", 1)).await?;
    loop {
        match tokio::time::timeout_at(deadline.into(), d_events.recv()).await {
            Ok(Ok(Event::RecordChanged { uuid, .. })) if uuid == probe => break,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            _ => bail!("the probe never reached the desktop"),
        }
    }
    println!(
        "      real-time latency laptop -> desktop: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    println!("[3/6] conflict: desktop and phone set the tag's color at the same time; deletes");
    let (r1, r2) = tokio::join!(
        d.update_shared("tag", tag, fields(&[("color", "green")])),
        p.update_shared("tag", tag, fields(&[("color", "blue")])),
    );
    r1?;
    r2?;
    if let Some(first) = laptop_entries.first() {
        l.delete("entry", *first).await?;
    }
    p.delete_shared("album", album).await?;

    println!("[4/6] the phone goes offline; laptop and desktop keep writing");
    drop(p.shutdown().await?);
    let (r1, r2) = tokio::join!(
        write_entries(&l, "laptop-offline", args.offline_writes),
        write_entries(&d, "desktop-offline", args.offline_writes),
    );
    r1?;
    r2?;
    l.update_shared("tag", tag, fields(&[("name", "holidays 2026")]))
        .await?;
    if let Some(second) = laptop_entries.get(1) {
        l.delete("entry", *second).await?;
    }

    println!("[5/6] the phone restarts from its SQLite file and catches up");
    let (p, p_events) = phone.start(&peers, &members).await?;
    let (bars, stop_bars) = progress_task(p_events, names.clone(), args.quiet);
    let catch_up = Instant::now();
    let mut converged = false;
    let mut digests = Vec::new();
    while Instant::now() < deadline {
        digests = vec![
            support::digest(&l).await?,
            support::digest(&d).await?,
            support::digest(&p).await?,
        ];
        if digests.windows(2).all(|w| w[0] == w[1]) {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up_in = catch_up.elapsed();
    let _ = stop_bars.send(());
    let _ = bars.await;

    println!("[6/6] result");
    let owners = members.clone();
    let rows = vec![
        row("laptop", &l, owners.clone(), tag).await?,
        row("desktop", &d, owners.clone(), tag).await?,
        row("phone", &p, owners, tag).await?,
    ];
    println!();
    println!(
        "  {:<8} {:<10} {:>13} {:>11} {:>5} {:>11}  {:<18}",
        "device", "id", "owned (live)", "tombstones", "tags", "tag color", "content digest"
    );
    println!("  {}", "-".repeat(84));
    for r in &rows {
        println!(
            "  {:<8} {:<10} {:>13} {:>11} {:>5} {:>11}  {:#018x}",
            r.name,
            r.id.to_string(),
            r.owned,
            r.tombstones,
            r.tags,
            r.color,
            r.digest
        );
    }
    println!();
    for n in [l, d, p] {
        n.shutdown().await?;
    }
    if converged {
        println!(
            "  converged: all three content digests are equal ({:#018x}); the phone caught up in {:.0} ms; total {:.1} s",
            digests.first().copied().unwrap_or_default(),
            caught_up_in.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    } else {
        bail!(
            "the devices did not converge within {} s (digests {digests:x?})",
            args.timeout
        )
    }
}
