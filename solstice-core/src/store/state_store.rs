//! The [`StateStore`] trait and its one write path, [`StateStore::apply`].

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Attempt, AttemptId, AttemptStatus, Job, JobId, JobStatus, LogChunk, NewJob, Run, RunId,
    RunStatus, StepRecord, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

/// One change in a batch for [`StateStore::apply`]: the writes of the
/// engine's hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Claims a `queued` job: creates its next attempt (running, leased to
    /// `holder` until `lease_until`, with the hash of its token) and marks
    /// the job running. Results in [`Applied::Claimed`].
    Claim {
        /// The job.
        job: JobId,
        /// Lease holder.
        holder: String,
        /// Lease end (Unix ms).
        lease_until: i64,
        /// Hash of the attempt's token.
        token_hash: String,
        /// Unix ms.
        now: i64,
    },
    /// Records which VM runs an attempt.
    SetVm {
        /// The attempt.
        attempt: AttemptId,
        /// Its VM.
        vm_id: String,
    },
    /// Inserts or updates a step (`started_at` once set is kept).
    Step(StepRecord),
    /// Appends log chunks.
    Logs(Vec<LogChunk>),
    /// Ends a running attempt and, only if it was still running, moves its
    /// job from `running` to `job_status`. Results in
    /// [`Applied::Finished`].
    Finish {
        /// The attempt.
        attempt: AttemptId,
        /// Its final status.
        status: AttemptStatus,
        /// Why, for the attempt.
        reason: Option<String>,
        /// Unix ms.
        now: i64,
        /// The attempt's job.
        job: JobId,
        /// The job's next status (`queued` again for a retry).
        job_status: JobStatus,
        /// Why, for the job.
        job_reason: Option<String>,
        /// Attempts added to the job's allowance in the same write (1 when
        /// the attempt was lost through no fault of the job: its engine
        /// died), so that "lost and queued again" is one atomic change.
        extra_attempts: u32,
    },
    /// `change` (a [`Change::Step`], [`Change::Logs`], [`Change::SetVm`]
    /// or [`Change::Finish`] of `attempt` alone) applied only if `guard`
    /// holds for `attempt` when it is applied, checked in the same
    /// transaction as the write (and, on a store shared by many hosts,
    /// with the attempt's row locked against other writers until the
    /// batch commits). When it does not hold, nothing of `change` is
    /// applied and its result is [`Applied::Fenced`].
    ///
    /// This is the lease fence: an engine writes its attempts as
    /// [`Guard::Holder`], so a host that lost its lease (paused past it,
    /// cut off from the store) cannot write into an attempt that was
    /// meanwhile declared lost and run again elsewhere; recovery ends an
    /// attempt as [`Guard::Expired`], so it never takes one whose holder
    /// has just renewed it.
    Guarded {
        /// The attempt every write of `change` is for.
        attempt: AttemptId,
        /// What must hold.
        guard: Guard,
        /// The write.
        change: Box<Change>,
    },
}

/// What a [`Change::Guarded`] write needs of its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Guard {
    /// The writer holds the attempt's lease at `now`: the attempt is
    /// running, its holder is `holder`, and its lease ends at or after
    /// `now`. (Every claim makes a new attempt, so the attempt's id is the
    /// lease's generation: a lease once lost is never held again.)
    Holder {
        /// The lease holder ([`Change::Claim`]'s `holder`).
        holder: String,
        /// Unix ms, by the writer's clock.
        now: i64,
    },
    /// The attempt is running and its lease ended before `now`: what
    /// recovery needs before it declares an attempt lost.
    Expired {
        /// Unix ms, by the writer's clock.
        now: i64,
    },
}

impl Guard {
    /// Whether the guard holds for an attempt in `status`, held by
    /// `holder` until `lease_until` (for stores that check it in memory).
    pub fn admits(&self, status: AttemptStatus, holder: &str, lease_until: i64) -> bool {
        status == AttemptStatus::Running
            && match self {
                Guard::Holder { holder: h, now } => h == holder && lease_until >= *now,
                Guard::Expired { now } => lease_until < *now,
            }
    }
}

impl Change {
    /// `self` guarded by `guard` for `attempt` ([`Change::Guarded`]).
    pub fn guarded(self, attempt: AttemptId, guard: Guard) -> Change {
        Change::Guarded {
            attempt,
            guard,
            change: Box::new(self),
        }
    }

    /// The attempts a write touches, for checking that a
    /// [`Change::Guarded`] writes only its own attempt: `None` for a change
    /// that cannot be guarded (a claim, a guarded change).
    pub fn attempts_written(&self) -> Option<Vec<AttemptId>> {
        match self {
            Change::Step(step) => Some(vec![step.attempt_id]),
            Change::Logs(chunks) => Some(chunks.iter().map(|c| c.attempt_id).collect()),
            Change::SetVm { attempt, .. } | Change::Finish { attempt, .. } => Some(vec![*attempt]),
            Change::Claim { .. } | Change::Guarded { .. } => None,
        }
    }
}

/// What one [`Change`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// A claim: the job as claimed and its new attempt, or `None` if the
    /// job was not queued or had no attempts left (or an earlier claim in
    /// the same batch took it).
    Claimed(Option<Box<(Job, Attempt)>>),
    /// A finish: `true` if the attempt was running and is now ended.
    Finished(bool),
    /// A [`Change::Guarded`] whose guard did not hold: nothing of it was
    /// applied.
    Fenced,
    /// Any other change.
    Done,
}

/// What the engine records. Every method is safe to call from several
/// engines at once: state changes are compare-and-set, so a race has one
/// winner and the others get `false` or [`StoreError::Conflict`].
///
/// The hot-path writes go through one method, [`StateStore::apply`]; the
/// single-change methods below it ([`StateStore::claim`],
/// [`StateStore::put_step`], ...) are conveniences on top of it that a store
/// need not implement. Check an implementation with the conformance suite
/// (`solstice_core::testing::store::run_all`, the `testing` feature).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Inserts a run and all its jobs (status `pending`) atomically.
    async fn create_run(
        &self,
        name: &str,
        source: &str,
        jobs: &[NewJob],
        now: i64,
    ) -> Result<RunId>;
    /// A run.
    async fn run(&self, id: RunId) -> Result<Option<Run>>;
    /// Every run not yet final, oldest first.
    async fn running_runs(&self) -> Result<Vec<Run>>;
    /// Sets a run's final status.
    async fn finish_run(&self, id: RunId, status: RunStatus, now: i64) -> Result<()>;
    /// A run's jobs in workflow order.
    async fn jobs(&self, run: RunId) -> Result<Vec<Job>>;
    /// A job.
    async fn job(&self, id: JobId) -> Result<Option<Job>>;
    /// A run's job by its key (the expanded id). The default scans
    /// [`StateStore::jobs`]; a store should look it up (a run of a thousand
    /// jobs reported job by job otherwise reads a million rows).
    async fn job_by_key(&self, run: RunId, key: &str) -> Result<Option<Job>> {
        Ok(self.jobs(run).await?.into_iter().find(|j| j.key == key))
    }
    /// A run's jobs in one status, in workflow order. The default filters
    /// [`StateStore::jobs`].
    async fn jobs_in_status(&self, run: RunId, status: JobStatus) -> Result<Vec<Job>> {
        let mut jobs = self.jobs(run).await?;
        jobs.retain(|j| j.status == status);
        Ok(jobs)
    }
    /// True while a job of the run is not final. The default reads
    /// [`StateStore::jobs`]; a database stops at the first.
    async fn has_unfinished_jobs(&self, run: RunId) -> Result<bool> {
        Ok(self.jobs(run).await?.iter().any(|j| !j.status.is_final()))
    }
    /// Every `queued` job of every run, oldest run first: what the queue
    /// should hold a message for (engines reconcile the two).
    async fn queued_jobs(&self) -> Result<Vec<Job>>;
    /// Moves a job to `to` if its status is one of `from`; `false` if not.
    async fn transition_job(
        &self,
        id: JobId,
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<bool>;
    /// [`StateStore::transition_job`] for many jobs at once (one
    /// compare-and-set per job); returns the ids of the jobs that moved, in
    /// the order asked.
    async fn transition_jobs(
        &self,
        ids: &[JobId],
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<Vec<JobId>> {
        let mut moved = Vec::new();
        for &id in ids {
            if self.transition_job(id, from, to, reason).await? {
                moved.push(id);
            }
        }
        Ok(moved)
    }
    /// Extends a running attempt's lease to `lease_until`; `false` if it
    /// is not running, not held by `holder`, or its lease already ended
    /// before `now` (a lease that ran out is lost, even before recovery
    /// has noticed: its attempt may be declared lost at any moment).
    async fn renew_lease(
        &self,
        attempt: AttemptId,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool>;
    /// Running attempts whose lease expired before `now`.
    async fn expired_attempts(&self, now: i64) -> Result<Vec<Attempt>>;
    /// Running attempts (for reaping VMs no live job owns).
    async fn running_attempts(&self) -> Result<Vec<Attempt>>;
    /// A job's attempts, oldest first.
    async fn attempts(&self, job: JobId) -> Result<Vec<Attempt>>;
    /// An attempt.
    async fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>>;
    /// The attempt a token (by hash) belongs to.
    async fn attempt_by_token(&self, token_hash: &str) -> Result<Option<Attempt>>;
    /// Marks the token used; `true` only the first time (tokens are single-use).
    async fn use_token(&self, attempt: AttemptId) -> Result<bool>;
    /// An attempt's steps in order.
    async fn steps(&self, attempt: AttemptId) -> Result<Vec<StepRecord>>;
    /// An attempt's log in order.
    async fn logs(&self, attempt: AttemptId) -> Result<Vec<LogChunk>>;
    /// The end of an attempt's log, in order: the fewest last chunks that
    /// hold at least `bytes` bytes (all of them when the log is shorter),
    /// for pages that show a log's tail. The default reads the whole log;
    /// a store should read only what it returns.
    async fn log_tail(&self, attempt: AttemptId, bytes: usize) -> Result<Vec<LogChunk>> {
        let mut all = self.logs(attempt).await?;
        let mut held = 0usize;
        let mut first = all.len();
        while first > 0 && held < bytes {
            first -= 1;
            held += all[first].data.len();
        }
        Ok(all.split_off(first))
    }

    /// Applies many changes, in order, with one result per change: the
    /// engine's group commit, and the only write path of the hot writes.
    /// The result is as if the changes were applied one by one in order
    /// (a second claim of a job in the batch loses; a second finish of an
    /// attempt finds it ended).
    async fn apply(&self, changes: &[Change]) -> Result<Vec<Applied>>;
    /// True if [`StateStore::apply`] applies all of a batch or none of it.
    /// Only then may a failed batch be applied again one change at a time
    /// (so one bad change fails only itself); otherwise every change of a
    /// failed batch fails.
    fn atomic_apply(&self) -> bool {
        false
    }

    /// [`Change::Claim`] alone: the new attempt, or
    /// [`StoreError::Conflict`] if the job is not queued or has no attempts
    /// left.
    async fn claim(
        &self,
        job: JobId,
        holder: &str,
        lease_until: i64,
        token_hash: &str,
        now: i64,
    ) -> Result<Attempt> {
        let change = Change::Claim {
            job,
            holder: holder.to_string(),
            lease_until,
            token_hash: token_hash.to_string(),
            now,
        };
        match one(self.apply(std::slice::from_ref(&change)).await?)? {
            Applied::Claimed(Some(claimed)) => Ok(claimed.1),
            Applied::Claimed(None) => Err(StoreError::Conflict(format!(
                "job {job} is not queued or has no attempts left"
            ))),
            other => Err(unexpected(&change, &other)),
        }
    }
    /// [`Change::SetVm`] alone.
    async fn set_vm(&self, attempt: AttemptId, vm_id: &str) -> Result<()> {
        self.apply(&[Change::SetVm {
            attempt,
            vm_id: vm_id.to_string(),
        }])
        .await
        .map(drop)
    }
    /// [`Change::Step`] alone.
    async fn put_step(&self, step: &StepRecord) -> Result<()> {
        self.apply(&[Change::Step(step.clone())]).await.map(drop)
    }
    /// [`Change::Logs`] alone.
    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()> {
        self.apply(&[Change::Logs(chunks.to_vec())]).await.map(drop)
    }
    /// [`Change::Finish`] alone: `true` if the attempt was running and is
    /// now ended.
    async fn finish(&self, finish: Change) -> Result<bool> {
        match one(self.apply(std::slice::from_ref(&finish)).await?)? {
            Applied::Finished(ended) => Ok(ended),
            other => Err(unexpected(&finish, &other)),
        }
    }
}

fn one(applied: Vec<Applied>) -> Result<Applied> {
    let n = applied.len();
    let mut it = applied.into_iter();
    match (it.next(), n) {
        (Some(a), 1) => Ok(a),
        _ => Err(StoreError::Corrupt(format!(
            "a batch of one change gave {n} results"
        ))),
    }
}

fn unexpected(change: &Change, applied: &Applied) -> StoreError {
    StoreError::Corrupt(format!("{change:?} gave {applied:?}"))
}

/// A shared store is a store: wrappers and engines can hold an `Arc`.
#[async_trait]
impl<S: StateStore + ?Sized> StateStore for Arc<S> {
    async fn create_run(
        &self,
        name: &str,
        source: &str,
        jobs: &[NewJob],
        now: i64,
    ) -> Result<RunId> {
        (**self).create_run(name, source, jobs, now).await
    }
    async fn run(&self, id: RunId) -> Result<Option<Run>> {
        (**self).run(id).await
    }
    async fn running_runs(&self) -> Result<Vec<Run>> {
        (**self).running_runs().await
    }
    async fn finish_run(&self, id: RunId, status: RunStatus, now: i64) -> Result<()> {
        (**self).finish_run(id, status, now).await
    }
    async fn jobs(&self, run: RunId) -> Result<Vec<Job>> {
        (**self).jobs(run).await
    }
    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        (**self).job(id).await
    }
    async fn job_by_key(&self, run: RunId, key: &str) -> Result<Option<Job>> {
        (**self).job_by_key(run, key).await
    }
    async fn jobs_in_status(&self, run: RunId, status: JobStatus) -> Result<Vec<Job>> {
        (**self).jobs_in_status(run, status).await
    }
    async fn has_unfinished_jobs(&self, run: RunId) -> Result<bool> {
        (**self).has_unfinished_jobs(run).await
    }
    async fn queued_jobs(&self) -> Result<Vec<Job>> {
        (**self).queued_jobs().await
    }
    async fn transition_job(
        &self,
        id: JobId,
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        (**self).transition_job(id, from, to, reason).await
    }
    async fn transition_jobs(
        &self,
        ids: &[JobId],
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<Vec<JobId>> {
        (**self).transition_jobs(ids, from, to, reason).await
    }
    async fn renew_lease(
        &self,
        attempt: AttemptId,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool> {
        (**self)
            .renew_lease(attempt, holder, now, lease_until)
            .await
    }
    async fn expired_attempts(&self, now: i64) -> Result<Vec<Attempt>> {
        (**self).expired_attempts(now).await
    }
    async fn running_attempts(&self) -> Result<Vec<Attempt>> {
        (**self).running_attempts().await
    }
    async fn attempts(&self, job: JobId) -> Result<Vec<Attempt>> {
        (**self).attempts(job).await
    }
    async fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>> {
        (**self).attempt(id).await
    }
    async fn attempt_by_token(&self, token_hash: &str) -> Result<Option<Attempt>> {
        (**self).attempt_by_token(token_hash).await
    }
    async fn use_token(&self, attempt: AttemptId) -> Result<bool> {
        (**self).use_token(attempt).await
    }
    async fn steps(&self, attempt: AttemptId) -> Result<Vec<StepRecord>> {
        (**self).steps(attempt).await
    }
    async fn logs(&self, attempt: AttemptId) -> Result<Vec<LogChunk>> {
        (**self).logs(attempt).await
    }
    async fn log_tail(&self, attempt: AttemptId, bytes: usize) -> Result<Vec<LogChunk>> {
        (**self).log_tail(attempt, bytes).await
    }
    async fn apply(&self, changes: &[Change]) -> Result<Vec<Applied>> {
        (**self).apply(changes).await
    }
    fn atomic_apply(&self) -> bool {
        (**self).atomic_apply()
    }
}
