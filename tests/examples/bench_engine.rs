//! Prints the engine benchmarks (`hybridsync bench` runs the same functions).
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    println!("{:?}", hybridsync_sim::bench::wire_size());
    println!("{:?}", hybridsync_sim::bench::apply_owned(n, 5));
    println!("{:?}", hybridsync_sim::bench::apply_shared(n, 5));
}
