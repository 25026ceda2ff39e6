//! Recovery: what an engine does at start and every half lease so that
//! nothing is stranded: expired leases, VMs no live attempt owns, runs to
//! schedule, and queued jobs without a queue message.

use std::collections::HashSet;

use super::{Engine, EngineError, EngineEvent, lock, now_ms};
use crate::store::{Applied, AttemptStatus, Change, Guard, JobId, JobStatus, LogChunk, LogStream};

impl Engine {
    /// Marks attempts with expired leases as lost and queues their jobs
    /// again; then destroys VMs that no running attempt owns.
    pub(super) async fn recover(&self) -> Result<(), EngineError> {
        self.recover_leases().await?;
        self.reap().await
    }

    /// Marks attempts with expired leases as lost and queues their jobs
    /// again.
    pub(super) async fn recover_leases(&self) -> Result<(), EngineError> {
        let store = &self.inner.store;
        for attempt in store.expired_attempts(now_ms()).await? {
            let reason = format!(
                "lease expired: engine `{}` stopped renewing it",
                attempt.holder
            );
            // One write: the attempt is lost and the job queued again with
            // one more attempt (the system's failure, not the job's), unless
            // it was lost too often. A crash before the publish below leaves
            // a queued job without a message, which `reconcile_queue`
            // repairs.
            let Some(job) = store.job(attempt.job_id).await? else {
                continue;
            };
            let (job_status, job_reason, extra_attempts) = match self.lost_again(&job).await? {
                super::attempt::LostAgain::Retry => (JobStatus::Queued, None, 1),
                super::attempt::LostAgain::TooOften(n) => (
                    JobStatus::Failed,
                    Some(format!("{reason} (lost {n} times)")),
                    0,
                ),
            };
            // Only if the lease is still over when the write lands (its
            // holder did not renew it meanwhile): checked with the attempt
            // locked, so no write of the holder comes between.
            let ended = self
                .inner
                .recorder
                .apply(
                    Change::Finish {
                        attempt: attempt.id,
                        status: AttemptStatus::Lost,
                        reason: Some(reason.clone()),
                        now: now_ms(),
                        job: attempt.job_id,
                        job_status,
                        job_reason: job_reason.clone(),
                        extra_attempts,
                    }
                    .guarded(attempt.id, Guard::Expired { now: now_ms() }),
                )
                .await?;
            if ended != Applied::Finished(true) {
                continue;
            }
            // The attempt's log ends with why, as a live attempt's does.
            // Numbered after its last chunk: its holder's writes are refused
            // from the end just written on, so nothing else is numbered
            // after that chunk.
            let seq = match store.log_tail(attempt.id, 1).await {
                Ok(chunks) => chunks.last().map_or(0, |c| c.seq + 1),
                Err(_) => 0,
            };
            let line = LogChunk {
                attempt_id: attempt.id,
                seq,
                step: None,
                stream: LogStream::System,
                data: format!("[solstice] attempt {}: {reason}\n", attempt.number).into_bytes(),
                at: now_ms(),
            };
            if let Err(e) = store.append_logs(&[line]).await {
                tracing::warn!(error = %crate::util::error_chain(&e), "cannot add the reason to a lost attempt's log");
            }
            if job_status == JobStatus::Failed {
                tracing::warn!(job = %job.key, attempt = attempt.number, "{reason}; lost too often, the job fails");
                self.emit(EngineEvent::JobFinished {
                    run: job.run_id,
                    key: job.key.clone(),
                    status: JobStatus::Failed,
                    reason: job_reason,
                });
                self.schedule_soon(job.run_id);
                continue;
            }
            tracing::warn!(job = %job.key, attempt = attempt.number, "{reason}; running the job again");
            self.emit(EngineEvent::JobRetrying {
                run: job.run_id,
                key: job.key.clone(),
                attempt: attempt.number,
                reason,
            });
            self.publish(job.run_id, job.id, &job.label, super::Lane::Retry)
                .await?;
        }
        Ok(())
    }

    /// Destroys VMs that no running attempt owns.
    pub(super) async fn reap(&self) -> Result<(), EngineError> {
        let store = &self.inner.store;
        // List the VMs first, then read who is running: a VM exists only
        // after its attempt was claimed, so a VM in the list has its owner in
        // the later read unless that attempt really ended. (The other order
        // reaped VMs of jobs claimed between the two reads; found by the
        // 10,000-job benchmark.)
        let vms = match self.inner.provider.list().await {
            Ok(vms) => vms,
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "cannot list VMs to reap");
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
        // What this engine holds in memory counts as existing, whatever the
        // store says: its VMs by name and id, and, while it provisions one,
        // any VM whose owner mark cannot be read yet.
        let own = lock(&self.inner.own_vms).clone();
        let provisioning = self
            .inner
            .provisioning
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0;
        let held = |vm: &solstice_vmm::VmInfo| {
            owners.contains(&vm.owner)
                || own.contains(&vm.id.0)
                || (provisioning && vm.owner.trim().is_empty())
        };
        let reapable = |vm: &solstice_vmm::VmInfo| !held(vm);
        for vm in vms.into_iter().filter(reapable) {
            tracing::info!(vm = %vm.id, owner = %vm.owner, "reaping a VM no running attempt owns");
            if let Err(e) = self.inner.provider.destroy(&vm.id).await {
                tracing::warn!(vm = %vm.id, error = %crate::util::error_chain(&e), "reaping failed");
            }
        }
        Ok(())
    }

    /// Publishes queued jobs that may have no message. At start (`seen`
    /// is `None`) that is every queued job. Later, a job is published again
    /// only when it was already queued at the previous pass and this engine
    /// has had a free slot since: a message for it would have been taken.
    /// Returns the queued jobs seen, for the next pass.
    pub(super) async fn reconcile_queue(
        &self,
        seen: Option<&HashSet<JobId>>,
    ) -> Result<HashSet<JobId>, EngineError> {
        let queued = self.inner.store.queued_jobs().await?;
        let idle = self.inner.jobs.len() < self.inner.config.capacity.max(1)
            && self
                .inner
                .idle_since_reconcile
                .swap(true, std::sync::atomic::Ordering::SeqCst);
        let mut now = HashSet::with_capacity(queued.len());
        let mut stranded_jobs = Vec::new();
        // Only the labels this engine serves: another label's queue is
        // another fleet's to drain.
        for job in queued.into_iter().filter(|j| self.serves(&j.label)) {
            now.insert(job.id);
            let stranded = match seen {
                None => true,
                Some(seen) => idle && seen.contains(&job.id),
            };
            if stranded {
                if seen.is_some() {
                    tracing::warn!(job = %job.key, "a queued job had no message; publishing it again");
                }
                stranded_jobs.push(job);
            }
        }
        let batch: Vec<_> = stranded_jobs
            .iter()
            .map(|j| (j.run_id, j.id, j.label.as_str(), super::Lane::of(j)))
            .collect();
        self.publish_all(&batch).await?;
        Ok(now)
    }
}
