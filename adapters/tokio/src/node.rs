//! [`Node`]: the async handle an application uses.

use crate::driver::{Clock, Driver, DriverParts, Request, REQUEST_QUEUE};
use crate::failure::StorageFailure;
use crate::storage::{Job, StorageWorker};
use crate::transport::{EventSink, Transport};
use hybridsync_core::{
    Command, CommandError, Config, DeviceId, Event, Hlc, OwnedRecord, Replica, Restored,
    StorageBackend, Stream, Value, VersionVector,
};
use hybridsync_core::{OwnedCursor, Page, RecordReader, SharedView};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{mpsc as std_mpsc, Arc};
use tokio::sync::{broadcast, mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Why a [`Node`] operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The engine refused the command (nothing changed).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The node has shut down (or its run loop stopped on an error).
    #[error("the node is not running")]
    Stopped,
    /// The storage backend failed; the node stopped (nothing after the failed batch was sent).
    /// The backend's error is the source (print the chain, e.g. with `{:#}` in `anyhow`).
    #[error("storage failed")]
    Storage(#[source] StorageFailure),
    /// A read of [`Node`]'s typed reads failed in the backend (a damaged row); the node keeps
    /// running. The backend's error is the source.
    #[error("read failed")]
    Read(#[source] StorageFailure),
    /// A shared write's values would take more memory decoded than peers accept for their
    /// size (a list dominated by nulls, a map of tiny entries): every peer would refuse the
    /// messages carrying them, so the write is refused here (nothing changed). See
    /// [`hybridsync_core::check_fields_decode`].
    #[error("the write's values take {excess} bytes decoded beyond what peers decode per encoded byte; at most {allowance}")]
    TooManyValues {
        /// What the values take beyond the budget for their size.
        excess: usize,
        /// The most allowed.
        allowance: usize,
    },
}

/// One page of a running catch-up, reported to the caller of [`Node::request_state`] or
/// [`Node::request_shared_changes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Who serves it.
    pub peer: DeviceId,
    /// Which stream.
    pub stream: Stream,
    /// Records or entries in this page.
    pub applied: usize,
    /// Device-owned: the watermark reached; shared: entries applied so far.
    pub position: u64,
    /// Device-owned: the head the peer announced, if known.
    pub target: Option<u64>,
}

/// A snapshot of the engine's state (see [`Node::status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This device.
    pub device: DeviceId,
    /// Peers the transport reports connected (and the engine has not refused since).
    pub connected: BTreeSet<DeviceId>,
    /// Peers the engine has a session with (connected members).
    pub peers: BTreeSet<DeviceId>,
    /// The library's member set.
    pub members: BTreeSet<DeviceId>,
    /// Per member: the watermark of its device-owned records (this device's own head for
    /// itself).
    pub watermarks: BTreeMap<DeviceId, u64>,
    /// The shared version vector.
    pub version_vector: VersionVector,
    /// The pruned horizon of the shared log.
    pub horizon: VersionVector,
    /// The last HLC issued or observed.
    pub hlc: Hlc,
    /// Whether a catch-up is running.
    pub fetching: bool,
}

impl Status {
    pub(crate) fn of(replica: &Replica, connected: impl Iterator<Item = DeviceId>) -> Self {
        let members: BTreeSet<DeviceId> = replica.members().collect();
        Status {
            device: replica.device(),
            connected: connected.collect(),
            peers: replica.peers().collect(),
            watermarks: members
                .iter()
                .map(|m| (*m, replica.watermark(*m)))
                .collect(),
            members,
            version_vector: replica.version_vector().clone(),
            horizon: replica.horizon().clone(),
            hlc: replica.hlc(),
            fetching: replica.is_fetching(),
        }
    }
}

/// A running catch-up started with [`Node::request_state`] or
/// [`Node::request_shared_changes`]: read its progress, then await its completion.
#[derive(Debug)]
pub struct Fetch {
    progress: mpsc::UnboundedReceiver<Progress>,
    done: oneshot::Receiver<Result<(), CommandError>>,
}

impl Fetch {
    /// The next page applied; `None` once the fetch is over (then call [`Fetch::finish`]).
    pub async fn next_progress(&mut self) -> Option<Progress> {
        // The run loop drops the progress sender when the command completes.
        self.progress.recv().await
    }

    /// Waits until the fetch is done: `Ok` once every page is applied and durable.
    pub async fn finish(self) -> Result<(), NodeError> {
        match self.done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Command(e)),
            Err(_) => Err(NodeError::Stopped),
        }
    }
}

/// Configures and starts a [`Node`].
#[derive(Debug)]
pub struct NodeBuilder {
    config: Config,
    bootstrap: Vec<DeviceId>,
    events: broadcast::Sender<Event>,
}

impl NodeBuilder {
    /// The member set a device starts with when its database holds none yet (a new device or
    /// the founder of a library; pairing tells it out of band). Ignored when storage already
    /// has members.
    pub fn bootstrap_members(mut self, members: impl IntoIterator<Item = DeviceId>) -> Self {
        self.bootstrap = members.into_iter().collect();
        self
    }

    /// Capacity of the event broadcast channel (default 4096). A subscriber that falls further
    /// behind misses events (`RecvError::Lagged`). Call it before [`NodeBuilder::subscribe`].
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.events = broadcast::channel(capacity.max(1)).0;
        self
    }

    /// Subscribes to events before the node starts, so none is missed (the first connections
    /// and catch-ups can complete before `start` returns).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Loads the durable state from `storage` (on the storage thread), starts the transport
    /// and the run loop. Must be called inside a tokio runtime.
    pub async fn start<S, T>(self, storage: S, mut transport: T) -> Result<Node<S>, NodeError>
    where
        S: StorageBackend + Send + 'static,
        T: Transport,
    {
        let (worker, mut restored, batch_done) = StorageWorker::start(storage)
            .await
            .map_err(NodeError::Storage)?;
        if restored.members.is_empty() {
            restored.members = Restored::bootstrap(self.bootstrap.iter().copied()).members;
        }
        let device = self.config.device;
        let clock = Clock::new();
        let replica = Replica::new(self.config, restored, clock.now());
        let members: BTreeSet<DeviceId> = replica.members().collect();
        transport.set_members(&members);
        let (sink, source) = EventSink::channel();
        transport.start(sink);
        let events = self.events;
        let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
        let driver = Driver::new(DriverParts {
            replica,
            clock,
            transport: Box::new(transport),
            source,
            requests: req_rx,
            jobs: worker.jobs.clone(),
            batch_done,
            events: events.clone(),
            members,
        });
        let task = tokio::spawn(driver.run());
        tracing::info!(device = %device, "node started");
        Ok(Node {
            inner: Arc::new(Inner {
                device,
                requests: req_tx,
                events,
                jobs: std::sync::Mutex::new(worker.jobs),
                run: Mutex::new(Some((task, worker.thread))),
            }),
        })
    }
}

type RunHandles = (
    JoinHandle<Result<(), NodeError>>,
    Option<std::thread::JoinHandle<()>>,
);

struct Inner<S> {
    device: DeviceId,
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Event>,
    jobs: std::sync::Mutex<std_mpsc::Sender<Job<S>>>,
    run: Mutex<Option<RunHandles>>,
}

/// The async handle of a running sync engine: one device, one storage backend, one transport.
///
/// Cheap to clone; every clone drives the same engine. Local writes resolve once they are
/// durable (and, if peers are connected, handed to the transport). At most 1,024 calls wait
/// for the run loop at a time; further calls wait for room, so an application that writes
/// faster than the engine commits is slowed down rather than queued without bound. Dropping
/// every clone stops the run loop; prefer [`Node::shutdown`], which also hands the storage
/// backend back.
pub struct Node<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("device", &self.inner.device)
            .finish_non_exhaustive()
    }
}

impl Node<()> {
    /// Starts configuring a node for `config.device`.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            bootstrap: Vec::new(),
            events: broadcast::channel(4096).0,
        }
    }
}

impl<S: Send + 'static> Node<S> {
    /// This device.
    pub fn device(&self) -> DeviceId {
        self.inner.device
    }

    /// Subscribes to the engine's events (record changes, peers, catch-up, misbehaviour...).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Runs any command and waits for its completion. A shared write whose values peers would
    /// refuse to decode is refused first ([`NodeError::TooManyValues`]).
    pub async fn command(&self, cmd: Command) -> Result<(), NodeError> {
        if let Command::InsertShared { fields, .. } | Command::UpdateShared { fields, .. } = &cmd {
            hybridsync_core::check_fields_decode(fields)
                .map_err(|(excess, allowance)| NodeError::TooManyValues { excess, allowance })?;
        }
        let (reply, done) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Command {
                cmd,
                reply,
                progress: None,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        match done.await {
            Ok(r) => r.map_err(NodeError::Command),
            Err(_) => Err(NodeError::Stopped),
        }
    }

    /// Creates or replaces one of this device's records (device-owned model).
    pub async fn put(
        &self,
        model: impl Into<String>,
        uuid: Uuid,
        data: Vec<u8>,
    ) -> Result<(), NodeError> {
        self.command(Command::PutOwned {
            model: model.into(),
            uuid,
            data,
        })
        .await
    }

    /// Deletes one of this device's records (a versioned tombstone).
    pub async fn delete(&self, model: impl Into<String>, uuid: Uuid) -> Result<(), NodeError> {
        self.command(Command::DeleteOwned {
            model: model.into(),
            uuid,
        })
        .await
    }

    /// Creates (or re-creates) a shared record with exactly these fields.
    pub async fn insert_shared(
        &self,
        model: impl Into<String>,
        uuid: Uuid,
        fields: BTreeMap<String, Value>,
    ) -> Result<(), NodeError> {
        self.command(Command::InsertShared {
            model: model.into(),
            uuid,
            fields,
        })
        .await
    }

    /// Sets some fields of a shared record.
    pub async fn update_shared(
        &self,
        model: impl Into<String>,
        uuid: Uuid,
        fields: BTreeMap<String, Value>,
    ) -> Result<(), NodeError> {
        self.command(Command::UpdateShared {
            model: model.into(),
            uuid,
            fields,
        })
        .await
    }

    /// Deletes a shared record.
    pub async fn delete_shared(
        &self,
        model: impl Into<String>,
        uuid: Uuid,
    ) -> Result<(), NodeError> {
        self.command(Command::DeleteShared {
            model: model.into(),
            uuid,
        })
        .await
    }

    /// Adds a device to the library's member set (replicated through the shared log).
    pub async fn add_member(&self, device: DeviceId) -> Result<(), NodeError> {
        self.command(Command::AddMember(device)).await
    }

    /// Removes a device from the member set; its later messages are refused.
    pub async fn remove_member(&self, device: DeviceId) -> Result<(), NodeError> {
        self.command(Command::RemoveMember(device)).await
    }

    async fn fetch(&self, cmd: Command) -> Fetch {
        let (reply, done) = oneshot::channel();
        let (ptx, progress) = mpsc::unbounded_channel();
        // If the loop is gone, `done` resolves to an error and `finish` reports `Stopped`.
        let _ = self
            .inner
            .requests
            .send(Request::Command {
                cmd,
                reply,
                progress: Some(ptx),
            })
            .await;
        Fetch { progress, done }
    }

    /// Fetches `owner`'s device-owned records from the connected `peer` (from `since`, default
    /// the current watermark). The engine also catches up on its own; this is for an
    /// application that wants to drive or observe a catch-up.
    pub async fn request_state(
        &self,
        peer: DeviceId,
        owner: DeviceId,
        since: Option<u64>,
    ) -> Fetch {
        self.fetch(Command::RequestState { peer, owner, since })
            .await
    }

    /// Fetches shared changes from the connected `peer` (from `since`, default the current
    /// version vector), falling back to a snapshot if the peer pruned its log below it.
    pub async fn request_shared_changes(
        &self,
        peer: DeviceId,
        since: Option<VersionVector>,
    ) -> Fetch {
        self.fetch(Command::RequestSharedChanges { peer, since })
            .await
    }

    /// A snapshot of the engine's state.
    pub async fn status(&self) -> Result<Status, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Status(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Runs `f` against the storage backend on the storage thread, after every batch already
    /// handed to it (read-only use: writing behind the engine's back breaks its invariants).
    ///
    /// The events of a batch are published once the run loop learns that the batch is
    /// durable, which can be just after `f` already sees its writes: to wait for an event,
    /// subscribe and wait for it rather than poll storage and then peek at the channel.
    pub async fn inspect<R, F>(&self, f: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&mut S) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Inspect(Box::new(move |s: &mut S| {
            let _ = tx.send(f(s));
        }));
        let sent = self
            .inner
            .jobs
            .lock()
            .map_err(|_| NodeError::Stopped)?
            .send(job)
            .is_ok();
        if !sent {
            return Err(NodeError::Stopped);
        }
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Stops the node gracefully: commits every queued write, closes the transport, stops the
    /// storage thread and hands the backend back.
    pub async fn shutdown(&self) -> Result<S, NodeError> {
        let handles = self.inner.run.lock().await.take();
        let Some((task, thread)) = handles else {
            return Err(NodeError::Stopped);
        };
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .requests
            .send(Request::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let run_result = task.await.map_err(|_| NodeError::Stopped)?;
        let (btx, brx) = oneshot::channel();
        let sent = self
            .inner
            .jobs
            .lock()
            .map_err(|_| NodeError::Stopped)?
            .send(Job::Stop(btx))
            .is_ok();
        let backend = if sent { brx.await.ok() } else { None };
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!(device = %self.inner.device, "node stopped");
        run_result?;
        backend.ok_or(NodeError::Stopped)
    }
}

/// The application's typed reads ([`RecordReader`]), run on the storage thread like
/// [`Node::inspect`], after every batch already handed to it.
///
/// A read sees every write whose command has completed (its call resolved) and every write an
/// event reported ([`Event::RecordChanged`], [`Event::RecordsChanged`],
/// [`Event::SharedSnapshotApplied`]): both are published only once their batch is durable, and
/// the read is queued behind it. To keep a view up to date, subscribe first, read everything
/// (the `list_*` pages), then re-read what each event names (see [`Event`]'s change feed).
impl<S: RecordReader + Send + 'static> Node<S> {
    /// Runs one read on the storage thread; a backend error is [`NodeError::Read`].
    async fn read<R, F>(&self, f: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> Result<R, S::Error> + Send + 'static,
    {
        self.inspect(move |s: &mut S| f(s).map_err(StorageFailure::new))
            .await?
            .map_err(NodeError::Read)
    }

    /// The stored version of `owner`'s device-owned record `(model, uuid)`, a tombstone
    /// (`data: None`) included; `None` if this device never received it. A device-owned
    /// record is named by its owner too: two owners' records with one `(model, uuid)` are two
    /// records ([`Node::device`] names this device's own).
    pub async fn get_owned(
        &self,
        owner: DeviceId,
        model: impl Into<String>,
        uuid: Uuid,
    ) -> Result<Option<OwnedRecord>, NodeError> {
        let model = model.into();
        self.read(move |s| s.get_owned(owner, &model, uuid)).await
    }

    /// The visible fields of shared record `(model, uuid)`; `None` if it does not exist
    /// (never inserted, or deleted).
    pub async fn get_shared(
        &self,
        model: impl Into<String>,
        uuid: Uuid,
    ) -> Result<Option<SharedView>, NodeError> {
        let model = model.into();
        self.read(move |s| s.get_shared(&model, uuid)).await
    }

    /// One page of the live device-owned records of `model` (every owner, `(owner, uuid)`
    /// order, tombstones left out), after `after` (`None`: from the start); at most `limit`
    /// records. Pass the page's `next` back for the next page.
    pub async fn list_owned(
        &self,
        model: impl Into<String>,
        after: Option<OwnedCursor>,
        limit: u32,
    ) -> Result<Page<OwnedRecord, OwnedCursor>, NodeError> {
        let model = model.into();
        self.read(move |s| s.list_owned(&model, after, limit)).await
    }

    /// One page of the visible shared records of `model` (uuid order), after `after`; at most
    /// `limit` records. Pass the page's `next` back for the next page.
    pub async fn list_shared(
        &self,
        model: impl Into<String>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<SharedView, Uuid>, NodeError> {
        let model = model.into();
        self.read(move |s| s.list_shared(&model, after, limit))
            .await
    }

    /// How many live device-owned records of `model` this device holds (every owner).
    pub async fn count_owned(&self, model: impl Into<String>) -> Result<u64, NodeError> {
        let model = model.into();
        self.read(move |s| s.count_owned(&model)).await
    }

    /// How many visible shared records of `model` this device holds.
    pub async fn count_shared(&self, model: impl Into<String>) -> Result<u64, NodeError> {
        let model = model.into();
        self.read(move |s| s.count_shared(&model)).await
    }
}
