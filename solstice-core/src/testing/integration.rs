//! The conformance suite for [`IntegrationStore`] implementations: call
//! [`run_all`] with a fresh, empty store that also implements
//! [`StateStore`] (runs are created through it).

use crate::store::{InboxState, IntegrationStore, NewDelivery, NewJob, RunId, StateStore};

/// Every check below, in turn, on one fresh store.
pub async fn run_all<S: StateStore + IntegrationStore>(store: &S) {
    deliveries_are_recorded_once(store).await;
    deliveries_move_on_and_drop_their_body(store).await;
    runs_are_found_by_source_and_listed_newest_first(store).await;
    batches_of_deliveries_are_recorded_once(store).await;
    schedules_follow_the_workflow(store).await;
    hosts_are_upserted_by_heartbeat(store).await;
    ended_jobs_are_retried_with_one_more_attempt(store).await;
    every_status_change_is_in_the_outbox_until_sent(store).await;
}

/// The status outbox: every change of a job's status or attempt count
/// (queued, claimed, lost and queued again, ended, skipped), in order,
/// and nothing for a write that changes neither; an entry stays until it
/// is marked sent, or is older than the retention when a run finishes.
pub async fn every_status_change_is_in_the_outbox_until_sent<S: StateStore + IntegrationStore>(
    store: &S,
) {
    use crate::store::{AttemptStatus, Change, JobStatus, RunStatus, STATUS_RETENTION_MS};
    // What the checks before left.
    let before: Vec<i64> = store
        .unsent_statuses(0, 100_000)
        .await
        .expect("outbox")
        .iter()
        .map(|e| e.id)
        .collect();
    store.statuses_sent(&before).await.expect("sent");
    assert!(
        store
            .unsent_statuses(0, 10)
            .await
            .expect("outbox")
            .is_empty()
    );

    let run = store
        .create_run(
            "outbox",
            "outbox-source",
            &["a", "b"].map(|key| NewJob {
                key: key.into(),
                label: "default".into(),
                spec: "{}".into(),
                needs: Vec::new(),
                max_attempts: 1,
            }),
            1,
        )
        .await
        .expect("run");
    let jobs = store.jobs(run).await.expect("jobs");
    let (a, b) = (jobs[0].id, jobs[1].id);
    assert!(
        store
            .unsent_statuses(0, 10)
            .await
            .expect("outbox")
            .is_empty(),
        "a new run's pending jobs are nothing to report"
    );
    let queued = store
        .transition_job(a, &[JobStatus::Pending], JobStatus::Queued, None)
        .await
        .expect("queue");
    assert!(queued);
    store
        .transition_job(b, &[JobStatus::Pending], JobStatus::Skipped, Some("needs"))
        .await
        .expect("skip");
    store
        .transition_job(a, &[JobStatus::Queued], JobStatus::Queued, None)
        .await
        .expect("queue again");
    let end = |attempt, status, job_status, extra_attempts| Change::Finish {
        attempt,
        status,
        reason: None,
        now: 5,
        job: a,
        job_status,
        job_reason: None,
        extra_attempts,
    };
    let first = store.claim(a, "e", 100, "t1", 2).await.expect("claim");
    store
        .finish(end(first.id, AttemptStatus::Lost, JobStatus::Queued, 1))
        .await
        .expect("lost");
    let second = store.claim(a, "e", 100, "t2", 3).await.expect("claim");
    store
        .finish(end(
            second.id,
            AttemptStatus::Succeeded,
            JobStatus::Succeeded,
            0,
        ))
        .await
        .expect("end");
    let entries = store.unsent_statuses(0, 100).await.expect("outbox");
    let seen: Vec<(String, JobStatus, u32, Option<String>)> = entries
        .iter()
        .map(|e| (e.key.clone(), e.status, e.attempts, e.reason.clone()))
        .collect();
    let at = |key: &str, status, attempts, reason: Option<&str>| {
        (
            key.to_string(),
            status,
            attempts,
            reason.map(str::to_string),
        )
    };
    assert_eq!(
        seen,
        vec![
            at("a", JobStatus::Queued, 0, None),
            at("b", JobStatus::Skipped, 0, Some("needs")),
            at("a", JobStatus::Running, 1, None),
            at("a", JobStatus::Queued, 1, None),
            at("a", JobStatus::Running, 2, None),
            at("a", JobStatus::Succeeded, 2, None),
        ]
    );
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
    assert!(entries.iter().all(|e| e.run == run));
    assert_eq!(
        entries.iter().map(|e| e.job).collect::<Vec<_>>(),
        vec![a, b, a, a, a, a]
    );
    assert_eq!(
        store.unsent_statuses(0, 2).await.expect("outbox"),
        entries[..2]
    );
    assert_eq!(
        store
            .unsent_statuses(entries[1].id, 2)
            .await
            .expect("outbox"),
        entries[2..4]
    );
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    store.statuses_sent(&ids[..3]).await.expect("sent");
    assert_eq!(
        store.unsent_statuses(0, 100).await.expect("outbox"),
        entries[3..]
    );
    // A run that finishes now keeps what is new; one after the retention
    // drops it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    store
        .finish_run(run, RunStatus::Succeeded, now)
        .await
        .expect("finish");
    assert_eq!(
        store.unsent_statuses(0, 100).await.expect("outbox").len(),
        3
    );
    store
        .finish_run(
            run,
            RunStatus::Succeeded,
            now + STATUS_RETENTION_MS + 60_000,
        )
        .await
        .expect("finish");
    assert!(
        store
            .unsent_statuses(0, 100)
            .await
            .expect("outbox")
            .is_empty()
    );
}

/// A delivery id is recorded once per forge; the same id from another
/// forge is another delivery.
pub async fn deliveries_are_recorded_once<S: StateStore + IntegrationStore>(store: &S) {
    let body = b"{\"x\": \"\\u0000 \xff binary is kept\"}";
    assert!(
        store
            .record_delivery("github", "d-1", "push", body, 10)
            .await
            .expect("record")
    );
    assert!(
        !store
            .record_delivery("github", "d-1", "push", b"other", 11)
            .await
            .expect("again")
    );
    assert!(
        store
            .record_delivery("forgejo", "d-1", "push", b"{}", 12)
            .await
            .expect("other forge")
    );
    let got = store
        .delivery("github", "d-1")
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(got.body, body, "the first body is kept, byte for byte");
    assert_eq!(got.event, "push");
    assert_eq!(got.received_at, 10);
    assert_eq!(got.state, InboxState::Pending);
    assert_eq!(got.run, None);
    assert_eq!(store.delivery("github", "nope").await.expect("read"), None);
}

/// Pending deliveries come oldest first; done ones lose their body and
/// keep their outcome, run and target.
pub async fn deliveries_move_on_and_drop_their_body<S: StateStore + IntegrationStore>(store: &S) {
    for (i, id) in ["m-3", "m-1", "m-2"].iter().enumerate() {
        store
            .record_delivery("github", id, "push", b"{}", 1000 + i as i64)
            .await
            .expect("record");
    }
    let pending = store
        .deliveries(InboxState::Pending, 100)
        .await
        .expect("list");
    let ids: Vec<&str> = pending
        .iter()
        .filter(|d| d.id.starts_with("m-"))
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(ids, ["m-3", "m-1", "m-2"], "oldest first");
    assert!(
        store
            .deliveries(InboxState::Pending, 1)
            .await
            .expect("list")
            .len()
            == 1
    );

    store
        .set_delivery(
            "github",
            "m-1",
            InboxState::AwaitingApproval,
            "waiting for approval",
            None,
            Some("{\"t\":1}"),
        )
        .await
        .expect("hold");
    let held = store
        .deliveries(InboxState::AwaitingApproval, 10)
        .await
        .expect("list");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].body, b"{}", "a held delivery keeps its body");
    assert_eq!(held[0].target.as_deref(), Some("{\"t\":1}"));

    let run = store.create_run("w", "src", &[], 1).await.expect("run");
    store
        .set_delivery(
            "github",
            "m-1",
            InboxState::Done,
            "started a run",
            Some(run),
            Some("{\"t\":2}"),
        )
        .await
        .expect("done");
    let done = store
        .delivery("github", "m-1")
        .await
        .expect("read")
        .expect("there");
    assert_eq!(done.state, InboxState::Done);
    assert!(done.body.is_empty(), "a done delivery's body is dropped");
    assert_eq!(done.outcome.as_deref(), Some("started a run"));
    assert_eq!(done.run, Some(run));
    store
        .set_delivery_subject("github", "m-1", "octo/hello@abc")
        .await
        .expect("subject");
    store
        .set_delivery_subject("github", "m-2", "octo/hello@abc")
        .await
        .expect("subject");
    let about = store
        .latest_delivery_about("github", "octo/hello@abc")
        .await
        .expect("read");
    assert_eq!(
        about.map(|d| d.id).as_deref(),
        Some("m-1"),
        "only a delivery that started a run"
    );
    assert_eq!(
        store
            .latest_delivery_about("forgejo", "octo/hello@abc")
            .await
            .expect("read"),
        None
    );
    let by_run = store
        .delivery_of_run(run)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(by_run.id, "m-1");
    assert_eq!(by_run.target.as_deref(), Some("{\"t\":2}"));
    assert!(
        store
            .deliveries(InboxState::AwaitingApproval, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

/// `run_by_source` finds the newest run with exactly that source;
/// `recent_runs` pages newest first.
pub async fn runs_are_found_by_source_and_listed_newest_first<S: StateStore + IntegrationStore>(
    store: &S,
) {
    let job = NewJob {
        key: "a".into(),
        label: "default".into(),
        spec: "{}".into(),
        needs: vec![],
        max_attempts: 1,
    };
    let mut made: Vec<RunId> = Vec::new();
    for i in 0..5 {
        made.push(
            store
                .create_run(
                    "w",
                    &format!("source-{}", i % 2),
                    std::slice::from_ref(&job),
                    i,
                )
                .await
                .expect("run"),
        );
    }
    assert_eq!(
        store.run_by_source("source-1").await.expect("find"),
        Some(made[3])
    );
    assert_eq!(
        store.run_by_source("source-").await.expect("find"),
        None,
        "exact match only"
    );
    let page = store.recent_runs(2, None).await.expect("list");
    let ids: Vec<RunId> = page.iter().map(|r| r.id).collect();
    assert_eq!(ids, [made[4], made[3]]);
    let next = store.recent_runs(2, Some(made[3])).await.expect("list");
    let ids: Vec<RunId> = next.iter().map(|r| r.id).collect();
    assert_eq!(ids, [made[2], made[1]]);
}

/// A batch records each new delivery once: ids seen before, and repeats
/// within the batch, are not new.
pub async fn batches_of_deliveries_are_recorded_once<S: StateStore + IntegrationStore>(store: &S) {
    assert!(
        store
            .record_delivery("github", "b-old", "push", b"{}", 1)
            .await
            .expect("record")
    );
    let ids: Vec<String> = (0..250).map(|i| format!("b-{i}")).collect();
    let mut batch: Vec<NewDelivery<'_>> = ids
        .iter()
        .map(|id| NewDelivery::new("github", id, "push", b"{}"))
        .collect();
    batch.push(NewDelivery::new("github", "b-old", "push", b"{}"));
    batch.push(NewDelivery::new("github", "b-7", "push", b"{}"));
    batch.push(NewDelivery::new("forgejo", "b-7", "push", b"{}"));
    let got = store.record_deliveries(&batch, 2).await.expect("batch");
    assert_eq!(got.len(), batch.len());
    assert!(got[..250].iter().all(|new| *new), "every fresh id is new");
    assert_eq!(
        &got[250..],
        [false, false, true],
        "old, repeated, other forge"
    );
    let again = store
        .record_deliveries(&batch[..3], 3)
        .await
        .expect("batch");
    assert_eq!(again, [false, false, false]);
    let stored = store
        .delivery("github", "b-249")
        .await
        .expect("read")
        .expect("there");
    assert_eq!(stored.received_at, 2);
    assert!(
        store
            .record_deliveries(&[], 4)
            .await
            .expect("empty")
            .is_empty()
    );
}

/// Schedules are replaced per repository; a schedule already there keeps
/// its `since`, and every one gets the new target.
pub async fn schedules_follow_the_workflow<S: StateStore + IntegrationStore>(store: &S) {
    let crons = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    store
        .set_schedules(
            "github",
            "octo/a",
            "t1",
            &crons(&["0 3 * * *", "@hourly"]),
            100,
        )
        .await
        .expect("set");
    store
        .set_schedules("github", "octo/b", "tb", &crons(&["@daily"]), 100)
        .await
        .expect("set");
    store
        .set_schedules(
            "github",
            "octo/a",
            "t2",
            &crons(&["@hourly", "*/5 * * * *"]),
            200,
        )
        .await
        .expect("set");
    let got: Vec<(String, String, String, i64)> = store
        .schedules()
        .await
        .expect("list")
        .into_iter()
        .map(|s| (s.repository, s.cron, s.target, s.since))
        .collect();
    let want = [
        ("octo/a", "*/5 * * * *", "t2", 200),
        ("octo/a", "@hourly", "t2", 100),
        ("octo/b", "@daily", "tb", 100),
    ]
    .map(|(r, c, t, s)| (r.to_string(), c.to_string(), t.to_string(), s));
    assert_eq!(got, want);
    store
        .set_schedules("github", "octo/a", "t3", &[], 300)
        .await
        .expect("clear");
    assert_eq!(store.schedules().await.expect("list").len(), 1);
}

/// A heartbeat replaces the host's row; `hosts` lists those seen since a
/// time, by name.
pub async fn hosts_are_upserted_by_heartbeat<S: StateStore + IntegrationStore>(store: &S) {
    use crate::store::HostEntry;
    let mut a = HostEntry::new("host-a", "orchestrator");
    a.labels = vec!["linux".into(), "omnios".into()];
    a.capacity = 4;
    a.running = 1;
    a.version = "1.2.3".into();
    a.started_at = 1_000;
    a.seen_at = 2_000;
    store.heartbeat(&a).await.expect("heartbeat");
    let mut b = HostEntry::new("host-b", "integration");
    b.seen_at = 500;
    store.heartbeat(&b).await.expect("heartbeat");
    assert_eq!(
        store.hosts(0).await.expect("hosts"),
        vec![a.clone(), b.clone()]
    );
    a.running = 3;
    a.seen_at = 3_000;
    store.heartbeat(&a).await.expect("heartbeat again");
    assert_eq!(store.hosts(1_000).await.expect("hosts"), vec![a.clone()]);
    // A host not seen for the retention is forgotten at the next beat of
    // another; one seen within it is kept.
    a.seen_at = b.seen_at + crate::store::HOST_RETENTION_MS;
    store.heartbeat(&a).await.expect("heartbeat");
    assert_eq!(store.hosts(0).await.expect("hosts").len(), 2);
    a.seen_at += 1;
    store.heartbeat(&a).await.expect("heartbeat");
    assert_eq!(store.hosts(0).await.expect("hosts"), vec![a]);
}

/// `retry_job` queues an ended job again with one more attempt allowed and
/// reopens its run; a job that has not ended is left alone.
pub async fn ended_jobs_are_retried_with_one_more_attempt<S: StateStore + IntegrationStore>(
    store: &S,
) {
    use crate::store::{JobStatus, RunStatus};
    let run = store
        .create_run(
            "retry",
            "retry-source",
            &["a", "b"].map(|key| NewJob {
                key: key.into(),
                label: "default".into(),
                spec: "{}".into(),
                needs: Vec::new(),
                max_attempts: 1,
            }),
            1,
        )
        .await
        .expect("run");
    let jobs = store.jobs(run).await.expect("jobs");
    let (a, b) = (jobs[0].id, jobs[1].id);
    assert!(
        !store.retry_job(a).await.expect("retry"),
        "a pending job is not retried"
    );
    store
        .transition_job(a, &[JobStatus::Pending], JobStatus::Failed, Some("exit 1"))
        .await
        .expect("fail a");
    store
        .finish_run(run, RunStatus::Failed, 2)
        .await
        .expect("finish");
    assert!(store.retry_job(a).await.expect("retry"));
    let a_now = store.job(a).await.expect("job").expect("there");
    assert_eq!(a_now.status, JobStatus::Queued);
    assert_eq!(a_now.reason, None);
    assert_eq!(a_now.max_attempts, a_now.attempts + 1);
    let r = store.run(run).await.expect("run").expect("there");
    assert_eq!(r.status, RunStatus::Running);
    assert_eq!(r.finished_at, None);
    assert_eq!(
        store.job(b).await.expect("job").expect("there").status,
        JobStatus::Pending
    );
    assert!(
        !store.retry_job(a).await.expect("retry"),
        "queued now: not again"
    );
}
