//! The engine end to end with the mock provider: the real runner code runs
//! in process (with a fake step executor) and talks gRPC to the engine,
//! which uses a memory queue and a SQLite store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use solstice_core::engine::{
    Checkout, Engine, EngineConfig, EngineError, FakeExecutor, JobMessage, Listen, RunnerGuest,
};
use solstice_core::protocol::pb;
use solstice_core::store::{
    AttemptStatus, JobStatus, RunId, RunStatus, SqlStore, StateStore, StepStatus,
};
use solstice_queue::{MemoryQueue, QueueOptions};
use solstice_vmm::{Guest, GuestContext, MockScript, MockVmProvider, RunnerEndpoint};

struct Setup {
    engine: Engine,
    store: Arc<dyn StateStore>,
    provider: MockVmProvider,
    _dir: tempfile::TempDir,
}

fn config(secrets: &[(&str, &str)]) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.capacity = 4;
    config.lease = Duration::from_secs(10);
    config.poll = Duration::from_millis(20);
    config.secrets = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config
}

/// Submits `wf` and waits until step `index` of one of its jobs has started.
async fn submit_until_step_starts(
    engine: &Engine,
    wf: &solstice_kdl::Workflow,
    index: u32,
) -> RunId {
    let mut events = engine.subscribe();
    let run = engine
        .submit(wf, "{}", Checkout::None)
        .await
        .expect("submit");
    loop {
        if let solstice_core::engine::EngineEvent::StepStarted { index: i, .. } =
            events.recv().await.expect("event")
            && i == index
        {
            return run;
        }
    }
}

async fn setup_with(provider: MockVmProvider, config: EngineConfig) -> Setup {
    setup_on(Arc::new(provider.clone()), provider, config).await
}

/// An engine on `engine_provider`, which wraps `provider` (kept in the
/// `Setup` for the tests that script it).
async fn setup_on(
    engine_provider: Arc<dyn solstice_vmm::VmProvider>,
    provider: MockVmProvider,
    config: EngineConfig,
) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn StateStore> = Arc::new(
        SqlStore::connect(&format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
        .await
        .expect("store"),
    );
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    let engine = Engine::start(config, store.clone(), queue, engine_provider)
        .await
        .expect("engine");
    Setup {
        engine,
        store,
        provider,
        _dir: dir,
    }
}

/// A client of a runner endpoint (`http://...`).
async fn client(endpoint: String) -> pb::runner_client::RunnerClient<tonic::transport::Channel> {
    pb::runner_client::RunnerClient::connect(endpoint)
        .await
        .expect("connect")
}

/// A request as a runner (or an impostor) sends it: with the job token and,
/// when given, a report session.
fn signed<T>(message: T, token: &str, session: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        solstice_core::protocol::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("ascii"),
    );
    if let Some(session) = session {
        req.metadata_mut().insert(
            solstice_core::protocol::SESSION,
            session.parse().expect("ascii"),
        );
    }
    req
}

/// A second engine on the first one's store, as after a crash: a new name
/// and a new (empty) in-memory queue.
async fn restart(first: &Setup, provider: &MockVmProvider, config: EngineConfig) -> Engine {
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    Engine::start(
        {
            let mut value = config;
            value.holder = "second".into();
            value
        },
        first.store.clone(),
        queue,
        Arc::new(provider.clone()),
    )
    .await
    .expect("restart")
}

async fn setup(secrets: &[(&str, &str)]) -> Setup {
    setup_with(
        MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor)))),
        config(secrets),
    )
    .await
}

async fn run(s: &Setup, workflow: &str) -> (RunId, RunStatus) {
    let wf = solstice_kdl::parse(workflow).expect("valid workflow");
    let run = s
        .engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    let status = tokio::time::timeout(Duration::from_secs(60), s.engine.wait(run))
        .await
        .expect("run ends")
        .expect("wait");
    (run, status)
}

async fn job_status(s: &Setup, run: RunId, key: &str) -> (JobStatus, Option<String>) {
    let jobs = s.store.jobs(run).await.expect("jobs");
    let j = jobs
        .iter()
        .find(|j| j.key == key)
        .unwrap_or_else(|| panic!("no job {key}"));
    (j.status, j.reason.clone())
}

async fn log_text(s: &Setup, run: RunId, key: &str, attempt: usize) -> String {
    let jobs = s.store.jobs(run).await.expect("jobs");
    let j = jobs.iter().find(|j| j.key == key).expect("job");
    let attempts = s.store.attempts(j.id).await.expect("attempts");
    let chunks = s.store.logs(attempts[attempt].id).await.expect("logs");
    String::from_utf8_lossy(
        &chunks
            .iter()
            .flat_map(|c| c.data.clone())
            .collect::<Vec<u8>>(),
    )
    .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_order_failure_skips_dependents_and_continue_on_error() {
    let s = setup(&[]).await;
    let (run, status) = run(
        &s,
        r#"workflow {
        job id="a" { step run="echo a"; step run="exit 3" continue_on_error=#true }
        job id="b" { needs "a"; step run="false"; step run="echo never" }
        job id="c" { needs "b"; step run="echo c" }
        job id="d" { step run="echo d" }
    }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(
        job_status(&s, run, "a").await.0,
        JobStatus::Succeeded,
        "continue_on_error"
    );
    assert_eq!(
        job_status(&s, run, "b").await,
        (
            JobStatus::Failed,
            Some("step `false` failed (exit 1)".into())
        )
    );
    assert_eq!(
        job_status(&s, run, "c").await,
        (
            JobStatus::Skipped,
            Some("needs `b`, which did not succeed".into())
        )
    );
    assert_eq!(job_status(&s, run, "d").await.0, JobStatus::Succeeded);
    // b's second step never ran; its first failed with exit 1.
    let jobs = s.store.jobs(run).await.expect("jobs");
    let b = jobs.iter().find(|j| j.key == "b").expect("b");
    let steps = s
        .store
        .steps(s.store.attempts(b.id).await.expect("attempts")[0].id)
        .await
        .expect("steps");
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].status, steps[0].exit_code),
        (StepStatus::Failed, Some(1))
    );
    // a ran before b: b's attempt started after a's ended.
    let a = jobs.iter().find(|j| j.key == "a").expect("a");
    let a_end = s.store.attempts(a.id).await.expect("attempts")[0]
        .finished_at
        .expect("finished");
    let b_start = s.store.attempts(b.id).await.expect("attempts")[0].started_at;
    assert!(b_start >= a_end);
    assert_eq!(s.provider.live(), 0, "every VM destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_fans_out_and_env_has_precedence() {
    let s = setup(&[("TOKEN", "s3cr3t-value")]).await;
    let (run, status) = run(
        &s,
        r#"workflow {
        env LEVEL="workflow" ONLY_WF="wf"
        secret "TOKEN"
        job id="t" {
            matrix { os "a" "b"; rust "stable" "beta" }
            env LEVEL="job"
            step run="printenv LEVEL"
            step run="printenv ONLY_WF"
            step run="printenv MATRIX_OS" { env LEVEL="step"; }
            step run="printenv LEVEL" { env LEVEL="step"; }
            step run="printenv TOKEN"
            step run="printenv SOLSTICE_ATTEMPT"
        }
    }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(s.store.jobs(run).await.expect("jobs").len(), 4);
    let log = log_text(&s, run, "t (os=b, rust=beta)", 0).await;
    let values: Vec<&str> = log.lines().skip(1).step_by(2).collect();
    assert_eq!(
        values,
        vec!["job", "wf", "b", "step", "***", "1"],
        "log was {log:?}"
    );
    assert!(!log.contains("s3cr3t-value"));
}

/// A VM that does not boot is the system's failure: the job runs again
/// without spending its attempts, up to `LOST_ATTEMPTS` (plus `retry`)
/// losses, and then fails saying how often it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_failures_are_retried_without_spending_the_jobs_attempts() {
    let s = setup(&[]).await;
    s.provider.script_next(MockScript::failing_boot());
    let (run1, status) = run(&s, r#"workflow { job id="a" { step run="echo"; } }"#).await;
    assert_eq!(status, RunStatus::Succeeded);
    let job = s.store.jobs(run1).await.expect("jobs").remove(0);
    let attempts = s.store.attempts(job.id).await.expect("attempts");
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AttemptStatus::Lost, AttemptStatus::Succeeded]
    );
    assert!(
        log_text(&s, run1, "a", 0)
            .await
            .contains("VM failed to boot"),
        "attempt 1's log says why"
    );

    // A VM that never boots: lost LOST_ATTEMPTS times, then the job fails.
    let lost = solstice_core::engine::LOST_ATTEMPTS;
    for _ in 0..lost {
        s.provider.script_next(MockScript::failing_boot());
    }
    let (run2, status) = run(&s, r#"workflow { job id="a" { step run="echo"; } }"#).await;
    assert_eq!(status, RunStatus::Failed);
    let (st, reason) = job_status(&s, run2, "a").await;
    assert_eq!(st, JobStatus::Failed);
    assert!(
        reason.as_deref().is_some_and(
            |r| r.contains("VM failed to boot") && r.contains(&format!("lost {lost} times"))
        ),
        "{reason:?}"
    );
    let job = s.store.jobs(run2).await.expect("jobs").remove(0);
    assert_eq!(
        s.store.attempts(job.id).await.expect("attempts").len(),
        lost as usize
    );

    // `retry` allows that many more losses.
    for _ in 0..lost {
        s.provider.script_next(MockScript::failing_boot());
    }
    let (run3, status) = run(
        &s,
        r#"workflow { job id="a" retry=1 { step run="echo second"; } }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Succeeded);
    let job = s.store.jobs(run3).await.expect("jobs").remove(0);
    let attempts = s.store.attempts(job.id).await.expect("attempts");
    assert_eq!(attempts.len(), lost as usize + 1);
    assert_eq!(
        attempts.last().map(|a| a.status),
        Some(AttemptStatus::Succeeded)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_crash_mid_job_is_retried() {
    let s = setup(&[]).await;
    s.provider.script_next(MockScript::crash_after(1));
    // No `retry`: a lost runner is the system's failure.
    let (run, status) = run(
        &s,
        r#"workflow { job id="a" { step run="echo one"; step run="echo two"; } }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Succeeded);
    let job = s.store.jobs(run).await.expect("jobs").remove(0);
    let attempts = s.store.attempts(job.id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].status, AttemptStatus::Lost);
    assert!(
        attempts[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("runner")),
        "{:?}",
        attempts[0].reason
    );
    assert!(
        log_text(&s, run, "a", 0).await.contains("echo one"),
        "attempt 1's log is kept"
    );
    assert!(log_text(&s, run, "a", 1).await.contains("echo two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_and_cancellation_destroy_the_vm() {
    let s = setup(&[]).await;
    let (run, status) = run(
        &s,
        r#"workflow { job id="slow" timeout="1s" { step run="sleep 30"; } }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(
        job_status(&s, run, "slow").await,
        (JobStatus::Failed, Some("timed out after 1s".into()))
    );
    assert_eq!(s.provider.live(), 0);

    let wf = solstice_kdl::parse(r#"workflow { job id="long" { step run="sleep 30"; }; job id="after" { needs "long"; step run="echo"; }; }"#).expect("valid");
    let run = submit_until_step_starts(&s.engine, &wf, 0).await;
    s.engine.cancel_run(run).await.expect("cancel");
    let status = tokio::time::timeout(Duration::from_secs(30), s.engine.wait(run))
        .await
        .expect("ends")
        .expect("wait");
    assert_eq!(status, RunStatus::Cancelled);
    assert_eq!(job_status(&s, run, "long").await.0, JobStatus::Cancelled);
    assert_eq!(job_status(&s, run, "after").await.0, JobStatus::Cancelled);
    assert_eq!(s.provider.live(), 0, "the VM is destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeout_is_reported() {
    let s = setup(&[]).await;
    let (run, status) = run(
        &s,
        r#"workflow { job id="a" { step run="sleep 30" timeout="1s"; step run="echo"; } }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Failed);
    let job = s.store.jobs(run).await.expect("jobs").remove(0);
    let steps = s
        .store
        .steps(s.store.attempts(job.id).await.expect("attempts")[0].id)
        .await
        .expect("steps");
    assert_eq!(steps[0].status, StepStatus::TimedOut);
    assert_eq!(job.reason.as_deref(), Some("step `sleep 30` timed out"));
}

/// The engine dies mid-job (no cleanup at all); a new engine on the same
/// SQLite state runs the job again as attempt 2, keeps attempt 1's log, and
/// reaps attempt 1's VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_mid_job_and_restarted() {
    let provider = MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor))));
    let short_lease = {
        let mut value = config(&[]);
        value.lease = Duration::from_millis(600);
        value
    };
    let first = setup_with(provider.clone(), short_lease.clone()).await;
    let wf = solstice_kdl::parse(r#"workflow { job id="a" { step run="echo before"; step run="sleep 2"; step run="echo after"; } }"#).expect("valid");
    let run = submit_until_step_starts(&first.engine, &wf, 1).await;
    first.engine.kill();
    assert_eq!(provider.live(), 1, "the VM outlives the engine");
    // A new engine on the same state, with a new (empty) in-memory queue.
    let second = restart(&first, &provider, short_lease).await;
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait(run))
        .await
        .expect("ends")
        .expect("wait");
    assert_eq!(status, RunStatus::Succeeded);
    let job = first.store.jobs(run).await.expect("jobs").remove(0);
    let attempts = first.store.attempts(job.id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].status, AttemptStatus::Lost);
    assert!(
        attempts[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("lease expired"))
    );
    assert!(
        log_text(&first, run, "a", 0).await.contains("echo before"),
        "attempt 1's log is kept"
    );
    assert!(log_text(&first, run, "a", 1).await.contains("echo after"));
    for _ in 0..100 {
        if provider.live() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(provider.live(), 0, "attempt 1's VM was reaped");
}

/// A guest that misuses its token: fetches twice, then gives up.
struct Sneaky {
    results: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Guest for Sneaky {
    async fn run(&self, context: GuestContext) -> i32 {
        let RunnerEndpoint::Tcp(addr) = &context.spec.endpoint else {
            return 2;
        };
        let mut client = client(format!("http://{addr}")).await;
        for _ in 0..2 {
            let req = signed(pb::FetchJobRequest::default(), &context.spec.token, None);
            let outcome = match client.fetch_job(req).await {
                Ok(_) => "ok".to_string(),
                Err(status) => format!("{:?}", status.code()),
            };
            self.results.lock().expect("lock").push(outcome);
        }
        self.results
            .lock()
            .expect("lock")
            .push(context.spec.token.clone());
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_single_use_and_forged_or_stale_ones_are_refused() {
    let results = Arc::new(Mutex::new(Vec::new()));
    let provider = MockVmProvider::new(Arc::new(Sneaky {
        results: results.clone(),
    }));
    let s = setup_with(provider, config(&[])).await;
    let (run, status) = run(&s, r#"workflow { job id="a" { step run="echo"; } }"#).await;
    assert_eq!(status, RunStatus::Failed, "the sneaky guest never reports");
    let seen = results.lock().expect("lock").clone();
    assert_eq!(
        &seen[..2],
        &["ok".to_string(), "PermissionDenied".to_string()]
    );
    let (_, reason) = job_status(&s, run, "a").await;
    assert!(reason.is_some());
    // The finished attempt's token, and a forged one, are refused.
    let RunnerEndpoint::Tcp(addr) = s.engine.endpoint() else {
        panic!("the default endpoint is TCP");
    };
    let mut client = client(format!("http://{addr}")).await;
    for token in [seen[2].clone(), "0".repeat(64), "not even hex".into()] {
        let req = signed(pb::FetchJobRequest::default(), &token, None);
        let err = client.fetch_job(req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    let err = client
        .fetch_job(tonic::Request::new(pb::FetchJobRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_secret_without_a_value_is_refused_up_front() {
    let s = setup(&[]).await;
    let wf =
        solstice_kdl::parse(r#"workflow { secret "DEPLOY"; job id="a" { step run="echo"; } }"#)
            .expect("valid");
    let err = s
        .engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("DEPLOY"));
}

/// A provider whose `list` takes a while (as a real one listing zones or
/// processes can), so jobs start while a recovery pass is in progress.
/// The mock provider with a slow `list` or as one that copies shares into
/// its VMs (QEMU does).
struct Tweaked {
    mock: MockVmProvider,
    slow_list: bool,
    copies_share: bool,
}

impl Tweaked {
    fn slow_list(mock: MockVmProvider) -> Tweaked {
        Tweaked {
            mock,
            slow_list: true,
            copies_share: false,
        }
    }

    fn sharing(mock: MockVmProvider) -> Tweaked {
        Tweaked {
            mock,
            slow_list: false,
            copies_share: true,
        }
    }
}

#[async_trait]
impl solstice_vmm::VmProvider for Tweaked {
    fn name(&self) -> &'static str {
        "tweaked"
    }
    fn copies_share(&self, _label: &str) -> bool {
        self.copies_share
    }
    async fn provision(
        &self,
        spec: &solstice_vmm::VmSpec,
    ) -> Result<solstice_vmm::VmHandle, solstice_vmm::VmError> {
        self.mock.provision(spec).await
    }
    async fn state(
        &self,
        id: &solstice_vmm::VmId,
    ) -> Result<solstice_vmm::VmState, solstice_vmm::VmError> {
        self.mock.state(id).await
    }
    async fn destroy(&self, id: &solstice_vmm::VmId) -> Result<(), solstice_vmm::VmError> {
        self.mock.destroy(id).await
    }
    async fn list(&self) -> Result<Vec<solstice_vmm::VmInfo>, solstice_vmm::VmError> {
        if self.slow_list {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.mock.list().await
    }
}

/// Recovery runs while jobs start: it must never reap the VM of a job that
/// was claimed during the pass (found by the 10,000-job benchmark: recovery
/// read the running attempts, then listed VMs, and reaped VMs of jobs claimed
/// in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_never_reaps_vms_of_starting_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn StateStore> = Arc::new(
        SqlStore::connect(&format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
        .await
        .expect("store"),
    );
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    let provider = Tweaked::slow_list(MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(
        FakeExecutor,
    )))));
    // A short lease makes recovery run all through the run.
    let busy = {
        let mut value = config(&[]);
        value.lease = Duration::from_millis(400);
        value.capacity = 8;
        value
    };
    let engine = Engine::start(busy, store.clone(), queue, Arc::new(provider))
        .await
        .expect("engine");
    let jobs: String = (0..60)
        .map(|i| format!("job id=\"j{i}\" {{ step run=\"sleep 0.05\"; }}\n"))
        .collect();
    let wf = solstice_kdl::parse(&format!("workflow {{\n{jobs}}}")).expect("valid");
    let run = engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    let status = tokio::time::timeout(Duration::from_secs(120), engine.wait(run))
        .await
        .expect("ends")
        .expect("wait");
    let failed: Vec<(String, Option<String>)> = store
        .jobs(run)
        .await
        .expect("jobs")
        .into_iter()
        .filter(|j| j.status != JobStatus::Succeeded)
        .map(|j| (j.key, j.reason))
        .collect();
    assert_eq!(status, RunStatus::Succeeded, "{failed:?}");
}

/// A provider whose listing shows every VM with its owner mark not written
/// yet, as a lister that reads a VM's directory while it is being created
/// does (the race that reaped a live job's VM in the fleet's restart test).
struct HalfWrittenOwners(MockVmProvider);

#[async_trait]
impl solstice_vmm::VmProvider for HalfWrittenOwners {
    fn name(&self) -> &'static str {
        "half-written-owners"
    }
    async fn provision(
        &self,
        spec: &solstice_vmm::VmSpec,
    ) -> Result<solstice_vmm::VmHandle, solstice_vmm::VmError> {
        self.0.provision(spec).await
    }
    async fn state(
        &self,
        id: &solstice_vmm::VmId,
    ) -> Result<solstice_vmm::VmState, solstice_vmm::VmError> {
        self.0.state(id).await
    }
    async fn destroy(&self, id: &solstice_vmm::VmId) -> Result<(), solstice_vmm::VmError> {
        self.0.destroy(id).await
    }
    async fn list(&self) -> Result<Vec<solstice_vmm::VmInfo>, solstice_vmm::VmError> {
        Ok(self
            .0
            .list()
            .await?
            .into_iter()
            .map(|vm| solstice_vmm::VmInfo::new(vm.id, String::new(), vm.state))
            .collect())
    }
}

/// The reaper never destroys a VM of an attempt this engine runs, whatever
/// the listing or the store says: here every VM is listed without its owner
/// mark, and a reaper pass runs while the job's step is running. Before the
/// engine counted its own VMs as existing, the pass destroyed the VM and the
/// job was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_spares_the_vms_this_engine_runs_whatever_the_listing_says() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn StateStore> = Arc::new(
        SqlStore::connect(&format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
        .await
        .expect("store"),
    );
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    let mock = MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor))));
    let engine = Engine::start(
        config(&[]),
        store.clone(),
        queue,
        Arc::new(HalfWrittenOwners(mock.clone())),
    )
    .await
    .expect("engine");
    let wf = solstice_kdl::parse(
        r#"workflow { job id="a" { step run="echo before"; step run="sleep 2"; step run="echo after"; } }"#,
    )
    .expect("valid");
    let run = submit_until_step_starts(&engine, &wf, 1).await;
    // The pass, while the step sleeps (deterministic: no waiting for the
    // periodic one).
    engine.reap_now().await.expect("reap");
    let status = tokio::time::timeout(Duration::from_secs(60), engine.wait(run))
        .await
        .expect("ends")
        .expect("wait");
    let job = store.jobs(run).await.expect("jobs").remove(0);
    let attempts = store.attempts(job.id).await.expect("attempts");
    assert_eq!(status, RunStatus::Succeeded, "{:?}", job.reason);
    assert_eq!(attempts.len(), 1, "the attempt was not lost: {attempts:?}");
    // A VM nobody runs is still reaped.
    use solstice_vmm::VmProvider as _;
    let leftover = mock
        .provision(&solstice_vmm::VmSpec::new(
            "left-behind",
            "999",
            RunnerEndpoint::Tcp("127.0.0.1:9".into()),
            "token",
        ))
        .await
        .expect("provision");
    assert!(
        mock.list()
            .await
            .expect("list")
            .iter()
            .any(|v| v.id == leftover.id)
    );
    engine.reap_now().await.expect("reap");
    assert!(
        mock.list()
            .await
            .expect("list")
            .iter()
            .all(|v| v.id != leftover.id)
    );
    engine.shutdown().await;
}

/// Runners can reach the engine over a unix socket (for bridges such as
/// virtio-serial); a socket left by a dead engine is replaced, any other
/// file at the path is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_reach_a_unix_socket_endpoint() {
    let sockets = tempfile::tempdir().expect("temp dir");
    let path = sockets.path().join("runner.sock");
    // What a dead engine leaves behind: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    let s = setup_with(
        MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor)))),
        {
            let mut value = config(&[]);
            value.listen = Listen::Unix(path.clone());
            value
        },
    )
    .await;
    assert_eq!(s.engine.endpoint(), &RunnerEndpoint::Unix(path.clone()));
    let (run, status) = run(
        &s,
        r#"workflow { job id="a" { step run="echo over the socket"; } }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Succeeded);
    assert!(
        log_text(&s, run, "a", 0)
            .await
            .contains("echo over the socket")
    );

    let file = sockets.path().join("not-a-socket");
    std::fs::write(&file, "data").expect("write");
    let refused = Engine::start(
        {
            let mut value = config(&[]);
            value.listen = Listen::Unix(file.clone());
            value
        },
        s.store.clone(),
        Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default())),
        Arc::new(s.provider.clone()),
    )
    .await;
    assert!(
        matches!(refused, Err(EngineError::Listen(_))),
        "a regular file is not replaced"
    );
    assert_eq!(std::fs::read(&file).expect("still there"), b"data");
}

/// Where the job token went: recorded by a guest that passes it on to the
/// real runner, so that a hostile step can be handed the worst case.
type Found = Arc<Mutex<Option<(String, String)>>>;

struct TokenSpy {
    inner: RunnerGuest,
    found: Found,
}

#[async_trait]
impl Guest for TokenSpy {
    async fn run(&self, context: GuestContext) -> i32 {
        if let RunnerEndpoint::Tcp(addr) = &context.spec.endpoint {
            *self.found.lock().expect("lock") =
                Some((format!("http://{addr}"), context.spec.token.clone()));
        }
        self.inner.run(context).await
    }
}

/// A step that found the job token (here it is simply handed to it) and
/// speaks the runner protocol with it: it fetches the job again, and opens
/// report streams of its own that claim success. Then it exits 1.
struct Impostor {
    found: Found,
    seen: Arc<Mutex<Vec<String>>>,
}

fn event(e: pb::runner_event::Event) -> pb::RunnerEvent {
    pb::RunnerEvent { event: Some(e) }
}

fn claims_success() -> Vec<pb::RunnerEvent> {
    use pb::runner_event::Event;
    vec![
        event(Event::StepStarted(pb::StepStarted { index: 0 })),
        event(Event::StepFinished(pb::StepFinished {
            index: 0,
            exit_code: 0,
            ..Default::default()
        })),
        event(Event::JobFinished(pb::JobFinished {
            success: true,
            error: String::new(),
        })),
    ]
}

#[async_trait]
impl solstice_core::runner::StepExecutor for Impostor {
    async fn run(
        &self,
        _step: &solstice_core::runner::Step,
        _dir: &std::path::Path,
        env: &std::collections::BTreeMap<String, String>,
        _out: solstice_core::runner::OutputSink,
    ) -> Result<solstice_core::runner::StepOutcome, solstice_core::runner::StepError> {
        let mut seen = Vec::new();
        seen.push(format!(
            "env has token: {}",
            env.keys()
                .any(|k| k.contains("TOKEN") || k == "SOLSTICE_ENDPOINT")
        ));
        let (endpoint, token) = self.found.lock().expect("lock").clone().expect("token");
        let mut client = client(endpoint).await;
        let req = signed(pb::FetchJobRequest::default(), &token, None);
        seen.push(match client.fetch_job(req).await {
            Ok(_) => "fetch: ok".into(),
            Err(s) => format!("fetch: {:?}", s.code()),
        });
        for session in [None, Some(""), Some("0000")] {
            let req = signed(tokio_stream::iter(claims_success()), &token, session);
            seen.push(match client.report_events(req).await {
                Ok(_) => "report: ok".into(),
                Err(s) => format!("report: {:?}", s.code()),
            });
        }
        self.seen.lock().expect("lock").extend(seen);
        Ok(solstice_core::runner::StepOutcome::exited(1))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cannot_speak_for_its_runner() {
    let found: Found = Arc::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let executor = Arc::new(Impostor {
        found: found.clone(),
        seen: seen.clone(),
    });
    let provider = MockVmProvider::new(Arc::new(TokenSpy {
        inner: RunnerGuest::new(executor),
        found,
    }));
    let s = setup_with(provider, config(&[])).await;
    let (run, status) = run(
        &s,
        r#"workflow {
        job id="test" { step run="make test"; }
        job id="deploy" { needs "test"; step run="make deploy"; }
    }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(
        job_status(&s, run, "test").await,
        (
            JobStatus::Failed,
            Some("step `make test` failed (exit 1)".into())
        )
    );
    assert_eq!(job_status(&s, run, "deploy").await.0, JobStatus::Skipped);
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            "env has token: false",
            "fetch: PermissionDenied",
            "report: PermissionDenied",
            "report: PermissionDenied",
            "report: PermissionDenied",
        ]
    );
}

/// A runner that lies about its own job: the engine keeps what the steps
/// say. `steps` are sent as (index, exit code), then `JobFinished(success)`.
struct Liar {
    steps: Vec<(u32, i32)>,
    second_stream: bool,
    seen: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Guest for Liar {
    async fn run(&self, context: GuestContext) -> i32 {
        use pb::runner_event::Event;
        let RunnerEndpoint::Tcp(addr) = &context.spec.endpoint else {
            return 2;
        };
        let mut client = client(format!("http://{addr}")).await;
        let token = &context.spec.token;
        let req = signed(pb::FetchJobRequest::default(), token, None);
        let job = client.fetch_job(req).await.expect("fetch").into_inner();
        let session = Some(job.session.as_str());
        let mut events = Vec::new();
        for (index, exit_code) in &self.steps {
            events.push(event(Event::StepStarted(pb::StepStarted { index: *index })));
            events.push(event(Event::StepFinished(pb::StepFinished {
                index: *index,
                exit_code: *exit_code,
                ..Default::default()
            })));
        }
        events.push(event(Event::JobFinished(pb::JobFinished {
            success: true,
            error: String::new(),
        })));
        if self.second_stream {
            // Hold one stream open (it has sent nothing yet) and try another.
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::RunnerEvent>(4);
            let first = signed(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                token,
                session,
            );
            let mut c1 = client.clone();
            let held = tokio::spawn(async move { c1.report_events(first).await });
            // The held stream's headers reach the engine long before this.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let second = client
                .report_events(signed(tokio_stream::iter(events.clone()), token, session))
                .await;
            self.seen.lock().expect("lock").push(match second {
                Ok(_) => "second: ok".into(),
                Err(s) => format!("second: {:?}", s.code()),
            });
            for e in events {
                let _ = tx.send(e).await;
            }
            drop(tx);
            let _ = held.await;
            return 0;
        }
        let _ = client
            .report_events(signed(tokio_stream::iter(events), token, session))
            .await;
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_cannot_report_a_success_its_steps_deny() {
    let cases: [(Vec<(u32, i32)>, &str); 4] = [
        (vec![], "only 0 of its 2 steps finished"),
        (vec![(0, 0)], "only 1 of its 2 steps finished"),
        (
            vec![(0, 1), (1, 0)],
            "step 1 started after step 0 had failed",
        ),
        (
            vec![(1, 0), (0, 0)],
            "step 1 started out of order (expected step 0)",
        ),
    ];
    for (steps, why) in cases {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let provider = MockVmProvider::new(Arc::new(Liar {
            steps,
            second_stream: false,
            seen,
        }));
        let s = setup_with(provider, config(&[])).await;
        let (run, status) = run(
            &s,
            r#"workflow { job id="a" { step run="one"; step run="two"; }; job id="b" { needs "a"; step run="x"; } }"#,
        )
        .await;
        assert_eq!(status, RunStatus::Failed, "{why}");
        let (a, reason) = job_status(&s, run, "a").await;
        assert_eq!(a, JobStatus::Failed, "{why}");
        let reason = reason.expect("reason");
        assert!(reason.contains(why), "{reason} / {why}");
        assert_eq!(job_status(&s, run, "b").await.0, JobStatus::Skipped);
        let attempts = s
            .store
            .attempts(s.store.jobs(run).await.expect("jobs")[0].id)
            .await
            .expect("attempts");
        assert_eq!(attempts.len(), 1, "a refused report is not retried");
    }
    // The honest report of the same runner is accepted, and a second
    // stream for the attempt is refused.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let provider = MockVmProvider::new(Arc::new(Liar {
        steps: vec![(0, 0), (1, 0)],
        second_stream: true,
        seen: seen.clone(),
    }));
    let s = setup_with(provider, config(&[])).await;
    let (_, status) = run(
        &s,
        r#"workflow { job id="a" { step run="one"; step run="two"; } }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(*seen.lock().expect("lock"), ["second: PermissionDenied"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_too_short_to_mask_are_refused_and_unmaskable_ones_fail_closed() {
    let wf =
        solstice_kdl::parse(r#"workflow { secret "K"; job id="a" { step run="printenv K"; } }"#)
            .expect("valid");
    for short in ["", "abc"] {
        let s = setup(&[("K", short)]).await;
        let err = s
            .engine
            .submit(&wf, "{}", Checkout::None)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, EngineError::SecretTooShort(ref n) if n == "K"),
            "{err}"
        );
    }
    // Longer than the masker takes: the job fails before a VM exists, and
    // the value is nowhere in its log.
    let huge = "k".repeat(solstice_core::log::MAX_SECRET_LEN + 1);
    let s = setup(&[("K", &huge)]).await;
    let (run, status) = run(
        &s,
        r#"workflow { secret "K"; job id="a" { step run="printenv K"; } }"#,
    )
    .await;
    assert_eq!(status, RunStatus::Failed);
    let (_, reason) = job_status(&s, run, "a").await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("cannot be masked")),
        "{reason:?}"
    );
    assert_eq!(s.provider.provisioned(), 0, "no VM was started");
    assert!(!log_text(&s, run, "a", 0).await.contains("kkkk"));
}

/// Queued jobs live in the store; the in-process queue's messages die with
/// the engine. Capacity 1, two jobs: one running, one waiting in the queue
/// when the engine dies. The next engine runs both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_a_restart_with_an_in_process_queue() {
    let provider = MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor))));
    let one = {
        let mut value = config(&[]);
        value.capacity = 1;
        value.lease = Duration::from_millis(600);
        value
    };
    let first = setup_with(provider.clone(), one.clone()).await;
    let wf = solstice_kdl::parse(
        r#"workflow { job id="a" { step run="sleep 2"; }; job id="b" { step run="echo b"; } }"#,
    )
    .expect("valid");
    let run = submit_until_step_starts(&first.engine, &wf, 0).await;
    first.engine.kill();
    let queued: Vec<String> = first
        .store
        .queued_jobs()
        .await
        .expect("queued")
        .into_iter()
        .map(|j| j.key)
        .collect();
    assert_eq!(queued.len(), 1, "one job waits in the dead engine's queue");
    let second = restart(&first, &provider, one).await;
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait(run))
        .await
        .expect("both jobs ran after the restart")
        .expect("wait");
    assert_eq!(status, RunStatus::Succeeded);
    second.shutdown().await;
}

/// A job marked queued whose message never made it (a crash between the
/// two writes) is published again by a running engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_without_a_message_is_published_again() {
    let s = setup_with(
        MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor)))),
        {
            let mut value = config(&[]);
            value.capacity = 1;
            value.lease = Duration::from_millis(600);
            value
        },
    )
    .await;
    let wf = solstice_kdl::parse(
        r#"workflow { job id="a" { step run="sleep 1"; }; job id="b" { needs "a"; step run="echo b"; } }"#,
    )
    .expect("valid");
    let run = s
        .engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    // b is queued behind the engine's back: no message is published.
    let b = s
        .store
        .jobs(run)
        .await
        .expect("jobs")
        .into_iter()
        .find(|j| j.key == "b")
        .expect("b");
    assert!(
        s.store
            .transition_job(b.id, &[JobStatus::Pending], JobStatus::Queued, None)
            .await
            .expect("queue b")
    );
    let status = tokio::time::timeout(Duration::from_secs(60), s.engine.wait(run))
        .await
        .expect("b is not stranded")
        .expect("wait");
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(job_status(&s, run, "b").await.0, JobStatus::Succeeded);
}

/// What a guest found of its share when it started: the path, whether it
/// is whole, and whether `hello.txt` and `.git` were in it.
type SeenShare = Arc<Mutex<Vec<(Option<std::path::PathBuf>, bool, bool, bool)>>>;

struct ShareSpy {
    inner: RunnerGuest,
    seen: SeenShare,
}

#[async_trait]
impl Guest for ShareSpy {
    async fn run(&self, context: GuestContext) -> i32 {
        let share = context.spec.share.clone();
        let has = |name: &str| share.as_ref().is_some_and(|s| s.join(name).exists());
        let entry = (
            share.clone(),
            context.spec.share_whole,
            has("hello.txt"),
            has(".git"),
        );
        self.seen.lock().expect("lock").push(entry);
        self.inner.run(context).await
    }
}

/// Serves the repositories under `base` over git:// on 127.0.0.1 for
/// `connections` connections (each one a `git daemon --inetd`), then
/// refuses: a second clone of the same job would fail.
async fn git_server(base: std::path::PathBuf, connections: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        for _ in 0..connections {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let socket = socket.into_std().expect("std socket");
            socket.set_nonblocking(false).expect("blocking");
            let out = socket.try_clone().expect("dup");
            let mut child = std::process::Command::new("git")
                .args(["daemon", "--inetd", "--export-all"])
                .arg(format!("--base-path={}", base.display()))
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                    socket,
                )))
                .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(out)))
                .spawn()
                .expect("git daemon");
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    });
    format!("git://127.0.0.1:{port}")
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// With `checkout_dir`, the engine clones on the host and the VM gets the
/// tree (whole, `.git` too) as its share; the runner copies it and never
/// clones (the git server answers one clone only); the directory is gone
/// after the run. A `file://` URL is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_made_on_the_host_reaches_the_vm_as_its_share() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    git(&src, &["init", "-q"]);
    std::fs::write(src.join("hello.txt"), "hello\n").expect("write");
    git(&src, &["add", "hello.txt"]);
    git(&src, &["commit", "-q", "-m", "first"]);
    let commit = git(&src, &["rev-parse", "HEAD"]);
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).expect("mkdir");
    git(
        dir.path(),
        &["clone", "-q", "--bare", "src", "served/repo.git"],
    );
    let url = format!("{}/repo.git", git_server(served, 1).await);

    let seen = SeenShare::default();
    let mock = MockVmProvider::new(Arc::new(ShareSpy {
        inner: RunnerGuest::new(Arc::new(FakeExecutor)),
        seen: seen.clone(),
    }));
    let mut cfg = config(&[]);
    let checkouts = dir.path().join("checkouts");
    cfg.checkout_dir = Some(checkouts.clone());
    let s = setup_on(Arc::new(Tweaked::sharing(mock.clone())), mock, cfg).await;
    let wf = solstice_kdl::parse(r#"workflow { job id="a" { step run="true" } }"#).expect("wf");
    let checkout = Checkout::Git {
        url,
        commit: commit.clone(),
        fetch_ref: None,
    };
    let run = s.engine.submit(&wf, "{}", checkout).await.expect("submit");
    let status = tokio::time::timeout(Duration::from_secs(60), s.engine.wait(run))
        .await
        .expect("run ends")
        .expect("wait");
    let (job, reason) = job_status(&s, run, "a").await;
    assert_eq!(
        status,
        RunStatus::Succeeded,
        "{job:?} {reason:?}: {}",
        log_text(&s, run, "a", 0).await
    );
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (share, whole, hello, dot_git) = seen[0].clone();
    let share = share.expect("the VM got a share");
    assert!(share.starts_with(&checkouts), "{share:?}");
    assert!(whole && hello && dot_git, "{seen:?}");
    // Removed off the runtime's threads, soon after the attempt.
    let left = || {
        std::fs::read_dir(&checkouts)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    for _ in 0..200 {
        if left() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left(), 0, "the checkout is removed after the attempt");

    // The host's own files are not a checkout.
    let checkout = Checkout::Git {
        url: format!("file://{}", src.display()),
        commit,
        fetch_ref: None,
    };
    let run = s.engine.submit(&wf, "{}", checkout).await.expect("submit");
    let status = tokio::time::timeout(Duration::from_secs(60), s.engine.wait(run))
        .await
        .expect("run ends")
        .expect("wait");
    assert_eq!(status, RunStatus::Failed);
    let (_, reason) = job_status(&s, run, "a").await;
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("checkout on the host failed") && reason.contains("refusing clone URL"),
        "{reason}"
    );
    s.engine.shutdown().await;
}
