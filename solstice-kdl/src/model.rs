//! The typed workflow model. Every type here is plain data that serialises
//! with serde, so a parsed workflow can travel as JSON inside job requests.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Environment variables: name to value, ordered by name.
pub type Env = BTreeMap<String, String>;

/// A whole workflow file: the `workflow` root node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Workflow {
    /// Display name (`workflow name="..."`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What starts the workflow (`on { ... }`); `None` means the default
    /// triggers (see [`Triggers::default_when_absent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Triggers>,
    /// Environment shared by every job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: Env,
    /// Secrets every job receives (names only; values come from a secrets backend).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The jobs, in file order.
    pub jobs: Vec<Job>,
}

impl Workflow {
    /// A workflow of these jobs; everything else empty or default.
    pub fn new(jobs: Vec<Job>) -> Workflow {
        Workflow {
            jobs,
            ..Workflow::default()
        }
    }
}

/// One `job`: a VM's worth of steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Job {
    /// Unique id inside the workflow (`id="build"`).
    pub id: String,
    /// The runner label that selects the VM image (`runs_on="ubuntu-22.04"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    /// Ids of the jobs that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Job-level environment (overrides the workflow's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: Env,
    /// Secrets this job receives in addition to the workflow's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Wall-clock limit for the whole job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Extra attempts after an infrastructure failure (boot failure, lost runner).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry: u32,
    /// Default working directory of the steps, relative to the checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Fan-out of this job over value combinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Matrix>,
    /// Paths (globs relative to the checkout) collected after the steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
}

impl Job {
    /// A job with this id and steps; everything else empty or default.
    pub fn new(id: impl Into<String>, steps: Vec<Step>) -> Job {
        Job {
            id: id.into(),
            steps,
            ..Job::default()
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One `step`: a script run by the job's shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Step {
    /// Display name; defaults to the first line of `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The script (may span several lines).
    pub run: String,
    /// Step-level environment (overrides the job's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: Env,
    /// Wall-clock limit for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Working directory, relative to the checkout (overrides the job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// When set, a failure of this step does not fail the job.
    #[serde(default, skip_serializing_if = "is_false")]
    pub continue_on_error: bool,
}

impl Step {
    /// A step running `run`; everything else default.
    pub fn new(run: impl Into<String>) -> Step {
        Step {
            run: run.into(),
            ..Step::default()
        }
    }

    /// The name to show: `name`, or the first non-empty line of `run`, cut
    /// to [`MAX_DEFAULT_NAME`] characters.
    pub fn display_name(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match &self.name {
            Some(name) => Cow::Borrowed(name),
            None => {
                let line = self
                    .run
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("");
                match line.char_indices().nth(MAX_DEFAULT_NAME) {
                    Some((cut, _)) => Cow::Owned(format!("{}…", &line[..cut])),
                    None => Cow::Borrowed(line),
                }
            }
        }
    }
}

/// Characters of a step's first line used as its name when it has none.
pub const MAX_DEFAULT_NAME: usize = 72;

/// A job's `matrix`: named axes whose cartesian product, minus exclusions,
/// gives one job per combination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Matrix {
    /// The axes, in file order.
    pub axes: Vec<Axis>,
    /// Combinations to leave out; each entry matches when all its pairs match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<BTreeMap<String, String>>,
}

impl Matrix {
    /// A matrix of these axes, excluding nothing.
    pub fn new(axes: Vec<Axis>) -> Matrix {
        Matrix {
            axes,
            exclude: Vec::new(),
        }
    }
}

/// One matrix axis: `rust "stable" "beta"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Axis {
    /// The axis name (`rust`), used in job ids and `${{ matrix.rust }}`.
    pub name: String,
    /// Its values, in file order.
    pub values: Vec<String>,
}

impl Axis {
    /// An axis `name` with these values.
    pub fn new(name: impl Into<String>, values: Vec<String>) -> Axis {
        Axis {
            name: name.into(),
            values,
        }
    }
}

/// The `on` block: which events start the workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Triggers {
    /// `push`: pushes of branches and tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<RefFilter>,
    /// `pull_request`: pull requests, filtered by their base branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<RefFilter>,
    /// `manual`: may be started by hand (`ciadm trigger`, `cidev run`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub manual: bool,
    /// `cron "..."`: schedules, five-field cron expressions in UTC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cron: Vec<String>,
}

impl Triggers {
    /// The triggers of a workflow without an `on` block: every push, every
    /// pull request, and manual runs.
    pub fn default_when_absent() -> Self {
        Triggers {
            push: Some(RefFilter::default()),
            pull_request: Some(RefFilter::default()),
            manual: true,
            cron: Vec::new(),
        }
    }
}

/// Filters of a `push` or `pull_request` trigger. Empty lists mean "any".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct RefFilter {
    /// Branch globs (for pull requests: the base branch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    /// Tag globs (push only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The event must change at least one path matching one of these globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Changed paths matching these globs do not count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths_ignore: Vec<String>,
}

/// A duration in whole seconds, written `90s`, `30m`, `1h30m`, `2h`, `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration {
    secs: u64,
}

impl Duration {
    /// The longest accepted duration: 7 days.
    pub const MAX: Duration = Duration {
        secs: 7 * 24 * 3600,
    };

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration { secs }
    }

    /// Whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.secs
    }

    /// As a standard library duration.
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secs)
    }

    /// Parses `90s`, `30m`, `1h30m`, `2h`, `1d` (units d, h, m, s, each at
    /// most once, in that order). Zero and more than [`Duration::MAX`] are refused.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(DurationError::Empty);
        }
        let units = [('d', 86_400u64), ('h', 3600), ('m', 60), ('s', 1)];
        let mut total: u64 = 0;
        let mut next_unit = 0;
        let mut digits = String::new();
        for c in t.chars() {
            if c.is_ascii_digit() {
                if digits.len() >= 9 {
                    return Err(DurationError::TooManyDigits);
                }
                digits.push(c);
                continue;
            }
            let Some(pos) = units.iter().position(|(u, _)| *u == c) else {
                return Err(DurationError::UnknownUnit(c));
            };
            if digits.is_empty() {
                return Err(DurationError::NoNumber(c));
            }
            if pos < next_unit {
                return Err(DurationError::UnitOrder);
            }
            let n: u64 = digits.parse().map_err(|_| DurationError::TooManyDigits)?;
            total = total.saturating_add(n.saturating_mul(units[pos].1));
            digits.clear();
            next_unit = pos + 1;
        }
        if !digits.is_empty() {
            return Err(DurationError::NoUnit(digits));
        }
        if total == 0 {
            return Err(DurationError::Zero);
        }
        if total > Self::MAX.secs {
            return Err(DurationError::TooLong);
        }
        Ok(Duration { secs: total })
    }
}

/// Why a duration does not parse ([`Duration::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration")]
    Empty,
    /// A number of more than 9 digits.
    #[error("a number has more than 9 digits")]
    TooManyDigits,
    /// A letter that is not d, h, m or s.
    #[error("unknown unit `{0}` (use d, h, m or s)")]
    UnknownUnit(char),
    /// A unit without a number before it.
    #[error("unit `{0}` has no number before it")]
    NoNumber(char),
    /// Units out of order or repeated.
    #[error("units must come in the order d, h, m, s, each once")]
    UnitOrder,
    /// A number without a unit after it.
    #[error("`{0}` has no unit (write `{0}s` or `{0}m`)")]
    NoUnit(String),
    /// Zero.
    #[error("a duration must be longer than zero")]
    Zero,
    /// More than [`Duration::MAX`].
    #[error("a duration may be at most 7 days (`7d`)")]
    TooLong,
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.secs;
        if rest == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [('d', 86_400u64), ('h', 3600), ('m', 60), ('s', 1)] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, secs, printed) in [
            ("90s", 90, "1m30s"),
            ("30m", 1800, "30m"),
            ("1h30m", 5400, "1h30m"),
            ("2h", 7200, "2h"),
            ("1d", 86400, "1d"),
            ("7d", 604800, "7d"),
        ] {
            let d = Duration::parse(text).expect(text);
            assert_eq!(d.as_secs(), secs);
            assert_eq!(d.to_string(), printed);
            assert_eq!(Duration::parse(printed), Ok(d));
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "1m1h",
            "1h1h",
            "0s",
            "8d",
            "99999999999h",
            "-1s",
            "1.5h",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
