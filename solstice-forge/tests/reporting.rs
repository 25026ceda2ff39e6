//! Status reporting and the forge APIs, against `FakeForge` (an HTTP
//! server playing GitHub and Forgejo): the conformance suite for each
//! reporter, the exact requests, the App's token exchange and refresh,
//! and the retry rules.

use std::path::Path;
use std::time::{Duration, Instant};

use solstice_forge::testing::{FakeForge, reporter};
use solstice_forge::{
    Conclusion, ForgeAdapter, ForgeError, Forgejo, GitHub, JobReport, JobState, Repo, RetryPolicy,
    Secret, StatusReporter, StepLine,
};

const TOKEN: &str = "plain-token-1234";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn key(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/app-key")
            .join(name),
    )
    .expect("test key")
}

fn fast() -> RetryPolicy {
    RetryPolicy::default()
        .with_attempts(4)
        .with_first_delay(Duration::from_millis(10))
        .with_max_wait(Duration::from_secs(5))
}

fn app(forge: &FakeForge) -> GitHub {
    GitHub::with_app(
        forge.url(),
        77,
        &Secret::new(key("test-app.pem")),
        Secret::new("hook"),
    )
    .expect("app")
    .with_retry(fast())
}

fn token(forge: &FakeForge) -> GitHub {
    GitHub::with_token(forge.url(), Secret::new(TOKEN), Secret::new("hook"))
        .expect("token")
        .with_retry(fast())
}

fn forgejo(forge: &FakeForge) -> Forgejo {
    Forgejo::new(forge.url(), Secret::new(TOKEN), Secret::new("hook"))
        .expect("forgejo")
        .with_retry(fast())
}

fn repo() -> Repo {
    Repo::new("octo/hello").with_installation(Some(42))
}

async fn conformance(make: impl Fn(&FakeForge) -> Box<dyn StatusReporter>) {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    forge.forget_repo("octo/gone");
    let reporter = make(&forge);
    let seen = |repo: &str, commit: &str| forge.seen(repo, commit);
    reporter::run_all(
        &*reporter,
        &repo(),
        &Repo::new("octo/gone").with_installation(Some(42)),
        &seen,
    )
    .await;
}

#[tokio::test]
async fn github_checks_pass_the_reporter_suite() {
    conformance(|f| Box::new(app(f))).await;
}

#[tokio::test]
async fn github_commit_statuses_pass_the_reporter_suite() {
    conformance(|f| Box::new(token(f))).await;
}

#[tokio::test]
async fn forgejo_passes_the_reporter_suite() {
    conformance(|f| Box::new(forgejo(f))).await;
}

#[derive(serde::Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

#[tokio::test]
async fn the_app_trades_a_jwt_for_an_installation_token_and_runs_one_check_run_per_job() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let github = app(&forge);
    let started = std::time::SystemTime::now();
    let queued = JobReport::new(
        repo(),
        SHA,
        "build (linux)",
        "7/build (linux)",
        JobState::Queued,
    )
    .with_details_url("http://ci.example/jobs/7")
    .with_description("waiting for a host");
    github.report(&queued).await.expect("queued");
    let done = JobReport::new(
        repo(),
        SHA,
        "build (linux)",
        "7/build (linux)",
        JobState::Completed(Conclusion::Failure),
    )
    .with_details_url("http://ci.example/jobs/7")
    .with_description("step `test` failed")
    .with_steps(vec![
        StepLine::new("fetch", "passed", Some(Duration::from_millis(1200))),
        StepLine::new("test", "failed (exit 2)", Some(Duration::from_millis(300))),
    ])
    .with_log_tail("boom\n")
    .with_times(Some(started), Some(started));
    github.report(&done).await.expect("completed");

    let requests = forge.requests();
    let summary: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("POST", "/app/installations/42/access_tokens"),
            (
                "GET",
                "/repos/octo/hello/commits/0123456789abcdef0123456789abcdef01234567/check-runs"
            ),
            ("POST", "/repos/octo/hello/check-runs"),
            ("PATCH", "/repos/octo/hello/check-runs/2"),
        ]
        .map(|(m, p)| (m.to_string(), p.to_string()))
    );
    // The exchange is authorised by a JWT the App's public key verifies.
    let jwt = requests[0]
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("bearer JWT");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let claims = jsonwebtoken::decode::<Claims>(
        jwt,
        &jsonwebtoken::DecodingKey::from_rsa_pem(key("test-app.pub.pem").as_bytes())
            .expect("public key"),
        &validation,
    )
    .expect("a valid JWT")
    .claims;
    assert_eq!(claims.iss, "77");
    assert!(
        claims.exp - claims.iat <= 600,
        "GitHub refuses JWTs valid for more than 10 minutes"
    );
    // Every later call uses the installation token it got.
    let issued = forge.tokens_issued();
    assert_eq!(issued.len(), 1);
    for r in &requests[1..] {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {}", issued[0]).as_str())
        );
        assert_eq!(r.accept.as_deref(), Some("application/vnd.github+json"));
    }
    assert_eq!(
        requests[2].body,
        serde_json::json!({
            "name": "build (linux)",
            "head_sha": SHA,
            "external_id": "7/build (linux)",
            "status": "queued",
            "details_url": "http://ci.example/jobs/7",
            "output": {"title": "waiting for a host", "summary": "waiting for a host"},
        })
    );
    let stamp = requests[3].body["started_at"]
        .as_str()
        .expect("started_at")
        .to_string();
    assert_eq!(
        requests[3].body,
        serde_json::json!({
            "name": "build (linux)",
            "external_id": "7/build (linux)",
            "status": "completed",
            "conclusion": "failure",
            "started_at": stamp,
            "completed_at": stamp,
            "details_url": "http://ci.example/jobs/7",
            "output": {
                "title": "step `test` failed",
                "summary": "step \\`test\\` failed\n\n| step | outcome | duration |\n| --- | --- | --- |\n| fetch | passed | 1.2 s |\n| test | failed \\(exit 2\\) | 0.3 s |\n",
                "text": "```\nboom\n\n```",
            },
        })
    );
    let runs = forge.check_runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].history, ["queued", "completed"]);
}

#[tokio::test]
async fn installation_tokens_are_traded_again_before_they_expire() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let github = app(&forge);
    let report = |n: u32| {
        JobReport::new(
            repo(),
            SHA,
            format!("j{n}"),
            format!("1/j{n}"),
            JobState::Queued,
        )
    };
    // An hour-long token is reused.
    github.report(&report(1)).await.expect("report");
    github.report(&report(2)).await.expect("report");
    assert_eq!(forge.tokens_issued().len(), 1);
    // One that has less than the margin left is not.
    forge.set_token_ttl(Duration::from_secs(60));
    let github = app(&forge);
    github.report(&report(3)).await.expect("report");
    github.report(&report(4)).await.expect("report");
    let issued = forge.tokens_issued();
    assert_eq!(issued.len(), 3, "{issued:?}");
    let last = forge.requests().pop().expect("a request");
    assert_eq!(last.authorization, Some(format!("Bearer {}", issued[2])));
}

#[tokio::test]
async fn a_restarted_reporter_updates_the_check_run_it_made_before() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let queued = JobReport::new(repo(), SHA, "build", "9/build", JobState::InProgress);
    app(&forge).report(&queued).await.expect("in progress");
    // A new process: no cache, but the check run is found by external id.
    let done = JobReport::new(
        repo(),
        SHA,
        "build",
        "9/build",
        JobState::Completed(Conclusion::Success),
    );
    app(&forge).report(&done).await.expect("completed");
    let runs = forge.check_runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].history, ["in_progress", "completed"]);
}

#[tokio::test]
async fn commit_statuses_send_state_context_description_and_target_url() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let long = "é".repeat(300);
    let report = JobReport::new(
        repo(),
        SHA,
        "test",
        "3/test",
        JobState::Completed(Conclusion::TimedOut),
    )
    .with_details_url("http://ci.example/jobs/3")
    .with_description(long);
    token(&forge).report(&report).await.expect("github status");
    forgejo(&forge)
        .report(&report)
        .await
        .expect("forgejo status");
    let requests = forge.requests();
    assert_eq!(requests.len(), 2);
    let want = serde_json::json!({
        "state": "failure",
        "context": "solstice/test",
        "description": "é".repeat(140),
        "target_url": "http://ci.example/jobs/3",
    });
    assert_eq!(requests[0].method, "POST");
    assert_eq!(
        requests[0].path,
        format!("/repos/octo/hello/statuses/{SHA}")
    );
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(requests[0].body, want);
    assert_eq!(requests[1].method, "POST");
    assert_eq!(
        requests[1].path,
        format!("/api/v1/repos/octo/hello/statuses/{SHA}")
    );
    assert_eq!(
        requests[1].authorization.as_deref(),
        Some(format!("token {TOKEN}").as_str())
    );
    assert_eq!(requests[1].body, want);
}

#[tokio::test]
async fn the_failing_log_is_cut_to_githubs_limit_keeping_its_end() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let log = format!("{}the end 😀", "ü".repeat(100_000));
    let report = JobReport::new(
        repo(),
        SHA,
        "big",
        "1/big",
        JobState::Completed(Conclusion::Failure),
    )
    .with_log_tail(log);
    app(&forge).report(&report).await.expect("report");
    let runs = forge.check_runs();
    let text = runs[0].fields["output"]["text"].as_str().expect("text");
    assert_eq!(text.chars().count(), 65_535);
    assert!(text.ends_with("the end 😀\n```"));
}

#[tokio::test]
async fn server_errors_are_retried_and_other_client_errors_are_not() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let reporter = forgejo(&forge);
    let report = JobReport::new(repo(), SHA, "r", "1/r", JobState::Queued);
    forge.fail_next(2, 502, &[]);
    reporter
        .report(&report)
        .await
        .expect("succeeds on the third try");
    assert_eq!(forge.requests().len(), 3);

    forge.fail_next(1, 422, &[]);
    let err = reporter.report(&report).await.expect_err("422 is final");
    assert_eq!(err.status(), Some(422), "{err}");
    assert_eq!(forge.requests().len(), 4, "422 must not be retried");

    forge.fail_next(4, 503, &[]);
    let err = reporter.report(&report).await.expect_err("gives up");
    assert_eq!(err.status(), Some(503));
    assert_eq!(forge.requests().len(), 8, "four tries in all");
}

#[tokio::test]
async fn retry_after_and_rate_limit_resets_are_honoured() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let reporter = forgejo(&forge);
    let report = JobReport::new(repo(), SHA, "r", "1/r", JobState::Queued);

    forge.fail_next(1, 429, &[("retry-after", "1")]);
    let started = Instant::now();
    reporter.report(&report).await.expect("after the wait");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not waited for"
    );

    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 1;
    let reset = reset.to_string();
    forge.fail_next(
        1,
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset),
        ],
    );
    let started = Instant::now();
    reporter.report(&report).await.expect("after the reset");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the reset was not waited for"
    );

    // A wait longer than the policy allows fails at once.
    forge.fail_next(1, 429, &[("retry-after", "3600")]);
    let err = reporter.report(&report).await.expect_err("too long a wait");
    assert!(
        matches!(err, ForgeError::RateLimited { wait, .. } if wait == Duration::from_secs(3600)),
        "{err}"
    );
    // A 403 without rate-limit headers is a refusal, not a limit.
    forge.fail_next(1, 403, &[]);
    let before = forge.requests().len();
    let err = reporter.report(&report).await.expect_err("forbidden");
    assert_eq!(err.status(), Some(403));
    assert_eq!(forge.requests().len(), before + 1);
}

#[tokio::test]
async fn an_unreachable_forge_is_a_connect_error_after_the_retries() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let reporter = Forgejo::new(&url, Secret::new(TOKEN), Secret::new("hook"))
        .expect("forgejo")
        .with_retry(fast());
    let err = reporter
        .report(&JobReport::new(repo(), SHA, "r", "1/r", JobState::Queued))
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, ForgeError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn references_resolve_to_their_commit() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    forge.put_ref("octo/hello", "main", SHA);
    forge.put_ref("octo/hello", "release/v1", SHA);
    for adapter in [
        Box::new(app(&forge)) as Box<dyn ForgeAdapter>,
        Box::new(token(&forge)),
        Box::new(forgejo(&forge)),
    ] {
        for name in ["main", "refs/heads/main", "release/v1", SHA] {
            let got = adapter
                .resolve_commit(&repo(), name)
                .await
                .expect("resolve");
            assert_eq!(got.as_deref(), Some(SHA), "{adapter:?} {name}");
        }
        let missing = adapter
            .resolve_commit(&repo(), "nope")
            .await
            .expect("resolve");
        assert_eq!(missing, None, "{adapter:?}");
        for bad in [
            "../x",
            "a//b",
            "refs/heads/",
            "main?x=1",
            "a b",
            "main/../../admin",
            "",
        ] {
            let err = adapter
                .resolve_commit(&repo(), bad)
                .await
                .expect_err("refused");
            assert!(matches!(err, ForgeError::Invalid { .. }), "{bad}: {err}");
        }
    }
    let paths: Vec<String> = forge.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths.contains(&"/repos/octo/hello/commits/main".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/api/v1/repos/octo/hello/git/commits/release/v1".to_string()),
        "{paths:?}"
    );
}

#[tokio::test]
async fn workflow_files_are_fetched_at_the_commit() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    forge.put_file("octo/hello", SHA, ".solstice/workflow.kdl", "job \"a\" {}");
    for adapter in [
        Box::new(app(&forge)) as Box<dyn ForgeAdapter>,
        Box::new(token(&forge)),
        Box::new(forgejo(&forge)),
    ] {
        let got = adapter
            .fetch_file(&repo(), SHA, ".solstice/workflow.kdl")
            .await
            .expect("fetch");
        assert_eq!(got.as_deref(), Some(&b"job \"a\" {}"[..]), "{adapter:?}");
        let missing = adapter
            .fetch_file(&repo(), SHA, ".solstice/other.kdl")
            .await
            .expect("fetch");
        assert_eq!(missing, None, "{adapter:?}");
        for bad in ["../etc/passwd", "a//b", "/abs", "./x"] {
            let err = adapter
                .fetch_file(&repo(), SHA, bad)
                .await
                .expect_err("refused");
            assert!(matches!(err, ForgeError::Invalid { .. }), "{bad}: {err}");
        }
        let err = adapter
            .fetch_file(&Repo::new("octo/../admin"), SHA, "x")
            .await
            .expect_err("refused");
        assert!(matches!(err, ForgeError::Invalid { .. }), "{err}");
    }
    let paths: Vec<String> = forge.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths.contains(&"/repos/octo/hello/contents/.solstice/workflow.kdl".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/api/v1/repos/octo/hello/raw/.solstice/workflow.kdl".to_string()),
        "{paths:?}"
    );
    let raw = forge
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/contents/"))
        .expect("a GitHub fetch");
    assert_eq!(
        raw.accept.as_deref(),
        Some("application/vnd.github.raw+json")
    );
    assert_eq!(raw.query.as_deref(), Some(format!("ref={SHA}").as_str()));
}

#[tokio::test]
async fn a_workflow_file_over_the_limit_is_refused() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    forge.put_file(
        "octo/hello",
        SHA,
        "big.kdl",
        vec![b'a'; solstice_forge::MAX_WORKFLOW_FILE + 1],
    );
    let err = forgejo(&forge)
        .fetch_file(&repo(), SHA, "big.kdl")
        .await
        .expect_err("too big");
    assert!(matches!(err, ForgeError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn clone_credentials_are_short_lived_where_the_forge_allows() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let creds = app(&forge)
        .clone_credentials(&repo())
        .await
        .expect("creds")
        .expect("some");
    assert_eq!(creds.username, "x-access-token");
    assert_eq!(creds.password.expose(), forge.tokens_issued()[0]);
    assert!(creds.expires_at.is_some());
    // The clone's token reads this one repository, nothing more: it goes
    // into the job's VM.
    assert_eq!(
        forge.token_scope(creds.password.expose()),
        serde_json::json!({"repositories": ["hello"], "permissions": {"contents": "read"}})
    );
    // The daemon's own calls use another token, with checks.
    let github = app(&forge);
    github
        .report(&JobReport::new(repo(), SHA, "b", "1/b", JobState::Queued))
        .await
        .expect("report");
    let issued = forge.tokens_issued();
    assert_eq!(issued.len(), 2);
    assert_eq!(
        forge.token_scope(&issued[1]),
        serde_json::json!({"repositories": ["hello"], "permissions": {"checks": "write", "contents": "read"}})
    );
    // The clone token cannot write a check run (the fake enforces scopes
    // as GitHub does).
    let refused = reqwest::Client::new()
        .post(format!("{}/repos/octo/hello/check-runs", forge.url()))
        .bearer_auth(creds.password.expose())
        .json(&serde_json::json!({"name": "x", "head_sha": SHA}))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status().as_u16(), 403);
    assert!(
        !format!("{creds:?}").contains(creds.password.expose()),
        "the token must not show in Debug"
    );
    let creds = forgejo(&forge)
        .clone_credentials(&repo())
        .await
        .expect("creds")
        .expect("some");
    assert_eq!(creds.password.expose(), TOKEN);
}

#[tokio::test]
async fn an_app_without_the_installation_in_the_delivery_looks_it_up() {
    let forge = FakeForge::start(TOKEN).await.expect("fake forge");
    let report = JobReport::new(Repo::new("octo/hello"), SHA, "b", "1/b", JobState::Queued);
    app(&forge).report(&report).await.expect("report");
    let first: Vec<String> = forge
        .requests()
        .iter()
        .take(2)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        first,
        [
            "GET /repos/octo/hello/installation",
            "POST /app/installations/1/access_tokens"
        ]
    );
}

#[test]
fn a_broken_private_key_is_a_clear_error_without_the_key() {
    let err = GitHub::with_app(
        solstice_forge::GITHUB_API,
        1,
        &Secret::new("-----BEGIN RSA PRIVATE KEY-----\nsecretstuff\n"),
        Secret::new("h"),
    )
    .expect_err("not a key");
    let text = err.to_string();
    assert!(text.contains("private key"), "{text}");
    assert!(!text.contains("secretstuff"), "{text}");
    assert!(GitHub::with_token("ftp://x", Secret::new("t"), Secret::new("h")).is_err());
}
