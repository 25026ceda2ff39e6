//! [`FakeForge`]: the GitHub and Forgejo APIs, in memory, on a local port.
//! It keeps what a real forge would (check runs, commit statuses, files,
//! installation tokens), records every request, checks credentials, and
//! can be told to fail the next requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::util::lock;

/// A request the fake received.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
    /// `Accept` header, if any.
    pub accept: Option<String>,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// When it arrived.
    pub at: SystemTime,
}

/// A check run as the fake keeps it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckRun {
    /// Id.
    pub id: u64,
    /// `owner/name`.
    pub repository: String,
    /// Commit.
    pub head_sha: String,
    /// Its fields as last set (name, status, conclusion, output, ...).
    pub fields: Value,
    /// The `status` of every create and update, in order.
    pub history: Vec<String>,
}

/// A commit status as the fake keeps it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CommitStatus {
    /// `owner/name`.
    pub repository: String,
    /// Commit.
    pub sha: String,
    /// The posted body (state, context, description, target_url).
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    files: HashMap<(String, String, String), Vec<u8>>,
    /// Branches and tags: (repository, name) -> commit.
    refs: HashMap<(String, String), String>,
    check_runs: Vec<CheckRun>,
    statuses: Vec<CommitStatus>,
    /// Installation tokens handed out, with their expiry.
    issued: Vec<(String, SystemTime)>,
    /// What each installation token was asked for (the request's body:
    /// `repositories`, `permissions`), enforced on every call with it.
    scopes: HashMap<String, Value>,
    token_ttl: Option<Duration>,
    /// Tokens accepted besides the issued ones (a plain GitHub token,
    /// a Forgejo token).
    tokens: Vec<String>,
    /// Repositories that exist; empty means every one does.
    missing: Vec<String>,
    /// Answers for the next requests, instead of serving them.
    failures: std::collections::VecDeque<(u16, Vec<(String, String)>)>,
    counter: u64,
}

/// The fake forge. Dropping it stops the server.
pub struct FakeForge {
    url: String,
    inner: Arc<Mutex<Inner>>,
    _server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeForge")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self._server.abort();
    }
}

impl FakeForge {
    /// Starts one on 127.0.0.1 (a free port). Accepts `token` for plain
    /// token auth (GitHub `Bearer`, Forgejo `token`).
    pub async fn start(token: &str) -> std::io::Result<FakeForge> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let inner = Arc::new(Mutex::new(Inner {
            tokens: vec![token.to_string()],
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeForge {
            url,
            inner,
            _server: server,
        })
    }

    /// Its base URL (`http://127.0.0.1:PORT`): GitHub's API root, and
    /// Forgejo's base.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves `bytes` as `path` in `repo` at `commit`.
    pub fn put_file(&self, repo: &str, commit: &str, path: &str, bytes: impl Into<Vec<u8>>) {
        lock(&self.inner)
            .files
            .insert((repo.into(), commit.into(), path.into()), bytes.into());
    }

    /// Points the branch or tag `name` (`main`, `v1`) of `repo` at `commit`.
    pub fn put_ref(&self, repo: &str, name: &str, commit: &str) {
        lock(&self.inner)
            .refs
            .insert((repo.into(), name.into()), commit.into());
    }

    /// Makes `repo` unknown: every call about it answers 404.
    pub fn forget_repo(&self, repo: &str) {
        lock(&self.inner).missing.push(repo.into());
    }

    /// Installation tokens live this long (default: an hour).
    pub fn set_token_ttl(&self, ttl: Duration) {
        lock(&self.inner).token_ttl = Some(ttl);
    }

    /// The next `count` requests get `status` with `headers` instead of
    /// being served.
    pub fn fail_next(&self, count: usize, status: u16, headers: &[(&str, &str)]) {
        let mut inner = lock(&self.inner);
        for _ in 0..count {
            inner.failures.push_back((
                status,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ));
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.inner).requests.clone()
    }

    /// The check runs.
    pub fn check_runs(&self) -> Vec<CheckRun> {
        lock(&self.inner).check_runs.clone()
    }

    /// Every commit status posted, in order.
    pub fn statuses(&self) -> Vec<CommitStatus> {
        lock(&self.inner).statuses.clone()
    }

    /// Installation tokens handed out.
    pub fn tokens_issued(&self) -> Vec<String> {
        lock(&self.inner)
            .issued
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// What an installation token was asked for (`repositories`,
    /// `permissions`), as GitHub's token exchange takes it; `Null` for an
    /// installation-wide token with every permission.
    pub fn token_scope(&self, token: &str) -> Value {
        lock(&self.inner)
            .scopes
            .get(token)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// What a reader of the commit sees: per job name, the latest state
    /// as a commit-status word (`pending`, `success`, `failure`,
    /// `error`) and how many check runs or distinct contexts it has.
    pub fn seen(&self, repo: &str, commit: &str) -> Vec<(String, String, usize)> {
        let inner = lock(&self.inner);
        let mut out: Vec<(String, String, usize)> = Vec::new();
        for run in inner
            .check_runs
            .iter()
            .filter(|r| r.repository == repo && r.head_sha == commit)
        {
            let name = run.fields["name"].as_str().unwrap_or_default().to_string();
            let state = match (
                run.fields["status"].as_str(),
                run.fields["conclusion"].as_str(),
            ) {
                (Some("completed"), Some("success")) => "success",
                (Some("completed"), Some("failure" | "timed_out")) => "failure",
                (Some("completed"), _) => "error",
                _ => "pending",
            };
            match out.iter_mut().find(|(n, _, _)| *n == name) {
                Some(entry) => {
                    entry.1 = state.into();
                    entry.2 += 1;
                }
                None => out.push((name, state.into(), 1)),
            }
        }
        for status in inner
            .statuses
            .iter()
            .filter(|s| s.repository == repo && s.sha == commit)
        {
            let context = status.body["context"].as_str().unwrap_or_default();
            let name = context
                .strip_prefix("solstice/")
                .unwrap_or(context)
                .to_string();
            let state = status.body["state"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match out.iter_mut().find(|(n, _, _)| *n == name) {
                Some(entry) => entry.1 = state,
                None => out.push((name, state, 1)),
            }
        }
        out
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn not_found() -> Response {
    json_response(StatusCode::NOT_FOUND, json!({"message": "Not Found"}))
}

async fn serve(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = lock(&inner);
    st.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        authorization: header("authorization"),
        accept: header("accept"),
        body: parsed.clone(),
        at: SystemTime::now(),
    });
    if let Some((status, extra)) = st.failures.pop_front() {
        let mut resp = json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"message": "injected failure"}),
        );
        for (k, v) in extra {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::try_from(k),
                axum::http::HeaderValue::try_from(v),
            ) {
                resp.headers_mut().insert(k, v);
            }
        }
        return resp;
    }
    let path: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let query_ref = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("ref="))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        });
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let now = SystemTime::now();

    // The App's token exchange: a JWT (checked by the tests that care).
    if let ["app", "installations", id, "access_tokens"] = p.as_slice() {
        if method != Method::POST
            || !header("authorization").is_some_and(|a| a.starts_with("Bearer ey"))
        {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"message": "A JSON web token could not be decoded"}),
            );
        }
        st.counter += 1;
        let ttl = st.token_ttl.unwrap_or(Duration::from_secs(3600));
        let token = format!("ghs_fake{}_{}", st.counter, id);
        let expires = now + ttl;
        st.issued.push((token.clone(), expires));
        if !parsed.is_null() {
            st.scopes.insert(token.clone(), parsed.clone());
        }
        return json_response(
            StatusCode::CREATED,
            json!({"token": token, "expires_at": crate::time::rfc3339(expires)}),
        );
    }

    // Every other call needs a token: a plain one or an unexpired issued one.
    let given = header("authorization").and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("token "))
            .map(str::to_string)
    });
    let authorized = given.as_deref().is_some_and(|t| {
        st.tokens.iter().any(|k| k == t) || st.issued.iter().any(|(k, exp)| k == t && *exp > now)
    });
    let app_jwt = given.as_deref().is_some_and(|t| t.starts_with("ey"));
    let forgejo = p.first() == Some(&"api");
    let p: &[&str] = if forgejo && p.len() > 2 { &p[2..] } else { &p };
    let repo = match p {
        ["repos", owner, name, ..] => format!("{owner}/{name}"),
        _ => return not_found(),
    };
    if matches!(p, ["repos", _, _, "installation"]) && method == Method::GET && app_jwt {
        return json_response(StatusCode::OK, json!({"id": 1}));
    }
    if !authorized {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Bad credentials"}),
        );
    }
    if st.missing.contains(&repo) {
        return not_found();
    }
    // A scoped installation token reaches its repositories only, with its
    // permissions only (GitHub's answer otherwise).
    if let Some(scope) = given.as_deref().and_then(|t| st.scopes.get(t)) {
        let name = repo.split_once('/').map_or(repo.as_str(), |(_, n)| n);
        let repo_ok = scope["repositories"]
            .as_array()
            .is_none_or(|list| list.iter().any(|r| r.as_str() == Some(name)));
        let needs = match p.get(3).copied() {
            Some("check-runs") => Some(("checks", method != Method::GET)),
            Some("contents" | "raw" | "git") => Some(("contents", false)),
            Some("commits") if p.last() == Some(&"check-runs") => Some(("checks", false)),
            Some("commits") => Some(("contents", false)),
            Some("statuses") => Some(("statuses", method != Method::GET)),
            _ => None,
        };
        let permission_ok = match (scope.get("permissions"), needs) {
            (Some(perms), Some((what, write))) => match perms[what].as_str() {
                Some("write") => true,
                Some("read") => !write,
                _ => false,
            },
            _ => true,
        };
        if !repo_ok || !permission_ok {
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"message": "Resource not accessible by integration"}),
            );
        }
    }
    match (method.clone(), &p[3..]) {
        (Method::GET, ["contents", file @ ..]) | (Method::GET, ["raw", file @ ..]) => {
            let key = (repo, query_ref.unwrap_or_default(), file.join("/"));
            match st.files.get(&key) {
                Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
                None => not_found(),
            }
        }
        // A reference to its commit: GitHub's `commits/{ref}` (as
        // `application/vnd.github.sha`), Forgejo's `git/commits/{ref}`.
        (Method::GET, ["commits", name @ ..]) | (Method::GET, ["git", "commits", name @ ..])
            if name.last() != Some(&"check-runs") =>
        {
            let name = name.join("/");
            let known = st
                .refs
                .get(&(repo.clone(), name.clone()))
                .cloned()
                .or_else(|| {
                    st.refs
                        .values()
                        .chain(st.files.keys().map(|(_, c, _)| c))
                        .find(|c| **c == name)
                        .cloned()
                });
            match known {
                Some(sha) if forgejo => json_response(StatusCode::OK, json!({ "sha": sha })),
                Some(sha) => (StatusCode::OK, sha).into_response(),
                None if forgejo => not_found(),
                None => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "No commit found for SHA"}),
                ),
            }
        }
        (Method::POST, ["statuses", sha]) => {
            if !matches!(
                parsed["state"].as_str(),
                Some("pending" | "success" | "failure" | "error")
            ) || parsed["description"]
                .as_str()
                .is_some_and(|d| d.chars().count() > 140)
            {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": "Validation Failed"}),
                );
            }
            st.statuses.push(CommitStatus {
                repository: repo,
                sha: sha.to_string(),
                body: parsed.clone(),
            });
            json_response(StatusCode::CREATED, parsed)
        }
        (Method::POST, ["check-runs"]) if !forgejo => {
            if let Some(problem) = invalid_check_run(&parsed, true) {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": problem}),
                );
            }
            st.counter += 1;
            let id = st.counter;
            let status = parsed["status"].as_str().unwrap_or("queued").to_string();
            st.check_runs.push(CheckRun {
                id,
                repository: repo,
                head_sha: parsed["head_sha"].as_str().unwrap_or_default().to_string(),
                fields: parsed.clone(),
                history: vec![status],
            });
            json_response(StatusCode::CREATED, json!({"id": id}))
        }
        (Method::PATCH, ["check-runs", id]) if !forgejo => {
            if let Some(problem) = invalid_check_run(&parsed, false) {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"message": problem}),
                );
            }
            let Some(run) = st
                .check_runs
                .iter_mut()
                .find(|r| r.id.to_string() == *id && r.repository == repo)
            else {
                return not_found();
            };
            if let (Some(fields), Some(update)) = (run.fields.as_object_mut(), parsed.as_object()) {
                for (k, v) in update {
                    fields.insert(k.clone(), v.clone());
                }
            }
            let status = parsed["status"].as_str().unwrap_or_default().to_string();
            run.history.push(status);
            json_response(StatusCode::OK, json!({"id": run.id}))
        }
        (Method::GET, ["commits", sha, "check-runs"]) if !forgejo => {
            let name = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("check_name="))
                .map(|v| {
                    percent_encoding::percent_decode_str(&v.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                });
            let runs: Vec<Value> = st
                .check_runs
                .iter()
                .filter(|r| r.repository == repo && r.head_sha == *sha)
                .filter(|r| name.as_deref().is_none_or(|n| r.fields["name"].as_str() == Some(n)))
                .map(|r| json!({"id": r.id, "external_id": r.fields["external_id"], "name": r.fields["name"]}))
                .collect();
            json_response(
                StatusCode::OK,
                json!({"total_count": runs.len(), "check_runs": runs}),
            )
        }
        _ => not_found(),
    }
}

/// What GitHub would refuse in a check run (422).
fn invalid_check_run(body: &Value, create: bool) -> Option<&'static str> {
    if create && body["head_sha"].as_str().is_none() {
        return Some("head_sha is missing");
    }
    if create && body["name"].as_str().is_none_or(str::is_empty) {
        return Some("name is missing");
    }
    let status = body["status"].as_str();
    if !matches!(status, None | Some("queued" | "in_progress" | "completed")) {
        return Some("status is not valid");
    }
    if status == Some("completed")
        && !matches!(
            body["conclusion"].as_str(),
            Some(
                "success"
                    | "failure"
                    | "cancelled"
                    | "timed_out"
                    | "skipped"
                    | "neutral"
                    | "action_required"
            )
        )
    {
        return Some("a completed check run needs a conclusion");
    }
    for field in ["summary", "text"] {
        if body["output"][field]
            .as_str()
            .is_some_and(|t| t.chars().count() > 65_535)
        {
            return Some("output is longer than 65535 characters");
        }
    }
    None
}
