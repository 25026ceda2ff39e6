//! The status outbox to forge statuses. Every change of a job's status is
//! written to the store's outbox by the transaction that makes it, on
//! whichever host ([`IntegrationStore::unsent_statuses`]); the reporter
//! reads it, sends each job's entries in order through the job's own queue
//! (a slow forge delays that job's reports only), and removes each entry
//! once the forge took it. A daemon that was down sends only what was not
//! sent; the forge's updates are idempotent (the same check run, the same
//! status context), so an entry sent just before a crash and sent again
//! after it changes nothing.

use std::collections::{HashMap, HashSet};
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

/// An outbox entry on its way: its number and the change it says.
#[derive(Debug)]
struct Outgoing {
    id: i64,
    change: Change,
}

/// The reporter's shared state.
#[derive(Debug, Default)]
pub struct Reports {
    /// Where each run reports to (those known to report somewhere).
    targets: Mutex<HashMap<RunId, Target>>,
    /// Held while a run is submitted, so that its first statuses find its
    /// target.
    gate: tokio::sync::Mutex<()>,
    /// Each job's queue of outbox entries.
    jobs: Mutex<HashMap<(RunId, String), mpsc::UnboundedSender<Outgoing>>>,
    /// Outbox entries handed to a job's queue and not yet removed from the
    /// outbox: not handed over again.
    in_flight: Mutex<HashSet<i64>>,
    /// Entries done with (sent, or nothing to send), and whether they
    /// are already out of the outbox; the next pass removes the others
    /// and lets go of all.
    done: Mutex<Vec<(i64, bool)>>,
    /// Where the forge last heard each job was, kept past its worker (a
    /// job's worker ends with its final status; a later entry of it gets
    /// a new one, which must not send anything older).
    positions: Mutex<HashMap<(RunId, String), Position>>,
    /// Said when an entry is done with.
    progress: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Reports {
    /// Remembers where `run` reports to.
    pub fn watch(&self, run: RunId, target: Target) {
        let mut targets = lock(&self.targets);
        // A cache of the store: bounded.
        if targets.len() >= MAX_TARGETS {
            targets.clear();
        }
        targets.insert(run, target);
    }

    /// Holds back the reporter (while a run is submitted).
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// An entry is done with (`removed`: already out of the outbox); the
    /// next pass removes it if not, and lets go of it.
    fn finished(&self, id: i64, removed: bool) {
        lock(&self.done).push((id, removed));
        self.progress.notify_waiters();
    }
}

/// Most runs whose target is kept in memory (the store has them all).
const MAX_TARGETS: usize = 10_000;

/// Sends a report through the forge's reporter, logging a failure; true
/// when the forge took it.
pub async fn send(daemon: &Daemon, forge: Forge, report: &JobReport) -> bool {
    match try_send(daemon, forge, report).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(repository = %report.repo.full_name, job = %report.name, error = %chain(&e), "the forge refused a status");
            false
        }
    }
}

/// Why a status did not reach the forge.
#[derive(Debug, thiserror::Error)]
enum Unsent {
    /// The forge is not configured (any more).
    #[error("the forge is not configured")]
    NoForge,
    /// The forge failed or refused.
    #[error(transparent)]
    Forge(#[from] solstice_forge::ForgeError),
}

impl Unsent {
    /// Whether the same status may be taken later: the forge could not
    /// be reached, was busy or rate limited, or failed on its side.
    fn is_transient(&self) -> bool {
        use solstice_forge::ForgeError as E;
        match self {
            Unsent::NoForge => false,
            Unsent::Forge(E::Connect { .. } | E::RateLimited { .. }) => true,
            Unsent::Forge(E::Status { status, .. }) => *status >= 500 || *status == 429,
            Unsent::Forge(_) => false,
        }
    }
}

async fn try_send(daemon: &Daemon, forge: Forge, report: &JobReport) -> Result<(), Unsent> {
    let link = daemon.forge(forge).ok_or(Unsent::NoForge)?;
    Ok(link.reporter.report(report).await?)
}

/// How often the outbox is read when nothing wakes the reporter: the
/// changes other hosts make reach the forge within this.
const OUTBOX_POLL: Duration = Duration::from_millis(250);
/// Most jobs whose last sent position is kept in memory.
const MAX_POSITIONS: usize = 200_000;
/// Most outbox entries read in one pass.
const OUTBOX_BATCH: usize = 2_000;
/// Least time between two passes: a burst of the engine's events is one
/// pass, not one per event.
const PASS_GAP: Duration = Duration::from_millis(20);

/// Sends the status outbox to the forges until the daemon stops: every
/// change of a job's status is there, written by the transaction that
/// made it (on any host), and leaves it once the forge took it. A pass
/// runs when this host's engine says a job moved, and every
/// [`OUTBOX_POLL`] for the others' jobs. A daemon that was down sends
/// what was not sent when it comes back, in order.
pub async fn run(daemon: Arc<Daemon>) {
    let mut events = daemon.engine.subscribe();
    let mut engine_running = true;
    let mut away = false;
    loop {
        match pass(&daemon).await {
            Ok(()) if std::mem::take(&mut away) => {
                tracing::info!("the status outbox can be read again");
            }
            Ok(()) => {}
            Err(e) if away => {
                tracing::debug!(error = %chain(&e), "still cannot read the status outbox")
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot read the status outbox; trying again");
                away = true;
            }
        }
        tokio::time::sleep(PASS_GAP).await;
        let poll = tokio::time::sleep(OUTBOX_POLL);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                () = &mut poll => break,
                event = events.recv(), if engine_running => match event {
                    Ok(
                        EngineEvent::JobQueued { .. }
                        | EngineEvent::JobStarted { .. }
                        | EngineEvent::JobRetrying { .. }
                        | EngineEvent::JobFinished { .. },
                    )
                    | Err(EventError::Lagged { .. }) => break,
                    Ok(_) => {}
                    Err(_) => engine_running = false,
                },
            }
        }
        // What else came meanwhile is covered by this pass.
        while let Some(Ok(_) | Err(EventError::Lagged { .. })) = events.try_recv() {}
    }
}

/// Sends what the outbox still holds, waiting up to `limit` (the last
/// statuses before the daemon stops).
pub async fn flush(daemon: &Arc<Daemon>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let progress = daemon.reports.progress.notified();
        let _ = pass(daemon).await;
        let busy = !lock(&daemon.reports.in_flight).is_empty();
        if !busy {
            return;
        }
        if tokio::time::timeout_at(deadline, progress).await.is_err() {
            return;
        }
    }
}

/// Where a run's statuses go.
enum Destination {
    To(Box<Target>),
    /// Nowhere: the run is not from a forge.
    Nowhere,
    /// Not known yet (its delivery is being processed, or the store is
    /// away): its entries wait.
    NotYet,
}

/// How long a run from a delivery may be without a target before its
/// statuses are dropped (its delivery was never finished).
const TARGET_PATIENCE_MS: i64 = 3600 * 1000;

async fn destination(daemon: &Daemon, run: RunId) -> Destination {
    if let Some(known) = lock(&daemon.reports.targets).get(&run) {
        return Destination::To(Box::new(known.clone()));
    }
    match daemon.store.delivery_of_run(run).await {
        Ok(Some(entry)) => match entry
            .target
            .and_then(|t| serde_json::from_str::<Target>(&t).ok())
        {
            Some(target) => {
                daemon.reports.watch(run, target.clone());
                Destination::To(Box::new(target))
            }
            None => Destination::Nowhere,
        },
        // A run from a delivery whose target is not stored yet (it is
        // stored just after the run is made).
        Ok(None) => match daemon.store.run(run).await {
            Ok(Some(r))
                if r.source.starts_with(crate::inbox::SOURCE_PREFIX)
                    && solstice_core::engine::now_ms() - r.created_at < TARGET_PATIENCE_MS =>
            {
                Destination::NotYet
            }
            Ok(_) => Destination::Nowhere,
            Err(_) => Destination::NotYet,
        },
        Err(e) => {
            tracing::debug!(%run, error = %chain(&e), "cannot read where a run reports to");
            Destination::NotYet
        }
    }
}

/// One pass over the outbox: removes what was done with, then hands each
/// new entry to its job's queue, in order. It reads from the outbox's
/// start every time (skipping what its workers hold): a job's entries are
/// numbered in the order of its changes and each is visible before the
/// next is even made, but entries of different jobs commit out of order,
/// so a read that started after the newest entry seen could miss a job's
/// earlier entry and hand over its later one first (a check run went
/// completed, then in progress).
async fn pass(daemon: &Arc<Daemon>) -> Result<(), solstice_core::store::StoreError> {
    let reports = &daemon.reports;
    let done = std::mem::take(&mut *lock(&reports.done));
    if !done.is_empty() {
        let left: Vec<i64> = done
            .iter()
            .filter(|(_, removed)| !removed)
            .map(|(id, _)| *id)
            .collect();
        if !left.is_empty()
            && let Err(e) = daemon.store.statuses_sent(&left).await
        {
            lock(&reports.done).extend(done);
            return Err(e);
        }
        let mut in_flight = lock(&reports.in_flight);
        for (id, _) in &done {
            in_flight.remove(id);
        }
    }
    let entries = daemon.store.unsent_statuses(0, OUTBOX_BATCH).await?;
    let _gate = reports.gate.lock().await;
    let mut destinations: HashMap<RunId, Destination> = HashMap::new();
    let mut nowhere = Vec::new();
    for entry in entries {
        if lock(&reports.in_flight).contains(&entry.id) {
            continue;
        }
        let Some(change) = Change::of(entry.status, entry.attempts, entry.reason.as_deref()) else {
            nowhere.push(entry.id);
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = destinations.entry(entry.run) {
            slot.insert(destination(daemon, entry.run).await);
        }
        match &destinations[&entry.run] {
            Destination::To(target) => {
                lock(&reports.in_flight).insert(entry.id);
                enqueue(
                    daemon,
                    entry.run,
                    entry.key,
                    (**target).clone(),
                    Outgoing {
                        id: entry.id,
                        change,
                    },
                );
            }
            Destination::Nowhere => nowhere.push(entry.id),
            Destination::NotYet => {}
        }
    }
    if !nowhere.is_empty() {
        daemon.store.statuses_sent(&nowhere).await?;
    }
    Ok(())
}

fn enqueue(daemon: &Arc<Daemon>, run: RunId, key: String, target: Target, out: Outgoing) {
    let mut jobs = lock(&daemon.reports.jobs);
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
    if let Err(mpsc::error::SendError(out)) = sender.send(out) {
        // Its worker just ended (the job had finished): a new one.
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(out);
        tokio::spawn(job_reports(daemon.clone(), run, key.clone(), target, rx));
        jobs.insert((run, key), tx);
    }
}

/// Builds and sends one change's report unless it would take the job's
/// status back; `sent` is where the forge last heard the job was. A forge
/// that cannot take it now (unreachable, rate limiting, failing) is asked
/// again, with backoff, for as long as the daemon runs: the job's later
/// statuses wait behind it, and a daemon stopped meanwhile sends it when
/// it is back. A status the forge refuses for good is logged and dropped.
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
    let mut pause = Duration::from_secs(1);
    loop {
        let report = match build_patiently(daemon, run, key, target, change).await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(%run, job = %key, error = %e, "cannot build a status report");
                return;
            }
        };
        match try_send(daemon, forge, &report).await {
            Ok(()) => {
                *sent = Some(position);
                return;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(repository = %report.repo.full_name, job = %report.name, error = %chain(&e), retry_in = ?pause, "the forge cannot take a status now; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
            Err(e) => {
                tracing::warn!(repository = %report.repo.full_name, job = %report.name, error = %chain(&e), "the forge refused a status");
                return;
            }
        }
    }
}

/// One job's reports, in order.
async fn job_reports(
    daemon: Arc<Daemon>,
    run: RunId,
    key: String,
    target: Target,
    mut changes: mpsc::UnboundedReceiver<Outgoing>,
) {
    let reports = &daemon.reports;
    let job = (run, key.clone());
    let mut sent = lock(&reports.positions).get(&job).copied();
    // Each entry leaves the outbox before the job's next one is sent: a
    // daemon killed in between sends again after its restart only the
    // last status the forge heard of the job (the same state, not one it
    // has moved past: a batch of removals once sent in_progress, queued,
    // in_progress after a kill).
    let one = async |out: Outgoing, sent: &mut Option<Position>| {
        report_one(&daemon, run, &key, &target, &out.change, sent).await;
        if let Some(position) = *sent {
            let mut positions = lock(&reports.positions);
            if positions.len() >= MAX_POSITIONS {
                positions.clear();
            }
            positions.insert(job.clone(), position);
        }
        let removed = daemon.store.statuses_sent(&[out.id]).await.is_ok();
        reports.finished(out.id, removed);
    };
    while let Some(out) = changes.recv().await {
        let last = matches!(out.change, Change::Finished(..));
        one(out, &mut sent).await;
        if last && changes.is_empty() {
            lock(&reports.jobs).remove(&job);
            // What arrived between the check and the removal still goes out.
            while let Ok(out) = changes.try_recv() {
                one(out, &mut sent).await;
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
