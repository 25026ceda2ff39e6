//! The composition: store, queue, provider, engine, forges, secret store,
//! the inbox processor, the status reporter and the HTTP server; and the
//! orderly stop on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use solstice_core::engine::{
    CloneCredentials, Engine, EngineConfig, GitCredentials, JobMessage, Listen,
};
use solstice_core::secrets::SecretStore;
use solstice_core::store::{IntegrationStore, SqlStore, StateStore};
use solstice_forge::{Forge, ForgeAdapter, ForgeOrigin, Forgejo, GitHub, StatusReporter};
use solstice_queue::{LabelQueues, MemoryQueue, OneQueue, QueueOptions, RabbitQueue};
use tokio::sync::Notify;

use crate::config::{Config, GitHubAuth};
use crate::secrets::{FileSecretStore, VaultSecretStore};

/// Boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One forge the daemon talks to.
#[derive(Debug, Clone)]
pub struct ForgeLink {
    /// Webhooks in, files.
    pub adapter: Arc<dyn ForgeAdapter>,
    /// Statuses out.
    pub reporter: Arc<dyn StatusReporter>,
}

/// Which parts of Solstice a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything in one process (`solstice serve`).
    AllInOne,
    /// Webhooks, planning, statuses, the API and job pages; runs no job
    /// (`solstice integration`).
    Integration,
    /// Runs the jobs of the labels it serves, up to its capacity
    /// (`solstice orchestrator`).
    Orchestrator,
}

impl Role {
    /// The name in the fleet listing.
    pub fn name(self) -> &'static str {
        match self {
            Role::AllInOne => "all-in-one",
            Role::Integration => "integration",
            Role::Orchestrator => "orchestrator",
        }
    }
}

/// Why a role cannot run on this configuration (checked before anything
/// starts: exit 2).
pub fn check_role(config: &Config, role: Role) -> Result<(), String> {
    if role == Role::AllInOne {
        return Ok(());
    }
    if config.database.is_none() || config.queue.is_none() {
        return Err(format!(
            "`solstice {}` shares its work with other processes: set `database` (PostgreSQL) and `queue` (RabbitMQ) in the configuration or SOLSTICE_DATABASE and SOLSTICE_QUEUE",
            role.name()
        ));
    }
    Ok(())
}

/// Whether jobs may run where this configuration puts them: `Err` (exit
/// 2, nothing started) when jobs from a forge would run on the local
/// provider as the daemon's own user without the operator saying so;
/// otherwise the warning to give at start, if any.
pub fn check_isolation(config: &Config, role: Role) -> Result<Option<String>, String> {
    if role == Role::Integration || !config.any_local() {
        return Ok(None);
    }
    if let Some(user) = &config.run_as {
        if !solstice_vmm::JobUser::can_switch() {
            return Err(format!(
                "run-as `{user}`: starting jobs as another user needs the daemon to run as root (or route the labels to VMs; see docs/security.md)"
            ));
        }
        solstice_vmm::JobUser::lookup(user).map_err(|e| format!("run-as: {}", chain(&e)))?;
        return Ok(Some(format!(
            "the local provider runs jobs as user `{user}` on this host, without a VM: they share its network and whatever `{user}` may read"
        )));
    }
    let from_strangers =
        config.github.is_some() || config.forgejo.is_some() || config.queue.is_some();
    if from_strangers && !config.allow_unisolated_jobs {
        return Err("jobs from a forge would run on the local provider as the daemon's own user, able to read its state, its secrets and every other job: set `run-as` (a user for jobs; the daemon then runs as root), route the labels to VMs (`vms`), or set `allow-unisolated-jobs #true` to accept that (docs/security.md)".into());
    }
    Ok(Some(
        "the local provider runs jobs as this daemon's own user with NO isolation: a job can read the daemon's state and secrets (set `run-as` or use VMs; docs/security.md)".into(),
    ))
}

/// What every part of the daemon shares.
#[derive(Debug)]
pub struct Daemon {
    /// The configuration.
    pub config: Config,
    /// The store.
    pub store: Arc<SqlStore>,
    /// The engine.
    pub engine: Engine,
    /// GitHub, when configured.
    pub github: Option<ForgeLink>,
    /// Forgejo, when configured.
    pub forgejo: Option<ForgeLink>,
    /// Wakes the inbox processor.
    pub inbox: Notify,
    /// Cleared when the daemon stops accepting deliveries.
    pub accepting: AtomicBool,
    /// The status reporter.
    pub reports: crate::report::Reports,
    /// Records accepted deliveries.
    pub intake: crate::intake::Intake,
    /// Webhook body bytes that may be in memory at once.
    pub body_budget: crate::body::BodyBudget,
}

impl Daemon {
    /// The link for a forge, if configured.
    pub fn forge(&self, forge: Forge) -> Option<&ForgeLink> {
        match forge {
            Forge::GitHub => self.github.as_ref(),
            Forge::Forgejo => self.forgejo.as_ref(),
            _ => None,
        }
    }
}

/// Clone credentials for jobs from the forge adapters: a GitHub App's
/// installation token (short-lived) or the configured token, only for
/// clone URLs on the forge's own scheme, host and port, read as git reads
/// them ([`solstice_forge::credentials_may_go_to`]).
#[derive(Debug)]
struct ForgeClones {
    github: Option<(ForgeOrigin, ForgeLink)>,
    forgejo: Option<(ForgeOrigin, ForgeLink)>,
}

#[async_trait::async_trait]
impl CloneCredentials for ForgeClones {
    async fn for_clone(&self, scope: &str, url: &str) -> Result<Option<GitCredentials>, BoxError> {
        let link = [&self.forgejo, &self.github]
            .into_iter()
            .flatten()
            .find(|(origin, _)| solstice_forge::credentials_may_go_to(url, origin))
            .map(|(_, link)| link);
        let Some(link) = link else { return Ok(None) };
        let creds = link
            .adapter
            .clone_credentials(&solstice_forge::Repo::new(scope))
            .await?;
        Ok(creds.map(|c| GitCredentials::new(c.username, c.password.expose())))
    }
}

/// A forge's stored name.
pub fn forge_name(forge: Forge) -> &'static str {
    match forge {
        Forge::GitHub => "github",
        _ => "forgejo",
    }
}

/// A stored name's forge.
pub fn forge_of(name: &str) -> Option<Forge> {
    match name {
        "github" => Some(Forge::GitHub),
        "forgejo" => Some(Forge::Forgejo),
        _ => None,
    }
}

/// An error and its sources on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

fn links(config: &Config) -> Result<(Option<ForgeLink>, Option<ForgeLink>), BoxError> {
    let github = match &config.github {
        None => None,
        Some(g) => {
            let client = match &g.auth {
                GitHubAuth::App { id, key } => {
                    GitHub::with_app(&g.api_url, *id, key, g.webhook_secret.clone())?
                }
                GitHubAuth::Token(token) => {
                    GitHub::with_token(&g.api_url, token.clone(), g.webhook_secret.clone())?
                }
            };
            let client = Arc::new(client);
            Some(ForgeLink {
                adapter: client.clone(),
                reporter: client,
            })
        }
    };
    let forgejo = match &config.forgejo {
        None => None,
        Some(f) => {
            let client = Arc::new(Forgejo::new(
                &f.url,
                f.token.clone(),
                f.webhook_secret.clone(),
            )?);
            Some(ForgeLink {
                adapter: client.clone(),
                reporter: client,
            })
        }
    };
    Ok((github, forgejo))
}

/// Creates `dir` (and its parents) with `mode`, or sets its mode when it
/// was there before with a looser one. A shared directory (world-writable
/// or sticky, like `/tmp`) is refused rather than changed.
fn private_dir(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o1002 != 0 => Err(std::io::Error::other(
            "a shared directory (world-writable or sticky, like /tmp): give the daemon a directory of its own",
        )),
        Ok(_) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// The SQLite database file, created 0600 (and made so if it was not),
/// with its journal files: SQLite gives those the database's mode.
fn private_database(db: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut path = db.as_os_str().to_os_string();
        path.push(suffix);
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The state store the configuration names: PostgreSQL, or SQLite in the
/// state directory. A database that is not up yet is waited for (up to
/// two minutes), so that hosts may start in any order.
async fn open_store(config: &Config) -> Result<Arc<SqlStore>, BoxError> {
    let Some(url) = &config.database else {
        let db = config.state_dir.join("solstice.db");
        private_database(&db).map_err(|e| format!("state store {}: {e}", db.display()))?;
        return Ok(Arc::new(SqlStore::open_sqlite(&db).await.map_err(|e| {
            format!("state store {}: {}", db.display(), chain(&e))
        })?));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match SqlStore::connect(url.expose()).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %chain(&e), "the database is not reachable yet; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("the database: {}", chain(&e)).into()),
        }
    }
}

/// The job queues: RabbitMQ, a queue per label, or the in-process queue;
/// each with a retry lane.
fn open_queues(config: &Config) -> Arc<dyn LabelQueues<JobMessage>> {
    match &config.queue {
        Some(url) => Arc::new(RabbitQueue::per_label(
            url.expose(),
            config.queue_prefix.clone(),
            QueueOptions::default(),
        )),
        // Retries (lost attempts, the API's retries) in a lane of their
        // own, taken before new work.
        None => Arc::new(OneQueue::with_retries(
            Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default())),
            Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default())),
        )),
    }
}

/// Every few seconds, this host's row in the fleet listing.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

async fn heartbeats(daemon: Arc<Daemon>, role: Role) {
    let started_at = solstice_core::engine::now_ms();
    loop {
        let engine = &daemon.engine;
        let mut host = solstice_core::store::HostEntry::new(&daemon.config.host_name, role.name());
        host.labels = engine.config().labels.clone().unwrap_or_else(|| {
            let mut all = daemon.config.served_labels();
            all.push("*".into());
            all
        });
        host.capacity = if role == Role::Integration {
            0
        } else {
            u32::try_from(engine.config().capacity).unwrap_or(u32::MAX)
        };
        host.running = u32::try_from(engine.running()).unwrap_or(u32::MAX);
        host.version = env!("CARGO_PKG_VERSION").to_string();
        host.started_at = started_at;
        host.seen_at = solstice_core::engine::now_ms();
        if let Err(e) = daemon.store.heartbeat(&host).await {
            tracing::warn!(error = %chain(&e), "cannot record this host's heartbeat");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Where a configured forge's repositories are cloned from: github.com
/// for api.github.com, the API host itself for GitHub Enterprise
/// (`https://ghe/api/v3`), Forgejo's base URL.
pub fn clone_origin(config: &Config, forge: Forge) -> Option<ForgeOrigin> {
    match forge {
        Forge::GitHub => config.github.as_ref().and_then(|g| {
            let api = ForgeOrigin::parse(&g.api_url)?;
            Some(if api.host() == "api.github.com" {
                api.with_host("github.com")
            } else {
                api
            })
        }),
        _ => config
            .forgejo
            .as_ref()
            .and_then(|f| ForgeOrigin::parse(&f.url)),
    }
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn serve(mut config: Config, role: Role) -> Result<(), BoxError> {
    // The same name across restarts (one row in `ciadm hosts`), one per
    // role on a machine.
    if !config.host_name_given {
        config.host_name = format!("{}-{}", config.host_name, role.name());
    }
    // Connections are capped below the descriptor limit, raised first to
    // what the system allows.
    let descriptors = solstice_core::net::raise_descriptor_limit();
    private_dir(&config.state_dir, 0o700)
        .map_err(|e| format!("state directory {}: {e}", config.state_dir.display()))?;
    if role != Role::Integration && config.any_local() {
        // Traversable, not listable: a job user reaches its own directory.
        private_dir(&config.jobs_dir, 0o711)
            .map_err(|e| format!("jobs directory {}: {e}", config.jobs_dir.display()))?;
    }
    let (github, forgejo) = links(&config)?;
    let store = open_store(&config).await?;
    let secret_store: Option<Arc<dyn SecretStore>> = match (&config.vault, &config.secrets_dir) {
        (Some(v), _) => Some(Arc::new(VaultSecretStore::new(
            &v.addr,
            &v.mount,
            &v.prefix,
            v.token.clone(),
        ))),
        (None, Some(dir)) => Some(Arc::new(FileSecretStore::new(dir.clone()))),
        (None, None) => Some(Arc::new(FileSecretStore::new(
            config.state_dir.join("secrets"),
        ))),
    };
    let provider = crate::vms::providers(&config, Arc::new(solstice_vmm::SystemRunner))?;
    let queues = open_queues(&config);
    let mut engine_config = EngineConfig::default();
    engine_config.holder = config.host_name.clone();
    engine_config.capacity = config.capacity;
    engine_config.lease = config.lease;
    engine_config.labels = match role {
        Role::Integration => Some(Vec::new()),
        Role::Orchestrator => Some(config.served_labels()),
        // One process with the in-process queue serves every label.
        Role::AllInOne if config.queue.is_none() => None,
        Role::AllInOne => Some(config.served_labels()),
    };
    engine_config.secret_store = secret_store;
    engine_config.always_masked = config.secret_values();
    engine_config.clone_credentials = Some(Arc::new(ForgeClones {
        github: clone_origin(&config, Forge::GitHub).zip(github.clone()),
        forgejo: clone_origin(&config, Forge::Forgejo).zip(forgejo.clone()),
    }));
    // QEMU jobs' repositories are cloned here and copied into the VM: the
    // forge's credentials stay on this host and the VM reaches nothing but
    // its runner (other providers' runners clone).
    engine_config.checkout_dir = Some(config.state_dir.join("checkouts"));
    engine_config.runner_connections = solstice_core::engine::runner_connection_limits(descriptors);
    engine_config.listen = Listen::Tcp(
        config
            .runner_listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    );
    let engine = Engine::start_with_queues(engine_config, store.clone(), queues, provider)
        .await
        .map_err(|e| format!("cannot start the engine: {}", chain(&e)))?;
    // An orchestrator serves runners only (no webhooks, API or pages).
    let listener = if role == Role::Orchestrator {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?,
        )
    };
    let daemon = Arc::new(Daemon {
        config,
        store: store.clone(),
        engine: engine.clone(),
        github,
        forgejo,
        inbox: Notify::new(),
        accepting: AtomicBool::new(true),
        reports: crate::report::Reports::default(),
        intake: crate::intake::Intake::start(store.clone()),
        body_budget: crate::body::BodyBudget::default(),
    });
    let heartbeat = tokio::spawn(heartbeats(daemon.clone(), role));
    let integrates = role != Role::Orchestrator;
    let stop = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let mut reporter = None;
    let mut server = None;
    if let Some(listener) = listener {
        // The reporter listens before anything can start a job.
        reporter = Some(tokio::spawn(crate::report::run(daemon.clone())));
        tasks.push(tokio::spawn(crate::inbox::run(daemon.clone())));
        tasks.push(tokio::spawn(crate::cron::run(daemon.clone())));
        let router = crate::http::router(daemon.clone());
        let stopped = stop.clone();
        let limits = daemon.config.http_limits(descriptors);
        tracing::info!(
            max_connections = limits.connections.max_connections,
            per_address = limits.connections.per_address,
            descriptors,
            "HTTP connection limits"
        );
        server = Some(tokio::spawn(crate::listener::serve(
            listener,
            limits,
            router,
            async move { stopped.notified().await },
        )));
    }
    if server.is_some() {
        tracing::info!(role = role.name(), host = %daemon.config.host_name, listen = %daemon.config.listen, public_url = %daemon.config.public_url, "solstice is serving");
    } else {
        // An orchestrator serves runners only: its `listen` is unused.
        tracing::info!(role = role.name(), host = %daemon.config.host_name, runners = %engine.endpoint(), "solstice is serving runners");
    }
    if integrates && daemon.github.is_none() && daemon.forgejo.is_none() {
        tracing::warn!(
            "no forge is configured: webhooks are refused until one is (see docs/deploy.md)"
        );
    }

    wait_for_signal().await;
    tracing::info!("stopping: no new deliveries; waiting for running jobs");
    daemon.accepting.store(false, Ordering::SeqCst);
    stop.notify_one();
    for task in &tasks {
        task.abort();
    }
    // Running jobs get a while to end; what is still running is then
    // cancelled (and reported so), and the engine waits for its VMs. One
    // process alone waits for every run; a host of a fleet for its own
    // jobs (the others' are theirs).
    let drain = daemon.config.drain;
    let alone = daemon.config.queue.is_none();
    let drained = tokio::time::timeout(drain, async {
        loop {
            let idle = if alone {
                matches!(daemon.store.running_runs().await, Ok(runs) if runs.is_empty())
            } else {
                daemon.engine.running() == 0
            };
            if idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("jobs still running after {drain:?}: cancelling them");
    }
    engine.shutdown().await;
    // The last reports (the cancellations) go out, within a bound.
    crate::report::flush(&daemon, Duration::from_secs(5)).await;
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    heartbeat.abort();
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, Ctrl-C through tokio's own.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn state_directories_are_made_private_and_shared_ones_refused() {
        let dir = tempfile::tempdir().expect("dir");
        // Created with the mode.
        let fresh = dir.path().join("a/state");
        private_dir(&fresh, 0o700).expect("created");
        assert_eq!(mode(&fresh), 0o700);
        // An existing one, too loose: tightened.
        let loose = dir.path().join("loose");
        std::fs::create_dir(&loose).expect("mkdir");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&loose, 0o700).expect("tightened");
        assert_eq!(mode(&loose), 0o700);
        // A shared one (like /tmp) is refused and left as it was.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(private_dir(&shared, 0o711).is_err());
        assert_eq!(mode(&shared), 0o1777);
        // The database file: created 0600, and made so.
        let db = fresh.join("solstice.db");
        private_database(&db).expect("db");
        assert_eq!(mode(&db), 0o600);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(fresh.join("solstice.db-wal"), b"").expect("wal");
        private_database(&db).expect("db");
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&fresh.join("solstice.db-wal")), 0o600);
    }
}
