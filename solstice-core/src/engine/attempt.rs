//! One attempt at a job: claim it, boot its VM, watch the runner, record
//! how it ended (the failure table is in the module docs of `engine`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use solstice_vmm::{VmId, VmSpec, VmState};
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

use super::token::{hash_token, new_token};
use super::{
    Engine, EngineError, EngineEvent, JobMessage, LiveAttempt, Outcome, RunnerResult, StoredJob,
    lock, now_ms,
};
use crate::log::LogIngest;
use crate::store::{Applied, Attempt, AttemptStatus, Change, Job, JobStatus};
use crate::util::error_chain;

/// How many times a job's attempts may be lost to the system (a VM that
/// would not boot or died, a runner lost, its host lost) before the job
/// fails, besides its `retry`. Losses are the system's, not the job's, so
/// they do not spend its attempts; the bound stops a job that brings its
/// VM or host down every time from looping for ever.
pub const LOST_ATTEMPTS: u32 = 3;

/// What becomes of a job whose attempt was lost.
pub(super) enum LostAgain {
    /// It runs again as a new attempt.
    Retry,
    /// It was lost this many times: it fails.
    TooOften(u32),
}

/// A VM this engine holds (by name, then also by the provider's id) until
/// dropped: after its destroy.
struct OwnVm<'a> {
    inner: &'a super::Inner,
    keys: Vec<String>,
}

impl<'a> OwnVm<'a> {
    fn new(inner: &'a super::Inner, name: &str) -> Self {
        lock(&inner.own_vms).insert(name.to_string());
        OwnVm {
            inner,
            keys: vec![name.to_string()],
        }
    }

    fn add(&mut self, id: &str) {
        lock(&self.inner.own_vms).insert(id.to_string());
        self.keys.push(id.to_string());
    }
}

impl Drop for OwnVm<'_> {
    fn drop(&mut self) {
        let mut own = lock(&self.inner.own_vms);
        for k in &self.keys {
            own.remove(k);
        }
    }
}

/// A provision in flight, counted while it lasts.
struct Provisioning<'a>(&'a super::Inner);

impl<'a> Provisioning<'a> {
    fn new(inner: &'a super::Inner) -> Self {
        inner
            .provisioning
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Provisioning(inner)
    }
}

impl Drop for Provisioning<'_> {
    fn drop(&mut self) {
        self.0
            .provisioning
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Engine {
    /// Claims and runs the job of `msg`; acks `delivery` (taking it) once
    /// the claim is decided.
    pub(super) async fn run_job(
        &self,
        msg: &JobMessage,
        delivery: &mut Option<solstice_queue::Delivery<JobMessage>>,
    ) -> Result<(), EngineError> {
        if lock(&self.inner.cancelled_runs).contains(&msg.run_id) {
            self.inner
                .store
                .transition_job(
                    msg.job_id,
                    &[JobStatus::Queued],
                    JobStatus::Cancelled,
                    Some("cancelled"),
                )
                .await?;
            return Ok(());
        }
        let token = new_token();
        let lease = self.inner.config.lease;
        let claimed = self
            .inner
            .recorder
            .apply(Change::Claim {
                job: msg.job_id,
                holder: self.inner.config.holder.clone(),
                lease_until: now_ms() + lease.as_millis() as i64,
                token_hash: hash_token(&token),
                now: now_ms(),
            })
            .await?;
        if let Some(d) = delivery.take() {
            // A failed ack: the message comes again, and its claim fails.
            let _ = d.ack().await;
        }
        // Not queued (a stale or duplicate message), or out of attempts.
        let Applied::Claimed(Some(pair)) = claimed else {
            return Ok(());
        };
        let (job, attempt) = *pair;
        let span = tracing::info_span!("attempt", key = %job.key, attempt = attempt.number);
        self.attempt(job, attempt, token).instrument(span).await
    }

    pub(super) async fn attempt(
        &self,
        job: Job,
        attempt: Attempt,
        token: String,
    ) -> Result<(), EngineError> {
        let run = job.run_id;
        self.emit(EngineEvent::JobStarted {
            run,
            key: job.key.clone(),
            attempt: attempt.number,
        });
        let stored: StoredJob = match serde_json::from_str(&job.spec) {
            Ok(stored) => stored,
            Err(e) => {
                // Nothing can run it; record why instead of leaving it running.
                let outcome = Outcome::Failed(format!("the stored job cannot be read: {e}"));
                return self.finish(&job, &attempt, outcome).await;
            }
        };
        let secrets: BTreeMap<String, String> =
            match (&stored.secret_scope, &self.inner.config.secret_store) {
                (Some(scope), Some(store)) if !stored.secrets.is_empty() => {
                    match store.get(scope, &stored.secrets).await {
                        Ok(values) => {
                            if let Some(gone) =
                                stored.secrets.iter().find(|n| !values.contains_key(*n))
                            {
                                let outcome = Outcome::Failed(format!(
                                    "secret `{gone}` is no longer in the secret store"
                                ));
                                return self.finish(&job, &attempt, outcome).await;
                            }
                            values
                        }
                        Err(e) => {
                            let outcome = Outcome::Failed(format!(
                                "the secret store cannot be read: {}",
                                error_chain(&e)
                            ));
                            return self.finish(&job, &attempt, outcome).await;
                        }
                    }
                }
                _ => stored
                    .secrets
                    .iter()
                    .filter_map(|n| {
                        self.inner
                            .config
                            .secrets
                            .get(n)
                            .map(|v| (n.clone(), v.clone()))
                    })
                    .collect(),
            };
        let clone_auth = match (
            &stored.checkout,
            &stored.secret_scope,
            &self.inner.config.clone_credentials,
        ) {
            (super::Checkout::Git { url, .. }, Some(scope), Some(source))
                if url.starts_with("https://") || url.starts_with("http://") =>
            {
                match source.for_clone(scope, url).await {
                    Ok(found) => found,
                    Err(e) => {
                        let outcome = Outcome::Failed(format!(
                            "cannot get credentials to clone the repository: {}",
                            error_chain(&*e)
                        ));
                        return self.finish(&job, &attempt, outcome).await;
                    }
                }
            }
            _ => None,
        };
        let mut secret_values: Vec<String> = secrets.values().cloned().collect();
        if let Some(auth) = &clone_auth {
            secret_values.push(auth.password.clone());
        }
        secret_values.extend(
            self.inner
                .config
                .always_masked
                .iter()
                .filter(|v| v.len() >= crate::log::MIN_SECRET_LEN)
                .cloned(),
        );
        // Masking fails closed: a job whose secrets cannot be masked does
        // not start, so nothing unmasked is ever stored or shown.
        let ingest = match LogIngest::new(&secret_values, self.inner.config.log_cap) {
            Ok(ingest) => ingest,
            Err(e) => {
                let outcome = Outcome::Failed(format!(
                    "the job's secrets cannot be masked: {}",
                    error_chain(&e)
                ));
                return self.finish(&job, &attempt, outcome).await;
            }
        };
        let (result_tx, result_rx) = oneshot::channel();
        let timeout = stored
            .planned
            .job
            .timeout
            .map_or(self.inner.config.default_job_timeout, |t| t.to_std());
        let live = Arc::new(LiveAttempt {
            attempt: attempt.clone(),
            run,
            key: job.key.clone(),
            stored,
            secrets,
            clone_auth,
            host_checkout: std::sync::OnceLock::new(),
            result: Mutex::new(Some(result_tx)),
            ingest: tokio::sync::Mutex::new((ingest, 0)),
            failed_step: Mutex::new(None),
            token_hash: hash_token(&token),
            token_used: std::sync::atomic::AtomicBool::new(false),
            lease_until: std::sync::atomic::AtomicI64::new(attempt.lease_expires_at),
            lease_lost: std::sync::atomic::AtomicBool::new(false),
            cancel: Notify::new(),
            reporting: std::sync::atomic::AtomicBool::new(false),
            session_hash: Mutex::new(None),
            report_opened: std::sync::atomic::AtomicBool::new(false),
        });
        lock(&self.inner.live).insert(attempt.id, live.clone());

        let lease = self.inner.config.lease;
        let heartbeat = {
            let store = self.inner.store.clone();
            let holder = self.inner.config.holder.clone();
            let live = live.clone();
            let killed = self.inner.killed.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(lease / 3) => {}
                        () = killed.cancelled() => return,
                    }
                    let now = now_ms();
                    let until = now + lease.as_millis() as i64;
                    match store
                        .renew_lease(live.attempt.id, &holder, now, until)
                        .await
                    {
                        Ok(true) => {
                            live.lease_until
                                .store(until, std::sync::atomic::Ordering::SeqCst);
                            // Cancelled through another engine (the
                            // integration daemon's API).
                            if let Ok(Some(job)) = store.job(live.attempt.job_id).await
                                && job.status == JobStatus::Cancelled
                            {
                                tracing::info!("the job was cancelled; stopping the attempt");
                                live.cancel.notify_one();
                                return;
                            }
                        }
                        Ok(false) => {
                            live.lose_lease("it could not be renewed");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::util::error_chain(&e), "lease renewal failed; retrying")
                        }
                    }
                }
            })
        };

        let mut spec = VmSpec::new(
            format!("solstice-r{}-j{}-a{}", run, job.id, attempt.number),
            attempt.id.to_string(),
            self.inner.endpoint.clone(),
            token,
        );
        spec.label = job.label.clone();
        spec.vcpus = self.inner.config.vcpus;
        spec.memory_mib = self.inner.config.memory_mib;
        spec.disk_gib = self.inner.config.disk_gib;
        if let super::Checkout::Local { path } = &live.stored.checkout {
            spec.share = Some(path.into());
        }
        // The checkout on this host, when configured: removed when this
        // function returns, whatever the outcome.
        let (_host_checkout, checkout_failed) =
            match (&self.inner.config.checkout_dir, &live.stored.checkout) {
                (
                    Some(root),
                    super::Checkout::Git {
                        url,
                        commit,
                        fetch_ref,
                    },
                ) if self.inner.provider.copies_share(&spec.label) => {
                    let made = tokio::time::timeout(
                        timeout,
                        HostCheckout::clone(
                            root.join(format!("a{}", attempt.id)),
                            url,
                            commit,
                            fetch_ref.as_deref(),
                            live.clone_auth.as_ref(),
                        ),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "cloning took longer than the job's timeout ({}s)",
                            timeout.as_secs()
                        ))
                    });
                    match made {
                        Ok(made) => {
                            let _ = live.host_checkout.set(made.path.clone());
                            spec.share = Some(made.path.clone().into());
                            spec.share_whole = true;
                            (Some(made), None)
                        }
                        Err(why) => (None, Some(format!("checkout on the host failed: {why}"))),
                    }
                }
                _ => (None, None),
            };
        let mut vm: Option<VmId> = None;
        // Ours from before the provider is asked until after it destroyed
        // it: no reaper pass of this engine touches it meanwhile.
        let mut own = OwnVm::new(&self.inner, &spec.name);
        let provisioned = match &checkout_failed {
            Some(_) => None,
            None => {
                let _in_flight = Provisioning::new(&self.inner);
                Some(self.inner.provider.provision(&spec).await)
            }
        };
        let outcome = match provisioned {
            // The repository's failure (a bad commit, a refused clone), not the system's.
            None => Outcome::Failed(checkout_failed.unwrap_or_default()),
            Some(Err(e @ solstice_vmm::VmError::Boot { .. })) => Outcome::Lost(error_chain(&e)),
            Some(Err(e)) => Outcome::Lost(format!("VM failed to boot: {}", error_chain(&e))),
            Some(Ok(handle)) => {
                own.add(&handle.id.0);
                self.inner
                    .recorder
                    .send(self.as_holder(
                        attempt.id,
                        Change::SetVm {
                            attempt: attempt.id,
                            vm_id: handle.id.0.clone(),
                        },
                    ))
                    .await;
                vm = Some(handle.id.clone());
                self.watch(&live, &handle.id, result_rx, timeout).await
            }
        };
        heartbeat.abort();
        if live.lease_lost.load(std::sync::atomic::Ordering::SeqCst) {
            // Someone else's now: the store refuses this host's writes of
            // it (recovery declares it lost and the job runs again), so its
            // VM and runner are stopped and nothing more is recorded.
            if let Some(id) = &vm
                && let Err(e) = self.inner.provider.destroy(id).await
            {
                tracing::warn!(vm = %id, error = %crate::util::error_chain(&e), "destroying the VM failed; the reaper will retry");
            }
            lock(&self.inner.live).remove(&attempt.id);
            return Ok(());
        }
        // A VM lost before its runner reported the end: its console says
        // why (a kernel panic, a missing driver, an OOM kill). Read before
        // destroy removes it.
        if let (Some(id), Outcome::Lost(_)) = (&vm, &outcome)
            && let Some(console) = self.inner.provider.console_tail(id).await
        {
            let mut text = format!("[solstice] the VM's console, last lines:\n{console}");
            if !text.ends_with('\n') {
                text.push('\n');
            }
            self.system_log(&live, &text).await;
        }
        if let Some(id) = &vm
            && let Err(e) = self.inner.provider.destroy(id).await
        {
            tracing::warn!(vm = %id, error = %crate::util::error_chain(&e), "destroying the VM failed; the reaper will retry");
        }
        let reason_line = match &outcome {
            Outcome::Succeeded => None,
            Outcome::Failed(r) | Outcome::Lost(r) => Some(r.clone()),
            Outcome::Cancelled => Some("cancelled".to_string()),
        };
        if let Some(r) = &reason_line {
            self.system_log(
                &live,
                &format!("[solstice] attempt {}: {r}\n", attempt.number),
            )
            .await;
        }
        self.flush_log(&live).await;
        lock(&self.inner.live).remove(&attempt.id);
        drop(own);
        self.finish(&job, &attempt, outcome).await
    }

    /// Records how an attempt ended and what happens to its job: final, or
    /// queued again while `retry` allows.
    pub(super) async fn finish(
        &self,
        job: &Job,
        attempt: &Attempt,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        let run = job.run_id;
        let cancelled = lock(&self.inner.cancelled_runs).contains(&run);
        // A lost attempt is the system's failure, not the job's: it does not
        // spend the job's attempts (one more is granted), up to the job's
        // share of lost attempts.
        let mut extra_attempts = 0;
        let (status, reason, job_status, job_reason) = match outcome {
            Outcome::Succeeded => (AttemptStatus::Succeeded, None, JobStatus::Succeeded, None),
            Outcome::Failed(r) => (
                AttemptStatus::Failed,
                Some(r.clone()),
                JobStatus::Failed,
                Some(r),
            ),
            Outcome::Cancelled => (
                AttemptStatus::Cancelled,
                Some("cancelled".to_string()),
                JobStatus::Cancelled,
                Some("cancelled".to_string()),
            ),
            Outcome::Lost(r) => match self.lost_again(job).await? {
                _ if cancelled => (
                    AttemptStatus::Lost,
                    Some(r.clone()),
                    JobStatus::Cancelled,
                    Some("cancelled".to_string()),
                ),
                LostAgain::Retry => {
                    extra_attempts = 1;
                    (
                        AttemptStatus::Lost,
                        Some(r.clone()),
                        JobStatus::Queued,
                        Some(r),
                    )
                }
                LostAgain::TooOften(n) => (
                    AttemptStatus::Lost,
                    Some(r.clone()),
                    JobStatus::Failed,
                    Some(format!("{r} (lost {n} times)")),
                ),
            },
        };
        let ended = self
            .inner
            .recorder
            .apply(self.as_holder(
                attempt.id,
                Change::Finish {
                    attempt: attempt.id,
                    status,
                    reason: reason.clone(),
                    now: now_ms(),
                    job: job.id,
                    job_status,
                    job_reason: job_reason.clone(),
                    extra_attempts,
                },
            ))
            .await?;
        if ended != Applied::Finished(true) {
            // Someone else (recovery after a lost lease) already ended it,
            // or the lease ran out first (the store refused the end).
            return Ok(());
        }
        if job_status == JobStatus::Queued {
            self.emit(EngineEvent::JobRetrying {
                run,
                key: job.key.clone(),
                attempt: attempt.number,
                reason: reason.unwrap_or_default(),
            });
            self.publish(run, job.id, &job.label, super::Lane::Retry)
                .await?;
            return Ok(());
        }
        self.emit(EngineEvent::JobFinished {
            run,
            key: job.key.clone(),
            status: job_status,
            reason: job_reason,
        });
        Ok(())
    }

    /// Whether a job whose attempt was just lost may run again: it may be
    /// lost [`LOST_ATTEMPTS`] times, plus its `retry`, before it fails.
    pub(super) async fn lost_again(&self, job: &Job) -> Result<LostAgain, EngineError> {
        let lost = self
            .inner
            .store
            .attempts(job.id)
            .await?
            .iter()
            .filter(|a| a.status == AttemptStatus::Lost)
            .count() as u32
            // This one, not recorded as lost yet.
            + 1;
        let retry = serde_json::from_str::<StoredJob>(&job.spec)
            .map(|s| s.planned.job.retry)
            .unwrap_or(0);
        Ok(if lost < LOST_ATTEMPTS + retry {
            LostAgain::Retry
        } else {
            LostAgain::TooOften(lost)
        })
    }

    /// Waits for the runner's result, the VM's death, the timeout or a cancel.
    pub(super) async fn watch(
        &self,
        live: &Arc<LiveAttempt>,
        vm: &VmId,
        mut result: oneshot::Receiver<RunnerResult>,
        timeout: Duration,
    ) -> Outcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = tokio::time::interval(self.inner.config.poll);
        let mut stopped_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                r = &mut result => {
                    return match r {
                        Ok(RunnerResult::Finished { success: true, .. }) => Outcome::Succeeded,
                        Ok(RunnerResult::Finished { success: false, failed_step }) => Outcome::Failed(
                            failed_step.unwrap_or_else(|| "the job failed".to_string())),
                        Ok(RunnerResult::Disconnected(why)) => Outcome::Lost(format!("runner lost: {why}")),
                        Ok(RunnerResult::Refused(why)) => Outcome::Failed(format!("the runner's report was refused: {why}")),
                        Err(_) => Outcome::Lost("runner lost".into()),
                    };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Outcome::Failed(format!("timed out after {}", solstice_kdl::Duration::from_secs(timeout.as_secs().max(1))));
                }
                _ = live.cancel.notified() => return Outcome::Cancelled,
                _ = poll.tick() => {
                    let state = self.inner.provider.state(vm).await;
                    match state {
                        Ok(VmState::Stopped(_)) | Ok(VmState::Failed(_)) | Err(_) => {
                            // Give the runner's last events time to land: while
                            // its report stream is still being processed (which
                            // can lag under load) the stream's end decides.
                            let since = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
                            let grace = if live.reporting.load(std::sync::atomic::Ordering::SeqCst) {
                                Duration::from_secs(30)
                            } else {
                                Duration::from_secs(2)
                            };
                            if since.elapsed() > grace {
                                tracing::warn!(
                                    reporting = live.reporting.load(std::sync::atomic::Ordering::SeqCst),
                                    result_pending = lock(&live.result).is_some(),
                                    "the VM stopped and no result came"
                                );
                                return Outcome::Lost(match state {
                                    Ok(VmState::Failed(why)) => format!("the VM failed: {why}"),
                                    _ => "the VM stopped before the runner reported the end of the job".into(),
                                });
                            }
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

/// A checkout the engine made on the host (`EngineConfig::checkout_dir`);
/// its directory is removed when this is dropped.
struct HostCheckout {
    path: String,
}

impl HostCheckout {
    async fn clone(
        dir: std::path::PathBuf,
        url: &str,
        commit: &str,
        fetch_ref: Option<&str>,
        auth: Option<&super::GitCredentials>,
    ) -> Result<HostCheckout, String> {
        if url.starts_with("file:") {
            return Err(format!(
                "refusing clone URL {url:?}: a checkout on the host does not copy the host's own files"
            ));
        }
        let path = dir
            .to_str()
            .ok_or_else(|| format!("{}: not a UTF-8 path", dir.display()))?
            .to_string();
        // A directory left by a crash before is replaced.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let made = HostCheckout { path };
        crate::runner::clone_into(
            url,
            commit,
            fetch_ref.unwrap_or(""),
            auth.map_or("", |a| a.username.as_str()),
            auth.map_or("", |a| a.password.as_str()),
            &dir,
        )
        .await?;
        Ok(made)
    }
}

impl Drop for HostCheckout {
    /// Removed off the runtime's threads when there is a runtime (a large
    /// checkout takes a while).
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || std::fs::remove_dir_all(&path));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}
