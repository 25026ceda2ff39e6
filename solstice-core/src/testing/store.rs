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
    Applied, AttemptId, AttemptStatus, Change, JobId, JobStatus, LogChunk, LogStream, NewJob,
    RunId, RunStatus, StateStore, StepRecord, StepStatus, StoreError,
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

/// Ends `attempt` and queues its job again.
fn finish(
    attempt: AttemptId,
    status: AttemptStatus,
    reason: Option<&str>,
    now: i64,
    job: JobId,
) -> Change {
    Change::Finish {
        attempt,
        status,
        reason: reason.map(str::to_string),
        now,
        job,
        job_status: JobStatus::Queued,
        job_reason: None,
        extra_attempts: 0,
    }
}

/// A new run of one queued job `a` with `max_attempts`; its id.
async fn queued_job(s: &dyn StateStore, max_attempts: u32) -> JobId {
    let run = s
        .create_run("CI", "{}", &[job("a", &[], max_attempts)], 0)
        .await
        .expect("run");
    let id = s.jobs(run).await.expect("jobs")[0].id;
    s.transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
        .await
        .expect("queue");
    id
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
    batch_transitions_move_only_matching_jobs(&make().await).await;
    claims_create_numbered_attempts(&make().await).await;
    concurrent_claims_have_one_winner(Arc::new(make().await)).await;
    leases_renew_only_for_their_holder_and_expire(&make().await).await;
    tokens_are_single_use(&make().await).await;
    steps_and_binary_logs_round_trip(&make().await).await;
    batched_writes_apply_as_if_one_by_one(&make().await).await;
    a_lost_attempt_is_queued_again_in_one_write(&make().await).await;
    guarded_writes_land_only_while_their_guard_holds(&make().await).await;
}

/// [`Change::Guarded`]: a holder's writes land only while it holds the
/// lease (running, its name, not run out), recovery's end only once the
/// lease ran out; a refused write changes nothing and says
/// [`Applied::Fenced`], also after an end earlier in the same batch.
pub async fn guarded_writes_land_only_while_their_guard_holds(s: &dyn StateStore) {
    use crate::store::Guard;
    let id = queued_job(s, 1).await;
    let a = s.claim(id, "e1", 1_000, "h1", 0).await.expect("claim");
    let holder = |name: &str, now| Guard::Holder {
        holder: name.into(),
        now,
    };
    let chunk = |seq: i64| LogChunk {
        attempt_id: a.id,
        seq,
        step: None,
        stream: LogStream::Stdout,
        data: vec![b'0' + seq as u8],
        at: seq,
    };
    let logs = |seq| Change::Logs(vec![chunk(seq)]);
    let unknown = AttemptId::new(a.id.get() + 1_000);
    let applied = s
        .apply(&[
            logs(0).guarded(a.id, holder("e1", 500)),
            logs(1).guarded(a.id, holder("e2", 500)),
            logs(2).guarded(a.id, holder("e1", 1_001)),
            logs(3).guarded(a.id, holder("e1", 1_000)),
            Change::Logs(vec![LogChunk {
                attempt_id: unknown,
                ..chunk(4)
            }])
            .guarded(unknown, holder("e1", 500)),
        ])
        .await
        .expect("apply");
    assert_eq!(
        applied,
        vec![
            Applied::Done,
            Applied::Fenced,
            Applied::Fenced,
            Applied::Done,
            Applied::Fenced
        ],
        "the holder within its lease; not another host, not past the lease, not an unknown attempt"
    );
    let lost = finish(a.id, AttemptStatus::Lost, Some("lease expired"), 0, id);
    assert_eq!(
        s.apply(&[lost.clone().guarded(a.id, Guard::Expired { now: 1_000 })])
            .await
            .expect("apply"),
        vec![Applied::Fenced],
        "recovery does not end a lease that has not run out"
    );
    let ended = finish(a.id, AttemptStatus::Succeeded, None, 0, id);
    let applied = s
        .apply(&[
            Change::Step(StepRecord {
                attempt_id: a.id,
                index: 0,
                name: "s".into(),
                status: StepStatus::Succeeded,
                exit_code: Some(0),
                started_at: Some(1),
                finished_at: Some(2),
            })
            .guarded(a.id, holder("e1", 900)),
            ended.clone().guarded(a.id, holder("e1", 900)),
            logs(5).guarded(a.id, holder("e1", 900)),
            ended.guarded(a.id, holder("e1", 900)),
        ])
        .await
        .expect("apply");
    assert_eq!(
        applied,
        vec![
            Applied::Done,
            Applied::Finished(true),
            Applied::Fenced,
            Applied::Fenced
        ],
        "what comes after the attempt's end in the same batch finds it ended"
    );
    assert_eq!(
        s.logs(a.id)
            .await
            .expect("logs")
            .iter()
            .map(|c| c.seq)
            .collect::<Vec<_>>(),
        vec![0, 3]
    );
    assert_eq!(s.steps(a.id).await.expect("steps").len(), 1);
    assert_eq!(
        s.attempt(a.id).await.expect("attempt").map(|a| a.status),
        Some(AttemptStatus::Succeeded)
    );

    // Recovery's end of a lease that ran out lands; the holder's writes
    // after it do not.
    let id2 = queued_job(s, 1).await;
    let a2 = s.claim(id2, "e1", 2_000, "h2", 1_000).await.expect("claim");
    let lost = finish(
        a2.id,
        AttemptStatus::Lost,
        Some("lease expired"),
        2_001,
        a2.job_id,
    );
    let late = Change::Logs(vec![LogChunk {
        attempt_id: a2.id,
        ..chunk(0)
    }]);
    assert_eq!(
        s.apply(&[
            lost.guarded(a2.id, Guard::Expired { now: 2_001 }),
            late.guarded(a2.id, holder("e1", 1_500)),
        ])
        .await
        .expect("apply"),
        vec![Applied::Finished(true), Applied::Fenced]
    );
    assert!(s.logs(a2.id).await.expect("logs").is_empty());
    assert_eq!(
        s.attempt(a2.id).await.expect("attempt").map(|a| a.status),
        Some(AttemptStatus::Lost)
    );

    // A guarded write of another attempt than its guard's is refused whole.
    let wrong = Change::Logs(vec![chunk(9)]).guarded(a2.id, holder("e1", 0));
    assert!(matches!(
        s.apply(&[wrong]).await,
        Err(StoreError::Invalid(_))
    ));
}

/// `Change::Finish` with `extra_attempts` ends the attempt, queues the job
/// and grows its allowance together; a second finish of it does nothing.
pub async fn a_lost_attempt_is_queued_again_in_one_write(s: &dyn StateStore) {
    let id = queued_job(s, 1).await;
    let a1 = s.claim(id, "e1", 100, "h1", 10).await.expect("claim");
    let lost = Change::Finish {
        attempt: a1.id,
        status: AttemptStatus::Lost,
        reason: Some("lease expired".into()),
        now: 20,
        job: id,
        job_status: JobStatus::Queued,
        job_reason: None,
        extra_attempts: 1,
    };
    let applied = s.apply(std::slice::from_ref(&lost)).await.expect("apply");
    assert_eq!(applied, vec![Applied::Finished(true)]);
    let j = s.job(id).await.expect("job").expect("job");
    assert_eq!((j.status, j.max_attempts), (JobStatus::Queued, 2));
    assert_eq!(
        s.queued_jobs()
            .await
            .expect("queued")
            .iter()
            .map(|j| j.id)
            .collect::<Vec<_>>(),
        vec![id]
    );
    let applied = s.apply(&[lost]).await.expect("apply again");
    assert_eq!(applied, vec![Applied::Finished(false)]);
    assert_eq!(s.job(id).await.expect("job").expect("job").max_attempts, 2);
    let a2 = s.claim(id, "e2", 200, "h2", 30).await.expect("claim again");
    assert_eq!(a2.number, 2);
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
        s.job_by_key(run, "build").await.expect("job by key"),
        Some(jobs[0].clone())
    );
    assert_eq!(s.job_by_key(run, "nope").await.expect("job by key"), None);
    assert_eq!(
        s.jobs_in_status(run, JobStatus::Pending)
            .await
            .expect("pending")
            .len(),
        2
    );
    assert!(s.has_unfinished_jobs(run).await.expect("count"));
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
    assert!(s.has_unfinished_jobs(run).await.expect("count"));
    let second = s
        .create_run("CI", "{}", &[job("x", &[], 1)], 1500)
        .await
        .expect("second run");
    let ids = |runs: Vec<crate::store::Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.running_runs().await.expect("running")),
        vec![run, second]
    );
    s.finish_run(second, RunStatus::Cancelled, 1600)
        .await
        .expect("finish");
    assert_eq!(ids(s.running_runs().await.expect("running")), vec![run]);
    s.finish_run(run, RunStatus::Succeeded, 2000)
        .await
        .expect("finish");
    assert!(s.running_runs().await.expect("running").is_empty());
    let r = s.run(run).await.expect("run").expect("exists");
    assert_eq!(
        (r.status, r.finished_at),
        (RunStatus::Succeeded, Some(2000))
    );
    assert_eq!(
        s.run(RunId::new(second.get() + 1000)).await.expect("run"),
        None
    );
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

/// `transition_jobs` moves the jobs in a `from` status and reports which,
/// in the order asked, across more jobs than one statement holds.
pub async fn batch_transitions_move_only_matching_jobs(s: &dyn StateStore) {
    let jobs: Vec<NewJob> = (0..450).map(|i| job(&format!("j{i}"), &[], 1)).collect();
    let run = s.create_run("CI", "{}", &jobs, 0).await.expect("run");
    let ids: Vec<JobId> = s
        .jobs(run)
        .await
        .expect("jobs")
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids.len(), 450, "a run larger than one insert statement");
    for id in ids.iter().step_by(3) {
        s.transition_job(*id, &[JobStatus::Pending], JobStatus::Skipped, None)
            .await
            .expect("skip");
    }
    let mut asked = ids.clone();
    asked.reverse();
    asked.push(ids[1]);
    let moved = s
        .transition_jobs(&asked, &[JobStatus::Pending], JobStatus::Queued, Some("go"))
        .await
        .expect("batch");
    let expected: Vec<JobId> = asked[..450]
        .iter()
        .copied()
        .filter(|id| ids.iter().position(|x| x == id).expect("known") % 3 != 0)
        .collect();
    assert_eq!(moved, expected);
    let queued = s
        .jobs_in_status(run, JobStatus::Queued)
        .await
        .expect("queued");
    assert_eq!(queued.len(), 300);
    let everywhere = s.queued_jobs().await.expect("queued jobs");
    assert_eq!(
        everywhere.iter().map(|j| j.id).collect::<Vec<_>>(),
        queued.iter().map(|j| j.id).collect::<Vec<_>>(),
        "`queued_jobs` lists the same jobs, in order"
    );
    assert!(queued.iter().all(|j| j.reason.as_deref() == Some("go")));
    assert!(
        s.transition_jobs(&ids, &[], JobStatus::Failed, None)
            .await
            .expect("no from")
            .is_empty(),
        "an empty `from` matches nothing"
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
        s.finish(finish(a1.id, AttemptStatus::Lost, Some("VM died"), 20, id))
            .await
            .expect("finish")
    );
    assert!(
        !s.finish(finish(a1.id, AttemptStatus::Failed, None, 21, id))
            .await
            .expect("finish twice")
    );
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
    s.finish(finish(a2.id, AttemptStatus::Lost, None, 40, id))
        .await
        .expect("finish");
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
    let id = queued_job(&*s, 5).await;
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
    assert!(s.renew_lease(a.id, "e1", 500, 5_000).await.expect("renew"));
    assert!(
        !s.renew_lease(a.id, "intruder", 500, 9_000)
            .await
            .expect("renew")
    );
    let expired = s.expired_attempts(2_000).await.expect("expired");
    assert_eq!(expired.iter().map(|x| x.id).collect::<Vec<_>>(), vec![b.id]);
    assert_eq!(s.running_attempts().await.expect("running").len(), 2);
    s.finish(finish(
        b.id,
        AttemptStatus::Lost,
        Some("lease expired"),
        2_000,
        jobs[1].id,
    ))
    .await
    .expect("finish");
    assert!(
        !s.renew_lease(b.id, "e2", 500, 9_000).await.expect("renew"),
        "finished attempts are not renewed"
    );
    assert!(
        !s.renew_lease(a.id, "e1", 5_001, 9_000)
            .await
            .expect("renew"),
        "a lease that ran out is not renewed"
    );
    assert!(
        s.renew_lease(a.id, "e1", 5_000, 9_000)
            .await
            .expect("renew"),
        "a lease is renewed up to its last millisecond"
    );
    assert!(s.expired_attempts(2_000).await.expect("expired").is_empty());
}

/// A token resolves to its attempt and can be used once.
pub async fn tokens_are_single_use(s: &dyn StateStore) {
    let id = queued_job(s, 1).await;
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
    let id = queued_job(s, 1).await;
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
            step: if i == 2 { None } else { Some(1) },
            stream: LogStream::ALL[i as usize % 2],
            data: vec![0, 0xff, b'x', i as u8],
            at: i,
        })
        .collect();
    s.append_logs(&chunks[1..]).await.expect("append");
    s.append_logs(&chunks[..1]).await.expect("append");
    assert_eq!(s.logs(a.id).await.expect("logs"), chunks);
    // The tail: the fewest last chunks holding at least that many bytes.
    let tail = |n| async move { s.log_tail(a.id, n).await.expect("tail") };
    assert_eq!(tail(0).await, Vec::<LogChunk>::new());
    assert_eq!(tail(1).await, chunks[2..]);
    assert_eq!(tail(4).await, chunks[2..]);
    assert_eq!(tail(5).await, chunks[1..]);
    assert_eq!(tail(12).await, chunks);
    assert_eq!(tail(usize::MAX).await, chunks);
}

/// [`StateStore::apply`]: a batch does what its writes would do one by one,
/// in order, including batches larger than one statement's worth of rows.
pub async fn batched_writes_apply_as_if_one_by_one(s: &dyn StateStore) {
    assert!(s.apply(&[]).await.expect("empty batch").is_empty());
    let mut new_jobs: Vec<NewJob> = (0..250).map(|i| job(&format!("a{i}"), &[], 2)).collect();
    new_jobs.push(job("pending", &[], 1));
    let run = s.create_run("CI", "{}", &new_jobs, 0).await.expect("run");
    let jobs = s.jobs(run).await.expect("jobs");
    let (queued, pending) = jobs.split_at(250);
    for j in queued {
        s.transition_job(j.id, &[JobStatus::Pending], JobStatus::Queued, None)
            .await
            .expect("queue");
    }
    let claim = |job: JobId, token: String| Change::Claim {
        job,
        holder: "e1".into(),
        lease_until: 1_000,
        token_hash: token,
        now: 7,
    };
    let mut writes: Vec<Change> = queued
        .iter()
        .map(|j| claim(j.id, format!("t-{}", j.key)))
        .collect();
    writes.push(claim(queued[0].id, "duplicate".into()));
    writes.push(claim(pending[0].id, "not-queued".into()));
    let applied = s.apply(&writes).await.expect("claims");
    assert_eq!(applied.len(), writes.len());
    let mut attempts = Vec::new();
    for (j, a) in queued.iter().zip(&applied) {
        let Applied::Claimed(Some(pair)) = a else {
            panic!("{} was not claimed: {a:?}", j.key);
        };
        let (claimed, attempt) = &**pair;
        assert_eq!(
            (claimed.id, claimed.status, claimed.attempts, &claimed.spec),
            (j.id, JobStatus::Running, 1, &j.spec)
        );
        assert_eq!(
            (
                attempt.job_id,
                attempt.number,
                attempt.status,
                attempt.started_at
            ),
            (j.id, 1, AttemptStatus::Running, 7)
        );
        attempts.push(attempt.clone());
    }
    assert_eq!(
        applied[250..],
        [Applied::Claimed(None), Applied::Claimed(None)],
        "a second claim in the batch and a claim of a pending job lose"
    );
    assert_eq!(
        s.attempt_by_token("t-a0")
            .await
            .expect("token")
            .map(|a| a.id),
        Some(attempts[0].id)
    );
    assert_eq!(s.attempt_by_token("duplicate").await.expect("token"), None);

    let (a0, a1) = (&attempts[0], &attempts[1]);
    let chunks: Vec<LogChunk> = (0..450)
        .map(|i| LogChunk {
            attempt_id: a0.id,
            seq: i,
            step: Some(0),
            stream: LogStream::ALL[i as usize % 3],
            data: vec![0xfe, 0, (i % 256) as u8],
            at: i,
        })
        .collect();
    let step = StepRecord {
        attempt_id: a0.id,
        index: 0,
        name: "Build".into(),
        status: StepStatus::Running,
        exit_code: None,
        started_at: Some(5),
        finished_at: None,
    };
    let finish =
        |a: &crate::store::Attempt, status, job_status, reason: Option<&str>| Change::Finish {
            attempt: a.id,
            status,
            reason: reason.map(str::to_string),
            now: 50,
            job: a.job_id,
            job_status,
            job_reason: reason.map(|r| format!("job: {r}")),
            extra_attempts: 0,
        };
    let mut writes = vec![
        Change::SetVm {
            attempt: a0.id,
            vm_id: "vm-1".into(),
        },
        Change::SetVm {
            attempt: a0.id,
            vm_id: "vm-2".into(),
        },
        Change::Step(step.clone()),
        Change::Logs(chunks[..300].to_vec()),
        Change::Step(StepRecord {
            status: StepStatus::Succeeded,
            exit_code: Some(0),
            started_at: None,
            finished_at: Some(9),
            ..step.clone()
        }),
        Change::Logs(chunks[300..].to_vec()),
        finish(a0, AttemptStatus::Succeeded, JobStatus::Succeeded, None),
        finish(a0, AttemptStatus::Failed, JobStatus::Failed, Some("late")),
        finish(a1, AttemptStatus::Lost, JobStatus::Queued, Some("VM died")),
    ];
    for a in &attempts[2..] {
        writes.push(finish(
            a,
            AttemptStatus::Failed,
            JobStatus::Failed,
            Some("exit 1"),
        ));
    }
    let applied = s.apply(&writes).await.expect("writes");
    assert_eq!(applied[..6], [const { Applied::Done }; 6]);
    assert_eq!(
        applied[6..],
        std::iter::once(Applied::Finished(true))
            .chain(std::iter::once(Applied::Finished(false)))
            .chain(std::iter::repeat_n(Applied::Finished(true), 249))
            .collect::<Vec<_>>()[..],
        "only the first finish of an attempt ends it"
    );
    let a0_now = s.attempt(a0.id).await.expect("attempt").expect("exists");
    assert_eq!(
        (a0_now.status, a0_now.vm_id.as_deref(), a0_now.finished_at),
        (AttemptStatus::Succeeded, Some("vm-2"), Some(50))
    );
    let steps = s.steps(a0.id).await.expect("steps");
    assert_eq!(
        steps
            .iter()
            .map(|x| (x.index, x.status, x.exit_code, x.started_at, x.finished_at))
            .collect::<Vec<_>>(),
        vec![(0, StepStatus::Succeeded, Some(0), Some(5), Some(9))],
        "a step started and finished in one batch keeps its start"
    );
    assert_eq!(s.logs(a0.id).await.expect("logs"), chunks);
    let j0 = s.job(a0.job_id).await.expect("job").expect("exists");
    assert_eq!((j0.status, j0.reason), (JobStatus::Succeeded, None));
    let j1 = s.job(a1.job_id).await.expect("job").expect("exists");
    assert_eq!(
        (j1.status, j1.reason.as_deref()),
        (JobStatus::Queued, Some("job: VM died"))
    );
    let a1_now = s.attempt(a1.id).await.expect("attempt").expect("exists");
    assert_eq!(
        (a1_now.status, a1_now.reason.as_deref()),
        (AttemptStatus::Lost, Some("VM died"))
    );
    let j2 = s
        .job(attempts[2].job_id)
        .await
        .expect("job")
        .expect("exists");
    assert_eq!(
        (j2.status, j2.reason.as_deref()),
        (JobStatus::Failed, Some("job: exit 1"))
    );
    // The retried job is claimed again as attempt 2; attempts then run out.
    let again = s
        .apply(&[claim(a1.job_id, "t-again".into())])
        .await
        .expect("claim again");
    let [Applied::Claimed(Some(pair))] = &again[..] else {
        panic!("not claimed again: {again:?}");
    };
    assert_eq!(pair.1.number, 2);
    s.apply(&[finish(
        &pair.1,
        AttemptStatus::Lost,
        JobStatus::Queued,
        None,
    )])
    .await
    .expect("lost again");
    assert_eq!(
        s.apply(&[claim(a1.job_id, "t-third".into())])
            .await
            .expect("claim"),
        vec![Applied::Claimed(None)],
        "no attempts left"
    );
    assert!(s.has_unfinished_jobs(run).await.expect("unfinished"));
}
