//! # solstice-core
//!
//! The engine of Solstice CI. It composes the leaf crates (`solstice-kdl`,
//! `solstice-queue`, `solstice-vmm`, `solstice-forge`) into the domain model
//! (runs, jobs, attempts, steps, logs), the scheduler and orchestrator loop,
//! the state store (SQLite and PostgreSQL through sqlx) and the gRPC runner
//! protocol.
//!
//! - [`engine`]: takes jobs from a [`solstice_queue::JobQueue`] up to its
//!   capacity, claims them in the store with a lease, boots a VM through a
//!   [`solstice_vmm::VmProvider`], serves the runner's gRPC endpoint, masks
//!   and stores logs, and schedules what the finished jobs' `needs` allow.
//! - [`store`]: the [`store::StateStore`] trait and [`store::SqlStore`]
//!   (SQLite, PostgreSQL), with a conformance suite in `testing`.
//! - [`runner`] and [`protocol`]: what runs inside a VM, and the wire
//!   protocol (`proto/runner.proto`); the runner binary enables only the
//!   `protocol` feature.
//! - [`secrets`]: the [`secrets::SecretStore`] trait: per-repository
//!   secret values for the jobs, never from the workflow file.
//! - [`log`]: secret masking and the per-job size cap, which every byte from
//!   a runner goes through before it is stored or shown.
//!
//! A workflow end to end, with SQLite in memory and mock VMs that run the
//! real runner code with a fake step executor:
//!
//! ```
//! # #[cfg(all(feature = "engine", feature = "testing"))]
//! # fn main() {
//! use std::sync::Arc;
//! use solstice_core::engine::{Checkout, Engine, EngineConfig, FakeExecutor, JobMessage, RunnerGuest};
//! use solstice_core::store::{RunStatus, SqlStore};
//! use solstice_queue::{MemoryQueue, QueueOptions};
//! use solstice_vmm::MockVmProvider;
//!
//! let rt = tokio::runtime::Runtime::new().unwrap();
//! rt.block_on(async {
//!     let store = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
//!     let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
//!     let vms = Arc::new(MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor)))));
//!     let engine = Engine::start(EngineConfig::default(), store, queue, vms).await.unwrap();
//!     let workflow = solstice_kdl::parse(r#"
//!         workflow {
//!             job id="build" { step run="make"; }
//!             job id="test" { needs "build"; step run="make test"; }
//!         }
//!     "#).unwrap();
//!     let run = engine.submit(&workflow, "{}", Checkout::None).await.unwrap();
//!     assert_eq!(engine.wait(run).await.unwrap(), RunStatus::Succeeded);
//!     engine.shutdown().await;
//! });
//! # }
//! # #[cfg(not(all(feature = "engine", feature = "testing")))]
//! # fn main() {}
//! ```

#[cfg(feature = "engine")]
pub mod engine;
pub mod log;
#[cfg(feature = "engine")]
pub mod net;
// The wire protocol is the engine's and the runner's business: public only
// to tests that speak it directly (the `testing` feature), never a stable API.
#[cfg(all(feature = "protocol", feature = "testing"))]
#[doc(hidden)]
pub mod protocol;
#[cfg(all(feature = "protocol", not(feature = "testing")))]
pub(crate) mod protocol;
#[cfg(feature = "protocol")]
pub mod runner;
#[cfg(feature = "store")]
pub mod secrets;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod util;
