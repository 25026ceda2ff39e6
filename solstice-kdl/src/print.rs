//! Printing KDL v2: the one place that spells strings and identifiers, used
//! both by [`Workflow::to_kdl`] and by the comment-keeping formatter.
//!
//! Every character that KDL v2 forbids in a document (most control
//! characters, U+007F, the bidi controls, U+FEFF) and every character that
//! counts as a newline (U+0085, U+2028, U+2029, ...) is written as an escape,
//! so the output always parses back to the same values.

use std::fmt::Write;

use crate::chars::{is_unicode_space as is_kdl_space, needs_escape};
use crate::model::{Env, Job, Matrix, RefFilter, Step, Triggers, Workflow};

const INDENT: &str = "    ";

fn push_escaped(out: &mut String, c: char, keep_newline: bool) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' if keep_newline => out.push('\n'),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{C}' => out.push_str("\\f"),
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// A single-line quoted KDL v2 string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, false);
    }
    out.push('"');
    out
}

/// A string value: a multi-line `"""` string when `s` has several lines
/// and survives the multi-line rules unchanged, a quoted string otherwise.
/// `indent` is the indentation of the line the value stands on.
pub fn string_value(s: &str, indent: usize) -> String {
    let lines: Vec<&str> = s.split('\n').collect();
    // Whitespace-only lines are normalised away by the multi-line rules and
    // a leading or trailing blank line is indistinguishable from the quotes'
    // own line breaks, so those values stay single-line.
    let multi_ok = lines.len() > 1
        && lines
            .iter()
            .all(|l| l.is_empty() || !l.chars().all(is_kdl_space))
        && !lines[0].is_empty();
    if !multi_ok {
        return quote(s);
    }
    let pad = INDENT.repeat(indent + 1);
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str("\"\"\"\n");
    for line in &lines {
        if !line.is_empty() {
            out.push_str(&pad);
            for c in line.chars() {
                push_escaped(&mut out, c, false);
            }
        }
        out.push('\n');
    }
    out.push_str(&pad);
    out.push_str("\"\"\"");
    out
}

/// An identifier: bare when that is unambiguous, quoted otherwise.
pub fn ident(s: &str) -> String {
    let bare = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(s, "true" | "false" | "null" | "inf" | "nan");
    if bare { s.to_string() } else { quote(s) }
}

impl Workflow {
    /// The workflow as canonical KDL v2 text, which [`crate::parse`] reads
    /// back to an equal `Workflow`. Comments are not part of the model; to
    /// format a file and keep them, use [`crate::format`].
    pub fn to_kdl(&self) -> String {
        let mut p = Printer::default();
        p.open(
            "workflow",
            &props([("name", self.name.as_ref().map(|n| quote(n)))]),
            0,
        );
        if let Some(on) = &self.on {
            p.triggers(on, 1);
        }
        p.env(&self.env, 1);
        p.args_line("secret", &self.secrets, 1);
        for job in &self.jobs {
            p.job(job, 1);
        }
        p.close(0);
        p.out
    }
}

fn props<const N: usize>(items: [(&str, Option<String>); N]) -> String {
    let mut s = String::new();
    for (k, v) in items {
        if let Some(v) = v {
            let _ = write!(s, " {k}={v}");
        }
    }
    s
}

#[derive(Default)]
struct Printer {
    out: String,
}

impl Printer {
    fn line(&mut self, indent: usize, text: &str) {
        for _ in 0..indent {
            self.out.push_str(INDENT);
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn open(&mut self, name: &str, props: &str, indent: usize) {
        self.line(indent, &format!("{name}{props} {{"));
    }

    fn close(&mut self, indent: usize) {
        self.line(indent, "}");
    }

    fn args_line(&mut self, name: &str, args: &[String], indent: usize) {
        if args.is_empty() {
            return;
        }
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        self.line(indent, &format!("{name} {}", args.join(" ")));
    }

    fn env(&mut self, env: &Env, indent: usize) {
        if env.is_empty() {
            return;
        }
        let pairs: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{}={}", ident(k), string_value(v, indent)))
            .collect();
        self.line(indent, &format!("env {}", pairs.join(" ")));
    }

    fn triggers(&mut self, t: &Triggers, indent: usize) {
        self.open("on", "", indent);
        if let Some(f) = &t.push {
            self.ref_filter("push", f, indent + 1);
        }
        if let Some(f) = &t.pull_request {
            self.ref_filter("pull_request", f, indent + 1);
        }
        if t.manual {
            self.line(indent + 1, "manual");
        }
        for c in &t.cron {
            self.line(indent + 1, &format!("cron {}", quote(c)));
        }
        self.close(indent);
    }

    fn ref_filter(&mut self, name: &str, f: &RefFilter, indent: usize) {
        if f == &RefFilter::default() {
            self.line(indent, name);
            return;
        }
        self.open(name, "", indent);
        self.args_line("branches", &f.branches, indent + 1);
        self.args_line("tags", &f.tags, indent + 1);
        self.args_line("paths", &f.paths, indent + 1);
        self.args_line("paths_ignore", &f.paths_ignore, indent + 1);
        self.close(indent);
    }

    fn job(&mut self, job: &Job, indent: usize) {
        let p = props([
            ("id", Some(quote(&job.id))),
            ("runs_on", job.runs_on.as_ref().map(|s| quote(s))),
            ("timeout", job.timeout.map(|d| quote(&d.to_string()))),
            ("retry", (job.retry > 0).then(|| job.retry.to_string())),
            ("workdir", job.workdir.as_ref().map(|s| quote(s))),
        ]);
        self.open("job", &p, indent);
        let inner = indent + 1;
        self.args_line("needs", &job.needs, inner);
        if let Some(m) = &job.matrix {
            self.matrix(m, inner);
        }
        self.env(&job.env, inner);
        self.args_line("secret", &job.secrets, inner);
        for step in &job.steps {
            self.step(step, inner);
        }
        self.args_line("artifact", &job.artifacts, inner);
        self.close(indent);
    }

    fn matrix(&mut self, m: &Matrix, indent: usize) {
        self.open("matrix", "", indent);
        for axis in &m.axes {
            let values: Vec<String> = axis.values.iter().map(|v| quote(v)).collect();
            self.line(
                indent + 1,
                &format!("{} {}", ident(&axis.name), values.join(" ")),
            );
        }
        for ex in &m.exclude {
            let pairs: Vec<String> = ex
                .iter()
                .map(|(k, v)| format!("{}={}", ident(k), quote(v)))
                .collect();
            self.line(indent + 1, &format!("exclude {}", pairs.join(" ")));
        }
        self.close(indent);
    }

    fn step(&mut self, step: &Step, indent: usize) {
        let p = props([
            ("name", step.name.as_ref().map(|s| quote(s))),
            ("run", Some(string_value(&step.run, indent))),
            ("timeout", step.timeout.map(|d| quote(&d.to_string()))),
            ("workdir", step.workdir.as_ref().map(|s| quote(s))),
            (
                "continue_on_error",
                step.continue_on_error.then(|| "#true".to_string()),
            ),
        ]);
        if step.env.is_empty() {
            self.line(indent, &format!("step{p}"));
        } else {
            self.open("step", &p, indent);
            self.env(&step.env, indent + 1);
            self.close(indent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_kdl_forbids() {
        assert_eq!(
            quote("a\u{0}b\u{7f}\u{2028}\u{202e}\u{feff}"),
            r#""a\u{0}b\u{7f}\u{2028}\u{202e}\u{feff}""#
        );
        assert_eq!(quote("tab\there \"q\" \\"), r#""tab\there \"q\" \\""#);
        assert_eq!(ident("runs_on"), "runs_on");
        assert_eq!(ident("true"), "\"true\"");
        assert_eq!(ident("1x"), "\"1x\"");
        assert_eq!(ident("a b"), "\"a b\"");
    }

    #[test]
    fn multi_line_only_when_faithful() {
        assert_eq!(string_value("a\nb", 0), "\"\"\"\n    a\n    b\n    \"\"\"");
        assert_eq!(string_value("a\n  \nb", 0), "\"a\\n  \\nb\"");
        // U+00A0 is KDL whitespace too (found by `cargo fuzz run roundtrip`).
        assert_eq!(string_value("a\n\u{a0} ", 0), "\"a\\n\u{a0} \"");
        assert_eq!(string_value("\na", 0), "\"\\na\"");
        assert_eq!(string_value("one line", 0), "\"one line\"");
    }
}
