//! A daemon under test: a real git repository, a fake forge (GitHub and
//! Forgejo APIs) in this process, the real `solstice` binary in a child
//! process, and signed deliveries.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use solstice_forge::testing::FakeForge;
use solstice_forge::{Forge, sign};

/// The fake forge's API token.
pub const FORGE_TOKEN: &str = "forge-api-token";
/// The webhooks' secret.
pub const HOOK_SECRET: &str = "webhook-secret-for-tests";
/// The daemon's admin token.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// The repository's name on the forge.
pub const REPO: &str = "octo/hello";
/// Where the workflow is.
pub const WORKFLOW: &str = ".solstice/workflow.kdl";

/// One daemon, its forge and its repository, in one temporary directory.
#[derive(Debug)]
pub struct Harness {
    /// Everything on disk (removed on drop).
    pub dir: tempfile::TempDir,
    /// The fake forge.
    pub forge: FakeForge,
    /// The git repository.
    pub repo: PathBuf,
    /// The daemon's configuration file.
    pub config: PathBuf,
    /// The daemon's URL.
    pub url: String,
    /// The daemon's process.
    pub daemon: Option<Child>,
    /// A client.
    pub http: reqwest::Client,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Harness {
    /// A fake forge and a configuration; `github_app`: GitHub as an App
    /// (check runs), else Forgejo (commit statuses).
    pub async fn new(github_app: bool, extra: &str) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let forge = FakeForge::start(FORGE_TOKEN).await.expect("fake forge");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).expect("repo dir");
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("token"), FORGE_TOKEN).expect("write");
        std::fs::write(dir.path().join("hook"), HOOK_SECRET).expect("write");
        std::fs::write(dir.path().join("admin"), ADMIN_TOKEN).expect("write");
        let key = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../solstice-forge/tests/fixtures/app-key/test-app.pem");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let forge_block = if github_app {
            format!(
                "github {{\n api-url \"{}\"\n app-id 77\n private-key-file \"{}\"\n webhook-secret-file \"hook\"\n}}\n",
                forge.url(),
                key.display()
            )
        } else {
            format!(
                "forgejo {{\n url \"{}\"\n token-file \"token\"\n webhook-secret-file \"hook\"\n}}\n",
                forge.url()
            )
        };
        let config = dir.path().join("solstice.kdl");
        std::fs::write(
            &config,
            format!(
                "listen \"127.0.0.1:{port}\"\nstate-dir \"state\"\ncapacity 2\nadmin-token-file \"admin\"\nallow-unisolated-jobs #true\n{forge_block}{extra}"
            ),
        )
        .expect("write config");
        Harness {
            dir,
            forge,
            repo,
            config,
            url,
            daemon: None,
            http: reqwest::Client::new(),
        }
    }

    /// Commits `workflow` (and a README) and serves it from the fake forge.
    pub fn commit(&self, workflow: &str) -> String {
        std::fs::create_dir_all(self.repo.join(".solstice")).expect("mkdir");
        std::fs::write(self.repo.join(WORKFLOW), workflow).expect("write");
        std::fs::write(self.repo.join("README.md"), format!("{}\n", workflow.len()))
            .expect("write");
        git(&self.repo, &["add", "-A"]);
        git(&self.repo, &["commit", "-q", "-m", "change"]);
        let sha = git(&self.repo, &["rev-parse", "HEAD"]);
        self.forge.put_file(REPO, &sha, WORKFLOW, workflow);
        sha
    }

    /// Commits `workflow` as pull request 7's head only (as a fork's
    /// commit is: under `refs/pull/7/head`, on no branch), on top of
    /// `main`'s current commit, and serves it from the fake forge.
    pub fn commit_pull_request(&self, workflow: &str) -> String {
        let base = git(&self.repo, &["rev-parse", "HEAD"]);
        git(&self.repo, &["checkout", "-q", "-b", "fork-work"]);
        let sha = self.commit(workflow);
        git(&self.repo, &["update-ref", "refs/pull/7/head", &sha]);
        git(&self.repo, &["checkout", "-q", "main"]);
        git(&self.repo, &["reset", "-q", "--hard", &base]);
        git(&self.repo, &["branch", "-q", "-D", "fork-work"]);
        sha
    }

    /// The daemon's output.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Starts the daemon and waits until it answers.
    pub async fn start(&mut self) {
        self.start_with(&[]).await;
    }

    /// [`Harness::start`] with extra environment.
    pub async fn start_with(&mut self, env: &[(&str, &str)]) {
        self.start_as("serve", env).await;
    }

    /// Starts `solstice COMMAND` (`serve`, `integration`) and waits until
    /// it answers.
    pub async fn start_as(&mut self, command: &str, env: &[(&str, &str)]) {
        self.start_under(&[], command, env).await;
    }

    /// [`Harness::start_as`] under a wrapper command (`prlimit ... --`).
    pub async fn start_under(&mut self, wrapper: &[&str], command: &str, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_solstice"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_solstice")),
        };
        let child = cmd
            .args([command, "--config"])
            .arg(&self.config)
            .env("SOLSTICE_LOG", "info,solstice=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(child) = self.daemon.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("the daemon exited ({status}): {}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer: {}",
                self.daemon_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the daemon wrote.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a delivery signed with the right secret.
    pub async fn deliver(&self, forge: Forge, event: &str, id: &str, body: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(body).expect("json");
        let signature = sign(forge, HOOK_SECRET.as_bytes(), &body);
        self.post(forge, event, id, Some(&signature), "application/json", body)
            .await
    }

    /// Sends anything.
    pub async fn post(
        &self,
        forge: Forge,
        event: &str,
        id: &str,
        signature: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let (path, event_h, id_h, sig_h) = match forge {
            Forge::GitHub => (
                "github",
                "X-GitHub-Event",
                "X-GitHub-Delivery",
                "X-Hub-Signature-256",
            ),
            _ => (
                "forgejo",
                "X-Forgejo-Event",
                "X-Forgejo-Delivery",
                "X-Forgejo-Signature",
            ),
        };
        let mut req = self
            .http
            .post(format!("{}/hooks/{path}", self.url))
            .header(event_h, event)
            .header(id_h, id)
            .header("content-type", content_type)
            .body(body);
        if let Some(s) = signature {
            req = req.header(sig_h, s);
        }
        let resp = req.send().await.expect("the daemon answers");
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, value)
    }

    /// GET a path of the daemon as JSON (with the admin token).
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// GET a URL as text.
    pub async fn get_text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text")
    }

    /// Waits until `done` holds, or panics with the daemon's log.
    pub async fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; daemon log:\n{}",
                self.daemon_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many check runs of `sha` are completed.
    pub fn completed(&self, sha: &str) -> usize {
        self.checks(sha)
            .iter()
            .filter(|(_, history, _)| history.last().map(String::as_str) == Some("completed"))
            .count()
    }

    /// The check runs for `sha`, with their consecutive repeated states
    /// folded.
    pub fn checks(&self, sha: &str) -> Vec<(String, Vec<String>, Value)> {
        self.forge
            .check_runs()
            .into_iter()
            .filter(|r| r.head_sha == sha)
            .map(|r| {
                let mut history = r.history.clone();
                history.dedup();
                (
                    r.fields["name"].as_str().unwrap_or_default().to_string(),
                    history,
                    r.fields,
                )
            })
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A GitHub push of `sha` to `main` of the test repository (public).
pub fn push(repo: &Path, sha: &str) -> Value {
    json!({
        "ref": "refs/heads/main",
        "before": "1111111111111111111111111111111111111111",
        "after": sha,
        "created": false,
        "deleted": false,
        "forced": false,
        "repository": {
            "id": 1,
            "full_name": REPO,
            "private": false,
            "clone_url": format!("file://{}", repo.display()),
            "default_branch": "main",
        },
        "sender": { "login": "alice" },
        "installation": { "id": 42 },
        "commits": [],
    })
}

/// A GitHub pull request `opened` by `author` whose head is `sha`; from a
/// fork when `fork`.
pub fn pull_request(repo: &Path, sha: &str, fork: bool, author: &str) -> Value {
    pull_request_event(repo, sha, fork, author, author, "opened")
}

/// A GitHub `pull_request` delivery: `action` (`opened`, `synchronize`,
/// `reopened`, ...) on pull request 7 by `author`, caused by `sender`
/// (a maintainer pressing "Update branch" is the sender of a stranger's
/// pull request). The repository is public.
pub fn pull_request_event(
    repo: &Path,
    sha: &str,
    fork: bool,
    author: &str,
    sender: &str,
    action: &str,
) -> Value {
    json!({
        "action": action,
        "number": 7,
        "pull_request": {
            "number": 7,
            "user": { "login": author },
            "head": { "sha": sha, "ref": "feature", "repo": { "id": if fork { 2 } else { 1 }, "full_name": if fork { "mallory/hello" } else { REPO } } },
            "base": { "ref": "main", "repo": { "id": 1, "full_name": REPO } },
        },
        "repository": {
            "id": 1,
            "full_name": REPO,
            "private": false,
            "clone_url": format!("file://{}", repo.display()),
        },
        "sender": { "login": sender },
        "installation": { "id": 42 },
    })
}
