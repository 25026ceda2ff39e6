//! The `matrix` block: axes, `exclude`, the size rule, and the
//! `${{ matrix.X }}` references of a job's strings.

use std::collections::{BTreeMap, HashMap};

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::readers::{list, name_span, suggest};
use super::{Cx, MAX_MATRIX_COMBINATIONS, valid_axis};
use crate::diagnostic::{Code, Problem};
use crate::model::{Axis, Matrix};

impl Cx {
    pub(super) fn matrix(&mut self, node: &KdlNode) -> Option<Matrix> {
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
    pub(super) fn matrix_references(
        &mut self,
        matrix: Option<&Matrix>,
        strings: &[(&KdlEntry, String)],
    ) {
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
}
