//! A storage backend's error as a [`crate::Node`] reports it.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A storage backend's error, kept whole (its [`Error::source`] chain is the backend's own)
/// and cheap to clone, so every call waiting on the failed batch gets the same one. Two
/// values are equal when they are the same failure.
#[derive(Clone)]
pub struct StorageFailure(Arc<dyn Error + Send + Sync + 'static>);

impl StorageFailure {
    /// Wraps a backend's error.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        StorageFailure(Arc::new(error))
    }

    /// The backend's error, to downcast to the backend's own type.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// A failure that is not a backend's error (the storage thread is gone).
    pub(crate) fn stopped() -> Self {
        StorageFailure::new(ThreadStopped)
    }

    /// The storage thread could not be started.
    pub(crate) fn spawn(error: std::io::Error) -> Self {
        StorageFailure::new(SpawnFailed(error))
    }
}

impl fmt::Debug for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for StorageFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for StorageFailure {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for StorageFailure {}

/// The storage thread stopped without an error of the backend's (it panicked or was lost).
#[derive(Debug, thiserror::Error)]
#[error("the storage thread stopped")]
struct ThreadStopped;

/// The operating system refused to start the storage thread.
#[derive(Debug, thiserror::Error)]
#[error("cannot spawn the storage thread")]
struct SpawnFailed(#[source] std::io::Error);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct DiskFull(#[source] std::io::Error);

    #[test]
    fn the_backends_error_and_its_sources_are_kept() {
        let f = StorageFailure::new(DiskFull(std::io::Error::other("ENOSPC")));
        assert_eq!(f.to_string(), "disk full");
        assert!(f.get_ref().downcast_ref::<DiskFull>().is_some());
        assert_eq!(
            f.source().map(ToString::to_string).as_deref(),
            Some("ENOSPC")
        );
        assert_eq!(f.clone(), f);
        assert_ne!(StorageFailure::stopped(), f);
    }
}
