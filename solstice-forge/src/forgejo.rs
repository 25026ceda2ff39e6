//! Forgejo (and Gitea): webhooks in, commit statuses out, with an access
//! token (`Authorization: token ...`).

use async_trait::async_trait;

use crate::adapter::{
    self, CloneCredentials, ForgeAdapter, Headers, MAX_WORKFLOW_FILE, Received, Repo, WebhookError,
};
use crate::github::{base_url, commit_status_body, file_path, repo_and_commit};
use crate::http::{Api, RetryPolicy, found, read_limited};
use crate::status::{JobReport, StatusReporter};
use crate::{Forge, ForgeError, Secret};

/// Forgejo, as a [`ForgeAdapter`] and a [`StatusReporter`].
pub struct Forgejo {
    base: String,
    token: Secret,
    webhook_secret: Secret,
    http: Api,
}

impl std::fmt::Debug for Forgejo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forgejo")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Forgejo {
    /// Forgejo at `base` (`https://codeberg.org`), with an access token
    /// that may write commit statuses and read the repositories.
    pub fn new(base: &str, token: Secret, webhook_secret: Secret) -> Result<Forgejo, ForgeError> {
        Ok(Forgejo {
            base: base_url(base)?,
            token,
            webhook_secret,
            http: Api::new(RetryPolicy::default()),
        })
    }

    /// Sets the retry rules.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Forgejo {
        self.http = self.http.with_retry(retry);
        self
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.header("authorization", format!("token {}", self.token.expose()))
            .header("accept", "application/json")
    }
}

#[async_trait]
impl ForgeAdapter for Forgejo {
    fn forge(&self) -> Forge {
        Forge::Forgejo
    }

    fn receive(&self, headers: &Headers, body: &[u8]) -> Result<Received, WebhookError> {
        adapter::receive(Forge::Forgejo, &self.webhook_secret, headers, body)
    }

    async fn fetch_file(
        &self,
        repo: &Repo,
        commit: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        let repo_path = repo.path()?;
        let file = file_path(path)?;
        let what = format!("GET /api/v1/repos/{repo_path}/raw/{file}");
        let url = format!("{}/api/v1/repos/{repo_path}/raw/{file}", self.base);
        let resp = self
            .http
            .send(&what, |c| self.auth(c.get(&url)).query(&[("ref", commit)]))
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
        let name = crate::adapter::reference_path(reference)?;
        let what = format!("GET /api/v1/repos/{repo_path}/git/commits/{name}");
        let url = format!("{}/api/v1/repos/{repo_path}/git/commits/{name}", self.base);
        let resp = self.http.send(&what, |c| self.auth(c.get(&url))).await;
        // 404, or 422 (GitHub): no commit by that name.
        let resp = match resp {
            Err(e) if matches!(e.status(), Some(404 | 422)) => return Ok(None),
            other => other?,
        };
        if matches!(resp.status().as_u16(), 404 | 422) {
            return Ok(None);
        }
        #[derive(serde::Deserialize)]
        struct Commit {
            sha: String,
        }
        let commit: Commit = crate::http::read_json(&what, resp).await?;
        if !crate::adapter::is_commit_id(&commit.sha) {
            return Err(ForgeError::Invalid {
                what,
                why: "the answer is not a commit id".into(),
            });
        }
        Ok(Some(commit.sha.to_ascii_lowercase()))
    }

    async fn clone_credentials(
        &self,
        _repo: &Repo,
    ) -> Result<Option<CloneCredentials>, ForgeError> {
        // Forgejo takes an access token as the basic-auth password whatever
        // the user name (the token names its owner).
        Ok(Some(CloneCredentials {
            username: "oauth2".into(),
            password: self.token.clone(),
            expires_at: None,
        }))
    }
}

#[async_trait]
impl StatusReporter for Forgejo {
    async fn report(&self, report: &JobReport) -> Result<(), ForgeError> {
        let path = repo_and_commit(report)?;
        let what = format!("POST /api/v1/repos/{path}/statuses/{}", report.commit);
        let url = format!(
            "{}/api/v1/repos/{path}/statuses/{}",
            self.base, report.commit
        );
        let body = commit_status_body(report);
        let resp = self
            .http
            .send(&what, |c| self.auth(c.post(&url)).json(&body))
            .await?;
        found(&what, resp, "no such repository or commit")?;
        Ok(())
    }
}
