//! The HTTP server: webhook endpoints (one per forge), the job pages and
//! the JSON API (`/api/v1`).
//!
//! A webhook is answered after it is verified and recorded, before it is
//! processed: 202 with what will happen, 200 for a ping, and a 4xx with no
//! side effect for anything the sender got wrong (401 signature, 413 size,
//! 415 content type, 400 body or headers). A store failure is 503: the
//! forge delivers again later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use solstice_core::store::{InboxState, IntegrationStore, JobId, RunId, StateStore};
use solstice_forge::{Delivery, Forge, Headers, MAX_PAYLOAD, PayloadError, WebhookError};

use crate::body::BodyError;
use crate::daemon::{Daemon, chain, forge_name, forge_of};

type Shared = State<Arc<Daemon>>;

/// The router.
pub fn router(daemon: Arc<Daemon>) -> Router {
    // Every API call needs the admin token.
    let api = Router::new()
        .route("/api/v1/runs", get(api_runs))
        .route("/api/v1/runs/{id}", get(api_run))
        .route("/api/v1/runs/{id}/cancel", post(crate::api::cancel))
        .route("/api/v1/jobs/{id}", get(api_job))
        .route("/api/v1/jobs/{id}/log", get(api_log))
        .route("/api/v1/jobs/{id}/why", get(crate::api::why))
        .route("/api/v1/jobs/{id}/retry", post(crate::api::retry))
        .route("/api/v1/trigger", post(crate::api::trigger))
        .route("/api/v1/deliveries/{forge}/{id}", get(crate::api::delivery))
        .route("/api/v1/hosts", get(crate::api::hosts))
        .route("/api/v1/deliveries", get(api_deliveries))
        .route("/api/v1/deliveries/{forge}/{id}/approve", post(api_approve))
        .route_layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            crate::api::guard,
        ));
    Router::new()
        .route("/hooks/github", post(github_hook))
        .route("/hooks/forgejo", post(forgejo_hook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(crate::pages::index))
        .route("/runs/{id}", get(crate::pages::run_page))
        .route("/jobs/{id}", get(crate::pages::job_page))
        .route("/deliveries/{forge}/{id}", get(crate::pages::delivery_page))
        .route(
            "/deliveries/{forge}/{id}/approve",
            post(crate::pages::approve_from_page),
        )
        .merge(api)
        // The body limit is checked again by the adapter; this one stops
        // the server reading past it.
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
        .with_state(daemon)
}

/// A JSON answer.
pub fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

pub fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    answer(status, json!({ "error": why.into() }))
}

async fn github_hook(daemon: Shared, peer: Peer, headers: HeaderMap, body: Body) -> Response {
    hook(daemon, Forge::GitHub, peer, headers, body).await
}

async fn forgejo_hook(daemon: Shared, peer: Peer, headers: HeaderMap, body: Body) -> Response {
    hook(daemon, Forge::Forgejo, peer, headers, body).await
}

/// The client's address, when the connection has one (`listener.rs`
/// puts it in the request's extensions).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip()),
        ))
    }
}

/// How long a webhook body may take to arrive (a forge gives up on a
/// delivery after 10 s).
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

async fn hook(
    State(daemon): Shared,
    forge: Forge,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !daemon.accepting.load(Ordering::SeqCst) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    let Some(link) = daemon.forge(forge) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("{} is not configured on this daemon", forge_name(forge)),
        );
    };
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_PAYLOAD} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_PAYLOAD as u64) {
        return too_large();
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the content type must be application/json (set the webhook's content type to JSON)",
        );
    }
    // Memory is taken as the bytes arrive, not for the declared length:
    // a body that trickles holds only what it sent, until the deadline.
    let address = peer.0;
    let (body, _hold) = match daemon
        .body_budget
        .read(body, address, MAX_PAYLOAD, BODY_DEADLINE)
        .await
    {
        Ok(read) => read,
        Err(BodyError::TooLarge(_)) => return too_large(),
        Err(e @ BodyError::TooSlow(_)) => {
            return refuse(StatusCode::REQUEST_TIMEOUT, e.to_string());
        }
        Err(e @ BodyError::Busy) => {
            return crate::listener::busy(&e.to_string(), std::time::Duration::from_secs(5));
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body cannot be read: {}", chain(&e)),
            );
        }
    };
    let mut ours = Headers::new();
    for (name, value) in &headers {
        ours.insert(name.as_str(), value.as_bytes());
    }
    let received = match link.adapter.receive(&ours, &body) {
        Ok(r) => r,
        Err(WebhookError::Signature(e)) => return refuse(StatusCode::UNAUTHORIZED, e.to_string()),
        Err(WebhookError::Payload(PayloadError::TooLarge { .. })) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_PAYLOAD} bytes"),
            );
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, chain(&e)),
    };
    match &received.delivery {
        Delivery::Ping => return answer(StatusCode::OK, json!({ "status": "pong" })),
        Delivery::Ignored { reason } => {
            return answer(
                StatusCode::ACCEPTED,
                json!({ "status": "ignored", "reason": reason }),
            );
        }
        _ => {}
    }
    let recorded = daemon
        .intake
        .record(forge_name(forge), &received.id, &received.event, body)
        .await;
    match recorded {
        Ok(true) => {
            daemon.inbox.notify_one();
            answer(
                StatusCode::ACCEPTED,
                json!({ "status": "accepted", "delivery": received.id }),
            )
        }
        Ok(false) => answer(
            StatusCode::ACCEPTED,
            json!({ "status": "duplicate", "reason": "this delivery was received before", "delivery": received.id }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot record a delivery");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery cannot be recorded now; deliver it again later",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<usize>,
    before: Option<i64>,
}

pub fn store_error(e: &dyn std::error::Error) -> Response {
    tracing::warn!(error = %e, "store error in the API");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the state store cannot be read now",
    )
}

async fn api_runs(State(daemon): Shared, Query(page): Query<Page>) -> Response {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    match daemon
        .store
        .recent_runs(limit, page.before.map(RunId::new))
        .await
    {
        Ok(runs) => {
            let next = (runs.len() == limit)
                .then(|| runs.last().map(|r| r.id.get()))
                .flatten();
            answer(StatusCode::OK, json!({ "runs": runs, "next_before": next }))
        }
        Err(e) => store_error(&e),
    }
}

/// A job as the API shows it (without its stored spec).
pub fn job_json(job: &solstice_core::store::Job) -> Value {
    json!({
        "id": job.id,
        "run_id": job.run_id,
        "key": job.key,
        "label": job.label,
        "needs": job.needs,
        "status": job.status,
        "reason": job.reason,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
    })
}

async fn api_run(State(daemon): Shared, Path(id): Path<i64>) -> Response {
    let run = match daemon.store.run(RunId::new(id)).await {
        Ok(Some(run)) => run,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such run"),
        Err(e) => return store_error(&e),
    };
    let jobs = match daemon.store.jobs(run.id).await {
        Ok(jobs) => jobs,
        Err(e) => return store_error(&e),
    };
    let delivery = match daemon.store.delivery_of_run(run.id).await {
        Ok(d) => d.map(|d| {
            json!({
                "forge": d.forge,
                "id": d.id,
                "event": d.event,
                "target": d.target.and_then(|t| serde_json::from_str::<Value>(&t).ok()),
            })
        }),
        Err(e) => return store_error(&e),
    };
    let jobs: Vec<Value> = jobs.iter().map(job_json).collect();
    answer(
        StatusCode::OK,
        json!({ "run": run, "jobs": jobs, "delivery": delivery }),
    )
}

async fn api_job(State(daemon): Shared, Path(id): Path<i64>) -> Response {
    let job = match daemon.store.job(JobId::new(id)).await {
        Ok(Some(job)) => job,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such job"),
        Err(e) => return store_error(&e),
    };
    let attempts = match daemon.store.attempts(job.id).await {
        Ok(a) => a,
        Err(e) => return store_error(&e),
    };
    let mut out = Vec::new();
    for a in attempts {
        let steps = match daemon.store.steps(a.id).await {
            Ok(s) => s,
            Err(e) => return store_error(&e),
        };
        out.push(json!({
            "number": a.number,
            "status": a.status,
            "reason": a.reason,
            "started_at": a.started_at,
            "finished_at": a.finished_at,
            "steps": steps,
        }));
    }
    answer(
        StatusCode::OK,
        json!({ "job": job_json(&job), "attempts": out }),
    )
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    attempt: Option<u32>,
}

/// The stored log of a job's attempt (the latest by default), as text.
async fn api_log(
    State(daemon): Shared,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> Response {
    match crate::pages::job_log(&daemon, JobId::new(id), q.attempt).await {
        Ok(Some(bytes)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, "no such job or attempt"),
        Err(e) => store_error(&*e),
    }
}

/// Writes and the delivery list need the admin token: the refusal, or
/// `None` when the token is right.
pub fn admin(daemon: &Daemon, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &daemon.config.admin_token else {
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            "no admin token is configured on this daemon",
        ));
    };
    let same = crate::auth::is_admin(Some(token), headers);
    (!same).then(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "a valid admin token is required (Authorization: Bearer ...)",
        )
    })
}

async fn api_deliveries(State(daemon): Shared, headers: HeaderMap) -> Response {
    if let Some(r) = admin(&daemon, &headers) {
        return r;
    }
    let mut out = Vec::new();
    for state in [InboxState::Pending, InboxState::AwaitingApproval] {
        match daemon.store.deliveries(state, 500).await {
            Ok(list) => out.extend(list.into_iter().map(|d| {
                json!({
                    "forge": d.forge,
                    "id": d.id,
                    "event": d.event,
                    "state": d.state.as_str(),
                    "outcome": d.outcome,
                    "received_at": d.received_at,
                })
            })),
            Err(e) => return store_error(&e),
        }
    }
    answer(StatusCode::OK, json!({ "deliveries": out }))
}

/// Approves a held delivery (a fork's pull request): it runs, without secrets.
async fn api_approve(
    State(daemon): Shared,
    headers: HeaderMap,
    Path((forge, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = admin(&daemon, &headers) {
        return r;
    }
    match approve_delivery(&daemon, &forge, &id).await {
        Ok(()) => answer(StatusCode::ACCEPTED, json!({ "status": "approved" })),
        Err((status, why)) => refuse(status, why),
    }
}

/// Approves a held delivery: its commit may run (without secrets); the
/// inbox processes it again. The API's and the page's approval.
pub async fn approve_delivery(
    daemon: &Daemon,
    forge: &str,
    id: &str,
) -> Result<(), (StatusCode, String)> {
    let unavailable = |e: &dyn std::error::Error| {
        tracing::warn!(error = %e, "store error approving a delivery");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the state store cannot be read now".to_string(),
        )
    };
    if forge_of(forge).is_none() {
        return Err((StatusCode::NOT_FOUND, "no such forge".into()));
    }
    let entry = match daemon.store.delivery(forge, id).await {
        Ok(Some(e)) => e,
        Ok(None) => return Err((StatusCode::NOT_FOUND, "no such delivery".into())),
        Err(e) => return Err(unavailable(&e)),
    };
    if entry.state != InboxState::AwaitingApproval {
        return Err((
            StatusCode::CONFLICT,
            "this delivery is not waiting for approval".into(),
        ));
    }
    let mut target: crate::inbox::Target = match entry.target.as_deref().map(serde_json::from_str) {
        Some(Ok(t)) => t,
        _ => {
            return Err((
                StatusCode::CONFLICT,
                "this delivery's record is incomplete".into(),
            ));
        }
    };
    target.approved = true;
    let target = serde_json::to_string(&target).ok();
    match daemon
        .store
        .set_delivery(
            forge,
            id,
            InboxState::Pending,
            "approved",
            None,
            target.as_deref(),
        )
        .await
    {
        Ok(()) => {
            daemon.inbox.notify_one();
            Ok(())
        }
        Err(e) => Err(unavailable(&e)),
    }
}
