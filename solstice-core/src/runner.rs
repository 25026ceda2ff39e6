//! The runner: what runs inside a VM. It connects out to the orchestrator,
//! trades its token for the job, checks the code out, runs each step and
//! streams everything back as it happens. No database, broker or HTTP
//! server code is reachable from here (the `protocol` feature alone).
//!
//! Steps run with `bash -e -c SCRIPT` (`sh -e -c` where bash is missing),
//! in their own process group, which is killed as a whole on timeout.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::log::LogStream;
use crate::protocol::bearer;
use crate::protocol::pb::{self, runner_client::RunnerClient, runner_event::Event};
use crate::util::error_chain;

/// An error kept whole, without naming the transport's type in the API.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the runner could not do its job (a step failing is not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// Could not reach the orchestrator.
    #[error("cannot connect to the orchestrator at {endpoint}")]
    Connect {
        /// Where it tried.
        endpoint: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// The orchestrator refused or failed a call.
    #[error("the orchestrator refused or failed a call")]
    Rpc(#[source] BoxError),
}

impl RunnerError {
    fn rpc(status: tonic::Status) -> RunnerError {
        RunnerError::Rpc(Box::new(status))
    }
}

/// Why a step could not run at all (a step that runs and fails is a
/// [`StepOutcome`] with a non-zero exit code, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The step's process (or what it needs) could not be set up.
    #[error("cannot start the step: {what}")]
    Start {
        /// What failed.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The step started and then could not be waited for.
    #[error("lost track of the step's process")]
    Wait(#[source] std::io::Error),
    /// Another executor's reason.
    #[error(transparent)]
    Other(BoxError),
}

/// One step to run, as an executor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Step {
    /// 0-based position in the job.
    pub index: u32,
    /// Display name.
    pub name: String,
    /// The script.
    pub run: String,
    /// Killed after this long (`None`: only the job's timeout applies).
    pub timeout: Option<Duration>,
}

impl Step {
    /// A step without a timeout.
    pub fn new(index: u32, name: impl Into<String>, run: impl Into<String>) -> Step {
        Step {
            index,
            name: name.into(),
            run: run.into(),
            timeout: None,
        }
    }

    /// The same step, killed after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Step {
        self.timeout = Some(timeout);
        self
    }

    fn from_spec(index: u32, spec: &pb::StepSpec) -> Step {
        Step {
            index,
            name: spec.name.clone(),
            run: spec.run.clone(),
            timeout: (spec.timeout_secs > 0).then(|| Duration::from_secs(spec.timeout_secs)),
        }
    }
}

/// Where to connect and with what. `Debug` does not show the token.
#[derive(Clone)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// `http://host:port`.
    pub endpoint: String,
    /// The single-use job token.
    pub token: String,
    /// The directory to check out into and run in.
    pub workspace: PathBuf,
}

impl RunnerConfig {
    /// Dial `endpoint` with `token`, work in `workspace`.
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>, workspace: PathBuf) -> Self {
        RunnerConfig {
            endpoint: endpoint.into(),
            token: token.into(),
            workspace,
        }
    }
}

impl std::fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .field("workspace", &self.workspace)
            .finish()
    }
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepOutcome {
    /// Exit status (-1 when killed or not started).
    pub exit_code: i32,
    /// Killed by its timeout.
    pub timed_out: bool,
}

impl StepOutcome {
    /// The step ran to its end with this exit status.
    pub fn exited(exit_code: i32) -> StepOutcome {
        StepOutcome {
            exit_code,
            timed_out: false,
        }
    }

    /// The step was killed by its timeout.
    pub fn timed_out() -> StepOutcome {
        StepOutcome {
            exit_code: -1,
            timed_out: true,
        }
    }
}

/// Where a running step's output goes, as it is produced. Bounded: a
/// sender waits while the reader is behind.
#[derive(Debug, Clone)]
pub struct OutputSink(mpsc::Sender<(LogStream, Vec<u8>)>);

/// The reading end of an [`OutputSink`].
#[derive(Debug)]
pub struct OutputReceiver(mpsc::Receiver<(LogStream, Vec<u8>)>);

impl OutputSink {
    /// A sink holding at most `capacity` pieces not yet read, and its
    /// reader.
    pub fn channel(capacity: usize) -> (OutputSink, OutputReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (OutputSink(tx), OutputReceiver(rx))
    }

    /// Sends a piece of output; `false` once nobody reads any more (stop
    /// producing then).
    pub async fn send(&self, stream: LogStream, data: Vec<u8>) -> bool {
        self.0.send((stream, data)).await.is_ok()
    }
}

impl OutputReceiver {
    /// The next piece; `None` once every sink is dropped.
    pub async fn recv(&mut self) -> Option<(LogStream, Vec<u8>)> {
        self.0.recv().await
    }
}

/// Runs one step. [`ShellExecutor`] is the real one; tests and benchmarks
/// use a fake that starts no processes.
#[async_trait::async_trait]
pub trait StepExecutor: Send + Sync {
    /// Runs `step` in `dir` with `env` (complete: merged and with secrets),
    /// sending output to `out` as it appears.
    async fn run(
        &self,
        step: &Step,
        dir: &Path,
        env: &BTreeMap<String, String>,
        out: OutputSink,
    ) -> Result<StepOutcome, StepError>;
}

/// Runs steps with the shell (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellExecutor;

/// Process groups of the steps running now, so that a runner told to stop
/// can take its steps with it (they are in groups of their own).
static STEP_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

fn step_groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    crate::util::lock(&STEP_GROUPS)
}

/// Kills every running step's process group. The runner binaries call this
/// on SIGTERM, which is how a provider stops a runner.
pub fn kill_running_steps() {
    for pgid in step_groups().drain(..) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// The whole runner program, for `solstice-runner` and `cidev runner`: reads
/// `SOLSTICE_ENDPOINT` and `SOLSTICE_JOB_TOKEN` from the environment (never
/// the command line, which other processes can read), uses the current
/// directory as the workspace, runs the job with the shell, and returns the
/// exit status: 0 the job succeeded, 1 it failed, 2 it could not be run.
pub fn main_from_environment(name: &str) -> u8 {
    let Ok(endpoint) = std::env::var("SOLSTICE_ENDPOINT") else {
        eprintln!("{name}: SOLSTICE_ENDPOINT must be set");
        return 2;
    };
    let token = match std::env::var("SOLSTICE_JOB_TOKEN") {
        Ok(token) => token,
        Err(_) => match token_from_stdin() {
            Some(token) => token,
            None => {
                eprintln!(
                    "{name}: no job token: set SOLSTICE_JOB_TOKEN or write it as the first line of standard input"
                );
                return 2;
            }
        },
    };
    let workspace = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("{name}: no working directory: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return 2;
        }
    };
    let config = RunnerConfig {
        endpoint,
        token,
        workspace,
    };
    let result = runtime.block_on(async {
        exit_on_termination();
        run(&config, &ShellExecutor, None).await
    });
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("{name}: {}", error_chain(&e));
            2
        }
    }
}

/// The token as the first line of standard input (at most 4 KiB). This is
/// how the local provider hands it over: unlike the environment, it cannot
/// be read back later from `/proc/PID/environ` by the steps.
fn token_from_stdin() -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::io::stdin().take(4096).read_to_end(&mut buf).ok()?;
    let line = buf.split(|b| *b == b'\n').next()?;
    let token = std::str::from_utf8(line).ok()?.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// For runner binaries: on SIGTERM, SIGINT or SIGHUP, kill the running
/// steps and exit.
pub fn exit_on_termination() {
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
        tracing::warn!(groups = ?*step_groups(), "runner: told to stop; killing running steps");
        kill_running_steps();
        std::process::exit(143);
    });
}

fn shell() -> (&'static str, &'static [&'static str]) {
    if Path::new("/bin/bash").exists() || Path::new("/usr/bin/bash").exists() {
        ("bash", &["-e"])
    } else {
        ("sh", &["-e"])
    }
}

/// A running step's process group: killed when the step ends, and also when
/// the step's future is dropped (the runner lost its orchestrator).
struct StepGroup(Option<i32>);

impl StepGroup {
    fn new(pgid: Option<i32>) -> Self {
        if let Some(g) = pgid {
            step_groups().push(g);
        }
        StepGroup(pgid)
    }

    fn kill(&self) {
        if let Some(g) = self.0 {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
    }
}

impl Drop for StepGroup {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            self.kill();
            step_groups().retain(|x| *x != g);
        }
    }
}

#[async_trait::async_trait]
impl StepExecutor for ShellExecutor {
    async fn run(
        &self,
        step: &Step,
        dir: &Path,
        env: &BTreeMap<String, String>,
        out: OutputSink,
    ) -> Result<StepOutcome, StepError> {
        let (program, flags) = shell();
        let start = |what: &str| {
            let what = what.to_string();
            move |source| StepError::Start { what, source }
        };
        // The script goes in a file, not the argument vector: the kernel
        // limits one argument to 128 KiB ("Argument list too long").
        let script = tempfile::Builder::new()
            .prefix("solstice-step-")
            .suffix(".sh")
            .tempfile()
            .map_err(start("writing the step's script"))?;
        std::fs::write(script.path(), step.run.as_bytes())
            .map_err(start("writing the step's script"))?;
        let mut child = Command::new(program)
            .args(flags)
            .arg(script.path())
            .current_dir(dir)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(start(&format!("running {program}")))?;
        let group = StepGroup::new(child.id().map(|p| p as i32));
        let pump = |mut pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    stream: LogStream,
                    out: OutputSink| async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !out.send(stream, buf[..n].to_vec()).await {
                            break;
                        }
                    }
                }
            }
        };
        let stdout = child
            .stdout
            .take()
            .map(|p| tokio::spawn(pump(Box::new(p), LogStream::Stdout, out.clone())));
        let stderr = child
            .stderr
            .take()
            .map(|p| tokio::spawn(pump(Box::new(p), LogStream::Stderr, out.clone())));
        let waited = match step.timeout {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let outcome = match waited {
            Some(Ok(status)) => StepOutcome {
                exit_code: status.code().unwrap_or(-1),
                timed_out: false,
            },
            Some(Err(e)) => return Err(StepError::Wait(e)),
            None => {
                group.kill();
                let _ = child.wait().await;
                StepOutcome {
                    exit_code: -1,
                    timed_out: true,
                }
            }
        };
        // The step's process group is gone with it: kill stragglers that
        // still hold the pipes open, then drain what is left.
        drop(group);
        for task in [stdout, stderr].into_iter().flatten() {
            let _ = task.await;
        }
        Ok(outcome)
    }
}

/// Connects, fetches the job, runs it, reports it. Returns whether the job
/// succeeded. `stop_after_steps` makes the runner vanish after that many
/// steps without reporting the end (a crash, for fault tests).
pub async fn run(
    config: &RunnerConfig,
    executor: &dyn StepExecutor,
    stop_after_steps: Option<u32>,
) -> Result<bool, RunnerError> {
    let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| RunnerError::Connect {
            endpoint: config.endpoint.clone(),
            source: Box::new(e),
        })?
        .connect_timeout(Duration::from_secs(30))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .map_err(|e| RunnerError::Connect {
            endpoint: config.endpoint.clone(),
            source: Box::new(e),
        })?;
    let mut client = RunnerClient::new(channel).max_decoding_message_size(64 << 20);
    let token = bearer(&config.token).map_err(RunnerError::rpc)?;
    let mut request = tonic::Request::new(pb::FetchJobRequest {
        runner_version: env!("CARGO_PKG_VERSION").into(),
    });
    request
        .metadata_mut()
        .insert(crate::protocol::AUTHORIZATION, token.clone());
    let job = client
        .fetch_job(request)
        .await
        .map_err(RunnerError::rpc)?
        .into_inner();
    tracing::info!(run = %job.run_id, job = %job.job_id, attempt = job.attempt, "runner: job fetched");

    let (events, rx) = mpsc::channel::<pb::RunnerEvent>(256);
    let mut report = tonic::Request::new(ReceiverStream::new(rx));
    report
        .metadata_mut()
        .insert(crate::protocol::AUTHORIZATION, token);
    let session = job.session.parse().map_err(|_| {
        RunnerError::rpc(tonic::Status::invalid_argument(
            "the report session is not ASCII",
        ))
    })?;
    report
        .metadata_mut()
        .insert(crate::protocol::SESSION, session);
    let mut reporter = client.clone();
    let mut reporting = tokio::spawn(async move { reporter.report_events(report).await });

    let span =
        tracing::info_span!("job", run = %job.run_id, job = %job.job_id, attempt = job.attempt);
    let work = tracing::Instrument::instrument(
        execute(&job, &config.workspace, executor, &events, stop_after_steps),
        span,
    );
    let success = tokio::select! {
        success = work => success,
        // The stream ended before the job did: the orchestrator is gone or
        // refused the report. Dropping `work` kills the running step, and
        // no further step starts: nobody would see its result.
        ended = &mut reporting => {
            let status = match ended {
                Ok(Err(status)) => status,
                Ok(Ok(_)) => tonic::Status::aborted("the orchestrator ended the report stream"),
                Err(e) => tonic::Status::internal(e.to_string()),
            };
            tracing::warn!(error = %status, "runner: lost the orchestrator; stopping the job");
            return Err(RunnerError::rpc(status));
        }
    };
    if let Some(success) = success {
        let _ = events
            .send(event(Event::JobFinished(pb::JobFinished {
                success,
                error: String::new(),
            })))
            .await;
    }
    drop(events);
    match reporting.await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => return Err(RunnerError::rpc(status)),
        Err(e) => return Err(RunnerError::Rpc(Box::new(e))),
    }
    Ok(success.unwrap_or(false))
}

fn event(e: Event) -> pb::RunnerEvent {
    pb::RunnerEvent { event: Some(e) }
}

async fn system_line(events: &mpsc::Sender<pb::RunnerEvent>, step: u32, text: String) {
    let _ = events
        .send(event(Event::Log(pb::LogChunk {
            step,
            stream: pb::Stream::System as i32,
            data: text.into_bytes(),
        })))
        .await;
}

/// Runs the job; `None` when the runner "crashed" on purpose.
async fn execute(
    job: &pb::JobSpec,
    workspace: &Path,
    executor: &dyn StepExecutor,
    events: &mpsc::Sender<pb::RunnerEvent>,
    stop_after_steps: Option<u32>,
) -> Option<bool> {
    let checkout = workspace.join("checkout");
    if let Err(e) = check_out(job.checkout.as_ref(), &checkout).await {
        system_line(
            events,
            crate::protocol::SYSTEM_STEP,
            format!("checkout failed: {e}\n"),
        )
        .await;
        return Some(false);
    }
    let mut success = true;
    for (i, step) in job.steps.iter().enumerate() {
        let index = i as u32;
        if stop_after_steps == Some(index) {
            return None;
        }
        let _ = events
            .send(event(Event::StepStarted(pb::StepStarted { index })))
            .await;
        let env = step_environment(job, step);
        let dir = match step_dir(&checkout, &job.workdir, &step.workdir) {
            Ok(d) => d,
            Err(e) => {
                finish_step(events, index, -1, false, e.clone()).await;
                success = false;
                break;
            }
        };
        let (out_tx, mut out_rx) = OutputSink::channel(64);
        let forward = {
            let events = events.clone();
            tokio::spawn(async move {
                while let Some((stream, data)) = out_rx.recv().await {
                    let stream = match stream {
                        LogStream::Stdout => pb::Stream::Stdout,
                        LogStream::Stderr => pb::Stream::Stderr,
                        LogStream::System => pb::Stream::System,
                    };
                    let chunk = pb::LogChunk {
                        step: index,
                        stream: stream as i32,
                        data,
                    };
                    if events.send(event(Event::Log(chunk))).await.is_err() {
                        break;
                    }
                }
            })
        };
        let result = executor
            .run(&Step::from_spec(index, step), &dir, &env, out_tx)
            .await;
        let _ = forward.await;
        let (code, timed_out, error) = match result {
            Ok(o) => (o.exit_code, o.timed_out, String::new()),
            Err(e) => (-1, false, error_chain(&e)),
        };
        if timed_out {
            system_line(
                events,
                index,
                format!(
                    "step timed out after {}s and was killed\n",
                    step.timeout_secs
                ),
            )
            .await;
        }
        if code != 0
            && let Some(line) = disk_full(&dir)
        {
            system_line(events, index, line).await;
        }
        finish_step(events, index, code, timed_out, error).await;
        if code != 0 && !step.continue_on_error {
            success = false;
            break;
        }
    }
    Some(success)
}

/// A line for the log when the file system a failed step ran on has no
/// room left (less than 1 % or 32 MiB free for the step's user): the
/// step's own error ("No space left on device") may be lost in its output.
fn disk_full(dir: &Path) -> Option<String> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let unit = s.fragment_size() as u64;
    let total = (s.blocks() as u64).saturating_mul(unit);
    let free = (s.blocks_available() as u64).saturating_mul(unit);
    if total == 0 || free > (total / 100).max(32 << 20) {
        return None;
    }
    Some(format!(
        "the disk is full: {} MiB free of {} MiB under {}; a VM's disk is its image's `disk_gib`\n",
        free >> 20,
        total >> 20,
        dir.display()
    ))
}

async fn finish_step(
    events: &mpsc::Sender<pb::RunnerEvent>,
    index: u32,
    exit_code: i32,
    timed_out: bool,
    error: String,
) {
    let _ = events
        .send(event(Event::StepFinished(pb::StepFinished {
            index,
            exit_code,
            timed_out,
            error,
        })))
        .await;
}

/// What a step inherits from the runner's own environment: these names and
/// `LC_*`, nothing else. The runner's endpoint and token, and whatever its
/// host set, stay with the runner.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    // The local provider's mark, which lets it find a job's processes when
    // the VM is destroyed (a directory name, not a secret).
    "SOLSTICE_LOCAL_VM",
];

/// The one place that builds a step's environment: the allow-listed part of
/// the runner's own environment ([`INHERITED_ENV`]), then the job's
/// (built-ins, workflow, job, matrix), then the step's, then the job's
/// secrets.
pub(crate) fn step_environment(job: &pb::JobSpec, step: &pb::StepSpec) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| INHERITED_ENV.contains(&k.as_str()) || k.starts_with("LC_"))
        .collect();
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(job.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

fn step_dir(checkout: &Path, job_dir: &str, step_dir: &str) -> Result<PathBuf, String> {
    let rel = if step_dir.is_empty() {
        job_dir
    } else {
        step_dir
    };
    // The workflow was validated, but the runner checks again: the spec
    // crossed a network.
    if rel.split(['/', '\\']).any(|c| c == "..") || rel.starts_with('/') {
        return Err(format!("workdir `{rel}` leaves the checkout"));
    }
    let dir = if rel.is_empty() || rel == "." {
        checkout.to_path_buf()
    } else {
        checkout.join(rel)
    };
    if !dir.is_dir() {
        return Err(format!("workdir `{rel}` does not exist in the checkout"));
    }
    Ok(dir)
}

async fn check_out(checkout: Option<&pb::Checkout>, dest: &Path) -> Result<(), String> {
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    match checkout.and_then(|c| c.source.as_ref()) {
        None => Ok(()),
        Some(pb::checkout::Source::Git(g)) => {
            clone_into(
                &g.url,
                &g.commit,
                &g.fetch_ref,
                &g.username,
                &g.password,
                dest,
            )
            .await
        }
        Some(pb::checkout::Source::Local(l)) => copy_tree(Path::new(&l.path), dest).await,
    }
}

/// `git clone URL` into `dest` (made if missing) and check out `commit`,
/// fetching `fetch_ref` first when it is not empty; the credentials, when
/// given, travel in git's environment only. The runner's checkout, and the
/// engine's on the host (`EngineConfig::checkout_dir`).
pub(crate) async fn clone_into(
    url: &str,
    commit: &str,
    fetch_ref: &str,
    username: &str,
    password: &str,
    dest: &Path,
) -> Result<(), String> {
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    {
        {
            check_git_source(url, commit)?;
            if !fetch_ref.is_empty() {
                check_fetch_ref(fetch_ref)?;
            }
            let auth = clone_auth_env(username, password);
            // A clone given up on (the job's timeout) stops with it.
            let ok = Command::new("git")
                .kill_on_drop(true)
                .args(["clone", "--quiet", "--no-checkout", "--", url, "."])
                .envs(auth.iter().map(|(k, v)| (k, v)))
                .current_dir(dest)
                .status()
                .await;
            if !matches!(ok, Ok(s) if s.success()) {
                return Err(format!("git clone {url} failed"));
            }
            if !fetch_ref.is_empty() {
                let ok = Command::new("git")
                    .kill_on_drop(true)
                    .args(["fetch", "--quiet", "origin", "--", fetch_ref])
                    .envs(auth.iter().map(|(k, v)| (k, v)))
                    .current_dir(dest)
                    .status()
                    .await;
                if !matches!(ok, Ok(s) if s.success()) {
                    return Err(format!("git fetch {fetch_ref} failed"));
                }
            }
            let ok = Command::new("git")
                .kill_on_drop(true)
                .args([
                    "checkout",
                    "--quiet",
                    "--detach",
                    "--end-of-options",
                    commit,
                ])
                .current_dir(dest)
                .status()
                .await;
            if !matches!(ok, Ok(s) if s.success()) {
                return Err(format!("git checkout {commit} failed"));
            }
            Ok(())
        }
    }
}

/// The environment that gives git the clone's credentials: an
/// `Authorization` header from git's environment configuration, so the
/// token is on no command line and in no `.git/config` the steps can read.
/// git sends that header with every request, so it follows no redirect
/// while it carries one: a redirect could send the token to another host
/// (a renamed repository's clone then fails with the forge's 301).
fn clone_auth_env(username: &str, password: &str) -> Vec<(String, String)> {
    if password.is_empty() {
        return Vec::new();
    }
    let basic = base64(format!("{username}:{password}").as_bytes());
    vec![
        ("GIT_CONFIG_COUNT".into(), "2".into()),
        ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
        (
            "GIT_CONFIG_VALUE_0".into(),
            format!("Authorization: Basic {basic}"),
        ),
        ("GIT_CONFIG_KEY_1".into(), "http.followRedirects".into()),
        ("GIT_CONFIG_VALUE_1".into(), "false".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
    ]
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A ref to fetch comes from a webhook too: `refs/` and plain segments
/// (letters, digits, `-`, `_`, `.`, no `..`), nothing option-like.
pub(crate) fn check_fetch_ref(git_ref: &str) -> Result<(), String> {
    let plain = git_ref.starts_with("refs/")
        && git_ref.len() <= 255
        && !git_ref.contains("..")
        && !git_ref.ends_with('/')
        && git_ref
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if plain {
        Ok(())
    } else {
        Err(format!("refusing ref to fetch {git_ref:?}"))
    }
}

/// Clone URLs and commits come from webhooks: only the usual transports
/// (no `ext::`, no option-looking text) and a full hexadecimal commit id.
pub(crate) fn check_git_source(url: &str, commit: &str) -> Result<(), String> {
    let scheme_ok = ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|s| url.starts_with(s))
        || scp_like(url);
    if !scheme_ok || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "refusing clone URL {url:?}: expected https://, http://, ssh://, git://, file:// or user@host:path"
        ));
    }
    let hex = commit.chars().all(|c| c.is_ascii_hexdigit());
    if !hex || !(commit.len() == 40 || commit.len() == 64) {
        return Err(format!(
            "refusing commit {commit:?}: expected a full commit id (40 or 64 hexadecimal digits)"
        ));
    }
    Ok(())
}

/// `git@host:owner/repo.git`, the form forges give for SSH.
fn scp_like(url: &str) -> bool {
    let Some((user_host, path)) = url.split_once(':') else {
        return false;
    };
    let Some((user, host)) = user_host.split_once('@') else {
        return false;
    };
    let word = |w: &str, extra: &[char]| {
        !w.is_empty()
            && !w.starts_with('-')
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    word(user, &['.', '_', '-']) && word(host, &['.', '-']) && !path.is_empty()
}

/// Copies a working tree: in a git repository the tracked files and the
/// untracked ones git does not ignore (so `target/` stays behind);
/// elsewhere everything but `.git`. Git itself decides in a repository
/// (a walker such as the `ignore` crate's would also drop tracked files
/// that match a `.gitignore`); outside one, the plain walk below is all
/// there is to it.
async fn copy_tree(src: &Path, dest: &Path) -> Result<(), String> {
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(src)
        .output()
        .await;
    let files: Vec<PathBuf> = match listed {
        Ok(out) if out.status.success() => out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            // Names are bytes: a file whose name is not UTF-8 is copied
            // under its own name, not a lossy one.
            .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
            .collect(),
        _ => walk(src).map_err(|e| format!("{}: {e}", src.display()))?,
    };
    // One blocking task for the whole copy: a thread hop per file (as with
    // tokio::fs) costs more than copying a small file.
    let (src, dest) = (src.to_path_buf(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || copy_files(&src, &dest, &files))
        .await
        .map_err(|e| e.to_string())?
}

fn copy_files(src: &Path, dest: &Path, files: &[PathBuf]) -> Result<(), String> {
    let mut made: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for rel in files {
        let from = src.join(rel);
        let to = dest.join(rel);
        if let Some(parent) = to.parent()
            && !made.contains(parent)
        {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            made.insert(parent.to_path_buf());
        }
        match std::fs::symlink_metadata(&from) {
            Ok(m) if m.is_file() => {
                std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
            }
            // A committed symlink stays a symlink, as `git clone` makes it.
            Ok(m) if m.is_symlink() => {
                let target =
                    std::fs::read_link(&from).map_err(|e| format!("{}: {e}", from.display()))?;
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(|e| format!("{}: {e}", to.display()))?;
            }
            _ => {} // deleted since listed, or a submodule: skipped
        }
    }
    Ok(())
}

fn walk(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            if name == ".git" {
                continue;
            }
            let path = rel.join(&name);
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() || kind.is_symlink() {
                out.push(path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_disk_is_named_and_a_roomy_one_is_not() {
        let roomy = tempfile::tempdir().expect("temp dir");
        // The test's own temporary directory has room (or nothing could run).
        assert_eq!(super::disk_full(roomy.path()), None);
        if !nix::unistd::geteuid().is_root() {
            // Mounting the small file system below needs root (CI runs as root).
            return;
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(roomy.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount a 1 MiB tmpfs");
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(roomy.path());
        // 1 MiB is under the 32 MiB floor: full even while empty.
        let line = super::disk_full(roomy.path()).expect("a 1 MiB file system is full");
        assert!(line.starts_with("the disk is full: "), "{line}");
        assert!(line.contains("of 1 MiB"), "{line}");
    }

    use super::*;

    #[tokio::test]
    async fn a_checkout_copies_names_that_are_not_utf8_exactly() {
        use std::os::unix::ffi::OsStringExt;
        let name = std::ffi::OsString::from_vec(b"caf\xe9.txt".to_vec());
        for in_git in [false, true] {
            let src = tempfile::tempdir().expect("src");
            let dest = tempfile::tempdir().expect("dest");
            if in_git {
                let ok = std::process::Command::new("git")
                    .args(["init", "--quiet"])
                    .current_dir(src.path())
                    .status()
                    .expect("git");
                assert!(ok.success());
            }
            std::fs::write(src.path().join(&name), b"latin-1").expect("write");
            copy_tree(src.path(), dest.path()).await.expect("copy");
            assert_eq!(
                std::fs::read(dest.path().join(&name)).expect("copied under its own name"),
                b"latin-1",
                "in git: {in_git}"
            );
        }
    }

    #[test]
    fn clone_sources_from_webhooks_cannot_be_read_as_options() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        for url in [
            "https://github.com/o/r.git",
            "ssh://git@host/o/r",
            "git@github.com:o/r.git",
            "file:///srv/repo",
        ] {
            assert!(check_git_source(url, sha).is_ok(), "{url}");
        }
        for url in [
            "--upload-pack=touch /tmp/x",
            "-oProxyCommand=x",
            "ext::sh -c touch% /tmp/pwned",
            "/local/path",
            "https://host/o r",
            "-u@host:x",
            "git@-host:x",
            "",
        ] {
            assert!(check_git_source(url, sha).is_err(), "{url}");
        }
        for commit in ["--orphan", "main", "HEAD~1", "0123456", &"g".repeat(40), ""] {
            assert!(check_git_source("https://h/r", commit).is_err(), "{commit}");
        }
        assert!(check_git_source("https://h/r", &"a".repeat(64)).is_ok());
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"x-access-token:ghs_1"),
            "eC1hY2Nlc3MtdG9rZW46Z2hzXzE="
        );
        assert!(clone_auth_env("u", "").is_empty());
        for ok in ["refs/pull/7/head", "refs/heads/feature-1.2_x"] {
            assert!(check_fetch_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "--upload-pack=x",
            "refs/../x",
            "HEAD",
            "refs/a b",
            "refs/a\nb",
            "refs/x/",
            "pull/7/head",
            "refs/a:b",
        ] {
            assert!(check_fetch_ref(bad).is_err(), "{bad}");
        }
    }

    /// Counts the requests that carried an `Authorization` header.
    type Seen = std::sync::Arc<std::sync::atomic::AtomicUsize>;

    /// A tiny HTTP server: `answer(path)` gives the response for a
    /// request's path; requests carrying `Authorization` are counted.
    async fn serve(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> (String, Seen) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen: Seen = Default::default();
        let counted = seen.clone();
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counted = counted.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    if head.to_ascii_lowercase().contains("\r\nauthorization:") {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let _ = s.write_all(&answer(&path)).await;
                });
            }
        });
        (url, seen)
    }

    fn git_in(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[tokio::test]
    async fn a_clone_with_credentials_follows_no_redirect() {
        // Elsewhere serves a real repository over git's plain ("dumb")
        // HTTP protocol; the forge redirects every request there. git would
        // go on fetching from elsewhere directly, header and all.
        let repos = tempfile::tempdir().expect("dir");
        let work = repos.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git_in(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("README"), "hi\n").expect("write");
        git_in(&work, &["add", "README"]);
        git_in(&work, &["commit", "-q", "-m", "one"]);
        let commit = git_in(&work, &["rev-parse", "HEAD"]);
        let bare = repos.path().join("repo.git");
        git_in(repos.path(), &["clone", "-q", "--bare", "work", "repo.git"]);
        git_in(&bare, &["update-server-info"]);
        let root = bare.clone();
        let (elsewhere, elsewhere_saw_token) = serve(move |path| {
            let rel = path
                .split('?')
                .next()
                .unwrap_or("")
                .trim_start_matches("/owner/repo.git/");
            match std::fs::read(root.join(rel))
                .ok()
                .filter(|_| !rel.contains(".."))
            {
                Some(body) => {
                    let mut out = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    out.extend(body);
                    out
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            }
        })
        .await;
        let (forge, forge_saw_token) = serve(move |path| {
            format!("HTTP/1.1 301 Moved\r\nLocation: {elsewhere}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
        })
        .await;
        let dest = tempfile::tempdir().expect("dir");
        let checkout = pb::Checkout {
            source: Some(pb::checkout::Source::Git(pb::GitCheckout {
                url: format!("{forge}/owner/repo.git"),
                commit,
                fetch_ref: String::new(),
                username: "x-access-token".into(),
                password: "ghs_secret_token".into(),
            })),
        };
        let result = check_out(Some(&checkout), dest.path()).await;
        assert!(
            forge_saw_token.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "the forge itself gets the token (the test reaches it)"
        );
        assert_eq!(
            elsewhere_saw_token.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "git followed the redirect and sent the token elsewhere"
        );
        assert!(result.is_err(), "a redirected clone with credentials fails");
    }
}
