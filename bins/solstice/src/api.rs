//! The operator's API (`ciadm`): the fleet, cancelling a run, retrying a
//! job, manual runs, a delivery's fate, and why a job waits. Every `/api/v1`
//! call needs the admin token (the router's guard).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use solstice_core::engine::now_ms;
use solstice_core::store::{
    HostEntry, IntegrationStore, JobId, JobStatus, RunId, RunStatus, StateStore,
};

use crate::daemon::Daemon;
use crate::http::{answer, refuse, store_error};

type Shared = State<Arc<Daemon>>;

/// A host whose last heartbeat is older than this is shown as gone.
const ALIVE_MS: i64 = 3 * crate::daemon::HEARTBEAT.as_millis() as i64;

/// Hosts gone for longer than this are not listed.
const LISTED_MS: i64 = 24 * 3600 * 1000;

/// Refuses `/api/v1` calls without the admin token (401).
pub async fn guard(
    State(daemon): Shared,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = crate::http::admin(&daemon, &headers) {
        return refusal;
    }
    next.run(request).await
}

fn alive(host: &HostEntry, now: i64) -> bool {
    now - host.seen_at <= ALIVE_MS
}

/// `GET /api/v1/hosts`: every host seen in the last day.
pub async fn hosts(State(daemon): Shared) -> Response {
    let now = now_ms();
    match daemon.store.hosts(now - LISTED_MS).await {
        Ok(hosts) => {
            let list: Vec<_> = hosts
                .iter()
                .map(|h| {
                    json!({
                        "name": h.name,
                        "role": h.role,
                        "labels": h.labels,
                        "capacity": h.capacity,
                        "running": h.running,
                        "version": h.version,
                        "started_at": h.started_at,
                        "seen_at": h.seen_at,
                        "alive": alive(h, now),
                    })
                })
                .collect();
            answer(StatusCode::OK, json!({ "hosts": list }))
        }
        Err(e) => store_error(&e),
    }
}

/// `POST /api/v1/runs/{id}/cancel`: waiting jobs are cancelled at once;
/// running ones stop when their host next renews its lease (within a
/// third of the lease).
pub async fn cancel(State(daemon): Shared, Path(id): Path<i64>) -> Response {
    let run = match daemon.store.run(RunId::new(id)).await {
        Ok(Some(run)) => run,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such run"),
        Err(e) => return store_error(&e),
    };
    if run.status != RunStatus::Running {
        return refuse(
            StatusCode::CONFLICT,
            format!("the run has ended: {}", run.status),
        );
    }
    match daemon.engine.cancel_run(run.id).await {
        Ok(()) => answer(StatusCode::ACCEPTED, json!({ "status": "cancelling" })),
        Err(e) => store_error(&e),
    }
}

/// What `POST /api/v1/trigger` takes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// `github` or `forgejo`; default: the one configured.
    forge: Option<String>,
    /// `owner/name`.
    repository: String,
    /// A branch or tag (`main`, `refs/tags/v1`), resolved by the forge.
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// A commit (40 or 64 hex digits); wins over `ref`.
    commit: Option<String>,
    /// Where to clone from; default: the forge's clone URL of the
    /// repository.
    clone_url: Option<String>,
}

/// `POST /api/v1/trigger`: a manual run of a repository at a ref or
/// commit. Recorded as a delivery (event `manual`) and processed like one:
/// 202 with the delivery, whose run `GET /api/v1/deliveries/{forge}/{id}`
/// shows once it has started.
pub async fn trigger(
    State(daemon): Shared,
    body: Result<axum::Json<Trigger>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(axum::Json(asked)) = body else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a JSON object: repository, and ref or commit (forge, clone_url optional)",
        );
    };
    let configured: Vec<solstice_forge::Forge> = [
        solstice_forge::Forge::GitHub,
        solstice_forge::Forge::Forgejo,
    ]
    .into_iter()
    .filter(|f| daemon.forge(*f).is_some())
    .collect();
    let forge = match asked.forge.as_deref() {
        Some(name) => match crate::daemon::forge_of(name) {
            Some(f) if configured.contains(&f) => f,
            _ => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "that forge is not configured on this daemon",
                );
            }
        },
        None => match configured.as_slice() {
            [one] => *one,
            [] => {
                return refuse(
                    StatusCode::CONFLICT,
                    "no forge is configured on this daemon",
                );
            }
            _ => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "two forges are configured: say which (forge)",
                );
            }
        },
    };
    let Some(link) = daemon.forge(forge) else {
        return refuse(
            StatusCode::CONFLICT,
            "no forge is configured on this daemon",
        );
    };
    let repo = solstice_forge::Repo::new(asked.repository.clone());
    if let Err(e) = repo.path() {
        return refuse(StatusCode::BAD_REQUEST, crate::daemon::chain(&e));
    }
    let commit = match (&asked.commit, &asked.git_ref) {
        (Some(c), _) => {
            if !matches!(c.len(), 40 | 64) || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return refuse(StatusCode::BAD_REQUEST, "commit: 40 or 64 hex digits");
            }
            c.to_ascii_lowercase()
        }
        (None, Some(r)) => match link.adapter.resolve_commit(&repo, r).await {
            Ok(Some(c)) => c,
            Ok(None) => return refuse(StatusCode::NOT_FOUND, "the forge knows no such ref"),
            Err(solstice_forge::ForgeError::Invalid { why, .. }) => {
                return refuse(StatusCode::BAD_REQUEST, why);
            }
            Err(e) => {
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    format!("the forge did not answer: {}", crate::daemon::chain(&e)),
                );
            }
        },
        (None, None) => return refuse(StatusCode::BAD_REQUEST, "give a ref or a commit"),
    };
    let git_ref = match &asked.git_ref {
        Some(r) if r.starts_with("refs/") => r.clone(),
        Some(r) => format!("refs/heads/{r}"),
        None => String::new(),
    };
    let clone_url = match asked.clone_url {
        Some(u) => u,
        None => match crate::daemon::clone_origin(&daemon.config, forge) {
            Some(origin) => format!("{}{}.git", origin.prefix(), asked.repository),
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "clone_url: the forge's URL says nothing",
                );
            }
        },
    };
    let run = crate::inbox::ManualRun {
        repository: asked.repository,
        commit: commit.clone(),
        git_ref,
        clone_url,
        sender: "ciadm".into(),
    };
    let Ok(body) = serde_json::to_vec(&run) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the run");
    };
    let id = format!("manual-{}-{:08x}", now_ms(), rand_u32());
    let forge_name = crate::daemon::forge_name(forge);
    match daemon
        .store
        .record_delivery(forge_name, &id, crate::inbox::MANUAL, &body, now_ms())
        .await
    {
        Ok(_) => {
            daemon.inbox.notify_one();
            answer(
                StatusCode::ACCEPTED,
                json!({ "forge": forge_name, "delivery": id, "commit": commit }),
            )
        }
        Err(e) => store_error(&e),
    }
}

/// A random number for ids, from the standard library's hasher seed.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish() as u32
}

/// `GET /api/v1/deliveries/{forge}/{id}`: what became of a delivery (its
/// run, once started).
pub async fn delivery(
    State(daemon): Shared,
    Path((forge, id)): Path<(String, String)>,
) -> Response {
    match daemon.store.delivery(&forge, &id).await {
        Ok(Some(d)) => answer(
            StatusCode::OK,
            json!({
                "forge": d.forge,
                "id": d.id,
                "event": d.event,
                "state": d.state.as_str(),
                "outcome": d.outcome,
                "run_id": d.run,
            }),
        ),
        Ok(None) => refuse(StatusCode::NOT_FOUND, "no such delivery"),
        Err(e) => store_error(&e),
    }
}

/// `POST /api/v1/jobs/{id}/retry`: one more attempt of an ended job (its
/// earlier attempts are kept); its run is open again until it ends. What
/// was skipped because the job had failed stays skipped.
pub async fn retry(State(daemon): Shared, Path(id): Path<i64>) -> Response {
    let store = &daemon.store;
    match store.job(JobId::new(id)).await {
        Ok(Some(job)) if job.status == JobStatus::Skipped => {
            return refuse(
                StatusCode::CONFLICT,
                "the job was skipped (something it needs did not succeed): retry that",
            );
        }
        Ok(Some(_)) => {}
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such job"),
        Err(e) => return store_error(&e),
    }
    match store.retry_job(JobId::new(id)).await {
        Ok(true) => {}
        Ok(false) => return refuse(StatusCode::CONFLICT, "the job has not ended"),
        Err(e) => return store_error(&e),
    }
    let job = match store.job(JobId::new(id)).await {
        Ok(Some(job)) => job,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such job"),
        Err(e) => return store_error(&e),
    };
    // Not published (the queue is away): the job is queued in the store,
    // and reconciliation publishes it.
    if let Err(e) = daemon.engine.publish_queued(&job).await {
        tracing::warn!(job = %job.id, error = %crate::daemon::chain(&e), "a retried job is queued but not yet published");
    }
    answer(
        StatusCode::ACCEPTED,
        json!({ "status": "queued", "attempt": job.attempts + 1 }),
    )
}

/// `GET /api/v1/jobs/{id}/why`: why a job is not running (yet).
pub async fn why(State(daemon): Shared, Path(id): Path<i64>) -> Response {
    let store = &daemon.store;
    let job = match store.job(JobId::new(id)).await {
        Ok(Some(job)) => job,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such job"),
        Err(e) => return store_error(&e),
    };
    let reply = |reason: &str, text: String, extra: serde_json::Value| {
        answer(
            StatusCode::OK,
            json!({ "job": job.id, "status": job.status, "reason": reason, "text": text, "details": extra }),
        )
    };
    match job.status {
        JobStatus::Pending => {
            let jobs = match store.jobs(job.run_id).await {
                Ok(jobs) => jobs,
                Err(e) => return store_error(&e),
            };
            // A `needs` name covers every expansion of a matrix job.
            let waiting: Vec<_> = jobs
                .iter()
                .filter(|j| {
                    job.needs
                        .iter()
                        .any(|n| solstice_kdl::matrix::base_of(&j.key) == n)
                        && j.status != JobStatus::Succeeded
                })
                .map(|j| json!({ "key": j.key, "status": j.status }))
                .collect();
            let names: Vec<String> = waiting
                .iter()
                .map(|w| {
                    format!(
                        "{} ({})",
                        w["key"].as_str().unwrap_or_default(),
                        w["status"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            reply(
                "needs",
                format!("waiting for what it needs to succeed: {}", names.join(", ")),
                json!({ "waiting_for": waiting }),
            )
        }
        JobStatus::Queued => {
            let now = now_ms();
            let hosts = match store.hosts(now - ALIVE_MS).await {
                Ok(h) => h,
                Err(e) => return store_error(&e),
            };
            let serving: Vec<&HostEntry> = hosts
                .iter()
                .filter(|h| h.labels.iter().any(|l| *l == job.label || l == "*"))
                .collect();
            let queued = match store.queued_jobs().await {
                Ok(q) => q,
                Err(e) => return store_error(&e),
            };
            let depth = queued.iter().filter(|j| j.label == job.label).count();
            let ahead = queued
                .iter()
                .filter(|j| j.label == job.label && j.id < job.id)
                .count();
            let details = json!({
                "label": job.label,
                "queue_depth": depth,
                "ahead": ahead,
                "hosts": serving.iter().map(|h| json!({ "name": h.name, "running": h.running, "capacity": h.capacity })).collect::<Vec<_>>(),
            });
            if serving.is_empty() {
                reply(
                    "no-host",
                    format!(
                        "no live host serves the label `{}` ({depth} jobs of it queued)",
                        job.label
                    ),
                    details,
                )
            } else if serving.iter().all(|h| h.running >= h.capacity) {
                let load: Vec<String> = serving
                    .iter()
                    .map(|h| format!("{} {}/{}", h.name, h.running, h.capacity))
                    .collect();
                reply(
                    "full",
                    format!(
                        "every host serving `{}` is full ({}); {depth} jobs of it queued, {ahead} before this one",
                        job.label,
                        load.join(", ")
                    ),
                    details,
                )
            } else {
                reply(
                    "starting",
                    format!(
                        "a host serving `{}` has room: the job starts when it takes it ({ahead} queued before it)",
                        job.label
                    ),
                    details,
                )
            }
        }
        JobStatus::Running => reply("running", "it is running".into(), json!({})),
        status => reply(
            "ended",
            format!(
                "it has ended: {status}{}",
                job.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            json!({}),
        ),
    }
}
