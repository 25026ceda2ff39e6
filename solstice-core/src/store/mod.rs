//! The state store: runs, jobs, attempts, steps and log chunks, and the
//! leases that tell a live attempt from an abandoned one.
//!
//! - [`StateStore`] (in `state_store.rs`) is the trait, with its one write
//!   path, [`StateStore::apply`], for batches of [`Change`]s.
//! - The records it keeps (in `model.rs`) and [`StoreError`] (in `error.rs`).
//! - [`SqlStore`] (the `sql` feature, in `sql/`) implements it for SQLite
//!   (the embedded default) and PostgreSQL (many hosts) with the same SQL
//!   through sqlx's `Any` driver, with one migration set per dialect in
//!   `migrations/`.
//!
//! [`IntegrationStore`] (in `integration.rs`) keeps what the forge
//! integration adds: accepted webhook deliveries and run listings.
//!
//! The trait, its records and its conformance suite
//! (`solstice_core::testing::store`, the `testing` feature) build without
//! sqlx: a third-party store depends on `solstice-core` with
//! `default-features = false, features = ["store"]` (see
//! `examples/memory-store`).

mod error;
mod integration;
mod model;
#[cfg(feature = "sql")]
mod sql;
mod state_store;

pub use error::{BoxError, StoreError};
pub use integration::{
    HOST_RETENTION_MS, HostEntry, InboxEntry, InboxState, IntegrationStore, NewDelivery,
    STATUS_RETENTION_MS, ScheduleEntry, StatusChange,
};
pub use model::{
    Attempt, AttemptId, AttemptStatus, Job, JobId, JobStatus, LogChunk, LogStream, NewJob, Run,
    RunId, RunStatus, StepRecord, StepStatus,
};
#[cfg(feature = "sql")]
pub use sql::SqlStore;
pub use state_store::{Applied, Change, Guard, StateStore};
