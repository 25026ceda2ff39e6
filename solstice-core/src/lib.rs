//! # solstice-core
//!
//! The engine of Solstice CI. It composes the leaf crates (`solstice-kdl`,
//! `solstice-queue`, `solstice-vmm`, `solstice-forge`) into the domain model
//! (runs, jobs, attempts, steps, logs), the scheduler and orchestrator loop,
//! the state store (SQLite and PostgreSQL through sqlx) and the gRPC runner
//! protocol.
//!
//! Nothing is implemented here yet: see the issue tracker for the engine work.
