//! `ciadm`: the operator's CLI on a Solstice daemon's JSON API.
//!
//! Exit codes: 0 done; 1 the daemon refused or failed (the message says
//! why: 401 a wrong token, 404 no such thing, 409 not now); 2 bad usage;
//! 3 the daemon cannot be reached.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "ciadm",
    version,
    about = "Solstice CI: the operator's CLI (runs, logs, cancel, the fleet, why a job waits)"
)]
struct Cli {
    /// The daemon's URL (the integration or all-in-one daemon).
    #[arg(long, env = "SOLSTICE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token (better: SOLSTICE_TOKEN or --token-file, which no
    /// process listing shows).
    #[arg(long, env = "SOLSTICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, env = "SOLSTICE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Output: `text` for people, `json` for programs (listings and shows).
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a repository's workflow at a ref or commit, as a manual run
    /// (its `on` is not consulted), and prints the run once it started.
    Trigger {
        /// `owner/name`.
        repository: String,
        /// A branch or tag (`main`, `refs/tags/v1`), resolved by the forge.
        #[arg(long = "ref", value_name = "REF", required_unless_present = "commit")]
        git_ref: Option<String>,
        /// A commit (40 or 64 hex digits).
        #[arg(long)]
        commit: Option<String>,
        /// `github` or `forgejo` (default: the one the daemon has).
        #[arg(long)]
        forge: Option<String>,
        /// Clone from here instead of the forge's URL for the repository.
        #[arg(long)]
        clone_url: Option<String>,
    },
    /// The newest runs.
    Runs {
        /// How many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A run and its jobs.
    Show {
        /// The run's id.
        run: i64,
    },
    /// A job's log (its latest attempt, or --attempt N).
    Logs {
        /// The job's id.
        job: i64,
        /// Which attempt (default: the latest).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing as the log grows, until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancels a run: waiting jobs at once, running ones within a third
    /// of the lease.
    Cancel {
        /// The run's id.
        run: i64,
    },
    /// One more attempt of an ended job (earlier attempts are kept).
    Retry {
        /// The job's id.
        job: i64,
    },
    /// Deliveries not processed yet, and those waiting for approval (a
    /// pull request from a fork runs only once an operator approves it).
    Deliveries,
    /// Runs a delivery that waits for approval (without secrets).
    Approve {
        /// `github` or `forgejo`.
        forge: String,
        /// The delivery's id (from `ciadm deliveries`).
        delivery: String,
    },
    /// The fleet: every host's labels, capacity and load.
    Hosts,
    /// Why a job is not running: what it needs, no host for its label,
    /// every host full (with the queue depth), or how it ended.
    Why {
        /// The job's id.
        job: i64,
    },
}

/// Why `ciadm` stopped.
enum Failure {
    /// The daemon answered with an error.
    Refused(String),
    /// The daemon cannot be reached.
    Unreachable(String),
    /// Standard output went away (a closed pipe): stop quietly.
    Closed,
}

impl From<std::io::Error> for Failure {
    fn from(_: std::io::Error) -> Failure {
        Failure::Closed
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::Response, Failure> {
        self.send(method, path, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{}: {}", self.url, chain(&e))))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let why = body["error"].as_str().unwrap_or("").to_string();
        Err(Failure::Refused(format!("{status}: {why}")))
    }

    async fn json(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path)
            .await?
            .json()
            .await
            .map_err(|e| Failure::Refused(format!("the answer is not JSON: {e}")))
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Text from the daemon (names, reasons, logs: what workflows and steps
/// wrote) made safe for a terminal: control characters other than
/// newline and tab are shown as `^X`, and the other characters that are not
/// shown as themselves (C1 controls, bidirectional and format characters:
/// [`solstice_kdl::text::is_hidden`]) as `\u{..}`, so no escape sequence
/// reaches it and nothing reorders what it shows.
fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            '\u{7f}' => out.push_str("^?"),
            c if solstice_kdl::text::is_hidden(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

fn field(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => safe(s),
        other => safe(&other.to_string()),
    }
}

/// A path segment: letters, digits and `-._~` as they are, every other
/// byte percent-encoded (a delivery id cannot reach another endpoint).
fn utf8_percent(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long ago a Unix-ms time was, as `docker ps` says it (`5s ago`,
/// `3h ago`); `-` for none.
fn ago(ms: &Value) -> String {
    let Some(then) = ms.as_i64() else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let secs = (now - then).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

async fn run(cli: Cli, client: Client) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let json = cli.format == Format::Json;
    match cli.command {
        Command::Trigger {
            repository,
            git_ref,
            commit,
            forge,
            clone_url,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("repository".into(), Value::String(repository));
            for (key, value) in [
                ("ref", git_ref),
                ("commit", commit),
                ("forge", forge),
                ("clone_url", clone_url),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), Value::String(v));
                }
            }
            let accepted: Value = client
                .send(
                    reqwest::Method::POST,
                    "/api/v1/trigger",
                    Some(Value::Object(body)),
                )
                .await?
                .json()
                .await
                .map_err(|e| Failure::Refused(format!("the answer is not JSON: {e}")))?;
            let path = format!(
                "/api/v1/deliveries/{}/{}",
                accepted["forge"].as_str().unwrap_or_default(),
                accepted["delivery"].as_str().unwrap_or_default()
            );
            // The delivery is processed by the daemon's inbox: wait for its run.
            let mut last = Value::Null;
            for _ in 0..120 {
                last = client.json(&path).await?;
                if last["state"] == "done" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if json {
                writeln!(out, "{last}")?;
            } else if last["run_id"].is_i64() {
                writeln!(
                    out,
                    "run {} ({} at {})",
                    field(&last, "run_id"),
                    field(&last, "outcome"),
                    field(&accepted, "commit")
                )?;
            } else {
                return Err(Failure::Refused(format!(
                    "no run started: {}",
                    field(&last, "outcome")
                )));
            }
        }
        Command::Runs { limit } => {
            let v = client
                .json(&format!("/api/v1/runs?limit={}", limit.clamp(1, 500)))
                .await?;
            if json {
                writeln!(out, "{}", v["runs"])?;
            } else {
                writeln!(out, "{:<8} {:<10} {:<10} NAME", "RUN", "STATUS", "CREATED")?;
                for r in v["runs"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "{:<8} {:<10} {:<10} {}",
                        field(r, "id"),
                        field(r, "status"),
                        ago(&r["created_at"]),
                        field(r, "name")
                    )?;
                }
            }
        }
        Command::Show { run } => {
            let v = client.json(&format!("/api/v1/runs/{run}")).await?;
            if json {
                writeln!(out, "{v}")?;
            } else {
                let r = &v["run"];
                writeln!(
                    out,
                    "run {} {} ({})",
                    field(r, "id"),
                    field(r, "name"),
                    field(r, "status")
                )?;
                writeln!(
                    out,
                    "{:<8} {:<10} {:<9} {:<16} KEY",
                    "JOB", "STATUS", "ATTEMPTS", "LABEL"
                )?;
                for j in v["jobs"].as_array().into_iter().flatten() {
                    let reason = match &j["reason"] {
                        Value::String(r) => format!("  ({})", safe(r)),
                        _ => String::new(),
                    };
                    writeln!(
                        out,
                        "{:<8} {:<10} {:<9} {:<16} {}{reason}",
                        field(j, "id"),
                        field(j, "status"),
                        format!("{}/{}", field(j, "attempts"), field(j, "max_attempts")),
                        field(j, "label"),
                        field(j, "key"),
                    )?;
                }
            }
        }
        Command::Logs {
            job,
            attempt,
            follow,
        } => {
            let path = match attempt {
                Some(n) => format!("/api/v1/jobs/{job}/log?attempt={n}"),
                None => format!("/api/v1/jobs/{job}/log"),
            };
            let mut shown = 0usize;
            loop {
                // Whether it had ended before the log was read: then the
                // log read is complete.
                let ended = if follow {
                    let j = client.json(&format!("/api/v1/jobs/{job}")).await?;
                    !matches!(
                        j["job"]["status"].as_str(),
                        Some("pending" | "queued" | "running")
                    )
                } else {
                    true
                };
                let log = match client.call(reqwest::Method::GET, &path).await {
                    Ok(r) => r
                        .bytes()
                        .await
                        .map_err(|e| Failure::Unreachable(chain(&e)))?
                        .to_vec(),
                    // No attempt yet: nothing to show until it starts.
                    Err(Failure::Refused(why)) if follow && why.starts_with("404") && !ended => {
                        Vec::new()
                    }
                    Err(e) => return Err(e),
                };
                if log.len() > shown {
                    let text = String::from_utf8_lossy(&log[shown..]).into_owned();
                    out.write_all(safe(&text).as_bytes())?;
                    out.flush()?;
                    shown = log.len();
                } else if log.len() < shown {
                    // A new attempt began: its log from the start.
                    writeln!(out, "--- a new attempt ---")?;
                    shown = 0;
                    continue;
                }
                if ended {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Command::Cancel { run } => {
            client
                .call(reqwest::Method::POST, &format!("/api/v1/runs/{run}/cancel"))
                .await?;
            writeln!(out, "run {run}: cancelling")?;
        }
        Command::Retry { job } => {
            let v: Value = client
                .call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/retry"))
                .await?
                .json()
                .await
                .map_err(|e| Failure::Refused(format!("the answer is not JSON: {e}")))?;
            writeln!(out, "job {job}: queued as attempt {}", field(&v, "attempt"))?;
        }
        Command::Deliveries => {
            let v = client.json("/api/v1/deliveries").await?;
            if json {
                writeln!(out, "{}", v["deliveries"])?;
            } else {
                writeln!(
                    out,
                    "{:<8} {:<40} {:<14} {:<10} {:<10} OUTCOME",
                    "FORGE", "DELIVERY", "EVENT", "STATE", "RECEIVED"
                )?;
                for d in v["deliveries"].as_array().into_iter().flatten() {
                    let state = match d["state"].as_str() {
                        Some("approval") => "approval".to_string(),
                        _ => field(d, "state"),
                    };
                    writeln!(
                        out,
                        "{:<8} {:<40} {:<14} {:<10} {:<10} {}",
                        field(d, "forge"),
                        field(d, "id"),
                        field(d, "event"),
                        state,
                        ago(&d["received_at"]),
                        field(d, "outcome")
                    )?;
                }
            }
        }
        Command::Approve { forge, delivery } => {
            let forge = utf8_percent(&forge);
            let id = utf8_percent(&delivery);
            client
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/deliveries/{forge}/{id}/approve"),
                )
                .await?;
            writeln!(out, "{}: approved; it runs now", safe(&delivery))?;
        }
        Command::Hosts => {
            let v = client.json("/api/v1/hosts").await?;
            if json {
                writeln!(out, "{}", v["hosts"])?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<13} {:<6} {:<9} {:<9} LABELS",
                    "HOST", "ROLE", "ALIVE", "RUNNING", "VERSION"
                )?;
                for h in v["hosts"].as_array().into_iter().flatten() {
                    let labels: Vec<String> = h["labels"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(safe)
                        .collect();
                    writeln!(
                        out,
                        "{:<24} {:<13} {:<6} {:<9} {:<9} {}",
                        field(h, "name"),
                        field(h, "role"),
                        if h["alive"] == Value::Bool(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        format!("{}/{}", field(h, "running"), field(h, "capacity")),
                        field(h, "version"),
                        labels.join(",")
                    )?;
                }
            }
        }
        Command::Why { job } => {
            let v = client.json(&format!("/api/v1/jobs/{job}/why")).await?;
            if json {
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "job {job}: {}", field(&v, "text"))?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = match (&cli.token, &cli.token_file) {
        (_, Some(file)) => match std::fs::read_to_string(file) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                eprintln!("error: the token file {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
        (Some(t), None) => t.clone(),
        (None, None) => {
            eprintln!(
                "error: the API needs the admin token: SOLSTICE_TOKEN, --token-file or --token"
            );
            return ExitCode::from(2);
        }
    };
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::from(1);
        }
    };
    let client = Client {
        http,
        url: cli.url.trim_end_matches('/').to_string(),
        token,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, client)) {
        Ok(()) | Err(Failure::Closed) => ExitCode::SUCCESS,
        Err(Failure::Refused(why)) => {
            eprintln!("error: {}", safe(&why));
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(why)) => {
            eprintln!("error: cannot reach the daemon: {}", safe(&why));
            ExitCode::from(3)
        }
    }
}
