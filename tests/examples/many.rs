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
    let cfg = hybridsync_sim::SimConfig::all_faults(3, 1000);
    let t = std::time::Instant::now();
    let mut bad = 0;
    for seed in from..to {
        let r = hybridsync_sim::run_seed(&cfg, seed);
        if !r.passed() {
            bad += 1;
            println!("seed {seed}: {:?}", r.failures);
        }
    }
    println!(
        "{} seeds, {bad} failed, {:.1} s",
        to - from,
        t.elapsed().as_secs_f64()
    );
}
