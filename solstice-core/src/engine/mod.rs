//! The orchestrator engine: takes jobs from the queue up to its capacity,
//! claims each in the store with a lease that a heartbeat renews, boots a VM
//! through the provider, serves the runner over gRPC, masks and stores the
//! logs, destroys the VM, records the outcome and releases the jobs whose
//! `needs` are now met.
//!
//! Failure handling, in one place:
//!
//! | what happened | attempt | job |
//! | --- | --- | --- |
//! | every step passed (or was allowed to fail) | succeeded | succeeded |
//! | a step failed, or the job timed out | failed | failed |
//! | VM did not boot, runner lost or exited without reporting | lost | queued again while `retry` allows, else failed |
//! | the engine holding it died (lease expired) | lost | queued again as a new attempt, `retry` or not |
//! | a user cancelled | cancelled | cancelled |
//! | something it needs did not succeed | (none) | skipped, with the reason |

mod events;
#[cfg(feature = "testing")]
mod guest;
mod recorder;
mod schedule;
mod service;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use solstice_kdl::{PlannedJob, Workflow};
use solstice_queue::{Delivery, JobQueue};
use solstice_vmm::{RunnerEndpoint, VmId, VmProvider, VmSpec, VmState};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use events::{EVENT_BUFFER_BYTES, EVENT_BUFFER_EVENTS, EventError, Events};
#[cfg(feature = "testing")]
pub use guest::{FakeExecutor, RunnerGuest};

use crate::log::{DEFAULT_LOG_CAP, LogIngest};
use crate::store::{
    Applied, Attempt, AttemptId, AttemptStatus, Change, Job, JobId, JobStatus, LogChunk, LogStream,
    NewJob, RunId, RunStatus, StateStore, StepStatus,
};
use crate::util::error_chain;
pub(crate) use crate::util::lock;
use recorder::Recorder;
use schedule::RunIndex;

/// The queue message: one job of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobMessage {
    /// The run.
    pub run_id: RunId,
    /// The job.
    pub job_id: JobId,
}

/// Where the runner gets the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Checkout {
    /// Nothing to check out.
    None,
    /// `git clone URL` and check out `commit`.
    Git {
        /// Clone URL.
        url: String,
        /// Commit to check out.
        commit: String,
    },
    /// Copy a directory of the host (`cidev run`, local provider only).
    Local {
        /// The directory.
        path: String,
    },
}

/// What the store keeps as a job's spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredJob {
    /// The planned job (matrix expanded, `needs` resolved).
    pub planned: PlannedJob,
    /// Job-level environment: workflow `env`, job `env`, `MATRIX_*`.
    pub env: BTreeMap<String, String>,
    /// Names of the secrets this job receives.
    pub secrets: Vec<String>,
    /// Where the code comes from.
    pub checkout: Checkout,
}

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
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listen {
    async fn bind(&self) -> std::io::Result<(Listener, RunnerEndpoint)> {
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
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// This engine's unique name; leases are held in it.
    pub holder: String,
    /// Most jobs at once.
    pub capacity: usize,
    /// Lease length; the heartbeat renews it every third of that.
    pub lease: Duration,
    /// Timeout of jobs without `timeout`.
    pub default_job_timeout: Duration,
    /// Per-job log cap after masking.
    pub log_cap: u64,
    /// Secret values by name.
    pub secrets: BTreeMap<String, String>,
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            holder: format!("engine-{}-{}", std::process::id(), now_ms()),
            capacity: std::thread::available_parallelism().map_or(2, |n| n.get()),
            lease: Duration::from_secs(30),
            default_job_timeout: Duration::from_secs(3600),
            log_cap: DEFAULT_LOG_CAP,
            secrets: BTreeMap::new(),
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            poll: Duration::from_millis(100),
            vcpus: 2,
            memory_mib: 2048,
            disk_gib: 20,
        }
    }
}

/// Why the engine could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] solstice_queue::QueueError),
    /// The workflow cannot be planned.
    #[error(transparent)]
    Plan(#[from] solstice_kdl::PlanError),
    /// The runner endpoint could not listen.
    #[error("runner endpoint: {0}")]
    Listen(std::io::Error),
    /// A declared secret has no value.
    #[error("secret `{0}` is declared by the workflow but has no value (use --secret {0}=VALUE)")]
    MissingSecret(String),
    /// A declared secret's value is too short to be masked in logs.
    #[error(
        "secret `{0}` is shorter than {min} bytes: it could not be masked in the logs, so it is refused",
        min = crate::log::MIN_SECRET_LEN
    )]
    SecretTooShort(String),
}

/// What happens, for live output (`cidev run`) and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineEvent {
    /// A job was published to the queue.
    JobQueued {
        /// Run.
        run: RunId,
        /// Expanded job id.
        key: String,
    },
    /// An attempt started.
    JobStarted {
        /// Run.
        run: RunId,
        /// Expanded job id.
        key: String,
        /// Attempt number.
        attempt: u32,
    },
    /// A step started.
    StepStarted {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// Step index.
        index: u32,
        /// Step name.
        name: String,
    },
    /// Output (masked).
    Log {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// The step that wrote it; `None` for the system's own lines.
        step: Option<u32>,
        /// Which stream.
        stream: LogStream,
        /// Bytes.
        data: Vec<u8>,
    },
    /// A step ended.
    StepFinished {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// Step index.
        index: u32,
        /// Status.
        status: StepStatus,
        /// Exit status.
        exit_code: i32,
    },
    /// An attempt was lost and the job goes round again.
    JobRetrying {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// The attempt that was lost.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// A job reached its final status.
    JobFinished {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// Final status.
        status: JobStatus,
        /// Why, when not succeeded.
        reason: Option<String>,
    },
    /// Every job of the run is final.
    RunFinished {
        /// Run.
        run: RunId,
        /// Final status.
        status: RunStatus,
    },
}

/// Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How an attempt ended.
#[derive(Debug, Clone)]
enum Outcome {
    Succeeded,
    Failed(String),
    Lost(String),
    Cancelled,
}

/// What the runner reported through the service.
#[derive(Debug)]
enum RunnerResult {
    Finished {
        success: bool,
        failed_step: Option<String>,
    },
    Disconnected(String),
    /// The runner broke the protocol or contradicted its own step results:
    /// the job fails (a retry would meet the same runner).
    Refused(String),
}

/// An attempt this engine is running: what the gRPC service needs.
struct LiveAttempt {
    attempt: Attempt,
    run: RunId,
    key: String,
    stored: StoredJob,
    secrets: BTreeMap<String, String>,
    result: Mutex<Option<oneshot::Sender<RunnerResult>>>,
    ingest: tokio::sync::Mutex<(LogIngest, i64)>,
    /// Why the job failed, from its first failing step (`step `x` timed out`).
    failed_step: Mutex<Option<String>>,
    /// The hash of the attempt's token (the token itself is not kept).
    token_hash: String,
    /// Set by the runner's first `FetchJob`: tokens are single-use.
    token_used: std::sync::atomic::AtomicBool,
    /// The lease as last renewed (Unix ms); the token expires with it.
    lease_until: std::sync::atomic::AtomicI64,
    cancel: Notify,
    /// The runner's report stream is open or still being processed.
    reporting: std::sync::atomic::AtomicBool,
    /// Hash of the report session handed out by `FetchJob`.
    session_hash: Mutex<Option<String>>,
    /// A report stream was accepted: there is one per attempt.
    report_opened: std::sync::atomic::AtomicBool,
}

struct Inner {
    config: EngineConfig,
    store: Arc<dyn StateStore>,
    queue: Arc<dyn JobQueue<JobMessage>>,
    provider: Arc<dyn VmProvider>,
    endpoint: RunnerEndpoint,
    live: Mutex<HashMap<AttemptId, Arc<LiveAttempt>>>,
    cancelled_runs: Mutex<HashSet<RunId>>,
    events: events::EventBus,
    /// Long-lived tasks (endpoint, consumer, recovery).
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set by `kill`: job tasks and heartbeats stop dead, as in a crash.
    killed: tokio::sync::watch::Sender<bool>,
    /// The hot path's writes (group commit).
    recorder: Recorder,
    /// Woken whenever a run finishes (for `wait`).
    run_finished: Notify,
    /// What the scheduler knows of each run it looks after.
    indexes: tokio::sync::Mutex<HashMap<RunId, RunIndex>>,
    /// Job ends not yet counted in their run's index, by run.
    ended: Mutex<HashMap<RunId, Vec<(String, JobStatus)>>>,
    /// Runs whose jobs changed since the scheduler last looked.
    to_schedule: Mutex<HashSet<RunId>>,
    schedule_wake: Notify,
    /// Job tasks running (each holds one of `capacity` slots).
    active_jobs: std::sync::atomic::AtomicUsize,
    /// No moment without a free slot since the last queue reconciliation
    /// (cleared when every slot is taken).
    idle_since_reconcile: std::sync::atomic::AtomicBool,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("holder", &self.inner.config.holder)
            .field("endpoint", &self.inner.endpoint)
            .field("live_attempts", &lock(&self.inner.live).len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts serving the runner endpoint, recovers what an earlier life (or
    /// a dead peer) left, and starts consuming the queue.
    pub async fn start(
        config: EngineConfig,
        store: Arc<dyn StateStore>,
        queue: Arc<dyn JobQueue<JobMessage>>,
        provider: Arc<dyn VmProvider>,
    ) -> Result<Engine, EngineError> {
        let (listener, endpoint) = config.listen.bind().await.map_err(EngineError::Listen)?;
        let (recorder, writer) = Recorder::start(store.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                store,
                queue,
                provider,
                endpoint,
                live: Mutex::new(HashMap::new()),
                cancelled_runs: Mutex::new(HashSet::new()),
                events: events::EventBus::default(),
                tasks: Mutex::new(Vec::new()),
                killed: tokio::sync::watch::channel(false).0,
                recorder,
                run_finished: Notify::new(),
                indexes: tokio::sync::Mutex::new(HashMap::new()),
                ended: Mutex::new(HashMap::new()),
                to_schedule: Mutex::new(HashSet::new()),
                schedule_wake: Notify::new(),
                active_jobs: std::sync::atomic::AtomicUsize::new(0),
                idle_since_reconcile: std::sync::atomic::AtomicBool::new(true),
            }),
        };
        lock(&engine.inner.tasks).push(writer);
        let scheduler = engine.clone();
        engine.spawn(async move { scheduler.scheduler().await });
        let server = service::serve(engine.clone(), listener);
        engine.spawn(server);
        engine.recover().await?;
        // Whatever the store says is queued gets a message: an in-process
        // queue starts empty, and a crash between marking a job queued and
        // publishing it leaves the job without one. (A duplicate is
        // harmless: claiming is a compare-and-set.)
        let mut stale = engine.reconcile_queue(None).await?;
        let consumer = engine.clone();
        engine.spawn(async move { consumer.consume().await });
        let keeper = engine.clone();
        engine.spawn(async move {
            let every = keeper.inner.config.lease / 2;
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = keeper.recover().await {
                    tracing::warn!(error = %e, "recovery pass failed");
                }
                match keeper.reconcile_queue(Some(&stale)).await {
                    Ok(now) => stale = now,
                    Err(e) => tracing::warn!(error = %e, "queue reconciliation failed"),
                }
                keeper.refresh_indexes().await;
            }
        });
        tracing::info!(holder = %engine.inner.config.holder, endpoint = %engine.inner.endpoint, "engine started");
        Ok(engine)
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(f);
        lock(&self.inner.tasks).push(handle);
    }

    /// Where runners connect.
    pub fn endpoint(&self) -> &RunnerEndpoint {
        &self.inner.endpoint
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// Live events from now on. A subscriber that falls behind by more
    /// than [`EVENT_BUFFER_BYTES`] gets [`EventError::Lagged`] with the
    /// number of events it missed, then reads on.
    pub fn subscribe(&self) -> Events {
        self.inner.events.subscribe()
    }

    fn emit(&self, event: EngineEvent) {
        // Every job end reaches the scheduler through here.
        if let EngineEvent::JobFinished {
            run, key, status, ..
        } = &event
        {
            lock(&self.inner.ended)
                .entry(*run)
                .or_default()
                .push((key.clone(), *status));
        }
        self.inner.events.send(event);
    }

    /// Plans a workflow and inserts it as a run; queues the jobs without
    /// `needs`. Fails before inserting anything if a secret has no value.
    pub async fn submit(
        &self,
        workflow: &Workflow,
        source: &str,
        checkout: Checkout,
    ) -> Result<RunId, EngineError> {
        let plan = workflow.plan()?;
        let mut new_jobs = Vec::with_capacity(plan.jobs.len());
        for planned in plan.jobs {
            let mut secrets: Vec<String> = workflow.secrets.clone();
            for s in &planned.job.secrets {
                if !secrets.contains(s) {
                    secrets.push(s.clone());
                }
            }
            for name in &secrets {
                match self.inner.config.secrets.get(name) {
                    None => return Err(EngineError::MissingSecret(name.clone())),
                    // A value this short would not be masked in the logs.
                    Some(v) if v.len() < crate::log::MIN_SECRET_LEN => {
                        return Err(EngineError::SecretTooShort(name.clone()));
                    }
                    Some(_) => {}
                }
            }
            let mut env = workflow.env.clone();
            env.extend(planned.job.env.clone());
            for (axis, value) in &planned.matrix {
                env.insert(format!("MATRIX_{}", axis.to_uppercase()), value.clone());
            }
            let key = planned.id.clone();
            let needs = planned.job.needs.clone();
            let label = planned
                .job
                .runs_on
                .clone()
                .unwrap_or_else(|| "default".into());
            let max_attempts = planned.job.retry + 1;
            let stored = StoredJob {
                planned,
                env,
                secrets,
                checkout: checkout.clone(),
            };
            let spec = serde_json::to_string(&stored)
                .map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?;
            new_jobs.push(NewJob {
                key,
                label,
                spec,
                needs,
                max_attempts,
            });
        }
        let name = workflow.name.clone().unwrap_or_else(|| "workflow".into());
        let run = self
            .inner
            .store
            .create_run(&name, source, &new_jobs, now_ms())
            .await?;
        self.schedule(run).await?;
        Ok(run)
    }

    /// Cancels a run: waiting jobs are cancelled, running ones stopped.
    pub async fn cancel_run(&self, run: RunId) -> Result<(), EngineError> {
        lock(&self.inner.cancelled_runs).insert(run);
        for job in self.inner.store.jobs(run).await? {
            if self
                .inner
                .store
                .transition_job(
                    job.id,
                    &[JobStatus::Pending, JobStatus::Queued],
                    JobStatus::Cancelled,
                    Some("cancelled"),
                )
                .await?
            {
                self.emit(EngineEvent::JobFinished {
                    run,
                    key: job.key.clone(),
                    status: JobStatus::Cancelled,
                    reason: Some("cancelled".into()),
                });
            }
        }
        let live: Vec<Arc<LiveAttempt>> = lock(&self.inner.live)
            .values()
            .filter(|l| l.run == run)
            .cloned()
            .collect();
        for l in live {
            l.cancel.notify_one();
        }
        self.schedule(run).await
    }

    /// Waits until the run is final.
    pub async fn wait(&self, run: RunId) -> Result<RunStatus, EngineError> {
        loop {
            // Listen before looking, so a run that ends in between is not missed.
            let finished = self.inner.run_finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if let Some(r) = self.inner.store.run(run).await?
                && r.status != RunStatus::Running
            {
                return Ok(r.status);
            }
            // Look again when a run finishes here, or after a while
            // (another engine may finish it).
            tokio::select! {
                () = finished => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Stops everything at once, without recording or cleaning up: what a
    /// crash looks like to the store and the provider. For fault tests
    /// (the `testing` feature).
    #[cfg(feature = "testing")]
    pub fn kill(&self) {
        let _ = self.inner.killed.send(true);
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        lock(&self.inner.live).clear();
    }

    /// Cancels every run this engine is working on and waits until their
    /// VMs are destroyed (Ctrl-C in `cidev run`).
    pub async fn shutdown(&self) {
        let runs: HashSet<RunId> = lock(&self.inner.live).values().map(|l| l.run).collect();
        for run in runs {
            let _ = self.cancel_run(run).await;
        }
        // Wait for every job task to end (they record their outcome through
        // the writer task, which must outlive them), then schedule what they
        // left to schedule.
        for _ in 0..600 {
            if lock(&self.inner.live).is_empty()
                && self
                    .inner
                    .active_jobs
                    .load(std::sync::atomic::Ordering::SeqCst)
                    == 0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.schedule_pending().await;
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
    }

    /// Puts a job on the queue.
    async fn publish(&self, run: RunId, job: JobId) -> Result<(), EngineError> {
        self.inner
            .queue
            .publish(&JobMessage {
                run_id: run,
                job_id: job,
            })
            .await?;
        Ok(())
    }

    /// Marks attempts with expired leases as lost and queues their jobs
    /// again; then destroys VMs that no running attempt owns.
    async fn recover(&self) -> Result<(), EngineError> {
        let store = &self.inner.store;
        for attempt in store.expired_attempts(now_ms()).await? {
            let reason = format!(
                "lease expired: engine `{}` stopped renewing it",
                attempt.holder
            );
            // One write: the attempt is lost, the job queued again, and
            // (our failure, not the job's) `retry` is not used up. A crash
            // before the publish below leaves a queued job without a
            // message, which `reconcile_queue` repairs.
            let ended = self
                .inner
                .recorder
                .apply(Change::Finish {
                    attempt: attempt.id,
                    status: AttemptStatus::Lost,
                    reason: Some(reason.clone()),
                    now: now_ms(),
                    job: attempt.job_id,
                    job_status: JobStatus::Queued,
                    job_reason: None,
                    extra_attempts: 1,
                })
                .await?;
            if ended != Applied::Finished(true) {
                continue;
            }
            let Some(job) = store.job(attempt.job_id).await? else {
                continue;
            };
            tracing::warn!(job = %job.key, attempt = attempt.number, "{reason}; running the job again");
            self.emit(EngineEvent::JobRetrying {
                run: job.run_id,
                key: job.key.clone(),
                attempt: attempt.number,
                reason,
            });
            self.publish(job.run_id, job.id).await?;
        }
        // List the VMs first, then read who is running: a VM exists only
        // after its attempt was claimed, so a VM in the list has its owner in
        // the later read unless that attempt really ended. (The other order
        // reaped VMs of jobs claimed between the two reads; found by the
        // 10,000-job benchmark.)
        let vms = match self.inner.provider.list().await {
            Ok(vms) => vms,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list VMs to reap");
                return Ok(());
            }
        };
        let mut owners: HashSet<String> = store
            .running_attempts()
            .await?
            .iter()
            .map(|a| a.id.to_string())
            .collect();
        owners.extend(lock(&self.inner.live).keys().map(|id| id.to_string()));
        for vm in vms.into_iter().filter(|vm| !owners.contains(&vm.owner)) {
            tracing::info!(vm = %vm.id, owner = %vm.owner, "reaping a VM no running attempt owns");
            if let Err(e) = self.inner.provider.destroy(&vm.id).await {
                tracing::warn!(vm = %vm.id, error = %e, "reaping failed");
            }
        }
        Ok(())
    }

    /// Publishes queued jobs that may have no message. At start (`seen`
    /// is `None`) that is every queued job. Later, a job is published again
    /// only when it was already queued at the previous pass and this engine
    /// has had a free slot since: a message for it would have been taken.
    /// Returns the queued jobs seen, for the next pass.
    async fn reconcile_queue(
        &self,
        seen: Option<&HashSet<JobId>>,
    ) -> Result<HashSet<JobId>, EngineError> {
        let queued = self.inner.store.queued_jobs().await?;
        let idle = self
            .inner
            .active_jobs
            .load(std::sync::atomic::Ordering::SeqCst)
            < self.inner.config.capacity.max(1)
            && self
                .inner
                .idle_since_reconcile
                .swap(true, std::sync::atomic::Ordering::SeqCst);
        let mut now = HashSet::with_capacity(queued.len());
        for job in queued {
            now.insert(job.id);
            let stranded = match seen {
                None => true,
                Some(seen) => idle && seen.contains(&job.id),
            };
            if stranded {
                if seen.is_some() {
                    tracing::warn!(job = %job.key, "a queued job had no message; publishing it again");
                }
                self.publish(job.run_id, job.id).await?;
            }
        }
        Ok(now)
    }

    async fn consume(&self) {
        let capacity = self.inner.config.capacity.max(1);
        let slots = Arc::new(Semaphore::new(capacity));
        let mut consumer = match self.inner.queue.consume(capacity).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot consume the job queue");
                return;
            }
        };
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let delivery = match consumer.next().await {
                Ok(d) => d,
                Err(e) => {
                    tracing::info!(error = %e, "job queue closed");
                    return;
                }
            };
            let engine = self.clone();
            let msg = delivery.message().clone();
            let span = tracing::info_span!("job", run = %msg.run_id, job = %msg.job_id);
            let mut killed = self.inner.killed.subscribe();
            let busy = self
                .inner
                .active_jobs
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if busy >= capacity {
                self.inner
                    .idle_since_reconcile
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
            tokio::spawn(
                async move {
                    tokio::select! {
                        () = engine.handle(delivery) => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                    engine
                        .inner
                        .active_jobs
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    drop(slot);
                }
                .instrument(span),
            );
        }
    }

    async fn handle(&self, delivery: Delivery<JobMessage>) {
        let msg = delivery.message().clone();
        match self.run_job(&msg).await {
            Ok(()) => {
                let _ = delivery.ack().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "job handling failed; the message goes back to the queue");
                let _ = delivery.nack(true).await;
            }
        }
        self.schedule_soon(msg.run_id);
    }

    async fn run_job(&self, msg: &JobMessage) -> Result<(), EngineError> {
        if lock(&self.inner.cancelled_runs).contains(&msg.run_id) {
            self.inner
                .store
                .transition_job(
                    msg.job_id,
                    &[JobStatus::Queued],
                    JobStatus::Cancelled,
                    Some("cancelled"),
                )
                .await?;
            return Ok(());
        }
        let token = new_token();
        let lease = self.inner.config.lease;
        let claimed = self
            .inner
            .recorder
            .apply(Change::Claim {
                job: msg.job_id,
                holder: self.inner.config.holder.clone(),
                lease_until: now_ms() + lease.as_millis() as i64,
                token_hash: hash_token(&token),
                now: now_ms(),
            })
            .await?;
        // Not queued (a stale or duplicate message), or out of attempts.
        let Applied::Claimed(Some(pair)) = claimed else {
            return Ok(());
        };
        let (job, attempt) = *pair;
        let span = tracing::info_span!("attempt", key = %job.key, attempt = attempt.number);
        self.attempt(job, attempt, token).instrument(span).await
    }

    async fn attempt(&self, job: Job, attempt: Attempt, token: String) -> Result<(), EngineError> {
        let run = job.run_id;
        self.emit(EngineEvent::JobStarted {
            run,
            key: job.key.clone(),
            attempt: attempt.number,
        });
        let stored: StoredJob = match serde_json::from_str(&job.spec) {
            Ok(stored) => stored,
            Err(e) => {
                // Nothing can run it; record why instead of leaving it running.
                let outcome = Outcome::Failed(format!("the stored job cannot be read: {e}"));
                return self.finish(&job, &attempt, outcome).await;
            }
        };
        let secrets: BTreeMap<String, String> = stored
            .secrets
            .iter()
            .filter_map(|n| {
                self.inner
                    .config
                    .secrets
                    .get(n)
                    .map(|v| (n.clone(), v.clone()))
            })
            .collect();
        let secret_values: Vec<String> = secrets.values().cloned().collect();
        // Masking fails closed: a job whose secrets cannot be masked does
        // not start, so nothing unmasked is ever stored or shown.
        let ingest = match LogIngest::new(&secret_values, self.inner.config.log_cap) {
            Ok(ingest) => ingest,
            Err(e) => {
                let outcome = Outcome::Failed(format!("the job's secrets cannot be masked: {e}"));
                return self.finish(&job, &attempt, outcome).await;
            }
        };
        let (result_tx, result_rx) = oneshot::channel();
        let timeout = stored
            .planned
            .job
            .timeout
            .map_or(self.inner.config.default_job_timeout, |t| t.to_std());
        let live = Arc::new(LiveAttempt {
            attempt: attempt.clone(),
            run,
            key: job.key.clone(),
            stored,
            secrets,
            result: Mutex::new(Some(result_tx)),
            ingest: tokio::sync::Mutex::new((ingest, 0)),
            failed_step: Mutex::new(None),
            token_hash: hash_token(&token),
            token_used: std::sync::atomic::AtomicBool::new(false),
            lease_until: std::sync::atomic::AtomicI64::new(attempt.lease_expires_at),
            cancel: Notify::new(),
            reporting: std::sync::atomic::AtomicBool::new(false),
            session_hash: Mutex::new(None),
            report_opened: std::sync::atomic::AtomicBool::new(false),
        });
        lock(&self.inner.live).insert(attempt.id, live.clone());

        let lease = self.inner.config.lease;
        let heartbeat = {
            let store = self.inner.store.clone();
            let holder = self.inner.config.holder.clone();
            let live = live.clone();
            let mut killed = self.inner.killed.subscribe();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(lease / 3) => {}
                        _ = killed.wait_for(|k| *k) => return,
                    }
                    let until = now_ms() + lease.as_millis() as i64;
                    match store.renew_lease(live.attempt.id, &holder, until).await {
                        Ok(true) => live
                            .lease_until
                            .store(until, std::sync::atomic::Ordering::SeqCst),
                        Ok(false) => {
                            tracing::warn!("lost the lease; stopping the attempt");
                            live.lease_until
                                .store(0, std::sync::atomic::Ordering::SeqCst);
                            live.cancel.notify_one();
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                    }
                }
            })
        };

        let mut spec = VmSpec::new(
            format!("solstice-r{}-j{}-a{}", run, job.id, attempt.number),
            attempt.id.to_string(),
            self.inner.endpoint.clone(),
            token,
        );
        spec.label = job.label.clone();
        spec.vcpus = self.inner.config.vcpus;
        spec.memory_mib = self.inner.config.memory_mib;
        spec.disk_gib = self.inner.config.disk_gib;
        let mut vm: Option<VmId> = None;
        let outcome = match self.inner.provider.provision(&spec).await {
            Err(e @ solstice_vmm::VmError::Boot { .. }) => Outcome::Lost(error_chain(&e)),
            Err(e) => Outcome::Lost(format!("VM failed to boot: {}", error_chain(&e))),
            Ok(handle) => {
                self.inner
                    .recorder
                    .send(Change::SetVm {
                        attempt: attempt.id,
                        vm_id: handle.id.0.clone(),
                    })
                    .await;
                vm = Some(handle.id.clone());
                self.watch(&live, &handle.id, result_rx, timeout).await
            }
        };
        heartbeat.abort();
        if let Some(id) = &vm
            && let Err(e) = self.inner.provider.destroy(id).await
        {
            tracing::warn!(vm = %id, error = %e, "destroying the VM failed; the reaper will retry");
        }
        let reason_line = match &outcome {
            Outcome::Succeeded => None,
            Outcome::Failed(r) | Outcome::Lost(r) => Some(r.clone()),
            Outcome::Cancelled => Some("cancelled".to_string()),
        };
        if let Some(r) = &reason_line {
            self.system_log(
                &live,
                &format!("[solstice] attempt {}: {r}\n", attempt.number),
            )
            .await;
        }
        self.flush_log(&live).await;
        lock(&self.inner.live).remove(&attempt.id);
        self.finish(&job, &attempt, outcome).await
    }

    /// Records how an attempt ended and what happens to its job: final, or
    /// queued again while `retry` allows.
    async fn finish(
        &self,
        job: &Job,
        attempt: &Attempt,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        let run = job.run_id;
        // `job` is as claimed: its `max_attempts` can only have grown since
        // if recovery ended this attempt, and then this finish does nothing.
        let retry =
            attempt.number < job.max_attempts && !lock(&self.inner.cancelled_runs).contains(&run);
        let (status, reason, job_status, job_reason) = match outcome {
            Outcome::Succeeded => (AttemptStatus::Succeeded, None, JobStatus::Succeeded, None),
            Outcome::Failed(r) => (
                AttemptStatus::Failed,
                Some(r.clone()),
                JobStatus::Failed,
                Some(r),
            ),
            Outcome::Cancelled => (
                AttemptStatus::Cancelled,
                Some("cancelled".to_string()),
                JobStatus::Cancelled,
                Some("cancelled".to_string()),
            ),
            Outcome::Lost(r) if retry => (
                AttemptStatus::Lost,
                Some(r.clone()),
                JobStatus::Queued,
                Some(r),
            ),
            Outcome::Lost(r) => (
                AttemptStatus::Lost,
                Some(r.clone()),
                JobStatus::Failed,
                Some(format!("{r} (no attempts left)")),
            ),
        };
        let ended = self
            .inner
            .recorder
            .apply(Change::Finish {
                attempt: attempt.id,
                status,
                reason: reason.clone(),
                now: now_ms(),
                job: job.id,
                job_status,
                job_reason: job_reason.clone(),
                extra_attempts: 0,
            })
            .await?;
        if ended != Applied::Finished(true) {
            // Someone else (recovery after a lost lease) already ended it.
            return Ok(());
        }
        if job_status == JobStatus::Queued {
            self.emit(EngineEvent::JobRetrying {
                run,
                key: job.key.clone(),
                attempt: attempt.number,
                reason: reason.unwrap_or_default(),
            });
            self.publish(run, job.id).await?;
            return Ok(());
        }
        self.emit(EngineEvent::JobFinished {
            run,
            key: job.key.clone(),
            status: job_status,
            reason: job_reason,
        });
        Ok(())
    }

    /// Waits for the runner's result, the VM's death, the timeout or a cancel.
    async fn watch(
        &self,
        live: &Arc<LiveAttempt>,
        vm: &VmId,
        mut result: oneshot::Receiver<RunnerResult>,
        timeout: Duration,
    ) -> Outcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = tokio::time::interval(self.inner.config.poll);
        let mut stopped_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                r = &mut result => {
                    return match r {
                        Ok(RunnerResult::Finished { success: true, .. }) => Outcome::Succeeded,
                        Ok(RunnerResult::Finished { success: false, failed_step }) => Outcome::Failed(
                            failed_step.unwrap_or_else(|| "the job failed".to_string())),
                        Ok(RunnerResult::Disconnected(why)) => Outcome::Lost(format!("runner lost: {why}")),
                        Ok(RunnerResult::Refused(why)) => Outcome::Failed(format!("the runner's report was refused: {why}")),
                        Err(_) => Outcome::Lost("runner lost".into()),
                    };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Outcome::Failed(format!("timed out after {}", solstice_kdl::Duration::from_secs(timeout.as_secs().max(1))));
                }
                _ = live.cancel.notified() => return Outcome::Cancelled,
                _ = poll.tick() => {
                    match self.inner.provider.state(vm).await {
                        Ok(VmState::Stopped(_)) | Ok(VmState::Failed(_)) | Err(_) => {
                            // Give the runner's last events time to land: while
                            // its report stream is still being processed (which
                            // can lag under load) the stream's end decides.
                            let since = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
                            let grace = if live.reporting.load(std::sync::atomic::Ordering::SeqCst) {
                                Duration::from_secs(30)
                            } else {
                                Duration::from_secs(2)
                            };
                            if since.elapsed() > grace {
                                tracing::warn!(
                                    reporting = live.reporting.load(std::sync::atomic::Ordering::SeqCst),
                                    result_pending = lock(&live.result).is_some(),
                                    "the VM stopped and no result came"
                                );
                                return Outcome::Lost("the VM stopped before the runner reported the end of the job".into());
                            }
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    async fn system_log(&self, live: &LiveAttempt, text: &str) {
        self.append_log(live, None, LogStream::System, text.as_bytes())
            .await;
    }

    /// Masks and stores output; also publishes it as an event.
    async fn append_log(
        &self,
        live: &LiveAttempt,
        step: Option<u32>,
        stream: LogStream,
        data: &[u8],
    ) {
        let mut guard = live.ingest.lock().await;
        let parts = guard.0.push_stream(stream.index(), data);
        let first = guard.1;
        guard.1 += parts.len() as i64;
        drop(guard);
        for (seq, (stream, masked)) in (first..).zip(parts) {
            self.store_chunk(live, seq, step, stream_at(stream), masked)
                .await;
        }
    }

    async fn flush_log(&self, live: &LiveAttempt) {
        let mut guard = live.ingest.lock().await;
        let parts = guard.0.finish_streams();
        let first = guard.1;
        guard.1 += parts.len() as i64;
        drop(guard);
        for (seq, (stream, rest)) in (first..).zip(parts) {
            self.store_chunk(live, seq, None, stream_at(stream), rest)
                .await;
        }
    }

    async fn store_chunk(
        &self,
        live: &LiveAttempt,
        seq: i64,
        step: Option<u32>,
        stream: LogStream,
        data: Vec<u8>,
    ) {
        let chunk = LogChunk {
            attempt_id: live.attempt.id,
            seq,
            step,
            stream,
            data: data.clone(),
            at: now_ms(),
        };
        self.inner.recorder.send(Change::Logs(vec![chunk])).await;
        self.emit(EngineEvent::Log {
            run: live.run,
            key: live.key.clone(),
            step,
            stream,
            data,
        });
    }
}

/// The stream of a masker's output index (the masker keeps one lane per
/// [`LogStream`]).
fn stream_at(index: usize) -> LogStream {
    LogStream::from_index(index).unwrap_or(LogStream::System)
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Tokens are stored hashed: a leaked database does not leak live tokens.
fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
