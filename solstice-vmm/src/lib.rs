//! # solstice-vmm
//!
//! The `VmProvider` trait (provision a VM for a `VmSpec`, observe it, destroy
//! it idempotently, list what exists for the reaper) and its providers: an
//! in-memory mock, a local child-process provider, QEMU/KVM on Linux and bhyve
//! zones on ZFS clones on illumos.
//!
//! Nothing is implemented here yet.
