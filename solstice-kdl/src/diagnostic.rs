//! Diagnostics: every problem of a document, each with a stable code, a
//! label on the exact span and a help line, all reported in one pass.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};
use serde::Serialize;

/// The stable code of a problem. The rendered code is `solstice::<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// The text is not valid KDL (v2 or v1).
    Syntax,
    /// The file is larger than the configured limit.
    TooLarge,
    /// The file is not UTF-8.
    InvalidUtf8,
    /// Blocks or comments nest deeper than the configured limit.
    TooDeep,
    /// A node name the language does not know here.
    UnknownNode,
    /// A property name the node does not take.
    UnknownProperty,
    /// A value of the wrong type (string where a boolean belongs, ...).
    WrongType,
    /// A value of the right type that is out of range or malformed.
    InvalidValue,
    /// An argument where the node takes none, or too few arguments.
    UnexpectedArgument,
    /// A `{ ... }` block on a node that takes none.
    UnexpectedChildren,
    /// A property given twice on one node.
    DuplicateProperty,
    /// A node that may appear once appears again (`matrix`, `on`).
    DuplicateNode,
    /// A required property is missing (`job` without `id`, `step` without `run`).
    MissingProperty,
    /// Two jobs share an id.
    DuplicateJobId,
    /// A job without steps.
    NoSteps,
    /// A workflow without jobs.
    NoJobs,
    /// The document has no `workflow` root, or more than one root node.
    Root,
    /// `needs` names a job that does not exist.
    UnknownNeeds,
    /// The `needs` graph has a cycle.
    NeedsCycle,
    /// A malformed glob pattern.
    InvalidGlob,
    /// A malformed cron expression.
    InvalidCron,
    /// A malformed duration.
    InvalidDuration,
    /// A matrix with too many combinations, or an empty axis.
    InvalidMatrix,
    /// `${{ matrix.X }}` where the job has no axis `X`.
    UnknownMatrixAxis,
    /// `format` writes KDL v2, and this KDL v1 file has commented-out
    /// (`/-`) text that is not valid KDL v2, which it cannot convert.
    V1CommentedOut,
}

impl Code {
    /// The stable text form, e.g. `solstice::unknown_property`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "solstice::syntax",
            Code::TooLarge => "solstice::too_large",
            Code::InvalidUtf8 => "solstice::invalid_utf8",
            Code::TooDeep => "solstice::too_deep",
            Code::UnknownNode => "solstice::unknown_node",
            Code::UnknownProperty => "solstice::unknown_property",
            Code::WrongType => "solstice::wrong_type",
            Code::InvalidValue => "solstice::invalid_value",
            Code::UnexpectedArgument => "solstice::unexpected_argument",
            Code::UnexpectedChildren => "solstice::unexpected_children",
            Code::DuplicateProperty => "solstice::duplicate_property",
            Code::DuplicateNode => "solstice::duplicate_node",
            Code::MissingProperty => "solstice::missing_property",
            Code::DuplicateJobId => "solstice::duplicate_job_id",
            Code::NoSteps => "solstice::no_steps",
            Code::NoJobs => "solstice::no_jobs",
            Code::Root => "solstice::root",
            Code::UnknownNeeds => "solstice::unknown_needs",
            Code::NeedsCycle => "solstice::needs_cycle",
            Code::InvalidGlob => "solstice::invalid_glob",
            Code::InvalidCron => "solstice::invalid_cron",
            Code::InvalidDuration => "solstice::invalid_duration",
            Code::InvalidMatrix => "solstice::invalid_matrix",
            Code::UnknownMatrixAxis => "solstice::unknown_matrix_axis",
            Code::V1CommentedOut => "solstice::v1_commented_out",
        }
    }

    /// True for problems found before or while reading KDL syntax, as
    /// opposed to problems with what the (well-formed) document says.
    pub fn is_syntax(self) -> bool {
        matches!(
            self,
            Code::Syntax | Code::TooLarge | Code::InvalidUtf8 | Code::TooDeep
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a workflow document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Stable code.
    pub code: Code,
    /// One-line description.
    pub message: String,
    /// Where it is (byte offset and length).
    pub span: SourceSpan,
    /// Text of the label on `span`.
    pub label: String,
    /// How to fix it.
    pub help: Option<String>,
    /// Other places involved (the first definition of a duplicate, the
    /// other members of a cycle), each with its own label.
    pub related: Vec<(SourceSpan, String)>,
}

impl Problem {
    pub(crate) fn new(
        code: Code,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        Problem {
            code,
            message: message.into(),
            span,
            label: label.into(),
            help: None,
            related: Vec::new(),
        }
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub(crate) fn also(mut self, span: SourceSpan, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code.as_str()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let first = LabeledSpan::new_primary_with_span(Some(self.label.clone()), self.span);
        let rest = self
            .related
            .iter()
            .map(|(span, label)| LabeledSpan::new_with_span(Some(label.clone()), *span));
        Some(Box::new(std::iter::once(first).chain(rest)))
    }
}

/// All problems of one document, with the document's text for rendering.
/// (Boxed, so that `Result<Workflow, ParseError>` stays small.)
#[derive(Debug, Clone)]
pub struct ParseError(Box<Inner>);

#[derive(Debug, Clone)]
struct Inner {
    name: String,
    source: NamedSource<Arc<str>>,
    text: Arc<str>,
    problems: Vec<Problem>,
}

impl ParseError {
    pub(crate) fn new(name: &str, text: Arc<str>, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| (p.span.offset(), p.code.as_str()));
        problems.dedup();
        ParseError(Box::new(Inner {
            name: name.to_string(),
            source: NamedSource::new(name, text.clone()),
            text,
            problems,
        }))
    }

    /// The problems, ordered by position.
    pub fn problems(&self) -> &[Problem] {
        &self.0.problems
    }

    /// The file name the error was created with.
    pub fn file_name(&self) -> &str {
        &self.0.name
    }

    /// True when every problem is a syntax-level one (see [`Code::is_syntax`]).
    pub fn is_syntax(&self) -> bool {
        self.0.problems.iter().all(|p| p.code.is_syntax())
    }

    /// The problems in a stable, machine-readable form with 1-based lines
    /// and columns (columns count characters).
    pub fn to_json_records(&self) -> Vec<ProblemRecord> {
        self.0
            .problems
            .iter()
            .map(|p| {
                let (line, column) = line_col(&self.0.text, p.span.offset());
                ProblemRecord {
                    file: self.0.name.clone(),
                    code: p.code.as_str(),
                    severity: "error",
                    message: p.message.clone(),
                    label: p.label.clone(),
                    help: p.help.clone(),
                    offset: p.span.offset(),
                    length: p.span.len(),
                    line,
                    column,
                }
            })
            .collect()
    }
}

#[cfg(feature = "render")]
impl ParseError {
    /// Renders every problem as a miette report (one per problem, each
    /// pointing into the document), `width` columns wide, with or without
    /// colour.
    pub fn render(&self, color: bool, width: usize) -> String {
        use miette::{GraphicalReportHandler, GraphicalTheme};
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme).with_width(width);
        let mut out = String::new();
        for problem in &self.0.problems {
            let report = Report {
                problem,
                source: &self.0.source,
            };
            let _ = handler.render_report(&mut out, &report);
        }
        out
    }
}

/// One problem together with its document, for rendering.
#[cfg(feature = "render")]
#[derive(Debug)]
struct Report<'a> {
    problem: &'a Problem,
    source: &'a NamedSource<Arc<str>>,
}

#[cfg(feature = "render")]
impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.problem.fmt(f)
    }
}

#[cfg(feature = "render")]
impl std::error::Error for Report<'_> {}

#[cfg(feature = "render")]
impl Diagnostic for Report<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problem.code()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Diagnostic::help(self.problem)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.problem.labels()
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source)
    }
}

/// One problem as JSON for editors and CI (`cidev validate --format json`).
#[derive(Debug, Clone, Serialize)]
pub struct ProblemRecord {
    /// File name.
    pub file: String,
    /// Stable code.
    pub code: &'static str,
    /// Always `error` for now.
    pub severity: &'static str,
    /// One-line description.
    pub message: String,
    /// Label on the span.
    pub label: String,
    /// How to fix it.
    pub help: Option<String>,
    /// Byte offset of the span.
    pub offset: usize,
    /// Byte length of the span.
    pub length: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.problems.len() {
            1 => write!(f, "{}: 1 problem", self.0.name),
            n => write!(f, "{}: {n} problems", self.0.name),
        }
    }
}

impl std::error::Error for ParseError {}

impl Diagnostic for ParseError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("solstice::invalid_workflow"))
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.0.source)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(
            self.0.problems.iter().map(|p| p as &dyn Diagnostic),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncé d", 0), (1, 1));
        assert_eq!(line_col("ab\ncé d", 3), (2, 1));
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("ab", 99), (1, 3));
        // inside a multi-byte character: clamp to its start
        assert_eq!(line_col("é", 1), (1, 1));
    }
}
