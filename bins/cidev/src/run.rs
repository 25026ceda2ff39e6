//! `cidev run`: the workflow of this checkout, on this machine, through the
//! same engine and runner as production: an in-process queue, SQLite, and
//! the local (or mock) provider.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use solstice_core::engine::{
    Checkout, Engine, EngineConfig, EngineEvent, EventError, FakeExecutor, JobMessage, Listen,
    RunnerGuest,
};
use solstice_core::store::{JobStatus, LogStream, RunStatus, SqlStore, StateStore, StepStatus};
use solstice_kdl::Workflow;
use solstice_queue::{MemoryQueue, QueueOptions};
use solstice_vmm::{
    LocalProvider, MockVmProvider, QemuConfig, QemuImage, QemuProvider, VmProvider,
};

use crate::terminal::{self, Context, clean, clean_output};
use crate::{errln, outln};

/// `cidev run` options.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Workflow file (default: .solstice/workflow.kdl).
    pub file: Option<PathBuf>,
    /// Run only this job (and what it needs); repeatable.
    #[arg(long = "job", value_name = "ID")]
    pub jobs: Vec<String>,
    /// A secret: NAME=VALUE (visible in `ps`), or NAME to take the value
    /// from the environment variable NAME; repeatable.
    #[arg(long = "secret", value_name = "NAME[=VALUE]")]
    pub secrets: Vec<String>,
    /// A file of secrets in dotenv form (NAME=VALUE, export NAME=VALUE, quoted values, # comments).
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
    /// Keep the state (SQLite) in this directory instead of a temporary one.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Where jobs run.
    #[arg(long, value_enum, default_value_t = Provider::Local)]
    pub provider: Provider,
    /// The guest image for `--provider qemu`: a directory that
    /// images/linux-guest/build.sh made (default: $SOLSTICE_GUEST_IMAGE,
    /// else ~/.cache/solstice/linux-guest).
    #[arg(long, value_name = "DIR")]
    pub image: Option<PathBuf>,
    /// `--provider qemu`: the image of one `runs_on` label, as LABEL=DIR
    /// (a directory `solstice image build` made, for example
    /// ~/.cache/solstice/images/debian-12); repeatable. Jobs of other
    /// labels get `--image`'s.
    #[arg(long, value_name = "LABEL=DIR", value_parser = label_image)]
    pub label_image: Vec<(String, PathBuf)>,
    /// `--provider qemu`: let the VMs reach the network (by default they
    /// reach nothing but the runner endpoint).
    #[arg(long)]
    pub egress: bool,
    /// `--provider qemu`: let the VMs reach HOST:PORT too (a package
    /// mirror, a git server); repeatable. Each host gets an address of its
    /// own in the guest's /etc/hosts; nothing else opens. NAME=HOST:PORT
    /// gives the guest its own name for the host (db=localhost:5432: the
    /// guest's localhost is the guest).
    #[arg(long, value_name = "[NAME=]HOST:PORT")]
    pub reach: Vec<String>,
    /// `--provider qemu`: boot each VM through UEFI firmware (OVMF, on a
    /// q35 machine) from its image's disk.raw, as a bhyve zone boots it,
    /// instead of loading its kernel directly. Images from recipes have a
    /// disk.raw; the busybox test image has none, so without --image only
    /// the --label-image labels run.
    #[arg(long)]
    pub uefi: bool,
    /// The UEFI firmware for --uefi.
    #[arg(long, value_name = "FILE", default_value = solstice_vmm::DEFAULT_UEFI_FIRMWARE)]
    pub firmware: PathBuf,
    /// Most jobs at once (default: number of cores).
    #[arg(long)]
    pub capacity: Option<usize>,
    /// A `solstice-runner` binary to use instead of cidev's built-in runner.
    #[arg(long)]
    pub runner: Option<PathBuf>,
    /// Cap on each job's stored log, in MiB.
    #[arg(long, default_value_t = 64)]
    pub log_cap_mib: u64,
    /// Print only the summary (logs are still stored).
    #[arg(long, short)]
    pub quiet: bool,
    /// Where to put the temporary state and the job workspaces (default:
    /// the system's temporary directory). A tmpfs such as /dev/shm starts
    /// jobs faster but holds everything the jobs write in memory.
    #[arg(long)]
    pub tmpdir: Option<PathBuf>,
    /// Serve runners on a unix socket (in the temporary directory)
    /// instead of a loopback TCP port.
    #[arg(long)]
    pub unix_socket: bool,
}

/// Where `cidev run` runs jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// Host processes in a fresh directory each (no isolation).
    Local,
    /// No processes: steps are echoed and succeed (`false` and `exit N` fail).
    Mock,
    /// Each job in its own QEMU virtual machine booted from the guest
    /// image (see --image), reaching nothing but the runner endpoint.
    Qemu,
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
/// 128 + the signal's number, as a shell reports a process it killed.
const EXIT_INTERRUPTED: u8 = 130;
const EXIT_HANGUP: u8 = 129;
const EXIT_TERMINATED: u8 = 143;

pub fn run(args: RunArgs, file: PathBuf, workflow: Workflow) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(execute(args, file, workflow)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            terminal::err(terminal::report(&*error).as_bytes());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn parse_secrets(args: &RunArgs) -> Result<BTreeMap<String, String>, String> {
    let mut secrets = BTreeMap::new();
    if let Some(path) = &args.secrets_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let origin = format!("{}:{}", path.display(), i + 1);
            if let Some((name, value)) = dotenv_line(line).map_err(|e| format!("{origin}: {e}"))? {
                secrets.insert(name, value);
            }
        }
    }
    for s in &args.secrets {
        match s.split_once('=') {
            Some((name, value)) => {
                check_name(name).map_err(|e| format!("--secret: {e}"))?;
                secrets.insert(name.to_string(), value.to_string());
            }
            // `--secret NAME`: the value comes from this process's
            // environment, where `ps` cannot see it.
            None => {
                check_name(s).map_err(|e| format!("--secret: {e}"))?;
                let value = std::env::var(s).map_err(|_| {
                    format!("--secret {s}: the environment variable `{s}` is not set")
                })?;
                secrets.insert(s.clone(), value);
            }
        }
    }
    Ok(secrets)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid secret name (letters, digits and `_`, not starting with a digit)",
            clean(name)
        ))
    }
}

/// One line of a secrets file, in the common dotenv forms: `NAME=value`,
/// `export NAME=value`, `NAME="double quoted"` (with `\n`, `\"`, `\\`
/// escapes), `NAME='single quoted'` (literal), blank lines and `#` comments.
/// An unquoted value is taken as written up to the line's end (after
/// trailing spaces), so `#` inside it is kept. Anything else is refused.
fn dotenv_line(line: &str) -> Result<Option<(String, String)>, String> {
    let line = line.trim_end_matches('\r');
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let body = trimmed
        .strip_prefix("export ")
        .map(str::trim_start)
        .unwrap_or(trimmed);
    let (name, raw) = body
        .split_once('=')
        .ok_or("expected NAME=VALUE (or `export NAME=VALUE`)")?;
    let name = name.trim_end();
    check_name(name)?;
    let raw = raw.trim();
    let value = if let Some(rest) = raw.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = rest.chars();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    closed = true;
                    break;
                }
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some(c @ ('"' | '\\' | '$')) => value.push(c),
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err("unterminated escape in a double-quoted value".into()),
                },
                c => value.push(c),
            }
        }
        let tail = chars.as_str().trim();
        if !closed {
            return Err("the double-quoted value has no closing quote (multi-line values are not supported)".into());
        }
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(format!(
                "unexpected text after the quoted value: `{}`",
                clean(tail)
            ));
        }
        value
    } else if let Some(rest) = raw.strip_prefix('\'') {
        let (value, tail) = rest
            .split_once('\'')
            .ok_or("the single-quoted value has no closing quote")?;
        let tail = tail.trim();
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(format!(
                "unexpected text after the quoted value: `{}`",
                clean(tail)
            ));
        }
        value.to_string()
    } else {
        raw.to_string()
    };
    Ok(Some((name.to_string(), value)))
}

/// The repository root: the git top level of the workflow's directory, or
/// the current directory.
fn checkout_root(file: &Path) -> PathBuf {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let top = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let mut out = o.stdout;
            while out.last().is_some_and(u8::is_ascii_whitespace) {
                out.pop();
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        });
    top.or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What stops `cidev run` before or around the run (a job failing is an
/// exit code, not an error).
type RunError = Box<dyn std::error::Error + Send + Sync>;

async fn execute(args: RunArgs, file: PathBuf, workflow: Workflow) -> Result<u8, RunError> {
    // SIGINT (Ctrl-C), SIGTERM (`timeout`, systemd, `docker stop`) and
    // SIGHUP (a closed terminal or SSH session) all cancel the run and
    // clean up; a second signal changes nothing, the cleanup goes on.
    // Caught from the start: one that arrives while the run is being set
    // up cancels it as soon as it exists.
    let signals = Signals::new().map_err(|e| format!("signal handlers: {e}"))?;
    tokio::pin!(signals);
    let secrets = parse_secrets(&args)?;
    if args.provider != Provider::Qemu
        && (args.image.is_some()
            || !args.label_image.is_empty()
            || args.egress
            || args.uefi
            || !args.reach.is_empty())
    {
        return Err(
            "--image, --label-image, --egress, --reach and --uefi are for --provider qemu".into(),
        );
    }
    let workflow = if args.jobs.is_empty() {
        workflow
    } else {
        workflow.only(&args.jobs).map_err(|e| e.to_string())?
    };
    let mut builder = tempfile::Builder::new();
    // Private: the state, the logs and the checkout copy are the user's.
    builder
        .prefix("cidev-run-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let temp = match &args.tmpdir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .map_err(|e| format!("temporary directory: {e}"))?;
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    // Private when cidev makes it (the state holds logs and checkouts).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir.join("vms"))
        .map_err(|e| format!("{}: {e}", state_dir.display()))?;
    // One cidev at a time per state directory (held until this returns):
    // the state's unfinished runs are this invocation's to clean up.
    let _state_lock = lock_state(&state_dir)?;
    let db = state_dir.join("state.db");
    // Created private before SQLite opens it; SQLite gives its journal
    // files the database's permissions.
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&db)
            .map_err(|e| format!("{}: {e}", db.display()))?;
    }
    let store: Arc<dyn StateStore> = Arc::new(
        SqlStore::open_sqlite(&db)
            .await
            .map_err(|e| Context::new(format!("state store {}", db.display()), e))?,
    );
    // A run belongs to the cidev that started it: runs a cidev left
    // unfinished (killed, or its machine went down) are cancelled, not
    // resumed under this run's output. Their leftover VMs (processes) are
    // in the same `--state` directory, where the engine's reaper finds them.
    let abandoned = abandon_unfinished_runs(&*store)
        .await
        .map_err(|e| Context::new("state store", e))?;
    for (run, jobs) in &abandoned {
        errln!(
            "note: run {run} in {} was left unfinished by an earlier cidev; cancelled it ({jobs} unfinished jobs) and reaping what it left",
            clean(&state_dir.display().to_string())
        );
    }
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    let provider: Arc<dyn VmProvider> = match args.provider {
        Provider::Local => {
            let command = match &args.runner {
                Some(path) => vec![path.clone().into_os_string()],
                None => {
                    let me = std::env::current_exe()
                        .map_err(|e| Context::new("where is cidev's own binary", e))?;
                    vec![me.into_os_string(), "runner".into()]
                }
            };
            Arc::new(LocalProvider::new(command, state_dir.join("vms")))
        }
        Provider::Mock => Arc::new(MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(
            FakeExecutor,
        ))))),
        Provider::Qemu => {
            let dir = args
                .image
                .clone()
                .or_else(QemuImage::default_dir)
                .ok_or("--provider qemu: no --image given and no default (set HOME)")?;
            let load = |flag: &'static str, dir: &Path| {
                let image = if args.uefi {
                    QemuImage::uefi_from_dir(dir, &args.firmware)
                } else {
                    QemuImage::from_dir(dir)
                };
                image
                    .map(|mut image| {
                        image.egress = args.egress;
                        image.reach = args.reach.clone();
                        image
                    })
                    .map_err(|e| Context::new(flag, e))
            };
            let mut labels = BTreeMap::new();
            for (label, dir) in &args.label_image {
                labels.insert(label.clone(), load("--label-image", dir)?);
            }
            // With --uefi and no --image, only the --label-image labels have
            // an image: the default one (the busybox test image) has no
            // disk to boot through UEFI.
            let mut config = match (&args.image, args.uefi, labels.values().next()) {
                (None, true, Some(first)) => {
                    let mut c = QemuConfig::new(state_dir.join("vms"), first.clone());
                    c.default_image = None;
                    c
                }
                _ => QemuConfig::new(state_dir.join("vms"), load("--image", &dir)?),
            };
            config.images = labels;
            Arc::new(QemuProvider::new(config).map_err(|e| Context::new("--provider qemu", e))?)
        }
    };
    let capacity = args
        .capacity
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut config = EngineConfig::default();
    config.capacity = capacity;
    config.secrets = secrets;
    config.log_cap = args.log_cap_mib.saturating_mul(1 << 20);
    // The printer shows every line: it may fall behind by as much log as
    // all the jobs running at once can write (capacity × the log cap)
    // before it misses any. Bounded all the same.
    config.event_buffer_bytes = usize::try_from(config.log_cap)
        .unwrap_or(usize::MAX)
        .saturating_mul(capacity.max(1))
        .max(solstice_core::engine::EVENT_BUFFER_BYTES);
    if args.unix_socket {
        config.listen = Listen::Unix(temp.path().join("runner.sock"));
    }
    let engine = Engine::start(config, store.clone(), queue, provider)
        .await
        .map_err(|e| Context::new("cannot start the engine", e))?;
    let root = checkout_root(&file);
    // The checkout's path travels as text (the stored job, the runner
    // protocol): a directory whose path is not UTF-8 is refused, not
    // copied from a lossy name. Files inside it may have any name.
    let root = root.to_str().ok_or_else(|| {
        format!(
            "the checkout directory {} has a path that is not UTF-8",
            root.display()
        )
    })?;
    let mut events = engine.subscribe();
    let source = serde_json::json!({ "event": "cidev run", "path": root }).to_string();
    let run = engine
        .submit(
            &workflow,
            &source,
            Checkout::Local {
                path: root.to_string(),
            },
        )
        .await
        .map_err(|e| match &e {
            solstice_core::engine::EngineError::MissingSecret(name) => {
                format!("{e} (use --secret {name}=VALUE)")
            }
            _ => e.to_string(),
        })?;

    let mut printer = Printer::new();
    let mut interrupted: Option<u8> = None;
    let status = loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(EngineEvent::RunFinished { run: r, status }) if r == run => break status,
                Ok(e) => {
                    if !args.quiet {
                        printer.event(&e);
                        printer.flush_out();
                    }
                }
                Err(EventError::Lagged { missed }) => printer.note(&format!("(output fell behind: {missed} events not shown)")),
                Err(_) => return Err("the engine stopped".into()),
            },
            code = signals.as_mut().next(), if interrupted.is_none() => {
                interrupted = Some(code);
                printer.note("interrupted: cancelling the run and destroying its VMs ...");
                engine.cancel_run(run).await.map_err(|e| e.to_string())?;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                // Covers a RunFinished that happened before we listened.
                if let Ok(Some(r)) = store.run(run).await && r.status != RunStatus::Running {
                    break r.status;
                }
            }
        }
    };
    printer.flush();
    engine.shutdown().await;
    summary(&*store, run, status).await;
    if args.state.is_some() {
        outln!("state kept in {}", clean(&db.display().to_string()));
    }
    Ok(match (interrupted, status) {
        (Some(code), _) => code,
        (None, RunStatus::Succeeded) => 0,
        _ => EXIT_FAILED,
    })
}

/// The signals that stop `cidev run`, as one stream of exit codes.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The exit code for the next signal that arrives.
    async fn next(self: std::pin::Pin<&mut Self>) -> u8 {
        let this = self.get_mut();
        tokio::select! {
            _ = this.int.recv() => EXIT_INTERRUPTED,
            _ = this.term.recv() => EXIT_TERMINATED,
            _ = this.hup.recv() => EXIT_HANGUP,
        }
    }
}

fn lock_state(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is in use by another cidev run; wait for it or use another --state",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// Cancels every run still marked running, with its jobs and attempts:
/// the cidev that ran them is gone. Returns each run with its count of
/// unfinished jobs.
async fn abandon_unfinished_runs(
    store: &dyn StateStore,
) -> Result<Vec<(solstice_core::store::RunId, usize)>, solstice_core::store::StoreError> {
    use solstice_core::store::{AttemptStatus, Change};
    const WHY: &str = "abandoned: the cidev that ran it stopped before the run ended";
    let mut out = Vec::new();
    for run in store.running_runs().await? {
        let mut unfinished = 0;
        for job in store.jobs(run.id).await? {
            // The running attempt's end cancels its job in the same write.
            let mut cancelled = false;
            if matches!(job.status, JobStatus::Running) {
                for attempt in store.attempts(job.id).await? {
                    if attempt.status == AttemptStatus::Running {
                        cancelled |= store
                            .finish(Change::Finish {
                                attempt: attempt.id,
                                status: AttemptStatus::Cancelled,
                                reason: Some(WHY.into()),
                                now: solstice_core::engine::now_ms(),
                                job: job.id,
                                job_status: JobStatus::Cancelled,
                                job_reason: Some(WHY.into()),
                                extra_attempts: 0,
                            })
                            .await?;
                    }
                }
            }
            cancelled |= store
                .transition_job(
                    job.id,
                    &[JobStatus::Pending, JobStatus::Queued, JobStatus::Running],
                    JobStatus::Cancelled,
                    Some(WHY),
                )
                .await?;
            if cancelled {
                unfinished += 1;
            }
        }
        store
            .finish_run(
                run.id,
                RunStatus::Cancelled,
                solstice_core::engine::now_ms(),
            )
            .await?;
        out.push((run.id, unfinished));
    }
    Ok(out)
}

/// Prints events as lines prefixed with the job (and coloured on a
/// terminal). Everything from the workflow or a step is cleaned first
/// (`terminal`); colour is cidev's own.
struct Printer {
    color: bool,
    colors: HashMap<String, AnsiColor>,
    /// Output of each job and stream not yet ended by a line break.
    partial: HashMap<(String, LogStream), Partial>,
    /// What is written at the next `flush_out`: live, without a write per line.
    out: Vec<u8>,
}

#[derive(Default)]
struct Partial {
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no line break: each byte is looked at once,
    /// however long a line grows (a 64 MB line was quadratic).
    scanned: usize,
}

/// A line longer than this is printed in pieces of this size.
const MAX_LINE: usize = 1 << 20;

/// Job prefixes take these colours in turn.
const PALETTE: [AnsiColor; 6] = [
    AnsiColor::Cyan,
    AnsiColor::Magenta,
    AnsiColor::Yellow,
    AnsiColor::Green,
    AnsiColor::Blue,
    AnsiColor::Red,
];
/// Standard error and the system's lines.
const DIM: Style = Style::new().dimmed();

impl Printer {
    fn new() -> Self {
        let color = terminal::color_on_stdout();
        Printer {
            color,
            colors: HashMap::new(),
            partial: HashMap::new(),
            out: Vec::with_capacity(256 * 1024),
        }
    }

    fn prefix(&mut self, key: &str) -> String {
        let name = clean(key);
        if !self.color {
            return format!("[{name}] ");
        }
        let n = self.colors.len();
        let c = *self
            .colors
            .entry(key.to_string())
            .or_insert(PALETTE[n % PALETTE.len()]);
        let style = Style::new().fg_color(Some(c.into()));
        format!("{style}[{name}]{style:#} ")
    }

    /// A line of cidev's own about a job; `text` is cleaned.
    fn line(&mut self, key: &str, text: &str, dim: bool) {
        let prefix = self.prefix(key);
        let style = if dim && self.color { DIM } else { Style::new() };
        let text = clean(text);
        self.out
            .extend_from_slice(format!("{prefix}{style}{text}{style:#}\n").as_bytes());
    }

    fn note(&mut self, text: &str) {
        self.out.extend_from_slice(format!("{text}\n").as_bytes());
        self.flush_out();
    }

    fn flush_out(&mut self) {
        if !self.out.is_empty() {
            terminal::out(&self.out);
            self.out.clear();
        }
    }

    /// Step output lines, prefixed and cleaned.
    fn output(&mut self, key: &str, stream: LogStream, lines: &[u8]) {
        let prefix = self.prefix(key);
        let style = if stream != LogStream::Stdout && self.color {
            DIM
        } else {
            Style::new()
        };
        let (a, b) = (style.render().to_string(), style.render_reset().to_string());
        for line in lines.split(|c| *c == b'\n') {
            self.out.extend_from_slice(prefix.as_bytes());
            self.out.extend_from_slice(a.as_bytes());
            self.out
                .extend_from_slice(clean_output(line, self.color).as_bytes());
            self.out.extend_from_slice(b.as_bytes());
            self.out.push(b'\n');
        }
    }

    /// Prints what a job's streams hold without a final line break (a step
    /// ended without one): the next step's output starts on its own line.
    fn end_lines(&mut self, key: &str) {
        for stream in LogStream::ALL {
            if let Some(p) = self.partial.remove(&(key.to_string(), stream))
                && !p.buf.is_empty()
            {
                self.output(key, stream, &p.buf);
            }
        }
    }

    fn event(&mut self, e: &EngineEvent) {
        match e {
            EngineEvent::JobStarted { key, attempt, .. } if *attempt > 1 => {
                self.line(key, &format!("attempt {attempt}"), true)
            }
            EngineEvent::StepStarted { key, name, .. } => {
                self.end_lines(key);
                self.line(key, &format!("▶ {name}"), true)
            }
            EngineEvent::Log {
                key, stream, data, ..
            } => {
                let id = (key.clone(), *stream);
                let p = self.partial.entry(id.clone()).or_default();
                p.buf.extend_from_slice(data);
                let last = p.buf[p.scanned..]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| p.scanned + i);
                p.scanned = p.buf.len();
                let complete: Vec<u8> = match last {
                    Some(last) => {
                        let mut done: Vec<u8> = p.buf.drain(..=last).collect();
                        done.pop();
                        p.scanned = p.buf.len();
                        done
                    }
                    None if p.buf.len() >= MAX_LINE => {
                        p.scanned = 0;
                        std::mem::take(&mut p.buf)
                    }
                    None => return,
                };
                self.output(key, *stream, &complete);
            }
            EngineEvent::StepFinished {
                key,
                index: _,
                status,
                exit_code,
                ..
            } => {
                self.end_lines(key);
                let text = match status {
                    StepStatus::Succeeded => "✓ step passed".to_string(),
                    StepStatus::TimedOut => "✗ step timed out".to_string(),
                    _ => format!("✗ step failed (exit {exit_code})"),
                };
                self.line(key, &text, true);
            }
            EngineEvent::JobRetrying {
                key,
                attempt,
                reason,
                ..
            } => self.line(
                key,
                &format!("attempt {attempt} lost: {reason}; trying again"),
                false,
            ),
            EngineEvent::JobFinished {
                key,
                status,
                reason,
                ..
            } => {
                self.end_lines(key);
                let text = match reason {
                    Some(r) => format!("{status}: {r}"),
                    None => status.to_string(),
                };
                self.line(key, &text, false);
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        let keys: Vec<String> = self.partial.keys().map(|(k, _)| k.clone()).collect();
        for key in keys {
            self.end_lines(&key);
        }
        self.flush_out();
    }
}

async fn summary(store: &dyn StateStore, run: solstice_core::store::RunId, status: RunStatus) {
    let Ok(jobs) = store.jobs(run).await else {
        return;
    };
    let mut rows = vec![(
        "JOB".to_string(),
        "ATTEMPT".to_string(),
        "STATUS".to_string(),
        "DURATION".to_string(),
    )];
    for job in &jobs {
        let attempts = store.attempts(job.id).await.unwrap_or_default();
        let (attempt, duration) = match attempts.last() {
            Some(a) => {
                let ms = a.finished_at.unwrap_or(a.started_at) - a.started_at;
                (a.number.to_string(), format!("{:.1}s", ms as f64 / 1000.0))
            }
            None => ("-".into(), "-".into()),
        };
        let status = match (job.status, &job.reason) {
            (JobStatus::Succeeded, _) | (_, None) => job.status.to_string(),
            (s, Some(r)) => format!("{s} ({r})"),
        };
        rows.push((job.key.clone(), attempt, status, duration));
    }
    let rows: Vec<(String, String, String, String)> = rows
        .into_iter()
        .map(|(a, b, c, d)| (clean(&a).into_owned(), b, clean(&c).into_owned(), d))
        .collect();
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w3 = rows.iter().map(|r| r.3.len()).max().unwrap_or(0);
    let mut table = String::from("\n");
    for (a, b, c, d) in rows {
        table.push_str(&format!("{a:<w0$}  {b:>w1$}  {d:>w3$}  {c}\n"));
    }
    table.push_str(&format!("\nrun {run}: {status}\n"));
    terminal::out(table.as_bytes());
}

/// `--label-image LABEL=DIR`.
fn label_image(text: &str) -> Result<(String, PathBuf), String> {
    let (label, dir) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: write LABEL=DIR"))?;
    if !solstice_kdl::valid_label(label) {
        return Err(format!("`{label}` is not a runs_on label"));
    }
    if dir.is_empty() {
        return Err(format!("`{text}`: no directory after `=`"));
    }
    Ok((label.to_string(), PathBuf::from(dir)))
}

#[cfg(test)]
mod tests {
    use super::{EngineEvent, LogStream, MAX_LINE, Printer, dotenv_line};

    #[test]
    fn a_long_line_is_printed_in_linear_time() {
        // 2.5 MB without a line break, 64 bytes at a time: each byte is
        // looked at once (searching the whole held line for a line break on
        // every chunk took 32 s for a 64 MB line).
        let mut p = Printer::new();
        let chunk = vec![b'x'; 64];
        for _ in 0..40_000 {
            p.event(&EngineEvent::Log {
                run: solstice_core::store::RunId::new(1),
                key: "k".into(),
                step: Some(0),
                stream: LogStream::Stdout,
                data: chunk.clone(),
            });
        }
        let lines = |out: &[u8]| out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(lines(&p.out), 2, "printed in pieces of {MAX_LINE} bytes");
        p.end_lines("k");
        assert_eq!(lines(&p.out), 3);
        assert_eq!(
            p.out.iter().filter(|b| **b == b'x').count(),
            40_000 * 64,
            "every byte once"
        );
    }

    fn ok(line: &str) -> Option<(String, String)> {
        dotenv_line(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn dotenv_forms_are_read_as_users_write_them() {
        let pair = |n: &str, v: &str| Some((n.to_string(), v.to_string()));
        assert_eq!(ok("A=b c"), pair("A", "b c"));
        assert_eq!(ok("export TOKEN=abc123"), pair("TOKEN", "abc123"));
        assert_eq!(ok("  export   T = x "), pair("T", "x"));
        assert_eq!(
            ok(r#"Q="a \"b\" \\ \n end" # note"#),
            pair("Q", "a \"b\" \\ \n end")
        );
        assert_eq!(ok("S='lit $x \\n'"), pair("S", "lit $x \\n"));
        assert_eq!(ok("H=abc#def"), pair("H", "abc#def"));
        assert_eq!(ok("E="), pair("E", ""));
        assert_eq!(ok("W=x\r"), pair("W", "x"));
        assert_eq!(ok("# comment"), None);
        assert_eq!(ok("   "), None);
        for bad in [
            "NOEQUALS",
            "1A=x",
            "A-B=x",
            r#"A="open"#,
            "A='open",
            r#"A="x" y"#,
            "export",
        ] {
            assert!(dotenv_line(bad).is_err(), "{bad}");
        }
    }
}
