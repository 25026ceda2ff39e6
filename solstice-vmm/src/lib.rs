//! # solstice-vmm
//!
//! Execution environments for jobs. One trait, [`VmProvider`]: provision a
//! VM for a [`VmSpec`], observe it, destroy it, and list what exists so a
//! reaper can destroy what no live job owns. Implementations:
//!
//! - [`MockVmProvider`]: in memory and scriptable (boot failure, slow boot,
//!   runner crash after N steps); the "guest" is a [`Guest`] the caller
//!   supplies, so engine tests run real jobs without VMs.
//! - [`LocalProvider`]: the runner as a host child process in a fresh
//!   workspace directory. **No isolation**: a job can do anything the
//!   orchestrator's user can. For development and hosts without
//!   virtualisation.
//! - [`QemuProvider`]: one QEMU virtual machine per job (Linux), booted
//!   from a golden image on a qcow2 overlay, reaching nothing but the
//!   runner endpoint.
//! - [`BhyveProvider`]: one bhyve-branded zone per job on a ZFS clone
//!   (illumos), every host command through a [`CommandRunner`] so that it
//!   is tested anywhere and shown by `--dry-run`.
//! - [`ByLabel`]: routes each job to a provider chosen by its `runs_on`
//!   label.
//!
//! A conformance suite (the `testing` module, behind the `testing` feature) checks
//! every provider against the same contract.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use solstice_vmm::{MockVmProvider, VmProvider, VmSpec, VmState};
//!
//! let provider = MockVmProvider::idle();
//! let vm = provider.provision(&VmSpec::example("job-1")).await.unwrap();
//! assert!(matches!(provider.state(&vm.id).await.unwrap(), VmState::Running));
//! provider.destroy(&vm.id).await.unwrap();
//! provider.destroy(&vm.id).await.unwrap(); // idempotent
//! # });
//! ```

mod bhyve;
mod command;
#[cfg(feature = "image")]
pub mod image;
mod local;
mod mock;
mod qemu;
mod router;
#[cfg(feature = "testing")]
pub mod testing;
mod vmdir;

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use bhyve::{BHYVE_CONSOLE_KEEP, BhyveConfig, BhyveProvider, OWNER_ATTR, vnic_name};
pub use command::{
    CHILD_ENV, CommandOutput, CommandRunner, DryRun, HostCommand, OUTPUT_CAP, SystemRunner,
    child_environment, clean_command,
};
pub use local::{JobUser, LocalProvider};
pub use qemu::{
    Accelerator, CONSOLE_CAP, DEFAULT_UEFI_FIRMWARE, GUEST_ENDPOINT, MAX_DISK_GIB,
    MAX_GUEST_CONNECTIONS, MAX_REACH, Machine, QemuConfig, QemuImage, QemuProvider, SEED_MAGIC,
    host_tsc_khz, probe_accelerator,
};
pub use router::ByLabel;

/// Locks `m`, also after a panic elsewhere poisoned it: the providers'
/// maps are changed in one step while locked, so they are never half
/// changed.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
pub use mock::{Guest, GuestContext, MockScript, MockVmProvider};

/// How the runner inside a VM reaches the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RunnerEndpoint {
    /// `host:port`, as the guest must dial it.
    Tcp(String),
    /// A unix socket path on the host (local provider, virtio-serial bridges).
    Unix(PathBuf),
}

impl RunnerEndpoint {
    /// The URI the runner dials: `http://host:port` or `unix://PATH`. The
    /// one place that spells it, for every provider and guest.
    pub fn uri(&self) -> String {
        match self {
            RunnerEndpoint::Tcp(addr) => format!("http://{addr}"),
            RunnerEndpoint::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

impl fmt::Display for RunnerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerEndpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            RunnerEndpoint::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// What to provision.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VmSpec {
    /// Unique name, used for the VM, its disk and its workspace.
    pub name: String,
    /// The runner label (`runs_on`): selects the golden image.
    pub label: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Disk in GiB.
    pub disk_gib: u32,
    /// Where the runner connects.
    pub endpoint: RunnerEndpoint,
    /// The single-use job token the runner presents. Secret: not printed by `Debug`.
    pub token: String,
    /// Who owns the VM (the job attempt); the reaper destroys VMs whose owner is gone.
    pub owner: String,
    /// A host directory the job reads at the same path (`cidev run`'s
    /// checkout). Providers whose guests cannot see the host's files copy
    /// it in before the runner starts: in a git work tree the files git
    /// lists (tracked, and untracked but not ignored), elsewhere everything
    /// but `.git`.
    pub share: Option<PathBuf>,
    /// Copy all of `share`, `.git` included, not only what git lists: a
    /// checkout the engine made on the host for the job.
    #[serde(default)]
    pub share_whole: bool,
}

impl fmt::Debug for VmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmSpec")
            .field("name", &self.name)
            .field("label", &self.label)
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("disk_gib", &self.disk_gib)
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .field("owner", &self.owner)
            .field("share", &self.share)
            .field("share_whole", &self.share_whole)
            .finish()
    }
}

impl VmSpec {
    /// A spec for VM `name` of job attempt `owner`, whose runner dials
    /// `endpoint` with `token`: 1 vCPU, 512 MiB, 4 GiB, no label. Set the
    /// other fields on the result.
    pub fn new(
        name: impl Into<String>,
        owner: impl Into<String>,
        endpoint: RunnerEndpoint,
        token: impl Into<String>,
    ) -> Self {
        VmSpec {
            name: name.into(),
            label: String::new(),
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 4,
            endpoint,
            token: token.into(),
            owner: owner.into(),
            share: None,
            share_whole: false,
        }
    }

    /// A small spec for examples and tests.
    pub fn example(name: &str) -> Self {
        VmSpec {
            name: name.to_string(),
            label: "ubuntu-22.04".into(),
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 4,
            endpoint: RunnerEndpoint::Tcp("127.0.0.1:1".into()),
            token: "token".into(),
            owner: name.to_string(),
            share: None,
            share_whole: false,
        }
    }
}

/// A provider's id for a VM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmId(pub String);

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A provisioned VM.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmHandle {
    /// The provider's id.
    pub id: VmId,
    /// The spec's owner.
    pub owner: String,
}

impl VmHandle {
    /// The handle of VM `id`, provisioned for `owner`.
    pub fn new(id: VmId, owner: impl Into<String>) -> VmHandle {
        VmHandle {
            id,
            owner: owner.into(),
        }
    }
}

/// What a VM is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmState {
    /// Created, not yet running the runner.
    Booting,
    /// Running.
    Running,
    /// Stopped by itself; the exit status when the provider knows it.
    Stopped(Option<i32>),
    /// Failed; the reason.
    Failed(String),
}

/// One VM as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmInfo {
    /// The provider's id.
    pub id: VmId,
    /// The owner recorded at provisioning.
    pub owner: String,
    /// Its state.
    pub state: VmState,
}

impl VmInfo {
    /// What `list` says about VM `id` of `owner`.
    pub fn new(id: VmId, owner: impl Into<String>, state: VmState) -> VmInfo {
        VmInfo {
            id,
            owner: owner.into(),
            state,
        }
    }
}

/// Why a provider operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The VM could not be created or booted. An infrastructure failure:
    /// a job with `retry` gets another attempt.
    #[error("VM failed to boot: {what}")]
    Boot {
        /// What failed.
        what: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// No such VM (from `state`; `destroy` treats it as done).
    #[error("no such VM: {0}")]
    NotFound(VmId),
    /// The provider or its host failed.
    #[error("provider error: {what}")]
    Provider {
        /// What failed.
        what: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// An error kept whole, without naming its type in the API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl VmError {
    /// [`VmError::Boot`] without an underlying error.
    pub fn boot(what: impl Into<String>) -> VmError {
        VmError::Boot {
            what: what.into(),
            source: None,
        }
    }

    /// [`VmError::Boot`] caused by `source`.
    pub fn boot_because(what: impl Into<String>, source: impl Into<BoxError>) -> VmError {
        VmError::Boot {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// [`VmError::Provider`] without an underlying error.
    pub fn provider(what: impl Into<String>) -> VmError {
        VmError::Provider {
            what: what.into(),
            source: None,
        }
    }

    /// [`VmError::Provider`] caused by `source`.
    pub fn provider_because(what: impl Into<String>, source: impl Into<BoxError>) -> VmError {
        VmError::Provider {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}

/// Creates and destroys execution environments for jobs.
#[async_trait]
pub trait VmProvider: Send + Sync {
    /// A short name for logs (`mock`, `local`, `qemu`).
    fn name(&self) -> &'static str;

    /// Creates and starts a VM; returns once it is booting. On error
    /// nothing is left behind (the provider cleans up what it created).
    /// Not idempotent: each call makes a new VM.
    async fn provision(&self, spec: &VmSpec) -> Result<VmHandle, VmError>;

    /// The VM's current state; [`VmError::NotFound`] when it does not exist.
    async fn state(&self, id: &VmId) -> Result<VmState, VmError>;

    /// Stops and removes the VM and everything created for it. Idempotent,
    /// and tolerant of half-created state: destroying something that does
    /// not exist (any more) is `Ok`.
    async fn destroy(&self, id: &VmId) -> Result<(), VmError>;

    /// Every VM this provider manages, including ones left behind by an
    /// earlier process, so a reaper can destroy those no live job owns.
    async fn list(&self) -> Result<Vec<VmInfo>, VmError>;

    /// The end of the VM's console output (a few KiB), when the provider
    /// keeps one: the engine puts it in the job's log when the VM stopped
    /// before its runner reported, so a boot failure explains itself. Read
    /// it before `destroy`, which removes it. The default has none.
    async fn console_tail(&self, id: &VmId) -> Option<String> {
        let _ = id;
        None
    }

    /// Whether a VM of `label` gets a copy of [`VmSpec::share`] from this
    /// provider. An engine that clones on the host sends the checkout that
    /// way, and lets the runner clone where the answer is `false`. The
    /// default is `false`.
    fn copies_share(&self, label: &str) -> bool {
        let _ = label;
        false
    }
}
