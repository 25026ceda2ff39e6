//! Scheduling: which pending jobs may be queued, which must be skipped,
//! and when a run is over. An index per run keeps this cheap (see
//! [`Engine::schedule`]).

use std::collections::{HashMap, HashSet};

use super::{Engine, EngineError, EngineEvent, lock, now_ms};
use crate::store::{Job, JobId, JobStatus, RunId, RunStatus};

impl Engine {
    /// Asks the scheduler task to look at a run soon. Jobs that end close
    /// together share one look.
    pub(super) fn schedule_soon(&self, run: RunId) {
        lock(&self.inner.to_schedule).insert(run);
        self.inner.schedule_wake.notify_one();
    }

    pub(super) async fn scheduler(&self) {
        loop {
            self.inner.schedule_wake.notified().await;
            self.schedule_pending().await;
        }
    }

    pub(super) async fn schedule_pending(&self) {
        let runs: Vec<RunId> = lock(&self.inner.to_schedule).drain().collect();
        for run in runs {
            if let Err(e) = self.schedule(run).await {
                tracing::error!(run = %run, error = %crate::util::error_chain(&e), "scheduling failed");
            }
        }
    }

    /// Queues jobs whose `needs` succeeded, skips jobs whose `needs` did
    /// not, and finishes the run when every job is final.
    ///
    /// The run's index (its pending jobs, who waits for which name, counts
    /// per name) is read from the store once and then kept up to date from
    /// the job ends this engine sees (`EngineEvent::JobFinished`): a job's
    /// end costs the evaluation of the jobs that need it, not a read of the
    /// whole run. Ends this engine does not see (another host's) reach the
    /// index when it is read again, every half lease (`refresh_indexes`).
    pub(super) async fn schedule(&self, run: RunId) -> Result<(), EngineError> {
        let mut indexes = self.inner.indexes.lock().await;
        let result = self.schedule_with(run, &mut indexes).await;
        if result.is_err() {
            // Part of a look may have been applied: read the run afresh.
            indexes.remove(&run);
        }
        result
    }

    async fn schedule_with(
        &self,
        run: RunId,
        indexes: &mut HashMap<RunId, RunIndex>,
    ) -> Result<(), EngineError> {
        let store = &self.inner.store;
        let fresh = !indexes.contains_key(&run);
        if fresh {
            let jobs = store.jobs(run).await?;
            indexes.insert(run, RunIndex::of(&jobs));
        }
        let Some(index) = indexes.get_mut(&run) else {
            return Ok(());
        };
        // The first look evaluates every pending job; later ones only those
        // waiting for a name whose job ended.
        let mut candidates: Vec<JobId> = if fresh {
            index.pending.keys().copied().collect()
        } else {
            Vec::new()
        };
        loop {
            let ended: Vec<(String, JobStatus)> =
                lock(&self.inner.ended).remove(&run).unwrap_or_default();
            for (key, status) in ended {
                candidates.extend(index.ended(&key, status));
            }
            if lock(&self.inner.cancelled_runs).contains(&run) && !index.pending.is_empty() {
                let all: Vec<JobId> = index.pending.keys().copied().collect();
                store
                    .transition_jobs(
                        &all,
                        &[JobStatus::Pending],
                        JobStatus::Cancelled,
                        Some("cancelled"),
                    )
                    .await?;
                index.forget(&all);
                candidates.clear();
            }
            if candidates.is_empty() {
                break;
            }
            candidates.sort_unstable();
            candidates.dedup();
            let mut to_queue: Vec<(JobId, String, String)> = Vec::new();
            for id in std::mem::take(&mut candidates) {
                let Some(job) = index.pending.get(&id) else {
                    continue;
                };
                if let Some(reason) = job.needs.iter().find_map(|n| index.blocker(n)) {
                    let key = job.key.clone();
                    index.forget(&[id]);
                    if store
                        .transition_job(
                            id,
                            &[JobStatus::Pending],
                            JobStatus::Skipped,
                            Some(&reason),
                        )
                        .await?
                    {
                        // Counted at the loop's next turn, through `ended`:
                        // a skip may skip what needs it.
                        self.emit(EngineEvent::JobFinished {
                            run,
                            key,
                            status: JobStatus::Skipped,
                            reason: Some(reason),
                        });
                    }
                } else if job.needs.iter().all(|n| index.succeeded(n)) {
                    to_queue.push((id, job.key.clone(), job.label.clone()));
                }
            }
            let ids: Vec<JobId> = to_queue.iter().map(|(id, _, _)| *id).collect();
            // Not pending any more either way: queued now, or moved by
            // someone else (another engine's scheduler, a cancel).
            index.forget(&ids);
            let queued: HashSet<JobId> = store
                .transition_jobs(&ids, &[JobStatus::Pending], JobStatus::Queued, None)
                .await?
                .into_iter()
                .collect();
            let to_queue: Vec<_> = to_queue
                .into_iter()
                .filter(|(id, _, _)| queued.contains(id))
                .collect();
            let batch: Vec<(RunId, JobId, &str, super::Lane)> = to_queue
                .iter()
                .map(|(id, _, label)| (run, *id, label.as_str(), super::Lane::Fresh))
                .collect();
            // Queued in the store now: said before the messages go out, so
            // that no engine's `JobStarted` for them can come first.
            for (_, key, _) in &to_queue {
                self.emit(EngineEvent::JobQueued {
                    run,
                    key: key.clone(),
                });
            }
            self.publish_all(&batch).await?;
        }
        // While this engine runs one of its jobs, the run is not over;
        // that attempt's end schedules the run again.
        if lock(&self.inner.live).values().any(|l| l.run == run) {
            return Ok(());
        }
        if !store.has_unfinished_jobs(run).await?
            && let Some(r) = store.run(run).await?
            && r.status == RunStatus::Running
        {
            let jobs = store.jobs(run).await?;
            let final_status = if jobs.iter().any(|j| j.status == JobStatus::Cancelled) {
                RunStatus::Cancelled
            } else if jobs.iter().all(|j| j.status == JobStatus::Succeeded) {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            };
            store.finish_run(run, final_status, now_ms()).await?;
            indexes.remove(&run);
            lock(&self.inner.ended).remove(&run);
            lock(&self.inner.cancelled_runs).remove(&run);
            self.inner.run_finished.notify_waiters();
            self.emit(EngineEvent::RunFinished {
                run,
                status: final_status,
            });
        }
        Ok(())
    }

    /// Drops every run's index, so that the next look reads it from the
    /// store again (job ends of other hosts), and looks at those runs.
    pub(super) async fn refresh_indexes(&self) {
        let runs: Vec<RunId> = self
            .inner
            .indexes
            .lock()
            .await
            .drain()
            .map(|(r, _)| r)
            .collect();
        for run in runs {
            self.schedule_soon(run);
        }
    }
}

/// What the scheduler knows of a run: its pending jobs, which of them wait
/// for each name, and the jobs of each name by outcome. `needs "test"`
/// waits for every expansion of `test` (see `solstice_kdl::plan`).
pub(super) struct RunIndex {
    pending: HashMap<JobId, PendingJob>,
    /// Pending jobs by the names they need.
    waiting_on: HashMap<String, Vec<JobId>>,
    groups: HashMap<String, Group>,
    /// Jobs whose end is counted in `groups`, by key.
    counted: HashSet<String>,
}

struct PendingJob {
    key: String,
    label: String,
    needs: Vec<String>,
}

#[derive(Default)]
struct Group {
    total: usize,
    succeeded: usize,
    /// An expansion that ended without success.
    failed: Option<String>,
}

impl RunIndex {
    fn of(jobs: &[Job]) -> Self {
        let mut index = RunIndex {
            pending: HashMap::new(),
            waiting_on: HashMap::new(),
            groups: HashMap::new(),
            counted: HashSet::new(),
        };
        for job in jobs {
            let name = solstice_kdl::matrix::base_of(&job.key);
            index.groups.entry(name.to_string()).or_default().total += 1;
            if job.status == JobStatus::Pending {
                for need in &job.needs {
                    index
                        .waiting_on
                        .entry(need.clone())
                        .or_default()
                        .push(job.id);
                }
                index.pending.insert(
                    job.id,
                    PendingJob {
                        key: job.key.clone(),
                        label: job.label.clone(),
                        needs: job.needs.clone(),
                    },
                );
            }
            index.count(&job.key, job.status);
        }
        index
    }

    /// Counts a job's end; returns the pending jobs to look at again.
    fn ended(&mut self, key: &str, status: JobStatus) -> Vec<JobId> {
        if !self.count(key, status) {
            return Vec::new();
        }
        let name = solstice_kdl::matrix::base_of(key);
        self.waiting_on.get(name).cloned().unwrap_or_default()
    }

    /// Counts a final status in its name's group, once per job; `false`
    /// when there was nothing new to count.
    fn count(&mut self, key: &str, status: JobStatus) -> bool {
        let succeeded = match status {
            JobStatus::Succeeded => true,
            JobStatus::Failed | JobStatus::Cancelled | JobStatus::Skipped => false,
            _ => return false,
        };
        if !self.counted.insert(key.to_string()) {
            return false;
        }
        let g = self
            .groups
            .entry(solstice_kdl::matrix::base_of(key).to_string())
            .or_default();
        if succeeded {
            g.succeeded += 1;
        } else if g.failed.is_none() {
            g.failed = Some(key.to_string());
        }
        true
    }

    /// Forgets pending jobs (queued, skipped or cancelled now).
    fn forget(&mut self, ids: &[JobId]) {
        for id in ids {
            if let Some(job) = self.pending.remove(id) {
                for need in &job.needs {
                    if let Some(w) = self.waiting_on.get_mut(need) {
                        w.retain(|x| x != id);
                    }
                }
            }
        }
    }

    /// Why a job that needs `name` can never run, if it cannot.
    fn blocker(&self, name: &str) -> Option<String> {
        match self.groups.get(name) {
            None => Some(format!("needs `{name}`, which is not a job of this run")),
            Some(g) => g
                .failed
                .as_ref()
                .map(|key| format!("needs `{key}`, which did not succeed")),
        }
    }

    fn succeeded(&self, name: &str) -> bool {
        self.groups
            .get(name)
            .is_some_and(|g| g.total > 0 && g.succeeded == g.total)
    }
}
