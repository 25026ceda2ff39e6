//! HTML pages: recent runs, a run's jobs, a job's steps and the end of
//! its log (refreshed every few seconds while it runs), and a held
//! delivery with its approval. Everything a workflow or a step wrote is
//! escaped, and characters that are not shown as themselves (controls,
//! bidirectional and format characters) are shown as `\u{..}` escapes.
//!
//! Pages of a private repository's runs (or of a run whose repository is
//! not known to be public) need the admin token: HTTP Basic with the token
//! as the password (any user name), or a Bearer token. Job ids are
//! sequential, so hiding links would hide nothing.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use solstice_core::store::{InboxState, IntegrationStore, JobId, RunId, StateStore};

use crate::daemon::{BoxError, Daemon, forge_of};
use crate::inbox::Target;

/// Most log bytes a page shows (its end); the API serves all of it.
const PAGE_LOG_BYTES: usize = 2 << 20;

/// Text for HTML: escaped, and every character that is not shown as
/// itself (controls but newline and tab, bidirectional and invisible
/// format characters) written as its `\u{..}` escape, as `cidev` does.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if solstice_kdl::text::is_hidden(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, refresh: bool, body: &str) -> Response {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"3\">"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}<title>{} · Solstice CI</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#111;color:#ddd;padding:1em;overflow-x:auto}}\
         td,th{{padding:.2em .8em;text-align:left}}.failed,.lost{{color:#b00}}.succeeded{{color:#070}}\
         .warning{{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}}</style></head>\
         <body><p><a href=\"/\">Solstice CI</a></p>{body}</body></html>",
        escape(title)
    );
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        Html(html),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        page("not found", false, &format!("<h1>No such {what}</h1>")),
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        page(
            "unavailable",
            false,
            "<h1>The state store cannot be read now</h1>",
        ),
    )
        .into_response()
}

/// 401, asking the browser for the admin token (Basic: any user name, the
/// token as the password).
fn sign_in() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        page(
            "sign in",
            false,
            "<h1>This page needs the admin token</h1><p>It belongs to a private repository \
             (or one not known to be public). Sign in with any user name and the admin token as the password.</p>",
        ),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Solstice CI\", charset=\"UTF-8\""),
    );
    response
}

fn is_admin(daemon: &Daemon, headers: &HeaderMap) -> bool {
    crate::auth::is_admin(daemon.config.admin_token.as_ref(), headers)
}

/// The target a run reports to, if the store knows it.
async fn target_of_run(daemon: &Daemon, run: RunId) -> Result<Option<Target>, BoxError> {
    Ok(daemon
        .store
        .delivery_of_run(run)
        .await?
        .and_then(|d| d.target)
        .and_then(|t| serde_json::from_str::<Target>(&t).ok()))
}

/// Whether anyone may see `run`'s pages: only a public repository's runs
/// are, and a run of unknown origin is not.
async fn public_run(daemon: &Daemon, run: RunId) -> Result<bool, BoxError> {
    Ok(target_of_run(daemon, run)
        .await?
        .is_some_and(|t| !t.private))
}

/// `None` when the viewer may see `run`'s pages, else the answer.
async fn gate(daemon: &Daemon, headers: &HeaderMap, run: RunId) -> Option<Response> {
    if is_admin(daemon, headers) {
        return None;
    }
    match public_run(daemon, run).await {
        Ok(true) => None,
        Ok(false) => Some(sign_in()),
        Err(_) => Some(unavailable()),
    }
}

/// Recent runs: every run for the operator, the public repositories' for
/// anyone else.
pub async fn index(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    let Ok(runs) = daemon.store.recent_runs(50, None).await else {
        return unavailable();
    };
    let admin = is_admin(&daemon, &headers);
    let mut body = String::from(
        "<h1>Recent runs</h1><table><tr><th>run</th><th>workflow</th><th>status</th><th>source</th></tr>",
    );
    let mut hidden = 0;
    for r in &runs {
        if !admin {
            match public_run(&daemon, r.id).await {
                Ok(true) => {}
                Ok(false) => {
                    hidden += 1;
                    continue;
                }
                Err(_) => return unavailable(),
            }
        }
        body.push_str(&format!(
            "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td class=\"{s}\">{s}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&r.source),
            id = r.id,
            s = r.status,
        ));
    }
    body.push_str("</table>");
    if hidden > 0 {
        body.push_str(&format!(
            "<p>{hidden} runs of private repositories are not listed: sign in with the admin token to see them.</p>"
        ));
    }
    page("runs", false, &body)
}

/// One run and its jobs.
pub async fn run_page(
    State(daemon): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let run = match daemon.store.run(RunId::new(id)).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found("run"),
        Err(_) => return unavailable(),
    };
    if let Some(refusal) = gate(&daemon, &headers, run.id).await {
        return refusal;
    }
    let Ok(jobs) = daemon.store.jobs(run.id).await else {
        return unavailable();
    };
    let mut body = format!(
        "<h1>Run {} · {}</h1><p>status: <span class=\"{s}\">{s}</span> · {}</p><table><tr><th>job</th><th>status</th><th>attempts</th><th>reason</th></tr>",
        run.id,
        escape(&run.name),
        escape(&run.source),
        s = run.status
    );
    for j in &jobs {
        body.push_str(&format!(
            "<tr><td><a href=\"/jobs/{}\">{}</a></td><td class=\"{s}\">{s}</td><td>{}</td><td>{}</td></tr>",
            j.id,
            escape(&j.key),
            j.attempts,
            escape(j.reason.as_deref().unwrap_or("")),
            s = j.status
        ));
    }
    body.push_str("</table>");
    let running = run.status == solstice_core::store::RunStatus::Running;
    page(&format!("run {}", run.id), running, &body)
}

/// What a page of a job on the local provider says about where it ran.
fn local_warning(daemon: &Daemon) -> String {
    let who = match &daemon.config.run_as {
        Some(user) => format!("as user <code>{}</code>", escape(user)),
        None => "as the daemon's own user, with <strong>no isolation</strong> from the daemon and its secrets".into(),
    };
    format!(
        "<p class=\"warning\">This job ran on the local provider: as a process on the daemon's host, {who}, without a VM.</p>"
    )
}

/// One job: its attempts, the latest attempt's steps, and the end of its
/// log (read from the store as far as it is shown, no further).
pub async fn job_page(
    State(daemon): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let job = match daemon.store.job(JobId::new(id)).await {
        Ok(Some(j)) => j,
        Ok(None) => return not_found("job"),
        Err(_) => return unavailable(),
    };
    if let Some(refusal) = gate(&daemon, &headers, job.run_id).await {
        return refusal;
    }
    let Ok(attempts) = daemon.store.attempts(job.id).await else {
        return unavailable();
    };
    let mut body = format!(
        "<h1>{}</h1><p><a href=\"/runs/{run}\">run {run}</a> · status: <span class=\"{s}\">{s}</span>{}</p>",
        escape(&job.key),
        job.reason
            .as_deref()
            .map(|r| format!(" · {}", escape(r)))
            .unwrap_or_default(),
        run = job.run_id,
        s = job.status,
    );
    if daemon.config.runs_locally(&job.label) {
        body.push_str(&local_warning(&daemon));
    }
    if attempts.len() > 1 {
        body.push_str("<p>attempts (their logs through the API, with the admin token): ");
        for a in &attempts {
            body.push_str(&format!(
                "<a href=\"/api/v1/jobs/{}/log?attempt={n}\">#{n} {}</a> ",
                job.id,
                a.status,
                n = a.number
            ));
        }
        body.push_str("</p>");
    }
    if let Some(latest) = attempts.iter().max_by_key(|a| a.number) {
        let Ok(steps) = daemon.store.steps(latest.id).await else {
            return unavailable();
        };
        body.push_str("<table><tr><th>step</th><th>status</th><th>exit</th><th>duration</th></tr>");
        for s in &steps {
            let duration = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => format!("{:.1} s", (b - a) as f64 / 1000.0),
                _ => String::new(),
            };
            body.push_str(&format!(
                "<tr><td>{}</td><td class=\"{st}\">{st}</td><td>{}</td><td>{duration}</td></tr>",
                escape(&s.name),
                s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                st = s.status,
            ));
        }
        body.push_str("</table>");
        let Ok(chunks) = daemon.store.log_tail(latest.id, PAGE_LOG_BYTES).await else {
            return unavailable();
        };
        let mut log = Vec::with_capacity(PAGE_LOG_BYTES);
        for chunk in &chunks {
            log.extend_from_slice(&chunk.data);
        }
        let cut = log.len().saturating_sub(PAGE_LOG_BYTES);
        if cut > 0 || chunks.first().is_some_and(|c| c.seq > 0) && log.len() >= PAGE_LOG_BYTES {
            body.push_str(&format!(
                "<p>Only the last {PAGE_LOG_BYTES} bytes of the log are shown: <a href=\"/api/v1/jobs/{}/log\">the whole log</a> (API, admin token).</p>",
                job.id
            ));
        }
        body.push_str(&format!(
            "<pre id=\"log\">{}</pre>",
            escape(&String::from_utf8_lossy(&log[cut..]))
        ));
    } else {
        body.push_str("<p>Not started yet.</p>");
    }
    page(&job.key, !job.status.is_final(), &body)
}

/// A delivery held for approval (a fork's pull request): what it is, and
/// the button that approves it (the operator signs in with the admin
/// token when pressing it). Where the forge's held statuses link to.
pub async fn delivery_page(
    State(daemon): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path((forge, id)): Path<(String, String)>,
) -> Response {
    if forge_of(&forge).is_none() {
        return not_found("delivery");
    }
    let entry = match daemon.store.delivery(&forge, &id).await {
        Ok(Some(e)) => e,
        Ok(None) => return not_found("delivery"),
        Err(_) => return unavailable(),
    };
    let target = entry
        .target
        .as_deref()
        .and_then(|t| serde_json::from_str::<Target>(t).ok());
    if target.as_ref().is_none_or(|t| t.private) && !is_admin(&daemon, &headers) {
        return sign_in();
    }
    let mut body = format!(
        "<h1>Delivery {} · {}</h1><table>",
        escape(&forge),
        escape(&id)
    );
    let mut row = |k: &str, v: &str| {
        body.push_str(&format!("<tr><th>{k}</th><td>{}</td></tr>", escape(v)));
    };
    row("event", &entry.event);
    row("state", entry.state.as_str());
    row("outcome", entry.outcome.as_deref().unwrap_or(""));
    if let Some(t) = &target {
        row("repository", &t.repository);
        row("commit", &t.commit);
        row("ref", &t.git_ref);
        row("author (whose code it is)", &t.author);
        row("sender (who caused this delivery)", &t.sender);
        row("from a fork", if t.from_fork { "yes" } else { "no" });
    }
    body.push_str("</table>");
    if let Some(run) = entry.run {
        body.push_str(&format!("<p><a href=\"/runs/{run}\">run {run}</a></p>"));
    }
    if entry.state == InboxState::AwaitingApproval {
        body.push_str(&format!(
            "<p>This pull request comes from a fork and its author is not trusted: its code runs only once an operator has read it and approves <strong>this commit</strong> (a new commit needs a new approval). It runs without the repository's secrets.</p>\
             <form method=\"post\" action=\"/deliveries/{f}/{i}/approve\"><button type=\"submit\">Approve this commit</button></form>\
             <p>Or: <code>ciadm approve {f} {i}</code></p>",
            f = escape(&forge),
            i = escape(&id),
        ));
    }
    page(&format!("delivery {id}"), false, &body)
}

/// `POST /deliveries/{forge}/{id}/approve` from the page's button: the
/// admin token (Basic or Bearer) is required, and a request from another
/// site (a browser's stored Basic credentials riding along) is refused.
pub async fn approve_from_page(
    State(daemon): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path((forge, id)): Path<(String, String)>,
) -> Response {
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none")
        || headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|origin| {
                let host = headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let own = origin == daemon.config.public_url
                    || (!host.is_empty()
                        && origin.split_once("://").is_some_and(|(_, h)| h == host));
                !own
            });
    if cross_site {
        return (
            StatusCode::FORBIDDEN,
            page(
                "refused",
                false,
                "<h1>Approvals come from this site's own page</h1>",
            ),
        )
            .into_response();
    }
    if !is_admin(&daemon, &headers) {
        return sign_in();
    }
    match crate::http::approve_delivery(&daemon, &forge, &id).await {
        Ok(()) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/deliveries/{forge}/{id}"))],
        )
            .into_response(),
        Err((status, why)) => (
            status,
            page(
                "not approved",
                false,
                &format!("<h1>Not approved</h1><p>{}</p>", escape(&why)),
            ),
        )
            .into_response(),
    }
}

/// A job's stored log for one attempt (the latest by default): the
/// steps' output and the system's lines, in order.
pub async fn job_log(
    daemon: &Daemon,
    job: JobId,
    attempt: Option<u32>,
) -> Result<Option<Vec<u8>>, BoxError> {
    if daemon.store.job(job).await?.is_none() {
        return Ok(None);
    }
    let attempts = daemon.store.attempts(job).await?;
    let chosen = match attempt {
        Some(n) => attempts.iter().find(|a| a.number == n),
        None => attempts.iter().max_by_key(|a| a.number),
    };
    let Some(chosen) = chosen else {
        return Ok(if attempt.is_some() {
            None
        } else {
            Some(Vec::new())
        });
    };
    let mut out = Vec::new();
    for chunk in daemon.store.logs(chosen.id).await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(Some(out))
}
