//! `hybridsync sim`: runs the deterministic simulator over a range of seeds.

use clap::Args as ClapArgs;
use hybridsync_sim::{run_seed, SeedReport, SimConfig, Topology};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Options of `hybridsync sim` (every fault is on unless turned off).
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Initial replicas.
    #[arg(long, default_value_t = 3)]
    peers: usize,
    /// Workload operations per seed.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of seeds to run, starting at `--seed`.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Message loss probability.
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// Message duplication probability.
    #[arg(long, default_value_t = 0.05)]
    dup: f64,
    /// Probability that a message is delayed up to 300 ms (reordering).
    #[arg(long, default_value_t = 0.1)]
    reorder: f64,
    /// No partitions.
    #[arg(long)]
    no_partitions: bool,
    /// No crash-restarts.
    #[arg(long)]
    no_crashes: bool,
    /// No clock skew or backward clock steps.
    #[arg(long)]
    no_skew: bool,
    /// No device with a far-future clock.
    #[arg(long)]
    no_future_clock: bool,
    /// No late joiner.
    #[arg(long)]
    no_join: bool,
    /// No member removal.
    #[arg(long)]
    no_removal: bool,
    /// Never lose a device for good (by default, in half the seeds of three or more devices,
    /// device 1 is lost with its disk during the run and removed once the others agree).
    #[arg(long)]
    no_lost_device: bool,
    /// No delayed storage commits.
    #[arg(long)]
    no_storage_delay: bool,
    /// No power losses (rollback of committed batches not marked FullSync).
    #[arg(long)]
    no_power_loss: bool,
    /// No writes near or beyond the frame limit.
    #[arg(long)]
    no_large_writes: bool,
    /// No rolling upgrade (every device knows every model).
    #[arg(long)]
    no_upgrade: bool,
    /// Pairing graph: random (a shape per seed), mesh, chain, star, ring, tree or sparse
    /// (default: random, or mesh with --calm).
    #[arg(long, value_parser = parse_topology)]
    topology: Option<Topology>,
    /// Turn every fault off (a perfect network).
    #[arg(long)]
    calm: bool,
    /// Replay the single seed `--seed` and print its full trace.
    #[arg(long)]
    trace: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn config(&self) -> SimConfig {
        let mut c = if self.calm {
            SimConfig::calm(self.peers, self.ops)
        } else {
            let mut c = SimConfig::all_faults(self.peers, self.ops);
            c.loss = self.loss;
            c.dup = self.dup;
            c.reorder = self.reorder;
            c.partitions = !self.no_partitions;
            c.crashes = !self.no_crashes;
            c.skew = !self.no_skew;
            c.future_clock = !self.no_future_clock;
            c.late_join = !self.no_join;
            c.removal = !self.no_removal;
            c.lost_device = !self.no_lost_device;
            c.storage_delay = !self.no_storage_delay;
            c.power_loss = !self.no_power_loss;
            c.large_writes = !self.no_large_writes;
            c.rolling_upgrade = !self.no_upgrade;
            c
        };
        if let Some(t) = self.topology {
            c.topology = t;
        }
        c.trace = self.trace;
        c
    }
}

fn parse_topology(s: &str) -> Result<Topology, String> {
    Ok(match s {
        "random" => Topology::Random,
        "mesh" => Topology::FullMesh,
        "chain" => Topology::Chain,
        "star" => Topology::Star,
        "ring" => Topology::Ring,
        "tree" => Topology::Tree,
        "sparse" => Topology::Sparse,
        other => {
            return Err(format!(
                "unknown topology {other:?}: random, mesh, chain, star, ring, tree or sparse"
            ))
        }
    })
}

/// Runs the simulator; fails if any seed failed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.config();
    if args.trace {
        let r = run_seed(&cfg, args.seed);
        for line in &r.trace {
            println!("{line}");
        }
        let passed = r.passed();
        print_summary(&args, std::slice::from_ref(&r), r.wall_ms as f64 / 1000.0);
        anyhow::ensure!(passed, "seed {} failed", args.seed);
        return Ok(());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(args.seed);
    let end = args.seed.saturating_add(args.seeds);
    let reports = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let mut r = run_seed(&cfg, seed);
                r.trace = Vec::new();
                if let Ok(mut v) = reports.lock() {
                    v.push(r);
                }
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| r.seed);
    print_summary(&args, &reports, wall);
    let failed = reports.iter().filter(|r| !r.passed()).count();
    anyhow::ensure!(failed == 0, "{failed} of {} seeds failed", reports.len());
    Ok(())
}

fn print_summary(args: &Args, reports: &[SeedReport], wall_s: f64) {
    let failed: Vec<&SeedReport> = reports.iter().filter(|r| !r.passed()).collect();
    let messages: u64 = reports.iter().map(|r| r.messages).sum();
    let bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    let sim_ms: u64 = reports.iter().map(|r| r.sim_time_ms).sum();
    let ops: usize = reports.iter().map(|r| r.ops).sum();
    let mut stats: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reports {
        for (k, v) in &r.stats {
            *stats.entry(k).or_insert(0) += v;
        }
    }
    let seeds_per_s = reports.len() as f64 / wall_s.max(1e-9);
    if args.json {
        let failures: Vec<serde_json::Value> = failed
            .iter()
            .map(|r| serde_json::json!({"seed": r.seed, "failures": r.failures}))
            .collect();
        let out = serde_json::json!({
            "seeds": reports.len(),
            "first_seed": args.seed,
            "peers": args.peers,
            "ops_per_seed": args.ops,
            "failed": failed.len(),
            "failures": failures,
            "durable_ops": ops,
            "messages": messages,
            "bytes": bytes,
            "simulated_ms": sim_ms,
            "wall_s": wall_s,
            "seeds_per_s": seeds_per_s,
            "stats": stats,
        });
        println!("{out}");
        return;
    }
    println!(
        "seeds {} (from {}), {} peers x {} ops: {} passed, {} failed",
        reports.len(),
        args.seed,
        args.peers,
        args.ops,
        reports.len() - failed.len(),
        failed.len()
    );
    println!(
        "durable ops {ops}, messages {messages}, bytes {bytes}, simulated {:.1} h, wall {wall_s:.1} s ({seeds_per_s:.1} seeds/s)",
        sim_ms as f64 / 3_600_000.0
    );
    let faults: Vec<String> = stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("exercised: {}", faults.join(", "));
    for r in failed {
        println!("FAILED seed {}: {}", r.seed, r.failures.join("; "));
        println!("  replay: hybridsync sim --seed {} --trace", r.seed);
    }
}
