//! The `on` block: push, pull requests, manual runs and schedules.

use kdl::KdlNode;
use miette::SourceSpan;

use super::Cx;
use crate::cron;
use crate::diagnostic::{Code, Problem};
use crate::model::{RefFilter, Triggers};

impl Cx {
    pub(super) fn triggers(&mut self, node: &KdlNode) -> Triggers {
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

    pub(super) fn ref_filter(&mut self, node: &KdlNode, is_push: bool) -> RefFilter {
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

    pub(super) fn glob(&mut self, pattern: &str, span: SourceSpan) {
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
}
