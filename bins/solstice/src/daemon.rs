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
use solstice_core::store::{SqlStore, StateStore};
use solstice_forge::{Forge, ForgeAdapter, Forgejo, GitHub, StatusReporter};
use solstice_queue::{MemoryQueue, QueueOptions};
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
    /// Webhook body bytes that may be in memory at once (KiB).
    pub body_budget: tokio::sync::Semaphore,
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
/// installation token (short-lived) or the configured token, for clone
/// URLs on the forge's host.
#[derive(Debug)]
struct ForgeClones {
    github: Option<(String, ForgeLink)>,
    forgejo: Option<(String, ForgeLink)>,
}

/// `scheme://host[:port]/` of a URL, to tell which forge a clone URL is on.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    // Credentials in a URL are not part of its origin.
    let host = host.rsplit('@').next()?;
    Some(format!(
        "{}://{}/",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    ))
}

#[async_trait::async_trait]
impl CloneCredentials for ForgeClones {
    async fn for_clone(&self, scope: &str, url: &str) -> Result<Option<GitCredentials>, BoxError> {
        let Some(origin) = origin(url) else {
            return Ok(None);
        };
        let link = [&self.forgejo, &self.github]
            .into_iter()
            .flatten()
            .find(|(o, _)| *o == origin)
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

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> Result<(), BoxError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| format!("state directory {}: {e}", config.state_dir.display()))?;
    let (github, forgejo) = links(&config)?;
    let db = config.state_dir.join("solstice.db");
    let store = Arc::new(
        SqlStore::open_sqlite(&db)
            .await
            .map_err(|e| format!("state store {}: {}", db.display(), chain(&e)))?,
    );
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
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    let mut engine_config = EngineConfig::default();
    engine_config.capacity = config.capacity;
    engine_config.secret_store = secret_store;
    // Where each forge's repositories are cloned from: github.com for
    // api.github.com, the API host itself for GitHub Enterprise
    // (`https://ghe/api/v3`), Forgejo's base URL.
    let github_origin = config.github.as_ref().and_then(|g| {
        let api = origin(&g.api_url)?;
        Some(if api == "https://api.github.com/" {
            "https://github.com/".to_string()
        } else {
            api
        })
    });
    engine_config.clone_credentials = Some(Arc::new(ForgeClones {
        github: github_origin.zip(github.clone()),
        forgejo: config
            .forgejo
            .as_ref()
            .and_then(|f| origin(&f.url))
            .zip(forgejo.clone()),
    }));
    engine_config.listen = Listen::Tcp(
        config
            .runner_listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    );
    let engine = Engine::start(engine_config, store.clone(), queue, provider)
        .await
        .map_err(|e| format!("cannot start the engine: {}", chain(&e)))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
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
        body_budget: crate::http::body_budget(),
    });
    // The reporter listens before anything can start a job.
    let reporter = tokio::spawn(crate::report::run(daemon.clone()));
    let processor = tokio::spawn(crate::inbox::run(daemon.clone()));
    let schedules = tokio::spawn(crate::cron::run(daemon.clone()));
    let router = crate::http::router(daemon.clone());
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.notified().await })
            .await
    });
    tracing::info!(listen = %daemon.config.listen, public_url = %daemon.config.public_url, "solstice is serving");
    if daemon.github.is_none() && daemon.forgejo.is_none() {
        tracing::warn!(
            "no forge is configured: webhooks are refused until one is (see docs/deploy.md)"
        );
    }

    wait_for_signal().await;
    tracing::info!("stopping: no new deliveries; waiting for running jobs");
    daemon.accepting.store(false, Ordering::SeqCst);
    stop.notify_one();
    processor.abort();
    schedules.abort();
    // Running jobs get a while to end; what is still running is then
    // cancelled (and reported so), and the engine waits for its VMs.
    let drain = daemon.config.drain;
    let drained = tokio::time::timeout(drain, async {
        loop {
            match daemon.store.running_runs().await {
                Ok(runs) if runs.is_empty() => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("jobs still running after {drain:?}: cancelling them");
    }
    engine.shutdown().await;
    // The last reports (the cancellations) go out, within a bound.
    let _ = tokio::time::timeout(Duration::from_secs(5), daemon.reports.idle()).await;
    reporter.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
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
