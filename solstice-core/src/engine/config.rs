//! [`EngineConfig`]: what an engine is set up with, and where it serves
//! runners ([`Listen`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use solstice_vmm::RunnerEndpoint;

use super::events::EVENT_BUFFER_BYTES;
use super::now_ms;
use crate::log::DEFAULT_LOG_CAP;

/// Where the runner endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Listen {
    /// A TCP address; port 0 picks a free port.
    Tcp(SocketAddr),
    /// A unix socket at this path, for runners on this host or behind a
    /// bridge (virtio-serial, vsock proxies). A socket file left there by an
    /// engine that died is replaced; any other file is an error. The socket
    /// is created with the directory's permissions: put it in a directory
    /// only the engine and its VMs' bridges can reach.
    Unix(std::path::PathBuf),
}

/// The bound endpoint.
pub(super) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listen {
    pub(super) async fn bind(&self) -> std::io::Result<(Listener, RunnerEndpoint)> {
        match self {
            Listen::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(addr).await?;
                let endpoint = RunnerEndpoint::Tcp(l.local_addr()?.to_string());
                Ok((Listener::Tcp(l), endpoint))
            }
            Listen::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
                    Ok(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    Err(_) => {}
                }
                let l = tokio::net::UnixListener::bind(path)?;
                Ok((Listener::Unix(l), RunnerEndpoint::Unix(path.clone())))
            }
        }
    }
}

/// Engine settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// This engine's unique name; leases are held in it.
    pub holder: String,
    /// Most jobs at once.
    pub capacity: usize,
    /// The `runs_on` labels whose jobs this engine takes. `None`: the
    /// queue of the label `default`, which is every label's when one queue
    /// holds them all ([`crate::engine::Engine::start`]). `Some(vec![])`:
    /// none (an engine that plans and schedules but runs nothing, as in
    /// the integration daemon).
    pub labels: Option<Vec<String>>,
    /// Lease length; the heartbeat renews it every third of that.
    pub lease: Duration,
    /// Timeout of jobs without `timeout`.
    pub default_job_timeout: Duration,
    /// Per-job log cap after masking.
    pub log_cap: u64,
    /// Secret values by name, for runs submitted without a secret scope.
    pub secrets: BTreeMap<String, String>,
    /// Per-repository secrets, for runs submitted with a scope
    /// ([`crate::engine::Submission::with_secret_scope`]): read at
    /// planning (a missing one fails the submission) and again when each
    /// attempt starts (values are never stored).
    pub secret_store: Option<std::sync::Arc<dyn crate::secrets::SecretStore>>,
    /// Credentials for cloning a scoped run's repository over HTTP(S)
    /// (a forge's short-lived token), asked for when each attempt starts.
    pub clone_credentials: Option<std::sync::Arc<dyn CloneCredentials>>,
    /// Where the runner endpoint listens.
    pub listen: Listen,
    /// How often a VM's state is checked while its job runs.
    pub poll: Duration,
    /// VM shape.
    pub vcpus: u32,
    /// VM memory.
    pub memory_mib: u32,
    /// VM disk.
    pub disk_gib: u32,
    /// Clone git checkouts on this host, into a directory of their own
    /// under this one, and send the tree into the VM (`VmSpec::share`,
    /// whole, `.git` included) where the provider copies shares in
    /// (`VmProvider::copies_share`), instead of letting the runner clone: the
    /// forge's credentials never enter the VM, and the VM needs no route to
    /// the forge. `file://` URLs are refused (a URL from a webhook must not
    /// copy this host's files into a job). Each directory is removed when
    /// its attempt ends, and the engine empties the directory when it
    /// starts (what a crash left): give each engine its own. `None` (the
    /// default): the runner clones.
    pub checkout_dir: Option<std::path::PathBuf>,
    /// Most bytes of events kept for subscribers that fall behind
    /// ([`crate::engine::Engine::subscribe`]); default
    /// [`EVENT_BUFFER_BYTES`]. A subscriber further behind misses events
    /// and is told how many ([`crate::engine::EventError::Lagged`]).
    pub event_buffer_bytes: usize,
    /// What the runner endpoint admits: by default a quarter of 1,024
    /// descriptors (less a reserve), with no share per address (runners of
    /// QEMU and local VMs all connect from loopback), a first byte within
    /// 10 s and no more than 10 minutes without a byte (the endpoint pings
    /// every 30 s, so only a dead or stalled peer idles that long).
    pub runner_connections: crate::net::ConnectionLimits,
    /// Values masked in every job's log whatever the job declares: the
    /// embedding process's own secrets (its webhook secrets, tokens,
    /// database password), a last line of defence should a step find
    /// them. Values shorter than [`crate::log::MIN_SECRET_LEN`] are not
    /// masked.
    pub always_masked: Vec<String>,
}

/// The runner endpoint's default limits for a process allowed
/// `descriptors` open descriptors.
pub fn runner_connection_limits(descriptors: u64) -> crate::net::ConnectionLimits {
    let limits = crate::net::ConnectionLimits::within_descriptors(descriptors, 4, 4096);
    limits
        .with_per_address(limits.max_connections)
        .with_first_byte(Duration::from_secs(10))
        .with_idle(Duration::from_secs(600))
}

/// Secret values are not shown, only their names.
impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("holder", &self.holder)
            .field("capacity", &self.capacity)
            .field("labels", &self.labels)
            .field("lease", &self.lease)
            .field("default_job_timeout", &self.default_job_timeout)
            .field("log_cap", &self.log_cap)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("secret_store", &self.secret_store)
            .field("clone_credentials", &self.clone_credentials)
            .field("listen", &self.listen)
            .field("poll", &self.poll)
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("disk_gib", &self.disk_gib)
            .field("checkout_dir", &self.checkout_dir)
            .field("event_buffer_bytes", &self.event_buffer_bytes)
            .field("runner_connections", &self.runner_connections)
            .field("always_masked", &self.always_masked.len())
            .finish()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            holder: format!("engine-{}-{}", std::process::id(), now_ms()),
            capacity: std::thread::available_parallelism().map_or(2, |n| n.get()),
            labels: None,
            lease: Duration::from_secs(30),
            default_job_timeout: Duration::from_secs(3600),
            log_cap: DEFAULT_LOG_CAP,
            secrets: BTreeMap::new(),
            secret_store: None,
            clone_credentials: None,
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            poll: Duration::from_millis(100),
            vcpus: 2,
            memory_mib: 2048,
            disk_gib: 20,
            checkout_dir: None,
            event_buffer_bytes: EVENT_BUFFER_BYTES,
            runner_connections: runner_connection_limits(1024),
            always_masked: Vec::new(),
        }
    }
}

/// User name and password (a token) for cloning over HTTP(S). `Debug`
/// shows the user name only.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GitCredentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl GitCredentials {
    /// Credentials.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> GitCredentials {
        GitCredentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Where clone credentials come from (the daemon: its forge adapters).
/// Called when an attempt of a run submitted with a secret scope starts;
/// the password is masked in the job's log like a secret.
#[async_trait::async_trait]
pub trait CloneCredentials: Send + Sync + std::fmt::Debug {
    /// Credentials for cloning `url` for a job of `scope` (`owner/name`);
    /// `None`: clone without.
    async fn for_clone(
        &self,
        scope: &str,
        url: &str,
    ) -> Result<Option<GitCredentials>, crate::secrets::BoxError>;
}
