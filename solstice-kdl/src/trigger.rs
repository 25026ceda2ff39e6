//! Trigger matching: does this event start this workflow?

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::model::{RefFilter, Triggers, Workflow};

/// A pushed git reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GitRef {
    /// `refs/heads/NAME`
    Branch(String),
    /// `refs/tags/NAME`
    Tag(String),
}

impl GitRef {
    /// Parses `refs/heads/x` or `refs/tags/x`; anything else is `None`.
    pub fn parse(full: &str) -> Option<GitRef> {
        if let Some(b) = full.strip_prefix("refs/heads/") {
            Some(GitRef::Branch(b.to_string()))
        } else {
            full.strip_prefix("refs/tags/")
                .map(|t| GitRef::Tag(t.to_string()))
        }
    }
}

/// An event that may start a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A push of a branch or tag. `changed_paths` is `None` when the forge
    /// did not say (path filters then pass: better an extra run than a missed one).
    Push {
        /// What was pushed.
        git_ref: GitRef,
        /// Paths changed by the push, when known.
        changed_paths: Option<Vec<String>>,
    },
    /// A pull request opened or updated against `base_branch`.
    PullRequest {
        /// The branch the pull request wants to merge into.
        base_branch: String,
        /// Paths changed by the pull request, when known.
        changed_paths: Option<Vec<String>>,
    },
    /// Started by hand.
    Manual,
    /// A cron schedule fired; `cron` is its expression as written.
    Schedule {
        /// The expression that fired.
        cron: String,
    },
}

/// Compiles a workflow glob: `*` stays inside one path segment, `**` crosses
/// segments, `{a,b}` gives alternatives.
pub(crate) fn compile_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

fn matchers(patterns: &[String]) -> Vec<GlobMatcher> {
    patterns
        .iter()
        .filter_map(|p| compile_glob(p).ok())
        .map(|g| g.compile_matcher())
        .collect()
}

fn any_match(patterns: &[String], value: &str) -> bool {
    matchers(patterns).iter().any(|m| m.is_match(value))
}

fn paths_pass(filter: &RefFilter, changed: Option<&[String]>) -> bool {
    let Some(changed) = changed else { return true };
    if filter.paths.is_empty() && filter.paths_ignore.is_empty() {
        return true;
    }
    let ignore = matchers(&filter.paths_ignore);
    let wanted = matchers(&filter.paths);
    changed
        .iter()
        .filter(|p| !ignore.iter().any(|m| m.is_match(p.as_str())))
        .any(|p| wanted.is_empty() || wanted.iter().any(|m| m.is_match(p.as_str())))
}

impl Triggers {
    /// Does `event` satisfy these triggers?
    pub fn matches(&self, event: &Event) -> bool {
        match event {
            Event::Push {
                git_ref,
                changed_paths,
            } => {
                let Some(f) = &self.push else { return false };
                let ref_ok = match git_ref {
                    GitRef::Branch(b) => {
                        if f.branches.is_empty() {
                            f.tags.is_empty()
                        } else {
                            any_match(&f.branches, b)
                        }
                    }
                    GitRef::Tag(t) => {
                        if f.tags.is_empty() {
                            f.branches.is_empty()
                        } else {
                            any_match(&f.tags, t)
                        }
                    }
                };
                ref_ok && paths_pass(f, changed_paths.as_deref())
            }
            Event::PullRequest {
                base_branch,
                changed_paths,
            } => {
                let Some(f) = &self.pull_request else {
                    return false;
                };
                (f.branches.is_empty() || any_match(&f.branches, base_branch))
                    && paths_pass(f, changed_paths.as_deref())
            }
            Event::Manual => self.manual,
            Event::Schedule { cron } => self.cron.iter().any(|c| c.trim() == cron.trim()),
        }
    }
}

impl Workflow {
    /// Does `event` start this workflow? Without an `on` block the defaults
    /// apply: every push, every pull request and manual runs.
    pub fn is_triggered_by(&self, event: &Event) -> bool {
        match &self.on {
            Some(t) => t.matches(event),
            None => Triggers::default_when_absent().matches(event),
        }
    }
}
