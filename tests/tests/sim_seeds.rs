//! Seeded simulation runs: every seed must converge to the expected state.

use hybridsync_sim::{run_seed, SimConfig};

/// The default world as it was when the regression seeds below were found, before devices lost
/// for good were part of it: a seed replays the same way only in the world it was found in.
fn world_without_lost_devices(peers: usize, ops: usize) -> SimConfig {
    let mut cfg = SimConfig::all_faults(peers, ops);
    cfg.lost_device = false;
    cfg
}

fn run_range(cfg: &SimConfig, seeds: std::ops::Range<u64>) {
    let mut failed = Vec::new();
    for seed in seeds {
        let r = run_seed(cfg, seed);
        if !r.passed() {
            failed.push((seed, r.failures));
        }
    }
    assert!(failed.is_empty(), "failing seeds: {failed:#?}");
}

#[test]
fn calm_network_converges() {
    run_range(&SimConfig::calm(3, 200), 0..20);
}

/// A few hundred seeds with every fault on (`HYBRIDSYNC_SIM_SEEDS` overrides the count).
#[test]
fn all_faults_converge() {
    let n: u64 = std::env::var("HYBRIDSYNC_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    run_range(&SimConfig::all_faults(3, 300), 0..n);
}

#[test]
fn same_seed_gives_same_trace() {
    let cfg = SimConfig::all_faults(3, 200);
    for seed in [1, 7, 42] {
        let a = run_seed(&cfg, seed);
        let b = run_seed(&cfg, seed);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!(a.messages, b.messages);
    }
    assert_ne!(run_seed(&cfg, 1).trace_hash, run_seed(&cfg, 2).trace_hash);
}

/// Without a membership change at the end (which makes every device ack again), a lost ack
/// must still be repaired: the log is pruned by the next summary.
#[test]
fn lost_acks_are_repaired_without_new_writes() {
    let mut cfg = SimConfig::all_faults(3, 300);
    cfg.removal = false;
    cfg.late_join = false;
    cfg.loss = 0.15;
    run_range(&cfg, 1000..1100);
}

#[test]
fn larger_clusters_converge() {
    run_range(&SimConfig::all_faults(5, 200), 2000..2030);
}

/// Simulator findings of the wider world (write-ahead batches with delayed commits): a device
/// whose very first batch (its bootstrap members) was lost in a crash restarted with no member
/// at all and refused everyone. `Node` bootstraps again when the database holds no member; the
/// simulator now restarts such a device the same way.
#[test]
fn device_whose_first_batch_was_lost_bootstraps_again() {
    let cfg = world_without_lost_devices(3, 300);
    for seed in [621, 1124, 2026, 3746] {
        let r = run_seed(&cfg, seed);
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}

/// Simulator finding (32 devices, sparse pairing graph, calm network): a device relaying the
/// acks of 31 other members built one `AckRelay` above the 16 KiB frame limit, so it was never
/// sent and logs stayed pinned. Relayed acks now go in byte-bounded chunks.
#[test]
fn relayed_acks_of_many_members_fit_the_frame() {
    let mut cfg = SimConfig::calm(32, 500);
    cfg.topology = hybridsync_sim::Topology::Sparse;
    let r = run_seed(&cfg, 880_000);
    assert!(r.passed(), "{:#?}", r.failures);
}

/// Simulator findings of a device lost for good (issue: whatever any live device holds, every
/// live device eventually holds). Seed 5: real-time changes above a gap, held by one relay,
/// could never be passed on once their owner was gone (the replicas diverged). Seeds 49 and
/// 175: a joiner merged the first pages of a snapshot from the device that was then lost, and
/// kept registers no other device had.
#[test]
fn device_lost_for_good_leaves_nothing_stranded() {
    let mut cfg = SimConfig::all_faults(3, 1000);
    cfg.lost_device = true;
    for seed in [5, 49, 175] {
        let r = run_seed(&cfg, seed);
        assert_eq!(
            r.stats.get("devices_lost"),
            Some(&1),
            "seed {seed} loses a device"
        );
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}

/// Simulator findings of a device lost for good (on by default since): a catch-up page omits a
/// record its owner overwrote above the page, so a device whose catch-up from the owner was cut
/// short by the loss held no version (or an older one) of that record, while a device that got
/// the older version in real time kept it: same watermark, different content, for ever. Now
/// survivors compare digests of a removed member's records and fill each other's holes (seeds
/// 1149, 2068, 3118, 3212, 4760; each failed before). Seed 1836: the late joiner's sponsor was
/// lost before the joiner started, leaving it paired only with a dead device (a world the
/// simulator made up: it now pairs the joiner through another member).
#[test]
fn lost_owner_overwritten_record_is_the_same_everywhere() {
    let cfg = SimConfig::all_faults(3, 300);
    assert!(cfg.lost_device, "on in the default world");
    for seed in [1149, 1836, 2068, 3118, 3212, 4760] {
        let r = run_seed(&cfg, seed);
        assert_eq!(
            r.stats.get("devices_lost"),
            Some(&1),
            "seed {seed} loses a device"
        );
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}

/// Simulator finding of this stop's summaries (member registers re-sent every 10 minutes
/// instead of every minute): a late joiner that missed a member's bootstrap registers before
/// that member was removed held its member record differently for ever, because `Members` sent
/// only current members' registers. It now sends every member record.
#[test]
fn joiner_gets_a_removed_members_registers() {
    let cfg = world_without_lost_devices(3, 300);
    for seed in [200_176, 200_249, 200_698] {
        let r = run_seed(&cfg, seed);
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}

/// Simulator findings of the wider world's large shared updates (both large fields of a record
/// visible, the record larger than a frame). Seeds 220 and 374: a snapshot page carrying the
/// record went above the frame limit (now such a record goes in parts). Seeds 9, 91 and 148: a
/// snapshot restarted after a lost page resumed after the record whose first part it had, and
/// never got the rest (a restart now resumes after the last record received whole).
#[test]
fn records_larger_than_a_frame_reach_a_snapshot_whole() {
    let cfg = world_without_lost_devices(3, 300);
    for seed in [9, 91, 148, 220, 374] {
        let r = run_seed(&cfg, seed);
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}

/// Simulator findings of the first 100,000-seed run with devices lost by default (seeds
/// 2,000,000–2,099,999; they fail the same way without a lost device, and failed on the engine
/// before it): a duplicated snapshot request reached the server while its read for the first
/// copy was pending; the server restarted the stream under the same request id, sent that read
/// as a page of the new stream and numbered the pages from 0 again, so the joiner skipped the
/// records between them. A copy of the request being served is now ignored.
#[test]
fn a_duplicated_catch_up_request_never_skips_records() {
    let cfg = SimConfig::all_faults(3, 300);
    for seed in [2_041_494, 2_088_338, 2_090_812] {
        let r = run_seed(&cfg, seed);
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}

/// Simulator findings of the second 100,000-seed run (seeds 3,000,000–3,099,999): a device
/// crashed in the middle of the batch adding the device it was being paired with, and the
/// simulated user never paired them again, so the joiner stayed cut off for ever once its
/// sponsor was lost (a world the simulator made up). The user now pairs again when a pairing
/// did not survive (`pairings_lost_to_crash`).
#[test]
fn a_pairing_lost_in_a_crash_is_made_again() {
    let cfg = SimConfig::all_faults(3, 300);
    for seed in [3_013_418, 3_060_110] {
        let r = run_seed(&cfg, seed);
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}

/// Known limit (README "Known limits"), kept as the seed that shows it (1 of seeds
/// 4,000,000–4,099,999): a joiner took a snapshot from device 1, restarted it after a lost page,
/// and kept the first stream's version vector as its claim while the later pages, read after
/// device 1 wrote two more shared changes, carried their effect; device 1 was then lost, so no
/// log ever held those changes for anyone. The survivors agree on content here, but hold the
/// effect of changes beyond the prefix that survived, which the reference does not expect.
/// Fails today; run with `--ignored`.
#[test]
#[ignore = "known limit: a snapshot from a device lost right after can carry its changes beyond what survived"]
fn a_snapshot_from_a_device_lost_right_after_carries_nothing_beyond_what_survived() {
    let cfg = SimConfig::all_faults(3, 300);
    let r = run_seed(&cfg, 4_019_836);
    assert!(r.passed(), "{:#?}", r.failures);
}

/// Open finding of the `sim_scenario` fuzz target: with few operations, heavy loss and
/// reordering, a star pairing graph and a removal, the removed device stays a member on every
/// device and logs stay unpruned (2 of 100 seeds from this one in this world). In the first
/// seed, device 4 (its clock about 71 s ahead, within the drift bound) paired with device 2 and
/// wrote its member record; 20 s later device 1, not having received that write, removed device
/// 2 with a lower stamp, and last-writer-wins keeps the add. A concurrent add and remove of a
/// member needs a rule of its own (remove-wins, or a removal stamped above any add it races).
/// Fails today; run with `--ignored`.
#[test]
#[ignore = "open fuzz finding: a removal that does not take hold under heavy loss"]
fn a_removal_takes_hold_under_heavy_loss_in_a_star() {
    let mut cfg = SimConfig::all_faults(3, 16);
    cfg.loss = 0.3;
    cfg.dup = 0.0;
    cfg.reorder = 0.29;
    cfg.future_clock = false;
    cfg.lost_device = false;
    cfg.power_loss = false;
    cfg.topology = hybridsync_sim::Topology::Star;
    cfg.large_writes = false;
    cfg.rolling_upgrade = false;
    for seed in [9_114_861_779_647_613_890, 9_114_861_779_647_613_906] {
        let r = run_seed(&cfg, seed);
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
    }
}
