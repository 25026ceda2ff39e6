//! The daemon's configuration: a KDL file (read behind the workflow
//! parser's guards, its mistakes reported with their spans) and the
//! environment, which overrides it setting by setting. Secrets come from
//! files (`*-file`) or the environment, never from the file itself, and
//! never show in `Debug` output or logs.
//!
//! ```kdl
//! listen "127.0.0.1:8080"
//! public-url "https://ci.example.com"
//! state-dir "/var/lib/solstice"
//! capacity 4
//! github {
//!     app-id 12345
//!     private-key-file "/etc/solstice/github-app.pem"
//!     webhook-secret-file "/etc/solstice/github-webhook-secret"
//! }
//! forgejo {
//!     url "https://codeberg.org"
//!     token-file "/etc/solstice/forgejo-token"
//!     webhook-secret-file "/etc/solstice/forgejo-webhook-secret"
//! }
//! fork-pull-requests {
//!     trust "alice" "bob"
//! }
//! // Where jobs run, by `runs_on` label (default: every label on the
//! // local provider, which does not isolate jobs).
//! vms {
//!     label "linux" provider="qemu" image="/var/lib/solstice/linux-guest" vcpus=2 memory-mib=2048
//!     label "omnios" provider="bhyve" snapshot="rpool/solstice/images/omnios@golden"
//!     default provider="local"
//! }
//! qemu {
//!     accelerator "auto"
//!     boot-timeout-seconds 60
//! }
//! bhyve {
//!     jobs-dataset "rpool/solstice/jobs"
//!     zone-root "/zones/solstice"
//!     link "igb0"
//! }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use solstice_forge::Secret;
use solstice_kdl::kdl::{KdlDocument, KdlNode, KdlValue};
use solstice_kdl::{Code, ParseError, ParseOptions, Problem};

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// A request's headers must arrive within this; a keep-alive connection
/// idle this long is closed.
pub const HEADER_READ: std::time::Duration = std::time::Duration::from_secs(10);

/// A request is answered within this (503 with `Retry-After` otherwise).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
    /// The daemon's address as forges and browsers reach it (job links).
    pub public_url: String,
    /// The SQLite database and the jobs' working directories.
    pub state_dir: PathBuf,
    /// Jobs at once.
    pub capacity: usize,
    /// The workflow file in a repository.
    pub workflow_path: String,
    /// How long a stop (SIGTERM) waits for running jobs before cancelling them.
    pub drain: std::time::Duration,
    /// Bearer token for the API's writes (approve); none: writes refused.
    pub admin_token: Option<Secret>,
    /// GitHub, when configured.
    pub github: Option<GitHubConfig>,
    /// Forgejo, when configured.
    pub forgejo: Option<ForgejoConfig>,
    /// Authors whose fork pull requests run without an approval.
    pub trusted_authors: Vec<String>,
    /// The file-backed secret store's directory.
    pub secrets_dir: Option<PathBuf>,
    /// The Vault KV v2 secret store, instead of the directory.
    pub vault: Option<VaultConfig>,
    /// Where the engine serves runners (default: a free loopback port,
    /// enough for the local and QEMU providers; a bhyve guest needs an
    /// address it can route to).
    pub runner_listen: Option<SocketAddr>,
    /// Where jobs run.
    pub vms: VmsConfig,
    /// The state store's URL (`postgres://...`); none: SQLite in the
    /// state directory (one host only).
    pub database: Option<Secret>,
    /// The job queue's URL (`amqp://...`, RabbitMQ); none: the in-process
    /// queue (one process only).
    pub queue: Option<Secret>,
    /// The queues are named `PREFIX.LABEL`.
    pub queue_prefix: String,
    /// This host's unique name in the fleet, and its leases' holder
    /// (default: the machine's host name and the daemon's role, the same
    /// across restarts: `build-1-orchestrator`).
    pub host_name: String,
    /// Whether `host-name` was set (else the role is added at start).
    pub host_name_given: bool,
    /// The `runs_on` labels this host takes; none: every label the `vms`
    /// block routes, and `default`.
    pub labels: Option<Vec<String>>,
    /// How long a job's claim lasts without its host renewing it: a host
    /// that dies loses its jobs to others after this.
    pub lease: std::time::Duration,
    /// HTTP connections held at once (default: from the descriptor limit).
    pub max_connections: Option<usize>,
    /// HTTP connections held at once from one client address (default: an
    /// eighth of `max_connections`, at least 8). Behind a reverse proxy,
    /// every connection comes from the proxy's address.
    pub max_connections_per_address: Option<usize>,
    /// Local jobs' runners (and so their steps) run as this user: the
    /// daemon must run as root to start them so.
    pub run_as: Option<String>,
    /// Jobs from a forge may run on the local provider without `run_as`,
    /// with the daemon's own user (no isolation at all).
    pub allow_unisolated_jobs: bool,
    /// Where local jobs' workspaces go: outside the state directory.
    pub jobs_dir: PathBuf,
}

impl Config {
    /// The HTTP server's limits for a process allowed `descriptors` open
    /// descriptors: half of them (less a reserve) for HTTP connections,
    /// unless the configuration says otherwise.
    pub fn http_limits(&self, descriptors: u64) -> crate::listener::HttpLimits {
        let mut connections =
            solstice_core::net::ConnectionLimits::within_descriptors(descriptors, 2, 8192);
        if let Some(max) = self.max_connections {
            let per = connections.per_address;
            connections = solstice_core::net::ConnectionLimits::new(max, (max / 8).max(8))
                .with_per_address(per.min(max));
        }
        if let Some(per) = self.max_connections_per_address {
            connections = connections.with_per_address(per);
        }
        crate::listener::HttpLimits {
            connections,
            header_read: HEADER_READ,
            request: REQUEST_TIMEOUT,
        }
    }

    /// Every secret this configuration holds (tokens, webhook secrets, the
    /// App's key, the database's and broker's URLs and their passwords):
    /// masked in every job's log, whatever the job.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |s: &Secret| out.push(s.expose().to_string());
        if let Some(t) = &self.admin_token {
            add(t);
        }
        if let Some(g) = &self.github {
            add(&g.webhook_secret);
            match &g.auth {
                GitHubAuth::App { key, .. } => add(key),
                GitHubAuth::Token(t) => add(t),
            }
        }
        if let Some(f) = &self.forgejo {
            add(&f.token);
            add(&f.webhook_secret);
        }
        if let Some(v) = &self.vault {
            add(&v.token);
        }
        for url in [&self.database, &self.queue].into_iter().flatten() {
            out.push(url.expose().to_string());
            // The password alone too, as written and decoded.
            if let Ok(parsed) = reqwest::Url::parse(url.expose())
                && let Some(password) = parsed.password()
            {
                out.push(password.to_string());
                if let Ok(decoded) = percent_decode(password) {
                    out.push(decoded);
                }
            }
        }
        out.retain(|v| !v.is_empty());
        out.sort();
        out.dedup();
        out
    }

    /// Whether jobs of `label` run on the local provider (no VM).
    pub fn runs_locally(&self, label: &str) -> bool {
        let route = self
            .vms
            .routes
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c)
            .or(self.vms.default.as_ref());
        route == Some(&ProviderChoice::Local)
    }

    /// Whether some label runs on the local provider.
    pub fn any_local(&self) -> bool {
        self.vms
            .routes
            .iter()
            .map(|(_, c)| c)
            .chain(self.vms.default.iter())
            .any(|c| *c == ProviderChoice::Local)
    }

    /// The labels this host takes when it consumes per-label queues.
    pub fn served_labels(&self) -> Vec<String> {
        if let Some(labels) = &self.labels {
            return labels.clone();
        }
        let mut labels: Vec<String> = self.vms.routes.iter().map(|(l, _)| l.clone()).collect();
        if !labels.iter().any(|l| l == "default") {
            labels.push("default".into());
        }
        labels
    }
}

/// Which provider runs each `runs_on` label, and the providers' settings.
#[derive(Debug, Clone)]
pub struct VmsConfig {
    /// Label -> provider, in the file's order.
    pub routes: Vec<(String, ProviderChoice)>,
    /// For every other label; none: such jobs fail to start, naming the label.
    pub default: Option<ProviderChoice>,
    /// QEMU's accelerator.
    pub accelerator: solstice_vmm::Accelerator,
    /// QEMU's boot timeout.
    pub boot_timeout: std::time::Duration,
    /// The UEFI firmware `boot="uefi"` labels boot with.
    pub firmware: PathBuf,
    /// bhyve: the dataset the VMs' clones go under.
    pub jobs_dataset: String,
    /// bhyve: where zone paths go.
    pub zone_root: String,
    /// bhyve: the link VNICs go on.
    pub link: Option<String>,
}

/// One provider choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderChoice {
    /// The runner as a host process (no isolation).
    Local,
    /// A QEMU VM booted from the image in this directory.
    Qemu {
        /// The image directory (images/linux-guest/build.sh).
        image: PathBuf,
        /// The guest may reach the network (default: only the runner).
        egress: bool,
        /// The machine type (default: the image's, microvm).
        machine: Option<solstice_vmm::Machine>,
        /// vCPUs for this label's VMs (default: the engine's per job).
        vcpus: Option<u32>,
        /// Memory in MiB for this label's VMs (default: the engine's).
        memory_mib: Option<u32>,
        /// The root disk of this label's VMs in GiB (default: the image's
        /// `disk-gib`, its recipe's `disk_gib`).
        disk_gib: Option<u32>,
        /// `[name=]host:port`s the guest may reach besides the runner (the
        /// forges are not among them: the daemon clones on the host).
        reach: Vec<String>,
        /// Boot through UEFI from the image's `disk.raw` (`boot="uefi"`),
        /// as a bhyve zone does, instead of loading its kernel.
        uefi: bool,
    },
    /// A bhyve zone on a clone of this snapshot.
    Bhyve {
        /// `pool/images/NAME@golden`.
        snapshot: String,
    },
}

/// GitHub settings.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// API root.
    pub api_url: String,
    /// The webhook's secret.
    pub webhook_secret: Secret,
    /// How the daemon authenticates.
    pub auth: GitHubAuth,
}

/// A GitHub App (check runs) or a plain token (commit statuses).
#[derive(Debug, Clone)]
pub enum GitHubAuth {
    /// A GitHub App.
    App {
        /// Its id.
        id: u64,
        /// Its private key (PEM).
        key: Secret,
    },
    /// A token.
    Token(Secret),
}

/// Forgejo settings.
#[derive(Debug, Clone)]
pub struct ForgejoConfig {
    /// Base URL.
    pub url: String,
    /// API token.
    pub token: Secret,
    /// The webhook's secret.
    pub webhook_secret: Secret,
}

/// HashiCorp Vault KV v2 settings.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Vault's address (`https://vault:8200`).
    pub addr: String,
    /// The KV v2 mount (`secret`).
    pub mount: String,
    /// Path prefix under the mount; a repository's secrets are at
    /// `PREFIX/OWNER/NAME`.
    pub prefix: String,
    /// Token.
    pub token: Secret,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file has mistakes (rendered with their spans).
    #[error("{}", .0.render(false, 100))]
    File(ParseError),
    /// A setting from the environment, or a combination, is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// One line of the `vms` block as written.
#[derive(Default)]
struct VmLine {
    /// `None`: the `default` line.
    label: Option<String>,
    provider: String,
    /// image= or snapshot=.
    source: Option<String>,
    egress: Option<bool>,
    machine: Option<String>,
    vcpus: Option<i128>,
    memory_mib: Option<i128>,
    disk_gib: Option<i128>,
    reach: Option<String>,
    boot: Option<String>,
}

struct Raw {
    values: std::collections::BTreeMap<String, String>,
    trust: Vec<String>,
    /// `vms { label "L" provider=... }` lines.
    vms: Vec<VmLine>,
}

impl Config {
    /// Reads the file (when given), then the environment (`env(NAME)`).
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = Raw {
            values: Default::default(),
            trust: Vec::new(),
            vms: Vec::new(),
        };
        let mut base = PathBuf::from(".");
        if let Some(path) = path {
            let name = path.display().to_string();
            let bytes = read_limited(path).map_err(|source| ConfigError::Read {
                path: name.clone(),
                source,
            })?;
            let options = ParseOptions::default()
                .with_max_bytes(MAX_CONFIG_BYTES)
                .with_max_depth(8);
            let (doc, text) =
                solstice_kdl::parse_document(&name, &bytes, &options).map_err(ConfigError::File)?;
            let mut problems = Vec::new();
            let mut secrets = Vec::new();
            read_block(&doc, "", &mut raw, &mut problems, &mut secrets);
            if !problems.is_empty() {
                // A secret written into the file is not shown back.
                let mut shown = text.to_string();
                for span in secrets {
                    let range = span.offset()..span.offset() + span.len();
                    if let Some(value) = shown.get(range.clone()) {
                        let stars = "*".repeat(value.len());
                        shown.replace_range(range, &stars);
                    }
                }
                return Err(ConfigError::File(ParseError::new(
                    &name,
                    shown.into(),
                    problems,
                )));
            }
            if let Some(dir) = path.parent() {
                base = dir.to_path_buf();
            }
        }
        for (key, var) in ENV {
            if let Some(value) = env(var) {
                raw.values.insert(key.to_string(), value);
            }
        }
        if let Some(list) = env("SOLSTICE_TRUSTED_AUTHORS") {
            raw.trust = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        build(raw, &base)
    }
}

/// Every setting: its key in the file (`block.name`) and its variable.
const ENV: &[(&str, &str)] = &[
    ("listen", "SOLSTICE_LISTEN"),
    ("public-url", "SOLSTICE_PUBLIC_URL"),
    ("state-dir", "SOLSTICE_STATE_DIR"),
    ("capacity", "SOLSTICE_CAPACITY"),
    ("workflow-path", "SOLSTICE_WORKFLOW_PATH"),
    ("drain-seconds", "SOLSTICE_DRAIN_SECONDS"),
    ("admin-token", "SOLSTICE_ADMIN_TOKEN"),
    ("admin-token-file", "SOLSTICE_ADMIN_TOKEN_FILE"),
    ("secrets-dir", "SOLSTICE_SECRETS_DIR"),
    ("github.api-url", "SOLSTICE_GITHUB_API_URL"),
    ("github.app-id", "SOLSTICE_GITHUB_APP_ID"),
    ("github.private-key", "SOLSTICE_GITHUB_PRIVATE_KEY"),
    (
        "github.private-key-file",
        "SOLSTICE_GITHUB_PRIVATE_KEY_FILE",
    ),
    ("github.token", "SOLSTICE_GITHUB_TOKEN"),
    ("github.token-file", "SOLSTICE_GITHUB_TOKEN_FILE"),
    ("github.webhook-secret", "SOLSTICE_GITHUB_WEBHOOK_SECRET"),
    (
        "github.webhook-secret-file",
        "SOLSTICE_GITHUB_WEBHOOK_SECRET_FILE",
    ),
    ("forgejo.url", "SOLSTICE_FORGEJO_URL"),
    ("forgejo.token", "SOLSTICE_FORGEJO_TOKEN"),
    ("forgejo.token-file", "SOLSTICE_FORGEJO_TOKEN_FILE"),
    ("forgejo.webhook-secret", "SOLSTICE_FORGEJO_WEBHOOK_SECRET"),
    (
        "forgejo.webhook-secret-file",
        "SOLSTICE_FORGEJO_WEBHOOK_SECRET_FILE",
    ),
    ("vault.addr", "SOLSTICE_VAULT_ADDR"),
    ("vault.mount", "SOLSTICE_VAULT_MOUNT"),
    ("vault.prefix", "SOLSTICE_VAULT_PREFIX"),
    ("vault.token", "SOLSTICE_VAULT_TOKEN"),
    ("vault.token-file", "SOLSTICE_VAULT_TOKEN_FILE"),
    ("runner-listen", "SOLSTICE_RUNNER_LISTEN"),
    ("database", "SOLSTICE_DATABASE"),
    ("queue", "SOLSTICE_QUEUE"),
    ("queue-prefix", "SOLSTICE_QUEUE_PREFIX"),
    ("host-name", "SOLSTICE_HOST_NAME"),
    ("labels", "SOLSTICE_LABELS"),
    ("lease-seconds", "SOLSTICE_LEASE_SECONDS"),
    ("max-connections", "SOLSTICE_MAX_CONNECTIONS"),
    (
        "max-connections-per-address",
        "SOLSTICE_MAX_CONNECTIONS_PER_ADDRESS",
    ),
    ("run-as", "SOLSTICE_RUN_AS"),
    ("allow-unisolated-jobs", "SOLSTICE_ALLOW_UNISOLATED_JOBS"),
    ("jobs-dir", "SOLSTICE_JOBS_DIR"),
    ("qemu.accelerator", "SOLSTICE_QEMU_ACCELERATOR"),
    ("qemu.firmware", "SOLSTICE_QEMU_FIRMWARE"),
    (
        "qemu.boot-timeout-seconds",
        "SOLSTICE_QEMU_BOOT_TIMEOUT_SECONDS",
    ),
    ("bhyve.jobs-dataset", "SOLSTICE_BHYVE_JOBS_DATASET"),
    ("bhyve.zone-root", "SOLSTICE_BHYVE_ZONE_ROOT"),
    ("bhyve.link", "SOLSTICE_BHYVE_LINK"),
];

/// Secrets: only the `-file` form may be in the file.
const SECRET_KEYS: &[&str] = &[
    "admin-token",
    "github.private-key",
    "github.token",
    "github.webhook-secret",
    "forgejo.token",
    "forgejo.webhook-secret",
    "vault.token",
];

const BLOCKS: &[&str] = &[
    "github",
    "forgejo",
    "vault",
    "fork-pull-requests",
    "vms",
    "qemu",
    "bhyve",
];

/// The environment-variable list, for `--help`.
pub fn environment_help() -> String {
    let mut out = String::from("Every setting can also come from the environment:\n");
    for (key, var) in ENV {
        out.push_str(&format!("  {var:<38} {key}\n"));
    }
    out.push_str(
        "  SOLSTICE_TRUSTED_AUTHORS               fork-pull-requests.trust (comma-separated)\n",
    );
    out
}

/// `%XX` sequences decoded (a URL's password as the server sees it).
fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_block(
    doc: &KdlDocument,
    prefix: &str,
    raw: &mut Raw,
    problems: &mut Vec<Problem>,
    secrets: &mut Vec<miette::SourceSpan>,
) {
    let mut seen: Vec<String> = Vec::new();
    for node in doc.nodes() {
        let name = node.name().value();
        let key = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        if seen.contains(&key) {
            problems.push(Problem::new(
                Code::DuplicateNode,
                node.name().span(),
                format!("`{key}` is set twice"),
                "set again here",
            ));
            continue;
        }
        seen.push(key.clone());
        if prefix.is_empty() && BLOCKS.contains(&name) {
            if !node.entries().is_empty() {
                problems.push(Problem::new(
                    Code::UnexpectedArgument,
                    node.entries()[0].span(),
                    format!("`{name}` takes a block, not values"),
                    "not expected",
                ));
            }
            match node.children() {
                Some(children) if name == "fork-pull-requests" => {
                    read_trust(children, raw, problems)
                }
                Some(children) if name == "vms" => read_vms(children, raw, problems),
                Some(children) => read_block(children, name, raw, problems, secrets),
                None => problems.push(Problem::new(
                    Code::MissingProperty,
                    node.span(),
                    format!("`{name}` needs a block of settings"),
                    "no block",
                )),
            }
            continue;
        }
        let known = ENV.iter().any(|(k, _)| *k == key);
        if !known {
            let nearest = ENV
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| prefix.is_empty() != k.contains('.') && k.starts_with(prefix))
                .map(|k| k.rsplit('.').next().unwrap_or(k))
                .filter(|k| strsim::levenshtein(k, name) <= 2)
                .min_by_key(|k| strsim::levenshtein(k, name));
            let mut p = Problem::new(
                Code::UnknownNode,
                node.name().span(),
                format!("unknown setting `{key}`"),
                "not a setting",
            );
            if let Some(n) = nearest {
                p = p.help(format!("did you mean `{n}`?"));
            }
            problems.push(p);
            continue;
        }
        if SECRET_KEYS.contains(&key.as_str()) {
            secrets.extend(node.entries().iter().map(|e| e.span()));
            problems.push(
                Problem::new(
                    Code::InvalidValue,
                    node.name().span(),
                    format!("`{key}` is a secret: the file may only name a file that holds it"),
                    "secret in the configuration file",
                )
                .help(format!("use `{name}-file \"/path\"`, or the environment")),
            );
            continue;
        }
        match one_value(node) {
            Ok(value) => {
                raw.values.insert(key, value);
            }
            Err(p) => problems.push(p),
        }
    }
}

fn read_trust(doc: &KdlDocument, raw: &mut Raw, problems: &mut Vec<Problem>) {
    for node in doc.nodes() {
        if node.name().value() != "trust" {
            problems.push(
                Problem::new(
                    Code::UnknownNode,
                    node.name().span(),
                    format!(
                        "unknown setting `fork-pull-requests.{}`",
                        node.name().value()
                    ),
                    "not a setting",
                )
                .help("the only setting here is `trust \"login\" ...`"),
            );
            continue;
        }
        for entry in node.entries() {
            match entry.value() {
                KdlValue::String(s) if entry.name().is_none() && !s.is_empty() => {
                    raw.trust.push(s.clone());
                }
                _ => problems.push(Problem::new(
                    Code::WrongType,
                    entry.span(),
                    "`trust` takes forge logins as strings",
                    "not a login",
                )),
            }
        }
    }
}

/// `label "L" provider="qemu" image="DIR"`, `label "L" provider="bhyve"
/// snapshot="S"`, `label "L" provider="local"`, `default provider=...`.
fn read_vms(doc: &KdlDocument, raw: &mut Raw, problems: &mut Vec<Problem>) {
    for node in doc.nodes() {
        let kind = node.name().value();
        if kind != "label" && kind != "default" {
            problems.push(
                Problem::new(
                    Code::UnknownNode,
                    node.name().span(),
                    format!("unknown setting `vms.{kind}`"),
                    "not a setting",
                )
                .help("write `label \"NAME\" provider=\"qemu\" image=\"DIR\"` or `default provider=\"local\"`"),
            );
            continue;
        }
        let mut line = VmLine::default();
        let mut provider = None;
        let mut ok = true;
        for entry in node.entries() {
            let key = entry.name().map(|n| n.value());
            if key == Some("egress") && line.egress.is_none() {
                match entry.value() {
                    KdlValue::Bool(b) => line.egress = Some(*b),
                    _ => {
                        problems.push(Problem::new(
                            Code::WrongType,
                            entry.span(),
                            "`egress` is #true or #false",
                            "not a boolean",
                        ));
                        ok = false;
                    }
                }
                continue;
            }
            if let Some(k @ ("vcpus" | "memory-mib" | "disk-gib")) = key {
                let slot = match k {
                    "vcpus" => &mut line.vcpus,
                    "memory-mib" => &mut line.memory_mib,
                    _ => &mut line.disk_gib,
                };
                match entry.value() {
                    KdlValue::Integer(n) if slot.is_none() => *slot = Some(*n),
                    _ => {
                        problems.push(Problem::new(
                            Code::WrongType,
                            entry.span(),
                            format!("`{k}` is a number, set once"),
                            "not a number",
                        ));
                        ok = false;
                    }
                }
                continue;
            }
            let value = match entry.value() {
                KdlValue::String(s) if !s.is_empty() => s.clone(),
                _ => {
                    problems.push(Problem::new(
                        Code::WrongType,
                        entry.span(),
                        "expected a non-empty string",
                        "wrong type",
                    ));
                    ok = false;
                    continue;
                }
            };
            match key {
                None if kind == "label" && line.label.is_none() => line.label = Some(value),
                Some("provider") if provider.is_none() => provider = Some(value),
                Some("image" | "snapshot") if line.source.is_none() => line.source = Some(value),
                Some("machine") if line.machine.is_none() => line.machine = Some(value),
                Some("reach") if line.reach.is_none() => line.reach = Some(value),
                Some("boot") if line.boot.is_none() => line.boot = Some(value),
                other => {
                    problems.push(Problem::new(
                        Code::UnexpectedArgument,
                        entry.span(),
                        match other {
                            None => format!("`{kind}` takes one label"),
                            Some(n) => format!("`{n}` is not a property of `{kind}` here (provider=, image=, snapshot=, egress=, machine=, vcpus=, memory-mib=, disk-gib=, reach= or boot=, once each)"),
                        },
                        "not expected",
                    ));
                    ok = false;
                }
            }
        }
        let Some(provider) = provider else {
            problems.push(Problem::new(
                Code::MissingProperty,
                node.span(),
                format!("`{kind}` needs provider=\"local\", \"qemu\" or \"bhyve\""),
                "no provider",
            ));
            continue;
        };
        if kind == "label" && line.label.is_none() {
            problems.push(Problem::new(
                Code::MissingProperty,
                node.span(),
                "`label` needs the runs_on label it routes",
                "no label",
            ));
            continue;
        }
        if ok {
            line.provider = provider;
            raw.vms.push(line);
        }
    }
}

fn one_value(node: &KdlNode) -> Result<String, Problem> {
    let entries = node.entries();
    if node.children().is_some() {
        return Err(Problem::new(
            Code::UnexpectedChildren,
            node.span(),
            format!("`{}` takes one value, not a block", node.name().value()),
            "unexpected block",
        ));
    }
    let [entry] = entries else {
        return Err(Problem::new(
            Code::MissingProperty,
            node.span(),
            format!("`{}` takes exactly one value", node.name().value()),
            "one value here",
        ));
    };
    if entry.name().is_some() {
        return Err(Problem::new(
            Code::UnexpectedArgument,
            entry.span(),
            "a setting takes a value, not a property",
            "property",
        ));
    }
    match entry.value() {
        KdlValue::String(s) => Ok(s.clone()),
        KdlValue::Integer(i) => Ok(i.to_string()),
        KdlValue::Bool(b) => Ok(b.to_string()),
        _ => Err(Problem::new(
            Code::WrongType,
            entry.span(),
            "expected a string or a number",
            "wrong type",
        )),
    }
}

fn build(mut raw: Raw, base: &Path) -> Result<Config, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let mut take = |k: &str| raw.values.remove(k);
    let listen = take("listen").unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen: SocketAddr = listen.parse().map_err(|_| {
        invalid(format!(
            "listen: `{listen}` is not an address like 127.0.0.1:8080"
        ))
    })?;
    let public_url = take("public-url").unwrap_or_else(|| format!("http://{listen}"));
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        return Err(invalid(format!(
            "public-url: `{public_url}` is not an http(s) URL"
        )));
    }
    let public_url = public_url.trim_end_matches('/').to_string();
    let relative = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };
    let state_dir = take("state-dir").map_or_else(|| PathBuf::from("solstice-state"), relative);
    let capacity = match take("capacity") {
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        Some(c) => c
            .parse::<usize>()
            .ok()
            .filter(|c| (1..=1024).contains(c))
            .ok_or_else(|| invalid(format!("capacity: `{c}` is not a number from 1 to 1024")))?,
    };
    let workflow_path = take("workflow-path").unwrap_or_else(|| ".solstice/workflow.kdl".into());
    let drain = match take("drain-seconds") {
        None => std::time::Duration::from_secs(10),
        Some(d) => d
            .parse::<u64>()
            .ok()
            .filter(|d| *d <= 3600)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| {
                invalid(format!(
                    "drain-seconds: `{d}` is not a number of seconds up to 3600"
                ))
            })?,
    };
    let mut secret = |key: &str| -> Result<Option<Secret>, ConfigError> {
        let file_key = format!("{key}-file");
        match (raw.values.remove(key), raw.values.remove(&file_key)) {
            (Some(v), _) => Ok(Some(Secret::new(v))),
            (None, Some(file)) => {
                let path = relative(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(format!("{file_key}: cannot read {}: {e}", path.display()))
                })?;
                let value = text.trim_end_matches(['\n', '\r']).to_string();
                if value.is_empty() {
                    return Err(invalid(format!("{file_key}: {} is empty", path.display())));
                }
                Ok(Some(Secret::new(value)))
            }
            (None, None) => Ok(None),
        }
    };
    let admin_token = secret("admin-token")?;
    let gh_secret = secret("github.webhook-secret")?;
    let gh_key = secret("github.private-key")?;
    let gh_token = secret("github.token")?;
    let fj_token = secret("forgejo.token")?;
    let fj_secret = secret("forgejo.webhook-secret")?;
    let vault_token = secret("vault.token")?;
    let mut take = |k: &str| raw.values.remove(k);
    let gh_app = take("github.app-id");
    let gh_api = take("github.api-url");
    let github = match (gh_secret, gh_app, gh_key, gh_token) {
        (None, None, None, None) if gh_api.is_none() => None,
        (None, ..) => {
            return Err(invalid(
                "github: a webhook secret is required (github.webhook-secret-file)".into(),
            ));
        }
        (Some(webhook_secret), Some(id), Some(key), None) => Some(GitHubConfig {
            api_url: gh_api.unwrap_or_else(|| solstice_forge::GITHUB_API.into()),
            webhook_secret,
            auth: GitHubAuth::App {
                id: id
                    .parse()
                    .map_err(|_| invalid(format!("github.app-id: `{id}` is not a number")))?,
                key,
            },
        }),
        (Some(webhook_secret), None, None, Some(token)) => Some(GitHubConfig {
            api_url: gh_api.unwrap_or_else(|| solstice_forge::GITHUB_API.into()),
            webhook_secret,
            auth: GitHubAuth::Token(token),
        }),
        _ => {
            return Err(invalid(
                "github: configure either an App (app-id and private-key-file) or a token (token-file), not both or half".into(),
            ));
        }
    };
    let fj_url = take("forgejo.url");
    let forgejo = match (fj_url, fj_token, fj_secret) {
        (None, None, None) => None,
        (Some(url), Some(token), Some(webhook_secret)) => Some(ForgejoConfig {
            url,
            token,
            webhook_secret,
        }),
        _ => {
            return Err(invalid(
                "forgejo: url, token-file and webhook-secret-file are all required".into(),
            ));
        }
    };
    let secrets_dir = take("secrets-dir").map(relative);
    let vault = match (take("vault.addr"), vault_token) {
        (None, None) => None,
        (Some(addr), Some(token)) => Some(VaultConfig {
            addr: addr.trim_end_matches('/').to_string(),
            mount: take("vault.mount").unwrap_or_else(|| "secret".into()),
            prefix: take("vault.prefix").unwrap_or_else(|| "solstice".into()),
            token,
        }),
        _ => {
            return Err(invalid(
                "vault: addr and token-file are both required".into(),
            ));
        }
    };
    if vault.is_some() && secrets_dir.is_some() {
        return Err(invalid(
            "secrets-dir and vault: choose one secret store".into(),
        ));
    }
    let runner_listen = match take("runner-listen") {
        None => None,
        Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
            invalid(format!(
                "runner-listen: `{a}` is not an address like 10.0.0.1:7000"
            ))
        })?),
    };
    let mut vms = VmsConfig {
        routes: Vec::new(),
        default: None,
        accelerator: match take("qemu.accelerator") {
            None => solstice_vmm::Accelerator::Auto,
            Some(a) => a
                .parse()
                .map_err(|e| invalid(format!("qemu.accelerator: {e}")))?,
        },
        boot_timeout: match take("qemu.boot-timeout-seconds") {
            None => std::time::Duration::from_secs(60),
            Some(t) => t
                .parse::<u64>()
                .ok()
                .filter(|t| (1..=3600).contains(t))
                .map(std::time::Duration::from_secs)
                .ok_or_else(|| {
                    invalid(format!(
                        "qemu.boot-timeout-seconds: `{t}` is not a number of seconds from 1 to 3600"
                    ))
                })?,
        },
        firmware: take("qemu.firmware")
            .map(relative)
            .unwrap_or_else(|| PathBuf::from(solstice_vmm::DEFAULT_UEFI_FIRMWARE)),
        jobs_dataset: take("bhyve.jobs-dataset").unwrap_or_else(|| "rpool/solstice/jobs".into()),
        zone_root: take("bhyve.zone-root").unwrap_or_else(|| "/zones/solstice".into()),
        link: take("bhyve.link"),
    };
    let vm_lines = std::mem::take(&mut raw.vms);
    for line in vm_lines {
        let VmLine {
            label,
            provider,
            source,
            egress,
            machine,
            vcpus,
            memory_mib,
            disk_gib,
            reach,
            boot,
        } = line;
        let at = label
            .as_ref()
            .map_or_else(|| "vms.default".to_string(), |l| format!("vms.label {l:?}"));
        let qemu_only = egress.is_some()
            || machine.is_some()
            || vcpus.is_some()
            || memory_mib.is_some()
            || disk_gib.is_some()
            || reach.is_some()
            || boot.is_some();
        let bounded = |what: &str, n: Option<i128>, max: u32| -> Result<Option<u32>, ConfigError> {
            n.map(|n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| invalid(format!("{at}: {what} must be from 1 to {max}")))
            })
            .transpose()
        };
        let choice = match (provider.as_str(), source) {
            (_, _) if qemu_only && provider != "qemu" => {
                return Err(invalid(format!(
                    "{at}: egress=, machine=, vcpus=, memory-mib=, disk-gib=, reach= and boot= are QEMU settings"
                )));
            }
            ("local", None) => ProviderChoice::Local,
            ("qemu", Some(image)) => {
                let uefi = match boot.as_deref() {
                    None | Some("kernel") => false,
                    Some("uefi") => true,
                    Some(other) => {
                        return Err(invalid(format!(
                            "{at}: unknown boot {other:?} (choices: kernel, uefi)"
                        )));
                    }
                };
                if uefi && machine.as_deref().is_some_and(|m| m != "q35") {
                    return Err(invalid(format!(
                        "{at}: boot=\"uefi\" runs on the q35 machine (microvm has no firmware)"
                    )));
                }
                if uefi && disk_gib.is_some() {
                    return Err(invalid(format!(
                        "{at}: boot=\"uefi\" boots the image's disk.raw, whose size is its recipe's disk_gib: leave out disk-gib="
                    )));
                }
                ProviderChoice::Qemu {
                    image: relative(image),
                    egress: egress.unwrap_or(false),
                    machine: machine
                        .map(|m| m.parse().map_err(|e| invalid(format!("{at}: {e}"))))
                        .transpose()?,
                    vcpus: bounded("vcpus", vcpus, 64)?,
                    memory_mib: bounded("memory-mib", memory_mib, 1 << 20)?,
                    disk_gib: bounded("disk-gib", disk_gib, solstice_vmm::MAX_DISK_GIB)?,
                    reach: reach
                        .iter()
                        .flat_map(|r| r.split(','))
                        .map(|r| r.trim().to_string())
                        .filter(|r| !r.is_empty())
                        .collect(),
                    uefi,
                }
            }
            ("bhyve", Some(snapshot)) if snapshot.contains('@') => {
                ProviderChoice::Bhyve { snapshot }
            }
            ("local", Some(_)) => {
                return Err(invalid(format!("{at}: the local provider takes no image")));
            }
            ("qemu", None) => {
                return Err(invalid(format!(
                    "{at}: provider \"qemu\" needs image=\"DIR\" (built by images/linux-guest/build.sh)"
                )));
            }
            ("bhyve", _) => {
                return Err(invalid(format!(
                    "{at}: provider \"bhyve\" needs snapshot=\"pool/images/NAME@snap\""
                )));
            }
            (other, _) => {
                return Err(invalid(format!(
                    "{at}: unknown provider `{other}` (choices: local, qemu, bhyve)"
                )));
            }
        };
        match label {
            None if vms.default.is_some() => {
                return Err(invalid("vms: `default` is set twice".into()));
            }
            None => vms.default = Some(choice),
            Some(l) if vms.routes.iter().any(|(r, _)| *r == l) => {
                return Err(invalid(format!("vms: label {l:?} is routed twice")));
            }
            Some(l) => vms.routes.push((l, choice)),
        }
    }
    if vms.routes.is_empty() && vms.default.is_none() {
        vms.default = Some(ProviderChoice::Local);
    }
    let database = take("database");
    if let Some(d) = &database
        && !(d.starts_with("postgres://") || d.starts_with("postgresql://"))
    {
        return Err(invalid(
            "database: a postgres:// URL (without one, SQLite in the state directory)".into(),
        ));
    }
    let queue = take("queue");
    if let Some(q) = &queue
        && !(q.starts_with("amqp://") || q.starts_with("amqps://"))
    {
        return Err(invalid(
            "queue: an amqp:// URL of RabbitMQ (without one, the in-process queue)".into(),
        ));
    }
    let queue_prefix = take("queue-prefix").unwrap_or_else(|| "solstice.jobs".into());
    if !solstice_kdl::valid_label(&queue_prefix) {
        return Err(invalid(format!(
            "queue-prefix: `{queue_prefix}` is not 1 to 64 letters, digits, `.`, `_` or `-`"
        )));
    }
    let (host_name, host_name_given) = match take("host-name") {
        Some(h) => (h, true),
        None => {
            let machine = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "host".into());
            (machine, false)
        }
    };
    if host_name.is_empty() || host_name.len() > 128 || host_name.chars().any(char::is_control) {
        return Err(invalid(
            "host-name: 1 to 128 characters, none a control character".into(),
        ));
    }
    let labels = match take("labels") {
        None => None,
        Some(l) => {
            let labels: Vec<String> = l
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = labels.iter().find(|l| !solstice_kdl::valid_label(l)) {
                return Err(invalid(format!(
                    "labels: {bad:?} is not a label (1 to 64 letters, digits, `.`, `_` or `-`)"
                )));
            }
            Some(labels)
        }
    };
    let lease = match take("lease-seconds") {
        None => std::time::Duration::from_secs(30),
        Some(l) => l
            .parse::<u64>()
            .ok()
            .filter(|l| (3..=3600).contains(l))
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| {
                invalid(format!(
                    "lease-seconds: `{l}` is not a number of seconds from 3 to 3600"
                ))
            })?,
    };
    let count = |key: &str, v: Option<String>| -> Result<Option<usize>, ConfigError> {
        v.map(|n| {
            n.parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| invalid(format!("{key}: `{n}` is not a number from 1 to 1000000")))
        })
        .transpose()
    };
    let max_connections = count("max-connections", take("max-connections"))?;
    let max_connections_per_address = count(
        "max-connections-per-address",
        take("max-connections-per-address"),
    )?;
    let run_as = take("run-as");
    if let Some(user) = &run_as
        && (user.is_empty()
            || user.len() > 32
            || !user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return Err(invalid(format!(
            "run-as: `{user}` is not a user name (letters, digits, `.`, `_`, `-`)"
        )));
    }
    let allow_unisolated_jobs = match take("allow-unisolated-jobs").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(invalid(format!(
                "allow-unisolated-jobs: `{other}` is not #true or #false"
            )));
        }
    };
    let jobs_dir = take("jobs-dir").map_or_else(
        || {
            // Beside the state directory, never in it: a local job's
            // `../..` must not be the daemon's state.
            let mut name = state_dir
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "solstice".into());
            name.push("-jobs");
            state_dir.with_file_name(name)
        },
        relative,
    );
    if jobs_dir.starts_with(&state_dir) {
        return Err(invalid(format!(
            "jobs-dir: {} is inside the state directory {}; jobs must not reach the daemon's state",
            jobs_dir.display(),
            state_dir.display()
        )));
    }
    Ok(Config {
        listen,
        public_url,
        state_dir,
        capacity,
        workflow_path,
        drain,
        admin_token,
        github,
        forgejo,
        trusted_authors: raw.trust,
        secrets_dir,
        vault,
        runner_listen,
        vms,
        database: database.map(Secret::new),
        queue: queue.map(Secret::new),
        queue_prefix,
        host_name,
        host_name_given,
        labels,
        lease,
        max_connections,
        max_connections_per_address,
        run_as,
        allow_unisolated_jobs,
        jobs_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("secret"), "s3cret-value\n").expect("write");
        let path = dir.path().join("solstice.kdl");
        std::fs::write(&path, text).expect("write");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(Some(&path), &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_boundary_settings_are_read_and_checked() {
        let c = load(
            "state-dir \"/var/lib/ci\"\nmax-connections 100\nmax-connections-per-address 30\nrun-as \"ci-job\"\nallow-unisolated-jobs #true\n",
            &[],
        )
        .expect("valid");
        assert_eq!(c.run_as.as_deref(), Some("ci-job"));
        assert!(c.allow_unisolated_jobs);
        // Jobs beside the state, never in it.
        assert_eq!(c.jobs_dir, PathBuf::from("/var/lib/ci-jobs"));
        let limits = c.http_limits(1024);
        assert_eq!(
            (
                limits.connections.max_connections,
                limits.connections.per_address
            ),
            (100, 30)
        );
        // From the descriptors when not set.
        let c = load("", &[]).expect("valid");
        assert!(!c.allow_unisolated_jobs);
        let limits = c.http_limits(1024);
        assert_eq!(
            (
                limits.connections.max_connections,
                limits.connections.per_address
            ),
            (384, 48)
        );
        for (text, key) in [
            ("max-connections 0\n", "max-connections"),
            (
                "max-connections-per-address \"x\"\n",
                "max-connections-per-address",
            ),
            ("run-as \"a b\"\n", "run-as"),
            ("run-as \"../root\"\n", "run-as"),
            ("allow-unisolated-jobs \"yes\"\n", "allow-unisolated-jobs"),
            ("state-dir \"/s\"\njobs-dir \"/s/jobs\"\n", "jobs-dir"),
        ] {
            let err = load(text, &[]).expect_err(key).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn every_secret_of_the_configuration_is_masked_in_jobs() {
        let c = load(
            "admin-token-file \"secret\"\nforgejo {\n url \"https://codeberg.org\"\n token-file \"secret\"\n webhook-secret-file \"secret\"\n}\n",
            &[
                ("SOLSTICE_DATABASE", "postgres://ci:p%40ss%2Fword@db/ci"),
                ("SOLSTICE_QUEUE", "amqp://ci:hunter22@mq/%2f"),
            ],
        )
        .expect("valid");
        let values = c.secret_values();
        for want in [
            "s3cret-value",
            "postgres://ci:p%40ss%2Fword@db/ci",
            "p%40ss%2Fword",
            "p@ss/word",
            "amqp://ci:hunter22@mq/%2f",
            "hunter22",
        ] {
            assert!(values.iter().any(|v| v == want), "{want} not in {values:?}");
        }
    }

    #[test]
    fn the_fleet_settings_are_read_and_checked() {
        let c = load(
            "database \"postgres://db.example/solstice\"\nqueue \"amqp://mq.example/%2f\"\nlabels \"linux, omnios\"\nhost-name \"orch-1\"\nlease-seconds 12\nvms {\n    label \"trusted\" provider=\"local\"\n}\n",
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.database
                .as_ref()
                .map(|d| d.expose().to_string())
                .as_deref(),
            Some("postgres://db.example/solstice")
        );
        assert_eq!(c.queue_prefix, "solstice.jobs");
        assert_eq!(c.host_name, "orch-1");
        assert_eq!(c.lease, std::time::Duration::from_secs(12));
        assert_eq!(c.served_labels(), ["linux", "omnios"]);
        // Without `labels`: the routed labels and `default`.
        let c = load("vms {\n    label \"trusted\" provider=\"local\"\n}\n", &[]).expect("valid");
        assert_eq!(c.served_labels(), ["trusted", "default"]);
        assert!(c.database.is_none() && c.queue.is_none());
        // The environment wins, and the URL's password stays out of Debug.
        let c = load(
            "",
            &[
                ("SOLSTICE_DATABASE", "postgres://u:hunter2@db/x"),
                ("SOLSTICE_LABELS", "a"),
            ],
        )
        .expect("valid");
        assert_eq!(c.served_labels(), ["a"]);
        assert!(!format!("{c:?}").contains("hunter2"));
        for (text, key) in [
            ("database \"mysql://x\"\n", "database"),
            ("queue \"http://x\"\n", "queue"),
            ("labels \"a b\"\n", "labels"),
            ("queue-prefix \"a/b\"\n", "queue-prefix"),
            ("lease-seconds 2\n", "lease-seconds"),
            ("lease-seconds 3601\n", "lease-seconds"),
        ] {
            match load(text, &[]) {
                Err(ConfigError::Invalid(m)) => assert!(m.starts_with(key), "{text}: {m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_full_file_reads_and_secrets_stay_hidden() {
        let config = load(
            r#"
            listen "127.0.0.1:9000"
            public-url "https://ci.example.com/"
            capacity 3
            github {
                token-file "secret"
                webhook-secret-file "secret"
            }
            fork-pull-requests {
                trust "alice" "bob"
            }
            "#,
            &[],
        )
        .expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.public_url, "https://ci.example.com");
        assert_eq!(config.capacity, 3);
        assert_eq!(config.trusted_authors, ["alice", "bob"]);
        let github = config.github.as_ref().expect("github");
        assert_eq!(github.webhook_secret.expose(), "s3cret-value");
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "secrets must not show in Debug"
        );
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let config = load(
            "capacity 3\n",
            &[
                ("SOLSTICE_CAPACITY", "5"),
                ("SOLSTICE_TRUSTED_AUTHORS", "a, b"),
            ],
        )
        .expect("valid");
        assert_eq!(config.capacity, 5);
        assert_eq!(config.trusted_authors, ["a", "b"]);
    }

    #[test]
    fn the_vms_block_routes_labels_to_providers() {
        let c = load(
            "runner-listen \"10.0.0.1:7000\"\nvms {\n    label \"linux\" provider=\"qemu\" image=\"images/linux\" egress=#true machine=\"q35\" vcpus=2 memory-mib=2048 disk-gib=12 reach=\"mirror.example:80, git.example:22\"\n    label \"omnios\" provider=\"bhyve\" snapshot=\"rpool/img/omnios@golden\"\n    label \"trusted\" provider=\"local\"\n    label \"debian\" provider=\"qemu\" image=\"images/debian\" boot=\"uefi\"\n}\nqemu {\n    accelerator \"tcg\"\n    boot-timeout-seconds 30\n    firmware \"/opt/ovmf/OVMF.fd\"\n}\nbhyve {\n    link \"igb0\"\n}\n",
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.runner_listen,
            Some("10.0.0.1:7000".parse().expect("addr"))
        );
        let labels: Vec<&str> = c.vms.routes.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["linux", "omnios", "trusted", "debian"]);
        assert!(matches!(
            &c.vms.routes[3].1,
            ProviderChoice::Qemu {
                uefi: true,
                disk_gib: None,
                ..
            }
        ));
        assert_eq!(c.vms.firmware, PathBuf::from("/opt/ovmf/OVMF.fd"));
        assert!(
            matches!(&c.vms.routes[0].1, ProviderChoice::Qemu { image, egress: true, machine: Some(solstice_vmm::Machine::Q35), vcpus: Some(2), memory_mib: Some(2048), disk_gib: Some(12), reach, uefi: false } if image.ends_with("images/linux") && image.is_absolute() && reach == &["mirror.example:80", "git.example:22"])
        );
        assert_eq!(
            c.vms.routes[1].1,
            ProviderChoice::Bhyve {
                snapshot: "rpool/img/omnios@golden".into()
            }
        );
        assert_eq!(c.vms.routes[2].1, ProviderChoice::Local);
        assert_eq!(c.vms.default, None, "only the routed labels run");
        assert_eq!(c.vms.accelerator, solstice_vmm::Accelerator::Tcg);
        assert_eq!(c.vms.boot_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.vms.link.as_deref(), Some("igb0"));
        // Without the block: everything on the local provider.
        let c = load("", &[]).expect("valid");
        assert_eq!(c.vms.default, Some(ProviderChoice::Local));
        assert!(c.vms.routes.is_empty());
        assert_eq!(
            c.vms.firmware,
            PathBuf::from(solstice_vmm::DEFAULT_UEFI_FIRMWARE)
        );
    }

    #[test]
    fn vms_mistakes_are_refused_with_what_to_write() {
        for (text, want) in [
            (
                "vms {\n    label \"a\" provider=\"docker\"\n}\n",
                "unknown provider `docker`",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\"\n}\n",
                "needs image=",
            ),
            (
                "vms {\n    label \"a\" provider=\"bhyve\" snapshot=\"pool/img\"\n}\n",
                "needs snapshot=",
            ),
            (
                "vms {\n    label \"a\" provider=\"local\"\n    label \"a\" provider=\"local\"\n}\n",
                "routed twice",
            ),
            (
                "vms {\n    default provider=\"local\"\n    default provider=\"local\"\n}\n",
                "`default` is set twice",
            ),
            (
                "vms {\n    lable \"a\" provider=\"local\"\n}\n",
                "unknown setting `vms.lable`",
            ),
            (
                "vms {\n    label provider=\"local\"\n}\n",
                "needs the runs_on label",
            ),
            ("vms {\n    label \"a\"\n}\n", "needs provider="),
            (
                "vms {\n    label \"a\" provider=\"local\" size=3\n}\n",
                "expected a non-empty string",
            ),
            (
                "vms {\n    label \"a\" provider=\"local\" colour=\"red\"\n}\n",
                "not a property",
            ),
            (
                "qemu {\n    accelerator \"hvf\"\n}\n",
                "unknown accelerator",
            ),
            (
                "vms {\n    label \"a\" provider=\"local\" egress=#true\n}\n",
                "are QEMU settings",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\" image=\"x\" vcpus=0\n}\n",
                "vcpus must be from 1 to 64",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\" image=\"x\" memory-mib=\"lots\"\n}\n",
                "`memory-mib` is a number",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\" image=\"x\" machine=\"pc\"\n}\n",
                "unknown machine",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\" image=\"x\" boot=\"bios\"\n}\n",
                "unknown boot \"bios\" (choices: kernel, uefi)",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\" image=\"x\" boot=\"uefi\" machine=\"microvm\"\n}\n",
                "runs on the q35 machine",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\" image=\"x\" boot=\"uefi\" disk-gib=20\n}\n",
                "leave out disk-gib=",
            ),
            (
                "vms {\n    label \"a\" provider=\"local\" boot=\"uefi\"\n}\n",
                "are QEMU settings",
            ),
            (
                "vms {\n    label \"a\" provider=\"qemu\" image=\"x\" egress=\"yes\"\n}\n",
                "#true or #false",
            ),
            ("qemu {\n    boot-timeout-seconds 0\n}\n", "from 1 to 3600"),
            ("runner-listen \"somewhere\"\n", "runner-listen"),
        ] {
            let err = load(text, &[]).expect_err(text);
            let shown = match &err {
                ConfigError::File(e) => e.render(false, 100),
                other => other.to_string(),
            };
            assert!(shown.contains(want), "{text}: {shown}");
        }
    }

    #[test]
    fn mistakes_are_reported_with_their_spans() {
        let err = load(
            "listen \"x\" \"y\"\ncapcity 3\ngithub {\n    token \"inline\"\n}\ncapacity 1\ncapacity 2\n",
            &[],
        )
        .expect_err("invalid");
        let ConfigError::File(e) = &err else {
            panic!("{err}")
        };
        let text = e.render(false, 100);
        assert!(text.contains("`listen` takes exactly one value"), "{text}");
        assert!(text.contains("unknown setting `capcity`"), "{text}");
        assert!(text.contains("did you mean `capacity`?"), "{text}");
        assert!(text.contains("`github.token` is a secret"), "{text}");
        assert!(text.contains("`capacity` is set twice"), "{text}");
        assert!(
            !text.contains("inline"),
            "a secret in the file is not shown back: {text}"
        );
        assert!(text.contains("solstice.kdl:2:1"), "{text}");
    }

    #[test]
    fn hostile_files_are_refused_cleanly() {
        let deep = format!("{}{}", "a {".repeat(10_000), "}".repeat(10_000));
        assert!(matches!(load(&deep, &[]), Err(ConfigError::File(_))));
        let big = "// x\n".repeat(MAX_CONFIG_BYTES);
        assert!(matches!(load(&big, &[]), Err(ConfigError::File(_))));
        assert!(matches!(
            load("capacity 0\n", &[]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            load("listen \"nowhere\"\n", &[]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            load("github {\n app-id 1\n}\n", &[]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(load("\u{0}", &[]), Err(ConfigError::File(_))));
    }
}
