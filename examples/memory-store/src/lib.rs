//! A [`StateStore`] kept in memory, written the way a user of
//! `solstice-core` would write one: from the outside, against the public
//! trait and records, with `solstice-core`'s `store` feature only (no sqlx,
//! no protocol toolchain). `tests/conformance.rs` runs the conformance
//! suite against it.
//!
//! Everything sits behind one lock, so [`StateStore::apply`] is atomic and
//! every compare-and-set has one winner. Nothing survives the process: a
//! real store would keep the same shape over its database.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use solstice_core::store::{
    Applied, Attempt, AttemptId, AttemptStatus, Change, Job, JobId, JobStatus, LogChunk, NewJob,
    Run, RunId, RunStatus, StateStore, StepRecord, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

/// An attempt and what the store keeps about it beside the record.
#[derive(Debug)]
struct AttemptRow {
    attempt: Attempt,
    token_hash: String,
    token_used: bool,
    steps: BTreeMap<u32, StepRecord>,
    /// By sequence number: in order, and a chunk stored twice is found in
    /// O(log n).
    logs: BTreeMap<i64, LogChunk>,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    runs: BTreeMap<RunId, Run>,
    jobs: BTreeMap<JobId, Job>,
    attempts: BTreeMap<AttemptId, AttemptRow>,
}

impl State {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut Job> {
        self.jobs
            .get_mut(&id)
            .ok_or_else(|| StoreError::Conflict(format!("no job {id}")))
    }

    fn attempt_mut(&mut self, id: AttemptId) -> Result<&mut AttemptRow> {
        self.attempts
            .get_mut(&id)
            .ok_or_else(|| StoreError::Conflict(format!("no attempt {id}")))
    }

    /// Everything that can make a batch fail, found before anything of it
    /// is applied: so a batch is all or nothing without undoing. (A batch
    /// never refers to an attempt it claims itself: the id is not known
    /// before the claim.)
    fn check(&self, changes: &[Change]) -> Result<()> {
        let mut new_chunks: HashSet<(AttemptId, i64)> = HashSet::new();
        for change in changes {
            self.check_one(change, &mut new_chunks)?;
        }
        Ok(())
    }

    fn check_one(&self, change: &Change, new_chunks: &mut HashSet<(AttemptId, i64)>) -> Result<()> {
        let known = |attempt: &AttemptId| {
            if self.attempts.contains_key(attempt) {
                Ok(())
            } else {
                Err(StoreError::Conflict(format!("no attempt {attempt}")))
            }
        };
        match change {
            Change::Claim { .. } => {}
            Change::SetVm { attempt, .. } => known(attempt)?,
            Change::Step(step) => known(&step.attempt_id)?,
            Change::Logs(chunks) => {
                for c in chunks {
                    known(&c.attempt_id)?;
                    let stored = self
                        .attempts
                        .get(&c.attempt_id)
                        .is_some_and(|row| row.logs.contains_key(&c.seq));
                    if stored || !new_chunks.insert((c.attempt_id, c.seq)) {
                        return Err(StoreError::Conflict(format!(
                            "log chunk {} of attempt {} is stored already",
                            c.seq, c.attempt_id
                        )));
                    }
                }
            }
            Change::Finish { attempt, job, .. } => {
                known(attempt)?;
                if !self.jobs.contains_key(job) {
                    return Err(StoreError::Conflict(format!("no job {job}")));
                }
            }
            Change::Guarded {
                attempt, change, ..
            } => {
                let written = change
                    .attempts_written()
                    .ok_or_else(|| StoreError::Invalid(format!("{change:?} cannot be guarded")))?;
                if let Some(other) = written.iter().find(|a| *a != attempt) {
                    return Err(StoreError::Invalid(format!(
                        "a write guarded for attempt {attempt} writes attempt {other}"
                    )));
                }
                // An unknown attempt is refused by the guard, not an error.
                if self.attempts.contains_key(attempt) {
                    self.check_one(change, new_chunks)?;
                }
            }
            // `Change` grows with the engine: refuse what this store
            // does not know rather than pretend it applied.
            other => {
                return Err(StoreError::Conflict(format!(
                    "this store does not know {other:?}"
                )));
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, change: &Change) -> Result<Applied> {
        Ok(match change {
            Change::Claim {
                job,
                holder,
                lease_until,
                token_hash,
                now,
            } => {
                let Some(j) = self.jobs.get_mut(job) else {
                    return Ok(Applied::Claimed(None));
                };
                if j.status != JobStatus::Queued || j.attempts >= j.max_attempts {
                    return Ok(Applied::Claimed(None));
                }
                j.status = JobStatus::Running;
                j.attempts += 1;
                let claimed = j.clone();
                let attempt = Attempt {
                    id: AttemptId::new(self.id()),
                    job_id: *job,
                    number: claimed.attempts,
                    status: AttemptStatus::Running,
                    reason: None,
                    holder: holder.clone(),
                    lease_expires_at: *lease_until,
                    vm_id: None,
                    started_at: *now,
                    finished_at: None,
                };
                self.attempts.insert(
                    attempt.id,
                    AttemptRow {
                        attempt: attempt.clone(),
                        token_hash: token_hash.clone(),
                        token_used: false,
                        steps: BTreeMap::new(),
                        logs: BTreeMap::new(),
                    },
                );
                Applied::Claimed(Some(Box::new((claimed, attempt))))
            }
            Change::SetVm { attempt, vm_id } => {
                self.attempt_mut(*attempt)?.attempt.vm_id = Some(vm_id.clone());
                Applied::Done
            }
            Change::Step(step) => {
                let row = self.attempt_mut(step.attempt_id)?;
                let started_at = row
                    .steps
                    .get(&step.index)
                    .and_then(|s| s.started_at)
                    .or(step.started_at);
                row.steps.insert(
                    step.index,
                    StepRecord {
                        started_at,
                        ..step.clone()
                    },
                );
                Applied::Done
            }
            Change::Logs(chunks) => {
                for chunk in chunks {
                    let row = self.attempt_mut(chunk.attempt_id)?;
                    row.logs.insert(chunk.seq, chunk.clone());
                }
                Applied::Done
            }
            Change::Finish {
                attempt,
                status,
                reason,
                now,
                job,
                job_status,
                job_reason,
                extra_attempts,
            } => {
                let row = self.attempt_mut(*attempt)?;
                if row.attempt.status != AttemptStatus::Running {
                    return Ok(Applied::Finished(false));
                }
                row.attempt.status = *status;
                row.attempt.reason = reason.clone();
                row.attempt.finished_at = Some(*now);
                let j = self.job_mut(*job)?;
                j.max_attempts += extra_attempts;
                if j.status == JobStatus::Running {
                    j.status = *job_status;
                    j.reason = job_reason.clone();
                }
                Applied::Finished(true)
            }
            Change::Guarded {
                attempt,
                guard,
                change,
            } => {
                let admitted = self.attempts.get(attempt).is_some_and(|row| {
                    guard.admits(
                        row.attempt.status,
                        &row.attempt.holder,
                        row.attempt.lease_expires_at,
                    )
                });
                if !admitted {
                    return Ok(Applied::Fenced);
                }
                self.apply_one(change)?
            }
            other => {
                return Err(StoreError::Conflict(format!(
                    "this store does not know {other:?}"
                )));
            }
        })
    }
}

/// The store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Changes are checked before any is made, so a panic while holding
        // the lock leaves no half-made batch behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn running_attempts_where(&self, keep: impl Fn(&Attempt) -> bool) -> Vec<Attempt> {
        self.state()
            .attempts
            .values()
            .map(|row| &row.attempt)
            .filter(|a| a.status == AttemptStatus::Running && keep(a))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn create_run(
        &self,
        name: &str,
        source: &str,
        jobs: &[NewJob],
        now: i64,
    ) -> Result<RunId> {
        let mut state = self.state();
        let run = RunId::new(state.id());
        state.runs.insert(
            run,
            Run {
                id: run,
                name: name.to_string(),
                source: source.to_string(),
                status: RunStatus::Running,
                created_at: now,
                finished_at: None,
            },
        );
        for (position, new) in jobs.iter().enumerate() {
            let id = JobId::new(state.id());
            state.jobs.insert(
                id,
                Job {
                    id,
                    run_id: run,
                    position: position as i64,
                    key: new.key.clone(),
                    label: new.label.clone(),
                    spec: new.spec.clone(),
                    needs: new.needs.clone(),
                    status: JobStatus::Pending,
                    reason: None,
                    max_attempts: new.max_attempts.max(1),
                    attempts: 0,
                },
            );
        }
        Ok(run)
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>> {
        Ok(self.state().runs.get(&id).cloned())
    }

    async fn running_runs(&self) -> Result<Vec<Run>> {
        Ok(self
            .state()
            .runs
            .values()
            .filter(|r| r.status == RunStatus::Running)
            .cloned()
            .collect())
    }

    async fn finish_run(&self, id: RunId, status: RunStatus, now: i64) -> Result<()> {
        if let Some(run) = self.state().runs.get_mut(&id) {
            run.status = status;
            run.finished_at = Some(now);
        }
        Ok(())
    }

    async fn jobs(&self, run: RunId) -> Result<Vec<Job>> {
        // Ids grow with position, so id order is workflow order.
        Ok(self
            .state()
            .jobs
            .values()
            .filter(|j| j.run_id == run)
            .cloned()
            .collect())
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.state().jobs.get(&id).cloned())
    }

    async fn queued_jobs(&self) -> Result<Vec<Job>> {
        Ok(self
            .state()
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .cloned()
            .collect())
    }

    async fn transition_job(
        &self,
        id: JobId,
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        let mut state = self.state();
        match state.jobs.get_mut(&id) {
            Some(job) if from.contains(&job.status) => {
                job.status = to;
                job.reason = reason.map(str::to_string);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn renew_lease(
        &self,
        attempt: AttemptId,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool> {
        let mut state = self.state();
        match state.attempts.get_mut(&attempt) {
            Some(row)
                if row.attempt.status == AttemptStatus::Running
                    && row.attempt.holder == holder
                    && row.attempt.lease_expires_at >= now =>
            {
                row.attempt.lease_expires_at = lease_until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn expired_attempts(&self, now: i64) -> Result<Vec<Attempt>> {
        Ok(self.running_attempts_where(|a| a.lease_expires_at < now))
    }

    async fn running_attempts(&self) -> Result<Vec<Attempt>> {
        Ok(self.running_attempts_where(|_| true))
    }

    async fn attempts(&self, job: JobId) -> Result<Vec<Attempt>> {
        let mut out: Vec<Attempt> = self
            .state()
            .attempts
            .values()
            .filter(|row| row.attempt.job_id == job)
            .map(|row| row.attempt.clone())
            .collect();
        out.sort_by_key(|a| a.number);
        Ok(out)
    }

    async fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>> {
        Ok(self.state().attempts.get(&id).map(|r| r.attempt.clone()))
    }

    async fn attempt_by_token(&self, token_hash: &str) -> Result<Option<Attempt>> {
        Ok(self
            .state()
            .attempts
            .values()
            .find(|row| row.token_hash == token_hash)
            .map(|row| row.attempt.clone()))
    }

    async fn use_token(&self, attempt: AttemptId) -> Result<bool> {
        let mut state = self.state();
        Ok(match state.attempts.get_mut(&attempt) {
            Some(row) if !row.token_used => {
                row.token_used = true;
                true
            }
            _ => false,
        })
    }

    async fn steps(&self, attempt: AttemptId) -> Result<Vec<StepRecord>> {
        Ok(self
            .state()
            .attempts
            .get(&attempt)
            .map(|row| row.steps.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn logs(&self, attempt: AttemptId) -> Result<Vec<LogChunk>> {
        Ok(self
            .state()
            .attempts
            .get(&attempt)
            .map(|row| row.logs.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn apply(&self, changes: &[Change]) -> Result<Vec<Applied>> {
        // One lock for the whole batch: nobody sees half of it, and what
        // could fail is found before anything is applied.
        let mut state = self.state();
        state.check(changes)?;
        changes.iter().map(|c| state.apply_one(c)).collect()
    }

    fn atomic_apply(&self) -> bool {
        true
    }
}
