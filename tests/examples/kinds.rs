//! Messages per kind for one calm full-mesh seed (`kinds PEERS`).
fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut cfg = hybridsync_sim::SimConfig::calm(n, 500);
    cfg.trace = true;
    let r = hybridsync_sim::run_seed(&cfg, 880_000);
    let mut kinds = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for line in &r.trace {
        if let Some((_, rest)) = line.split_once(" -> ") {
            let mut it = rest.split_whitespace();
            let _to = it.next();
            if let (Some(kind), Some(bytes)) = (it.next(), it.next()) {
                let b: u64 = bytes.trim_start_matches('(').parse().unwrap_or(0);
                let e = kinds.entry(kind.to_owned()).or_default();
                e.0 += 1;
                e.1 += b;
            }
        }
    }
    if std::env::var("DUMP").is_ok() {
        for l in &r.trace {
            println!("{l}");
        }
    }
    println!("ops {} messages {} bytes {}", r.ops, r.messages, r.bytes);
    for (k, (m, b)) in kinds {
        println!(
            "{k:<24} {:>8.2} msgs/op {:>9.0} B/op",
            m as f64 / r.ops as f64,
            b as f64 / r.ops as f64
        );
    }
}
