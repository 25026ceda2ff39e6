//! GitHub: webhooks in; check runs (with a GitHub App) or commit statuses
//! (with a plain token) out.
//!
//! A GitHub App signs a short JWT with its private key (RS256) and trades
//! it for an installation token per installation; tokens are cached and
//! traded again a margin before they expire. Nothing assumes a token's
//! length or format: GitHub has changed both before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::adapter::{
    self, CloneCredentials, ForgeAdapter, Headers, MAX_WORKFLOW_FILE, Received, Repo, WebhookError,
};
use crate::http::{Api, RetryPolicy, found, read_json, read_limited};
use crate::status::{
    CHECK_TEXT_CHARS, JobReport, JobState, STATUS_DESCRIPTION_CHARS, StatusReporter, log_block,
    steps_markdown,
};
use crate::text::{head_chars, printable};
use crate::{Forge, ForgeError, Secret};

/// GitHub's public API.
pub const GITHUB_API: &str = "https://api.github.com";

/// An installation token's cache key: installation, `owner/name`, purpose.
type TokenKey = (u64, String, Purpose);

/// What an installation token is for: each gets its own, scoped to one
/// repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Purpose {
    /// The daemon's own calls: check runs, workflow files, commits.
    Api,
    /// A job's clone: read the repository's contents, nothing else.
    Clone,
}

impl Purpose {
    fn permissions(self) -> serde_json::Value {
        match self {
            Purpose::Api => json!({ "checks": "write", "contents": "read" }),
            Purpose::Clone => json!({ "contents": "read" }),
        }
    }
}

/// How early an installation token is traded again before it expires.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A token whose expiry GitHub did not state is kept this long.
const UNSTATED_TOKEN_LIFE: Duration = Duration::from_secs(10 * 60);

/// Longest check-run name sent.
const NAME_CHARS: usize = 255;

/// GitHub, as a [`ForgeAdapter`] and a [`StatusReporter`].
pub struct GitHub {
    api: String,
    webhook_secret: Secret,
    auth: Auth,
    http: Api,
    /// Check run ids by (repository, external id), for jobs not yet
    /// completed; each behind its own lock so one job's reports are
    /// applied in order and create one check run.
    checks: Mutex<HashMap<(String, String), CheckSlot>>,
}

/// One job's check run id, once known.
type CheckSlot = Arc<tokio::sync::Mutex<Option<u64>>>;

enum Auth {
    App(App),
    Token(Secret),
}

struct App {
    id: u64,
    key: jsonwebtoken::EncodingKey,
    refresh_margin: Duration,
    /// By installation, repository and purpose.
    tokens: tokio::sync::Mutex<HashMap<TokenKey, (Secret, SystemTime)>>,
    installations: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::App(app) => format!("app {}", app.id),
            Auth::Token(_) => "token".into(),
        };
        f.debug_struct("GitHub")
            .field("api", &self.api)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

impl GitHub {
    /// GitHub with a GitHub App: `private_key` is the App's PEM key.
    /// Reports are check runs.
    pub fn with_app(
        api: &str,
        app_id: u64,
        private_key: &Secret,
        webhook_secret: Secret,
    ) -> Result<GitHub, ForgeError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key.expose().as_bytes())
            .map_err(|e| ForgeError::Invalid {
                what: "the GitHub App's private key".into(),
                // The error names the problem, never the key.
                why: format!("not an RSA key in PEM form ({e})"),
            })?;
        let app = App {
            id: app_id,
            key,
            refresh_margin: TOKEN_REFRESH_MARGIN,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            installations: Mutex::new(HashMap::new()),
        };
        GitHub::new(api, Auth::App(app), webhook_secret)
    }

    /// GitHub with a plain token (a fine-grained or classic personal
    /// access token). Reports are commit statuses.
    pub fn with_token(
        api: &str,
        token: Secret,
        webhook_secret: Secret,
    ) -> Result<GitHub, ForgeError> {
        GitHub::new(api, Auth::Token(token), webhook_secret)
    }

    fn new(api: &str, auth: Auth, webhook_secret: Secret) -> Result<GitHub, ForgeError> {
        Ok(GitHub {
            api: base_url(api)?,
            webhook_secret,
            auth,
            http: Api::new(RetryPolicy::default()),
            checks: Mutex::new(HashMap::new()),
        })
    }

    /// Sets the retry rules.
    pub fn with_retry(mut self, retry: RetryPolicy) -> GitHub {
        self.http = self.http.with_retry(retry);
        self
    }

    /// Sets how early installation tokens are traded again.
    pub fn with_refresh_margin(mut self, margin: Duration) -> GitHub {
        if let Auth::App(app) = &mut self.auth {
            app.refresh_margin = margin;
        }
        self
    }

    fn jwt(&self, app: &App) -> Result<String, ForgeError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Issued a minute ago against clock drift; GitHub allows ten
        // minutes in all.
        let claims = json!({ "iat": now.saturating_sub(60), "exp": now + 9 * 60, "iss": app.id.to_string() });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &app.key,
        )
        .map_err(|e| ForgeError::Invalid {
            what: "the GitHub App's JWT".into(),
            why: e.to_string(),
        })
    }

    /// The installation covering `repo`: the delivery's, or asked of GitHub.
    async fn installation(&self, app: &App, repo: &Repo) -> Result<u64, ForgeError> {
        if let Some(id) = repo.installation {
            return Ok(id);
        }
        let path = repo.path()?;
        if let Some(id) = crate::util::lock(&app.installations).get(&path) {
            return Ok(*id);
        }
        let jwt = self.jwt(app)?;
        let what = format!("GET /repos/{path}/installation");
        let url = format!("{}/repos/{path}/installation", self.api);
        let resp = self
            .http
            .send(&what, |c| github_headers(c.get(&url)).bearer_auth(&jwt))
            .await?;
        let resp = found(
            &what,
            resp,
            "the GitHub App is not installed on this repository",
        )?;
        #[derive(Deserialize)]
        struct Installation {
            id: u64,
        }
        let found: Installation = read_json(&what, resp).await?;
        crate::util::lock(&app.installations).insert(path, found.id);
        Ok(found.id)
    }

    /// An installation token for one repository and one purpose, from the
    /// cache while it has more than the margin left.
    async fn installation_token(
        &self,
        app: &App,
        installation: u64,
        repo: &Repo,
        purpose: Purpose,
    ) -> Result<(Secret, SystemTime), ForgeError> {
        let path = repo.path()?;
        let name = path
            .split_once('/')
            .map_or(path.as_str(), |(_, n)| n)
            .to_string();
        let key = (installation, path.clone(), purpose);
        let mut tokens = app.tokens.lock().await;
        if let Some((token, expires)) = tokens.get(&key)
            && expires
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                > app.refresh_margin
        {
            return Ok((token.clone(), *expires));
        }
        let jwt = self.jwt(app)?;
        let what = format!("POST /app/installations/{installation}/access_tokens");
        let url = format!(
            "{}/app/installations/{installation}/access_tokens",
            self.api
        );
        // The one repository, with what this purpose needs and no more
        // (an installation may cover many repositories and permissions).
        let body = json!({ "repositories": [name], "permissions": purpose.permissions() });
        let resp = self
            .http
            .send(&what, |c| {
                github_headers(c.post(&url)).bearer_auth(&jwt).json(&body)
            })
            .await?;
        let resp = found(&what, resp, "no such installation of the GitHub App")?;
        #[derive(Deserialize)]
        struct Token {
            token: String,
            expires_at: Option<String>,
        }
        let got: Token = read_json(&what, resp).await?;
        if got.token.is_empty() {
            return Err(ForgeError::Decode {
                what,
                source: "an empty token".into(),
            });
        }
        let expires = got
            .expires_at
            .as_deref()
            .and_then(crate::time::parse_rfc3339)
            .unwrap_or_else(|| {
                tracing::warn!("GitHub gave an installation token without a readable expiry");
                SystemTime::now() + UNSTATED_TOKEN_LIFE
            });
        let token = Secret::new(got.token);
        tokens.insert(key, (token.clone(), expires));
        Ok((token, expires))
    }

    /// The token API calls about `repo` are made with (checks and reading
    /// files and commits).
    async fn token_for(&self, repo: &Repo) -> Result<Secret, ForgeError> {
        match &self.auth {
            Auth::Token(token) => Ok(token.clone()),
            Auth::App(app) => {
                let installation = self.installation(app, repo).await?;
                Ok(self
                    .installation_token(app, installation, repo, Purpose::Api)
                    .await?
                    .0)
            }
        }
    }

    async fn check_run(&self, report: &JobReport) -> Result<(), ForgeError> {
        let path = repo_and_commit(report)?;
        let token = self.token_for(&report.repo).await?;
        let key = (report.repo.full_name.clone(), report.external_id.clone());
        let slot = crate::util::lock(&self.checks)
            .entry(key.clone())
            .or_default()
            .clone();
        let mut id = slot.lock().await;
        if id.is_none() {
            *id = self.find_check_run(&path, report, &token).await?;
        }
        let mut body = check_run_body(report);
        let (method, what, url) = match *id {
            Some(existing) => (
                reqwest::Method::PATCH,
                format!("PATCH /repos/{path}/check-runs/{existing}"),
                format!("{}/repos/{path}/check-runs/{existing}", self.api),
            ),
            None => {
                body["head_sha"] = json!(report.commit);
                (
                    reqwest::Method::POST,
                    format!("POST /repos/{path}/check-runs"),
                    format!("{}/repos/{path}/check-runs", self.api),
                )
            }
        };
        let resp = self
            .http
            .send(&what, |c| {
                github_headers(c.request(method.clone(), &url))
                    .bearer_auth(token.expose())
                    .json(&body)
            })
            .await?;
        let resp = found(&what, resp, "no such repository or check run")?;
        #[derive(Deserialize)]
        struct Created {
            id: u64,
        }
        let created: Created = read_json(&what, resp).await?;
        *id = Some(created.id);
        if matches!(report.state, JobState::Completed(_)) {
            drop(id);
            crate::util::lock(&self.checks).remove(&key);
        }
        Ok(())
    }

    /// The check run an earlier life of this process made for the report's
    /// job, if any.
    async fn find_check_run(
        &self,
        path: &str,
        report: &JobReport,
        token: &Secret,
    ) -> Result<Option<u64>, ForgeError> {
        let what = format!("GET /repos/{path}/commits/{}/check-runs", report.commit);
        let url = format!(
            "{}/repos/{path}/commits/{}/check-runs",
            self.api, report.commit
        );
        let name = head_chars(&report.name, NAME_CHARS);
        let resp = self
            .http
            .send(&what, |c| {
                github_headers(c.get(&url))
                    .bearer_auth(token.expose())
                    .query(&[("check_name", name), ("filter", "all"), ("per_page", "100")])
            })
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Runs {
            check_runs: Vec<Run>,
        }
        #[derive(Deserialize)]
        struct Run {
            id: u64,
            external_id: Option<String>,
        }
        let runs: Runs = read_json(&what, resp).await?;
        Ok(runs
            .check_runs
            .into_iter()
            .find(|r| r.external_id.as_deref() == Some(report.external_id.as_str()))
            .map(|r| r.id))
    }

    async fn commit_status(&self, report: &JobReport) -> Result<(), ForgeError> {
        let path = repo_and_commit(report)?;
        let token = self.token_for(&report.repo).await?;
        let what = format!("POST /repos/{path}/statuses/{}", report.commit);
        let url = format!("{}/repos/{path}/statuses/{}", self.api, report.commit);
        let body = commit_status_body(report);
        let resp = self
            .http
            .send(&what, |c| {
                github_headers(c.post(&url))
                    .bearer_auth(token.expose())
                    .json(&body)
            })
            .await?;
        found(&what, resp, "no such repository or commit")?;
        Ok(())
    }
}

/// The request headers GitHub's REST API asks for.
fn github_headers(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
}

/// `owner/name`, after checking the commit is an object id.
pub(crate) fn repo_and_commit(report: &JobReport) -> Result<String, ForgeError> {
    let path = report.repo.path()?;
    let c = &report.commit;
    if !(matches!(c.len(), 40 | 64) && c.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ForgeError::Invalid {
            what: "commit".into(),
            why: "not a hexadecimal object id".into(),
        });
    }
    Ok(path)
}

/// An API base URL without its trailing slash; only http and https.
pub(crate) fn base_url(url: &str) -> Result<String, ForgeError> {
    let trimmed = url.trim_end_matches('/');
    let ok = (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
        && reqwest::Url::parse(trimmed).is_ok();
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(ForgeError::Invalid {
            what: "API URL".into(),
            why: format!("`{}` is not an http or https URL", head_chars(url, 100)),
        })
    }
}

/// A check run's body (without `head_sha`, which only creation takes).
fn check_run_body(report: &JobReport) -> Value {
    let name = printable(head_chars(&report.name, NAME_CHARS));
    let mut body = json!({
        "name": name,
        "external_id": report.external_id,
    });
    match report.state {
        JobState::Queued => body["status"] = json!("queued"),
        JobState::InProgress => body["status"] = json!("in_progress"),
        JobState::Completed(conclusion) => {
            body["status"] = json!("completed");
            body["conclusion"] = json!(conclusion.as_str());
            body["completed_at"] = json!(crate::time::rfc3339(
                report.completed_at.unwrap_or_else(SystemTime::now)
            ));
        }
    }
    if let Some(started) = report.started_at {
        body["started_at"] = json!(crate::time::rfc3339(started));
    }
    if let Some(url) = &report.details_url {
        body["details_url"] = json!(url);
    }
    let title = printable(head_chars(&report.description, 255)).replace('\n', " ");
    let summary = steps_markdown(report);
    let mut output = json!({
        "title": if title.is_empty() { name.clone() } else { title },
        "summary": head_chars(&summary, CHECK_TEXT_CHARS),
    });
    if let Some(tail) = &report.log_tail {
        output["text"] = json!(log_block(tail, CHECK_TEXT_CHARS));
    }
    body["output"] = output;
    body
}

/// A commit status's body (GitHub and Forgejo take the same).
pub(crate) fn commit_status_body(report: &JobReport) -> Value {
    let description = printable(&report.description).replace(['\n', '\t'], " ");
    let mut body = json!({
        "state": report.state.commit_status(),
        "context": format!("solstice/{}", printable(head_chars(&report.name, NAME_CHARS))),
        "description": head_chars(&description, STATUS_DESCRIPTION_CHARS),
    });
    if let Some(url) = &report.details_url {
        body["target_url"] = json!(url);
    }
    body
}

/// What a path segment escapes: everything but RFC 3986's unreserved
/// characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A repository path inside a URL: each segment percent-encoded; `.` and
/// `..` segments refused.
pub(crate) fn file_path(path: &str) -> Result<String, ForgeError> {
    let mut out = Vec::new();
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(ForgeError::Invalid {
                what: "file path".into(),
                why: format!("`{}` is not a plain relative path", head_chars(path, 100)),
            });
        }
        out.push(percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string());
    }
    Ok(out.join("/"))
}

#[async_trait]
impl ForgeAdapter for GitHub {
    fn forge(&self) -> Forge {
        Forge::GitHub
    }

    fn receive(&self, headers: &Headers, body: &[u8]) -> Result<Received, WebhookError> {
        adapter::receive(Forge::GitHub, &self.webhook_secret, headers, body)
    }

    async fn fetch_file(
        &self,
        repo: &Repo,
        commit: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        let repo_path = repo.path()?;
        let file = file_path(path)?;
        let token = self.token_for(repo).await?;
        let what = format!("GET /repos/{repo_path}/contents/{file}");
        let url = format!("{}/repos/{repo_path}/contents/{file}", self.api);
        let resp = self
            .http
            .send(&what, |c| {
                c.get(&url)
                    .header("accept", "application/vnd.github.raw+json")
                    .header("x-github-api-version", "2022-11-28")
                    .bearer_auth(token.expose())
                    .query(&[("ref", commit)])
            })
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        read_limited(&what, resp, MAX_WORKFLOW_FILE).await.map(Some)
    }

    async fn resolve_commit(
        &self,
        repo: &Repo,
        reference: &str,
    ) -> Result<Option<String>, ForgeError> {
        let repo_path = repo.path()?;
        let name = adapter::reference_path(reference)?;
        let token = self.token_for(repo).await?;
        let what = format!("GET /repos/{repo_path}/commits/{name}");
        let url = format!("{}/repos/{repo_path}/commits/{name}", self.api);
        let resp = self
            .http
            .send(&what, |c| {
                c.get(&url)
                    .header("accept", "application/vnd.github.sha")
                    .header("x-github-api-version", "2022-11-28")
                    .bearer_auth(token.expose())
            })
            .await;
        // 404, or 422 (GitHub): no commit by that name.
        let resp = match resp {
            Err(e) if matches!(e.status(), Some(404 | 422)) => return Ok(None),
            other => other?,
        };
        if matches!(resp.status().as_u16(), 404 | 422) {
            return Ok(None);
        }
        let body = read_limited(&what, resp, 1024).await?;
        let sha = String::from_utf8_lossy(&body).trim().to_string();
        if !adapter::is_commit_id(&sha) {
            return Err(ForgeError::Invalid {
                what: what.clone(),
                why: "the answer is not a commit id".into(),
            });
        }
        Ok(Some(sha.to_ascii_lowercase()))
    }

    async fn clone_credentials(&self, repo: &Repo) -> Result<Option<CloneCredentials>, ForgeError> {
        let (password, expires_at) = match &self.auth {
            Auth::Token(token) => (token.clone(), None),
            Auth::App(app) => {
                let installation = self.installation(app, repo).await?;
                // A job's clone gets a token that can read this one
                // repository and do nothing else: it enters the job's VM.
                let (token, expires) = self
                    .installation_token(app, installation, repo, Purpose::Clone)
                    .await?;
                (token, Some(expires))
            }
        };
        Ok(Some(CloneCredentials {
            username: "x-access-token".into(),
            password,
            expires_at,
        }))
    }
}

#[async_trait]
impl StatusReporter for GitHub {
    async fn report(&self, report: &JobReport) -> Result<(), ForgeError> {
        match self.auth {
            Auth::App(_) => self.check_run(report).await,
            Auth::Token(_) => self.commit_status(report).await,
        }
    }
}
