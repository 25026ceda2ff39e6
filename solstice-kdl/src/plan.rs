//! The execution plan of a workflow: matrix jobs expanded, `needs` resolved
//! to expanded ids, and a topological order.

use serde::{Deserialize, Serialize};

use crate::dag;
use crate::matrix::{self, Combination};
use crate::model::{Job, Workflow};
use crate::schema::MAX_MATRIX_COMBINATIONS;

/// Why a workflow (built by hand or deserialised, not parsed) cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

/// One concrete job of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedJob {
    /// Expanded id: `build`, or `test (rust=stable, os=illumos)`.
    pub id: String,
    /// The id written in the file.
    pub base_id: String,
    /// This expansion's matrix values (empty for a job without matrix).
    pub matrix: Combination,
    /// The job with `${{ matrix.* }}` replaced, `matrix` cleared and `needs`
    /// holding expanded ids.
    pub job: Job,
}

/// All concrete jobs, in file order, and an execution order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        let index: std::collections::HashMap<&str, usize> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.as_str(), i))
            .collect();
        let mut stage_of = vec![0usize; self.jobs.len()];
        let mut stages: Vec<Vec<&PlannedJob>> = Vec::new();
        for &i in &self.order {
            let s = self.jobs[i]
                .job
                .needs
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .map(|d| stage_of[d] + 1)
                .max()
                .unwrap_or(0);
            stage_of[i] = s;
            if stages.len() <= s {
                stages.resize_with(s + 1, Vec::new);
            }
            stages[s].push(&self.jobs[i]);
        }
        stages
    }

    /// The job with this expanded id.
    pub fn job(&self, id: &str) -> Option<&PlannedJob> {
        self.jobs.iter().find(|j| j.id == id)
    }
}

impl Workflow {
    /// Expands matrices, resolves `needs` and orders the jobs.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        let mut jobs: Vec<PlannedJob> = Vec::new();
        let mut expansions: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for job in &self.jobs {
            let combos = match &job.matrix {
                Some(m) => {
                    let product = m
                        .axes
                        .iter()
                        .try_fold(1usize, |acc, a| acc.checked_mul(a.values.len()));
                    if product.is_none_or(|n| n > MAX_MATRIX_COMBINATIONS) {
                        return Err(PlanError::MatrixTooLarge(job.id.clone()));
                    }
                    matrix::combinations(m)
                }
                None => vec![Vec::new()],
            };
            let mut ids = Vec::new();
            for combo in combos {
                let id = matrix::expanded_id(&job.id, &combo);
                ids.push(id.clone());
                jobs.push(PlannedJob {
                    id,
                    base_id: job.id.clone(),
                    job: interpolate_job(job, &combo),
                    matrix: combo,
                });
            }
            expansions.entry(job.id.clone()).or_default().extend(ids);
        }
        for pj in &mut jobs {
            let mut needs = Vec::new();
            for target in &pj.job.needs {
                let Some(ids) = expansions.get(target) else {
                    return Err(PlanError::UnknownNeeds {
                        job: pj.base_id.clone(),
                        target: target.clone(),
                    });
                };
                needs.extend(ids.iter().cloned());
            }
            pj.job.needs = needs;
        }
        let index: std::collections::HashMap<&str, usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.as_str(), i))
            .collect();
        let deps: Vec<Vec<usize>> = jobs
            .iter()
            .map(|j| {
                j.job
                    .needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect()
            })
            .collect();
        let order = dag::topo_order(&deps).ok_or(PlanError::Cycle)?;
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
