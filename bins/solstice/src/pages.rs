//! Read-only HTML pages: recent runs, a run's jobs, a job's steps and
//! stored log (refreshed every few seconds while it runs). Everything a
//! workflow or a step wrote is escaped, and control characters (terminal
//! escapes) are dropped before it reaches a browser.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use solstice_core::store::{IntegrationStore, JobId, RunId, StateStore};

use crate::daemon::{BoxError, Daemon};

/// Most log bytes a page shows (its end); the API serves all of it.
const PAGE_LOG_BYTES: usize = 2 << 20;

/// Text for HTML: escaped, control characters but newline and tab dropped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
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
         td,th{{padding:.2em .8em;text-align:left}}.failed,.lost{{color:#b00}}.succeeded{{color:#070}}</style></head>\
         <body><p><a href=\"/\">Solstice CI</a></p>{body}</body></html>",
        escape(title)
    );
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'",
        )],
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

/// Recent runs.
pub async fn index(State(daemon): State<Arc<Daemon>>) -> Response {
    let Ok(runs) = daemon.store.recent_runs(50, None).await else {
        return unavailable();
    };
    let mut body = String::from(
        "<h1>Recent runs</h1><table><tr><th>run</th><th>workflow</th><th>status</th><th>source</th></tr>",
    );
    for r in &runs {
        body.push_str(&format!(
            "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td class=\"{s}\">{s}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&r.source),
            id = r.id,
            s = r.status,
        ));
    }
    body.push_str("</table>");
    page("runs", false, &body)
}

/// One run and its jobs.
pub async fn run_page(State(daemon): State<Arc<Daemon>>, Path(id): Path<i64>) -> Response {
    let run = match daemon.store.run(RunId::new(id)).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found("run"),
        Err(_) => return unavailable(),
    };
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

/// One job: its attempts, the latest attempt's steps, and its log.
pub async fn job_page(State(daemon): State<Arc<Daemon>>, Path(id): Path<i64>) -> Response {
    let job = match daemon.store.job(JobId::new(id)).await {
        Ok(Some(j)) => j,
        Ok(None) => return not_found("job"),
        Err(_) => return unavailable(),
    };
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
    if attempts.len() > 1 {
        body.push_str("<p>attempts: ");
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
        match job_log(&daemon, job.id, Some(latest.number)).await {
            Ok(Some(log)) => {
                let cut = log.len().saturating_sub(PAGE_LOG_BYTES);
                if cut > 0 {
                    body.push_str(&format!(
                        "<p>The first {cut} bytes are not shown: <a href=\"/api/v1/jobs/{}/log\">the whole log</a>.</p>",
                        job.id
                    ));
                }
                body.push_str(&format!(
                    "<pre id=\"log\">{}</pre>",
                    escape(&String::from_utf8_lossy(&log[cut..]))
                ));
            }
            Ok(None) => {}
            Err(_) => return unavailable(),
        }
    } else {
        body.push_str("<p>Not started yet.</p>");
    }
    page(&job.key, !job.status.is_final(), &body)
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
