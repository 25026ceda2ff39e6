//! # solstice-core
//!
//! The engine of Solstice CI. It composes the leaf crates (`solstice-kdl`,
//! `solstice-queue`, `solstice-vmm`, `solstice-forge`) into the domain model
//! (runs, jobs, attempts, steps, logs), the scheduler and orchestrator loop,
//! the state store (SQLite and PostgreSQL through sqlx) and the gRPC runner
//! protocol.
//!
//! Built so far: [`log`], the log ingestion path (secret masking and the
//! per-job size cap) that every byte from a runner goes through before it is
//! stored or shown. The rest is the subject of the engine issue.

#[cfg(feature = "engine")]
pub mod engine;
pub mod log;
#[cfg(feature = "protocol")]
pub mod protocol;
#[cfg(feature = "protocol")]
pub mod runner;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
