//! Fuzz findings as regression tests.
//!
//! Every input a fuzz target failed on is committed under `tests/fuzz-regressions/<target>/`
//! and replayed here through the target's body (`hybridsync_sim::fuzz`), with the same checks
//! the fuzzer ran. The committed seed corpus (`fuzz/corpus/<target>/seed-*`) is replayed too,
//! so `cargo test` exercises every target without a nightly toolchain. Each finding also has a
//! named test of the behaviour it broke.

use hybridsync_core::{
    decode, encode_frame, ChangeKind, CodecError, FrameDecoder, FrameError, Restored, SyncMessage,
};
use hybridsync_sim::cluster::Cluster;
use hybridsync_sim::{device, fuzz};
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
    assert!(replay(&root, "") >= 2, "the committed findings are missing");
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
        let shallow = SyncMessage::Error {
            request_id: None,
            code: hybridsync_core::ErrorCode::BadFrame,
            message: String::new(),
        };
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
        .position(|m| m.from == b && matches!(m.msg(), Some(SyncMessage::AckSharedChanges { .. })))
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
