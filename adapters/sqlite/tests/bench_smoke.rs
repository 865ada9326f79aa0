//! The benchmark entry point runs end to end (a smoke test, not a timed test).

use hybridsync_sqlite::bench::{self, BenchConfig, KeyOrder};

#[test]
fn bench_writes_every_record_through_both_paths_and_reports_rates() {
    let dir = tempfile::tempdir().expect("temp dir");
    for keys in [KeyOrder::TimeOrdered, KeyOrder::Random] {
        let mut config = BenchConfig::new(5_000, keys);
        config.batch = 700;
        let result = bench::run(dir.path(), &config).expect("bench runs");
        assert!(result.store_per_sec > 0.0 && result.raw_per_sec > 0.0);
        assert!(result.slowdown.is_finite() && result.slowdown > 0.0);
        assert!(
            result.store_bytes > 5_000 * 100,
            "store holds less than the payloads"
        );
        assert!(result.to_string().contains("records/s"));
    }
    let leftovers = std::fs::read_dir(dir.path()).expect("read dir").count();
    assert_eq!(leftovers, 0, "the benchmark left database files behind");
}
