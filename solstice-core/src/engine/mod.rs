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
//! | VM did not boot, runner lost or exited without reporting | lost | queued again with one more attempt (the system's failure, not the job's), until it was lost [`LOST_ATTEMPTS`] + `retry` times: then failed `(lost N times)` |
//! | the engine holding it died (lease expired) | lost | the same |
//! | a user cancelled | cancelled | cancelled |
//! | something it needs did not succeed | (none) | skipped, with the reason |

//! Where each part lives: `config.rs` (what an engine is set up with),
//! `events.rs` (what it tells subscribers), `error.rs`, `attempt.rs` (one
//! attempt, from claim to end), `logs.rs` (masking and storing output),
//! `schedule.rs` (what `needs` allow next), `recovery.rs` (nothing
//! stranded after a crash), `recorder.rs` (the batched writes),
//! `service.rs` (the runners' gRPC endpoint), `token.rs` (job tokens) and
//! `guest.rs` (the test doubles).

mod attempt;
mod config;
mod error;
mod events;
#[cfg(feature = "testing")]
mod guest;
mod logs;
mod recorder;
mod recovery;
mod schedule;
mod service;
mod token;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use solstice_kdl::{PlannedJob, Workflow};
use solstice_queue::{Delivery, JobQueue, LabelQueues, OneQueue};
use solstice_vmm::{RunnerEndpoint, VmProvider};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;

pub use attempt::LOST_ATTEMPTS;
pub use config::{
    CloneCredentials, EngineConfig, GitCredentials, Listen, runner_connection_limits,
};
pub use error::EngineError;
pub use events::{EVENT_BUFFER_BYTES, EVENT_OVERHEAD, EngineEvent, EventError, Events};
#[cfg(feature = "testing")]
pub use guest::{FakeExecutor, RunnerGuest};

use crate::log::LogIngest;
use crate::store::{Attempt, AttemptId, JobId, JobStatus, NewJob, RunId, RunStatus, StateStore};
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
        /// A ref that brings the commit when the clone does not (a pull
        /// request's `refs/pull/N/head`, whose head may be in a fork).
        #[serde(default)]
        fetch_ref: Option<String>,
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
    /// The repository whose secrets the job gets from the engine's
    /// secret store; `None`: from the engine's configuration.
    #[serde(default)]
    pub secret_scope: Option<String>,
}

/// How a workflow is submitted ([`Engine::submit_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Submission {
    /// Read secrets from the engine's secret store for this repository.
    pub secret_scope: Option<String>,
    /// Run without any secret, whatever the workflow declares (a pull
    /// request from a fork).
    pub no_secrets: bool,
}

impl Submission {
    /// Secrets from the secret store, for `scope` (`owner/name`).
    pub fn with_secret_scope(mut self, scope: impl Into<String>) -> Submission {
        self.secret_scope = Some(scope.into());
        self
    }

    /// No secrets at all.
    pub fn without_secrets(mut self) -> Submission {
        self.no_secrets = true;
        self
    }
}

/// How long an engine may be full before its queue consumer is paused.
const PAUSE_WHEN_FULL: Duration = Duration::from_millis(250);

/// Longest `shutdown` waits for running jobs to end after cancelling them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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
    /// Credentials for the checkout, when the run's repository needs them
    /// and the runner clones it.
    clone_auth: Option<GitCredentials>,
    /// The checkout the engine made on the host (`EngineConfig::checkout_dir`):
    /// the runner copies it instead of cloning.
    host_checkout: std::sync::OnceLock<String>,
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
    /// The lease was lost (not renewed in time, or a write was fenced):
    /// nothing more of the attempt is recorded, and its VM is stopped.
    lease_lost: std::sync::atomic::AtomicBool,
    cancel: Notify,
    /// The runner's report stream is open or still being processed.
    reporting: std::sync::atomic::AtomicBool,
    /// Hash of the report session handed out by `FetchJob`.
    session_hash: Mutex<Option<String>>,
    /// A report stream was accepted: there is one per attempt.
    report_opened: std::sync::atomic::AtomicBool,
}

impl LiveAttempt {
    /// Whether this host still holds the attempt's lease (as far as it
    /// knows: the store is the judge, see [`crate::store::Guard`]).
    fn holds_lease(&self) -> bool {
        !self.lease_lost.load(std::sync::atomic::Ordering::SeqCst)
            && self.lease_until.load(std::sync::atomic::Ordering::SeqCst) >= now_ms()
    }

    /// The lease is lost: the attempt stops (once) and records nothing more.
    fn lose_lease(&self, why: &str) {
        if !self
            .lease_lost
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::warn!(attempt = %self.attempt.id, "lost the lease ({why}); stopping the attempt");
            self.lease_until
                .store(0, std::sync::atomic::Ordering::SeqCst);
            self.cancel.notify_one();
        }
    }
}

struct Inner {
    config: EngineConfig,
    store: Arc<dyn StateStore>,
    queues: Arc<dyn LabelQueues<JobMessage>>,
    provider: Arc<dyn VmProvider>,
    endpoint: RunnerEndpoint,
    live: Mutex<HashMap<AttemptId, Arc<LiveAttempt>>>,
    /// VMs this engine is starting, running or destroying: the names it
    /// asked for and, once provisioned, the providers' ids. The reaper never
    /// destroys one of these, whatever the store says or cannot say (a VM
    /// whose owner mark is not written yet, a store away while its writes
    /// are retried).
    own_vms: Mutex<HashSet<String>>,
    /// Provisions in flight: a VM without a readable owner may be one of
    /// them, under an id the provider has not returned yet.
    provisioning: std::sync::atomic::AtomicUsize,
    cancelled_runs: Mutex<HashSet<RunId>>,
    events: events::EventBus,
    /// Long-lived tasks (writer, endpoint, scheduler, consumer, recovery);
    /// they stop when `stopping` or `killed` is cancelled.
    services: TaskTracker,
    /// Cancelled by `shutdown`, once the job tasks have ended.
    stopping: CancellationToken,
    /// Cancelled by `kill`: every task stops dead, as in a crash.
    killed: CancellationToken,
    /// Job tasks (each holds one of `capacity` slots while it runs).
    jobs: TaskTracker,
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
    /// a dead peer) left, and starts consuming the queue: one queue for
    /// every label ([`Engine::start_with_queues`] for a queue per label).
    pub async fn start(
        config: EngineConfig,
        store: Arc<dyn StateStore>,
        queue: Arc<dyn JobQueue<JobMessage>>,
        provider: Arc<dyn VmProvider>,
    ) -> Result<Engine, EngineError> {
        Engine::start_with_queues(config, store, Arc::new(OneQueue::new(queue)), provider).await
    }

    /// [`Engine::start`] with the queue of each `runs_on` label from
    /// `queues`: the engine publishes every job to its label's queue and
    /// consumes the queues of [`EngineConfig::labels`] only.
    pub async fn start_with_queues(
        config: EngineConfig,
        store: Arc<dyn StateStore>,
        queues: Arc<dyn LabelQueues<JobMessage>>,
        provider: Arc<dyn VmProvider>,
    ) -> Result<Engine, EngineError> {
        let (listener, endpoint) = config.listen.bind().await.map_err(EngineError::Listen)?;
        // Checkouts a crashed engine left behind: none of their attempts
        // runs here any more (the directory is this engine's alone).
        if let Some(dir) = config.checkout_dir.clone() {
            let _ = tokio::task::spawn_blocking(move || {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            })
            .await;
        }
        let (recorder, writer, mut fenced) = Recorder::start(store.clone());
        let events = events::EventBus::new(config.event_buffer_bytes);
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                store,
                queues,
                provider,
                endpoint,
                live: Mutex::new(HashMap::new()),
                own_vms: Mutex::new(HashSet::new()),
                provisioning: std::sync::atomic::AtomicUsize::new(0),
                cancelled_runs: Mutex::new(HashSet::new()),
                events,
                services: TaskTracker::new(),
                stopping: CancellationToken::new(),
                killed: CancellationToken::new(),
                jobs: TaskTracker::new(),
                recorder,
                run_finished: Notify::new(),
                indexes: tokio::sync::Mutex::new(HashMap::new()),
                ended: Mutex::new(HashMap::new()),
                to_schedule: Mutex::new(HashSet::new()),
                schedule_wake: Notify::new(),
                idle_since_reconcile: std::sync::atomic::AtomicBool::new(true),
            }),
        };
        // The writer outlives the job tasks (they record through it) and
        // stops with the other services; dropping its handle aborts it.
        let writer = AbortOnDropHandle::new(writer);
        engine.spawn(async move {
            let _ = writer.await;
        });
        // A write the store refused because its attempt's lease is lost
        // (this host was paused or cut off past it): the attempt stops.
        let fence = engine.clone();
        engine.spawn(async move {
            while let Some(attempt) = fenced.recv().await {
                let live = lock(&fence.inner.live).get(&attempt).cloned();
                if let Some(live) = live {
                    live.lose_lease(
                        "a write was refused: the attempt's lease is no longer this host's",
                    );
                }
            }
        });
        let scheduler = engine.clone();
        engine.spawn(async move { scheduler.scheduler().await });
        let server = service::serve(engine.clone(), listener);
        engine.spawn(server);
        engine.recover().await?;
        // Whatever the store says is queued gets a message: an in-process
        // queue starts empty, and a crash between marking a job queued and
        // publishing it leaves the job without one. (A duplicate is
        // harmless: claiming is a compare-and-set.) A broker that is away
        // at start is waited for, as the consumer waits for it: a host
        // started before its broker, or during the broker's restart, runs
        // once the broker is back, without a supervisor's restart.
        let mut stale = match engine.reconcile_queue(None).await {
            Ok(stale) => stale,
            Err(EngineError::Queue(e)) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "the job queue is unreachable; publishing the queued jobs once it is back");
                let publisher = engine.clone();
                engine.spawn(async move { publisher.publish_queued_when_reachable().await });
                HashSet::new()
            }
            Err(e) => return Err(e),
        };
        let consumer = engine.clone();
        engine.spawn(async move { consumer.consume().await });
        let keeper = engine.clone();
        engine.spawn(async move {
            // Expired leases are looked for every sixth of the lease (a
            // dead host's jobs start again at most that long after its
            // lease ran out); the rest (VMs to reap, messages to publish
            // again, indexes) every half lease.
            let every = keeper.inner.config.lease / 6;
            let mut tick = 0u32;
            loop {
                tokio::time::sleep(every).await;
                tick = tick.wrapping_add(1);
                if let Err(e) = keeper.recover_leases().await {
                    tracing::warn!(error = %crate::util::error_chain(&e), "recovery pass failed");
                }
                if !tick.is_multiple_of(3) {
                    continue;
                }
                if let Err(e) = keeper.reap().await {
                    tracing::warn!(error = %crate::util::error_chain(&e), "reaping pass failed");
                }
                match keeper.reconcile_queue(Some(&stale)).await {
                    Ok(now) => stale = now,
                    Err(e) => tracing::warn!(error = %crate::util::error_chain(&e), "queue reconciliation failed"),
                }
                keeper.refresh_indexes().await;
            }
        });
        tracing::info!(holder = %engine.inner.config.holder, endpoint = %engine.inner.endpoint, "engine started");
        Ok(engine)
    }

    /// Publishes what the store says is queued, trying again (every 100 ms
    /// at first, then every 5 s) until the queue takes it.
    async fn publish_queued_when_reachable(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::time::sleep(backoff).await;
            match self.reconcile_queue(None).await {
                Ok(_) => {
                    tracing::info!("the job queue is reachable; the queued jobs are published");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %crate::util::error_chain(&e), "the job queue is still unreachable");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Starts a long-lived task that ends with the engine.
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let stopping = self.inner.stopping.clone();
        let killed = self.inner.killed.clone();
        self.inner.services.spawn(async move {
            tokio::select! {
                () = f => {}
                () = stopping.cancelled() => {}
                () = killed.cancelled() => {}
            }
        });
    }

    /// Where runners connect.
    pub fn endpoint(&self) -> &RunnerEndpoint {
        &self.inner.endpoint
    }

    /// Attempts this engine is running now.
    pub fn running(&self) -> usize {
        lock(&self.inner.live).len()
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// Live events from now on. A subscriber that falls behind by more
    /// than [`EngineConfig::event_buffer_bytes`] gets [`EventError::Lagged`] with the
    /// number of events it missed, then reads on.
    pub fn subscribe(&self) -> Events {
        self.inner.events.subscribe()
    }

    /// `change` of `attempt`, written as its lease holder: the store
    /// refuses it once the lease is lost ([`crate::store::Guard::Holder`]).
    fn as_holder(&self, attempt: AttemptId, change: crate::store::Change) -> crate::store::Change {
        change.guarded(
            attempt,
            crate::store::Guard::Holder {
                holder: self.inner.config.holder.clone(),
                now: now_ms(),
            },
        )
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
        self.submit_with(workflow, source, checkout, &Submission::default())
            .await
    }

    /// [`Engine::submit`], with the secrets chosen by `how`.
    pub async fn submit_with(
        &self,
        workflow: &Workflow,
        source: &str,
        checkout: Checkout,
        how: &Submission,
    ) -> Result<RunId, EngineError> {
        let plan = workflow.plan()?;
        let names_of = |job: &solstice_kdl::Job| -> Vec<String> {
            if how.no_secrets {
                return Vec::new();
            }
            let mut secrets: Vec<String> = workflow.secrets.clone();
            for s in &job.secrets {
                if !secrets.contains(s) {
                    secrets.push(s.clone());
                }
            }
            secrets
        };
        let scoped = match (&how.secret_scope, &self.inner.config.secret_store) {
            (Some(scope), Some(store)) if !how.no_secrets => {
                let mut all: Vec<String> = Vec::new();
                for planned in &plan.jobs {
                    for n in names_of(&planned.job) {
                        if !all.contains(&n) {
                            all.push(n);
                        }
                    }
                }
                let values = if all.is_empty() {
                    BTreeMap::new()
                } else {
                    store
                        .get(scope, &all)
                        .await
                        .map_err(EngineError::SecretStore)?
                };
                Some(values)
            }
            _ => None,
        };
        let secret_scope = scoped.as_ref().and(how.secret_scope.clone());
        let mut new_jobs = Vec::with_capacity(plan.jobs.len());
        for planned in plan.jobs {
            let secrets = names_of(&planned.job);
            for name in &secrets {
                let value = match &scoped {
                    Some(values) => values.get(name),
                    None => self.inner.config.secrets.get(name),
                };
                match value {
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
                secret_scope: secret_scope.clone(),
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
        // Jobs another engine runs are marked cancelled in the store; that
        // engine reads it when it next renews the lease, and stops them.
        for job in self.inner.store.jobs(run).await? {
            if job.status == JobStatus::Running && !live.iter().any(|l| l.attempt.job_id == job.id)
            {
                self.inner
                    .store
                    .transition_job(
                        job.id,
                        &[JobStatus::Running],
                        JobStatus::Cancelled,
                        Some("cancelled"),
                    )
                    .await?;
            }
        }
        for l in live {
            l.cancel.notify_one();
        }
        self.schedule(run).await
    }

    /// Puts a job the store holds as queued on its label's queue: after
    /// [`crate::store::IntegrationStore::retry_job`] (a retry from the
    /// API), say. A job already on the queue is not run twice: claiming is
    /// a compare-and-set.
    pub async fn publish_queued(&self, job: &crate::store::Job) -> Result<(), EngineError> {
        // Said first: once published, another engine may start it.
        self.emit(EngineEvent::JobQueued {
            run: job.run_id,
            key: job.key.clone(),
        });
        self.publish(job.run_id, job.id, &job.label, Lane::of(job))
            .await
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
        self.inner.killed.cancel();
        lock(&self.inner.live).clear();
        lock(&self.inner.own_vms).clear();
    }

    /// Runs a reaper pass now (the `testing` feature): destroys the VMs no
    /// attempt owns, as the periodic pass does.
    #[cfg(feature = "testing")]
    pub async fn reap_now(&self) -> Result<(), EngineError> {
        self.reap().await
    }

    /// Cancels every run this engine is working on and waits until their
    /// VMs are destroyed (Ctrl-C in `cidev run`).
    pub async fn shutdown(&self) {
        let runs: HashSet<RunId> = lock(&self.inner.live).values().map(|l| l.run).collect();
        for run in runs {
            let _ = self.cancel_run(run).await;
        }
        // Wait for every job task to end (they record their outcome through
        // the writer task, which must outlive them; a VM that will not die
        // does not hold shutdown for ever), then schedule what they left to
        // schedule, then stop the services.
        self.inner.jobs.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                jobs = self.inner.jobs.len(),
                "jobs still running after the shutdown grace period"
            );
        }
        self.schedule_pending().await;
        self.inner.stopping.cancel();
        self.inner.services.close();
        self.inner.services.wait().await;
    }

    /// Puts a job on its label's queue, or on the label's retry lane.
    async fn publish(
        &self,
        run: RunId,
        job: JobId,
        label: &str,
        lane: Lane,
    ) -> Result<(), EngineError> {
        self.lane(label, lane)
            .await?
            .publish(&JobMessage {
                run_id: run,
                job_id: job,
            })
            .await?;
        Ok(())
    }

    /// The queue of `label` a job goes to in `lane`.
    async fn lane(
        &self,
        label: &str,
        lane: Lane,
    ) -> Result<Arc<dyn JobQueue<JobMessage>>, EngineError> {
        Ok(match lane {
            Lane::Fresh => self.inner.queues.queue(label).await?,
            Lane::Retry => self.inner.queues.retries(label).await?,
        })
    }

    /// Puts jobs on their labels' queues (or retry lanes), a batch per
    /// queue (a broker pipelines a batch's confirms).
    async fn publish_all(&self, jobs: &[(RunId, JobId, &str, Lane)]) -> Result<(), EngineError> {
        let mut by_queue: BTreeMap<(&str, Lane), Vec<JobMessage>> = BTreeMap::new();
        for &(run, job, label, lane) in jobs {
            by_queue.entry((label, lane)).or_default().push(JobMessage {
                run_id: run,
                job_id: job,
            });
        }
        for ((label, lane), messages) in by_queue {
            self.lane(label, lane)
                .await?
                .publish_many(&messages)
                .await?;
        }
        Ok(())
    }

    /// Whether this engine takes jobs of `label`.
    pub(crate) fn serves(&self, label: &str) -> bool {
        match &self.inner.config.labels {
            None => true,
            Some(labels) => labels.iter().any(|l| l == label),
        }
    }

    /// One consumer of the queues this engine serves: the queue's own when
    /// they are one, else [`Merged`] over a consumer per queue.
    async fn consumer(
        &self,
        prefetch: usize,
    ) -> Result<Option<Box<dyn solstice_queue::Consumer<JobMessage>>>, EngineError> {
        let labels = match &self.inner.config.labels {
            None => vec!["default".to_string()],
            Some(labels) => labels.clone(),
        };
        // Each label's queue, and its retry lane where it has its own.
        let mut fresh: Vec<Arc<dyn JobQueue<JobMessage>>> = Vec::new();
        let mut retries: Vec<Arc<dyn JobQueue<JobMessage>>> = Vec::new();
        for label in &labels {
            let q = self.inner.queues.queue(label).await?;
            if !fresh.iter().any(|known| Arc::ptr_eq(known, &q)) {
                fresh.push(q);
            }
        }
        for label in &labels {
            let q = self.inner.queues.retries(label).await?;
            let known = |k: &Arc<dyn JobQueue<JobMessage>>| Arc::ptr_eq(k, &q);
            if !fresh.iter().any(known) && !retries.iter().any(known) {
                retries.push(q);
            }
        }
        let fresh = match Self::merged(fresh, prefetch).await? {
            Some(c) => c,
            None => return Ok(None),
        };
        Ok(Some(match Self::merged(retries, prefetch).await? {
            Some(retries) => Box::new(Lanes { retries, fresh }),
            None => fresh,
        }))
    }

    /// One consumer of `queues`: the queue's own when there is one, else
    /// [`Merged`] over a consumer per queue; `None` for none.
    async fn merged(
        mut queues: Vec<Arc<dyn JobQueue<JobMessage>>>,
        prefetch: usize,
    ) -> Result<Option<Box<dyn solstice_queue::Consumer<JobMessage>>>, EngineError> {
        if queues.len() <= 1 {
            return Ok(match queues.pop() {
                Some(q) => Some(q.consume(prefetch).await?),
                None => None,
            });
        }
        let mut consumers = Vec::with_capacity(queues.len());
        for q in queues {
            consumers.push(q.consume(prefetch).await?);
        }
        Ok(Some(Box::new(Merged {
            consumers,
            first: 0,
        })))
    }

    async fn consume(&self) {
        let capacity = self.inner.config.capacity.max(1);
        let slots = Arc::new(Semaphore::new(capacity));
        // A broker that is away now is waited for (the consumers reconnect
        // by themselves once they exist).
        let mut backoff = Duration::from_millis(100);
        let mut consumer = loop {
            match self.consumer(capacity).await {
                Ok(Some(c)) => break c,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %crate::util::error_chain(&e), "cannot consume the job queue yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        loop {
            // Full for a while (not just between one job's end and the
            // next's start): the queue stops pushing messages this engine
            // could not start, so that another host can take them.
            let slot = match tokio::time::timeout(PAUSE_WHEN_FULL, slots.clone().acquire_owned())
                .await
            {
                Ok(Ok(slot)) => slot,
                Ok(Err(_)) => return,
                Err(_) => {
                    if let Err(e) = consumer.pause().await {
                        tracing::warn!(error = %crate::util::error_chain(&e), "cannot pause the job queue's consumer");
                    }
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    slot
                }
            };
            // Ask the queue for no more ahead than there are free slots.
            consumer.set_room(slots.available_permits() + 1);
            let delivery = match consumer.next().await {
                Ok(d) => d,
                Err(e) => {
                    tracing::info!(error = %crate::util::error_chain(&e), "job queue closed");
                    return;
                }
            };
            let engine = self.clone();
            let msg = delivery.message().clone();
            let span = tracing::info_span!("job", run = %msg.run_id, job = %msg.job_id);
            let killed = self.inner.killed.clone();
            let busy = self.inner.jobs.len() + 1;
            if busy >= capacity {
                self.inner
                    .idle_since_reconcile
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
            self.inner.jobs.spawn(
                async move {
                    tokio::select! {
                        () = engine.handle(delivery) => {}
                        () = killed.cancelled() => {}
                    }
                    drop(slot);
                }
                .instrument(span),
            );
        }
    }

    async fn handle(&self, delivery: Delivery<JobMessage>) {
        let msg = delivery.message().clone();
        // The delivery is acked once the claim has committed (`run_job`):
        // from then on the store's lease holds the job's place, not the
        // broker, whose delivery timeout would cut a long job short.
        let mut delivery = Some(delivery);
        let result = self.run_job(&msg, &mut delivery).await;
        match (result, delivery) {
            (Ok(()), Some(d)) => {
                let _ = d.ack().await;
            }
            (Err(e), Some(d)) => {
                tracing::error!(error = %crate::util::error_chain(&e), "job handling failed; the message goes back to the queue");
                let _ = d.nack(true).await;
            }
            (Err(e), None) => {
                tracing::error!(error = %crate::util::error_chain(&e), "job handling failed after its claim; the lease recovers the job");
            }
            (Ok(()), None) => {}
        }
        self.schedule_soon(msg.run_id);
    }
}

/// Where a job's message goes: its label's queue, or the label's retry
/// lane, which every engine takes from first
/// ([`solstice_queue::LabelQueues::retries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lane {
    /// Never tried yet.
    Fresh,
    /// Tried before: an attempt lost with its host, a retry.
    Retry,
}

impl Lane {
    /// The lane of a queued job: a retry once it has made an attempt.
    pub(crate) fn of(job: &crate::store::Job) -> Lane {
        if job.attempts > 0 {
            Lane::Retry
        } else {
            Lane::Fresh
        }
    }
}

/// The retry lanes before the labels' queues: asked for a message, it
/// takes one of `retries` whenever one is there, and one of `fresh` only
/// when none is (a job lost with its host does not wait behind a backlog
/// of new work).
struct Lanes {
    retries: Box<dyn solstice_queue::Consumer<JobMessage>>,
    fresh: Box<dyn solstice_queue::Consumer<JobMessage>>,
}

#[async_trait::async_trait]
impl solstice_queue::Consumer<JobMessage> for Lanes {
    async fn next(&mut self) -> Result<Delivery<JobMessage>, solstice_queue::QueueError> {
        // What the retry lane has now goes first, even when fresh work
        // came ahead (a broker pushes it; a pulled lane must be asked).
        if let Some(d) = self.retries.try_next().await? {
            return Ok(d);
        }
        // Then whichever comes first, the retry lane when both are there.
        // Dropping the wait that lost is safe (a consumer keeps what it
        // was getting).
        tokio::select! {
            biased;
            d = self.retries.next() => d,
            d = self.fresh.next() => d,
        }
    }

    async fn pause(&mut self) -> Result<(), solstice_queue::QueueError> {
        self.retries.pause().await?;
        self.fresh.pause().await
    }

    fn set_room(&mut self, room: usize) {
        self.retries.set_room(room);
        self.fresh.set_room(room);
    }

    async fn try_next(
        &mut self,
    ) -> Result<Option<Delivery<JobMessage>>, solstice_queue::QueueError> {
        if let Some(d) = self.retries.try_next().await? {
            return Ok(Some(d));
        }
        self.fresh.try_next().await
    }
}

/// One consumer of several queues (one per label). Asked for a message,
/// it waits on all of them and takes the first that comes; a message
/// another one got meanwhile is taken by a later call, or handed back to
/// its queue when the engine pauses (full). Which queue is looked at first
/// turns, so a busy label does not starve another.
struct Merged {
    consumers: Vec<Box<dyn solstice_queue::Consumer<JobMessage>>>,
    first: usize,
}

#[async_trait::async_trait]
impl solstice_queue::Consumer<JobMessage> for Merged {
    async fn next(&mut self) -> Result<Delivery<JobMessage>, solstice_queue::QueueError> {
        use std::task::Poll;
        let n = self.consumers.len();
        let first = self.first;
        self.first = (first + 1) % n.max(1);
        // Dropping the waits that lost is safe: a consumer keeps what it
        // was getting for its next call (`Consumer::next`'s contract in
        // the conformance suite: a `select!` loses nothing).
        let mut waits: Vec<_> = self.consumers.iter_mut().map(|c| c.next()).collect();
        std::future::poll_fn(|cx| {
            for k in 0..n {
                if let Poll::Ready(r) = waits[(first + k) % n].as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
            }
            Poll::Pending
        })
        .await
    }

    async fn pause(&mut self) -> Result<(), solstice_queue::QueueError> {
        for c in &mut self.consumers {
            c.pause().await?;
        }
        Ok(())
    }

    fn set_room(&mut self, room: usize) {
        for c in &mut self.consumers {
            c.set_room(room);
        }
    }

    async fn try_next(
        &mut self,
    ) -> Result<Option<Delivery<JobMessage>>, solstice_queue::QueueError> {
        let n = self.consumers.len();
        for k in 0..n {
            let i = (self.first + k) % n;
            if let Some(d) = self.consumers[i].try_next().await? {
                self.first = (i + 1) % n;
                return Ok(Some(d));
            }
        }
        Ok(None)
    }
}
