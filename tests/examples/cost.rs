//! Messages and bytes per change on a perfect network (`cost [PEERS...]`), full mesh and a
//! sparse pairing graph, 500 operations, 4 seeds each (issue: cost per change across devices),
//! and idle traffic: bytes per device per minute per peer over 10 idle minutes after quiescence.
use hybridsync_sim::{run_seed, SimConfig, Topology};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![3, 8, 16, 32]
    } else {
        sizes
    };
    println!("devices  topology  msgs/change  bytes/change  idle B/min/peer  wall s/seed  failed");
    for n in sizes {
        for topology in [Topology::FullMesh, Topology::Sparse] {
            let mut cfg = SimConfig::calm(n, 500);
            cfg.topology = topology;
            cfg.idle_ms = 10 * 60_000;
            let (mut msgs, mut bytes, mut ops, mut wall, mut failed) = (0u64, 0u64, 0u64, 0u64, 0);
            let (mut idle, mut links) = (0u64, 0u64);
            for seed in 880_000..880_004 {
                let r = run_seed(&cfg, seed);
                msgs += r.messages - r.idle_messages;
                bytes += r.bytes - r.idle_bytes;
                idle += r.idle_bytes;
                links += 2 * r.edges as u64;
                ops += r.ops as u64;
                wall += r.wall_ms;
                failed += usize::from(!r.passed());
                if let Some(f) = r.failures.first() {
                    eprintln!(
                        "seed {seed} ({n}, {topology:?}): {}",
                        &f[..f.len().min(300)]
                    );
                }
            }
            // Per device, per minute, per peer: each directed link is one device and one peer.
            println!(
                "{n:>7}  {:<8}  {:>11.1}  {:>12.0}  {:>15.0}  {:>11.2}  {failed}",
                format!("{topology:?}"),
                msgs as f64 / ops as f64,
                bytes as f64 / ops as f64,
                idle as f64 / 10.0 / links as f64,
                wall as f64 / 4000.0
            );
        }
    }
}
