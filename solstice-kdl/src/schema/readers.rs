//! The generic readers every node rule uses: properties, children and
//! arguments, typed values (strings, booleans, durations, `retry`,
//! relative paths), and the suggestions and lists of help lines.

use std::collections::HashMap;

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::{Cx, MAX_RETRY};
use crate::diagnostic::{Code, Problem};
use crate::model::Duration;

/// A property's expected type, for messages.
#[derive(Clone, Copy)]
pub(super) enum Ty {
    String,
    Bool,
    Integer,
}

impl Ty {
    pub(super) fn describe(self) -> &'static str {
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

pub(super) fn name_span(node: &KdlNode) -> SourceSpan {
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
pub(super) const MAX_LISTED: usize = 8;

/// The first few candidates as "`a`, `b` and 3 more": a help line stays
/// short however many jobs a workflow has.
pub(super) fn list(candidates: &[&str]) -> String {
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
    /// Reads a node's properties: unknown and repeated ones are reported.
    pub(super) fn props<'a>(
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

    pub(super) fn no_args(&mut self, node: &KdlNode) {
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

    pub(super) fn no_children(&mut self, node: &KdlNode) {
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
    pub(super) fn children<'a>(
        &mut self,
        node: &'a KdlNode,
        known: &[&'static str],
    ) -> Vec<&'a KdlNode> {
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
    pub(super) fn string_args(&mut self, node: &KdlNode, min: usize) -> Vec<(String, SourceSpan)> {
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

    pub(super) fn type_error(&mut self, entry: &KdlEntry, want: Ty) {
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

    pub(super) fn expect_string(&mut self, entry: &KdlEntry) -> Option<String> {
        match entry.value() {
            KdlValue::String(s) => Some(s.clone()),
            _ => {
                self.type_error(entry, Ty::String);
                None
            }
        }
    }

    /// A string, integer or boolean, as text (env values, matrix values).
    pub(super) fn scalar_string(&mut self, entry: &KdlEntry) -> Option<String> {
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

    pub(super) fn opt_string(
        &mut self,
        props: &HashMap<&'static str, &KdlEntry>,
        key: &str,
    ) -> Option<String> {
        props.get(key).and_then(|e| self.expect_string(e))
    }

    pub(super) fn opt_bool(&mut self, props: &HashMap<&'static str, &KdlEntry>, key: &str) -> bool {
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

    pub(super) fn opt_duration(
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

    pub(super) fn opt_retry(&mut self, props: &HashMap<&'static str, &KdlEntry>) -> u32 {
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

    pub(super) fn opt_workdir(
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
    pub(super) fn relative_path(&mut self, path: &str, span: SourceSpan, what: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn suggestions() {
        assert_eq!(suggest("runs-on", &["id", "runs_on"]), Some("runs_on"));
        assert_eq!(suggest("stpe", &["step", "env"]), Some("step"));
        assert_eq!(suggest("zzzzzz", &["step", "env"]), None);
    }
}
