//! `hybridsync bench`: the performance figures of hybridsync, each next to a baseline measured
//! in the same run on the same machine, printed as a table (`--json` for machines).
//!
//! 1. **engine**: remote changes applied through the pure engine with `MemStore`, against a raw
//!    postcard decode + `BTreeMap` upsert ([`hybridsync_sim::bench::apply_owned`] and
//!    [`hybridsync_sim::bench::apply_shared`]);
//! 2. **wire**: bytes per change, postcard against JSON with string UUIDs
//!    ([`hybridsync_sim::bench::wire_size`]);
//! 3. **sync**: a fresh device catches up N device-owned records (UUIDv7-like ids) from a peer
//!    over iroh on 127.0.0.1 with SQLite on both sides, each device in its own process (this
//!    binary, re-run as `bench --child source|sink`), against a raw copy of the same rows from
//!    one SQLite file into another (plain rusqlite, batched `INSERT`s, one process);
//! 4. **reconnect**: messages and bytes an already-synced pair exchanges when it reconnects;
//! 5. **latency**: one change from `put` on one device to `RecordChanged` on the other, over
//!    iroh on 127.0.0.1 with SQLite on both sides;
//! 6. **wan**: 3, 4 and 5 again across a [`link::Link`] that adds a round-trip time (50 and
//!    200 ms by default; a 100 Mbit/s cap; optional loss) on the UDP path between the iroh
//!    endpoints, with one page per round trip as the baseline of the catch-up window;
//! 7. **shared**: the shared path against the device-owned one, in-process;
//! 8. **storage**: `SqliteStore` inserts against raw rusqlite `INSERT`s
//!    (`hybridsync_sqlite::bench`, feature `bench`), time-ordered and random record ids.
//!
//! Benchmarks are never timed tests: a missed target is reported in the table, not an error.
//! Measure release builds only. The machine is small and shared, so every figure is a median
//! over several rounds and throughput is compared with its baseline from the same run.

mod child;
mod counting;
mod latency;
mod link;
mod sync;
mod wan;

use crate::support;
use hybridsync_sim::bench::{pair, Throughput, WireSize};
use hybridsync_sqlite::bench::{BenchConfig, KeyOrder};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `hybridsync bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run: smaller engine inputs, a 100,000-record initial sync, reconnect at 10k
    /// history only, 300 latency samples.
    #[arg(long)]
    pub quick: bool,
    /// Print the report as one JSON object instead of a table (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Run only these parts (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Records of the initial sync (default 1,000,000; 100,000 with `--quick`).
    #[arg(long)]
    pub records: Option<u64>,
    /// Rounds of each measurement; medians are reported (default: 3 for the sync, 5 for the
    /// engine, 3 with `--quick`).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Changes timed by the latency benchmark (default 1000; 300 with `--quick`).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Round-trip times of the WAN part, ms (comma-separated; default 50,200). The first one
    /// also gets the capped, the one-page-window, the reconnect and the latency runs.
    #[arg(long, value_delimiter = ',')]
    pub rtt: Vec<u64>,
    /// Bandwidth cap of the WAN part's capped run, Mbit/s (default 100; 0: no capped run).
    #[arg(long)]
    pub rate_mbit: Option<f64>,
    /// Probability that the WAN link loses a datagram, each direction (default 0).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Keep the SQLite files in this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Internal: the options of a device process of the sync benchmark.
    #[command(flatten)]
    pub child: child::ChildArgs,
}

/// The parts of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Engine apply throughput against the raw baseline.
    Engine,
    /// Bytes per change on the wire.
    Wire,
    /// Initial sync over iroh + SQLite against a raw SQLite copy.
    Sync,
    /// Reconnect cost of an already-synced pair.
    Reconnect,
    /// Latency of one change.
    Latency,
    /// Sync, reconnect and latency across a link with a round-trip time.
    Wan,
    /// The shared path against the device-owned one, in-process: catch-up of an empty
    /// device and the concurrent-edit workload.
    Shared,
    /// `SqliteStore` insert throughput against raw rusqlite, time-ordered and random ids.
    Storage,
}

/// What one run measures.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    parts: Vec<Part>,
    engine_changes: usize,
    engine_rounds: usize,
    sync_records: u64,
    rounds: usize,
    reconnect_histories: Vec<u64>,
    latency_samples: usize,
    wan_rtts_ms: Vec<u64>,
    wan_rate_mbit: Option<f64>,
    wan_loss: f64,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let parts = if args.only.is_empty() {
            vec![
                Part::Engine,
                Part::Wire,
                Part::Sync,
                Part::Reconnect,
                Part::Latency,
                Part::Wan,
                Part::Shared,
                Part::Storage,
            ]
        } else {
            args.only.clone()
        };
        let sync_records = args
            .records
            .unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
        let mut reconnect_histories = vec![10_000];
        if !args.quick && sync_records != 10_000 {
            reconnect_histories.push(sync_records.max(1));
        }
        Plan {
            quick: args.quick,
            parts,
            engine_changes: if args.quick { 100_000 } else { 200_000 },
            engine_rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(1),
            sync_records: sync_records.max(1),
            rounds: args.rounds.unwrap_or(3).max(1),
            reconnect_histories,
            latency_samples: args
                .samples
                .unwrap_or(if args.quick { 300 } else { 1000 })
                .max(1),
            wan_rtts_ms: if args.rtt.is_empty() {
                vec![50, 200]
            } else {
                args.rtt.clone()
            },
            wan_rate_mbit: Some(args.rate_mbit.unwrap_or(100.0)).filter(|r| *r > 0.0),
            wan_loss: args.loss.clamp(0.0, 1.0),
        }
    }

    fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

/// The machine the figures come from.
#[derive(Clone, Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_mib: u64,
    load_before: String,
    load_after: String,
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| proc_kib(&m, "MemTotal:"))
            .map_or(0, |k| k / 1024);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            load_before: load_average(),
            load_after: String::new(),
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A `kB` field of a `/proc` status file (`VmHWM:`, `VmRSS:`, `MemTotal:`...).
pub(crate) fn proc_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) of this process (`thread: false`) or of the calling thread, in
/// seconds, from `/proc/self/stat` or `/proc/thread-self/stat` (clock ticks of 1/100 s).
pub(crate) fn cpu_seconds(thread: bool) -> f64 {
    let path = if thread {
        "/proc/thread-self/stat"
    } else {
        "/proc/self/stat"
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// One target of the issue and whether this run met it.
#[derive(Clone, Debug, Serialize)]
struct Target {
    figure: String,
    value: f64,
    unit: &'static str,
    target: String,
    met: bool,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    quick: bool,
    engine: Vec<Throughput>,
    wire: Option<WireSize>,
    sync: Option<sync::SyncFigures>,
    reconnect: Vec<sync::ReconnectFigures>,
    latency: Option<latency::LatencyFigures>,
    wan: Option<wan::WanFigures>,
    shared: Option<SharedFigures>,
    storage: Vec<StorageFigures>,
    targets: Vec<Target>,
    wall_s: f64,
}

/// The shared path against the device-owned one (`--only shared`).
#[derive(Clone, Debug, Serialize)]
struct SharedFigures {
    catch_up: pair::CatchUp,
    concurrent: pair::ConcurrentEdits,
}

/// One run of the SQLite insert bench (`--only storage`, `hybridsync_sqlite::bench`).
#[derive(Clone, Debug, Serialize)]
struct StorageFigures {
    keys: String,
    records: u64,
    store_per_s: f64,
    raw_per_s: f64,
    /// Raw rusqlite's rate over the store's (1.0 = as fast).
    slowdown: f64,
    store_mib: f64,
}

impl StorageFigures {
    /// Inserts `records` records with `keys` ids through `SqliteStore` and through raw
    /// rusqlite, database files in `dir`.
    fn measure(dir: &Path, records: u64, keys: KeyOrder) -> anyhow::Result<StorageFigures> {
        let r = hybridsync_sqlite::bench::run(dir, &BenchConfig::new(records, keys))
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(StorageFigures {
            keys: keys.to_string(),
            records,
            store_per_s: r.store_per_sec,
            raw_per_s: r.raw_per_sec,
            slowdown: r.slowdown,
            store_mib: r.store_bytes as f64 / (1024.0 * 1024.0),
        })
    }
}

/// Runs the benchmark (or, with the hidden `--child`, one device process of it).
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(role) = args.child.role {
        return child::run(role, &args.child);
    }
    support::init_tracing("warn");
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; measure with `cargo build --release -p hybridsync-cli`");
    }
    let plan = Plan::new(&args);
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let dir = support::work_dir(args.dir.as_deref(), tmp.path())?;
    let mut report = Report {
        machine: Machine::probe(),
        quick: plan.quick,
        engine: Vec::new(),
        wire: None,
        sync: None,
        reconnect: Vec::new(),
        latency: None,
        wan: None,
        shared: None,
        storage: Vec::new(),
        targets: Vec::new(),
        wall_s: 0.0,
    };

    if plan.runs(Part::Engine) {
        progress(&format!(
            "engine apply: {} changes x {} rounds",
            plan.engine_changes, plan.engine_rounds
        ));
        report.engine.push(hybridsync_sim::bench::apply_owned(
            plan.engine_changes,
            plan.engine_rounds,
        ));
        report.engine.push(hybridsync_sim::bench::apply_shared(
            plan.engine_changes,
            plan.engine_rounds,
        ));
    }
    if plan.runs(Part::Wire) {
        report.wire = Some(hybridsync_sim::bench::wire_size());
    }
    if plan.runs(Part::Sync) || plan.runs(Part::Reconnect) {
        let (sync, reconnect) = sync::run(&plan, &dir)?;
        report.sync = sync;
        report.reconnect = reconnect;
    }
    if plan.runs(Part::Latency) {
        progress(&format!(
            "latency: {} changes over iroh + SQLite",
            plan.latency_samples
        ));
        report.latency =
            Some(support::runtime()?.block_on(latency::run(&dir, plan.latency_samples, None))?);
    }
    if plan.runs(Part::Wan) {
        report.wan = Some(wan::run(&plan, &dir)?);
    }
    if plan.runs(Part::Shared) {
        let records = if plan.quick { 20_000 } else { 100_000 };
        progress(&format!(
            "shared vs owned: catch-up of {records} records x {} rounds, concurrent edits",
            plan.rounds
        ));
        report.shared = Some(SharedFigures {
            catch_up: pair::catch_up(records, plan.rounds),
            concurrent: pair::concurrent_edits(1_000, 10_000, plan.rounds),
        });
    }
    if plan.runs(Part::Storage) {
        let records = if plan.quick { 100_000 } else { 1_000_000 };
        progress(&format!(
            "storage: {records} inserts, SqliteStore and raw rusqlite"
        ));
        for keys in [KeyOrder::TimeOrdered, KeyOrder::Random] {
            report
                .storage
                .push(StorageFigures::measure(&dir, records, keys)?);
        }
    }
    report.machine.load_after = load_average();
    report.wall_s = started.elapsed().as_secs_f64();
    report.targets = targets(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// A progress line on stderr (stdout carries the report).
fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// Median of `v` (the upper one of an even count); 0 when empty.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Mebibytes from kibibytes.
pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let mut add = |figure: String, value: f64, unit: &'static str, target: &str, met: bool| {
        t.push(Target {
            figure,
            value,
            unit,
            target: target.to_owned(),
            met,
        });
    };
    for e in &r.engine {
        add(
            format!("{}: engine / baseline", e.name),
            e.ratio,
            "x",
            ">= 0.7x",
            e.ratio >= 0.7,
        );
        add(
            format!("{}: engine throughput", e.name),
            e.engine_per_s,
            "changes/s",
            ">= 500,000/s",
            e.engine_per_s >= 500_000.0,
        );
    }
    if let Some(w) = &r.wire {
        let single = w.single_postcard as f64;
        add(
            "wire: single StateChange".into(),
            single,
            "B",
            "<= 100 B",
            single <= 100.0,
        );
        add(
            "wire: per change in a batch of 1,000".into(),
            w.batched_postcard,
            "B",
            "<= 65 B",
            w.batched_postcard <= 65.0,
        );
        add(
            "wire: per change in a batch, random-bit UUIDv7 ids".into(),
            w.batched_postcard_random_v7,
            "B",
            "<= 65 B",
            w.batched_postcard_random_v7 <= 65.0,
        );
        add(
            "wire: per change in a batch, rising stamp counters".into(),
            w.batched_postcard_rising_counters,
            "B",
            "<= 65 B",
            w.batched_postcard_rising_counters <= 65.0,
        );
        add(
            "wire: per shared change in a batch of 1,000".into(),
            w.shared_batched_postcard,
            "B",
            "<= 64 B and <= the owned figure",
            w.shared_batched_postcard <= 64.0
                && w.shared_batched_postcard <= w.batched_postcard_rising_counters,
        );
    }
    if let Some(sh) = &r.shared {
        let c = &sh.catch_up;
        add(
            format!("shared catch-up of {}: time / owned", c.records),
            c.ratio,
            "x",
            "<= 1.3x",
            c.ratio <= 1.3,
        );
        let e = &sh.concurrent;
        add(
            "concurrent edits: bytes on the wire".into(),
            e.total_bytes as f64,
            "B",
            "<= 1 MB",
            e.total_bytes <= 1_000_000,
        );
    }
    if let Some(s) = &r.sync {
        let n = s.records;
        add(
            format!("sync {n}: connect to caught up"),
            s.total_s,
            "s",
            "<= 10 s",
            s.total_s <= 10.0,
        );
        add(
            format!("sync {n}: sync / raw copy"),
            s.ratio,
            "x",
            "<= 2x",
            s.ratio <= 2.0,
        );
        add(
            format!("sync {n}: sink peak RSS beyond page cache"),
            s.sink_beyond_cache_mib,
            "MiB",
            "<= 64 MiB",
            s.sink_beyond_cache_mib <= 64.0,
        );
        add(
            format!("sync {n}: source peak RSS beyond page cache"),
            s.source_beyond_cache_mib,
            "MiB",
            "<= 64 MiB",
            s.source_beyond_cache_mib <= 64.0,
        );
    }
    for c in &r.reconnect {
        add(
            format!("reconnect at {} history: messages", c.history),
            c.messages as f64,
            "msgs",
            "<= 6 (full summary, Members, Neighbours each way)",
            c.messages <= 6,
        );
    }
    if let Some(l) = &r.latency {
        add(
            "latency put -> RecordChanged: p99".into(),
            l.p99_ms,
            "ms",
            "<= 5 ms",
            l.p99_ms <= 5.0,
        );
        add(
            "latency through one relay: p99".into(),
            l.relay_p99_ms,
            "ms",
            "<= 10 ms (two direct hops)",
            l.relay_p99_ms <= 10.0,
        );
    }
    if let Some(w) = &r.wan {
        let default_window = |s: &&wan::WanSync| s.window > 1;
        for s in w.syncs.iter().filter(default_window) {
            match s.ratio_to_link {
                None if s.rtt_ms == 50 && s.records >= 1_000_000 => add(
                    format!("wan sync {}: rtt 50 ms", s.records),
                    s.total_s,
                    "s",
                    "<= 3 s",
                    s.total_s <= 3.0,
                ),
                Some(ratio) => add(
                    format!(
                        "wan sync {}: rtt {} ms, {} Mbit/s: / link time",
                        s.records,
                        s.rtt_ms,
                        s.rate_mbit.unwrap_or(0.0)
                    ),
                    ratio,
                    "x",
                    "<= 1.3x",
                    ratio <= 1.3,
                ),
                None => {}
            }
        }
        if let Some(l) = &w.latency {
            let bound = w.latency_rtt_ms as f64 + 5.0;
            add(
                format!("wan latency A -> B: p99 at rtt {} ms", w.latency_rtt_ms),
                l.p99_ms,
                "ms",
                &format!("<= {bound:.0} ms (1 rtt + 5 ms)"),
                l.p99_ms <= bound,
            );
        }
    }
    t
}

fn print_table(r: &Report) {
    let m = &r.machine;
    println!(
        "hybridsync bench{}: {} x {} ({} MiB), load {} -> {}, {:.0} s",
        if r.quick { " --quick" } else { "" },
        m.cores,
        m.cpu,
        m.memory_mib,
        m.load_before,
        m.load_after,
        r.wall_s
    );
    if !r.engine.is_empty() {
        println!(
            "\n1. engine apply throughput (medians; baseline: postcard decode + BTreeMap upsert)"
        );
        println!(
            "  {:<22} {:>9} {:>16} {:>16} {:>8}",
            "stream", "changes", "engine /s", "baseline /s", "ratio"
        );
        for e in &r.engine {
            println!(
                "  {:<22} {:>9} {:>16.0} {:>16.0} {:>7.2}x   rounds: {}",
                e.name,
                e.changes,
                e.engine_per_s,
                e.baseline_per_s,
                e.ratio,
                fmt_list(&e.ratios)
            );
        }
    }
    if let Some(w) = &r.wire {
        println!("\n2. wire size of an `entry` change (postcard vs JSON with string UUIDs)");
        println!("  {:<34} {:>10} {:>10}", "", "postcard", "JSON");
        println!(
            "  {:<34} {:>8} B {:>8} B",
            "single StateChange", w.single_postcard, w.single_json
        );
        println!(
            "  {:<34} {:>8.1} B {:>8.1} B",
            "per change, StateBatch of 1,000", w.batched_postcard, w.batched_json
        );
        println!(
            "  {:<34} {:>8.1} B",
            "  same, random-bit UUIDv7 ids", w.batched_postcard_random_v7
        );
        println!(
            "  {:<34} {:>8.1} B",
            "  same, rising stamp counters", w.batched_postcard_rising_counters
        );
        println!(
            "  {:<34} {:>8} B",
            "single SharedChange (a tag)", w.shared_single_postcard
        );
        println!(
            "  {:<34} {:>8.1} B",
            "per change, SharedChangeBatch", w.shared_batched_postcard
        );
        println!(
            "  {:<34} {:>8.1} B",
            "  same, random (v4) ids", w.shared_batched_postcard_random_ids
        );
    }
    if let Some(sh) = &r.shared {
        print_shared(sh);
    }
    if let Some(s) = &r.sync {
        println!(
            "\n3. initial sync of {} device-owned records over iroh (127.0.0.1), SQLite both sides, one process per device ({} rounds, medians)",
            s.records, s.rounds
        );
        println!(
            "  connect to caught up     {:>8.2} s   (connect {:.0} ms, {} pages, {:.0} records/s)",
            s.total_s, s.connect_ms, s.pages, s.records_per_s
        );
        println!(
            "  raw SQLite -> SQLite     {:>8.2} s   (plain rusqlite, one process, {} rows per transaction)",
            s.raw_s,
            sync::RAW_BATCH
        );
        println!("  sync / raw               {:>8.2}x", s.ratio);
        println!(
            "  CPU time                 {:>8.2} s sync (source + sink processes), {:.2} s raw copy: {:.2}x",
            s.sync_cpu_s, s.raw_cpu_s, s.cpu_ratio
        );
        println!(
            "  peak RSS (VmHWM)   source {:>6.1} MiB, sink {:>6.1} MiB; beyond SQLite's page cache ({} MiB): source {:.1} MiB, sink {:.1} MiB",
            s.source_hwm_mib,
            s.sink_hwm_mib,
            sync::PAGE_CACHE_MIB,
            s.source_beyond_cache_mib,
            s.sink_beyond_cache_mib
        );
        println!(
            "  RSS of an idle device   {:>6.1} MiB (sink, node started, before connecting)",
            s.idle_rss_mib
        );
        println!(
            "  rounds: sync {} s; raw {} s; content digests equal: {}",
            fmt_list(&s.sync_rounds_s),
            fmt_list(&s.raw_rounds_s),
            s.digests_equal
        );
    }
    if !r.reconnect.is_empty() {
        println!("\n4. reconnect of an already-synced pair (frames sent by each side, 1 s after connecting)");
        println!(
            "  {:>10} {:>14} {:>14} {:>9} {:>12}  messages",
            "history", "source -> sink", "sink -> source", "total", "round trips"
        );
        for c in &r.reconnect {
            println!(
                "  {:>10} {:>9} B/{:>2} {:>9} B/{:>2} {:>7} B {:>12}  {}",
                c.history,
                c.source_to_sink.bytes,
                c.source_to_sink.messages,
                c.sink_to_source.bytes,
                c.sink_to_source.messages,
                c.bytes,
                c.round_trips,
                c.kinds.join(", ")
            );
        }
    }
    if let Some(l) = &r.latency {
        println!(
            "\n5. latency of one change, put on A -> RecordChanged on B (iroh 127.0.0.1, SQLite; {} changes, one at a time)",
            l.samples
        );
        println!(
            "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms   (put durable on A: p50 {:.2} ms, p99 {:.2} ms)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.put_p50_ms, l.put_p99_ms
        );
        println!(
            "  through one relay (A -> B -> C; A and C not paired): p50 {:.2} ms   p99 {:.2} ms",
            l.relay_p50_ms, l.relay_p99_ms
        );
        println!(
            "  threads runnable but waiting for a CPU during a change: {:.2} ms mean, {:.2} ms in the slowest 1%",
            l.mean_run_queue_wait_ms, l.tail_run_queue_wait_ms
        );
    }
    if let Some(w) = &r.wan {
        print_wan(w);
    }
    if !r.storage.is_empty() {
        println!("\n8. SqliteStore inserts against raw rusqlite INSERTs (2,048 records per transaction, 100-byte payloads)");
        for f in &r.storage {
            println!(
                "  {:<28} {:>9} records: store {:>9.0}/s, raw {:>9.0}/s, raw / store {:.2}x, {:.1} MiB",
                f.keys, f.records, f.store_per_s, f.raw_per_s, f.slowdown, f.store_mib
            );
        }
    }
    if !r.targets.is_empty() {
        println!("\ntargets");
        for t in &r.targets {
            println!(
                "  {:<4} {:<48} {:>14} {:<10} target {}",
                if t.met { "met" } else { "MISS" },
                t.figure,
                fmt_value(t.value),
                t.unit,
                t.target
            );
        }
    }
}

fn print_shared(sh: &SharedFigures) {
    let c = &sh.catch_up;
    println!(
        "\n7. shared vs device-owned, in-process (two engines on MemStore, every message encoded)"
    );
    println!(
        "  catch-up of {} records by an empty device (medians; rounds alternate the paths)",
        c.records
    );
    let per = |t: &pair::Traffic| t.bytes as f64 / c.records as f64;
    println!(
        "    owned   {:>8.3} s   {:>6.1} B/record   {:>6} + {} messages",
        c.owned_s,
        per(&c.owned_traffic[0]),
        c.owned_traffic[0].messages,
        c.owned_traffic[1].messages
    );
    println!(
        "    shared  {:>8.3} s   {:>6.1} B/record   {:>6} + {} messages",
        c.shared_s,
        per(&c.shared_traffic[0]),
        c.shared_traffic[0].messages,
        c.shared_traffic[1].messages
    );
    println!(
        "    shared / owned {:.2}x (rounds: {})",
        c.ratio,
        fmt_list(&c.ratios)
    );
    let e = &sh.concurrent;
    println!(
        "  concurrent edits: {} records, {} updates on each of two devices apart, then synced",
        e.records, e.updates_per_device
    );
    println!(
        "    {:.3} s, {} B on the wire ({} + {} B, {} + {} messages)",
        e.seconds,
        e.total_bytes,
        e.traffic[0].bytes,
        e.traffic[1].bytes,
        e.traffic[0].messages,
        e.traffic[1].messages
    );
}

fn print_wan(w: &wan::WanFigures) {
    println!("\n6. across a link on 127.0.0.1 that adds a round-trip time (UDP forwarder between the iroh endpoints)");
    println!(
        "  {:>9} {:>7} {:>7} {:>9}  {:>8} {:>7} {:>12} {:>10}  rounds",
        "records", "rtt", "cap", "window", "sync", "pages", "link bytes", "/ link"
    );
    for s in &w.syncs {
        println!(
            "  {:>9} {:>4} ms {:>7} {:>9}  {:>6.2} s {:>7} {:>12} {:>10}  {}",
            s.records,
            s.rtt_ms,
            s.rate_mbit
                .map_or("-".to_owned(), |r| format!("{r:.0} Mb/s")),
            s.window,
            s.total_s,
            s.pages,
            s.down.bytes,
            s.ratio_to_link
                .map_or("-".to_owned(), |r| format!("{r:.2}x")),
            fmt_list(&s.rounds_s)
        );
    }
    if let Some(c) = &w.reconnect {
        println!(
            "  reconnect at rtt {} ms, {} records of history: {} messages, {} B, {} round trip(s), connect {:.0} ms; still synced: {}",
            w.latency_rtt_ms, c.history, c.messages, c.bytes, c.round_trips, c.connect_ms, c.still_synced
        );
    }
    if let Some(l) = &w.latency {
        println!(
            "  latency at rtt {} ms, put on A -> RecordChanged on B ({} changes): p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms; through B to C (loopback): p99 {:.2} ms",
            w.latency_rtt_ms, l.samples, l.p50_ms, l.p99_ms, l.max_ms, l.relay_p99_ms
        );
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}
