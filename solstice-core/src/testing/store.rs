//! The conformance suite for [`StateStore`] implementations. Every check
//! takes a fresh, empty store.
//!
//! ```no_run
//! # async fn f() {
//! use solstice_core::store::SqlStore;
//! solstice_core::testing::store::run_all(|| async { SqlStore::connect("sqlite::memory:").await.unwrap() }).await;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

use crate::store::{
    AttemptStatus, JobStatus, LogChunk, NewJob, RunStatus, StateStore, StepRecord, StepStatus,
    StoreError,
};

fn job(key: &str, needs: &[&str], max_attempts: u32) -> NewJob {
    NewJob {
        key: key.into(),
        label: "ubuntu-22.04".into(),
        spec: format!("{{\"id\":\"{key}\"}}"),
        needs: needs.iter().map(|s| s.to_string()).collect(),
        max_attempts,
    }
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: StateStore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    runs_and_jobs_round_trip(&make().await).await;
    job_transitions_are_compare_and_set(&make().await).await;
    claims_create_numbered_attempts(&make().await).await;
    concurrent_claims_have_one_winner(Arc::new(make().await)).await;
    leases_renew_only_for_their_holder_and_expire(&make().await).await;
    tokens_are_single_use(&make().await).await;
    steps_and_binary_logs_round_trip(&make().await).await;
}

/// A run and its jobs read back as written, in workflow order.
pub async fn runs_and_jobs_round_trip(s: &dyn StateStore) {
    let run = s
        .create_run(
            "CI",
            "{\"commit\":\"abc\"}",
            &[job("build", &[], 1), job("test (os=a)", &["build"], 3)],
            1000,
        )
        .await
        .expect("create run");
    let r = s.run(run).await.expect("run").expect("exists");
    assert_eq!(
        (r.name.as_str(), r.status, r.created_at),
        ("CI", RunStatus::Running, 1000)
    );
    let jobs = s.jobs(run).await.expect("jobs");
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].key, "build");
    assert_eq!(jobs[1].needs, vec!["build".to_string()]);
    assert_eq!(
        (jobs[1].status, jobs[1].max_attempts, jobs[1].attempts),
        (JobStatus::Pending, 3, 0)
    );
    assert_eq!(s.job(jobs[1].id).await.expect("job"), Some(jobs[1].clone()));
    assert_eq!(
        s.jobs_in_status(run, JobStatus::Pending)
            .await
            .expect("pending")
            .len(),
        2
    );
    assert_eq!(s.unfinished_jobs(run).await.expect("count"), 1);
    s.transition_job(jobs[0].id, &[JobStatus::Pending], JobStatus::Skipped, None)
        .await
        .expect("skip");
    assert_eq!(
        s.jobs_in_status(run, JobStatus::Pending)
            .await
            .expect("pending")
            .len(),
        1
    );
    assert_eq!(s.unfinished_jobs(run).await.expect("count"), 1);
    s.finish_run(run, RunStatus::Succeeded, 2000)
        .await
        .expect("finish");
    let r = s.run(run).await.expect("run").expect("exists");
    assert_eq!(
        (r.status, r.finished_at),
        (RunStatus::Succeeded, Some(2000))
    );
    assert_eq!(s.run(run + 1000).await.expect("run"), None);
}

/// `transition_job` moves only from the listed statuses.
pub async fn job_transitions_are_compare_and_set(s: &dyn StateStore) {
    let run = s
        .create_run("CI", "{}", &[job("a", &[], 1)], 0)
        .await
        .expect("run");
    let id = s.jobs(run).await.expect("jobs")[0].id;
    assert!(
        s.transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
            .await
            .expect("cas")
    );
    assert!(
        !s.transition_job(id, &[JobStatus::Pending], JobStatus::Skipped, Some("x"))
            .await
            .expect("cas")
    );
    assert!(
        s.transition_job(
            id,
            &[JobStatus::Queued, JobStatus::Running],
            JobStatus::Cancelled,
            Some("by user")
        )
        .await
        .expect("cas")
    );
    let j = s.job(id).await.expect("job").expect("exists");
    assert_eq!(
        (j.status, j.reason.as_deref()),
        (JobStatus::Cancelled, Some("by user"))
    );
}

/// Claiming a queued job makes attempt N+1; attempts run out.
pub async fn claims_create_numbered_attempts(s: &dyn StateStore) {
    let run = s
        .create_run("CI", "{}", &[job("a", &[], 2)], 0)
        .await
        .expect("run");
    let id = s.jobs(run).await.expect("jobs")[0].id;
    assert!(
        matches!(
            s.claim(id, "e1", 100, "h1", 10).await,
            Err(StoreError::Conflict(_))
        ),
        "pending is not claimable"
    );
    s.transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
        .await
        .expect("queue");
    let a1 = s.claim(id, "e1", 100, "h1", 10).await.expect("claim");
    assert_eq!(
        (a1.number, a1.status, a1.holder.as_str(), a1.started_at),
        (1, AttemptStatus::Running, "e1", 10)
    );
    assert_eq!(
        s.job(id).await.expect("job").expect("job").status,
        JobStatus::Running
    );
    assert!(
        matches!(
            s.claim(id, "e2", 100, "h2", 10).await,
            Err(StoreError::Conflict(_))
        ),
        "running is not claimable"
    );
    assert!(
        s.finish_attempt(a1.id, AttemptStatus::Lost, Some("VM died"), 20)
            .await
            .expect("finish")
    );
    assert!(
        !s.finish_attempt(a1.id, AttemptStatus::Failed, None, 21)
            .await
            .expect("finish twice")
    );
    s.transition_job(id, &[JobStatus::Running], JobStatus::Queued, None)
        .await
        .expect("requeue");
    let a2 = s.claim(id, "e2", 200, "h2", 30).await.expect("claim again");
    assert_eq!(a2.number, 2);
    s.set_vm(a2.id, "vm-9").await.expect("set vm");
    let attempts = s.attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (attempts[0].status, attempts[0].reason.as_deref()),
        (AttemptStatus::Lost, Some("VM died"))
    );
    assert_eq!(attempts[1].vm_id.as_deref(), Some("vm-9"));
    s.finish_attempt(a2.id, AttemptStatus::Lost, None, 40)
        .await
        .expect("finish");
    s.transition_job(id, &[JobStatus::Running], JobStatus::Queued, None)
        .await
        .expect("requeue");
    assert!(
        matches!(
            s.claim(id, "e3", 300, "h3", 50).await,
            Err(StoreError::Conflict(_))
        ),
        "attempts ran out"
    );
}

/// Eight engines race for one job: exactly one claim succeeds.
pub async fn concurrent_claims_have_one_winner(s: Arc<dyn StateStore>) {
    let run = s
        .create_run("CI", "{}", &[job("a", &[], 5)], 0)
        .await
        .expect("run");
    let id = s.jobs(run).await.expect("jobs")[0].id;
    s.transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
        .await
        .expect("queue");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.claim(id, &format!("e{i}"), 100, &format!("t{i}"), 1)
                .await
                .is_ok()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("task") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(s.attempts(id).await.expect("attempts").len(), 1);
}

/// Only the holder renews; expired leases are found.
pub async fn leases_renew_only_for_their_holder_and_expire(s: &dyn StateStore) {
    let run = s
        .create_run("CI", "{}", &[job("a", &[], 1), job("b", &[], 1)], 0)
        .await
        .expect("run");
    let jobs = s.jobs(run).await.expect("jobs");
    for j in &jobs {
        s.transition_job(j.id, &[JobStatus::Pending], JobStatus::Queued, None)
            .await
            .expect("queue");
    }
    let a = s
        .claim(jobs[0].id, "e1", 1_000, "ha", 0)
        .await
        .expect("claim");
    let b = s
        .claim(jobs[1].id, "e2", 1_000, "hb", 0)
        .await
        .expect("claim");
    assert!(s.renew_lease(a.id, "e1", 5_000).await.expect("renew"));
    assert!(!s.renew_lease(a.id, "intruder", 9_000).await.expect("renew"));
    let expired = s.expired_attempts(2_000).await.expect("expired");
    assert_eq!(expired.iter().map(|x| x.id).collect::<Vec<_>>(), vec![b.id]);
    assert_eq!(s.running_attempts().await.expect("running").len(), 2);
    s.finish_attempt(b.id, AttemptStatus::Lost, Some("lease expired"), 2_000)
        .await
        .expect("finish");
    assert!(
        !s.renew_lease(b.id, "e2", 9_000).await.expect("renew"),
        "finished attempts are not renewed"
    );
    assert!(s.expired_attempts(2_000).await.expect("expired").is_empty());
}

/// A token resolves to its attempt and can be used once.
pub async fn tokens_are_single_use(s: &dyn StateStore) {
    let run = s
        .create_run("CI", "{}", &[job("a", &[], 1)], 0)
        .await
        .expect("run");
    let id = s.jobs(run).await.expect("jobs")[0].id;
    s.transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
        .await
        .expect("queue");
    let a = s
        .claim(id, "e1", 1_000, "secret-hash", 0)
        .await
        .expect("claim");
    assert_eq!(
        s.attempt_by_token("secret-hash")
            .await
            .expect("by token")
            .map(|x| x.id),
        Some(a.id)
    );
    assert_eq!(s.attempt_by_token("forged").await.expect("by token"), None);
    assert!(s.use_token(a.id).await.expect("use"));
    assert!(!s.use_token(a.id).await.expect("use again"));
    assert_eq!(
        s.attempt(a.id).await.expect("attempt").map(|x| x.number),
        Some(1)
    );
}

/// Steps update in place; log bytes (not UTF-8, NULs) come back exactly, in order.
pub async fn steps_and_binary_logs_round_trip(s: &dyn StateStore) {
    let run = s
        .create_run("CI", "{}", &[job("a", &[], 1)], 0)
        .await
        .expect("run");
    let id = s.jobs(run).await.expect("jobs")[0].id;
    s.transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
        .await
        .expect("queue");
    let a = s.claim(id, "e1", 1_000, "h", 0).await.expect("claim");
    let mut step = StepRecord {
        attempt_id: a.id,
        index: 1,
        name: "Test".into(),
        status: StepStatus::Running,
        exit_code: None,
        started_at: Some(5),
        finished_at: None,
    };
    s.put_step(&step).await.expect("put");
    s.put_step(&StepRecord {
        index: 0,
        name: "Build".into(),
        ..step.clone()
    })
    .await
    .expect("put");
    step.status = StepStatus::Failed;
    step.exit_code = Some(3);
    step.finished_at = Some(9);
    s.put_step(&step).await.expect("update");
    let steps = s.steps(a.id).await.expect("steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].name, "Build");
    assert_eq!(
        (
            steps[1].status,
            steps[1].exit_code,
            steps[1].started_at,
            steps[1].finished_at
        ),
        (StepStatus::Failed, Some(3), Some(5), Some(9))
    );
    let chunks: Vec<LogChunk> = (0..3)
        .map(|i| LogChunk {
            attempt_id: a.id,
            seq: i,
            step: 1,
            stream: (i % 2) as u8,
            data: vec![0, 0xff, b'x', i as u8],
            at: i,
        })
        .collect();
    s.append_logs(&chunks[1..]).await.expect("append");
    s.append_logs(&chunks[..1]).await.expect("append");
    assert_eq!(s.logs(a.id).await.expect("logs"), chunks);
}
