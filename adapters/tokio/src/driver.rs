//! The run loop: one tokio task that owns the [`Replica`], feeds it inputs and performs its
//! outputs. No protocol logic lives here.
//!
//! # Write-ahead and group commit
//!
//! The ordering is core's [`WriteAhead`] (the simulator runs the same one): outputs are
//! drained into it after every `handle`. Storage commands accumulate into the next batch;
//! every other output (sends, disconnects, events) is *deferred* behind the storage commands
//! emitted before it. At most one batch is in flight on the storage thread: while it commits,
//! the engine keeps running and the commands of later steps accumulate into the next batch
//! (group commit across steps). When a batch is durable, the actions deferred behind it are
//! performed in emission order, then its read completions are fed back as
//! [`Input::Storage`], then the messages (sends, disconnects) emitted while it was in flight
//! but before any newer storage command (they wait for no other write), then the next batch
//! starts. An action with no un-committed write before it is performed at once. So a `Send`
//! is never performed before every write emitted before it is durable, and a message the
//! engine emits *before* the writes of its step (the next catch-up request, ahead of storing
//! a page) goes out while those writes commit. Events always wait for the writes of the step
//! that emitted them: a command's completion (`CommandDone`) or a `RecordChanged` is reported
//! only once the write is durable.

use crate::failure::StorageFailure;
use crate::node::{NodeError, Progress, Status};
use crate::storage::{BatchResult, Job};
use crate::transport::{EventSource, InboundPermit, Transport, TransportEvent};
use hybridsync_core::WriteAhead;
use hybridsync_core::{
    Command, CommandError, CommandId, DeviceId, Event, Input, Instant, Now, Output, Replica, Stream,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Above this many queued storage commands the loop stops taking transport input until the
/// storage thread catches up (backpressure reaches peers through the transport).
const MAX_QUEUED_COMMANDS: usize = 16 * 1024;

/// A request from a [`crate::Node`] handle.
pub(crate) enum Request {
    /// Run a command; reply when it is done (durably) or failed.
    Command {
        cmd: Command,
        reply: oneshot::Sender<Result<(), CommandError>>,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    },
    /// A snapshot of the engine's state.
    Status(oneshot::Sender<Status>),
    /// Flush, stop the transport, hand the storage backend back.
    Shutdown(oneshot::Sender<()>),
}

/// Which catch-up a pending fetch command follows, to route its progress.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FetchKey {
    Owned { peer: DeviceId, owner: DeviceId },
    Shared { peer: DeviceId },
}

pub(crate) struct Pending {
    reply: oneshot::Sender<Result<(), CommandError>>,
    progress: Option<(FetchKey, mpsc::UnboundedSender<Progress>)>,
}

/// Maps the engine's monotonic microseconds to tokio time and reads the wall clock.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    start: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            start: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Now {
        let mono = self.start.elapsed().as_micros();
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Now::new(Instant(u64::try_from(mono).unwrap_or(u64::MAX)), wall_ms)
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.start + Duration::from_micros(at.as_micros())
    }
}

/// How many requests from [`crate::Node`] handles may wait for the run loop: past it, a
/// handle's call waits (backpressure on the application instead of an unbounded queue).
pub(crate) const REQUEST_QUEUE: usize = 1024;

/// The run loop: the engine, its clock, the transport's events, the storage thread's results
/// and the handles' requests, driven by [`Driver::run`].
pub(crate) struct Driver<S> {
    replica: Replica,
    clock: Clock,
    transport: Box<dyn Transport>,
    source: EventSource,
    requests: mpsc::Receiver<Request>,
    jobs: std_mpsc::Sender<Job<S>>,
    batch_done: mpsc::UnboundedReceiver<BatchResult>,
    events: broadcast::Sender<Event>,
    /// The write-ahead ordering of the engine's outputs.
    wal: WriteAhead,
    /// Peers the transport reported up and the engine has not refused since.
    up: BTreeSet<DeviceId>,
    /// The member set the transport was last told ([`Transport::set_members`]).
    members: BTreeSet<DeviceId>,
    pending: BTreeMap<CommandId, Pending>,
    next_command: u64,
    /// Inbound bytes of messages the engine took whose storage commands are not committed yet,
    /// with the number of the batch that commits them: until then, what the message caused
    /// (records queued for storage, sends and events behind them) is held in memory, so its
    /// bytes stay taken from the transport's budget.
    held: VecDeque<(u64, InboundPermit)>,
    /// Storage batches started and committed.
    batches_started: u64,
    batches_done: u64,
}

/// What a [`Driver`] is built from: the parts [`crate::NodeBuilder::start`] set up.
pub(crate) struct DriverParts<S> {
    pub(crate) replica: Replica,
    pub(crate) clock: Clock,
    pub(crate) transport: Box<dyn Transport>,
    pub(crate) source: EventSource,
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) jobs: std_mpsc::Sender<Job<S>>,
    pub(crate) batch_done: mpsc::UnboundedReceiver<BatchResult>,
    pub(crate) events: broadcast::Sender<Event>,
    /// The member set the transport was told at start.
    pub(crate) members: BTreeSet<DeviceId>,
}

impl<S> Driver<S> {
    /// A run loop over `parts`, with nothing pending and no peer up.
    pub(crate) fn new(parts: DriverParts<S>) -> Self {
        Driver {
            replica: parts.replica,
            clock: parts.clock,
            transport: parts.transport,
            source: parts.source,
            requests: parts.requests,
            jobs: parts.jobs,
            batch_done: parts.batch_done,
            events: parts.events,
            wal: WriteAhead::new(),
            up: BTreeSet::new(),
            members: parts.members,
            pending: BTreeMap::new(),
            next_command: 0,
            held: VecDeque::new(),
            batches_started: 0,
            batches_done: 0,
        }
    }
}

impl<S: Send + 'static> Driver<S> {
    /// Runs until shutdown (or until every handle is dropped, or storage fails).
    pub(crate) async fn run(mut self) -> Result<(), NodeError> {
        // `Replica::new` may have emitted storage commands (bootstrap members).
        self.drain();
        let mut transport_open = true;
        let mut shutdown_reply = None;
        let mut failure = None;
        loop {
            let deadline = self
                .replica
                .poll_timeout()
                .map(|t| self.clock.deadline(t))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let accept_input = transport_open && self.wal.queued_commands() < MAX_QUEUED_COMMANDS;
            tokio::select! {
                biased;
                Some(result) = self.batch_done.recv() => {
                    if let Err(e) = self.on_batch_done(result) {
                        // Nothing queued behind the failed batch is performed.
                        failure = Some(e);
                        break;
                    }
                }
                req = self.requests.recv() => match req {
                    None => break,
                    Some(Request::Shutdown(reply)) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                    Some(req) => self.on_request(req),
                },
                ev = self.source.recv_held(), if accept_input => match ev {
                    Some((ev, bytes)) => {
                        self.on_transport(ev);
                        if let Some(bytes) = bytes {
                            self.hold(bytes);
                        }
                    }
                    None => transport_open = false,
                },
                () = tokio::time::sleep_until(deadline) => self.handle(Input::Tick),
            }
        }
        let result = match failure {
            Some(e) => {
                self.wal.abandon();
                let _ = self.finish().await;
                Err(e)
            }
            None => self.finish().await,
        };
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
        result
    }

    /// Commits everything queued, then stops the transport.
    async fn finish(&mut self) -> Result<(), NodeError> {
        let mut result = Ok(());
        while self.wal.is_committing() {
            match self.batch_done.recv().await {
                Some(r) => {
                    if let Err(e) = self.on_batch_done(r) {
                        result = Err(e);
                        break;
                    }
                }
                None => {
                    result = Err(NodeError::Storage(StorageFailure::stopped()));
                    break;
                }
            }
        }
        self.transport.shutdown().await;
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p
                .reply
                .send(Err(CommandError::Interrupted("node shut down")));
        }
        result
    }

    fn handle(&mut self, input: Input) {
        let now = self.clock.now();
        self.replica.handle(now, input);
        self.drain();
    }

    /// Takes every output of the engine into the queues, then flushes what can go.
    fn drain(&mut self) {
        self.collect();
        self.flush();
        self.release_held();
    }

    /// Takes the engine's outputs into the write-ahead queues. Two decisions take effect at
    /// once, before the outputs are performed: a refused peer (`Disconnect`) is no longer up,
    /// so what it had already queued never reaches the engine (it would be re-admitted as a
    /// member that "connected" again); and a change of the member set is handed to the
    /// transport, so it stops dialing (and closes) a removed device.
    fn collect(&mut self) {
        let mut membership = false;
        while let Some(out) = self.replica.poll_output() {
            match &out {
                Output::Disconnect { peer, .. } => {
                    self.up.remove(peer);
                }
                Output::Event(Event::MembershipChanged { .. }) => membership = true,
                _ => {}
            }
            self.wal.push(out);
        }
        if membership {
            let members: BTreeSet<DeviceId> = self.replica.members().collect();
            if members != self.members {
                self.transport.set_members(&members);
                self.members = members;
            }
        }
    }

    /// Performs what waits for nothing more, then starts the next batch.
    fn flush(&mut self) {
        let flush = self.wal.flush();
        self.perform(flush.actions);
        let Some(batch) = flush.batch else {
            return;
        };
        self.batches_started += 1;
        if self.jobs.send(Job::Batch(batch)).is_err() {
            tracing::error!("the storage thread is gone; actions dropped");
            self.wal.abandon();
        }
    }

    /// Keeps a handled message's inbound bytes until the batch holding its storage commands
    /// (the one committing, or the next if commands are queued behind it) is committed.
    fn hold(&mut self, bytes: InboundPermit) {
        if self.wal.is_idle() {
            return;
        }
        let batch = self.batches_started + u64::from(self.wal.queued_commands() > 0);
        self.held.push_back((batch, bytes));
    }

    /// Gives back the inbound bytes of messages whose storage commands are committed.
    fn release_held(&mut self) {
        if self.wal.is_idle() {
            self.held.clear();
            return;
        }
        while self
            .held
            .front()
            .is_some_and(|(batch, _)| *batch <= self.batches_done)
        {
            self.held.pop_front();
        }
    }

    fn on_batch_done(&mut self, result: BatchResult) -> Result<(), NodeError> {
        self.batches_done += 1;
        let actions = self.wal.committed();
        let reads = match result {
            Ok(reads) => reads,
            Err(e) => {
                tracing::error!(error = %e, "storage batch failed; stopping the node");
                return Err(NodeError::Storage(e));
            }
        };
        self.perform(actions);
        let now = self.clock.now();
        for done in reads {
            self.replica.handle(now, Input::Storage(done));
        }
        self.drain();
        Ok(())
    }

    fn perform(&mut self, actions: Vec<Output>) {
        for action in actions {
            match action {
                Output::Send { to, msg } => {
                    tracing::trace!(to = %to, kind = msg.kind(), "send");
                    self.transport.send(to, msg);
                }
                Output::Disconnect { peer, reason } => {
                    tracing::warn!(peer = %peer, %reason, "disconnecting peer");
                    self.transport.disconnect(peer, reason);
                }
                Output::Event(e) => self.on_event(e),
                // The write-ahead ordering never hands a storage command back as an action.
                Output::Storage(_) => {}
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match &e {
            Event::CommandDone(id) => {
                if let Some(p) = self.pending.remove(id) {
                    let _ = p.reply.send(Ok(()));
                }
            }
            Event::CommandFailed { id, reason } => {
                if let Some(p) = self.pending.remove(id) {
                    let _ = p.reply.send(Err(reason.clone()));
                }
            }
            Event::CatchUpProgress {
                peer,
                stream,
                applied,
                position,
                target,
            } => {
                let key = match stream {
                    Stream::Owned(owner) => FetchKey::Owned {
                        peer: *peer,
                        owner: *owner,
                    },
                    Stream::SharedLog | Stream::SharedSnapshot => FetchKey::Shared { peer: *peer },
                };
                for p in self.pending.values() {
                    if let Some((k, tx)) = &p.progress {
                        if *k == key {
                            let _ = tx.send(Progress {
                                peer: *peer,
                                stream: *stream,
                                applied: *applied,
                                position: *position,
                                target: *target,
                            });
                        }
                    }
                }
            }
            Event::PeerMisbehaved { peer, reason } => {
                tracing::warn!(peer = %peer, %reason, "peer misbehaved");
            }
            _ => tracing::debug!(event = ?e, "event"),
        }
        // No subscriber is not an error.
        let _ = self.events.send(e);
    }

    fn on_transport(&mut self, ev: TransportEvent) {
        match ev {
            TransportEvent::PeerUp(peer) => {
                tracing::debug!(peer = %peer, "peer up");
                self.up.insert(peer);
                self.handle(Input::PeerUp { peer });
            }
            TransportEvent::PeerDown(peer) => {
                tracing::debug!(peer = %peer, "peer down");
                // A peer the engine refused is already gone for it (and no longer up here).
                if self.up.remove(&peer) {
                    self.handle(Input::PeerDown { peer });
                }
            }
            TransportEvent::Message { from, msg } => {
                if self.up.contains(&from) {
                    tracing::trace!(from = %from, kind = msg.kind(), "recv");
                    self.handle(Input::Message { from, msg });
                } else {
                    tracing::debug!(from = %from, kind = msg.kind(), "message from a peer that is not up: dropped");
                }
            }
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Command {
                cmd,
                reply,
                progress,
            } => {
                self.next_command += 1;
                let id = CommandId(self.next_command);
                let key = match &cmd {
                    Command::RequestState { peer, owner, .. } => Some(FetchKey::Owned {
                        peer: *peer,
                        owner: *owner,
                    }),
                    Command::RequestSharedChanges { peer, .. } => {
                        Some(FetchKey::Shared { peer: *peer })
                    }
                    _ => None,
                };
                let progress = key.zip(progress);
                self.pending.insert(id, Pending { reply, progress });
                self.handle(Input::Command { id, cmd });
            }
            Request::Status(reply) => {
                let _ = reply.send(Status::of(&self.replica, self.up.iter().copied()));
            }
            Request::Shutdown(_) => {}
        }
    }
}
