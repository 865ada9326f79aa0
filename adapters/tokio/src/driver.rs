//! The run loop: one tokio task that owns the [`Replica`], feeds it inputs and performs its
//! outputs. No protocol logic lives here.
//!
//! # Write-ahead and group commit
//!
//! Outputs are drained after every `handle`. Storage commands accumulate into the next batch;
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

use crate::node::{NodeError, Progress, Status};
use crate::storage::{BatchResult, Job};
use crate::transport::{EventSource, Transport, TransportEvent};
use hybridsync_core::{
    Command, CommandError, CommandId, DeviceId, Event, Input, Instant, Now, Output, Refusal,
    Replica, StorageCommand, Stream, SyncMessage,
};
use std::collections::{BTreeMap, BTreeSet};
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

/// An output other than a storage command, performed once the writes before it are durable.
pub(crate) enum Action {
    Send { to: DeviceId, msg: SyncMessage },
    Disconnect { peer: DeviceId, reason: Refusal },
    Event(Event),
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

pub(crate) struct Driver<S> {
    pub(crate) replica: Replica,
    pub(crate) clock: Clock,
    pub(crate) transport: Box<dyn Transport>,
    pub(crate) source: EventSource,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
    pub(crate) jobs: std_mpsc::Sender<Job<S>>,
    pub(crate) batch_done: mpsc::UnboundedReceiver<BatchResult>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) in_flight: Option<Vec<Action>>,
    pub(crate) queued_commands: Vec<StorageCommand>,
    /// Sends and disconnects emitted after the batch in flight but before any queued command.
    pub(crate) ready_actions: Vec<Action>,
    /// Actions emitted after a queued command: they go with the next batch.
    pub(crate) queued_actions: Vec<Action>,
    pub(crate) up: BTreeSet<DeviceId>,
    pub(crate) pending: BTreeMap<CommandId, Pending>,
    pub(crate) next_command: u64,
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
            let accept_input = transport_open && self.queued_commands.len() < MAX_QUEUED_COMMANDS;
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
                ev = self.source.recv(), if accept_input => match ev {
                    Some(ev) => self.on_transport(ev),
                    None => transport_open = false,
                },
                () = tokio::time::sleep_until(deadline) => self.handle(Input::Tick),
            }
        }
        let result = match failure {
            Some(e) => {
                self.ready_actions.clear();
                self.queued_actions.clear();
                self.queued_commands.clear();
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
        while self.in_flight.is_some() {
            match self.batch_done.recv().await {
                Some(r) => {
                    if let Err(e) = self.on_batch_done(r) {
                        result = Err(e);
                        break;
                    }
                }
                None => {
                    result = Err(NodeError::Storage("the storage thread stopped".into()));
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
    }

    fn collect(&mut self) {
        while let Some(out) = self.replica.poll_output() {
            let action = match out {
                Output::Storage(cmd) => {
                    self.queued_commands.push(cmd);
                    continue;
                }
                Output::Send { to, msg } => Action::Send { to, msg },
                Output::Disconnect { peer, reason } => Action::Disconnect { peer, reason },
                Output::Event(e) => Action::Event(e),
            };
            // A message emitted before any queued command waits only for the batch in
            // flight, not for the next one. Events always wait for the writes of their step
            // (the engine reports a change before it emits its write), so the application
            // hears of nothing that is not durable yet.
            let message = matches!(action, Action::Send { .. } | Action::Disconnect { .. });
            if message && self.queued_commands.is_empty() {
                self.ready_actions.push(action);
            } else {
                self.queued_actions.push(action);
            }
        }
    }

    /// Performs the actions that wait for nothing but the batch in flight, then starts the
    /// next batch (or performs the queued actions if no command is pending before them).
    fn flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let ready = std::mem::take(&mut self.ready_actions);
        self.perform(ready);
        let actions = std::mem::take(&mut self.queued_actions);
        if self.queued_commands.is_empty() {
            self.perform(actions);
            return;
        }
        let batch = std::mem::take(&mut self.queued_commands);
        if self.jobs.send(Job::Batch(batch)).is_err() {
            tracing::error!("the storage thread is gone; actions dropped");
            return;
        }
        self.in_flight = Some(actions);
    }

    fn on_batch_done(&mut self, result: BatchResult) -> Result<(), NodeError> {
        let actions = self.in_flight.take().unwrap_or_default();
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

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    tracing::trace!(to = %to, kind = msg.kind(), "send");
                    self.transport.send(to, msg);
                }
                Action::Disconnect { peer, reason } => {
                    tracing::warn!(peer = %peer, %reason, "disconnecting peer");
                    self.transport.disconnect(peer, reason);
                }
                Action::Event(e) => self.on_event(e),
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
