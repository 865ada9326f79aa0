//! Initial sync and reconnect: two device processes over iroh on 127.0.0.1 with SQLite files,
//! against a raw SQLite-to-SQLite copy of the same rows measured in the same run.

use super::child::{self, Reply, Synced};
use super::counting::{total, Sent, Traffic};
use super::link::{Carried, Link, LinkSpec};
use super::{median, mib, progress, Part, Plan};
use crate::support::Store;
use anyhow::{bail, Context};
use hybridsync_core::{DeviceId, Hlc, OwnedRecord, StorageCommand};
use hybridsync_sim::bench::{entry_payload, v7_like};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OpenFlags};
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Rows per transaction of the raw copy (the engine's catch-up page size, 2048).
pub const RAW_BATCH: usize = 2048;
/// SQLite's page cache per connection (`PRAGMA cache_size = -65536` in `SqliteStore`), MiB.
pub const PAGE_CACHE_MIB: f64 = 64.0;
/// Key seed of the source device.
pub(crate) const SOURCE_KEY: u8 = 11;
/// Key seed of the sink device.
const SINK_KEY: u8 = 12;
/// First stamp of the seeded records (2025-06-15).
const T0: u64 = 1_750_000_000_000;

/// Figures of the initial sync (medians over the rounds).
#[derive(Clone, Debug, Serialize)]
pub struct SyncFigures {
    /// Records synced.
    pub records: u64,
    /// Rounds measured.
    pub rounds: usize,
    /// Node start (dial) to caught up, seconds.
    pub total_s: f64,
    /// Node start (dial) to `PeerConnected`, ms.
    pub connect_ms: f64,
    /// Catch-up pages.
    pub pages: u64,
    /// `records / total_s`.
    pub records_per_s: f64,
    /// The raw copy, seconds.
    pub raw_s: f64,
    /// `total_s / raw_s`.
    pub ratio: f64,
    /// Every round of the sync, seconds.
    pub sync_rounds_s: Vec<f64>,
    /// Every round of the raw copy, seconds.
    pub raw_rounds_s: Vec<f64>,
    /// CPU time of both device processes (whole process lives), seconds.
    pub sync_cpu_s: f64,
    /// CPU time of the raw copy, seconds.
    pub raw_cpu_s: f64,
    /// `sync_cpu_s / raw_cpu_s`.
    pub cpu_ratio: f64,
    /// Peak RSS of the source process, MiB.
    pub source_hwm_mib: f64,
    /// Peak RSS of the sink process, MiB.
    pub sink_hwm_mib: f64,
    /// Source peak RSS minus SQLite's page cache, MiB.
    pub source_beyond_cache_mib: f64,
    /// Sink peak RSS minus SQLite's page cache, MiB.
    pub sink_beyond_cache_mib: f64,
    /// RSS of the sink once its node started, before it connected, MiB.
    pub idle_rss_mib: f64,
    /// Whether the sink's content digest equals the source's after the last round.
    pub digests_equal: bool,
}

/// Figures of one reconnect.
#[derive(Clone, Debug, Serialize)]
pub struct ReconnectFigures {
    /// Records of history the pair shares.
    pub history: u64,
    /// What the source sent.
    pub source_to_sink: Traffic,
    /// What the sink sent.
    pub sink_to_source: Traffic,
    /// Messages both ways.
    pub messages: u64,
    /// Frame bytes both ways.
    pub bytes: u64,
    /// `1 + requests sent`: the exchange on connect needs no reply; each catch-up request
    /// would add a round trip.
    pub round_trips: u64,
    /// `kind x count` per side, e.g. `source Heartbeat x1`.
    pub kinds: Vec<String>,
    /// Dial to `PeerConnected` after the restart, ms.
    pub connect_ms: f64,
    /// Whether the sink still had everything afterwards with nothing to fetch.
    pub still_synced: bool,
}

/// Runs the sync and reconnect parts of `plan` with database files in `dir`.
pub fn run(
    plan: &Plan,
    dir: &Path,
) -> anyhow::Result<(Option<SyncFigures>, Vec<ReconnectFigures>)> {
    let (_, source_id) = child::identity(SOURCE_KEY);
    let mut reconnects = Vec::new();
    if plan.runs(Part::Reconnect) {
        for &history in plan
            .reconnect_histories
            .iter()
            .filter(|h| !plan.runs(Part::Sync) || **h != plan.sync_records)
        {
            progress(&format!("reconnect: seeding and syncing {history} records"));
            let src = dir.join(format!("source-{history}.db"));
            seed(&src, source_id, history)?;
            let sink = dir.join(format!("sink-{history}.db"));
            let (_, r) = sync_round(&src, &sink, history, true, Over::default())?;
            reconnects.push(r.context("no reconnect figures")?);
        }
    }
    if !plan.runs(Part::Sync) {
        return Ok((None, reconnects));
    }
    let n = plan.sync_records;
    let src = dir.join(format!("source-{n}.db"));
    let sink = dir.join(format!("sink-{n}.db"));
    let raw = dir.join(format!("raw-{n}.db"));
    progress(&format!("sync: seeding the source with {n} records"));
    seed(&src, source_id, n)?;
    let mut rounds = Vec::new();
    let mut raw_s = Vec::new();
    let mut raw_cpu = Vec::new();
    let mut reconnect = None;
    for round in 0..plan.rounds {
        let last = round + 1 == plan.rounds;
        let with_reconnect =
            last && plan.runs(Part::Reconnect) && plan.reconnect_histories.contains(&n);
        // Alternate the order so neither side always runs on a warmer machine.
        let mut raw_round = || -> anyhow::Result<()> {
            let (wall, cpu) = raw_copy(&src, &raw)?;
            raw_s.push(wall.as_secs_f64());
            raw_cpu.push(cpu);
            Ok(())
        };
        if round % 2 == 1 {
            raw_round()?;
        }
        progress(&format!("sync: round {} of {}", round + 1, plan.rounds));
        let (figures, r) = sync_round(&src, &sink, n, with_reconnect, Over::default())?;
        rounds.push(figures);
        if let Some(r) = r {
            reconnect = Some(r);
        }
        if round % 2 == 0 {
            raw_round()?;
        }
        if let Some(r) = rounds.last() {
            progress(&format!(
                "sync: {:.2} s (CPU {:.2} s); raw copy {:.2} s (CPU {:.2} s)",
                r.synced.total_ms / 1e3,
                r.source_cpu_s + r.synced.memory.cpu_s,
                raw_s.last().copied().unwrap_or(0.0),
                raw_cpu.last().copied().unwrap_or(0.0)
            ));
        }
    }
    reconnects.extend(reconnect);
    progress("sync: comparing content digests");
    let digests_equal = digest(&src)? == digest(&sink)?;
    remove_db(&raw);
    let sync_s: Vec<f64> = rounds.iter().map(|r| r.synced.total_ms / 1e3).collect();
    let total_s = median(&sync_s);
    let raw_med = median(&raw_s);
    let med = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let source_hwm_mib = med(&|r| mib(r.source_hwm_kib));
    let sink_hwm_mib = med(&|r| mib(r.synced.memory.hwm_kib));
    let sync_cpu_s = med(&|r| r.source_cpu_s + r.synced.memory.cpu_s);
    let raw_cpu_s = median(&raw_cpu);
    Ok((
        Some(SyncFigures {
            records: n,
            rounds: rounds.len(),
            total_s,
            connect_ms: med(&|r| r.synced.connect_ms),
            pages: rounds.last().map_or(0, |r| r.synced.pages),
            records_per_s: n as f64 / total_s.max(1e-9),
            raw_s: raw_med,
            ratio: total_s / raw_med.max(1e-9),
            sync_rounds_s: sync_s,
            raw_rounds_s: raw_s,
            sync_cpu_s,
            raw_cpu_s,
            cpu_ratio: sync_cpu_s / raw_cpu_s.max(1e-9),
            source_hwm_mib,
            sink_hwm_mib,
            source_beyond_cache_mib: (source_hwm_mib - PAGE_CACHE_MIB).max(0.0),
            sink_beyond_cache_mib: (sink_hwm_mib - PAGE_CACHE_MIB).max(0.0),
            idle_rss_mib: med(&|r| mib(r.synced.idle_rss_kib)),
            digests_equal,
        }),
        reconnects,
    ))
}

/// One sync round.
pub struct Round {
    /// What the sink reported.
    pub synced: Synced,
    source_hwm_kib: u64,
    /// CPU time of the source process.
    pub source_cpu_s: f64,
    /// What the link carried source -> sink and sink -> source, when there was one.
    pub carried: Option<(Carried, Carried)>,
}

/// Where a round runs: across a [`Link`] of this shape, with this catch-up window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Over {
    /// The link between the sink and the source (`None`: straight over loopback).
    pub link: Option<LinkSpec>,
    /// The sink's catch-up window (`None`: the engine's default).
    pub window: Option<u32>,
}

/// Starts a source on `src` and a sink on a fresh `sink`, waits until the sink caught up,
/// optionally restarts the sink and counts the reconnect, then stops both.
pub fn sync_round(
    src: &Path,
    sink: &Path,
    records: u64,
    reconnect: bool,
    over: Over,
) -> anyhow::Result<(Round, Option<ReconnectFigures>)> {
    remove_db(sink);
    let mut source_args: Vec<String> = if over.link.is_some() {
        vec!["--child-v6".into()]
    } else {
        Vec::new()
    };
    source_args.extend([
        "--child".into(),
        "source".into(),
        "--child-db".into(),
        src.display().to_string(),
        "--child-key".into(),
        SOURCE_KEY.to_string(),
        "--child-peer-key".into(),
        SINK_KEY.to_string(),
    ]);
    let mut source = Proc::spawn("source", &source_args)?;
    let addr = match source.recv(Duration::from_secs(60))? {
        Reply::Ready { addr } => addr,
        other => bail!("source: unexpected {other:?}"),
    };
    // The sink (A) reaches the source (B) only across the link; the source never dials.
    let link = over
        .link
        .map(|spec| Link::start(spec, None, addr))
        .transpose()?;
    let addr = link.as_ref().map_or(addr, |l| l.to_b);
    let timeout = 600u64;
    let mut sink_args: Vec<String> = over
        .window
        .map(|w| vec!["--child-window".into(), w.to_string()])
        .unwrap_or_default();
    sink_args.extend([
        "--child".into(),
        "sink".into(),
        "--child-db".into(),
        sink.display().to_string(),
        "--child-key".into(),
        SINK_KEY.to_string(),
        "--child-peer-key".into(),
        SOURCE_KEY.to_string(),
        "--child-peer-addr".into(),
        addr.to_string(),
        "--child-head".into(),
        records.to_string(),
        "--child-timeout".into(),
        timeout.to_string(),
    ]);
    let mut sinkp = Proc::spawn("sink", &sink_args)?;
    let synced = match sinkp.recv(Duration::from_secs(timeout + 10))? {
        Reply::Synced(s) => s,
        other => bail!("sink: unexpected {other:?}"),
    };
    let (source_hwm_kib, source_cpu_s) = match source.ask("stats")? {
        Reply::Stats { memory, .. } => (memory.hwm_kib, memory.cpu_s),
        other => bail!("source: unexpected {other:?}"),
    };
    let mut figures = None;
    if reconnect {
        match source.ask("mark")? {
            Reply::Ok => {}
            other => bail!("source: unexpected {other:?}"),
        }
        let r = match sinkp.ask("reconnect")? {
            Reply::Reconnected(r) => r,
            other => bail!("sink: unexpected {other:?}"),
        };
        let source_sent = match source.ask("stats")? {
            Reply::Stats { sent, .. } => sent,
            other => bail!("source: unexpected {other:?}"),
        };
        figures = Some(reconnect_figures(
            records,
            &source_sent,
            &r.sent,
            r.connect_ms,
            r.still_synced,
        ));
    }
    sinkp.quit()?;
    source.quit()?;
    let carried = link.map(|l| (l.b_to_a(), l.a_to_b()));
    Ok((
        Round {
            synced,
            source_hwm_kib,
            source_cpu_s,
            carried,
        },
        figures,
    ))
}

fn reconnect_figures(
    history: u64,
    source: &Sent,
    sink: &Sent,
    connect_ms: f64,
    still_synced: bool,
) -> ReconnectFigures {
    let (a, b) = (total(source), total(sink));
    let requests: u64 = source
        .iter()
        .chain(sink.iter())
        .filter(|(k, _)| k.ends_with("Request"))
        .map(|(_, t)| t.messages)
        .sum();
    let mut kinds = Vec::new();
    for (side, sent) in [("source", source), ("sink", sink)] {
        for (k, t) in sent {
            kinds.push(format!("{side} {k} x{} ({} B)", t.messages, t.bytes));
        }
    }
    ReconnectFigures {
        history,
        source_to_sink: a,
        sink_to_source: b,
        messages: a.messages + b.messages,
        bytes: a.bytes + b.bytes,
        round_trips: 1 + requests,
        kinds,
        connect_ms,
        still_synced,
    }
}

/// Writes `n` device-owned `entry` records of `owner` (UUIDv7-like ids, seq 1..=n) and the
/// owner's head into a fresh database at `path`, in batches of 10,000, through
/// [`Store::execute`] (setup: not measured).
pub fn seed(path: &Path, owner: DeviceId, n: u64) -> anyhow::Result<()> {
    remove_db(path);
    let mut store = Store::open(path)?;
    let mut next = 0u64;
    while next < n {
        let end = (next + 10_000).min(n);
        let records: Vec<OwnedRecord> = (next..end)
            .map(|i| OwnedRecord {
                owner,
                seq: i + 1,
                hlc: Hlc::new(T0 + i / 16, (i % 16) as u32, owner),
                model: "entry".to_owned(),
                uuid: v7_like(i),
                data: Some(entry_payload(i).0),
            })
            .collect();
        store.execute(vec![
            StorageCommand::PutOwned(records),
            StorageCommand::SetWatermark { owner, seq: end },
            StorageCommand::SetHlc(Hlc::new(T0 + end / 16, 0, owner)),
        ])?;
        next = end;
    }
    Ok(())
}

/// The tables the raw copy copies, in order: the device-owned records and, if the schema has
/// them, the small tables their ids refer to.
const RAW_TABLES: &[&str] = &["devices", "models", "owned"];

/// The raw baseline: copies the device-owned record rows from `src` into a fresh `dst` with
/// the same schema, [`RAW_BATCH`] plain `INSERT`s per transaction, with the pragmas
/// `SqliteStore` uses (WAL, `synchronous = NORMAL`, 64 MiB cache). One thread, two
/// connections. Creating the empty destination is not timed. Returns the wall time and the
/// CPU time of the copy.
///
/// The rows are read with a plain table scan in primary-key order, the cheapest read there is,
/// and copied column by column as SQLite values (whatever the schema of the `owned` table and
/// of the id tables it refers to: the copy follows the store's schema as it evolves).
pub fn raw_copy(src: &Path, dst: &Path) -> anyhow::Result<(Duration, f64)> {
    remove_db(dst);
    drop(Store::open(dst)?);
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    from.pragma_update(None, "cache_size", -65_536)?;
    let mut to = Connection::open(dst)?;
    to.pragma_update(None, "journal_mode", "WAL")?;
    to.pragma_update(None, "synchronous", "NORMAL")?;
    to.pragma_update(None, "cache_size", -65_536)?;
    to.pragma_update(None, "temp_store", "MEMORY")?;
    let mut tables = Vec::new();
    for table in RAW_TABLES {
        let columns = stored_columns(&from, table)?;
        if !columns.is_empty() {
            tables.push((*table, columns));
        }
    }
    let started = Instant::now();
    let cpu = super::cpu_seconds(true);
    let mut copied = 0u64;
    for (table, columns) in &tables {
        let list = columns.join(", ");
        let mut select = from.prepare(&format!("SELECT {list} FROM {table}"))?;
        let mut rows = select.query([])?;
        let insert = format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            vec!["?"; columns.len()].join(", ")
        );
        let mut batch: Vec<Vec<Value>> = Vec::with_capacity(RAW_BATCH);
        loop {
            batch.clear();
            while batch.len() < RAW_BATCH {
                let Some(r) = rows.next()? else { break };
                let mut row = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    row.push(r.get::<_, Value>(i)?);
                }
                batch.push(row);
            }
            if batch.is_empty() {
                break;
            }
            let tx = to.transaction()?;
            {
                let mut stmt = tx.prepare_cached(&insert)?;
                for row in &batch {
                    stmt.execute(params_from_iter(row.iter()))?;
                }
            }
            tx.commit()?;
            if *table == "owned" {
                copied += batch.len() as u64;
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu = super::cpu_seconds(true) - cpu;
    let stored: i64 = to.query_row("SELECT count(*) FROM owned", [], |r| r.get(0))?;
    anyhow::ensure!(
        copied > 0 && u64::try_from(stored).ok() == Some(copied),
        "the raw copy stored {stored} of {copied} device-owned rows"
    );
    Ok((elapsed, cpu))
}

/// The stored (not generated) columns of `table`, empty if there is no such table.
fn stored_columns(conn: &Connection, table: &str) -> anyhow::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name, hidden FROM pragma_table_xinfo(?1)")?;
    let mut rows = stmt.query(params![table])?;
    let mut columns = Vec::new();
    while let Some(r) = rows.next()? {
        // hidden: 0 ordinary, 1 hidden (virtual tables), 2/3 generated.
        if r.get::<_, i64>(1)? == 0 {
            let name: String = r.get(0)?;
            columns.push(format!("\"{}\"", name.replace('"', "\"\"")));
        }
    }
    Ok(columns)
}

fn digest(path: &Path) -> anyhow::Result<u64> {
    Ok(Store::open(path)?.content_digest()?)
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a database, its WAL files and its lock file (missing files are fine).
pub fn remove_db(path: &Path) {
    for p in [
        path.to_path_buf(),
        sidecar(path, "-wal"),
        sidecar(path, "-shm"),
        // The store's lock file (no store is open here).
        sidecar(path, ".lock"),
    ] {
        let _ = std::fs::remove_file(p);
    }
}

/// A device process: this binary re-run with `bench --child ...`. Killed (by its own pid) if
/// dropped before it quit.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &'static str, args: &[String]) -> anyhow::Result<Proc> {
        // `/proc/self/exe` runs this very binary even if a rebuild replaced the file.
        let exe = if Path::new("/proc/self/exe").exists() {
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let mut child = Command::new(exe)
            .arg("bench")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {name} process"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name,
            child,
            stdin,
            lines,
        })
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> anyhow::Result<Reply> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .map_err(|_| anyhow::anyhow!("the {} process did not answer", self.name))?;
        let reply: Reply = serde_json::from_str(&line)
            .with_context(|| format!("{}: unexpected output {line:?}", self.name))?;
        if let Reply::Error(e) = reply {
            bail!("the {} process failed: {e}", self.name);
        }
        Ok(reply)
    }

    fn ask(&mut self, command: &str) -> anyhow::Result<Reply> {
        self.send(command)?;
        self.recv(Duration::from_secs(60))
    }

    /// Asks the process to stop and waits for it.
    fn quit(mut self) -> anyhow::Result<()> {
        self.send("quit")?;
        self.stdin = None;
        match self.recv(Duration::from_secs(30))? {
            Reply::Ok => {}
            other => bail!("{}: unexpected {other:?}", self.name),
        }
        let status = self.child.wait()?;
        anyhow::ensure!(
            status.success(),
            "the {} process exited with {status}",
            self.name
        );
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
