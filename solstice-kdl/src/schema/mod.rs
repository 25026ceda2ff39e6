//! From a parsed `KdlDocument` to a typed [`Workflow`], collecting every
//! problem on the way instead of stopping at the first.

//!
//! - `mod.rs`: the document, the workflow, jobs and steps, the run's size
//!   and the `needs` graph;
//! - `matrix.rs`, `triggers.rs`, `env.rs`: those blocks' rules;
//! - `readers.rs`: the generic readers every rule uses (properties,
//!   children, typed values, durations, paths) and the help texts.

mod env;
mod matrix;
mod readers;
mod recipe;
mod triggers;

use std::collections::HashMap;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::diagnostic::{Code, Problem};
use crate::model::{Job, Step, Workflow};
use env::env_entries;
pub(crate) use readers::suggest;
use readers::{MAX_LISTED, list, name_span};
pub(crate) use recipe::recipe;

/// Most combinations one job's matrix may expand to.
pub const MAX_MATRIX_COMBINATIONS: usize = 256;
/// Most extra attempts `retry` may ask for.
pub const MAX_RETRY: u32 = 10;

/// Converts a document; returns the workflow only when there were no problems.
/// Problems past [`crate::MAX_PROBLEMS`] are counted in `omitted`, not kept.
pub(crate) fn workflow(
    doc: &KdlDocument,
    problems: &mut Vec<Problem>,
    omitted: &mut usize,
) -> Option<Workflow> {
    checked(problems, omitted, |cx| cx.root(doc))
}

/// Runs one document's rules; their result only when there were no problems.
fn checked<T>(
    problems: &mut Vec<Problem>,
    omitted: &mut usize,
    rules: impl FnOnce(&mut Cx) -> Option<T>,
) -> Option<T> {
    let mut cx = Cx {
        problems: Vec::new(),
        omitted: 0,
    };
    let result = rules(&mut cx);
    let ok = cx.problems.is_empty();
    problems.append(&mut cx.problems);
    *omitted += cx.omitted;
    if ok { result } else { None }
}

struct Cx {
    problems: Vec<Problem>,
    omitted: usize,
}

/// The `needs` entries of one job with their spans, kept beside the model
/// so that graph errors can point at the right place.
struct JobSpans {
    id: Option<SourceSpan>,
    node: SourceSpan,
    needs: Vec<(String, SourceSpan)>,
}

impl Cx {
    fn push(&mut self, p: Problem) {
        if self.full() {
            self.omitted += 1;
        } else {
            self.problems.push(p);
        }
    }

    /// No further problem will be kept: callers skip costly help texts.
    fn full(&self) -> bool {
        self.problems.len() >= crate::MAX_PROBLEMS
    }

    fn root(&mut self, doc: &KdlDocument) -> Option<Workflow> {
        let mut result = None;
        let mut first_root: Option<SourceSpan> = None;
        for node in doc.nodes() {
            let name = node.name().value();
            if let Some(first) = first_root {
                self.push(
                    Problem::new(
                        Code::Root,
                        name_span(node),
                        "a workflow file has exactly one root node",
                        "second root node",
                    )
                    .also(first, "the root node")
                    .help("put every job inside the one `workflow { ... }` block"),
                );
                continue;
            }
            first_root = Some(name_span(node));
            if name == "workflow" {
                result = Some(self.workflow(node));
            } else {
                let mut p = Problem::new(
                    Code::Root,
                    name_span(node),
                    format!("the root node must be `workflow`, not `{name}`"),
                    "expected `workflow`",
                );
                p = match suggest(name, &["workflow"]) {
                    Some(_) => p.help("did you mean `workflow`?"),
                    None => p.help("wrap the file in `workflow { ... }`"),
                };
                self.push(p);
            }
        }
        if first_root.is_none() {
            self.push(
                Problem::new(
                    Code::Root,
                    SourceSpan::from(0..0),
                    "the file has no `workflow` node",
                    "empty document",
                )
                .help("start with `workflow { job id=\"build\" { step run=\"make\" } }`"),
            );
        }
        result
    }

    fn workflow(&mut self, node: &KdlNode) -> Workflow {
        let props = self.props(node, &["name"]);
        self.no_args(node);
        let mut wf = Workflow {
            name: self.opt_string(&props, "name"),
            ..Workflow::default()
        };
        let mut spans: Vec<JobSpans> = Vec::new();
        let mut on_seen: Option<SourceSpan> = None;
        for child in self.children(node, &["on", "env", "secret", "job"]) {
            match child.name().value() {
                "on" if self.once(child, &mut on_seen, "the workflow") => {
                    wf.on = Some(self.triggers(child));
                }
                "env" => self.env(child, &mut wf.env),
                "secret" => self.secrets(child, &mut wf.secrets),
                "job" => {
                    let (job, js) = self.job(child);
                    wf.jobs.push(job);
                    spans.push(js);
                }
                _ => {}
            }
        }
        if wf.jobs.is_empty() {
            self.push(
                Problem::new(
                    Code::NoJobs,
                    name_span(node),
                    "the workflow has no jobs",
                    "no `job` inside",
                )
                .help("add `job id=\"build\" { step run=\"make\" }`"),
            );
        }
        self.graph(&wf, &spans);
        self.run_size(&wf, &spans);
        wf
    }

    /// The run's size after matrix expansion, as `Workflow::plan` checks it
    /// (counted before `exclude`): reported at the job that passes a limit.
    fn run_size(&mut self, wf: &Workflow, spans: &[JobSpans]) {
        use crate::plan::{MAX_RUN_JOBS, MAX_RUN_NEEDS};
        let (mut jobs, mut needs) = (0usize, 0usize);
        for (job, js) in wf.jobs.iter().zip(spans) {
            let n = job.matrix.as_ref().map_or(1, |m| {
                m.axes
                    .iter()
                    .fold(1usize, |acc, a| acc.saturating_mul(a.values.len()))
            });
            let before = (jobs, needs);
            jobs = jobs.saturating_add(n);
            needs = needs.saturating_add(n.saturating_mul(job.needs.len()));
            let at = js.id.unwrap_or(js.node);
            if jobs > MAX_RUN_JOBS && before.0 <= MAX_RUN_JOBS {
                self.push(
                    Problem::new(
                        Code::RunTooLarge,
                        at,
                        format!(
                            "with this job the run has {jobs} jobs after matrix expansion, more than {MAX_RUN_JOBS}"
                        ),
                        "the run passes its job limit here",
                    )
                    .help("split the workflow, or make the matrices smaller (counted before `exclude`)"),
                );
            }
            if needs > MAX_RUN_NEEDS && before.1 <= MAX_RUN_NEEDS {
                let at = js.needs.first().map_or(at, |(_, span)| *span);
                self.push(
                    Problem::new(
                        Code::RunTooLarge,
                        at,
                        format!(
                            "with this job the run has {needs} `needs` entries after matrix expansion, more than {MAX_RUN_NEEDS}"
                        ),
                        "the run passes its `needs` limit here",
                    )
                    .help("each expansion of a matrix job counts one entry per job it needs: need fewer jobs, or make the matrix smaller"),
                );
            }
        }
    }

    /// Reports the second and later occurrence of a node that may appear once.
    fn once(&mut self, node: &KdlNode, seen: &mut Option<SourceSpan>, owner: &str) -> bool {
        let name = node.name().value();
        if let Some(first) = *seen {
            self.push(
                Problem::new(
                    Code::DuplicateNode,
                    name_span(node),
                    format!("`{name}` may appear only once in {owner}"),
                    "repeated here",
                )
                .also(first, "first here")
                .help(format!("merge the two `{name}` blocks")),
            );
            false
        } else {
            *seen = Some(name_span(node));
            true
        }
    }

    fn job(&mut self, node: &KdlNode) -> (Job, JobSpans) {
        let props = self.props(node, &["id", "runs_on", "timeout", "retry", "workdir"]);
        self.no_args(node);
        let id_entry = props.get("id").copied();
        let mut job = Job {
            id: self.opt_string(&props, "id").unwrap_or_default(),
            runs_on: self.opt_string(&props, "runs_on"),
            timeout: self.opt_duration(&props, "timeout"),
            retry: self.opt_retry(&props),
            workdir: self.opt_workdir(&props, "workdir"),
            ..Job::default()
        };
        match id_entry {
            None => self.push(
                Problem::new(
                    Code::MissingProperty,
                    name_span(node),
                    "a job needs an `id`",
                    "this job has no id",
                )
                .help("add `id=\"build\"` (ids are unique in the workflow)"),
            ),
            Some(entry) if !job.id.is_empty() && !valid_id(&job.id) => {
                self.push(
                    Problem::new(
                        Code::InvalidValue,
                        entry.span(),
                        format!("`{}` is not a valid job id", job.id),
                        "invalid id",
                    )
                    .help("use 1 to 64 letters, digits, `_`, `-` or `.`, starting with a letter or digit"),
                );
            }
            Some(entry) if job.id.is_empty() => self.push(Problem::new(
                Code::InvalidValue,
                entry.span(),
                "a job id may not be empty",
                "empty id",
            )),
            Some(_) => {}
        }
        if let Some(runs_on) = props.get("runs_on")
            && job.runs_on.as_deref() == Some("")
        {
            self.push(Problem::new(
                Code::InvalidValue,
                runs_on.span(),
                "`runs_on` may not be empty",
                "empty label",
            ));
        }
        let mut spans = JobSpans {
            id: id_entry.map(KdlEntry::span),
            node: name_span(node),
            needs: Vec::new(),
        };
        let mut matrix_seen = None;
        let mut interpolated: Vec<(&KdlEntry, String)> = Vec::new();
        for (key, entry) in &props {
            if matches!(*key, "runs_on" | "workdir")
                && let KdlValue::String(s) = entry.value()
            {
                interpolated.push((entry, s.clone()));
            }
        }
        let children = self.children(
            node,
            &["needs", "env", "secret", "matrix", "step", "artifact"],
        );
        // A misspelt `step` is already reported; "no steps" would be noise.
        let had_unknown_children = node.children().map_or(0, |d| d.nodes().len()) > children.len();
        for child in children {
            match child.name().value() {
                "needs" => {
                    for (value, span) in self.string_args(child, 1) {
                        job.needs.push(value.clone());
                        spans.needs.push((value, span));
                    }
                }
                "env" => {
                    self.env(child, &mut job.env);
                    interpolated.extend(env_entries(child));
                }
                "secret" => self.secrets(child, &mut job.secrets),
                "matrix" if self.once(child, &mut matrix_seen, "a job") => {
                    job.matrix = self.matrix(child);
                }
                "step" => {
                    let step = self.step(child, &mut interpolated);
                    job.steps.push(step);
                }
                "artifact" => {
                    for (value, span) in self.string_args(child, 1) {
                        if self.relative_path(&value, span, "an artifact path") {
                            self.glob(&value, span);
                        }
                        job.artifacts.push(value);
                    }
                }
                _ => {}
            }
        }
        if job.steps.is_empty() && !had_unknown_children {
            self.push(
                Problem::new(
                    Code::NoSteps,
                    name_span(node),
                    match job.id.as_str() {
                        "" => "this job has no steps".to_string(),
                        id => format!("job `{id}` has no steps"),
                    },
                    "no `step` inside",
                )
                .help("add at least one `step run=\"...\"`"),
            );
        }
        self.matrix_references(job.matrix.as_ref(), &interpolated);
        (job, spans)
    }

    fn step<'a>(
        &mut self,
        node: &'a KdlNode,
        interpolated: &mut Vec<(&'a KdlEntry, String)>,
    ) -> Step {
        let props = self.props(
            node,
            &["name", "run", "timeout", "workdir", "continue_on_error"],
        );
        self.no_args(node);
        let mut step = Step {
            name: self.opt_string(&props, "name"),
            run: self.opt_string(&props, "run").unwrap_or_default(),
            timeout: self.opt_duration(&props, "timeout"),
            workdir: self.opt_workdir(&props, "workdir"),
            continue_on_error: self.opt_bool(&props, "continue_on_error"),
            ..Step::default()
        };
        for key in ["name", "run", "workdir"] {
            if let Some(entry) = props.get(key)
                && let KdlValue::String(s) = entry.value()
            {
                interpolated.push((entry, s.clone()));
            }
        }
        match props.get("run") {
            None => self.push(
                Problem::new(
                    Code::MissingProperty,
                    name_span(node),
                    "a step needs a `run` script",
                    "this step has no `run`",
                )
                .help("add `run=\"make test\"`, or a multi-line `run=\"\"\"...\"\"\"`"),
            ),
            Some(entry)
                if step.run.trim().is_empty() && matches!(entry.value(), KdlValue::String(_)) =>
            {
                self.push(Problem::new(
                    Code::InvalidValue,
                    entry.span(),
                    "the `run` script is empty",
                    "empty script",
                ));
            }
            Some(_) => {}
        }
        for child in self.children(node, &["env"]) {
            self.env(child, &mut step.env);
            interpolated.extend(env_entries(child));
        }
        step
    }

    /// Checks `needs`: unknown targets and cycles.
    fn graph(&mut self, wf: &Workflow, spans: &[JobSpans]) {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, job) in wf.jobs.iter().enumerate() {
            if job.id.is_empty() {
                continue;
            }
            if let Some(&first) = index.get(job.id.as_str()) {
                let here = spans[i].id.unwrap_or(spans[i].node);
                let there = spans[first].id.unwrap_or(spans[first].node);
                self.push(
                    Problem::new(
                        Code::DuplicateJobId,
                        here,
                        format!("job id `{}` is used twice", job.id),
                        "used again here",
                    )
                    .also(there, "first used here")
                    .help("job ids must be unique in a workflow; rename one of them"),
                );
            } else {
                index.insert(&job.id, i);
            }
        }
        let ids: Vec<&str> = index.keys().copied().collect();
        let mut sorted_ids = ids.clone();
        sorted_ids.sort_unstable();
        let mut edges: Vec<Vec<(usize, SourceSpan)>> = vec![Vec::new(); wf.jobs.len()];
        for (i, js) in spans.iter().enumerate() {
            for (target, span) in &js.needs {
                match index.get(target.as_str()) {
                    Some(&j) => edges[i].push((j, *span)),
                    None if self.full() => self.omitted += 1,
                    None => {
                        let mut p = Problem::new(
                            Code::UnknownNeeds,
                            *span,
                            format!("`needs` names `{target}`, which is not a job"),
                            "no such job",
                        );
                        let sorted = &sorted_ids;
                        p = match suggest(target, sorted) {
                            Some(s) => p.help(format!("did you mean `{s}`?")),
                            None => p.help(format!("the jobs are {}", list(sorted))),
                        };
                        self.push(p);
                    }
                }
            }
        }
        for cycle in crate::dag::cycles(&edges) {
            let names: Vec<&str> = cycle.iter().map(|(j, _)| wf.jobs[*j].id.as_str()).collect();
            // A long cycle is shown by its ends: the message stays short.
            let mut path = if names.len() > MAX_LISTED {
                format!(
                    "{} -> ... ({} more) -> {}",
                    names[..MAX_LISTED / 2].join(" -> "),
                    names.len() - MAX_LISTED,
                    names[names.len() - MAX_LISTED / 2..].join(" -> ")
                )
            } else {
                names.join(" -> ")
            };
            path.push_str(" -> ");
            path.push_str(names[0]);
            let (_, first_span) = cycle[0];
            let mut p = Problem::new(
                Code::NeedsCycle,
                first_span,
                format!("`needs` forms a cycle: {path}"),
                "this edge closes the cycle",
            )
            .help("remove one of these `needs` so the jobs can be ordered");
            for (_, span) in cycle.iter().skip(1) {
                p = p.also(*span, "part of the cycle");
            }
            self.push(p);
        }
    }

    // --- generic readers ------------------------------------------------
}

fn valid_id(id: &str) -> bool {
    id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn valid_axis(name: &str) -> bool {
    name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// POSIX-portable environment variable names.
pub(crate) fn valid_env_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
