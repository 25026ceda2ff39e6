//! What a job can reach of the daemon that runs it, with the local
//! provider: the daemon's environment stays out of every process it
//! starts and its secrets are masked in every log; the state directory is
//! private and jobs run outside it; with `run-as`, jobs run as another
//! user who can read neither; and without `run-as`, jobs from a forge
//! need the operator's explicit `allow-unisolated-jobs`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use solstice_forge::Forge;
use support::{ADMIN_TOKEN, HOOK_SECRET, Harness};

/// A step that prints its parent's (the runner's) environment between
/// markers, then every environment and command line it can read.
const SNOOP: &str = r#"workflow {
    job id="snoop" {
        step name="Read what can be read" run="echo '== runner'; tr '\\0' '\\n' < /proc/$PPID/environ; echo '== end'; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do (tr '\\0' '\\n' < \"$f\") 2>/dev/null || true; echo; done; pwd; echo snooped"
    }
}
"#;

async fn log_of(h: &Harness, sha: &str) -> (String, String) {
    let checks = h.checks(sha);
    let details = checks[0].2["details_url"]
        .as_str()
        .expect("details_url")
        .to_string();
    let job = details.rsplit('/').next().expect("job id").to_string();
    let api = h
        .http
        .get(format!("{}/api/v1/jobs/{job}/log", h.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("log")
        .text()
        .await
        .expect("text");
    let page = h
        .http
        .get(&details)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    (api, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_secrets_stay_out_of_jobs_and_are_masked_if_found() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(SNOOP);
    // The secrets come from the environment here, as a unit's
    // `Environment=` would give them.
    h.start_with(&[
        ("SOLSTICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SOLSTICE_GITHUB_WEBHOOK_SECRET", HOOK_SECRET),
    ])
    .await;
    h.deliver(
        Forge::GitHub,
        "push",
        "snoop",
        &support::push(&h.repo, &sha),
    )
    .await;
    h.wait_for("the run", || h.completed(&sha) > 0).await;
    let (api, page) = log_of(&h, &sha).await;
    assert!(api.contains("snooped"), "{api}");
    // The runner (the step's parent) has an explicit environment: not
    // one of the daemon's settings.
    let runner = api
        .split("== runner")
        .nth(1)
        .and_then(|r| r.split("== end").next())
        .expect("the runner's environment");
    assert!(runner.contains("SOLSTICE_ENDPOINT="), "{runner}");
    for name in [
        "SOLSTICE_ADMIN_TOKEN",
        "SOLSTICE_GITHUB_WEBHOOK_SECRET",
        "SOLSTICE_LOG",
    ] {
        assert!(
            !runner.contains(name),
            "{name} reached the runner: {runner}"
        );
    }
    // The daemon's own environment is readable here (same user, no
    // run-as): what the step printed of it is masked.
    assert!(api.contains("SOLSTICE_ADMIN_TOKEN=***"), "{api}");
    let key = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../solstice-forge/tests/fixtures/app-key/test-app.pem"),
    )
    .expect("key");
    let key_line = key.lines().nth(1).expect("a line of the key");
    for secret in [ADMIN_TOKEN, HOOK_SECRET, key_line] {
        assert!(!api.contains(secret), "{secret} in the API's log");
        assert!(!page.contains(secret), "{secret} on the page");
    }
    // The job ran outside the state directory, and the page says how it ran.
    let state = h.dir.path().join("state");
    let pwd = api.lines().rev().find(|l| l.starts_with('/')).expect("pwd");
    assert!(
        !std::path::Path::new(pwd).starts_with(&state),
        "{pwd} is inside the state directory"
    );
    assert!(page.contains("local provider"), "{page}");
    assert!(page.contains("no isolation"), "{page}");
    // The state is private.
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("solstice.db")), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_from_a_forge_need_run_as_or_the_operators_consent() {
    // The harness's configuration says allow-unisolated-jobs; this one
    // does not.
    let h = Harness::new(true, "").await;
    let text = std::fs::read_to_string(&h.config).expect("config");
    let strict = h.dir.path().join("strict.kdl");
    std::fs::write(&strict, text.replace("allow-unisolated-jobs #true\n", "")).expect("write");
    let run = |command: &str| {
        Command::new(env!("CARGO_BIN_EXE_solstice"))
            .args([command, "--config"])
            .arg(&strict)
            .env("NO_COLOR", "1")
            .output()
            .expect("solstice")
    };
    for command in ["serve", "check-config"] {
        let out = run(command);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("run-as"), "{command}: {err}");
        assert!(err.contains("allow-unisolated-jobs"), "{command}: {err}");
    }
    // With the consent, check-config passes and says what it means.
    let out = Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["check-config", "--config"])
        .arg(&h.config)
        .output()
        .expect("solstice");
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NO isolation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_run_as_a_job_reads_neither_the_state_nor_the_daemons_environment() {
    let mut h = Harness::new(true, "run-as \"nobody\"\n").await;
    if !nix::unistd::geteuid().is_root() {
        // Only root can start a process as another user: the daemon says
        // so and does not start.
        let out = Command::new(env!("CARGO_BIN_EXE_solstice"))
            .args(["serve", "--config"])
            .arg(&h.config)
            .output()
            .expect("solstice");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
        eprintln!("not root: checked the refusal only");
        return;
    }
    let state = h.dir.path().join("state");
    let sha = h.commit(&format!(
        r#"workflow {{
    job id="contained" {{
        step name="Who and where" run="id -un; pwd; echo HOME=$HOME"
        step name="The state" run="ls {state} 2>&1 || echo state-refused; cat {state}/solstice.db > /dev/null 2>&1 || echo db-refused"
        step name="The daemon" run="for p in /proc/[0-9]*; do if tr '\\0' '\\n' < $p/environ 2>/dev/null | grep -q '^SOLSTICE_ADMIN_TOKEN='; then echo found-in-$p; fi; done; echo searched"
    }}
}}
"#,
        state = state.display()
    ));
    // The job user must be able to reach the repository it clones, and
    // git clones only a repository its own user owns.
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("user database")
        .expect("the user nobody");
    let chown = Command::new("chown")
        .args(["-R", &format!("{}:{}", nobody.uid, nobody.gid)])
        .arg(&h.repo)
        .status()
        .expect("chown");
    assert!(chown.success());
    h.start_with(&[("SOLSTICE_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    h.deliver(
        Forge::GitHub,
        "push",
        "nobody",
        &support::push(&h.repo, &sha),
    )
    .await;
    h.wait_for("the run", || h.completed(&sha) > 0).await;
    let (api, page) = log_of(&h, &sha).await;
    assert_eq!(h.checks(&sha)[0].2["conclusion"], "success", "{api}");
    assert!(
        api.contains("\nnobody\n") || api.starts_with("nobody\n"),
        "{api}"
    );
    assert!(api.contains("state-refused"), "{api}");
    assert!(api.contains("db-refused"), "{api}");
    assert!(api.contains("searched"), "{api}");
    assert!(
        !api.contains("found-in-"),
        "the job read the daemon's environment: {api}"
    );
    assert!(page.contains("as user <code>nobody</code>"), "{page}");
}
