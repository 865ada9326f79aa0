//! The storage worker: one dedicated OS thread that owns the backend and executes batches in
//! order.

use crate::failure::StorageFailure;
use hybridsync_core::{Restored, StorageBackend, StorageCommand, StorageDone};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// A closure run on the storage thread against the backend (see [`crate::Node::inspect`]).
pub(crate) type Inspect<S> = Box<dyn FnOnce(&mut S) + Send + 'static>;

/// A job for the storage thread.
pub(crate) enum Job<S> {
    /// One group commit: execute in order, durable on return.
    Batch(Vec<StorageCommand>),
    /// Read-only inspection, ordered after every batch sent before it.
    Inspect(Inspect<S>),
    /// Hand the backend back and stop the thread.
    Stop(oneshot::Sender<S>),
}

/// The result of a batch, in the order batches were sent.
pub(crate) type BatchResult = Result<Vec<StorageDone>, StorageFailure>;

/// Handle to the storage thread.
pub(crate) struct StorageWorker<S> {
    pub(crate) jobs: std_mpsc::Sender<Job<S>>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl<S: StorageBackend + Send + 'static> StorageWorker<S> {
    /// Starts the thread, loads the restored state on it, and returns the worker, the restored
    /// state and the receiver of batch results.
    pub(crate) async fn start(
        mut backend: S,
    ) -> Result<(Self, Restored, mpsc::UnboundedReceiver<BatchResult>), StorageFailure> {
        let (jobs_tx, jobs_rx) = std_mpsc::channel::<Job<S>>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (restored_tx, restored_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("hybridsync-storage".into())
            .spawn(move || {
                let restored = backend.load_restored().map_err(StorageFailure::new);
                let ok = restored.is_ok();
                if restored_tx.send(restored).is_err() || !ok {
                    return;
                }
                while let Ok(job) = jobs_rx.recv() {
                    match job {
                        Job::Batch(commands) => {
                            let n = commands.len();
                            let started = std::time::Instant::now();
                            let result = backend.execute(commands).map_err(StorageFailure::new);
                            tracing::trace!(
                                commands = n,
                                micros = started.elapsed().as_micros() as u64,
                                "storage batch committed"
                            );
                            let failed = result.is_err();
                            if done_tx.send(result).is_err() || failed {
                                return;
                            }
                        }
                        Job::Inspect(f) => f(&mut backend),
                        Job::Stop(reply) => {
                            let _ = reply.send(backend);
                            return;
                        }
                    }
                }
            })
            .map_err(StorageFailure::spawn)?;
        let restored = restored_rx.await.map_err(|_| StorageFailure::stopped())??;
        Ok((
            StorageWorker {
                jobs: jobs_tx,
                thread: Some(thread),
            },
            restored,
            done_rx,
        ))
    }
}
