//! [`StoreError`]: why a store operation failed.

/// An error from a backend, kept whole (with its own source chain) and
/// without naming the backend's type in the trait.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database (or whatever holds the state) failed or refused; the
    /// source says how.
    #[error("the state store's backend failed")]
    Backend(#[source] BoxError),
    /// The database cannot be reached now (a lost connection, a restart):
    /// nothing was changed, and the same operation may succeed later.
    #[error("the state store cannot be reached now")]
    Unavailable(#[source] BoxError),
    /// Setting up the store (connecting, migrating) failed.
    #[error("could not set up the state store")]
    Setup(#[source] BoxError),
    /// The row is not in the state the operation needs (e.g. claiming a job
    /// that someone else claimed first).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A change the store cannot apply as given (a guarded write of
    /// another attempt than its guard's); nothing of it was applied.
    #[error("invalid change: {0}")]
    Invalid(String),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The URL names no supported database.
    #[error("unsupported database URL: {0}")]
    Url(String),
    /// The store was closed, or the writer in front of it stopped.
    #[error("the state store is closed")]
    Closed,
    /// A batch of writes ([`crate::store::StateStore::apply`]) that this
    /// write was part of failed; the source is the batch's error (shared by
    /// every write of the batch).
    #[error("a batch of writes that this write was part of failed")]
    Batch(#[source] std::sync::Arc<StoreError>),
}

impl StoreError {
    /// Wraps a backend's error.
    pub fn backend(error: impl Into<BoxError>) -> StoreError {
        StoreError::Backend(error.into())
    }

    /// Whether trying the same operation again later may succeed: the
    /// store was unreachable (also as the cause of a failed batch).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Batch(cause) => cause.is_transient(),
            _ => false,
        }
    }
}
