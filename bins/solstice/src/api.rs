//! The operator's API (`ciadm`): the fleet, cancelling a run, and why a
//! job waits. Every `/api/v1` call needs the admin token (the router's
//! guard).

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
                    job.needs.iter().any(|n| {
                        j.key == *n
                            || j.key
                                .strip_prefix(n.as_str())
                                .is_some_and(|r| r.starts_with(" ("))
                    }) && j.status != JobStatus::Succeeded
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
