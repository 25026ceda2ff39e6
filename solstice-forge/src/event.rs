//! Deliveries to events: a verified webhook body becomes a [`ForgeEvent`]
//! (something that may start a run), a ping, or a reason why it starts
//! nothing. The body is a stranger's text even after its signature passed
//! (a forge relays what users name their branches): every field is read
//! with its type checked, nothing is indexed blindly, and the size is
//! bounded before parsing.

use serde::Serialize;
use serde_json::Value;

use crate::Forge;

/// Largest body accepted: GitHub caps webhook payloads at 25 MB.
pub const MAX_PAYLOAD: usize = 25 << 20;

/// A push with more commits than this in the payload may have been cut
/// (GitHub lists at most 20): its changed paths are then unknown.
const LISTED_COMMITS: usize = 20;

/// Something that may start a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ForgeEvent {
    /// Which forge sent it.
    pub forge: Forge,
    /// The delivery's id (`X-GitHub-Delivery`, `X-Forgejo-Delivery`).
    pub delivery: String,
    /// `owner/name` of the repository the run belongs to (for a pull
    /// request, the one it wants to merge into).
    pub repository: String,
    /// Where to clone it from.
    pub clone_url: String,
    /// The commit to run (for a pull request, its head).
    pub commit: String,
    /// The ref to fetch it by: `refs/heads/NAME`, `refs/tags/NAME`, or
    /// `refs/pull/N/head` for a pull request.
    pub git_ref: String,
    /// What happened.
    pub kind: EventKind,
    /// Who did it (the forge's login): for a pull request, whoever caused
    /// this delivery (opened it, pushed to it, pressed "Update branch",
    /// reopened it), which may be a maintainer acting on a stranger's code.
    pub sender: String,
    /// Whose code it is: a pull request's author (`pull_request.user`),
    /// the sender of a push. Trust in a fork's pull request is decided by
    /// this, never by the sender.
    pub author: String,
    /// The repository is private (or the payload does not say it is
    /// public): its runs' pages are for the operator only.
    pub private: bool,
    /// Paths the push changed, when the payload says so completely; `None`
    /// when it does not (path filters then let the run happen).
    pub changed_paths: Option<Vec<String>>,
    /// The GitHub App installation the delivery came through.
    pub installation: Option<u64>,
    /// The repository's default branch, when the payload names it.
    pub default_branch: Option<String>,
}

impl ForgeEvent {
    /// The repository, as the API calls about this event name it.
    pub fn repo(&self) -> crate::Repo {
        crate::Repo::new(self.repository.clone()).with_installation(self.installation)
    }
}

/// What a [`ForgeEvent`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum EventKind {
    /// A branch or tag was pushed (created, moved or forced).
    Push,
    /// A pull request was opened or updated.
    PullRequest {
        /// Its number.
        number: u64,
        /// What happened to it.
        action: PullRequestAction,
        /// The branch it wants to merge into.
        base_branch: String,
        /// Its head is in another repository (a fork): no secrets, and an
        /// operator's approval unless the author is trusted.
        from_fork: bool,
    },
}

/// The pull request actions that start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PullRequestAction {
    /// Opened.
    Opened,
    /// Reopened.
    Reopened,
    /// New commits (GitHub `synchronize`, Forgejo `synchronized`).
    Synchronized,
    /// A draft was marked ready (GitHub).
    ReadyForReview,
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Something that may start a run (the workflow's `on` decides).
    Event(ForgeEvent),
    /// The forge checking that the hook works.
    Ping,
    /// Someone asked GitHub to run checks again (`check_suite` or
    /// `check_run` `rerequested`): the jobs run again as new attempts.
    Rerun(Rerun),
    /// Nothing to do, and why (a branch deletion, a closed pull request,
    /// an event Solstice does not act on).
    Ignored {
        /// Why, for the forge's delivery log.
        reason: String,
    },
}

/// A request to run checks again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Rerun {
    /// The delivery's id.
    pub delivery: String,
    /// `owner/name`.
    pub repository: String,
    /// The commit whose checks run again.
    pub commit: String,
    /// The GitHub App installation the delivery came through.
    pub installation: Option<u64>,
    /// For one check run (`check_run`): its `external_id`, which Solstice
    /// set to `RUN/JOB`; `None` for the whole suite (`check_suite`).
    pub external_id: Option<String>,
    /// Who asked.
    pub sender: String,
}

/// Why a body is not a delivery Solstice can read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Over [`MAX_PAYLOAD`].
    #[error("the body has {len} bytes, more than the {MAX_PAYLOAD} accepted")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not JSON.
    #[error("the body is not JSON")]
    Json(#[source] serde_json::Error),
    /// A field the event needs is missing or has the wrong type.
    #[error("the payload has no usable `{0}`")]
    Field(&'static str),
    /// A field has a value that cannot be right (a commit that is not a
    /// hexadecimal object id, a ref that is not a branch or tag).
    #[error("the payload's `{field}` is not valid: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// Reads a delivery: `event` is the event header (`X-GitHub-Event`,
/// `X-Forgejo-Event` or `X-Gitea-Event`), `delivery` the delivery id, and
/// `body` the raw body (verify its signature first).
pub fn parse(
    forge: Forge,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> Result<Delivery, PayloadError> {
    if body.len() > MAX_PAYLOAD {
        return Err(PayloadError::TooLarge { len: body.len() });
    }
    match event {
        "ping" => return Ok(Delivery::Ping),
        "push" | "pull_request" => {}
        "check_suite" | "check_run" if forge == Forge::GitHub => {
            return rerun(event, delivery, body);
        }
        other => {
            return Ok(ignored(format!("`{}` events start nothing", clip(other))));
        }
    }
    let v: Value = serde_json::from_slice(body).map_err(PayloadError::Json)?;
    let p = Payload(&v);
    let repository = p.text(&["repository", "full_name"], "repository.full_name")?;
    let clone_url = p.text(&["repository", "clone_url"], "repository.clone_url")?;
    let sender = p
        .text(&["sender", "login"], "sender.login")
        .or_else(|_| p.text(&["sender", "username"], "sender.login"))?;
    let installation =
        p.0.get("installation")
            .and_then(|i| i.get("id"))
            .and_then(Value::as_u64);
    let default_branch = p
        .text(
            &["repository", "default_branch"],
            "repository.default_branch",
        )
        .ok();
    // Public only when the payload says so.
    let private = p
        .at(&["repository", "private"])
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let base = |commit: String, git_ref: String, kind, changed_paths, author: String| ForgeEvent {
        forge,
        delivery: delivery.to_string(),
        repository: repository.clone(),
        clone_url: clone_url.clone(),
        commit,
        git_ref,
        kind,
        sender: sender.clone(),
        author,
        private,
        changed_paths,
        installation,
        default_branch: default_branch.clone(),
    };
    if event == "push" {
        let git_ref = p.text(&["ref"], "ref")?;
        let name = git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| git_ref.strip_prefix("refs/tags/"));
        if name.is_none_or(str::is_empty) {
            // `refs/notes/...` and the like: a real push that builds nothing.
            return Ok(ignored(format!(
                "a push of `{}`, which is no branch or tag, starts nothing",
                clip(&git_ref)
            )));
        }
        let after = p.text(&["after"], "after")?;
        let deleted = p.flag(&["deleted"]) || is_zero_id(&after);
        if deleted {
            return Ok(ignored("a branch or tag was deleted".into()));
        }
        let commit = object_id(after, "after")?;
        let before = p.text(&["before"], "before").unwrap_or_default();
        let created = p.flag(&["created"]) || is_zero_id(&before);
        let changed = if created || p.flag(&["forced"]) {
            None // against what? the forge does not say
        } else {
            changed_paths(&v)
        };
        return Ok(Delivery::Event(base(
            commit,
            git_ref,
            EventKind::Push,
            changed,
            sender.clone(),
        )));
    }
    // pull_request
    let action = p.text(&["action"], "action")?;
    let action = match (forge, action.as_str()) {
        (_, "opened") => PullRequestAction::Opened,
        (_, "reopened") => PullRequestAction::Reopened,
        (Forge::GitHub, "synchronize") | (Forge::Forgejo, "synchronized") => {
            PullRequestAction::Synchronized
        }
        (Forge::GitHub, "ready_for_review") => PullRequestAction::ReadyForReview,
        (_, "closed") => return Ok(ignored("the pull request was closed".into())),
        (_, other) => {
            return Ok(ignored(format!(
                "pull request action `{}` starts nothing",
                clip(other)
            )));
        }
    };
    let number =
        p.0.get("number")
            .and_then(Value::as_u64)
            .ok_or(PayloadError::Field("number"))?;
    let commit = object_id(
        p.text(&["pull_request", "head", "sha"], "pull_request.head.sha")?,
        "pull_request.head.sha",
    )?;
    let base_branch = p.text(&["pull_request", "base", "ref"], "pull_request.base.ref")?;
    let author = p
        .text(
            &["pull_request", "user", "login"],
            "pull_request.user.login",
        )
        .or_else(|_| {
            p.text(
                &["pull_request", "user", "username"],
                "pull_request.user.login",
            )
        })?;
    let from_fork = is_fork(&p);
    let kind = EventKind::PullRequest {
        number,
        action,
        base_branch,
        from_fork,
    };
    Ok(Delivery::Event(base(
        commit,
        format!("refs/pull/{number}/head"),
        kind,
        None,
        author,
    )))
}

/// `check_suite` and `check_run` deliveries: only `rerequested` does
/// something.
fn rerun(event: &str, delivery: &str, body: &[u8]) -> Result<Delivery, PayloadError> {
    let v: Value = serde_json::from_slice(body).map_err(PayloadError::Json)?;
    let p = Payload(&v);
    let action = p.text(&["action"], "action")?;
    if action != "rerequested" {
        return Ok(ignored(format!(
            "`{event}` action `{}` starts nothing",
            clip(&action)
        )));
    }
    let (commit_path, name): (&[&str], _) = if event == "check_suite" {
        (&["check_suite", "head_sha"], "check_suite.head_sha")
    } else {
        (&["check_run", "head_sha"], "check_run.head_sha")
    };
    let commit = object_id(p.text(commit_path, name)?, name)?;
    let external_id = if event == "check_run" {
        match p.text(&["check_run", "external_id"], "check_run.external_id") {
            Ok(id) => Some(id),
            Err(_) => return Ok(ignored("the check run is not one of Solstice's".into())),
        }
    } else {
        None
    };
    Ok(Delivery::Rerun(Rerun {
        delivery: delivery.to_string(),
        repository: p.text(&["repository", "full_name"], "repository.full_name")?,
        commit,
        installation: p
            .0
            .get("installation")
            .and_then(|i| i.get("id"))
            .and_then(Value::as_u64),
        external_id,
        sender: p.text(&["sender", "login"], "sender.login")?,
    }))
}

fn ignored(reason: String) -> Delivery {
    Delivery::Ignored { reason }
}

/// At most 64 characters of a stranger's text, for a reason.
fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

struct Payload<'a>(&'a Value);

impl Payload<'_> {
    fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self.0, |v, k| v.get(k))
    }

    fn text(&self, path: &[&str], name: &'static str) -> Result<String, PayloadError> {
        self.at(path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or(PayloadError::Field(name))
    }

    fn flag(&self, path: &[&str]) -> bool {
        self.at(path).and_then(Value::as_bool).unwrap_or(false)
    }
}

/// A git object id: 40 (SHA-1) or 64 (SHA-256) hexadecimal digits.
fn object_id(text: String, field: &'static str) -> Result<String, PayloadError> {
    let ok = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(PayloadError::Invalid {
            field,
            why: "not a hexadecimal commit id",
        })
    }
}

fn is_zero_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b == b'0')
}

/// The paths a push's commits added, removed or modified, when the payload
/// lists every commit and names at least one path.
fn changed_paths(v: &Value) -> Option<Vec<String>> {
    let commits = v.get("commits")?.as_array()?;
    let total = v
        .get("total_commits")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok());
    if commits.is_empty()
        || commits.len() >= LISTED_COMMITS
        || total.is_some_and(|t| t > commits.len())
    {
        return None;
    }
    let mut paths = std::collections::BTreeSet::new();
    for commit in commits {
        for key in ["added", "removed", "modified"] {
            for path in commit.get(key)?.as_array()? {
                paths.insert(path.as_str()?.to_string());
            }
        }
    }
    (!paths.is_empty()).then(|| paths.into_iter().collect())
}

/// The pull request's head is in another repository than its base. A head
/// whose repository is gone (a deleted fork) counts as a fork.
fn is_fork(p: &Payload<'_>) -> bool {
    let id = |side: &str| {
        p.at(&["pull_request", side, "repo", "id"])
            .or_else(|| p.at(&["pull_request", side, "repo_id"]))
            .and_then(Value::as_u64)
    };
    match (id("head"), id("base")) {
        (Some(head), Some(base)) => head != base,
        // Forgejo's trimmed payloads name no repository on either side:
        // then the head is the base repository's own.
        (None, None) => p
            .at(&["pull_request", "head", "repo"])
            .is_some_and(Value::is_null),
        _ => true,
    }
}
