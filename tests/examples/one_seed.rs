//! Runs one seed with every fault and prints its report (and trace with `--trace`).
fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let ops = std::env::var("OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut cfg = hybridsync_sim::SimConfig::all_faults(3, ops);
    cfg.trace = std::env::args().any(|a| a == "--trace");
    let r = hybridsync_sim::run_seed(&cfg, seed);
    for line in &r.trace {
        println!("{line}");
    }
    println!(
        "seed {} ops {} messages {} bytes {} sim {} ms wall {} ms stats {:?} failures {:?}",
        r.seed, r.ops, r.messages, r.bytes, r.sim_time_ms, r.wall_ms, r.stats, r.failures
    );
}
