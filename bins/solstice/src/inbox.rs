//! Processing accepted deliveries: each was recorded before the forge got
//! its answer, so nothing accepted is lost when the daemon stops; what is
//! still pending at start is processed then. A delivery starts at most
//! one run: the run's source names the delivery, and a delivery processed
//! again after a crash finds the run it already started.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use solstice_core::engine::{Checkout, EngineError, Submission};
use solstice_core::store::{InboxEntry, InboxState, IntegrationStore, RunId};
use solstice_forge::{Conclusion, Delivery, EventKind, ForgeEvent, JobReport, JobState, Repo};

use crate::daemon::{Daemon, chain, forge_of};

/// Deliveries taken per pass.
const BATCH: usize = 32;

/// What a run (or a held delivery) reports to: kept with the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `github` or `forgejo`.
    pub forge: String,
    /// The delivery id (check runs' external ids start with it).
    pub delivery: String,
    /// `owner/name`.
    pub repository: String,
    /// The GitHub App installation.
    pub installation: Option<u64>,
    /// The commit.
    pub commit: String,
    /// The ref.
    pub git_ref: String,
    /// Who sent it.
    pub sender: String,
    /// Whose code it is (a pull request's author; a push's sender): what
    /// trust in a fork's pull request is decided by.
    #[serde(default)]
    pub author: String,
    /// An operator approved this commit (a fork's pull request), or the
    /// run is not gated at all (an operator's manual run, a schedule).
    #[serde(default)]
    pub approved: bool,
    /// Where the code is cloned from.
    #[serde(default)]
    pub clone_url: String,
    /// A pull request from a fork: no secrets.
    #[serde(default)]
    pub from_fork: bool,
    /// The repository's default branch, when the delivery named it.
    #[serde(default)]
    pub default_branch: Option<String>,
    /// The repository is private (or not known to be public): its runs'
    /// pages need the admin token.
    #[serde(default = "private_by_default")]
    pub private: bool,
}

fn private_by_default() -> bool {
    true
}

impl Target {
    fn of(forge: &str, event: &ForgeEvent) -> Target {
        Target {
            forge: forge.to_string(),
            delivery: event.delivery.clone(),
            repository: event.repository.clone(),
            installation: event.installation,
            commit: event.commit.clone(),
            git_ref: event.git_ref.clone(),
            sender: event.sender.clone(),
            author: event.author.clone(),
            approved: false,
            clone_url: event.clone_url.clone(),
            from_fork: matches!(
                event.kind,
                EventKind::PullRequest {
                    from_fork: true,
                    ..
                }
            ),
            default_branch: event.default_branch.clone(),
            private: event.private,
        }
    }

    /// What the delivery is about, for finding it again.
    pub fn subject(&self) -> String {
        subject_of(&self.repository, &self.commit)
    }

    /// The repository for API calls.
    pub fn repo(&self) -> Repo {
        Repo::new(self.repository.clone()).with_installation(self.installation)
    }

    /// The check run id of one of its jobs.
    pub fn external_id(&self, key: &str) -> String {
        format!("{}/{}", self.delivery, key)
    }
}

/// What a delivery is about: `owner/name@commit`.
fn subject_of(repository: &str, commit: &str) -> String {
    format!("{repository}@{commit}")
}

/// The run source of a delivery.
pub fn source_of(forge: &str, id: &str) -> String {
    format!("{SOURCE_PREFIX}{forge}/{id}")
}

/// How the source of a run started by a delivery begins.
pub const SOURCE_PREFIX: &str = "delivery ";

/// Processes pending deliveries now and whenever woken, until aborted.
pub async fn run(daemon: Arc<Daemon>) {
    // For fault tests only: a delay before each pass, so that a test can
    // kill the daemon between acknowledging a delivery and processing it.
    let delay = std::env::var("SOLSTICE_TEST_INBOX_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    loop {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let woken = daemon.inbox.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match daemon.store.deliveries(InboxState::Pending, BATCH).await {
            Ok(batch) => {
                let mut full = batch.len() == BATCH;
                for entry in batch {
                    let (forge, id) = (entry.forge.clone(), entry.id.clone());
                    let (state, outcome, run, target) = process(&daemon, entry).await;
                    // One left pending (the store failed): not again at once.
                    full &= state != InboxState::Pending;
                    tracing::info!(%forge, delivery = %id, %outcome, "delivery processed");
                    if let Err(e) = daemon
                        .store
                        .set_delivery(&forge, &id, state, &outcome, run, target.as_deref())
                        .await
                    {
                        tracing::warn!(%forge, delivery = %id, error = %chain(&e), "cannot record what came of a delivery");
                    }
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %chain(&e), "cannot read the pending deliveries"),
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

type Processed = (InboxState, String, Option<RunId>, Option<String>);

/// The store failed: the delivery stays pending and is tried again.
fn retry_later(e: &solstice_core::store::StoreError) -> Processed {
    (
        InboxState::Pending,
        format!("store: {}", chain(e)),
        None,
        None,
    )
}

fn done(outcome: impl Into<String>) -> Processed {
    (InboxState::Done, outcome.into(), None, None)
}

async fn process(daemon: &Arc<Daemon>, entry: InboxEntry) -> Processed {
    let Some(forge) = forge_of(&entry.forge) else {
        return done(format!("unknown forge `{}`", entry.forge));
    };
    if daemon.forge(forge).is_none() {
        return done("the forge is no longer configured");
    }
    if entry.event == "schedule" {
        return scheduled(daemon, &entry, forge).await;
    }
    if entry.event == MANUAL {
        return manual(daemon, &entry, forge).await;
    }
    let delivery = match solstice_forge::parse(forge, &entry.event, &entry.id, &entry.body) {
        Ok(d) => d,
        Err(e) => return done(format!("unreadable: {}", chain(&e))),
    };
    let event = match delivery {
        Delivery::Event(event) => event,
        Delivery::Rerun(rerun) => return rerun_of(daemon, &entry, &rerun).await,
        Delivery::Ping => return done("ping"),
        Delivery::Ignored { reason } => return done(reason),
        _ => return done("nothing to do"),
    };
    let mut target = Target::of(&entry.forge, &event);
    if let Some(old) = entry
        .target
        .as_deref()
        .and_then(|t| serde_json::from_str::<Target>(t).ok())
    {
        target.approved = old.approved;
    }
    let trigger = match &event.kind {
        EventKind::Push => match solstice_kdl::GitRef::parse(&event.git_ref) {
            Some(git_ref) => solstice_kdl::Event::Push {
                git_ref,
                changed_paths: event.changed_paths.clone(),
            },
            None => return done("not a branch or tag"),
        },
        EventKind::PullRequest { base_branch, .. } => solstice_kdl::Event::PullRequest {
            base_branch: base_branch.clone(),
            changed_paths: None,
        },
        _ => return done("an event kind this daemon does not run"),
    };
    start(daemon, &entry, forge, target, Some(trigger), None).await
}

/// The event name of a run started through the API (`ciadm trigger`).
pub const MANUAL: &str = "manual";

/// What a manual run is about (the body of its recorded delivery).
#[derive(Debug, Serialize, Deserialize)]
pub struct ManualRun {
    /// `owner/name`.
    pub repository: String,
    /// The commit.
    pub commit: String,
    /// The reference it was asked by, if any.
    pub git_ref: String,
    /// Where the code is cloned from.
    pub clone_url: String,
    /// Who asked.
    pub sender: String,
}

/// A run started by an operator: the workflow at the commit runs (its
/// `on` is not consulted), with the repository's secrets.
async fn manual(
    daemon: &Arc<Daemon>,
    entry: &InboxEntry,
    forge: solstice_forge::Forge,
) -> Processed {
    let Ok(asked) = serde_json::from_slice::<ManualRun>(&entry.body) else {
        return done("an unreadable manual run");
    };
    let target = Target {
        forge: entry.forge.clone(),
        delivery: entry.id.clone(),
        repository: asked.repository,
        installation: None,
        commit: asked.commit,
        git_ref: asked.git_ref,
        author: asked.sender.clone(),
        sender: asked.sender,
        approved: true,
        clone_url: asked.clone_url,
        from_fork: false,
        default_branch: None,
        private: true,
    };
    start(daemon, entry, forge, target, None, None).await
}

/// A schedule's tick (recorded by `cron.rs`): the workflow at the commit
/// last pushed to the default branch runs, if it still has the schedule.
async fn scheduled(
    daemon: &Arc<Daemon>,
    entry: &InboxEntry,
    forge: solstice_forge::Forge,
) -> Processed {
    #[derive(Deserialize)]
    struct Tick {
        repository: String,
        cron: String,
    }
    let Ok(tick) = serde_json::from_slice::<Tick>(&entry.body) else {
        return done("an unreadable schedule tick");
    };
    let schedules = match daemon.store.schedules().await {
        Ok(s) => s,
        Err(e) => {
            return retry_later(&e);
        }
    };
    let Some(target) = schedules
        .into_iter()
        .find(|s| s.forge == entry.forge && s.repository == tick.repository && s.cron == tick.cron)
        .and_then(|s| serde_json::from_str::<Target>(&s.target).ok())
    else {
        return done("the schedule is gone");
    };
    let target = Target {
        delivery: entry.id.clone(),
        sender: "schedule".into(),
        approved: true,
        from_fork: false,
        ..target
    };
    let trigger = solstice_kdl::Event::Schedule { cron: tick.cron };
    start(daemon, entry, forge, target, Some(trigger), None).await
}

/// A check run or check suite asked for again: the same workflow at the
/// same commit runs again as a new run (the earlier one is kept), with
/// new check runs as GitHub expects, under the original's secrets policy.
async fn rerun_of(
    daemon: &Arc<Daemon>,
    entry: &InboxEntry,
    rerun: &solstice_forge::Rerun,
) -> Processed {
    // A check run names its delivery and job (`DELIVERY/JOB`); a suite
    // is found by what it is about.
    let (original, only) = match rerun.external_id.as_deref() {
        Some(external) => match external.split_once('/') {
            Some((id, key)) => (
                daemon.store.delivery(&entry.forge, id).await,
                Some(key.to_string()),
            ),
            None => (Ok(None), None),
        },
        None => {
            let subject = subject_of(&rerun.repository, &rerun.commit);
            let found = daemon
                .store
                .latest_delivery_about(&entry.forge, &subject)
                .await;
            (found, None)
        }
    };
    let original = match original {
        Ok(found) => found,
        Err(e) => {
            return retry_later(&e);
        }
    };
    let Some(old) = original
        .and_then(|o| o.target)
        .and_then(|t| serde_json::from_str::<Target>(&t).ok())
        .filter(|t| t.repository == rerun.repository && t.commit == rerun.commit)
    else {
        return done("no run of Solstice's to run again for this check");
    };
    // Whoever asked, the code is the original's: a fork's pull request
    // runs again only under the original's approval (or its author's
    // trust), which `start` checks.
    let target = Target {
        delivery: entry.id.clone(),
        sender: rerun.sender.clone(),
        installation: rerun.installation.or(old.installation),
        ..old
    };
    let Some(forge) = forge_of(&entry.forge) else {
        return done("unknown forge");
    };
    start(daemon, entry, forge, target, None, only).await
}

/// Whether an operator approved `target`'s commit of its repository for an
/// earlier delivery that ran (the same pull request reopened, or sent
/// again by another event about the same head).
async fn approved_before(
    daemon: &Daemon,
    forge: &str,
    target: &Target,
) -> Result<bool, solstice_core::store::StoreError> {
    let earlier = daemon
        .store
        .latest_delivery_about(forge, &target.subject())
        .await?;
    Ok(earlier
        .and_then(|e| e.target)
        .and_then(|t| serde_json::from_str::<Target>(&t).ok())
        .is_some_and(|t| {
            t.approved && t.repository == target.repository && t.commit == target.commit
        }))
}

/// Fetches and checks the workflow, applies the fork policy and submits
/// the run. `trigger`: the event the workflow's `on` must match (none for
/// a rerun); `only`: the job (expanded id) to run with what it needs.
async fn start(
    daemon: &Arc<Daemon>,
    entry: &InboxEntry,
    forge: solstice_forge::Forge,
    target: Target,
    trigger: Option<solstice_kdl::Event>,
    only: Option<String>,
) -> Processed {
    let Some(link) = daemon.forge(forge) else {
        return done("the forge is no longer configured");
    };
    let source = source_of(&entry.forge, &entry.id);
    let target_json = serde_json::to_string(&target).ok();
    if let Err(e) = daemon
        .store
        .set_delivery_subject(&entry.forge, &entry.id, &target.subject())
        .await
    {
        return retry_later(&e);
    }
    // Processed before a crash: the run is there already.
    match daemon.store.run_by_source(&source).await {
        Ok(Some(run)) => {
            daemon.reports.watch(run, target.clone());
            return (
                InboxState::Done,
                format!("started run {run}"),
                Some(run),
                target_json,
            );
        }
        Ok(None) => {}
        Err(e) => {
            return retry_later(&e);
        }
    }
    let path = daemon.config.workflow_path.clone();
    let bytes = match link
        .adapter
        .fetch_file(&target.repo(), &target.commit, &path)
        .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return done(format!("the repository has no {path}")),
        Err(e) => return done(format!("cannot fetch {path}: {}", chain(&e))),
    };
    let fail = |why: String, text: String| {
        JobReport::new(
            target.repo(),
            &target.commit,
            "workflow",
            target.external_id("workflow"),
            JobState::Completed(Conclusion::Failure),
        )
        .with_description(solstice_forge::text::head_chars(&why, 120).to_string())
        .with_log_tail(text)
    };
    let mut workflow =
        match solstice_kdl::parse_bytes(&path, &bytes, &solstice_kdl::ParseOptions::default()) {
            Ok(w) => w,
            Err(e) => {
                let report = fail(format!("{path} cannot be read"), e.render(false, 100));
                crate::report::send(daemon, forge, &report).await;
                return (
                    InboxState::Done,
                    format!("{path} cannot be read"),
                    None,
                    target_json,
                );
            }
        };
    // A push to the default branch sets the repository's schedules from
    // its workflow (none left: none run).
    if let (
        Some(solstice_kdl::Event::Push {
            git_ref: solstice_kdl::GitRef::Branch(branch),
            ..
        }),
        Some(default),
    ) = (&trigger, &target.default_branch)
        && branch == default
    {
        let crons = workflow
            .on
            .as_ref()
            .map(|t| t.cron.clone())
            .unwrap_or_default();
        let stored = serde_json::to_string(&target).unwrap_or_default();
        if let Err(e) = daemon
            .store
            .set_schedules(
                &entry.forge,
                &target.repository,
                &stored,
                &crons,
                crate::cron::now_minute(),
            )
            .await
        {
            tracing::warn!(repository = %target.repository, error = %chain(&e), "cannot record the schedules");
        }
    }
    if let Some(trigger) = &trigger
        && !workflow.is_triggered_by(trigger)
    {
        return done("the workflow's `on` does not match this event");
    }
    if let Some(key) = &only {
        // The check run names an expanded job: run its job (every
        // combination of a matrix) and what it needs.
        let base = workflow
            .plan()
            .ok()
            .and_then(|p| p.jobs.into_iter().find(|j| &j.id == key).map(|j| j.base_id));
        match base.map(|b| workflow.only(&[b])) {
            Some(Ok(w)) => workflow = w,
            _ => {
                return done(format!(
                    "the workflow at this commit has no job `{key}` any more"
                ));
            }
        }
    }
    let commit_approved = target.approved
        || match approved_before(daemon, &entry.forge, &target).await {
            Ok(approved) => approved,
            Err(e) => return retry_later(&e),
        };
    let gate = crate::policy::fork_gate(
        target.from_fork,
        &target.author,
        &daemon.config.trusted_authors,
        commit_approved,
    );
    if gate == crate::policy::ForkGate::Hold {
        // Held: each job shows as queued, waiting for an operator, and
        // links to the page where one approves it.
        let page = format!(
            "{}/deliveries/{}/{}",
            daemon.config.public_url, entry.forge, entry.id
        );
        if let Ok(plan) = workflow.plan() {
            for job in plan.jobs {
                let report = JobReport::new(
                    target.repo(),
                    &target.commit,
                    job.id.clone(),
                    target.external_id(&job.id),
                    JobState::Queued,
                )
                .with_description("waiting for an operator's approval (pull request from a fork)")
                .with_details_url(page.clone());
                crate::report::send(daemon, forge, &report).await;
            }
        }
        return (
            InboxState::AwaitingApproval,
            format!(
                "a pull request from a fork by `{}`: waiting for approval of {}",
                target.author, target.commit
            ),
            None,
            target_json,
        );
    }
    // A pull request's head may be only in a fork: fetched by its ref.
    let fetch_ref = target
        .git_ref
        .starts_with("refs/pull/")
        .then(|| target.git_ref.clone());
    let checkout = Checkout::Git {
        url: target.clone_url.clone(),
        commit: target.commit.clone(),
        fetch_ref,
    };
    // Secrets are the repository's, from the secret store; a fork's pull
    // request gets none, approved or not.
    let how = if target.from_fork {
        Submission::default().without_secrets()
    } else {
        Submission::default().with_secret_scope(target.repository.clone())
    };
    // The reporter knows the run's target before its first event.
    let submitted = {
        let _hold = daemon.reports.hold().await;
        match daemon
            .engine
            .submit_with(&workflow, &source, checkout, &how)
            .await
        {
            Ok(run) => {
                daemon.reports.watch(run, target.clone());
                Ok(run)
            }
            Err(e) => Err(e),
        }
    };
    match submitted {
        Ok(run) => (
            InboxState::Done,
            format!("started run {run}"),
            Some(run),
            target_json,
        ),
        Err(e) => {
            let why = match &e {
                EngineError::MissingSecret(_)
                | EngineError::SecretTooShort(_)
                | EngineError::SecretStore(_) => {
                    format!(
                        "{} (secrets come from the secret store, per repository)",
                        chain(&e)
                    )
                }
                _ => chain(&e),
            };
            crate::report::send(daemon, forge, &fail(why.clone(), why.clone())).await;
            (
                InboxState::Done,
                format!("not started: {why}"),
                None,
                target_json,
            )
        }
    }
}
