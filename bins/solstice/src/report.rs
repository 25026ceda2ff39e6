//! Engine events to forge statuses. Each job's reports go out in order
//! through its own queue (a slow forge delays that job's reports only);
//! a reporter that fell behind the engine, or a daemon that restarted,
//! reports the current state of every running job again (reports are
//! idempotent).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use solstice_core::engine::{EngineEvent, EventError};
use solstice_core::store::{IntegrationStore, Job, JobStatus, RunId, StateStore, StepStatus};
use solstice_forge::{Conclusion, Forge, JobReport, JobState, StepLine};
use tokio::sync::mpsc;

use crate::daemon::{Daemon, chain, forge_of};
use crate::inbox::Target;

/// Most log bytes sent as a failing step's tail (GitHub shows 65,535
/// characters; the reporter cuts to that).
const TAIL_BYTES: usize = 64 * 1024;

/// What happened to a job, for its report.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// Waiting for this attempt (1 for the first); `None`: the engine's
    /// `JobQueued`, which does not say which (a new job, or one retried
    /// after it ended).
    Queued(Option<u32>),
    /// This attempt started.
    Started(u32),
    /// Done.
    Finished(JobStatus, Option<String>),
}

/// Where a job is in its life, as the forge was last told: its attempt and
/// the phase of it. Reports go out in this order and never go back: a
/// `queued` that arrives after the attempt's `in_progress` (as it can when
/// another host claims the job before this host's event comes through) is
/// dropped, as is a repeat; a retry's `queued` waits for a later attempt,
/// so it goes out; after the final status only a later attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    attempt: u32,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Queued,
    Started,
    Finished,
}

impl Change {
    /// The change a job's stored state (its status, the attempts it made
    /// and why it is there) says happened last.
    fn of(status: JobStatus, attempts: u32, reason: Option<&str>) -> Option<Change> {
        Some(match status {
            JobStatus::Pending => return None,
            JobStatus::Queued => Change::Queued(Some(attempts + 1)),
            JobStatus::Running => Change::Started(attempts.max(1)),
            status => Change::Finished(status, reason.map(str::to_string)),
        })
    }

    /// [`Change::of`] a stored job.
    fn of_job(job: &Job) -> Option<Change> {
        Change::of(job.status, job.attempts, job.reason.as_deref())
    }

    /// Where this change puts the job after `last`, or `None` when it does
    /// not move it forward (it is not sent).
    fn after(&self, last: Option<Position>) -> Option<Position> {
        let at = |attempt, phase| Position { attempt, phase };
        let next = match (self, last) {
            (Change::Queued(attempt), None) => at(attempt.unwrap_or(1), Phase::Queued),
            (Change::Started(attempt), _) => at(*attempt, Phase::Started),
            (Change::Queued(Some(attempt)), _) => at(*attempt, Phase::Queued),
            // Queued again after it ended: retried, the next attempt.
            (Change::Queued(None), Some(last)) if last.phase == Phase::Finished => {
                at(last.attempt + 1, Phase::Queued)
            }
            (Change::Queued(None), Some(_)) => return None,
            (Change::Finished(..), None) => at(0, Phase::Finished),
            (Change::Finished(..), Some(last)) if last.phase == Phase::Finished => return None,
            (Change::Finished(..), Some(last)) => at(last.attempt, Phase::Finished),
        };
        last.is_none_or(|last| next > last).then_some(next)
    }
}

/// The reporter's shared state.
#[derive(Debug, Default)]
pub struct Reports {
    /// Where each run reports to; `None`: nowhere (not from a forge).
    targets: Mutex<HashMap<RunId, Option<Target>>>,
    /// Held while a run is submitted, so that its first events find its target.
    gate: tokio::sync::Mutex<()>,
    /// Each job's queue of changes.
    jobs: Mutex<HashMap<(RunId, String), mpsc::UnboundedSender<Change>>>,
    /// Reports not yet sent.
    pending: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Reports {
    /// Remembers where `run` reports to.
    pub fn watch(&self, run: RunId, target: Target) {
        lock(&self.targets).insert(run, Some(target));
    }

    /// Holds back event handling (while a run is submitted).
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Waits until no report is waiting to be sent.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.pending.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Sends a report through the forge's reporter, logging a failure; true
/// when the forge took it.
pub async fn send(daemon: &Daemon, forge: Forge, report: &JobReport) -> bool {
    let Some(link) = daemon.forge(forge) else {
        return false;
    };
    match link.reporter.report(report).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(repository = %report.repo.full_name, job = %report.name, error = %chain(&e), "the forge refused a status");
            false
        }
    }
}

/// Follows the engine's events until the engine stops.
pub async fn run(daemon: Arc<Daemon>) {
    let mut events = daemon.engine.subscribe();
    resync(&daemon).await;
    loop {
        let event = events.recv().await;
        let _gate = daemon.reports.gate.lock().await;
        match event {
            Ok(EngineEvent::JobQueued { run, key }) => {
                enqueue(&daemon, run, key, Change::Queued(None)).await;
            }
            Ok(EngineEvent::JobRetrying {
                run, key, attempt, ..
            }) => {
                enqueue(&daemon, run, key, Change::Queued(Some(attempt + 1))).await;
            }
            Ok(EngineEvent::JobStarted { run, key, attempt }) => {
                enqueue(&daemon, run, key, Change::Started(attempt)).await
            }
            Ok(EngineEvent::JobFinished {
                run,
                key,
                status,
                reason,
            }) => {
                enqueue(&daemon, run, key, Change::Finished(status, reason)).await;
            }
            Ok(EngineEvent::RunFinished { run, .. }) => {
                // Its jobs' workers hold their own copy; the map stays bounded.
                lock(&daemon.reports.targets).remove(&run);
            }
            Ok(_) => {}
            Err(EventError::Lagged { missed }) => {
                tracing::warn!(
                    missed,
                    "the status reporter fell behind; reporting every running job again"
                );
                resync(&daemon).await;
            }
            Err(_) => break,
        }
    }
}

/// How often the store is read for the changes of jobs other hosts run.
const STORE_POLL: Duration = Duration::from_millis(500);

/// Jobs that other hosts run: their changes read from the store and
/// reported like this engine's own events. Each job's status and attempt
/// count is compared with what was last reported, so a change is reported
/// once; changes between two reads collapse into the latest (the forge
/// sees the job's state move forward, never back). A run is watched from
/// its first read as running until a read after it ended.
pub async fn watch_store(daemon: Arc<Daemon>) {
    let mut seen: HashMap<RunId, HashMap<String, (JobStatus, u32)>> = HashMap::new();
    // An outage is said once (not every 500 ms), and its end.
    let mut away = false;
    loop {
        tokio::time::sleep(STORE_POLL).await;
        let running: Vec<RunId> = match daemon.store.running_runs().await {
            Ok(runs) => {
                if std::mem::take(&mut away) {
                    tracing::info!("the running runs can be read again");
                }
                runs.into_iter().map(|r| r.id).collect()
            }
            Err(e) if away => {
                tracing::debug!(error = %chain(&e), "still cannot list the running runs");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot list the running runs; trying every 500 ms");
                away = true;
                continue;
            }
        };
        let mut runs: Vec<RunId> = seen.keys().copied().collect();
        runs.extend(running.iter().copied().filter(|r| !seen.contains_key(r)));
        for run in runs {
            let Ok(jobs) = daemon.store.jobs(run).await else {
                continue;
            };
            let _gate = daemon.reports.gate.lock().await;
            let known = seen.entry(run).or_default();
            for job in jobs {
                let now = (job.status, job.attempts);
                if known.get(&job.key) == Some(&now) {
                    continue;
                }
                known.insert(job.key.clone(), now);
                let Some(change) = Change::of_job(&job) else {
                    continue;
                };
                enqueue(&daemon, run, job.key, change).await;
            }
            if !running.contains(&run) {
                // Read once more after it ended: its last changes are in.
                seen.remove(&run);
                lock(&daemon.reports.targets).remove(&run);
            }
        }
    }
}

/// Reports every job of every running run as it is now.
async fn resync(daemon: &Arc<Daemon>) {
    let runs = match daemon.store.running_runs().await {
        Ok(runs) => runs,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "cannot list the running runs");
            return;
        }
    };
    for run in runs {
        let Ok(jobs) = daemon.store.jobs(run.id).await else {
            continue;
        };
        for job in jobs {
            let change = Change::of_job(&job).unwrap_or(Change::Queued(Some(job.attempts + 1)));
            enqueue(daemon, run.id, job.key, change).await;
        }
    }
}

async fn target_of(daemon: &Daemon, run: RunId) -> Option<Target> {
    if let Some(known) = lock(&daemon.reports.targets).get(&run) {
        return known.clone();
    }
    let target = match daemon.store.delivery_of_run(run).await {
        Ok(Some(entry)) => entry
            .target
            .and_then(|t| serde_json::from_str::<Target>(&t).ok()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(%run, error = %chain(&e), "cannot read where a run reports to");
            return None;
        }
    };
    lock(&daemon.reports.targets).insert(run, target.clone());
    target
}

async fn enqueue(daemon: &Arc<Daemon>, run: RunId, key: String, change: Change) {
    let Some(target) = target_of(daemon, run).await else {
        return;
    };
    let reports = &daemon.reports;
    reports
        .pending
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut jobs = lock(&reports.jobs);
    let sender = jobs.entry((run, key.clone())).or_insert_with(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(job_reports(
            daemon.clone(),
            run,
            key.clone(),
            target.clone(),
            rx,
        ));
        tx
    });
    if let Err(mpsc::error::SendError(change)) = sender.send(change) {
        // Its worker just ended (the job had finished): a new one.
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(change);
        tokio::spawn(job_reports(daemon.clone(), run, key.clone(), target, rx));
        jobs.insert((run, key), tx);
    }
}

/// Builds and sends one change's report unless it would take the job's
/// status back; `sent` is where the forge last heard the job was.
async fn report_one(
    daemon: &Daemon,
    run: RunId,
    key: &str,
    target: &Target,
    change: &Change,
    sent: &mut Option<Position>,
) {
    let Some(forge) = forge_of(&target.forge) else {
        return;
    };
    let Some(position) = change.after(*sent) else {
        tracing::debug!(%run, job = %key, ?change, "a status older than the one sent; not sent");
        return;
    };
    match build_patiently(daemon, run, key, target, change).await {
        Ok(report) => {
            if send(daemon, forge, &report).await {
                *sent = Some(position);
            }
        }
        Err(e) => {
            tracing::warn!(%run, job = %key, error = %e, "cannot build a status report")
        }
    }
}

/// One job's reports, in order.
async fn job_reports(
    daemon: Arc<Daemon>,
    run: RunId,
    key: String,
    target: Target,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut sent = None;
    while let Some(change) = changes.recv().await {
        let last = matches!(change, Change::Finished(..));
        report_one(&daemon, run, &key, &target, &change, &mut sent).await;
        let reports = &daemon.reports;
        if reports
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            reports.idle.notify_waiters();
        }
        if last && changes.is_empty() {
            lock(&reports.jobs).remove(&(run, key.clone()));
            // What arrived between the check and the removal still goes out.
            while let Ok(change) = changes.try_recv() {
                report_one(&daemon, run, &key, &target, &change, &mut sent).await;
                if reports
                    .pending
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                    == 1
                {
                    reports.idle.notify_waiters();
                }
            }
            return;
        }
    }
}

fn conclusion(status: JobStatus, reason: Option<&str>) -> Conclusion {
    match status {
        JobStatus::Succeeded => Conclusion::Success,
        JobStatus::Cancelled => Conclusion::Cancelled,
        JobStatus::Skipped => Conclusion::Skipped,
        _ if reason.is_some_and(|r| r.contains("timed out")) => Conclusion::TimedOut,
        _ => Conclusion::Failure,
    }
}

fn seconds(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Why a report could not be built.
#[derive(Debug)]
enum Unbuilt {
    /// The store is away for now: try again.
    Later(String),
    /// It never will be (no such job, a store error that is not transient).
    Gone(String),
}

impl Unbuilt {
    fn from_store(e: &solstice_core::store::StoreError) -> Unbuilt {
        if e.is_transient() {
            Unbuilt::Later(chain(e))
        } else {
            Unbuilt::Gone(chain(e))
        }
    }
}

/// How long a report is tried again while the store is away (as the
/// engine's writes are): a report is not dropped for a busy pool.
const BUILD_PATIENCE: Duration = Duration::from_secs(120);

/// [`build`], tried again while the store is away, for up to
/// [`BUILD_PATIENCE`]: in the job's own worker, so its reports keep their
/// order.
async fn build_patiently(
    daemon: &Daemon,
    run: RunId,
    key: &str,
    target: &Target,
    change: &Change,
) -> Result<JobReport, String> {
    let deadline = tokio::time::Instant::now() + BUILD_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match build(daemon, run, key, target, change.clone()).await {
            Ok(report) => return Ok(report),
            Err(Unbuilt::Later(why)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%run, job = %key, error = %why, "the store is busy or away; building the report again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(Unbuilt::Later(why) | Unbuilt::Gone(why)) => return Err(why),
        }
    }
}

async fn build(
    daemon: &Daemon,
    run: RunId,
    key: &str,
    target: &Target,
    change: Change,
) -> Result<JobReport, Unbuilt> {
    let store = &daemon.store;
    let job: Job = store
        .job_by_key(run, key)
        .await
        .map_err(|e| Unbuilt::from_store(&e))?
        .ok_or(Unbuilt::Gone("no such job".into()))?;
    let state = match &change {
        Change::Queued(_) => JobState::Queued,
        Change::Started(_) => JobState::InProgress,
        Change::Finished(status, reason) => {
            JobState::Completed(conclusion(*status, reason.as_deref()))
        }
    };
    let mut report = JobReport::new(
        target.repo(),
        &target.commit,
        key,
        target.external_id(key),
        state,
    )
    .with_details_url(format!("{}/jobs/{}", daemon.config.public_url, job.id));
    let attempts = store
        .attempts(job.id)
        .await
        .map_err(|e| Unbuilt::from_store(&e))?;
    let latest = attempts.iter().max_by_key(|a| a.number);
    match &change {
        Change::Queued(_) => report = report.with_description("queued"),
        Change::Started(_) => {
            report = report.with_description(format!(
                "running (attempt {})",
                latest.map_or(1, |a| a.number)
            ));
            if let Some(a) = latest {
                report = report.with_times(
                    Some(UNIX_EPOCH + Duration::from_millis(a.started_at.max(0) as u64)),
                    None,
                );
            }
        }
        Change::Finished(status, reason) => {
            let mut steps = Vec::new();
            let mut failing: Option<u32> = None;
            if let Some(a) = latest {
                for s in store
                    .steps(a.id)
                    .await
                    .map_err(|e| Unbuilt::from_store(&e))?
                {
                    let outcome = match (s.status, s.exit_code) {
                        (StepStatus::Succeeded, _) => "passed".to_string(),
                        (StepStatus::Running, _) => "did not finish".to_string(),
                        (StepStatus::TimedOut, _) => "timed out".to_string(),
                        (StepStatus::Failed, Some(code)) => format!("failed (exit {code})"),
                        (StepStatus::Failed, None) => "failed".to_string(),
                    };
                    if matches!(s.status, StepStatus::Failed | StepStatus::TimedOut)
                        && failing.is_none()
                    {
                        failing = Some(s.index);
                    }
                    let duration = match (s.started_at, s.finished_at) {
                        (Some(a), Some(b)) if b >= a => Some(Duration::from_millis((b - a) as u64)),
                        _ => None,
                    };
                    steps.push(StepLine::new(s.name, outcome, duration));
                }
                let started = UNIX_EPOCH + Duration::from_millis(a.started_at.max(0) as u64);
                let finished = a
                    .finished_at
                    .map(|f| UNIX_EPOCH + Duration::from_millis(f.max(0) as u64));
                report = report.with_times(Some(started), finished);
            }
            let took = latest
                .and_then(|a| a.finished_at.map(|f| f - a.started_at))
                .map(seconds)
                .unwrap_or_default();
            let description = match status {
                JobStatus::Succeeded => format!("passed in {took}"),
                _ => reason.clone().unwrap_or_else(|| status.to_string()),
            };
            report = report.with_description(description).with_steps(steps);
            if *status == JobStatus::Failed
                && let Some(a) = latest
            {
                let chunks = store
                    .logs(a.id)
                    .await
                    .map_err(|e| Unbuilt::from_store(&e))?;
                let mut tail: Vec<u8> = Vec::new();
                for c in chunks
                    .iter()
                    .filter(|c| failing.is_none() || c.step == failing)
                {
                    tail.extend_from_slice(&c.data);
                    if tail.len() > 2 * TAIL_BYTES {
                        tail.drain(..tail.len() - TAIL_BYTES);
                    }
                }
                if tail.len() > TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
                let mut text = String::from_utf8_lossy(&tail).into_owned();
                if let Some(r) = reason {
                    text.push_str(&format!("\n{r}\n"));
                }
                report = report.with_log_tail(text);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `changes` in turn; what went out.
    fn sent(changes: &[Change]) -> Vec<Position> {
        let mut last = None;
        let mut out = Vec::new();
        for change in changes {
            if let Some(p) = change.after(last) {
                out.push(p);
                last = Some(p);
            }
        }
        out
    }

    fn at(attempt: u32, phase: Phase) -> Position {
        Position { attempt, phase }
    }

    /// The order a job's reports may take: forward through its attempts,
    /// never back, the final one last.
    #[test]
    fn a_job_s_statuses_only_go_forward() {
        let done = || Change::Finished(JobStatus::Succeeded, None);
        use Phase::*;
        // In order, each goes out.
        assert_eq!(
            sent(&[Change::Queued(None), Change::Started(1), done()]),
            [at(1, Queued), at(1, Started), at(1, Finished)]
        );
        // The engine's queued event arriving after another host's start
        // (the forge saw in_progress, queued, completed) is dropped, as
        // are repeats.
        assert_eq!(
            sent(&[
                Change::Queued(Some(1)),
                Change::Started(1),
                Change::Queued(None),
                Change::Queued(Some(1)),
                Change::Started(1),
                done(),
                done(),
            ]),
            [at(1, Queued), at(1, Started), at(1, Finished)]
        );
        // A lost attempt's retry waits for attempt 2: that goes out, and
        // attempt 1's late start does not.
        assert_eq!(
            sent(&[
                Change::Started(1),
                Change::Queued(Some(2)),
                Change::Started(1),
                Change::Started(2),
                done(),
            ]),
            [
                at(1, Started),
                at(2, Queued),
                at(2, Started),
                at(2, Finished)
            ]
        );
        // Retried after it ended (the API's retry): the next attempt, on
        // one host (an event that does not say which attempt) or through
        // the store.
        assert_eq!(
            sent(&[
                Change::Started(1),
                done(),
                Change::Queued(None),
                Change::Started(2),
                done()
            ]),
            [
                at(1, Started),
                at(1, Finished),
                at(2, Queued),
                at(2, Started),
                at(2, Finished)
            ]
        );
        assert_eq!(
            sent(&[done(), Change::Queued(Some(2)), Change::Started(1)]),
            [at(0, Finished), at(2, Queued)]
        );
        // Nothing of an attempt after it ended.
        assert_eq!(
            sent(&[Change::Started(2), done(), Change::Started(2)]),
            [at(2, Started), at(2, Finished)]
        );
    }

    #[test]
    fn a_stored_job_says_where_it_is() {
        assert_eq!(Change::of(JobStatus::Pending, 0, None), None);
        assert_eq!(
            Change::of(JobStatus::Queued, 0, None),
            Some(Change::Queued(Some(1)))
        );
        assert_eq!(
            Change::of(JobStatus::Running, 1, None),
            Some(Change::Started(1))
        );
        // Lost once, queued again: it waits for attempt 2.
        assert_eq!(
            Change::of(JobStatus::Queued, 1, Some("lost")),
            Some(Change::Queued(Some(2)))
        );
        assert_eq!(
            Change::of(JobStatus::Failed, 1, Some("step 1 failed")),
            Some(Change::Finished(
                JobStatus::Failed,
                Some("step 1 failed".into())
            ))
        );
    }
}
