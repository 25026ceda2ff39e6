//! A [`solstice_queue::JobQueue`] and a [`solstice_vmm::VmProvider`]
//! written the way a user of the SDK would, from the outside, against the
//! public traits only. `tests/conformance.rs` runs each crate's
//! conformance suite against them.
//!
//! - [`SharedQueue`]: an in-process queue (one lock and a wake-up), the
//!   smallest implementation that keeps the contract: at-least-once,
//!   counted redeliveries, dead letters, prefetch.
//! - [`DirProvider`]: "VMs" that are directories under a root, so that a
//!   new process finds what an old one left ([`VmProvider::list`]) and a
//!   reaper can destroy it. A real provider keeps the same shape around its
//!   hypervisor.
//!
//! [`VmProvider::list`]: solstice_vmm::VmProvider::list

mod queue;
mod vm;

pub use queue::SharedQueue;
pub use vm::DirProvider;
