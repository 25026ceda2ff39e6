//! [`StatusReporter`]: telling a forge how a job is doing (a GitHub check
//! run, a commit status), and the report it is given.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{ForgeError, Repo};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a host (or an operator's approval).
    Queued,
    /// Running.
    InProgress,
    /// Over.
    Completed(Conclusion),
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conclusion {
    /// Every step passed.
    Success,
    /// A step failed (or the workflow could not be read).
    Failure,
    /// Someone cancelled it.
    Cancelled,
    /// It ran out of time.
    TimedOut,
    /// It did not run (something it needs did not succeed).
    Skipped,
}

impl Conclusion {
    /// GitHub's name for it in the Checks API.
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Cancelled => "cancelled",
            Conclusion::TimedOut => "timed_out",
            Conclusion::Skipped => "skipped",
        }
    }
}

impl JobState {
    /// The commit-status state (GitHub and Forgejo share them): `pending`,
    /// `success`, `failure` or `error` (cancelled and skipped jobs, which
    /// did not fail but did not pass either).
    pub fn commit_status(self) -> &'static str {
        match self {
            JobState::Queued | JobState::InProgress => "pending",
            JobState::Completed(Conclusion::Success) => "success",
            JobState::Completed(Conclusion::Failure | Conclusion::TimedOut) => "failure",
            JobState::Completed(Conclusion::Cancelled | Conclusion::Skipped) => "error",
        }
    }
}

/// One step, for a report's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepLine {
    /// Its name.
    pub name: String,
    /// What became of it (`passed`, `failed (exit 2)`, `running`, ...).
    pub outcome: String,
    /// How long it took, once it ended.
    pub duration: Option<Duration>,
}

impl StepLine {
    /// A step line.
    pub fn new(
        name: impl Into<String>,
        outcome: impl Into<String>,
        duration: Option<Duration>,
    ) -> StepLine {
        StepLine {
            name: name.into(),
            outcome: outcome.into(),
            duration,
        }
    }
}

/// What a [`StatusReporter`] tells the forge about one job.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobReport {
    /// The repository.
    pub repo: Repo,
    /// The commit the job runs on.
    pub commit: String,
    /// The job's name as the forge shows it (`build (linux)`); the commit
    /// status context is `solstice/NAME`.
    pub name: String,
    /// Stable id of this job attempt chain on Solstice's side
    /// (`RUN/JOB`): the same id is the same check run.
    pub external_id: String,
    /// Where it is.
    pub state: JobState,
    /// The job's page.
    pub details_url: Option<String>,
    /// One line (cut to the forge's limit by the reporter).
    pub description: String,
    /// Its steps so far.
    pub steps: Vec<StepLine>,
    /// The end of the failing step's log (plain text), or the workflow's
    /// diagnostic when it could not be read.
    pub log_tail: Option<String>,
    /// When it started running.
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub completed_at: Option<SystemTime>,
}

impl fmt::Debug for JobReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobReport")
            .field("repo", &self.repo.full_name)
            .field("commit", &self.commit)
            .field("name", &self.name)
            .field("external_id", &self.external_id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl JobReport {
    /// A report with no details yet.
    pub fn new(
        repo: Repo,
        commit: impl Into<String>,
        name: impl Into<String>,
        external_id: impl Into<String>,
        state: JobState,
    ) -> JobReport {
        JobReport {
            repo,
            commit: commit.into(),
            name: name.into(),
            external_id: external_id.into(),
            state,
            details_url: None,
            description: String::new(),
            steps: Vec::new(),
            log_tail: None,
            started_at: None,
            completed_at: None,
        }
    }

    /// Sets the job page.
    pub fn with_details_url(mut self, url: impl Into<String>) -> JobReport {
        self.details_url = Some(url.into());
        self
    }

    /// Sets the one-line description.
    pub fn with_description(mut self, description: impl Into<String>) -> JobReport {
        self.description = description.into();
        self
    }

    /// Sets the steps.
    pub fn with_steps(mut self, steps: Vec<StepLine>) -> JobReport {
        self.steps = steps;
        self
    }

    /// Sets the log tail.
    pub fn with_log_tail(mut self, tail: impl Into<String>) -> JobReport {
        self.log_tail = Some(tail.into());
        self
    }

    /// Sets the start and end times.
    pub fn with_times(
        mut self,
        started: Option<SystemTime>,
        completed: Option<SystemTime>,
    ) -> JobReport {
        self.started_at = started;
        self.completed_at = completed;
        self
    }
}

/// Tells a forge how jobs are doing.
///
/// Contract (checked by `solstice_forge::testing::reporter`):
/// - Idempotent: the same report twice leaves the forge as once; a later
///   state of the same `external_id` updates what the first created (one
///   check run per job attempt chain, one commit status per context).
/// - Retried inside: 5xx, connection errors and rate limits are retried
///   with backoff (honouring `Retry-After` and `x-ratelimit-reset`);
///   other 4xx are not, and come back as [`ForgeError::Status`].
/// - Reports for one `external_id` are applied in the order they are
///   made; callers may report different jobs concurrently.
/// - Text from jobs is cut to the forge's limits on character
///   boundaries; control characters never reach the forge.
#[async_trait]
pub trait StatusReporter: Send + Sync + fmt::Debug {
    /// Reports one job's state.
    async fn report(&self, report: &JobReport) -> Result<(), ForgeError>;
}

/// GitHub's limit on a check run's `output.summary` and `output.text`.
pub const CHECK_TEXT_CHARS: usize = 65_535;
/// GitHub's limit on a commit status description (Forgejo takes the same).
pub const STATUS_DESCRIPTION_CHARS: usize = 140;

/// The step list as a Markdown table (for a check run's summary).
pub(crate) fn steps_markdown(report: &JobReport) -> String {
    let mut out = String::new();
    out.push_str(&escape_markdown(&report.description));
    if report.steps.is_empty() {
        return out;
    }
    out.push_str("\n\n| step | outcome | duration |\n| --- | --- | --- |\n");
    for step in &report.steps {
        let duration = step
            .duration
            .map_or_else(String::new, |d| format!("{:.1} s", d.as_secs_f64()));
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            escape_markdown(&step.name),
            escape_markdown(&step.outcome),
            duration
        ));
    }
    out
}

/// Text from a workflow shown as literal Markdown: no links, images,
/// tables or HTML of its own.
fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in crate::text::printable(text).chars() {
        match c {
            '\n' | '\t' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '<' | '>' | '|' | '!' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The log tail as a fenced code block of at most `max` characters, its
/// fence longer than any run of backticks inside (so the log cannot end
/// the block and inject Markdown), keeping the end of the log.
pub(crate) fn log_block(tail: &str, max: usize) -> String {
    let tail = crate::text::printable(tail);
    let mut longest = 0;
    let mut run = 0;
    for c in tail.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat((longest + 1).max(3));
    let overhead = 2 * fence.chars().count() + 2;
    let body = crate::text::tail_chars(&tail, max.saturating_sub(overhead));
    format!("{fence}\n{body}\n{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_block_fits_and_cannot_be_escaped() {
        let log = format!("{}```\n[x](http://evil)\nend é", "a".repeat(100_000));
        let block = log_block(&log, CHECK_TEXT_CHARS);
        assert_eq!(block.chars().count(), CHECK_TEXT_CHARS);
        assert!(block.starts_with("````\n"));
        assert!(block.ends_with("end é\n````"));
    }

    #[test]
    fn step_names_are_literal_markdown() {
        let report = JobReport::new(Repo::new("o/r"), "c", "j", "1/j", JobState::InProgress)
            .with_description("1 step")
            .with_steps(vec![StepLine::new(
                "a|b [x](y)",
                "passed",
                Some(Duration::from_millis(1500)),
            )]);
        let md = steps_markdown(&report);
        assert!(
            md.contains("| a\\|b \\[x\\]\\(y\\) | passed | 1.5 s |"),
            "{md}"
        );
    }

    #[test]
    fn commit_states() {
        assert_eq!(JobState::Queued.commit_status(), "pending");
        assert_eq!(
            JobState::Completed(Conclusion::TimedOut).commit_status(),
            "failure"
        );
        assert_eq!(
            JobState::Completed(Conclusion::Cancelled).commit_status(),
            "error"
        );
    }
}
