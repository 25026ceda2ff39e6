//! The all-in-one daemon end to end, through its real binary: signed
//! deliveries for a real git repository, jobs run by the local provider,
//! statuses at a fake forge, job pages with the logs.

mod support;

use serde_json::json;
use solstice_forge::Forge;
use support::{ADMIN_TOKEN, Harness, REPO, pull_request, push};

const PASSING: &str = r#"
workflow name="e2e" {
    job id="build" {
        step name="Hello" run="echo hello-from-the-e2e-job && test -f README.md"
    }
}
"#;

const FAILING: &str = r#"
workflow {
    job id="test" {
        step name="Setup" run="echo setting up"
        step name="Broken" run="echo this-step-fails-here; exit 3"
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_runs_and_the_app_sees_queued_in_progress_and_completed() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(PASSING);
    h.start().await;
    let (status, answer) = h
        .deliver(Forge::GitHub, "push", "d-push-1", &push(&h.repo, &sha))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "accepted");
    h.wait_for("the check run to complete", || h.completed(&sha) > 0)
        .await;
    let checks = h.checks(&sha);
    assert_eq!(checks.len(), 1, "{checks:?}");
    let (name, history, fields) = &checks[0];
    assert_eq!(name, "build");
    assert_eq!(history, &["queued", "in_progress", "completed"], "{fields}");
    assert_eq!(fields["conclusion"], "success", "{fields}");
    assert_eq!(fields["external_id"], "d-push-1/build");
    // The App's token came from the JWT exchange for the delivery's installation.
    assert!(
        h.forge
            .requests()
            .iter()
            .any(|r| r.path == "/app/installations/42/access_tokens")
    );
    // details_url is the job's page, which shows its log.
    let details = fields["details_url"].as_str().expect("details_url");
    assert!(details.starts_with(&h.url), "{details}");
    let page = h.get_text(details).await;
    assert!(page.contains("hello-from-the-e2e-job"), "{page}");
    let api = h.get_json("/api/v1/runs").await;
    assert_eq!(api["runs"].as_array().map(Vec::len), Some(1), "{api}");
    assert_eq!(api["runs"][0]["status"], "succeeded");
    assert_eq!(
        h.terminate().code(),
        Some(0),
        "SIGTERM stops cleanly: {}",
        h.daemon_log()
    );
}

/// A forge that fails longer than its client's own retries (503 to a
/// dozen requests in a row): the statuses wait in the outbox and reach it
/// once it is back, in order (they were dropped before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_a_failing_forge_refused_reach_it_once_it_is_back() {
    let mut h = Harness::new(true, "").await;
    let sha =
        h.commit("workflow {\n    job id=\"build\" {\n        step run=\"sleep 3\"\n    }\n}\n");
    h.start().await;
    let (status, _) = h
        .deliver(Forge::GitHub, "push", "d-flaky-forge", &push(&h.repo, &sha))
        .await;
    assert_eq!(status, 202);
    h.wait_for("the check run", || !h.checks(&sha).is_empty())
        .await;
    // Every request for a while: more than one report's worth of tries.
    h.forge.fail_next(12, 503, &[]);
    h.wait_for("the check run to complete", || h.completed(&sha) > 0)
        .await;
    let checks = h.checks(&sha);
    assert_eq!(checks.len(), 1, "{checks:?}");
    let (_, history, fields) = &checks[0];
    assert_eq!(history.last().map(String::as_str), Some("completed"));
    let rank = |s: &str| {
        ["queued", "in_progress", "completed"]
            .iter()
            .position(|k| *k == s)
    };
    assert!(
        history.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
        "statuses went back: {history:?}"
    );
    assert_eq!(fields["conclusion"], "success", "{fields}");
    assert!(
        h.daemon_log()
            .contains("the forge cannot take a status now; trying again"),
        "the reporter's own retry was not needed: the test shows nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_a_failure_with_the_end_of_its_log() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(FAILING);
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-fail", &push(&h.repo, &sha))
        .await;
    h.wait_for("the check run to complete", || h.completed(&sha) > 0)
        .await;
    let (_, _, fields) = &h.checks(&sha)[0];
    assert_eq!(fields["conclusion"], "failure", "{fields}");
    let text = fields["output"]["text"].as_str().expect("text");
    assert!(text.contains("this-step-fails-here"), "{text}");
    assert!(
        !text.contains("setting up"),
        "only the failing step's log: {text}"
    );
    let summary = fields["output"]["summary"].as_str().expect("summary");
    assert!(
        summary.contains("| Broken | failed \\(exit 3\\) |"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_workflow_is_one_failing_status_with_the_diagnostic() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit("workflow {\n    job id=\"a\" {\n        stpe run=\"x\"\n    }\n}\n");
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-broken", &push(&h.repo, &sha))
        .await;
    h.wait_for("the workflow status", || !h.checks(&sha).is_empty())
        .await;
    let checks = h.checks(&sha);
    assert_eq!(checks.len(), 1, "{checks:?}");
    let (name, _, fields) = &checks[0];
    assert_eq!(name, "workflow");
    assert_eq!(fields["conclusion"], "failure");
    let text = fields["output"]["text"].as_str().expect("text");
    assert!(text.contains("stpe"), "{text}");
    assert!(text.contains("did you mean"), "{text}");
    assert!(!text.contains('\u{1b}'), "no terminal colours: {text:?}");
    assert_eq!(h.get_json("/api/v1/runs").await["runs"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_without_a_workflow_gets_nothing() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(PASSING);
    h.forge.forget_repo("nobody/else");
    h.start().await;
    let mut body = push(&h.repo, &sha);
    // Same commit, but the forge has no workflow at this path for it.
    body["repository"]["full_name"] = "octo/empty".into();
    let (status, _) = h.deliver(Forge::GitHub, "push", "d-none", &body).await;
    assert_eq!(status, 202);
    h.wait_for("the delivery to be processed", || {
        h.forge
            .requests()
            .iter()
            .any(|r| r.path.contains("/repos/octo/empty/contents/"))
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(h.forge.check_runs().is_empty());
    assert!(h.forge.statuses().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_starts_no_second_run() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(PASSING);
    h.start().await;
    let body = push(&h.repo, &sha);
    let (_, first) = h.deliver(Forge::GitHub, "push", "d-dup", &body).await;
    let (status, second) = h.deliver(Forge::GitHub, "push", "d-dup", &body).await;
    assert_eq!(first["status"], "accepted");
    assert_eq!(status, 202);
    assert_eq!(second["status"], "duplicate", "{second}");
    h.wait_for("the run", || h.completed(&sha) > 0).await;
    // Also after a restart.
    h.terminate();
    h.start().await;
    let (_, third) = h.deliver(Forge::GitHub, "push", "d-dup", &body).await;
    assert_eq!(third["status"], "duplicate", "{third}");
    assert_eq!(
        h.get_json("/api/v1/runs").await["runs"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(h.checks(&sha).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_pull_request_waits_for_approval_and_runs_without_secrets_once_approved() {
    let mut h = Harness::new(true, "").await;
    h.commit(PASSING);
    // The head commit is on no branch of the repository: the runner
    // fetches it by the pull request's ref.
    let sha = h.commit_pull_request(&format!("{PASSING}// from the fork\n"));
    h.start().await;
    let (status, _) = h
        .deliver(
            Forge::GitHub,
            "pull_request",
            "d-fork",
            &pull_request(&h.repo, &sha, true, "mallory"),
        )
        .await;
    assert_eq!(status, 202);
    h.wait_for("the waiting status", || !h.checks(&sha).is_empty())
        .await;
    let (_, history, fields) = &h.checks(&sha)[0];
    assert_eq!(history, &["queued"]);
    assert!(
        fields["output"]["title"]
            .as_str()
            .unwrap_or_default()
            .contains("approval"),
        "{fields}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        h.get_json("/api/v1/runs").await["runs"],
        json!([]),
        "nothing runs before approval"
    );
    // Approval needs the admin token.
    let url = format!("{}/api/v1/deliveries/github/d-fork/approve", h.url);
    let refused = h.http.post(&url).send().await.expect("post");
    assert_eq!(refused.status().as_u16(), 401);
    let listed = h
        .http
        .get(format!("{}/api/v1/deliveries", h.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("get");
    let listed: serde_json::Value = listed.json().await.expect("json");
    assert_eq!(listed["deliveries"][0]["state"], "approval", "{listed}");
    let ok = h
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status().as_u16(), 202);
    h.wait_for("the approved run", || h.completed(&sha) > 0)
        .await;
    let checks = h.checks(&sha);
    assert_eq!(checks.len(), 1, "the same check run goes on: {checks:?}");
    assert_eq!(checks[0].2["conclusion"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_author_s_fork_pull_request_runs_at_once() {
    let mut h = Harness::new(true, "fork-pull-requests {\n trust \"friend\"\n}\n").await;
    let sha = h.commit(PASSING);
    h.start().await;
    h.deliver(
        Forge::GitHub,
        "pull_request",
        "d-friend",
        &pull_request(&h.repo, &sha, true, "friend"),
    )
    .await;
    h.wait_for("the run", || h.completed(&sha) > 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_acknowledging_the_run_happens_once_after_restart() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(PASSING);
    // The first life acknowledges, then dies before it processes anything.
    h.start_with(&[("SOLSTICE_TEST_INBOX_DELAY_MS", "60000")])
        .await;
    let (status, _) = h
        .deliver(Forge::GitHub, "push", "d-kill", &push(&h.repo, &sha))
        .await;
    assert_eq!(status, 202);
    h.kill();
    assert!(
        h.forge.check_runs().is_empty(),
        "nothing was processed before the kill"
    );
    h.start().await;
    h.wait_for("the run after the restart", || h.completed(&sha) > 0)
        .await;
    // Settle, then count: one run, one check run.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let runs = h.get_json("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs}");
    let checks = h.checks(&sha);
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].2["conclusion"], "success");
    // Both lives beat under the same name: one row in the fleet.
    let hosts = h.get_json("/api/v1/hosts").await;
    let names: Vec<&str> = hosts["hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names.len(), 1, "{hosts}");
    assert!(names[0].ends_with("-all-in-one"), "{hosts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgejo_gets_commit_statuses_with_a_target_url() {
    let mut h = Harness::new(false, "").await;
    let sha = h.commit(PASSING);
    h.start().await;
    let mut body = push(&h.repo, &sha);
    body["sender"] = json!({ "login": "alice", "username": "alice" });
    let (status, answer) = h.deliver(Forge::Forgejo, "push", "fj-1", &body).await;
    assert_eq!(status, 202, "{answer}");
    h.wait_for("the success status", || {
        h.forge
            .statuses()
            .iter()
            .any(|s| s.body["state"] == "success")
    })
    .await;
    let states: Vec<String> = h
        .forge
        .statuses()
        .iter()
        .map(|s| s.body["state"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut folded = states.clone();
    folded.dedup();
    assert_eq!(folded, ["pending", "success"], "{states:?}");
    let last = h.forge.statuses().pop().expect("a status");
    assert_eq!(last.body["context"], "solstice/build");
    assert_eq!(last.repository, REPO);
    let target = last.body["target_url"].as_str().expect("target_url");
    assert!(h.get_text(target).await.contains("hello-from-the-e2e-job"));
    let auth = h
        .forge
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/statuses/"))
        .expect("a status request");
    assert_eq!(auth.authorization.as_deref(), Some("token forge-api-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_processing_the_delivery_starts_one_run_after_restart() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(PASSING);
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-kill-2", &push(&h.repo, &sha))
        .await;
    // Killed at some point of processing (maybe after the run started).
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    h.kill();
    h.start().await;
    h.wait_for("the run after the restart", || {
        h.completed(&sha) > 0 || h.daemon_log().contains("started run")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let runs = h.get_json("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_cancels_what_is_still_running_and_exits() {
    let mut h = Harness::new(true, "drain-seconds 1\n").await;
    let sha =
        h.commit("workflow {\n    job id=\"slow\" {\n        step run=\"sleep 60\"\n    }\n}\n");
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-slow", &push(&h.repo, &sha))
        .await;
    h.wait_for("the job to start", || {
        h.checks(&sha)
            .iter()
            .any(|(_, history, _)| history.contains(&"in_progress".to_string()))
    })
    .await;
    let started = std::time::Instant::now();
    let status = h.terminate();
    assert_eq!(status.code(), Some(0), "{}", h.daemon_log());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(50),
        "a bounded stop"
    );
    let (_, history, fields) = &h.checks(&sha)[0];
    assert_eq!(
        history.last().map(String::as_str),
        Some("completed"),
        "{fields}"
    );
    assert_eq!(fields["conclusion"], "cancelled", "{fields}");
}

const WITH_SECRET: &str = r#"
workflow {
    secret "API_TOKEN"
    job id="deploy" {
        step name="Use it" run="echo \"token is $API_TOKEN\"; test \"$API_TOKEN\" = value-from-the-store"
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_the_repository_s_store_and_are_masked() {
    let mut h = Harness::new(true, "secrets-dir \"secrets\"\n").await;
    let dir = h.dir.path().join("secrets").join(REPO);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("API_TOKEN"), "value-from-the-store\n").expect("write");
    let sha = h.commit(WITH_SECRET);
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-secret", &push(&h.repo, &sha))
        .await;
    h.wait_for("the run", || h.completed(&sha) > 0).await;
    let (_, _, fields) = &h.checks(&sha)[0];
    assert_eq!(fields["conclusion"], "success", "{fields}");
    let page = h
        .get_text(fields["details_url"].as_str().expect("url"))
        .await;
    assert!(page.contains("token is ***"), "{page}");
    assert!(!page.contains("value-from-the-store"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_store_lacks_fails_the_run_at_planning() {
    let mut h = Harness::new(true, "secrets-dir \"secrets\"\n").await;
    let sha = h.commit(WITH_SECRET);
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-nosecret", &push(&h.repo, &sha))
        .await;
    h.wait_for("the failing status", || !h.checks(&sha).is_empty())
        .await;
    let checks = h.checks(&sha);
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].0, "workflow", "no job started: {checks:?}");
    assert_eq!(checks[0].2["conclusion"], "failure");
    let text = checks[0].2["output"]["text"].as_str().unwrap_or_default();
    assert!(text.contains("API_TOKEN"), "{text}");
    assert_eq!(h.get_json("/api/v1/runs").await["runs"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerequested_check_run_or_suite_runs_again_as_a_new_run() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(
        r#"workflow {
            job id="build" { step run="echo build"; }
            job id="test" { needs "build"; step run="echo test"; }
            job id="lint" { step run="echo lint"; }
        }"#,
    );
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-orig", &push(&h.repo, &sha))
        .await;
    let completed = |h: &Harness, n: usize| h.completed(&sha) >= n;
    h.wait_for("the first run", || completed(&h, 3)).await;
    let rerequest = |external_id: Option<&str>| {
        let mut check_run = json!({ "head_sha": sha, "name": "test" });
        if let Some(id) = external_id {
            check_run["external_id"] = id.into();
        }
        json!({
            "action": "rerequested",
            "check_run": check_run,
            "check_suite": { "head_sha": sha },
            "repository": { "full_name": REPO, "clone_url": "unused" },
            "sender": { "login": "maintainer" },
            "installation": { "id": 42 },
        })
    };
    // One check run again: the job and what it needs, as a new run.
    let (status, _) = h
        .deliver(
            Forge::GitHub,
            "check_run",
            "d-rerun",
            &rerequest(Some("d-orig/test")),
        )
        .await;
    assert_eq!(status, 202);
    h.wait_for("the rerun", || completed(&h, 5)).await;
    let runs = h.get_json("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(2), "{runs}");
    let newest = runs["runs"][0]["id"].as_i64().expect("id");
    let detail = h.get_json(&format!("/api/v1/runs/{newest}")).await;
    let keys: Vec<&str> = detail["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["key"].as_str())
        .collect();
    assert_eq!(keys, ["build", "test"], "{detail}");
    let ids: Vec<String> = h
        .checks(&sha)
        .iter()
        .map(|(_, _, f)| f["external_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        ids.contains(&"d-rerun/test".to_string()),
        "new check runs for the rerun: {ids:?}"
    );
    assert!(
        ids.contains(&"d-orig/test".to_string()),
        "the first ones are kept: {ids:?}"
    );
    // The whole suite again.
    let (status, _) = h
        .deliver(Forge::GitHub, "check_suite", "d-suite", &rerequest(None))
        .await;
    assert_eq!(status, 202);
    h.wait_for("the suite rerun", || completed(&h, 8)).await;
    assert_eq!(
        h.get_json("/api/v1/runs").await["runs"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    // A check run Solstice never made reruns nothing.
    let (status, answer) = h
        .deliver(
            Forge::GitHub,
            "check_run",
            "d-alien",
            &rerequest(Some("elsewhere/x")),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        h.get_json("/api/v1/runs").await["runs"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_tick_runs_the_default_branch_once_also_across_restarts() {
    let mut h = Harness::new(true, "").await;
    // Every five minutes; the push itself is filtered out by `on`.
    let sha = h.commit(
        r#"workflow {
            on {
                cron "*/5 * * * *"
            }
            job id="nightly" { step run="echo scheduled"; }
        }"#,
    );
    h.start().await;
    h.deliver(Forge::GitHub, "push", "d-cron-push", &push(&h.repo, &sha))
        .await;
    h.wait_for("the push to be processed", || {
        h.daemon_log().contains("d-cron-push")
    })
    .await;
    assert_eq!(
        h.get_json("/api/v1/runs").await["runs"],
        json!([]),
        "the push itself runs nothing"
    );
    h.terminate();
    // Ten minutes later (as far as the daemon can tell): two ticks passed
    // while it was down; the latest one runs, once.
    h.start_with(&[("SOLSTICE_TEST_CRON_SHIFT_MINUTES", "10")])
        .await;
    h.wait_for("the scheduled run", || h.completed(&sha) > 0)
        .await;
    h.terminate();
    // Restarted within the same tick: no second run.
    h.start_with(&[("SOLSTICE_TEST_CRON_SHIFT_MINUTES", "10")])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let runs = h.get_json("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs}");
    let (_, _, fields) = &h.checks(&sha)[0];
    assert_eq!(fields["conclusion"], "success");
    assert!(
        fields["external_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("schedule-"),
        "{fields}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clone_uses_the_app_s_installation_token_and_the_log_never_shows_it() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(PASSING);
    h.start().await;
    // A clone URL on the forge's own host: it needs the forge's credentials.
    // (The fake forge serves no git: the clone fails, after sending them.)
    let mut body = push(&h.repo, &sha);
    body["repository"]["clone_url"] = format!("{}/octo/hello.git", h.forge.url()).into();
    h.deliver(Forge::GitHub, "push", "d-private", &body).await;
    h.wait_for("the job to end", || h.completed(&sha) > 0).await;
    let token = h
        .forge
        .tokens_issued()
        .pop()
        .expect("an installation token");
    let basic = |s: &str| {
        // What git sends: Basic base64("x-access-token:TOKEN").
        let out = std::process::Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
                c.wait_with_output()
            })
            .expect("base64");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let git = h
        .forge
        .requests()
        .into_iter()
        .find(|r| r.path == "/octo/hello.git/info/refs")
        .expect("git asked the forge for the repository");
    assert_eq!(
        git.authorization.as_deref(),
        Some(format!("Basic {}", basic(&format!("x-access-token:{token}"))).as_str())
    );
    let (_, _, fields) = &h.checks(&sha)[0];
    let page = h
        .get_text(fields["details_url"].as_str().expect("url"))
        .await;
    assert!(page.contains("git clone"), "{page}");
    assert!(
        !page.contains(&token),
        "the token must not reach the log: {page}"
    );
}
