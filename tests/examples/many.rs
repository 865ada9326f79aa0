//! Runs a range of seeds with every fault (`many FROM TO`) and prints failing seeds.
fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (from, to) = (
        args.first().copied().unwrap_or(0),
        args.get(1).copied().unwrap_or(100),
    );
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut cfg = hybridsync_sim::SimConfig::all_faults(
        env("PEERS", 3.0) as usize,
        env("OPS", 1000.0) as usize,
    );
    cfg.loss = env("LOSS", cfg.loss);
    cfg.dup = env("DUP", cfg.dup);
    cfg.reorder = env("REORDER", cfg.reorder);
    let t = std::time::Instant::now();
    let mut bad = 0;
    for seed in from..to {
        let r = hybridsync_sim::run_seed(&cfg, seed);
        if !r.passed() {
            bad += 1;
            println!("seed {seed}: {:?}", r.failures);
        }
        if (seed + 1 - from) % 5000 == 0 {
            println!("progress: {} seeds, {bad} failed", seed + 1 - from);
        }
    }
    println!(
        "{} seeds, {bad} failed, {:.1} s",
        to - from,
        t.elapsed().as_secs_f64()
    );
}
