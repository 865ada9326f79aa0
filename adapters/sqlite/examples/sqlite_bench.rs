//! Prints insert throughput of `SqliteStore::execute` against a raw rusqlite baseline, for
//! time-ordered (UUIDv7-like) and random (UUIDv4-like) record ids.
//!
//! ```sh
//! cargo run --release -p hybridsync-sqlite --features bench --example sqlite_bench -- 1000000 [batch] [payload] [v7|v4]
//! ```
//!
//! Database files go to a temporary directory (set `TMPDIR` to measure another disk).

use hybridsync_sqlite::bench::{self, BenchConfig, KeyOrder};

fn arg(n: usize, default: u64) -> u64 {
    match std::env::args().nth(n) {
        None => default,
        Some(s) => s.replace('_', "").parse().unwrap_or_else(|_| {
            eprintln!("usage: sqlite_bench [records] [batch] [payload bytes] [v7|v4]");
            std::process::exit(2)
        }),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let records = arg(1, 1_000_000);
    let batch = arg(2, 2048) as usize;
    let payload = arg(3, 100) as usize;
    let dir = tempfile::tempdir()?;
    let orders = match std::env::args().nth(4).as_deref() {
        Some("v7") => vec![KeyOrder::TimeOrdered],
        Some("v4") => vec![KeyOrder::Random],
        _ => vec![KeyOrder::TimeOrdered, KeyOrder::Random],
    };
    for keys in orders {
        let mut config = BenchConfig::new(records, keys);
        config.batch = batch;
        config.payload = payload;
        let result = bench::run(dir.path(), &config)?;
        println!("{result}");
    }
    Ok(())
}
