//! The world users live in, one behaviour each: devices paired one by one (never a full mesh),
//! joiners that know only their sponsor, a frame limit, and devices that do not know a model
//! yet. Each test names the property the engine must keep there.

use hybridsync_core::{
    ChangeKind, Command, CommandError, Config, DeviceId, Event, ModelKind, ModelRegistry, Restored,
    Value,
};
use hybridsync_sim::cluster::{owned_uuid, tag_uuid, Cluster};
use hybridsync_sim::device;
use std::collections::BTreeSet;

fn members(cl: &Cluster, id: DeviceId) -> BTreeSet<DeviceId> {
    cl.member(id)
        .and_then(|m| m.replica.as_ref())
        .map(|r| r.members().collect())
        .unwrap_or_default()
}

fn log_len(cl: &Cluster, id: DeviceId) -> usize {
    cl.member(id).map_or(0, |m| m.store.state().log.len())
}

fn failure(cl: &Cluster, id: DeviceId) -> Option<CommandError> {
    cl.member(id)?.events.iter().rev().find_map(|e| match e {
        Event::CommandFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// A small frame, so that large writes are cheap to make.
fn small_frame(id: DeviceId) -> Config {
    let mut c = Cluster::config(id);
    c.max_frame = 64 * 1024;
    c
}

/// Two devices with small frames, connected; a third one, `c`, that will join later.
fn small_frame_pair() -> (Cluster, DeviceId, DeviceId, DeviceId) {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(2);
    for id in [a, b] {
        cl.add_with(id, Restored::bootstrap([a, b]), small_frame(id));
    }
    cl.connect(a, b);
    (cl, a, b, c)
}

/// Once `a`'s log is pruned, `c` joins through `a` and, below its pruned horizon, takes a
/// snapshot: it must end with every record, in messages that each fit a frame.
fn newcomer_takes_a_snapshot(cl: &mut Cluster, a: DeviceId, b: DeviceId, c: DeviceId) {
    cl.settle();
    assert_eq!(log_len(cl, a), 0, "pruned: a newcomer must take a snapshot");
    assert!(cl.command(a, Command::AddMember(c)));
    cl.add_with(c, Restored::bootstrap([c, a]), small_frame(c));
    cl.connect(a, c);
    cl.settle();
    assert_eq!(cl.oversized, [], "no message above the frame limit");
    cl.check_converged(&[a, b, c]).expect("c has every record");
}

/// The models of the previous release: no `volume`, no `album`.
fn previous_release(id: DeviceId) -> Config {
    let mut c = Cluster::config(id);
    c.models = ModelRegistry::new()
        .with("location", ModelKind::DeviceOwned)
        .with("entry", ModelKind::DeviceOwned)
        .with("tag", ModelKind::Shared)
        .with("user_metadata", ModelKind::Shared);
    c
}

#[test]
fn write_beyond_the_frame_is_refused_and_never_stops_its_owners_stream() {
    let (a, b) = (device(0), device(1));
    let mut cl = Cluster::new(2);
    for id in [a, b] {
        cl.add_with(id, Restored::bootstrap([a, b]), small_frame(id));
    }
    let limit = small_frame(a).max_write_bytes();
    // The largest value that fits is accepted; one byte more is refused up front.
    let fits = limit - 48 - "entry".len();
    assert!(cl.put(a, 0, &vec![1; fits]));
    assert!(!cl.put(a, 1, &vec![2; fits + 1]));
    assert!(matches!(
        failure(&cl, a),
        Some(CommandError::TooLarge { limit: l, .. }) if l == limit
    ));
    for k in 2..52 {
        assert!(cl.put(a, k, b"small"));
    }
    // A device that comes later gets every accepted write, the largest included.
    cl.connect(a, b);
    cl.settle();
    assert_eq!(cl.oversized, [], "no message above the frame limit");
    cl.check_converged(&[a, b])
        .expect("b has every accepted write");
    assert_eq!(cl.owned_view(b).len(), 51);
}

#[test]
fn reinserted_large_shared_record_travels_by_snapshot() {
    let (mut cl, a, b, c) = small_frame_pair();
    // Two large fields, each alone well under the limit, together above the frame: the
    // second insert hides the first field; the application only ever sees one of them.
    let big = small_frame(a).max_frame * 6 / 10;
    for (field, byte) in [("blob", 1u8), ("cover", 2u8)] {
        let fields = [(field.to_owned(), Value::Bytes(vec![byte; big]))].into();
        assert!(cl.command(
            a,
            Command::InsertShared {
                model: "tag".into(),
                uuid: tag_uuid(1),
                fields,
            },
        ));
    }
    newcomer_takes_a_snapshot(&mut cl, a, b, c);
}

#[test]
fn shared_record_larger_than_a_frame_travels_by_snapshot_in_parts() {
    let (mut cl, a, b, c) = small_frame_pair();
    // Three large fields, each written by its own update (each change well under the write
    // limit), all visible: the record the application sees is larger than a frame.
    let big = small_frame(a).max_frame * 6 / 10;
    let tag = tag_uuid(1);
    let insert = [("name".to_owned(), Value::from("holiday"))].into();
    assert!(cl.command(
        a,
        Command::InsertShared {
            model: "tag".into(),
            uuid: tag,
            fields: insert,
        },
    ));
    for (field, byte) in [("blob", 1u8), ("cover", 2u8), ("thumb", 3u8)] {
        let fields = [(field.to_owned(), Value::Bytes(vec![byte; big]))].into();
        assert!(cl.command(
            a,
            Command::UpdateShared {
                model: "tag".into(),
                uuid: tag,
                fields,
            },
        ));
    }
    newcomer_takes_a_snapshot(&mut cl, a, b, c);
}

#[test]
fn acks_cross_relays_so_every_log_prunes_in_a_chain() {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(3);
    // Paired a - b and b - c; a and c never meet.
    cl.connect(a, b);
    cl.connect(b, c);
    for k in 0..5 {
        assert!(cl.tag(a, k, ChangeKind::Insert, &[("name", k as i64)]));
        assert!(cl.tag(c, 10 + k, ChangeKind::Insert, &[("name", k as i64)]));
        assert!(cl.tag(b, 20 + k, ChangeKind::Insert, &[("name", k as i64)]));
    }
    cl.settle();
    cl.check_converged(&[a, b, c]).expect("converged");
    for id in [a, b, c] {
        assert_eq!(log_len(&cl, id), 0, "{id}: every member holds every change");
    }
}

#[test]
fn joiner_through_one_sponsor_learns_every_bootstrap_member() {
    let (a, b, c) = (device(0), device(1), device(2));
    // a and b founded the library from a shared bootstrap list, without any `AddMember`.
    let mut cl = Cluster::new(2);
    cl.connect(a, b);
    cl.settle();
    // c is paired with a only, and knows only itself and a. It catches up from a's log (which
    // c pins until it acks), where b never appears: b is a bootstrap member.
    assert!(cl.command(a, Command::AddMember(c)));
    assert!(cl.tag(b, 1, ChangeKind::Insert, &[("name", 1)]));
    cl.deliver_all();
    cl.add(c, Restored::bootstrap([c, a]));
    cl.connect(a, c);
    cl.settle();
    assert_eq!(members(&cl, c), BTreeSet::from([a, b, c]));
    // So c accepts b when they pair later.
    cl.connect(b, c);
    cl.settle();
    assert!(
        cl.connected(b, c),
        "c refused a member it was never told of"
    );
    cl.check_converged(&[a, b, c]).expect("converged");
}

#[test]
fn records_of_a_model_a_relay_does_not_know_are_kept_and_relayed() {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(3);
    // b still runs the previous release; a and c know `volume` and `album`.
    cl.add_with(b, Restored::bootstrap([a, b, c]), previous_release(b));
    cl.connect(a, b);
    assert!(cl.command(
        a,
        Command::PutOwned {
            model: "volume".into(),
            uuid: owned_uuid(a, 1),
            data: b"disk".to_vec(),
        },
    ));
    assert!(cl.put(a, 2, b"after the volume"));
    assert!(cl.command(
        a,
        Command::InsertShared {
            model: "album".into(),
            uuid: tag_uuid(7),
            fields: [("name".to_owned(), Value::from("summer"))].into(),
        },
    ));
    assert!(cl.tag(a, 8, ChangeKind::Insert, &[("name", 8)]));
    cl.settle();
    // a leaves for good; c, paired with b only, gets everything from b.
    cl.crash(a);
    cl.connect(b, c);
    cl.settle();
    cl.check_converged(&[b, c])
        .expect("b kept and relayed what it cannot read");
}

#[test]
fn real_time_changes_cross_a_relay_without_waiting_for_anti_entropy() {
    let (a, b, c) = (device(0), device(1), device(2));
    let mut cl = Cluster::new(3);
    cl.connect(a, b);
    cl.connect(b, c);
    cl.settle();
    assert!(cl.put(a, 1, b"now"));
    assert!(cl.tag(a, 2, ChangeKind::Insert, &[("name", 2)]));
    // Deliver what is in flight, with no timer firing: no summary, no catch-up round.
    cl.deliver_all();
    assert_eq!(
        cl.owned_view(c)
            .get(&(a, "entry".to_owned(), owned_uuid(a, 1)))
            .map(|v| v.1.clone()),
        Some(Some(b"now".to_vec()))
    );
    assert_eq!(
        cl.tag_fields(c, 2),
        Some([("name".to_owned(), Value::Int(2))].into())
    );
}
