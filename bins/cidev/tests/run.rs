//! `cidev run` end to end on the example workflows, with the local provider:
//! real shells, the real runner over gRPC, the real engine and SQLite.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use solstice_core::store::{JobStatus, RunId, SqlStore, StateStore};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cidev(args: &[&str]) -> Output {
    cidev_env(args, &[])
}

/// `cidev` with these environment variables set too.
fn cidev_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .current_dir(repo())
        .output()
        .expect("cidev runs")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Reads a kept state: every job's final status and its last attempt's log.
async fn state(dir: &Path) -> Vec<(String, JobStatus, Vec<u8>, i64, i64)> {
    let store = SqlStore::connect(&format!("sqlite://{}", dir.join("state.db").display()))
        .await
        .expect("state");
    let mut out = Vec::new();
    for job in store.jobs(RunId::new(1)).await.expect("jobs") {
        let attempts = store.attempts(job.id).await.expect("attempts");
        let (log, start, end) = match attempts.last() {
            Some(a) => (
                store
                    .logs(a.id)
                    .await
                    .expect("logs")
                    .into_iter()
                    .flat_map(|c| c.data)
                    .collect(),
                a.started_at,
                a.finished_at.unwrap_or(0),
            ),
            None => (Vec::new(), 0, 0),
        };
        out.push((job.key, job.status, log, start, end));
    }
    out
}

#[tokio::test]
async fn hello_runs_in_parallel_with_needs_order_and_matrix_fan_out() {
    let dir = tempfile::tempdir().expect("dir");
    let o = cidev(&[
        "run",
        "examples/workflows/hello.kdl",
        "--state",
        dir.path().to_str().expect("utf-8"),
    ]);
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("[look] ▶ Where am I"), "{out}");
    assert!(
        out.contains("[greet (shell=bash)] hello from bash"),
        "{out}"
    );
    assert!(out.contains("[greet (shell=sh)] hello from sh"), "{out}");
    assert!(
        out.contains("[look] the repository was checked out"),
        "{out}"
    );
    assert!(out.contains("run 1: succeeded"), "{out}");
    let jobs = state(dir.path()).await;
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(|j| j.1 == JobStatus::Succeeded));
    let report = jobs.iter().find(|j| j.0 == "report").expect("report");
    let latest_need = jobs
        .iter()
        .filter(|j| j.0 != "report")
        .map(|j| j.4)
        .max()
        .expect("needs");
    assert!(
        report.3 >= latest_need,
        "report started before what it needs ended"
    );
}

#[tokio::test]
async fn failures_continue_on_error_timeout_and_skips() {
    let dir = tempfile::tempdir().expect("dir");
    let o = cidev(&[
        "run",
        "examples/workflows/failures.kdl",
        "--state",
        dir.path().to_str().expect("utf-8"),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[broken] about to fail"),
        "stderr is shown: {out}"
    );
    assert!(!out.contains("not reached"), "{out}");
    assert!(
        out.contains("[slow] step timed out after 1s and was killed"),
        "{out}"
    );
    let jobs = state(dir.path()).await;
    let status = |k: &str| jobs.iter().find(|j| j.0 == k).map(|j| j.1).expect("job");
    assert_eq!(status("allowed"), JobStatus::Succeeded);
    assert_eq!(status("broken"), JobStatus::Failed);
    assert_eq!(status("slow"), JobStatus::Failed);
    assert_eq!(status("deploy"), JobStatus::Skipped);
    let summary: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("JOB")).collect();
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("deploy") && l.contains("skipped (needs `broken`")),
        "{summary:?}"
    );
}

#[tokio::test]
async fn env_precedence_and_secrets_masked_in_printed_and_stored_logs() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = "hunter2-hunter2";
    let o = cidev(&[
        "run",
        "examples/workflows/env-and-secrets.kdl",
        "--secret",
        &format!("API_TOKEN={secret}"),
        "--state",
        dir.path().to_str().expect("utf-8"),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("LEVEL=job FROM_WORKFLOW=yes MATRIX_FLAVOUR=plain CI=true"),
        "{out}"
    );
    assert!(out.contains("LEVEL=step"), "{out}");
    assert!(out.contains("token is ***"), "{out}");
    assert!(!out.contains(secret), "secret printed: {out}");
    let jobs = state(dir.path()).await;
    let log = String::from_utf8_lossy(&jobs[0].2).into_owned();
    assert!(log.contains("split: ***"), "{log}");
    assert!(!log.contains(secret), "secret stored: {log}");
    // Without the value, the run is refused before anything starts.
    let o = cidev(&["run", "examples/workflows/env-and-secrets.kdl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("API_TOKEN"));
}

#[tokio::test]
async fn a_job_that_writes_a_lot_of_output() {
    let dir = tempfile::tempdir().expect("dir");
    let o = cidev(&[
        "run",
        "examples/workflows/big-output.kdl",
        "--state",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let printed = text(&o)
        .lines()
        .filter(|l| l.starts_with("[loud] xxxx"))
        .count();
    assert_eq!(printed, 200_000, "every line printed once");
    let jobs = state(dir.path()).await;
    let stored = jobs[0].2.iter().filter(|b| **b == b'x').count();
    assert_eq!(stored, 20_000_000, "every byte stored");
}

#[test]
fn job_selection_runs_what_the_job_needs() {
    let o = cidev(&["run", "examples/workflows/hello.kdl", "--job", "look"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("[look]") && !out.contains("[greet") && !out.contains("[report]"),
        "{out}"
    );
    let o = cidev(&["run", "examples/workflows/hello.kdl", "--job", "report"]);
    let out = text(&o);
    assert!(
        out.contains("[look]") && out.contains("[greet (shell=sh)]") && out.contains("[report]"),
        "{out}"
    );
    let o = cidev(&["run", "examples/workflows/hello.kdl", "--job", "nope"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn runners_can_reach_the_engine_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("dir");
    let wf = dir.path().join("where.kdl");
    // The step cannot see the endpoint; it looks for the socket beside the
    // VM directories (TEMP/runner.sock, the step runs in TEMP/vms/VM/work/checkout).
    std::fs::write(
        &wf,
        r#"workflow { job id="where" { step run="test -S ../../../../runner.sock && echo socket=yes || echo socket=no"; } }"#,
    )
    .expect("write");
    let wf = wf.display().to_string();
    let o = cidev(&["run", &wf, "--unix-socket"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("socket=yes"), "{out}");
    let o = cidev(&["run", &wf]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("socket=no"), "{}", text(&o));
}

/// What a step can find of its runner: nothing of the endpoint or the
/// token, neither in its own environment nor in the runner's.
#[test]
fn a_step_sees_neither_the_token_nor_the_endpoint() {
    let dir = tempfile::tempdir().expect("dir");
    let wf = dir.path().join("peek.kdl");
    std::fs::write(
        &wf,
        r#"workflow { job id="peek" { step run="env; echo ---; tr '\\0' '\\n' < /proc/$PPID/environ; echo; echo ---; cat /proc/$PPID/cmdline | tr '\\0' ' '; echo; echo peeked"; } }"#,
    )
    .expect("write");
    let o = cidev(&["run", &wf.display().to_string()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("[peek] peeked"), "{out}");
    assert!(out.contains("[peek] PATH="), "the step has a PATH: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[peek] TMPDIR=") && l.contains("/vms/") && l.ends_with("/tmp")),
        "the step's temporary files stay in its VM directory: {out}"
    );
    let (own, runner) = out.split_once("[peek] ---").expect("separator");
    assert!(!own.contains("SOLSTICE_ENDPOINT"), "{own}");
    assert!(!out.contains("SOLSTICE_JOB_TOKEN"), "{out}");
    assert!(
        runner.contains("SOLSTICE_ENDPOINT="),
        "the runner's environment was read (the test can fail): {runner}"
    );
    // The token is 64 hex digits; nothing of that shape reached the step.
    let hex_run = out
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(hex_run < 64, "a token-like value was visible: {out}");
}

#[test]
fn the_mock_provider_runs_without_processes() {
    let o = cidev(&["run", "examples/workflows/hello.kdl", "--provider", "mock"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("[report] echo \"every job it needs passed\""),
        "the fake executor echoes scripts: {out}"
    );
}

/// Ctrl-C, `timeout`/systemd/`docker stop` (SIGTERM) and a closed terminal
/// (SIGHUP) all cancel the run, end its steps and remove the temporary
/// directory.
fn a_signal_cancels_and_leaves_nothing_behind(signal: nix::sys::signal::Signal, exit: i32) {
    let dir = tempfile::tempdir().expect("dir");
    let pidfile = dir.path().join("pid");
    let workflow = dir.path().join("wait.kdl");
    std::fs::write(
        &workflow,
        format!(
            "workflow {{\n    job id=\"wait\" {{\n        step run=\"echo $$ > {}; pwd; sleep 60\"\n        step run=\"touch {}\"\n    }}\n}}\n",
            pidfile.display(),
            dir.path().join("later-step-ran").display()
        ),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(["run", workflow.to_str().expect("utf-8")])
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // The shell creates the file before `echo` writes it: wait for the
    // whole line (an empty read failed once in CI).
    let started = Instant::now();
    let written = loop {
        let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
        if text.ends_with('\n') {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid: i32 = written.trim().parse().expect("pid number");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("signal");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(exit), "{signal}");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().expect("stdout"), &mut out).expect("read");
    assert!(out.contains("cancelled"), "{out}");
    // Killed means gone, or a zombie waiting for init to reap it.
    let dead = || !alive(Path::new(&format!("/proc/{pid}")));
    let until = Instant::now() + Duration::from_secs(5);
    while !dead() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dead(), "the step's process {pid} is still running");
    let workdir = out
        .lines()
        .find_map(|l| l.strip_prefix("[wait] /"))
        .map(|p| PathBuf::from(format!("/{p}")))
        .expect("pwd printed");
    let temp_root = workdir
        .ancestors()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cidev-run-"))
        })
        .expect("temp root");
    assert!(!temp_root.exists(), "{} left behind", temp_root.display());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !dir.path().join("later-step-ran").exists(),
        "a later step ran after {signal}"
    );
}

#[test]
fn ctrl_c_cancels_and_leaves_nothing_behind() {
    a_signal_cancels_and_leaves_nothing_behind(nix::sys::signal::Signal::SIGINT, 130);
}

#[test]
fn sigterm_cancels_and_leaves_nothing_behind() {
    a_signal_cancels_and_leaves_nothing_behind(nix::sys::signal::Signal::SIGTERM, 143);
}

#[test]
fn sighup_cancels_and_leaves_nothing_behind() {
    a_signal_cancels_and_leaves_nothing_behind(nix::sys::signal::Signal::SIGHUP, 129);
}

/// Processes whose command line is exactly `sleep SECONDS`, not zombies.
fn sleepers(seconds: &str) -> usize {
    let cmdline = format!("sleep\0{seconds}\0");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == cmdline.as_bytes())
                && alive(&e.path())
        })
        .count()
}

/// Whether the process of a `/proc/PID` directory runs (exists and is not
/// a zombie waiting for its parent).
fn alive(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// `sleepers(seconds)` once it is 0, or after `tries` looks 50 ms apart.
fn sleepers_after(seconds: &str, tries: usize) -> usize {
    let mut left = sleepers(seconds);
    for _ in 0..tries {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        left = sleepers(seconds);
    }
    left
}

/// Processes a step leaves running (in the background, even in a session
/// of their own) do not outlive the job.
#[test]
fn processes_a_step_leaves_behind_end_with_the_job() {
    let dir = tempfile::tempdir().expect("dir");
    let wf = dir.path().join("daemon.kdl");
    std::fs::write(
        &wf,
        // The step waits (up to 5 s) until the process is in its own
        // session: before that, ending the step's process group ends it too.
        "workflow {\n    job id=\"daemon\" timeout=\"1m\" {\n        step run=\"setsid sleep 317 >/dev/null 2>&1 & p=$!; i=0; while [ \\\"$(cut -d' ' -f6 /proc/$p/stat)\\\" != \\\"$p\\\" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; echo started\"\n    }\n}\n",
    )
    .expect("write");
    let o = cidev(&["run", &wf.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("[daemon] started"), "{}", text(&o));
    let remaining = sleepers_after("317", 100);
    assert_eq!(
        remaining, 0,
        "the step's background process outlived the job"
    );
}

/// Step output cannot drive the terminal, and a last line without a line
/// break stays on its own line.
#[test]
fn step_output_is_escaped_and_lines_stay_apart() {
    let dir = tempfile::tempdir().expect("dir");
    let wf = dir.path().join("esc.kdl");
    std::fs::write(
        &wf,
        r#"workflow {
  job id="a" {
    matrix { v "\u{1b}[2J"; }
    step run="printf 'one\\033]0;pwned\\007two\\r[a] ok\\n\\302\\233x\\n'; printf 'no line break'"
    step run="echo next"
  }
}
"#,
    )
    .expect("write");
    let o = cidev(&["run", &wf.display().to_string()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        !out.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached the terminal: {out:?}"
    );
    assert!(
        out.contains(r#"[a (v="\u{1b}[2J")] one\x1b]0;pwned\x07two\r[a] ok"#),
        "{out}"
    );
    assert!(out.contains(r#"[a (v="\u{1b}[2J")] \u{9b}x"#), "{out}");
    assert!(
        out.contains("[a (v=\"\\u{1b}[2J\")] no line break\n"),
        "{out}"
    );
    assert!(out.contains("[a (v=\"\\u{1b}[2J\")] next\n"), "{out}");
}

/// A script over the kernel's 128 KiB argument limit runs (it is passed in
/// a file), and its name is its first line, cut.
#[test]
fn a_long_script_runs_and_its_name_is_cut() {
    let dir = tempfile::tempdir().expect("dir");
    let wf = dir.path().join("long.kdl");
    let script = format!(
        "echo {}\n{}echo long script done",
        "x".repeat(200),
        ": padding line\n".repeat(20_000)
    );
    std::fs::write(
        &wf,
        format!(
            "workflow {{ job id=\"long\" {{ step run=\"{}\"; }} }}\n",
            script.replace('\n', "\\n")
        ),
    )
    .expect("write");
    let o = cidev(&["run", &wf.display().to_string()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{}", &out[..out.len().min(2000)]);
    assert!(out.contains("[long] long script done"), "{out}");
    let started = out
        .lines()
        .find(|l| l.starts_with("[long] ▶ "))
        .expect("step started");
    assert_eq!(
        started,
        format!("[long] ▶ echo {}…", "x".repeat(67)),
        "the default name is the first line cut to 72 characters"
    );
}

/// Committed symlinks are part of the checkout, in and out of git.
#[test]
fn symlinks_are_checked_out_as_symlinks() {
    for git in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("target.txt"), "pointed at\n").expect("write");
        std::os::unix::fs::symlink("target.txt", dir.path().join("link")).expect("symlink");
        std::fs::write(
            dir.path().join("wf.kdl"),
            r#"workflow { job id="l" { step run="test -L link && cat link"; } }"#,
        )
        .expect("write");
        if git {
            for args in [&["init", "-q"][..], &["add", "."][..]] {
                let ok = Command::new("git")
                    .args(args)
                    .current_dir(dir.path())
                    .status()
                    .expect("git");
                assert!(ok.success());
            }
        }
        let o = Command::new(env!("CARGO_BIN_EXE_cidev"))
            .args(["run", "wf.kdl"])
            .env("NO_COLOR", "1")
            .current_dir(dir.path())
            .output()
            .expect("cidev runs");
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "git={git}: {out}");
        assert!(out.contains("[l] pointed at"), "git={git}: {out}");
    }
}

/// `--secret NAME` takes the value from the environment (not visible in
/// `ps`), a secrets file takes the common dotenv forms, a value too short
/// to mask is refused, and what cidev keeps on disk is private.
#[tokio::test]
async fn secrets_from_the_environment_and_dotenv_files_and_private_state() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let wf = dir.path().join("s.kdl");
    std::fs::write(
        &wf,
        r#"workflow { secret "FROM_ENV" "QUOTED" "EXPORTED"; job id="s" { step run="echo $FROM_ENV $QUOTED $EXPORTED; stat -c %a ../../../.."; } }"#,
    )
    .expect("write");
    let file = dir.path().join("secrets.env");
    std::fs::write(
        &file,
        "# a comment\nexport EXPORTED=exported-value\nQUOTED=\"quoted value\" # note\n",
    )
    .expect("write");
    let state = dir.path().join("state");
    let (wf, file) = (wf.display().to_string(), file.display().to_string());
    let args = ["run", &wf, "--secret", "FROM_ENV", "--secrets-file", &file];
    let state_arg = state.display().to_string();
    let with_state: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--state", &state_arg])
        .collect();
    let o = cidev_env(&with_state, &[("FROM_ENV", "value-from-env")]);
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("[s] *** *** ***"),
        "every secret masked: {out}"
    );
    assert!(
        out.contains("[s] 700"),
        "the temporary directory is private: {out}"
    );
    let mode = std::fs::metadata(state.join("state.db"))
        .expect("state.db")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "state.db is private");
    // A value too short to be masked, and a line the file cannot mean.
    let o = cidev_env(&args, &[("FROM_ENV", "abc")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("shorter than 4 bytes"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(&file, "GOOD=1234\nthis is not a secret line\n").expect("write");
    let o = cidev(&["run", &wf, "--secrets-file", &file]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("secrets.env:2: expected NAME=VALUE"), "{err}");
}

/// `--state DIR` is one cidev's at a time; a run a killed cidev left in it
/// is cancelled (not resumed under the next run's output) and what its jobs
/// left running is reaped.
#[tokio::test]
async fn a_later_run_on_the_same_state_cancels_and_reaps_what_a_killed_one_left() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let old = dir.path().join("old.kdl");
    std::fs::write(
        &old,
        "workflow {\n    job id=\"old\" {\n        step run=\"setsid sleep 313 >/dev/null 2>&1 & p=$!; i=0; while [ \\\"$(cut -d' ' -f6 /proc/$p/stat)\\\" != \\\"$p\\\" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; echo started; sleep 61\"\n    }\n}\n",
    )
    .expect("write");
    let new = dir.path().join("new.kdl");
    std::fs::write(
        &new,
        r#"workflow { job id="new" { step run="echo new"; } }"#,
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args([
            "run",
            &old.display().to_string(),
            "--state",
            &state.display().to_string(),
            // What a killed cidev cannot remove stays in the test's directory.
            "--tmpdir",
            &dir.path().display().to_string(),
        ])
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l == "[old] started");
    assert!(started, "the old job started");
    // While it runs, the state is taken.
    let o = cidev(&[
        "run",
        &new.display().to_string(),
        "--state",
        &state.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use by another cidev"));
    assert_eq!(sleepers("61"), 1, "the step runs");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The runner lost its engine: it stops its step by itself.
    let step = sleepers_after("61", 200);
    assert_eq!(step, 0, "the runner stopped its step when its engine died");
    assert_eq!(
        sleepers("313"),
        1,
        "the killed cidev left its job's process"
    );

    let o = cidev(&[
        "run",
        &new.display().to_string(),
        "--state",
        &state.display().to_string(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("[new] new"), "{out}");
    assert!(
        !out.contains("[old]"),
        "the old run is not resumed here: {out}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("left unfinished by an earlier cidev"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let left = sleepers_after("313", 100);
    assert_eq!(left, 0, "the old job's process was reaped");
    let store = SqlStore::connect(&format!("sqlite://{}", state.join("state.db").display()))
        .await
        .expect("state");
    let old_run = store.run(RunId::new(1)).await.expect("run").expect("run 1");
    assert_eq!(old_run.status, solstice_core::store::RunStatus::Cancelled);
    let job = store.jobs(RunId::new(1)).await.expect("jobs").remove(0);
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.reason.is_some_and(|r| r.starts_with("abandoned")));
}

/// `cidev run --provider mock` with its state in `state`: it succeeds and
/// the database is where asked.
fn runs_with_state_in(state: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args([
            "run",
            "examples/workflows/hello.kdl",
            "--provider",
            "mock",
            "--state",
        ])
        .arg(state)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .output()
        .expect("cidev runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        state.join("state.db").is_file(),
        "the database is where asked"
    );
}

#[test]
fn a_state_directory_with_url_characters_in_its_name_works() {
    // The SQLite database is opened by path: a name that a URL would read
    // as a query (`?`), a fragment (`#`) or an escape (`%41`) is just a name.
    let dir = tempfile::tempdir().expect("temp dir");
    runs_with_state_in(&dir.path().join("state ?mode=ro#x%41"));
    assert!(!dir.path().join("state ").exists(), "no truncated name");
}

#[test]
fn an_unknown_provider_is_refused_with_the_choices() {
    let o = cidev(&["run", "examples/workflows/hello.kdl", "--provider", "qemu2"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("local") && err.contains("mock"), "{err}");
}

#[test]
fn errors_are_reported_with_their_causes() {
    // A state directory under a file cannot be made: the report names what
    // failed and why, one line per cause.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let state = file.join("state");
    let o = cidev(&[
        "run",
        "examples/workflows/hello.kdl",
        "--provider",
        "mock",
        "--state",
        state.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains('×') && err.contains("a-file"), "{err}");
    assert!(
        err.contains("Not a directory") || err.contains("not a directory"),
        "{err}"
    );
}

#[test]
fn a_state_directory_whose_name_is_not_utf8_works() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    runs_with_state_in(&dir.path().join(std::ffi::OsStr::from_bytes(b"st\xe9te")));
}
