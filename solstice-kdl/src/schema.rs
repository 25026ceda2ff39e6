//! From a parsed `KdlDocument` to a typed [`Workflow`], collecting every
//! problem on the way instead of stopping at the first.

use std::collections::{BTreeMap, HashMap};

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::cron;
use crate::diagnostic::{Code, Problem};
use crate::model::{Axis, Duration, Env, Job, Matrix, RefFilter, Step, Triggers, Workflow};

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
    let mut cx = Cx {
        problems: Vec::new(),
        omitted: 0,
    };
    let wf = cx.root(doc);
    let ok = cx.problems.is_empty();
    problems.append(&mut cx.problems);
    *omitted += cx.omitted;
    if ok { wf } else { None }
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

/// A property's expected type, for messages.
#[derive(Clone, Copy)]
enum Ty {
    String,
    Bool,
    Integer,
}

impl Ty {
    fn describe(self) -> &'static str {
        match self {
            Ty::String => "a string",
            Ty::Bool => "a boolean (#true or #false)",
            Ty::Integer => "an integer",
        }
    }
}

fn describe_value(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

fn name_span(node: &KdlNode) -> SourceSpan {
    node.name().span()
}

/// Closest candidate by edit distance, also matching `-` for `_`.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if word.len() > 64 {
        return None;
    }
    let normalized = word.replace('-', "_").to_lowercase();
    if let Some(c) = candidates.iter().find(|c| **c == normalized) {
        return Some(c);
    }
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .filter(|c| c.len().abs_diff(normalized.len()) <= limit * 4)
        // Optimal string alignment: a swap of two neighbours is one edit,
        // so `stpe` is one edit from `step`.
        .map(|c| (strsim::osa_distance(&normalized, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Most names a help line lists.
const MAX_LISTED: usize = 8;

/// The first few candidates as "`a`, `b` and 3 more": a help line stays
/// short however many jobs a workflow has.
fn list(candidates: &[&str]) -> String {
    let mut out = candidates
        .iter()
        .take(MAX_LISTED)
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if candidates.len() > MAX_LISTED {
        out.push_str(&format!(" and {} more", candidates.len() - MAX_LISTED));
    }
    out
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

    fn matrix(&mut self, node: &KdlNode) -> Option<Matrix> {
        self.props(node, &[]);
        self.no_args(node);
        let mut matrix = Matrix::default();
        let mut axis_spans: HashMap<String, SourceSpan> = HashMap::new();
        let mut excludes: Vec<&KdlNode> = Vec::new();
        let Some(children) = node.children() else {
            self.push(
                Problem::new(
                    Code::InvalidMatrix,
                    name_span(node),
                    "a matrix needs at least one axis",
                    "empty matrix",
                )
                .help("write `matrix { rust \"stable\" \"beta\" }`"),
            );
            return None;
        };
        for child in children.nodes() {
            let name = child.name().value().to_string();
            if name == "exclude" {
                excludes.push(child);
                continue;
            }
            self.props(child, &[]);
            self.no_children(child);
            let mut values: Vec<String> = Vec::new();
            let mut seen: HashMap<String, SourceSpan> = HashMap::new();
            for entry in child.entries().iter().filter(|e| e.name().is_none()) {
                let Some(value) = self.scalar_string(entry) else {
                    continue;
                };
                // Values are text: `1` and `"1"` are one value, and two
                // jobs with the same value would be the same job.
                if let Some(first) = seen.get(&value) {
                    self.push(
                        Problem::new(
                            Code::DuplicateMatrixValue,
                            entry.span(),
                            format!("matrix axis `{name}` lists the value `{value}` twice"),
                            "again here",
                        )
                        .also(*first, "first here")
                        .help("matrix values are text: `1` and \"1\" are the same value; list each once"),
                    );
                    continue;
                }
                seen.insert(value.clone(), entry.span());
                values.push(value);
            }
            if values.is_empty() {
                self.push(
                    Problem::new(
                        Code::InvalidMatrix,
                        name_span(child),
                        format!("matrix axis `{name}` has no values"),
                        "no values",
                    )
                    .help(format!("write `{name} \"a\" \"b\"`")),
                );
            }
            if let Some(first) = axis_spans.get(&name) {
                self.push(
                    Problem::new(
                        Code::InvalidMatrix,
                        name_span(child),
                        format!("matrix axis `{name}` is defined twice"),
                        "again here",
                    )
                    .also(*first, "first here"),
                );
                continue;
            }
            if !valid_axis(&name) {
                self.push(
                    Problem::new(
                        Code::InvalidMatrix,
                        name_span(child),
                        format!("`{name}` is not a valid matrix axis name"),
                        "invalid name",
                    )
                    .help("use letters, digits and `_`, starting with a letter"),
                );
            }
            axis_spans.insert(name.clone(), name_span(child));
            matrix.axes.push(Axis { name, values });
        }
        for ex in excludes {
            self.no_args(ex);
            self.no_children(ex);
            let mut combo = BTreeMap::new();
            for entry in ex.entries() {
                let Some(key) = entry.name() else { continue };
                if !axis_spans.contains_key(key.value()) {
                    let axes: Vec<&str> = matrix.axes.iter().map(|a| a.name.as_str()).collect();
                    let mut p = Problem::new(
                        Code::InvalidMatrix,
                        key.span(),
                        format!("`exclude` names `{}`, which is not an axis", key.value()),
                        "unknown axis",
                    );
                    if let Some(s) = suggest(key.value(), &axes) {
                        p = p.help(format!("did you mean `{s}`?"));
                    }
                    self.push(p);
                }
                if let Some(v) = self.scalar_string(entry) {
                    combo.insert(key.value().to_string(), v);
                }
            }
            if combo.is_empty() {
                self.push(
                    Problem::new(
                        Code::InvalidMatrix,
                        name_span(ex),
                        "`exclude` names no combination",
                        "empty exclude",
                    )
                    .help("write `exclude rust=\"beta\" os=\"illumos\"`"),
                );
            }
            matrix.exclude.push(combo);
        }
        let combinations = crate::matrix::combination_count(&matrix);
        if combinations.is_none_or(|n| n > MAX_MATRIX_COMBINATIONS) {
            self.push(
                Problem::new(
                    Code::InvalidMatrix,
                    name_span(node),
                    format!("the matrix expands to more than {MAX_MATRIX_COMBINATIONS} jobs"),
                    "too many combinations",
                )
                .help("split the job, or use fewer axes or values"),
            );
        }
        if matrix.axes.is_empty() {
            self.push(Problem::new(
                Code::InvalidMatrix,
                name_span(node),
                "a matrix needs at least one axis",
                "no axes",
            ));
        }
        Some(matrix)
    }

    /// Checks `${{ matrix.X }}` references against the job's axes.
    fn matrix_references(&mut self, matrix: Option<&Matrix>, strings: &[(&KdlEntry, String)]) {
        let axes: Vec<&str> = matrix
            .map(|m| m.axes.iter().map(|a| a.name.as_str()).collect())
            .unwrap_or_default();
        for (entry, text) in strings {
            for reference in crate::matrix::references(text) {
                match reference {
                    Ok(name) if axes.contains(&name) => {}
                    Ok(name) => {
                        let mut p = Problem::new(
                            Code::UnknownMatrixAxis,
                            entry.span(),
                            format!(
                                "`${{{{ matrix.{name} }}}}` names no axis of this job's matrix"
                            ),
                            "unknown matrix axis",
                        );
                        p = match suggest(name, &axes) {
                            Some(s) => p.help(format!("did you mean `matrix.{s}`?")),
                            None if axes.is_empty() => p.help("this job has no `matrix`"),
                            None => p.help(format!("the axes are {}", list(&axes))),
                        };
                        self.push(p);
                    }
                    Err(expr) => self.push(
                        Problem::new(
                            Code::InvalidValue,
                            entry.span(),
                            format!("`${{{{ {expr} }}}}` is not an expression Solstice knows"),
                            "unknown expression",
                        )
                        .help("only `${{ matrix.NAME }}` is expanded; write `$${{` for a literal"),
                    ),
                }
            }
        }
    }

    fn triggers(&mut self, node: &KdlNode) -> Triggers {
        self.props(node, &[]);
        self.no_args(node);
        let mut t = Triggers::default();
        let (mut push_seen, mut pr_seen, mut manual_seen) = (None, None, None);
        for child in self.children(node, &["push", "pull_request", "manual", "cron"]) {
            match child.name().value() {
                "push" if self.once(child, &mut push_seen, "`on`") => {
                    t.push = Some(self.ref_filter(child, true));
                }
                "pull_request" if self.once(child, &mut pr_seen, "`on`") => {
                    t.pull_request = Some(self.ref_filter(child, false));
                }
                "manual" => {
                    self.props(child, &[]);
                    self.no_args(child);
                    self.no_children(child);
                    if self.once(child, &mut manual_seen, "`on`") {
                        t.manual = true;
                    }
                }
                "cron" => {
                    self.props(child, &[]);
                    self.no_children(child);
                    for (expr, span) in self.string_args(child, 1) {
                        if let Err(why) = cron::validate(&expr) {
                            self.push(
                                Problem::new(
                                    Code::InvalidCron,
                                    span,
                                    format!("invalid cron expression `{expr}`: {why}"),
                                    "invalid cron",
                                )
                                .help("five fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * 1-5\""),
                            );
                        }
                        t.cron.push(expr);
                    }
                }
                _ => {}
            }
        }
        t
    }

    fn ref_filter(&mut self, node: &KdlNode, is_push: bool) -> RefFilter {
        self.props(node, &[]);
        self.no_args(node);
        let mut f = RefFilter::default();
        let allowed: &[&str] = if is_push {
            &["branches", "tags", "paths", "paths_ignore"]
        } else {
            &["branches", "paths", "paths_ignore"]
        };
        for child in self.children(node, allowed) {
            self.props(child, &[]);
            self.no_children(child);
            let target = match child.name().value() {
                "branches" => &mut f.branches,
                "tags" => &mut f.tags,
                "paths" => &mut f.paths,
                _ => &mut f.paths_ignore,
            };
            for (pattern, span) in self.string_args(child, 1) {
                self.glob(&pattern, span);
                target.push(pattern);
            }
        }
        f
    }

    fn glob(&mut self, pattern: &str, span: SourceSpan) {
        if let Err(e) = crate::trigger::compile_glob(pattern) {
            self.push(
                Problem::new(
                    Code::InvalidGlob,
                    span,
                    format!("invalid glob `{pattern}`: {}", e.kind()),
                    "invalid glob",
                )
                .help("`*` matches within one path segment, `**` across segments, `{a,b}` alternatives"),
            );
        }
    }

    fn env(&mut self, node: &KdlNode, env: &mut Env) {
        self.no_args(node);
        self.no_children(node);
        for entry in node.entries() {
            let Some(key) = entry.name() else { continue };
            let name = key.value();
            if !valid_env_name(name) {
                self.push(
                    Problem::new(
                        Code::InvalidValue,
                        key.span(),
                        format!("`{name}` is not a valid environment variable name"),
                        "invalid name",
                    )
                    .help("use letters, digits and `_`, not starting with a digit"),
                );
            }
            let Some(value) = self.scalar_string(entry) else {
                continue;
            };
            if env.insert(name.to_string(), value).is_some() {
                self.push(
                    Problem::new(
                        Code::DuplicateProperty,
                        key.span(),
                        format!("`{name}` is set twice in the same scope"),
                        "set again here",
                    )
                    .help("remove one of the two values"),
                );
            }
        }
    }

    fn secrets(&mut self, node: &KdlNode, secrets: &mut Vec<String>) {
        self.props(node, &[]);
        self.no_children(node);
        for (name, span) in self.string_args(node, 1) {
            if !valid_env_name(&name) {
                self.push(
                    Problem::new(
                        Code::InvalidValue,
                        span,
                        format!("`{name}` is not a valid secret name"),
                        "invalid name",
                    )
                    .help(
                        "secrets reach steps as environment variables: use letters, digits and `_`",
                    ),
                );
            }
            if !secrets.contains(&name) {
                secrets.push(name);
            }
        }
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

    /// Reads a node's properties: unknown and repeated ones are reported.
    fn props<'a>(
        &mut self,
        node: &'a KdlNode,
        known: &[&'static str],
    ) -> HashMap<&'static str, &'a KdlEntry> {
        let mut out: HashMap<&'static str, &'a KdlEntry> = HashMap::new();
        let node_name = node.name().value();
        for entry in node.entries() {
            let Some(key) = entry.name() else { continue };
            let name = key.value();
            match known.iter().find(|k| **k == name) {
                Some(k) => {
                    if let Some(first) = out.insert(k, entry) {
                        self.push(
                            Problem::new(
                                Code::DuplicateProperty,
                                entry.span(),
                                format!("`{name}` is given twice on `{node_name}`"),
                                "given again here",
                            )
                            .also(first.span(), "first given here")
                            .help("remove one of the two"),
                        );
                    }
                }
                None => {
                    let mut p = Problem::new(
                        Code::UnknownProperty,
                        key.span(),
                        format!("`{node_name}` has no property `{name}`"),
                        "unknown property",
                    );
                    p = match suggest(name, known) {
                        Some(s) => p.help(format!("did you mean `{s}`?")),
                        None if known.is_empty() => {
                            p.help(format!("`{node_name}` takes no properties"))
                        }
                        None => p.help(format!("`{node_name}` takes {}", list(known))),
                    };
                    self.push(p);
                }
            }
        }
        out
    }

    fn no_args(&mut self, node: &KdlNode) {
        for entry in node.entries().iter().filter(|e| e.name().is_none()) {
            let name = node.name().value();
            self.push(
                Problem::new(
                    Code::UnexpectedArgument,
                    entry.span(),
                    format!("`{name}` takes no arguments"),
                    "unexpected argument",
                )
                .help("did you mean to write a property, `key=value`?"),
            );
        }
    }

    fn no_children(&mut self, node: &KdlNode) {
        if let Some(children) = node.children() {
            let name = node.name().value();
            self.push(
                Problem::new(
                    Code::UnexpectedChildren,
                    children.span(),
                    format!("`{name}` takes no `{{ ... }}` block"),
                    "unexpected block",
                )
                .help("remove the block"),
            );
        }
    }

    /// The child nodes that are in `known`; unknown ones are reported.
    fn children<'a>(&mut self, node: &'a KdlNode, known: &[&'static str]) -> Vec<&'a KdlNode> {
        let Some(doc) = node.children() else {
            return Vec::new();
        };
        let parent = node.name().value();
        let mut out = Vec::new();
        for child in doc.nodes() {
            let name = child.name().value();
            if known.contains(&name) {
                out.push(child);
                continue;
            }
            let mut p = Problem::new(
                Code::UnknownNode,
                name_span(child),
                format!("`{parent}` has no child node `{name}`"),
                "unknown node",
            );
            p = match suggest(name, known) {
                Some(s) => p.help(format!("did you mean `{s}`?")),
                None => p.help(format!("`{parent}` may contain {}", list(known))),
            };
            self.push(p);
        }
        out
    }

    /// String arguments of a node; at least `min` of them.
    fn string_args(&mut self, node: &KdlNode, min: usize) -> Vec<(String, SourceSpan)> {
        let mut out = Vec::new();
        for entry in node.entries().iter().filter(|e| e.name().is_none()) {
            if let Some(s) = self.expect_string(entry) {
                out.push((s, entry.span()));
            }
        }
        let given = node.entries().iter().filter(|e| e.name().is_none()).count();
        if given < min {
            let name = node.name().value();
            self.push(
                Problem::new(
                    Code::UnexpectedArgument,
                    name_span(node),
                    format!("`{name}` needs at least {min} argument"),
                    "missing argument",
                )
                .help(format!("write `{name} \"...\"`")),
            );
        }
        out
    }

    fn type_error(&mut self, entry: &KdlEntry, want: Ty) {
        let got = describe_value(entry.value());
        let mut p = Problem::new(
            Code::WrongType,
            entry.span(),
            format!("expected {}, found {got}", want.describe()),
            format!("{got}, should be {}", want.describe()),
        );
        if matches!(want, Ty::String) {
            p = p.help("put the value in double quotes");
        } else if matches!(want, Ty::Bool) {
            p = p.help("write #true or #false (KDL v1: true or false)");
        }
        self.push(p);
    }

    fn expect_string(&mut self, entry: &KdlEntry) -> Option<String> {
        match entry.value() {
            KdlValue::String(s) => Some(s.clone()),
            _ => {
                self.type_error(entry, Ty::String);
                None
            }
        }
    }

    /// A string, integer or boolean, as text (env values, matrix values).
    fn scalar_string(&mut self, entry: &KdlEntry) -> Option<String> {
        match entry.value() {
            KdlValue::String(s) => Some(s.clone()),
            KdlValue::Integer(i) => Some(i.to_string()),
            KdlValue::Bool(b) => Some(b.to_string()),
            _ => {
                self.type_error(entry, Ty::String);
                None
            }
        }
    }

    fn opt_string(
        &mut self,
        props: &HashMap<&'static str, &KdlEntry>,
        key: &str,
    ) -> Option<String> {
        props.get(key).and_then(|e| self.expect_string(e))
    }

    fn opt_bool(&mut self, props: &HashMap<&'static str, &KdlEntry>, key: &str) -> bool {
        match props.get(key) {
            None => false,
            Some(e) => match e.value() {
                KdlValue::Bool(b) => *b,
                _ => {
                    self.type_error(e, Ty::Bool);
                    false
                }
            },
        }
    }

    fn opt_duration(
        &mut self,
        props: &HashMap<&'static str, &KdlEntry>,
        key: &str,
    ) -> Option<Duration> {
        let entry = *props.get(key)?;
        let text = self.expect_string(entry)?;
        match Duration::parse(&text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.push(
                    Problem::new(
                        Code::InvalidDuration,
                        entry.span(),
                        format!("invalid duration `{text}`: {why}"),
                        "invalid duration",
                    )
                    .help("write a number and a unit: \"90s\", \"30m\", \"1h30m\", \"2h\""),
                );
                None
            }
        }
    }

    fn opt_retry(&mut self, props: &HashMap<&'static str, &KdlEntry>) -> u32 {
        let Some(entry) = props.get("retry") else {
            return 0;
        };
        match entry.value() {
            KdlValue::Integer(n) if (0..=i128::from(MAX_RETRY)).contains(n) => *n as u32,
            KdlValue::Integer(n) => {
                self.push(
                    Problem::new(
                        Code::InvalidValue,
                        entry.span(),
                        format!("`retry` must be between 0 and {MAX_RETRY}, not {n}"),
                        "out of range",
                    )
                    .help("retry counts extra attempts after infrastructure failures"),
                );
                0
            }
            _ => {
                self.type_error(entry, Ty::Integer);
                0
            }
        }
    }

    fn opt_workdir(
        &mut self,
        props: &HashMap<&'static str, &KdlEntry>,
        key: &str,
    ) -> Option<String> {
        let entry = *props.get(key)?;
        let dir = self.expect_string(entry)?;
        self.relative_path(&dir, entry.span(), "`workdir`");
        Some(dir)
    }

    /// Paths in a workflow stay inside the checkout.
    fn relative_path(&mut self, path: &str, span: SourceSpan, what: &str) -> bool {
        let escapes = path.starts_with('/')
            || path.starts_with('\\')
            || path.split(['/', '\\']).any(|c| c == "..")
            || path.is_empty()
            || path.contains('\0');
        if escapes {
            self.push(
                Problem::new(
                    Code::InvalidValue,
                    span,
                    format!("{what} must be a relative path inside the checkout, not `{path}`"),
                    "outside the checkout",
                )
                .help("write a path relative to the repository root, without `..`"),
            );
        }
        !escapes
    }
}

fn env_entries(node: &KdlNode) -> impl Iterator<Item = (&KdlEntry, String)> {
    node.entries()
        .iter()
        .filter_map(|e| match (e.name(), e.value()) {
            (Some(_), KdlValue::String(s)) => Some((e, s.clone())),
            _ => None,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("runs-on", &["id", "runs_on"]), Some("runs_on"));
        assert_eq!(suggest("stpe", &["step", "env"]), Some("step"));
        assert_eq!(suggest("zzzzzz", &["step", "env"]), None);
    }
}
