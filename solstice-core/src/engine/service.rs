//! The runner endpoint: the gRPC service runners connect to.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status, Streaming};

use super::token::{hash_token, new_token};
use super::{Engine, LiveAttempt, RunnerResult, lock, now_ms};
use crate::net::{Admission, GuardedListener};
use crate::protocol::pb::{self, runner_event::Event};
use crate::protocol::{self, token_of};
use crate::store::{Change, StepRecord, StepStatus};

/// Largest message a runner may send (log chunks are 64 KiB).
const MAX_MESSAGE: usize = 4 << 20;

/// How often the runner endpoint pings a quiet connection, and how long
/// it waits for the answer.
const RUNNER_PING: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) async fn serve(engine: Engine, listener: super::config::Listener) {
    let limits = engine.inner.config.runner_connections;
    let service = pb::runner_server::RunnerServer::new(RunnerService { engine })
        .max_decoding_message_size(MAX_MESSAGE);
    // Runners stream logs to us: HTTP/2's default 64 KiB receive window
    // would stall them after every chunk waiting for a window update.
    // Keep-alive pings: a runner silent through a long step still moves
    // bytes (so the idle limit never closes a live runner), and a peer that
    // stopped answering is found within a minute.
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keepalive_interval(Some(RUNNER_PING))
        .http2_keepalive_timeout(Some(RUNNER_PING))
        .add_service(service);
    // Connections are admitted under the engine's limits (a cap, a share
    // per address, a first-byte and an idle limit): a runner is a guest,
    // and so may be hostile.
    let admission = Admission::new(limits);
    let result = match listener {
        // No Nagle (set by the listener): a response (a job spec, an ack)
        // goes out at once instead of waiting for the runner's ACK of the
        // previous packet.
        super::config::Listener::Tcp(l) => {
            router
                .serve_with_incoming(GuardedListener::new(l, admission))
                .await
        }
        super::config::Listener::Unix(l) => {
            router
                .serve_with_incoming(GuardedListener::new(l, admission))
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %crate::util::error_chain(&e), "runner endpoint stopped");
    }
}

struct RunnerService {
    engine: Engine,
}

impl RunnerService {
    /// The live attempt a token belongs to, if the token may still be used.
    ///
    /// Only this engine's running attempts are looked at: a runner talks to
    /// the engine that started its VM, a token dies with its attempt (an
    /// attempt leaves this set when it ends, and when the engine stops),
    /// and a lease that could not be renewed ends the token with it.
    fn authorize<T>(&self, request: &Request<T>) -> Result<Arc<LiveAttempt>, Status> {
        let token = token_of(request)?;
        let denied = || Status::permission_denied("invalid, expired or used job token");
        let hash = hash_token(&token);
        let live = lock(&self.engine.inner.live)
            .values()
            .find(|l| l.token_hash == hash)
            .cloned()
            .ok_or_else(denied)?;
        if live.lease_until.load(Ordering::SeqCst) < now_ms() {
            return Err(denied());
        }
        Ok(live)
    }
}

#[tonic::async_trait]
impl pb::runner_server::Runner for RunnerService {
    async fn fetch_job(
        &self,
        request: Request<pb::FetchJobRequest>,
    ) -> Result<Response<pb::JobSpec>, Status> {
        let live = self.authorize(&request)?;
        if live.token_used.swap(true, Ordering::SeqCst) {
            return Err(Status::permission_denied(
                "invalid, expired or used job token",
            ));
        }
        // The report session: only the process that fetched the job knows
        // it, so a step that finds the token cannot report for the runner.
        let session = new_token();
        *lock(&live.session_hash) = Some(hash_token(&session));
        let mut spec = job_spec(&live);
        spec.session = session;
        Ok(Response::new(spec))
    }

    async fn report_events(
        &self,
        request: Request<Streaming<pb::RunnerEvent>>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let live = self.authorize(&request)?;
        let session = request
            .metadata()
            .get(crate::protocol::SESSION)
            .and_then(|v| v.to_str().ok())
            .map(hash_token);
        let expected = lock(&live.session_hash).clone();
        if session.is_none() || session != expected {
            return Err(Status::permission_denied(
                "the report stream needs the session of the runner that fetched the job",
            ));
        }
        if live.report_opened.swap(true, Ordering::SeqCst) {
            return Err(Status::permission_denied(
                "this attempt already has its report stream",
            ));
        }
        live.reporting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut stream = request.into_inner();
        let mut steps_seen = StepOrder::new(steps_of(&live));
        let engine = &self.engine;
        let steps = &live.stored.planned.job.steps;
        let name = |i: u32| {
            steps
                .get(i as usize)
                .map(|s| s.display_name().to_string())
                .unwrap_or_default()
        };
        let ending = loop {
            let event = match stream.message().await {
                // What a runner sends after the lease ran out (this host
                // was paused past it) is not this host's to record: the
                // job is someone else's now.
                Ok(Some(_)) if !live.holds_lease() => {
                    live.lose_lease("the runner reported after the lease had ended");
                    break RunnerResult::Disconnected("the lease was lost".into());
                }
                Ok(Some(pb::RunnerEvent { event: Some(e) })) => e,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    break RunnerResult::Disconnected(
                        "the runner closed its report stream without ending the job".into(),
                    );
                }
                Err(status) => break RunnerResult::Disconnected(status.message().to_string()),
            };
            match event {
                Event::StepStarted(s) => {
                    if let Err(why) = steps_seen.start(s.index) {
                        break RunnerResult::Refused(why);
                    }
                    let record = StepRecord {
                        attempt_id: live.attempt.id,
                        index: s.index,
                        name: name(s.index),
                        status: StepStatus::Running,
                        exit_code: None,
                        started_at: Some(now_ms()),
                        finished_at: None,
                    };
                    engine
                        .inner
                        .recorder
                        .send(engine.as_holder(live.attempt.id, Change::Step(record)))
                        .await;
                    engine.emit(super::EngineEvent::StepStarted {
                        run: live.run,
                        key: live.key.clone(),
                        index: s.index,
                        name: name(s.index),
                    });
                }
                Event::Log(chunk) => {
                    let (step, stream) = log_origin(&chunk);
                    engine.append_log(&live, step, stream, &chunk.data).await;
                }
                Event::StepFinished(s) => {
                    let status = if s.timed_out {
                        StepStatus::TimedOut
                    } else if s.exit_code == 0 {
                        StepStatus::Succeeded
                    } else {
                        StepStatus::Failed
                    };
                    let stops_the_job = match steps_seen.finish(s.index, status) {
                        Ok(stops) => stops,
                        Err(why) => break RunnerResult::Refused(why),
                    };
                    if !s.error.is_empty() {
                        engine
                            .system_log(
                                &live,
                                &format!(
                                    "[solstice] step `{}` could not run: {}\n",
                                    name(s.index),
                                    s.error
                                ),
                            )
                            .await;
                    }
                    if stops_the_job {
                        let why = if status == StepStatus::TimedOut {
                            format!("step `{}` timed out", name(s.index))
                        } else {
                            format!("step `{}` failed (exit {})", name(s.index), s.exit_code)
                        };
                        *lock(&live.failed_step) = Some(why);
                    }
                    let record = StepRecord {
                        attempt_id: live.attempt.id,
                        index: s.index,
                        name: name(s.index),
                        status,
                        exit_code: Some(s.exit_code),
                        started_at: None,
                        finished_at: Some(now_ms()),
                    };
                    // Waited for: once a step has ended, it and all its
                    // output are stored (the writes go in order), so an
                    // engine crash can lose only output of a running step.
                    match engine
                        .inner
                        .recorder
                        .apply(engine.as_holder(live.attempt.id, Change::Step(record)))
                        .await
                    {
                        Ok(crate::store::Applied::Fenced) => {
                            break RunnerResult::Disconnected("the lease was lost".into());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            break RunnerResult::Disconnected(format!(
                                "the orchestrator could not record a step: {}",
                                crate::util::error_chain(&e)
                            ));
                        }
                    }
                    engine.emit(super::EngineEvent::StepFinished {
                        run: live.run,
                        key: live.key.clone(),
                        index: s.index,
                        status,
                        exit_code: s.exit_code,
                    });
                }
                Event::JobFinished(f) => {
                    // The result is what the recorded steps say; the runner
                    // may only report a failure they do not show (a
                    // checkout that failed), never a success they deny.
                    if f.success
                        && let Err(why) = steps_seen.all_passed()
                    {
                        break RunnerResult::Refused(format!(
                            "the runner reported success, but {why}"
                        ));
                    }
                    break RunnerResult::Finished {
                        success: f.success,
                        failed_step: lock(&live.failed_step).clone(),
                    };
                }
            }
        };
        if let Some(tx) = lock(&live.result).take() {
            let _ = tx.send(ending);
        }
        live.reporting
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(Response::new(pb::ReportAck {}))
    }
}

fn steps_of(live: &LiveAttempt) -> Vec<bool> {
    live.stored
        .planned
        .job
        .steps
        .iter()
        .map(|s| s.continue_on_error)
        .collect()
}

/// What the runner has reported of the steps so far. Steps run one at a
/// time, in order, and stop at the first failure that may not continue:
/// anything else is a confused or hostile runner.
struct StepOrder {
    /// `continue_on_error` of each step of the job.
    steps: Vec<bool>,
    /// The step reported started and not yet finished.
    running: Option<u32>,
    /// The next step that may start.
    next: u32,
    /// A step failed that may not: no further step may start.
    stopped_by: Option<u32>,
}

impl StepOrder {
    fn new(steps: Vec<bool>) -> Self {
        StepOrder {
            steps,
            running: None,
            next: 0,
            stopped_by: None,
        }
    }

    fn start(&mut self, index: u32) -> Result<(), String> {
        if index as usize >= self.steps.len() {
            return Err(format!(
                "the runner reported step {index}, which the job does not have"
            ));
        }
        if let Some(r) = self.running {
            return Err(format!(
                "step {index} started while step {r} was still running"
            ));
        }
        if let Some(f) = self.stopped_by {
            return Err(format!("step {index} started after step {f} had failed"));
        }
        if index != self.next {
            return Err(format!(
                "step {index} started out of order (expected step {})",
                self.next
            ));
        }
        self.running = Some(index);
        Ok(())
    }

    /// Records a step's end; `true` when it failed and may not (the job
    /// fails because of it).
    fn finish(&mut self, index: u32, status: StepStatus) -> Result<bool, String> {
        if self.running != Some(index) {
            return Err(format!("step {index} finished without having started"));
        }
        self.running = None;
        self.next = index + 1;
        let may_fail = self.steps.get(index as usize).copied().unwrap_or(false);
        let stops = status != StepStatus::Succeeded && !may_fail;
        if stops {
            self.stopped_by = Some(index);
        }
        Ok(stops)
    }

    fn all_passed(&self) -> Result<(), String> {
        if let Some(f) = self.stopped_by {
            return Err(format!("step {f} failed"));
        }
        if self.running.is_some() || self.next as usize != self.steps.len() {
            return Err(format!(
                "only {} of its {} steps finished",
                self.next,
                self.steps.len()
            ));
        }
        Ok(())
    }
}

/// The spec the runner gets: built-in variables first, then the job's.
fn job_spec(live: &LiveAttempt) -> pb::JobSpec {
    let job = &live.stored.planned.job;
    let mut env: std::collections::HashMap<String, String> = [
        ("CI", "true".to_string()),
        ("SOLSTICE", "true".to_string()),
        ("SOLSTICE_RUN_ID", live.run.to_string()),
        ("SOLSTICE_JOB_ID", live.key.clone()),
        ("SOLSTICE_ATTEMPT", live.attempt.number.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(live.stored.env.clone());
    let checkout = match &live.stored.checkout {
        _ if live.host_checkout.get().is_some() => {
            Some(pb::checkout::Source::Local(pb::LocalCheckout {
                path: live.host_checkout.get().cloned().unwrap_or_default(),
            }))
        }
        super::Checkout::None => None,
        super::Checkout::Git {
            url,
            commit,
            fetch_ref,
        } => Some(pb::checkout::Source::Git(pb::GitCheckout {
            url: url.clone(),
            commit: commit.clone(),
            fetch_ref: fetch_ref.clone().unwrap_or_default(),
            username: live
                .clone_auth
                .as_ref()
                .map(|a| a.username.clone())
                .unwrap_or_default(),
            password: live
                .clone_auth
                .as_ref()
                .map(|a| a.password.clone())
                .unwrap_or_default(),
        })),
        super::Checkout::Local { path } => Some(pb::checkout::Source::Local(pb::LocalCheckout {
            path: path.clone(),
        })),
    };
    pb::JobSpec {
        run_id: live.run.to_string(),
        job_id: live.key.clone(),
        attempt: live.attempt.number,
        steps: job
            .steps
            .iter()
            .map(|s| pb::StepSpec {
                name: s.display_name().to_string(),
                run: s.run.clone(),
                env: s.env.clone().into_iter().collect(),
                workdir: s.workdir.clone().unwrap_or_default(),
                timeout_secs: s.timeout.map_or(0, |t| t.as_secs()),
                continue_on_error: s.continue_on_error,
            })
            .collect(),
        env,
        secrets: live.secrets.clone().into_iter().collect(),
        checkout: Some(pb::Checkout { source: checkout }),
        workdir: job.workdir.clone().unwrap_or_default(),
        session: String::new(),
    }
}

/// Where a chunk came from: its step (`None` for the runner's own lines)
/// and stream (an unknown stream number counts as the system's).
fn log_origin(chunk: &pb::LogChunk) -> (Option<u32>, crate::log::LogStream) {
    use crate::log::LogStream;
    let step = (chunk.step != protocol::SYSTEM_STEP).then_some(chunk.step);
    let stream = match pb::Stream::try_from(chunk.stream) {
        Ok(pb::Stream::Stdout) => LogStream::Stdout,
        Ok(pb::Stream::Stderr) => LogStream::Stderr,
        _ => LogStream::System,
    };
    (step, stream)
}
