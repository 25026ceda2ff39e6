//! The execution plan of a workflow: matrix jobs expanded, `needs` checked,
//! and a topological order.
//!
//! `needs` names jobs as written in the file, also for matrix jobs: `needs
//! "test"` on a job waits for every expansion of `test`. It is kept that
//! way (one entry per name, not one per pair of expansions), so a chain of
//! two 256-way matrices is 256 entries, not 65,536; see
//! [`matrix::base_of`] to map an expanded id back to its name.

use serde::{Deserialize, Serialize};

use crate::dag;
use crate::matrix::{self, Combination};
use crate::model::{Job, Workflow};
use crate::schema::MAX_MATRIX_COMBINATIONS;

/// Why a workflow (built by hand or deserialised, not parsed) cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// `needs` names a job that does not exist.
    #[error("job `{job}` needs `{target}`, which is not a job")]
    UnknownNeeds {
        /// The job with the bad `needs`.
        job: String,
        /// The missing target.
        target: String,
    },
    /// The `needs` graph has a cycle.
    #[error("`needs` has a cycle")]
    Cycle,
    /// A matrix expands to too many jobs.
    #[error("the matrix of job `{0}` expands to more than {MAX_MATRIX_COMBINATIONS} jobs")]
    MatrixTooLarge(String),
    /// The whole run is too large: more than [`MAX_RUN_JOBS`] jobs or
    /// [`MAX_RUN_NEEDS`] `needs` entries after matrix expansion.
    #[error(
        "the run has {jobs} jobs and {needs} `needs` entries after matrix expansion; the limits are {MAX_RUN_JOBS} and {MAX_RUN_NEEDS}"
    )]
    RunTooLarge {
        /// Jobs after expansion.
        jobs: usize,
        /// `needs` entries after expansion (one per expanded job and name).
        needs: usize,
    },
    /// Two jobs expand to the same id (two equal matrix values).
    #[error("two jobs have the id `{0}`")]
    DuplicateJob(String),
    /// A `runs_on` label (after matrix interpolation) is not 1 to
    /// [`MAX_LABEL_BYTES`] of `A-Z a-z 0-9 . _ -`: labels name queues on
    /// the broker and VM images on the hosts.
    #[error(
        "job `{job}` runs on {label:?}: a label is 1 to {MAX_LABEL_BYTES} letters, digits, `.`, `_` or `-`"
    )]
    BadLabel {
        /// The expanded job.
        job: String,
        /// The label as interpolated.
        label: String,
    },
}

/// Longest `runs_on` label.
pub const MAX_LABEL_BYTES: usize = 64;

/// Whether `label` may be a `runs_on` label (see [`PlanError::BadLabel`]).
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_BYTES
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Most jobs one run may have after matrix expansion.
pub const MAX_RUN_JOBS: usize = 1_000;

/// Most `needs` entries one run may have after matrix expansion: each
/// expanded job counts one per job it names.
pub const MAX_RUN_NEEDS: usize = 10_000;

/// One concrete job of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlannedJob {
    /// Expanded id: `build`, or `test (rust=stable, os=illumos)`.
    pub id: String,
    /// The id written in the file.
    pub base_id: String,
    /// This expansion's matrix values (empty for a job without matrix).
    pub matrix: Combination,
    /// The job with `${{ matrix.* }}` replaced and `matrix` cleared;
    /// `needs` names jobs as the file does (each waits for every expansion).
    pub job: Job,
}

/// All concrete jobs, in file order, and an execution order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// Concrete jobs in file order (expansions in matrix order).
    pub jobs: Vec<PlannedJob>,
    /// Indexes into `jobs` in a topological order of `needs`.
    pub order: Vec<usize>,
}

impl Plan {
    /// Jobs grouped into stages: a job's stage is one more than the
    /// latest stage of what it needs, so each stage can run in parallel.
    pub fn stages(&self) -> Vec<Vec<&PlannedJob>> {
        // A name's stage is the stage of its expansions (all the same).
        let mut stage_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut stages: Vec<Vec<&PlannedJob>> = Vec::new();
        for &i in &self.order {
            let job = &self.jobs[i];
            let s = match stage_of.get(job.base_id.as_str()) {
                Some(s) => *s,
                None => {
                    let s = job
                        .job
                        .needs
                        .iter()
                        .filter_map(|n| stage_of.get(n.as_str()))
                        .map(|d| d + 1)
                        .max()
                        .unwrap_or(0);
                    stage_of.insert(&job.base_id, s);
                    s
                }
            };
            if stages.len() <= s {
                stages.resize_with(s + 1, Vec::new);
            }
            stages[s].push(job);
        }
        stages
    }

    /// The job with this expanded id.
    pub fn job(&self, id: &str) -> Option<&PlannedJob> {
        self.jobs.iter().find(|j| j.id == id)
    }
}

/// [`Workflow::only`] was asked for a job the workflow does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no job `{id}` (the jobs are {})", known.join(", "))]
#[non_exhaustive]
pub struct UnknownJob {
    /// The id asked for.
    pub id: String,
    /// The workflow's job ids.
    pub known: Vec<String>,
}

impl Workflow {
    /// The workflow with only the jobs `ids` and every job they need,
    /// directly or not (`cidev run --job`, a rerun of one job). Linear in
    /// the jobs and their `needs`.
    pub fn only(&self, ids: &[String]) -> Result<Workflow, UnknownJob> {
        let by_id: std::collections::HashMap<&str, &Job> =
            self.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
        let mut keep: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut todo: Vec<&str> = Vec::new();
        for id in ids {
            if !by_id.contains_key(id.as_str()) {
                return Err(UnknownJob {
                    id: id.clone(),
                    known: self.jobs.iter().map(|j| j.id.clone()).collect(),
                });
            }
            todo.push(id.as_str());
        }
        while let Some(id) = todo.pop() {
            if !keep.insert(id) {
                continue;
            }
            if let Some(job) = by_id.get(id) {
                todo.extend(job.needs.iter().map(String::as_str));
            }
        }
        let mut out = self.clone();
        out.jobs.retain(|j| keep.contains(j.id.as_str()));
        Ok(out)
    }

    /// Expands matrices, checks `needs` and the run's size, and orders the
    /// jobs.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        // Sizes first, from counts alone: nothing big is built for a run
        // that is refused.
        let mut total_jobs = 0usize;
        let mut total_needs = 0usize;
        for job in &self.jobs {
            let n = match &job.matrix {
                Some(m) => {
                    let product = matrix::combination_count(m);
                    if product.is_none_or(|n| n > MAX_MATRIX_COMBINATIONS) {
                        return Err(PlanError::MatrixTooLarge(job.id.clone()));
                    }
                    product.unwrap_or(0)
                }
                None => 1,
            };
            total_jobs = total_jobs.saturating_add(n);
            total_needs = total_needs.saturating_add(n.saturating_mul(job.needs.len()));
        }
        if total_jobs > MAX_RUN_JOBS || total_needs > MAX_RUN_NEEDS {
            return Err(PlanError::RunTooLarge {
                jobs: total_jobs,
                needs: total_needs,
            });
        }
        let position: std::collections::HashMap<&str, usize> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.as_str(), i))
            .collect();
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            let mut d = Vec::with_capacity(job.needs.len());
            for target in &job.needs {
                let Some(&i) = position.get(target.as_str()) else {
                    return Err(PlanError::UnknownNeeds {
                        job: job.id.clone(),
                        target: target.clone(),
                    });
                };
                d.push(i);
            }
            deps.push(d);
        }
        // Ordered by name: every expansion of a job after every expansion
        // of what it needs.
        let by_name = dag::topo_order(&deps).ok_or(PlanError::Cycle)?;
        let mut jobs: Vec<PlannedJob> = Vec::with_capacity(total_jobs);
        let mut first_of: Vec<usize> = Vec::with_capacity(self.jobs.len());
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        for job in &self.jobs {
            first_of.push(jobs.len());
            let combos = match &job.matrix {
                Some(m) => matrix::combinations(m),
                None => vec![Vec::new()],
            };
            for combo in combos {
                let id = matrix::expanded_id(&job.id, &combo);
                if !seen.insert(id.clone()) {
                    return Err(PlanError::DuplicateJob(id));
                }
                let expanded = interpolate_job(job, &combo);
                if let Some(label) = &expanded.runs_on
                    && !valid_label(label)
                {
                    return Err(PlanError::BadLabel {
                        job: id,
                        label: label.chars().take(MAX_LABEL_BYTES + 1).collect(),
                    });
                }
                jobs.push(PlannedJob {
                    id,
                    base_id: job.id.clone(),
                    job: expanded,
                    matrix: combo,
                });
            }
        }
        first_of.push(jobs.len());
        let order = by_name
            .into_iter()
            .flat_map(|i| first_of[i]..first_of[i + 1])
            .collect();
        Ok(Plan { jobs, order })
    }
}

fn interpolate_job(job: &Job, combo: &[(String, String)]) -> Job {
    let i = |s: &String| matrix::interpolate(s, combo);
    let mut out = job.clone();
    out.matrix = None;
    out.runs_on = job.runs_on.as_ref().map(i);
    out.workdir = job.workdir.as_ref().map(i);
    out.env = job.env.iter().map(|(k, v)| (k.clone(), i(v))).collect();
    for step in &mut out.steps {
        step.name = step.name.as_ref().map(i);
        step.run = i(&step.run);
        step.workdir = step.workdir.as_ref().map(i);
        step.env = step.env.iter().map(|(k, v)| (k.clone(), i(v))).collect();
    }
    out
}

#[cfg(test)]
mod only_tests {
    #[test]
    fn only_keeps_the_jobs_and_what_they_need() {
        let w = crate::parse(
            r#"workflow {
                job id="a" { step run="x"; }
                job id="b" { needs "a"; step run="x"; }
                job id="c" { needs "b"; step run="x"; }
                job id="d" { step run="x"; }
            }"#,
        )
        .expect("valid");
        let ids = |w: &crate::Workflow| w.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&w.only(&["c".into()]).expect("known")), ["a", "b", "c"]);
        assert_eq!(
            ids(&w.only(&["d".into(), "a".into()]).expect("known")),
            ["a", "d"]
        );
        let err = w.only(&["zz".into()]).expect_err("unknown");
        assert_eq!(err.to_string(), "no job `zz` (the jobs are a, b, c, d)");
    }
}

#[cfg(test)]
mod label_tests {
    use super::{MAX_LABEL_BYTES, PlanError};

    fn plan(label: &str) -> Result<super::Plan, PlanError> {
        let text = format!(
            "workflow {{\n job id=\"a\" runs_on=\"${{{{ matrix.l }}}}\" {{\n  matrix {{ l \"{label}\"; }}\n  step run=\"x\"\n }}\n}}"
        );
        crate::parse(&text).expect("valid").plan()
    }

    #[test]
    fn labels_are_checked_after_matrix_interpolation() {
        assert!(plan("ubuntu-22.04_x").is_ok());
        assert!(plan(&"a".repeat(MAX_LABEL_BYTES)).is_ok());
        for bad in ["a b", "a/b", "é", "a*", &"a".repeat(MAX_LABEL_BYTES + 1)] {
            match plan(bad) {
                Err(PlanError::BadLabel { job, label }) => {
                    assert!(job.starts_with("a"), "{job}");
                    assert!(label.len() <= MAX_LABEL_BYTES + 2, "{label}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
