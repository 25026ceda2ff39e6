//! `ciadm` end to end against a running all-in-one daemon: runs, show,
//! logs --follow, why, cancel, hosts, and the token.

mod support;

use std::process::Output;

use serde_json::Value;
use solstice_forge::Forge;
use support::{ADMIN_TOKEN, Harness, push};

fn ciadm(h: &Harness, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ciadm"));
    cmd.args(["--url", &h.url])
        .args(args)
        .env_remove("SOLSTICE_TOKEN")
        .env_remove("SOLSTICE_TOKEN_FILE");
    if let Some(t) = token {
        cmd.env("SOLSTICE_TOKEN", t);
    }
    cmd.output().expect("ciadm runs")
}

async fn ciadm_ok(h: &Harness, args: &[&str]) -> String {
    let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (url, log) = (h.url.clone(), h.daemon_log());
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ciadm"));
        cmd.args(["--url", &url])
            .args(&owned)
            .env("SOLSTICE_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("ciadm runs")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "ciadm {args:?}: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn latest_run(h: &Harness) -> Value {
    let runs: Value = serde_json::from_str(&ciadm_ok(h, &["runs", "--format", "json"]).await)
        .expect("runs as JSON");
    runs[0].clone()
}

async fn job_id(h: &Harness, run: i64, key: &str) -> i64 {
    let show: Value =
        serde_json::from_str(&ciadm_ok(h, &["show", &run.to_string(), "--format", "json"]).await)
            .expect("show as JSON");
    show["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["key"] == key)
        .and_then(|j| j["id"].as_i64())
        .expect("the job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciadm_follows_logs_explains_waits_cancels_and_lists_the_fleet() {
    let mut h = Harness::new(true, "").await;
    h.start().await;
    // Without a token: usage (2); a wrong one: the daemon's 401 (1).
    assert_eq!(ciadm(&h, None, &["runs"]).status.code(), Some(2));
    let wrong = ciadm(&h, Some("wrong"), &["runs"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));

    let sha = h.commit(
        "workflow {\n  job id=\"a\" {\n    step run=\"echo first; printf '\\\\033[31mred\\\\n'; sleep 2; echo second\"\n  }\n  job id=\"b\" {\n    needs \"a\"\n    step run=\"echo b\"\n  }\n}",
    );
    let (status, _) = h
        .deliver(Forge::GitHub, "push", "d-ciadm", &push(&h.repo, &sha))
        .await;
    assert_eq!(status, 202);
    let mut run = Value::Null;
    for _ in 0..100 {
        run = latest_run(&h).await;
        if run.is_object() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let run_id = run["id"].as_i64().expect("a run");
    let a = job_id(&h, run_id, "a").await;
    let b = job_id(&h, run_id, "b").await;
    // b waits for a.
    let why = ciadm_ok(&h, &["why", &b.to_string()]).await;
    assert!(
        why.contains("waiting for what it needs") && why.contains('a'),
        "{why}"
    );
    let why: Value =
        serde_json::from_str(&ciadm_ok(&h, &["why", &b.to_string(), "--format", "json"]).await)
            .expect("why as JSON");
    assert_eq!(why["reason"], "needs", "{why}");
    // Following a's log prints it as it grows and ends with the job; the
    // step's escape sequence reaches the terminal as text.
    let log = ciadm_ok(&h, &["logs", &a.to_string(), "--follow"]).await;
    assert!(log.contains("first") && log.contains("second"), "{log}");
    assert!(
        !log.contains('\u{1b}') && log.contains("^[[31mred"),
        "{log:?}"
    );
    let show = ciadm_ok(&h, &["show", &run_id.to_string()]).await;
    assert!(show.contains("succeeded"), "{show}");
    let runs = ciadm_ok(&h, &["runs"]).await;
    assert!(
        runs.starts_with("RUN") && runs.contains(&format!("\n{run_id} ")) && runs.contains("s ago"),
        "{runs}"
    );
    // A retry: attempt 2 runs, attempt 1 is kept.
    let out = ciadm_ok(&h, &["retry", &a.to_string()]).await;
    assert!(out.contains("queued as attempt 2"), "{out}");
    let mut attempts = Value::Null;
    for _ in 0..300 {
        let j = h.get_json(&format!("/api/v1/jobs/{a}")).await;
        if j["job"]["status"] == "succeeded" && j["attempts"].as_array().map(Vec::len) == Some(2) {
            attempts = j["attempts"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(attempts[1]["number"], 2, "{attempts}");
    let first = ciadm_ok(&h, &["logs", &a.to_string(), "--attempt", "1"]).await;
    assert!(first.contains("second"), "{first}");
    // The fleet: this one daemon.
    let hosts: Value =
        serde_json::from_str(&ciadm_ok(&h, &["hosts", "--format", "json"]).await).expect("hosts");
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
    assert_eq!(hosts[0]["role"], "all-in-one");
    let text = ciadm_ok(&h, &["hosts"]).await;
    assert!(text.contains("all-in-one"), "{text}");

    // A manual run of a branch, resolved by the forge.
    let sha = h.commit("workflow {\n  job id=\"by-hand\" {\n    step run=\"echo manual\"\n  }\n}");
    h.forge.put_ref(support::REPO, "main", &sha);
    let clone_url = format!("file://{}", h.repo.display());
    let out = ciadm_ok(
        &h,
        &[
            "trigger",
            support::REPO,
            "--ref",
            "main",
            "--clone-url",
            &clone_url,
        ],
    )
    .await;
    assert!(out.starts_with("run ") && out.contains(&sha), "{out}");
    let manual: i64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a run id");
    for _ in 0..300 {
        let show: Value = serde_json::from_str(
            &ciadm_ok(&h, &["show", &manual.to_string(), "--format", "json"]).await,
        )
        .expect("show");
        if show["run"]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let show = ciadm_ok(&h, &["show", &manual.to_string()]).await;
    assert!(
        show.contains("by-hand") && show.contains("succeeded"),
        "{show}"
    );
    for (args, status) in [
        (vec!["trigger", support::REPO, "--ref", "nope"], "404"),
        (vec!["trigger", support::REPO, "--ref", "../x"], "400"),
        (vec!["trigger", "octo/../x", "--commit", &sha], "400"),
        (vec!["trigger", support::REPO, "--commit", "abc"], "400"),
    ] {
        let o = ciadm(&h, Some(ADMIN_TOKEN), &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(status), "{args:?}: {err}");
    }

    // A fork's pull request waits for approval: listed, then approved.
    let fork_sha = h.commit_pull_request(
        "workflow {\n  job id=\"from-fork\" {\n    step run=\"echo fork\"\n  }\n}",
    );
    let (status, _) = h
        .deliver(
            Forge::GitHub,
            "pull_request",
            "d-ciadm-fork",
            &support::pull_request(&h.repo, &fork_sha, true, "mallory"),
        )
        .await;
    assert_eq!(status, 202);
    let mut held = Value::Null;
    for _ in 0..100 {
        let list: Value =
            serde_json::from_str(&ciadm_ok(&h, &["deliveries", "--format", "json"]).await)
                .expect("deliveries");
        if let Some(d) = list.as_array().and_then(|l| {
            l.iter()
                .find(|d| d["id"] == "d-ciadm-fork" && d["state"] == "approval")
        }) {
            held = d.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(held["forge"], "github", "{held}");
    let text = ciadm_ok(&h, &["deliveries"]).await;
    assert!(
        text.contains("d-ciadm-fork") && text.contains("approval"),
        "{text}"
    );
    let out = ciadm_ok(&h, &["approve", "github", "d-ciadm-fork"]).await;
    assert!(out.contains("approved"), "{out}");
    let mut approved_run = None;
    for _ in 0..100 {
        let d = h.get_json("/api/v1/deliveries/github/d-ciadm-fork").await;
        if let Some(run) = d["run_id"].as_i64() {
            approved_run = Some(run);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let approved_run = approved_run.expect("the approved delivery started a run");
    // Approving again: it is not waiting any more (409).
    let again = ciadm(
        &h,
        Some(ADMIN_TOKEN),
        &["approve", "github", "d-ciadm-fork"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
    let manual = manual.max(approved_run);

    // A long run, cancelled.
    let sha =
        h.commit("workflow {\n  job id=\"long\" {\n    step run=\"echo going; sleep 60\"\n  }\n}");
    let (status, _) = h
        .deliver(Forge::GitHub, "push", "d-ciadm-long", &push(&h.repo, &sha))
        .await;
    assert_eq!(status, 202);
    let mut long_run = manual;
    for _ in 0..100 {
        long_run = latest_run(&h).await["id"].as_i64().unwrap_or(manual);
        if long_run > manual {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(long_run > manual, "the long run");
    let long = job_id(&h, long_run, "long").await;
    for _ in 0..300 {
        let j = h.get_json(&format!("/api/v1/jobs/{long}")).await;
        if j["job"]["status"] == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Retrying a job that has not ended is refused (409).
    let early = ciadm(&h, Some(ADMIN_TOKEN), &["retry", &long.to_string()]);
    assert_eq!(early.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&early.stderr).contains("409"));
    let out = ciadm_ok(&h, &["cancel", &long_run.to_string()]).await;
    assert!(out.contains("cancelling"), "{out}");
    for _ in 0..300 {
        let show: Value = serde_json::from_str(
            &ciadm_ok(&h, &["show", &long_run.to_string(), "--format", "json"]).await,
        )
        .expect("show");
        if show["run"]["status"] == "cancelled" {
            let why = ciadm_ok(&h, &["why", &long.to_string()]).await;
            assert!(why.contains("ended: cancelled"), "{why}");
            // Cancelling an ended run is refused (409).
            let again = ciadm(&h, Some(ADMIN_TOKEN), &["cancel", &long_run.to_string()]);
            assert_eq!(again.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the run was not cancelled: {}", h.daemon_log());
}
