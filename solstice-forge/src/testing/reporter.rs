//! The conformance suite for [`StatusReporter`] implementations. Each
//! function takes the reporter under test and a way to see what the forge
//! shows for a commit (per job name: its state as a commit-status word,
//! and how many check runs or contexts it has), and panics on a
//! violation. Run them all with [`run_all`].

use std::time::{Duration, SystemTime};

use crate::{Conclusion, JobReport, JobState, Repo, StatusReporter, StepLine};

/// What the forge shows for `(repo, commit)`: `(job name, state word,
/// entries)`, as [`FakeForge::seen`](super::FakeForge::seen) gives.
pub type Seen<'a> = &'a (dyn Fn(&str, &str) -> Vec<(String, String, usize)> + Sync);

fn report(repo: &Repo, commit: &str, name: &str, state: JobState) -> JobReport {
    JobReport::new(repo.clone(), commit, name, format!("1/{name}"), state)
        .with_details_url("http://127.0.0.1:1/jobs/1")
        .with_description(format!("{name}: {state:?}"))
}

fn find(seen: &[(String, String, usize)], name: &str) -> Option<(String, usize)> {
    seen.iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, s, c)| (s.clone(), *c))
}

/// queued -> in progress -> completed shows as one entry in the last state.
pub async fn lifecycle(reporter: &dyn StatusReporter, repo: &Repo, seen: Seen<'_>) {
    let commit = "1111111111111111111111111111111111111111";
    for state in [
        JobState::Queued,
        JobState::InProgress,
        JobState::Completed(Conclusion::Success),
    ] {
        reporter
            .report(&report(repo, commit, "build", state))
            .await
            .unwrap_or_else(|e| panic!("reporting {state:?}: {e}"));
        let got = find(&seen(&repo.full_name, commit), "build");
        assert_eq!(
            got,
            Some((state.commit_status().to_string(), 1)),
            "after {state:?}"
        );
    }
}

/// The same report twice is the same as once; a second job is its own entry.
pub async fn idempotent(reporter: &dyn StatusReporter, repo: &Repo, seen: Seen<'_>) {
    let commit = "2222222222222222222222222222222222222222";
    for _ in 0..2 {
        for (name, state) in [
            ("test", JobState::Queued),
            ("lint", JobState::Queued),
            ("test", JobState::Completed(Conclusion::Failure)),
        ] {
            reporter
                .report(&report(repo, commit, name, state))
                .await
                .unwrap_or_else(|e| panic!("reporting {name} {state:?}: {e}"));
        }
    }
    let got = seen(&repo.full_name, commit);
    assert_eq!(find(&got, "test"), Some(("failure".into(), 1)), "{got:?}");
    assert_eq!(find(&got, "lint"), Some(("pending".into(), 1)), "{got:?}");
    assert_eq!(got.len(), 2, "{got:?}");
}

/// Every conclusion is accepted by the forge and shows as its state word.
pub async fn conclusions(reporter: &dyn StatusReporter, repo: &Repo, seen: Seen<'_>) {
    let commit = "3333333333333333333333333333333333333333";
    for (i, conclusion) in [
        Conclusion::Success,
        Conclusion::Failure,
        Conclusion::Cancelled,
        Conclusion::TimedOut,
        Conclusion::Skipped,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("job{i}");
        let state = JobState::Completed(conclusion);
        reporter
            .report(&report(repo, commit, &name, state))
            .await
            .unwrap_or_else(|e| panic!("reporting {conclusion:?}: {e}"));
        let got = find(&seen(&repo.full_name, commit), &name);
        assert_eq!(
            got,
            Some((state.commit_status().to_string(), 1)),
            "{conclusion:?}"
        );
    }
}

/// Text from a hostile workflow (huge, multibyte, control characters,
/// Markdown) is cut and cleaned, never refused by the forge.
pub async fn hostile_text(reporter: &dyn StatusReporter, repo: &Repo, seen: Seen<'_>) {
    let commit = "4444444444444444444444444444444444444444";
    let long = "é😀\u{1b}[31m`|[x](y)\r\n".repeat(20_000);
    let name = "hostile \u{7} name";
    let report = report(repo, commit, name, JobState::Completed(Conclusion::Failure))
        .with_description(long.clone())
        .with_steps(vec![StepLine::new(
            long.clone(),
            long.clone(),
            Some(Duration::from_secs(1)),
        )])
        .with_log_tail(long)
        .with_times(Some(SystemTime::now()), Some(SystemTime::now()));
    reporter
        .report(&report)
        .await
        .unwrap_or_else(|e| panic!("a hostile report was refused: {e}"));
    let got = seen(&repo.full_name, commit);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, "failure", "{got:?}");
}

/// A report the forge refuses (an unknown repository) is an error, not
/// a panic, and not retried for long.
pub async fn refused(reporter: &dyn StatusReporter, unknown: &Repo) {
    let commit = "5555555555555555555555555555555555555555";
    let result = reporter
        .report(&report(unknown, commit, "build", JobState::Queued))
        .await;
    assert!(
        result.is_err(),
        "a report for an unknown repository succeeded"
    );
}

/// Every function above, in turn.
pub async fn run_all(reporter: &dyn StatusReporter, repo: &Repo, unknown: &Repo, seen: Seen<'_>) {
    lifecycle(reporter, repo, seen).await;
    idempotent(reporter, repo, seen).await;
    conclusions(reporter, repo, seen).await;
    hostile_text(reporter, repo, seen).await;
    refused(reporter, unknown).await;
}
