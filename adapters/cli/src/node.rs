//! `hybridsync node --data DIR`: a long-running device with a persistent key and database,
//! driven by line commands on stdin, so two terminals can sync.
//!
//! Pairing is mutual: each side runs `add-member <the other's ticket>` (the ticket carries the
//! device id, the endpoint id and the addresses). Then records written on one side show up in
//! `list` on the other.
//!
//! A device's id is derived from its key ([`hybridsync_iroh::device_id_for`]), so a ticket whose
//! device id does not match its key is refused, and `add-member` never re-binds a paired device
//! to another key (it only updates the addresses of the same key). To pair a device id with
//! another key anyway, `remove-member` it first.
//!
//! How a node reaches its peers ([`Args`]): by default through iroh's public relays, with
//! iroh's address lookup, so two devices on different networks (a laptop at home, a phone on
//! mobile data) find each other by endpoint id, also after either one restarts on another port
//! or network; `--relay URL` uses your own relays instead (and nothing else); `--offline` keeps
//! to the direct addresses in tickets (the demo, tests and benchmarks never leave 127.0.0.1).
//!
//! Besides the answers to its commands, a node prints `event: ...` lines: peers connecting and
//! leaving, members added and removed, and what it catches up from a peer (progress at most
//! once a second for a catch-up that takes longer, then its total, see [`CatchUps`]).
//!
//! One node per data directory: the node holds its database's lock (`sync.db.lock`, see
//! [`hybridsync_sqlite::SqliteStore::open`]) while it runs, so a second node on the same
//! directory refuses to start; the lock of a killed node is released by the OS.

use crate::support::{self, Store};
use anyhow::Context;
use hybridsync_core::SharedView;
use hybridsync_core::{
    Config, DeviceId, Event, ModelKind, ModelRegistry, OwnedRecord, Value, MEMBER_MODEL,
};
use hybridsync_iroh::{
    bind_endpoint, device_id_for, DeviceRegistry, IrohConfig, IrohTransport, NetworkConfig,
    RegistryError, Ticket,
};
use hybridsync_sqlite::OpenError;
use hybridsync_tokio::Node;
use iroh::tls::CaTlsConfig;
use iroh::{Endpoint, RelayMode, RelayUrl, SecretKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast::error::RecvError;

mod catch_ups;

use catch_ups::{CatchUps, Page};

/// Options of `hybridsync node`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of the device: its secret key, its paired peers and its SQLite database
    /// (created if missing). One node per directory: a second node on a directory in use
    /// refuses to start.
    #[arg(long)]
    pub data: PathBuf,
    /// Local UDP address for direct paths (default: `0.0.0.0:0`, any interface and a new
    /// port at each start; with `--offline`, `127.0.0.1:0`: this machine only, use
    /// `0.0.0.0:PORT` to accept other machines on the LAN).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Direct addresses only: no relay, no address lookup, no server contacted at all. A peer
    /// is dialed only at the addresses of its ticket, so a peer that restarts on another port
    /// (or network) must be paired again.
    #[arg(long, conflicts_with_all = ["relay", "relay_ca"])]
    pub offline: bool,
    /// A relay server to use instead of iroh's public relays (repeat for several). The node
    /// contacts these relays and no other server (no address lookup); its ticket names the
    /// one it is connected to. Without `--relay` or `--offline`: iroh's public relays and
    /// its address lookup (number 0's servers).
    #[arg(long, value_name = "URL")]
    pub relay: Vec<RelayUrl>,
    /// PEM file of certificates the relays' TLS may also chain to (a self-hosted relay with a
    /// self-signed certificate or a private CA), besides the usual public roots.
    #[arg(long, value_name = "FILE")]
    pub relay_ca: Option<PathBuf>,
    /// How often a running catch-up prints its progress, in milliseconds (default 1000): a
    /// catch-up shorter than this prints only its total. Hidden: 0 (every page) is for tests.
    #[arg(long, value_name = "MS", default_value_t = 1000, hide = true)]
    pub progress_every: u64,
}

/// How long a node with relays waits for one before it prints its ticket.
const RELAY_WAIT: Duration = Duration::from_secs(10);

impl Args {
    /// The network the flags describe.
    fn network(&self) -> anyhow::Result<NetworkConfig> {
        if self.offline {
            let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            return Ok(NetworkConfig::offline(self.bind.unwrap_or(local)));
        }
        let bind = self
            .bind
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let mut network = if self.relay.is_empty() {
            NetworkConfig::n0(bind)
        } else {
            NetworkConfig::relays(Some(bind), self.relay.iter().cloned().collect())
        };
        if let Some(path) = &self.relay_ca {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{} holds no PEM certificate", path.display());
            }
            network.relay_tls = Some(CaTlsConfig::embedded().with_extra_roots(certs));
        }
        Ok(network)
    }
}

const HELP: &str = "\
commands:
  put KEY VALUE...     write one of this device's records (model `entry`)
  delete KEY           delete one of this device's records
  tag NAME [COLOR]     create a shared tag (any device may edit it)
  color NAME COLOR     set a shared tag's color
  untag NAME           delete a shared tag
  get KEY              the entry KEY of every member (`deleted` if it was deleted)
  list [MODEL]         live records of MODEL (default: the entries of every member and
                       the shared tags); MODEL is any model `count` shows
  count [MODEL]        how many live records each model (or MODEL) holds
  peers                connected peers and members
  add-member TICKET    pair with a device (run it on both sides); refuses a ticket whose
                       device id does not match its key, and never re-binds a paired
                       device to another key (remove-member it first)
  remove-member DEVICE remove a member (its full id, as `peers` prints it); its later
                       messages are refused and it is no longer dialed
  status               this device, its peers and members, then per device: `watermark`
                       (device-owned records held), `shared` (shared changes held) and
                       `pruned` (shared changes dropped from the log), and a content digest
  ticket               print this device's ticket (its endpoint id, direct addresses
                       and home relay: a peer reaches it through the relay after its
                       addresses change, without a new ticket)
  quit                 stop";

/// Runs a node until `quit` (or end of input followed by Ctrl-C).
pub fn run(args: Args) -> anyhow::Result<()> {
    support::init_tracing("warn");
    support::runtime()?.block_on(node(args))
}

fn load_key(dir: &Path) -> anyhow::Result<SecretKey> {
    let path = dir.join("secret.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let arr: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
            Ok(SecretKey::from_bytes(&arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&key.to_bytes())?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn load_peers(dir: &Path) -> anyhow::Result<Vec<Ticket>> {
    let path = dir.join("peers.txt");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            l.parse::<Ticket>().with_context(|| {
                format!(
                    "bad ticket in {} line {} (remove the line, then add-member the device again)",
                    path.display(),
                    n + 1
                )
            })
        })
        .collect()
}

fn save_peer(dir: &Path, ticket: &Ticket) -> anyhow::Result<()> {
    let mut peers: Vec<Ticket> = load_peers(dir)?
        .into_iter()
        .filter(|t| t.device != ticket.device)
        .collect();
    peers.push(ticket.clone());
    write_peers(dir, peers.into_iter())
}

/// Drops `device` from the saved peers, so a restarted node no longer dials it.
fn forget_peer(dir: &Path, device: DeviceId) -> anyhow::Result<()> {
    let peers: Vec<Ticket> = load_peers(dir)?;
    write_peers(dir, peers.into_iter().filter(|t| t.device != device))
}

/// Replaces the saved peers (write to a temporary file, then rename: never half a file).
fn write_peers(dir: &Path, peers: impl Iterator<Item = Ticket>) -> anyhow::Result<()> {
    let text: String = peers.map(|t| format!("{t}\n")).collect();
    let tmp = dir.join("peers.txt.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("peers.txt"))?;
    Ok(())
}

/// What `put` stores: the key and the value, so `list` can show them.
fn payload(key: &str, value: &str) -> Vec<u8> {
    let fields: BTreeMap<String, Value> = [
        ("key".to_owned(), Value::from(key)),
        ("value".to_owned(), Value::from(value)),
    ]
    .into_iter()
    .collect();
    Value::Map(fields).to_bytes()
}

/// Records a `list` asks for per read (each page is one read on the storage thread).
const PAGE: u32 = 256;

/// The models `list` and `count` know: every registered model but the member model.
fn models() -> Vec<(String, ModelKind)> {
    ModelRegistry::spacedrive()
        .iter()
        .filter(|(m, _)| *m != MEMBER_MODEL)
        .map(|(m, k)| (m.to_owned(), k))
        .collect()
}

/// One line of `list` or `get` for a device-owned record: `entry OWNER KEY = VALUE` for the
/// entries `put` writes, else `MODEL OWNER UUID N bytes`.
fn owned_line(r: &OwnedRecord) -> String {
    let Some(data) = r.data.as_deref() else {
        return format!("{} {} {} deleted", r.model, r.owner, r.uuid);
    };
    match Value::from_bytes(data) {
        Ok(Value::Map(m)) if r.model == "entry" => {
            let k = m.get("key").map(show).unwrap_or_default();
            let v = m.get("value").map(show).unwrap_or_default();
            format!("entry {} {k} = {v}", r.owner)
        }
        _ => format!("{} {} {} {} bytes", r.model, r.owner, r.uuid, data.len()),
    }
}

/// One line of `list` for a shared record: `tag NAME color=COLOR` for tags, else
/// `MODEL UUID FIELDS` (the fields as JSON).
fn shared_line(v: &SharedView) -> String {
    if v.model == "tag" {
        let name = v.fields.get("name").map(show).unwrap_or_default();
        let color = v
            .fields
            .get("color")
            .map(show)
            .unwrap_or_else(|| "-".into());
        return format!("tag {name} color={color}");
    }
    let fields = serde_json::Value::from(Value::Map(v.fields.clone()));
    format!("{} {} {fields}", v.model, v.uuid)
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::Value::from(other.clone()).to_string(),
    }
}

struct Session {
    node: Node<Store>,
    registry: DeviceRegistry,
    /// Its addresses (the home relay's URL among them) change while it runs: `ticket` reads
    /// them each time.
    endpoint: Endpoint,
    dir: PathBuf,
}

impl Session {
    async fn members(&self) -> anyhow::Result<Vec<DeviceId>> {
        Ok(self.node.status().await?.members.into_iter().collect())
    }

    /// This device's own entry `key` (tombstone included), if it ever wrote it.
    async fn own_entry(&self, key: &str) -> anyhow::Result<Option<OwnedRecord>> {
        let me = self.node.device();
        Ok(self
            .node
            .get_owned(me, "entry", support::uuid_for(key))
            .await?)
    }

    /// Whether the tag `name` exists (not deleted).
    async fn tag_exists(&self, name: &str) -> anyhow::Result<bool> {
        let id = support::uuid_for(&format!("tag:{name}"));
        Ok(self.node.get_shared("tag", id).await?.is_some())
    }

    /// Prints every live record of `model`, a page at a time.
    async fn list(&self, model: &str, kind: ModelKind) -> anyhow::Result<()> {
        match kind {
            ModelKind::DeviceOwned => {
                let mut after = None;
                loop {
                    let page = self.node.list_owned(model, after, PAGE).await?;
                    for r in &page.items {
                        println!("{}", owned_line(r));
                    }
                    after = page.next;
                    if after.is_none() {
                        return Ok(());
                    }
                }
            }
            ModelKind::Shared => {
                let mut after = None;
                loop {
                    let page = self.node.list_shared(model, after, PAGE).await?;
                    for v in &page.items {
                        println!("{}", shared_line(v));
                    }
                    after = page.next;
                    if after.is_none() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The models `MODEL` names (all of them without one).
    fn chosen(model: Option<&str>) -> anyhow::Result<Vec<(String, ModelKind)>> {
        let all = models();
        let Some(m) = model else { return Ok(all) };
        match all.into_iter().find(|(name, _)| name == m) {
            Some(found) => Ok(vec![found]),
            None => {
                let names: Vec<String> = models().into_iter().map(|(n, _)| n).collect();
                anyhow::bail!("unknown model {m:?} (one of: {})", names.join(", "))
            }
        }
    }

    /// Runs one command line; returns `false` to stop.
    async fn command(&self, line: &str) -> anyhow::Result<bool> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((cmd, rest)) = words.split_first() else {
            return Ok(true);
        };
        // Every command checks its arguments first: a wrong count answers its usage.
        let args = |ok: bool| if ok { Ok(()) } else { Err(usage(cmd)) };
        match *cmd {
            "put" => {
                args(rest.len() >= 2)?;
                let key = rest[0];
                let value = rest[1..].join(" ");
                self.node
                    .put("entry", support::uuid_for(key), payload(key, &value))
                    .await?;
            }
            "delete" => {
                args(rest.len() == 1)?;
                let key = rest[0];
                match self.own_entry(key).await? {
                    None => anyhow::bail!(
                        "no entry {key:?} on this device (a device deletes only the entries it \
                         wrote; `list` shows them)"
                    ),
                    Some(r) if r.is_tombstone() => {
                        anyhow::bail!("entry {key:?} is already deleted")
                    }
                    Some(_) => {}
                }
                self.node.delete("entry", support::uuid_for(key)).await?;
            }
            "tag" => {
                args(matches!(rest.len(), 1 | 2))?;
                let name = rest[0];
                let mut f = BTreeMap::new();
                f.insert("name".to_owned(), Value::from(name));
                if let Some(c) = rest.get(1) {
                    f.insert("color".to_owned(), Value::from(*c));
                }
                let id = support::uuid_for(&format!("tag:{name}"));
                self.node.insert_shared("tag", id, f).await?;
            }
            "color" => {
                args(rest.len() == 2)?;
                let (name, color) = (rest[0], rest[1]);
                if !self.tag_exists(name).await? {
                    anyhow::bail!("no tag {name:?} (create it with `tag {name} {color}`)");
                }
                let f = [("color".to_owned(), Value::from(color))]
                    .into_iter()
                    .collect();
                let id = support::uuid_for(&format!("tag:{name}"));
                self.node.update_shared("tag", id, f).await?;
            }
            "untag" => {
                args(rest.len() == 1)?;
                let name = rest[0];
                if !self.tag_exists(name).await? {
                    anyhow::bail!("no tag {name:?} (`list` shows the tags)");
                }
                let id = support::uuid_for(&format!("tag:{name}"));
                self.node.delete_shared("tag", id).await?;
            }
            "list" => {
                args(rest.len() <= 1)?;
                match rest.first() {
                    Some(m) => {
                        for (model, kind) in Self::chosen(Some(m))? {
                            self.list(&model, kind).await?;
                        }
                    }
                    None => {
                        self.list("entry", ModelKind::DeviceOwned).await?;
                        self.list("tag", ModelKind::Shared).await?;
                    }
                }
            }
            "get" => {
                args(rest.len() == 1)?;
                let key = rest[0];
                let id = support::uuid_for(key);
                let mut found = false;
                for owner in self.members().await? {
                    if let Some(r) = self.node.get_owned(owner, "entry", id).await? {
                        found = true;
                        match r.data {
                            Some(_) => println!("{}", owned_line(&r)),
                            None => println!("entry {owner} {key} deleted"),
                        }
                    }
                }
                if !found {
                    anyhow::bail!("no entry {key:?} (`list` shows the entries)");
                }
            }
            "count" => {
                args(rest.len() <= 1)?;
                for (model, kind) in Self::chosen(rest.first().copied())? {
                    let n = match kind {
                        ModelKind::DeviceOwned => self.node.count_owned(model.as_str()).await?,
                        ModelKind::Shared => self.node.count_shared(model.as_str()).await?,
                    };
                    println!("count {model} {n}");
                }
            }
            "peers" => {
                args(rest.is_empty())?;
                let s = self.node.status().await?;
                for m in &s.members {
                    let state = if *m == s.device {
                        "this device"
                    } else if s.peers.contains(m) {
                        "connected"
                    } else {
                        "offline"
                    };
                    println!("member {m:#} {state}");
                }
            }
            "add-member" => {
                args(rest.len() == 1)?;
                let t: Ticket = rest[0].parse()?;
                if t.device == self.node.device() {
                    anyhow::bail!(
                        "this is this device's own ticket: run `add-member` with the other \
                         device's ticket (its `ticket` command prints it)"
                    );
                }
                // Refused before anything is saved: a paired device keeps its key.
                self.registry
                    .insert(t.device, t.addr.clone())
                    .map_err(refusal)?;
                save_peer(&self.dir, &t)?;
                self.node.add_member(t.device).await?;
            }
            "remove-member" => {
                args(rest.len() == 1)?;
                let arg = rest[0];
                let device = DeviceId(
                    arg.parse()
                        .with_context(|| format!("{arg:?} is not a device id"))?,
                );
                if device == self.node.device() {
                    anyhow::bail!(
                        "{device:#} is this device itself: removed, its writes would reach no \
                         one; run `remove-member` on another member to remove this device"
                    );
                }
                let member = self.members().await?.contains(&device);
                let paired = self.registry.addr_of(device).is_some();
                if !member && !paired {
                    anyhow::bail!("{device:#} is not a member (`peers` lists the members)");
                }
                if member {
                    self.node.remove_member(device).await?;
                }
                // A paired device that is no longer a member is still forgotten.
                forget_peer(&self.dir, device)?;
                self.registry.remove(device);
            }
            "status" => {
                args(rest.is_empty())?;
                let s = self.node.status().await?;
                println!("device {:#}", s.device);
                println!("peers {}", s.peers.len());
                println!("members {}", s.members.len());
                for (owner, w) in &s.watermarks {
                    println!("watermark {owner:#} {w}");
                }
                // One line per origin, as `watermark` lines are per owner: readable, greppable.
                for (origin, seq) in s.version_vector.iter() {
                    println!("shared {origin:#} {seq}");
                }
                for (origin, seq) in s.horizon.iter() {
                    println!("pruned {origin:#} {seq}");
                }
                println!("digest {:#018x}", support::digest(&self.node).await?);
            }
            "ticket" => {
                args(rest.is_empty())?;
                println!("ticket {}", Ticket::new(self.endpoint.addr()));
            }
            "help" => println!("{HELP}"),
            "quit" | "exit" => {
                args(rest.is_empty())?;
                return Ok(false);
            }
            _ => anyhow::bail!("unknown command {cmd:?} (try `help`)"),
        }
        Ok(true)
    }
}

/// What `cmd` expects (as [`HELP`] shows it).
fn usage(cmd: &str) -> anyhow::Error {
    let synopsis = match cmd {
        "put" => "put KEY VALUE...",
        "delete" => "delete KEY",
        "get" => "get KEY",
        "list" => "list [MODEL]",
        "count" => "count [MODEL]",
        "tag" => "tag NAME [COLOR]",
        "color" => "color NAME COLOR",
        "untag" => "untag NAME",
        "add-member" => "add-member TICKET",
        "remove-member" => "remove-member DEVICE",
        other => other,
    };
    anyhow::anyhow!("wrong arguments; usage: {synopsis} (`help` lists the commands)")
}

/// Explains a refused pairing.
fn refusal(e: RegistryError) -> anyhow::Error {
    match e {
        RegistryError::DeviceBound { device, .. } => anyhow::anyhow!(
            "{e}: is the ticket mistyped? If device {device:#} really has a new key, run \
             `remove-member {device:#}` first, then `add-member` again"
        ),
        e => anyhow::anyhow!(e),
    }
}

/// Opens the device's database first: its lock keeps a second node off the directory before
/// that node reads or creates anything else there.
fn open_store(dir: &Path) -> anyhow::Result<Store> {
    let db = dir.join("sync.db");
    Store::open(&db).map_err(|e| match e {
        OpenError::Locked { .. } => anyhow::anyhow!(
            "{e}: is another `hybridsync node --data {}` running? Only one node may use a \
             data directory at a time",
            dir.display()
        ),
        e => anyhow::Error::new(e).context(format!("opening {}", db.display())),
    })
}

async fn node(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let store = open_store(&args.data)?;
    let key = load_key(&args.data)?;
    let peers = load_peers(&args.data)?;
    let registry = DeviceRegistry::new();
    for t in &peers {
        registry.insert(t.device, t.addr.clone()).with_context(|| {
            format!(
                "conflicting tickets in {} (remove the wrong line)",
                args.data.join("peers.txt").display()
            )
        })?;
    }
    let network = args.network()?;
    let endpoint = bind_endpoint(key.clone(), &network).await?;
    let relays = network.relays != RelayMode::Disabled;
    let result = serve(args, &key, peers, registry, store, endpoint.clone(), relays).await;
    // On every way out, the error paths included: an endpoint dropped open makes iroh log
    // `ERROR ... Endpoint dropped without calling Endpoint::close` just before our own error
    // (after a clean stop the transport already closed it, and this returns at once).
    endpoint.close().await;
    result
}

/// Runs the node on its bound `endpoint` until `quit` (or end of input and Ctrl-C).
async fn serve(
    args: Args,
    key: &SecretKey,
    peers: Vec<Ticket>,
    registry: DeviceRegistry,
    store: Store,
    endpoint: Endpoint,
    relays: bool,
) -> anyhow::Result<()> {
    let me = device_id_for(&key.public());
    if relays {
        // The ticket should name the home relay: wait (a little) until there is one.
        if tokio::time::timeout(RELAY_WAIT, endpoint.online())
            .await
            .is_err()
        {
            println!(
                "warning: no relay reached within {}s: the ticket holds direct addresses \
                 only for now (run `ticket` again later)",
                RELAY_WAIT.as_secs()
            );
        }
    }
    let ticket = Ticket::new(endpoint.addr());
    let transport = IrohTransport::new(endpoint.clone(), registry.clone(), IrohConfig::default());
    transport.spawn_router();
    let mut members = vec![me];
    members.extend(peers.iter().map(|t| t.device));
    let builder =
        Node::builder(Config::new(me, ModelRegistry::spacedrive())).bootstrap_members(members);
    let events = builder.subscribe();
    let node = builder.start(store, transport).await?;
    println!("device {me:#}");
    for relay in ticket.addr.relay_urls() {
        println!("relay {relay}");
    }
    println!("ticket {ticket}");
    println!("ready (type `help`)");

    let every = Duration::from_millis(args.progress_every);
    let printer = tokio::spawn(print_events(events, CatchUps::new(every)));

    let session = Session {
        node,
        registry,
        endpoint,
        dir: args.data.clone(),
    };
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        let read = tokio::select! {
            n = stdin.read_until(b'\n', &mut bytes) => n?,
            _ = tokio::signal::ctrl_c() => break,
        };
        if read == 0 {
            // End of input: keep syncing until Ctrl-C (a node can run without a terminal).
            let _ = tokio::signal::ctrl_c().await;
            break;
        }
        // A line that is not UTF-8 is an error for that line only.
        let Ok(line) = std::str::from_utf8(&bytes) else {
            println!("error: the line is not valid UTF-8 (ignored)");
            continue;
        };
        match session.command(line.trim()).await {
            Ok(true) => println!("ok"),
            Ok(false) => break,
            Err(e) => println!("error: {e:#}"),
        }
    }
    session.node.shutdown().await?;
    printer.abort();
    println!("stopped");
    Ok(())
}

/// Prints the events a user of the node wants to see, as `event: ...` lines.
async fn print_events(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    mut catch_ups: CatchUps,
) {
    loop {
        let e = match events.recv().await {
            Ok(e) => e,
            // A burst (a large catch-up, many real-time changes) outran this loop: the events
            // missed are gone, the following ones are still worth printing.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        match e {
            Event::PeerConnected(p) => println!("event: connected {p:#}"),
            Event::PeerDisconnected(p) => {
                println!("event: disconnected {p:#}");
                for line in catch_ups.interrupted(p) {
                    println!("event: {line}");
                }
            }
            Event::MembershipChanged { device, member } => {
                println!(
                    "event: member {device:#} {}",
                    if member { "added" } else { "removed" }
                )
            }
            Event::PeerMisbehaved { peer, reason } => {
                println!("event: refused {peer:#}: {reason}")
            }
            Event::CatchUpProgress {
                peer,
                stream,
                applied,
                position,
                target,
            } => {
                let page = Page {
                    applied,
                    position,
                    target,
                };
                if let Some(line) = catch_ups.progress(Instant::now(), peer, stream, page) {
                    println!("event: {line}");
                }
            }
            Event::CaughtUp { peer, stream } => {
                if let Some(line) = catch_ups.caught_up(Instant::now(), peer, stream) {
                    println!("event: {line}");
                }
            }
            _ => {}
        }
    }
}
