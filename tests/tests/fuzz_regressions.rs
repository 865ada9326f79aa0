//! Fuzz findings as regression tests.
//!
//! Every input a fuzz target failed on is committed under `tests/fuzz-regressions/<target>/`
//! and replayed here through the target's body (`hybridsync_sim::fuzz`), with the same checks
//! the fuzzer ran. The committed seed corpus (`fuzz/corpus/<target>/seed-*`) is replayed too,
//! so `cargo test` exercises every target without a nightly toolchain. Each finding also has a
//! named test of the behaviour it broke.
//!
//! | input | what it found | fixed in |
//! | --- | --- | --- |
//! | `wire_decode/deeply-nested-value-overflows-stack` | stack overflow decoding nested values | `core/src/value.rs` |
//! | `sim_scenario/lost-ack-pins-log-until-next-write` | a lost ack pinned the log forever | `core/src/replica/mod.rs` |
//! | `engine_inputs/out-of-order-shared-change-stamp-not-persisted` | clock not persisted with merged changes | `core/src/replica/shared.rs` |
//! | `engine_inputs/refused-page-leaves-version-vector-ahead-of-storage` | partial apply of a refused page | `core/src/replica/shared.rs` |
//! | `sim_scenario/late-join-sponsor-crashes-mid-command` | simulator started a joiner whose addition was lost | `tests/src/world.rs` |
//! | `engine_inputs/restart-after-observing-an-owned-stamp` | harness invariant too strong across restarts | `tests/src/fuzz.rs` |

use hybridsync_core::{
    decode, encode_frame, ChangeKind, CodecError, Command, CommandId, Config, FrameDecoder,
    FrameError, Hlc, Input, Instant, MemStore, ModelRegistry, Now, Output, Replica, Restored,
    SharedChange, SyncMessage, Value,
};
use hybridsync_sim::cluster::Cluster;
use hybridsync_sim::{device, fuzz, run_seed, SimConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("wire_decode", fuzz::wire_decode),
    ("frame_decoder", fuzz::frame_decoder),
    ("engine_inputs", fuzz::engine_inputs),
    ("sim_scenario", fuzz::sim_scenario),
];

/// The files of `dir` whose names start with `prefix`, sorted.
fn inputs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `f` on a thread with a 2 MiB stack (a tokio worker's), so stack exhaustion shows.
fn on_small_stack(name: String, f: impl FnOnce() + Send + 'static) {
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn");
    assert!(handle.join().is_ok(), "{name} failed");
}

fn replay(root: &Path, prefix: &str) -> usize {
    let mut n = 0;
    for (target, run) in TARGETS {
        for path in inputs(&root.join(target), prefix) {
            let data = std::fs::read(&path).expect("readable input");
            on_small_stack(format!("{target} {}", path.display()), move || run(&data));
            n += 1;
        }
    }
    n
}

#[test]
fn committed_fuzz_findings_pass_their_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions");
    assert!(replay(&root, "") >= 5, "the committed findings are missing");
}

#[test]
fn seed_corpus_passes_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    assert!(replay(&root, "seed-") >= 4, "the seed corpus is missing");
}

// ------------------------------------------------------------------ named findings

/// `wire_decode` finding: postcard has no recursion limit, so a frame of nested one-element
/// lists inside a shared change's field (100 KB, 50 000 levels) overflowed the decoding
/// thread's stack and aborted the whole process. Now a typed decode error.
#[test]
fn deeply_nested_value_in_a_frame_is_a_typed_error_not_a_stack_overflow() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-regressions/wire_decode/deeply-nested-value-overflows-stack");
    let body = std::fs::read(path).expect("committed input");
    on_small_stack("nested".into(), move || {
        assert!(matches!(decode(&body), Err(CodecError::Malformed(_))));
        let mut frame = u32::try_from(body.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        frame.extend_from_slice(&body);
        let mut d = FrameDecoder::default();
        d.push(&frame);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::Codec(CodecError::Malformed(_)))
        ));
        // A decoded message never nests deeper than the limit, so it re-encodes and decodes.
        let shallow = SyncMessage::Error(hybridsync_core::ErrorReply {
            request_id: None,
            code: hybridsync_core::ErrorCode::BadFrame,
            message: String::new(),
        });
        d = FrameDecoder::default();
        d.push(&encode_frame(&shallow));
        assert_eq!(d.next_message().ok().flatten(), Some(shallow));
    });
}

/// `sim_scenario` finding (seeded world, 3 peers, 8% loss, nothing else): an
/// `AckSharedChanges` lost on the network was never repaired. Acks are only sent when new
/// entries arrive or on connect, so the log stayed pinned until the next shared write and the
/// run never reached quiescence. Now the periodic summary (`Heartbeat`, whose version vector is
/// the sender's durable, cumulative state) counts as an ack from its authenticated sender.
#[test]
fn lost_ack_is_repaired_by_the_next_heartbeat_and_the_log_is_pruned() {
    let (a, b) = (device(0), device(1));
    let mut cl = Cluster::new(2);
    // b acks at its next tick instead of after the debounce, so the test can drop that ack.
    let mut cfg = Cluster::config(b);
    cfg.ack_delay = Duration::ZERO;
    cl.add_with(b, Restored::bootstrap([a, b]), cfg);
    cl.connect(a, b);
    cl.settle();
    assert!(cl.tag(a, 1, ChangeKind::Insert, &[("name", 1)]));
    assert!(cl.deliver(0), "the change reaches b");
    cl.input(b, hybridsync_core::Input::Tick);
    let ack = cl
        .in_flight
        .iter()
        .position(|m| {
            m.from == b
                && matches!(
                    m.msg(),
                    Some(SyncMessage::AckSharedChanges(hybridsync_core::Ack { .. }))
                )
        })
        .expect("b acked");
    cl.drop_message(ack);
    cl.settle();
    let state = cl.member(a).map(|m| m.store.state()).expect("a");
    assert!(
        state.log.is_empty(),
        "log still pinned: {:?}",
        state.log.keys()
    );
    assert_eq!(state.horizon.get(a), 1);
    cl.check_converged(&[a, b]).expect("converged");
}

/// `sim_scenario` finding (seeded world, 2 peers, crashes, a late join): the sponsor crashed in
/// the middle of its `AddMember` step, before the change was durable, yet the simulator started
/// the joiner as a member and expected it in every member set. A simulator bug, not an engine
/// one: the join now retries until the addition is durable (and when no member is up).
#[test]
fn late_join_retries_when_its_sponsor_crashes_before_the_addition_is_durable() {
    let mut cfg = SimConfig::calm(2, 0);
    cfg.loss = 0.01;
    cfg.reorder = 0.21;
    cfg.crashes = true;
    cfg.late_join = true;
    // The seed that found it no longer draws the same world (the simulator's world grew), so
    // look for seeds that lose a join to a crash: there must be some, and each must pass.
    let mut lost = 0;
    for seed in 0..400 {
        let report = run_seed(&cfg, seed);
        if report.stats.contains_key("joins_lost_to_crash") {
            lost += 1;
            assert!(report.passed(), "seed {seed}: {:#?}", report.failures);
            assert_eq!(report.stats.get("joins"), Some(&1), "seed {seed}");
        }
    }
    assert!(lost > 0, "no seed lost a join to a crash");
}

/// Drains `r`, executing storage on `store` and feeding read completions back.
fn drain(r: &mut Replica, store: &mut MemStore, now: Now) {
    loop {
        let mut done = Vec::new();
        while let Some(o) = r.poll_output() {
            if let Output::Storage(cmd) = o {
                done.extend(store.execute(cmd));
            }
        }
        store.sync();
        if done.is_empty() {
            return;
        }
        for d in done {
            r.handle(now, Input::Storage(d));
        }
    }
}

/// `engine_inputs` finding: a shared change applied out of order (merged into its record but
/// not logged, because earlier changes of its origin were missing) moved the clock forward, but
/// only a logged change persisted the clock. After a restart the replica stamped a local edit
/// below the register it overwrote, and the edit lost to the older remote value. A change
/// above a gap is no longer applied at all (it could never be passed on); the property stays:
/// whatever remote value a replica stored, its next local edit after a restart beats it.
#[test]
fn local_edit_after_a_restart_beats_an_out_of_order_change_it_had_stored() {
    let (me, b) = (device(0), device(1));
    let t0 = 1_750_000_000_000;
    let now = Now::new(Instant::ZERO, t0);
    let config = Config::new(me, ModelRegistry::spacedrive());
    let mut store = MemStore::new();
    let mut r = Replica::new(config.clone(), Restored::bootstrap([me, b]), now);
    r.handle(now, Input::PeerUp { peer: b });
    drain(&mut r, &mut store, now);
    // b's clock is a minute ahead (within the drift bound); seq 3 arrives before 1 and 2.
    let remote = |seq: u64| SharedChange {
        origin: b,
        seq,
        hlc: Hlc::new(t0 + 60_000, seq as u32, b),
        model: "tag".into(),
        record: uuid::Uuid::from_u128(9),
        kind: ChangeKind::Insert,
        fields: [("name".to_owned(), Value::from("remote"))].into(),
    };
    r.handle(
        now,
        Input::Message {
            from: b,
            msg: SyncMessage::SharedChange(remote(3)),
        },
    );
    drain(&mut r, &mut store, now);
    let key = ("tag".to_owned(), uuid::Uuid::from_u128(9));
    assert!(
        !store.state().shared.contains_key(&key),
        "a change above a gap is not applied"
    );
    // Its predecessors arrive (catch-up brings them in order): now it is stored.
    r.handle(
        now,
        Input::Message {
            from: b,
            msg: SyncMessage::SharedChangeBatch(vec![remote(1), remote(2), remote(3)]),
        },
    );
    drain(&mut r, &mut store, now);
    assert!(store.state().shared.contains_key(&key));
    // Restart from the store, then edit the record the user now sees.
    let mut r = Replica::new(config, store.restored(), now);
    drain(&mut r, &mut store, now);
    r.handle(
        now,
        Input::Command {
            id: CommandId(1),
            cmd: Command::UpdateShared {
                model: "tag".into(),
                uuid: uuid::Uuid::from_u128(9),
                fields: [("name".to_owned(), Value::from("local"))].into(),
            },
        },
    );
    drain(&mut r, &mut store, now);
    let record = store
        .state()
        .shared
        .get(&("tag".to_owned(), uuid::Uuid::from_u128(9)))
        .and_then(|rec| rec.visible())
        .expect("visible");
    assert_eq!(record.get("name"), Some(&Value::from("local")));
}

/// `engine_inputs` finding: a log page (or pushed batch) whose *later* change broke a rule
/// (origin differing from its stamp's device) was refused only when the loop reached it: the
/// earlier changes had already advanced the in-memory version vector, but their storage
/// writes were never emitted. The replica then advertised (and acked) changes it did not have,
/// so peers could prune them. Now the whole message is checked before anything is applied.
#[test]
fn batch_with_one_spoofed_change_applies_none_of_it() {
    let (me, b, c) = (device(0), device(1), device(2));
    let now = Now::new(Instant::ZERO, 1_750_000_000_000);
    let mut store = MemStore::new();
    let config = Config::new(me, ModelRegistry::spacedrive());
    let mut r = Replica::new(config, Restored::bootstrap([me, b, c]), now);
    r.handle(now, Input::PeerUp { peer: b });
    drain(&mut r, &mut store, now);
    let change = |seq: u64, stamp_device| SharedChange {
        origin: b,
        seq,
        hlc: Hlc::new(now.wall_ms, 0, stamp_device),
        model: "tag".into(),
        record: uuid::Uuid::from_u128(seq.into()),
        kind: ChangeKind::Insert,
        fields: Default::default(),
    };
    let before = store.state().content_digest();
    r.handle(
        now,
        Input::Message {
            from: b,
            msg: SyncMessage::SharedChangeBatch(vec![change(1, b), change(2, c)]),
        },
    );
    let mut refused = false;
    while let Some(o) = r.poll_output() {
        match o {
            Output::Disconnect { peer, reason } => {
                refused |= peer == b && reason == hybridsync_core::Refusal::OriginMismatch;
            }
            Output::Storage(cmd) => assert!(cmd.read_id().is_some(), "wrote {cmd:?}"),
            _ => {}
        }
    }
    assert!(refused);
    assert_eq!(r.version_vector().get(b), 0, "nothing of the batch counted");
    assert_eq!(store.state().content_digest(), before);
}
