//! The conformance suite for [`StepExecutor`] implementations: what the
//! runner relies on when it hands a step to an executor. The scripts are
//! POSIX shell, as workflow steps are.
//!
//! ```no_run
//! # async fn f() {
//! use solstice_core::runner::ShellExecutor;
//! solstice_core::testing::executor::run_all(&ShellExecutor).await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::log::LogStream;
use crate::runner::{OutputSink, Step, StepExecutor, StepOutcome};

/// Runs every check, each in a fresh directory.
pub async fn run_all(executor: &dyn StepExecutor) {
    exit_status_is_reported(executor).await;
    output_arrives_in_order_on_its_stream(executor).await;
    the_environment_and_directory_are_the_steps(executor).await;
    a_step_past_its_timeout_is_killed(executor).await;
    a_reader_that_goes_away_does_not_hang_the_step(executor).await;
}

/// Runs `script` in a fresh directory; its outcome and output by stream.
async fn run(
    executor: &dyn StepExecutor,
    step: Step,
    env: &BTreeMap<String, String>,
) -> (StepOutcome, Vec<(LogStream, Vec<u8>)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (sink, mut receiver) = OutputSink::channel(16);
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(piece) = receiver.recv().await {
            out.push(piece);
        }
        out
    });
    let outcome = executor
        .run(&step, dir.path(), env, sink)
        .await
        .expect("the step runs");
    let output = reader.await.expect("reader");
    (outcome, output, dir)
}

fn path_env() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "PATH".to_string(),
        "/usr/local/bin:/usr/bin:/bin".to_string(),
    )])
}

fn text_of(output: &[(LogStream, Vec<u8>)], stream: LogStream) -> String {
    let bytes: Vec<u8> = output
        .iter()
        .filter(|(s, _)| *s == stream)
        .flat_map(|(_, d)| d.iter().copied())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// 0 is success, other exit statuses come back as they are.
pub async fn exit_status_is_reported(executor: &dyn StepExecutor) {
    for (script, code) in [("true", 0), ("exit 3", 3), ("false", 1)] {
        let (outcome, _, _dir) = run(executor, Step::new(0, script, script), &path_env()).await;
        assert_eq!(outcome, StepOutcome::exited(code), "{script}");
    }
}

/// Standard output and standard error arrive on their streams, each in the
/// order written, whole.
pub async fn output_arrives_in_order_on_its_stream(executor: &dyn StepExecutor) {
    let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
    let (outcome, output, _dir) = run(executor, Step::new(0, "io", script), &path_env()).await;
    assert_eq!(outcome, StepOutcome::exited(0));
    assert_eq!(
        text_of(&output, LogStream::Stdout),
        "out1\nout2\nout3\nout4\nout5\n"
    );
    assert_eq!(
        text_of(&output, LogStream::Stderr),
        "err1\nerr2\nerr3\nerr4\nerr5\n"
    );
}

/// The step sees exactly the environment it is given, and runs in its
/// directory.
pub async fn the_environment_and_directory_are_the_steps(executor: &dyn StepExecutor) {
    let mut env = path_env();
    env.insert("SOLSTICE_SUITE_VALUE".into(), "given".into());
    let script = "echo \"$SOLSTICE_SUITE_VALUE ${SOLSTICE_SUITE_UNSET:-unset}\"; pwd -P";
    // `SOLSTICE_SUITE_UNSET` is set nowhere: it must come out unset.
    let (outcome, output, dir) = run(executor, Step::new(0, "env", script), &env).await;
    assert_eq!(outcome, StepOutcome::exited(0));
    let text = text_of(&output, LogStream::Stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("given unset"));
    let expected = std::fs::canonicalize(dir.path()).expect("dir");
    assert_eq!(lines.next().map(Path::new), Some(expected.as_path()));
}

/// A step still running at its timeout is killed, with its children, and
/// reported as timed out.
pub async fn a_step_past_its_timeout_is_killed(executor: &dyn StepExecutor) {
    let step = Step::new(
        0,
        "slow",
        "sleep 60 & echo $! > child; sleep 60; echo not-killed",
    )
    .with_timeout(Duration::from_millis(300));
    // Generous: the step must end because it was killed, long before its
    // sleeps would have.
    let ran = tokio::time::timeout(Duration::from_secs(30), run(executor, step, &path_env()))
        .await
        .expect("the executor returns after killing the step");
    let (outcome, output, dir) = ran;
    assert!(outcome.timed_out, "{outcome:?}");
    assert!(!text_of(&output, LogStream::Stdout).contains("not-killed"));
    let child: i32 = std::fs::read_to_string(dir.path().join("child"))
        .expect("the step started its child")
        .trim()
        .parse()
        .expect("a pid");
    let mut alive = true;
    for _ in 0..100 {
        alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_ok();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive, "the step's child {child} outlived the timeout");
}

/// When nobody reads the output any more, the step still ends: the
/// executor stops sending instead of waiting for ever.
pub async fn a_reader_that_goes_away_does_not_hang_the_step(executor: &dyn StepExecutor) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (sink, receiver) = OutputSink::channel(1);
    drop(receiver);
    let step = Step::new(
        0,
        "loud",
        "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done",
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        executor.run(&step, dir.path(), &path_env(), sink),
    )
    .await
    .expect("the step ends although nobody reads its output")
    .expect("the step runs");
    assert!(!outcome.timed_out);
}
