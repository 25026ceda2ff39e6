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
    /// More problems than [`MAX_PROBLEMS`]: the rest are counted, not listed.
    TooManyProblems,
    /// `format` cannot keep a comment where it is, and leaves the file alone.
    FormatWouldDropComment,
    /// The run the workflow plans is too big (jobs or `needs` edges after
    /// matrix expansion).
    RunTooLarge,
    /// A matrix axis lists the same value twice (`1` and `"1"` are the same
    /// value: matrix values are text).
    DuplicateMatrixValue,
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
            Code::TooManyProblems => "solstice::too_many_problems",
            Code::FormatWouldDropComment => "solstice::format_would_drop_comment",
            Code::RunTooLarge => "solstice::run_too_large",
            Code::DuplicateMatrixValue => "solstice::duplicate_matrix_value",
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
    /// A problem at `span` (for other KDL files checked with this crate's
    /// diagnostics, such as a daemon's configuration).
    pub fn new(
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

    /// Adds how to fix it.
    pub fn help(mut self, help: impl Into<String>) -> Self {
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
    /// No line is too long for miette's own renderer.
    drawable: bool,
}

/// Most problems one document reports; the rest are counted in a last
/// problem ([`Code::TooManyProblems`]). Keeps the output of a hostile file
/// (one error per argument of a million-argument node) bounded.
pub const MAX_PROBLEMS: usize = 100;

impl ParseError {
    /// The problems of the document `name` whose text is `text`.
    pub fn new(name: &str, text: Arc<str>, problems: Vec<Problem>) -> Self {
        Self::with_omitted(name, text, problems, 0)
    }

    /// `omitted`: problems found but not kept (see [`MAX_PROBLEMS`]).
    pub(crate) fn with_omitted(
        name: &str,
        text: Arc<str>,
        mut problems: Vec<Problem>,
        omitted: usize,
    ) -> Self {
        problems.sort_by_key(|p| (p.span.offset(), p.code.as_str()));
        problems.dedup();
        let mut omitted = omitted;
        if problems.len() > MAX_PROBLEMS {
            omitted += problems.len() - MAX_PROBLEMS;
            problems.truncate(MAX_PROBLEMS);
        }
        if omitted > 0 {
            let end = text.len();
            problems.push(
                Problem::new(
                    Code::TooManyProblems,
                    SourceSpan::from(end..end),
                    format!(
                        "{omitted} more problem{} not shown",
                        if omitted == 1 { " is" } else { "s are" }
                    ),
                    "",
                )
                .help(format!(
                    "only the first {MAX_PROBLEMS} problems are reported: fix these and check again"
                )),
            );
        }
        // miette's own handler panics drawing a column past 65,535: such a
        // document is handed to it without its text (see `source_code`).
        let drawable = text
            .split('\n')
            .all(|l| l.len() + 8 * l.bytes().filter(|b| *b == b'\t').count() < 60_000);
        ParseError(Box::new(Inner {
            name: name.to_string(),
            source: NamedSource::new(name, text.clone()),
            text,
            problems,
            drawable,
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
        let index = LineIndex::new(&self.0.text);
        self.0
            .problems
            .iter()
            .map(|p| {
                let (line, column) = index.line_col(p.span.offset());
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
        let index = LineIndex::new(&self.0.text);
        let mut out = String::new();
        for problem in &self.0.problems {
            let (snippet, problem) = Snippet::of(&self.0.name, &index, problem);
            let report = Report {
                problem: &problem,
                source: &snippet,
            };
            let _ = handler.render_report(&mut out, &report);
        }
        out
    }
}

/// One problem together with its excerpt, for rendering.
#[cfg(feature = "render")]
#[derive(Debug)]
struct Report<'a> {
    problem: &'a Problem,
    source: &'a Snippet,
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

/// Where lines start and how many characters precede each 1 KiB block of
/// the text: line and column of any offset in O(log n + 1 KiB), so that
/// reporting many problems in a large file stays linear.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
    chars_before_block: Vec<usize>,
}

const BLOCK: usize = 1024;

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut chars_before_block = Vec::with_capacity(text.len() / BLOCK + 1);
        let mut count = 0;
        for block in text.as_bytes().chunks(BLOCK) {
            chars_before_block.push(count);
            count += block.iter().filter(|b| (**b as i8) >= -0x40).count();
        }
        chars_before_block.push(count);
        LineIndex {
            text,
            starts,
            chars_before_block,
        }
    }

    fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    /// Characters before `offset` (a char boundary).
    fn chars_before(&self, offset: usize) -> usize {
        let block = offset / BLOCK;
        self.chars_before_block[block]
            + self.text.as_bytes()[block * BLOCK..offset]
                .iter()
                .filter(|b| (**b as i8) >= -0x40)
                .count()
    }

    /// 0-based line of `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|s| *s <= offset) - 1
    }

    /// Byte range of a line, without its line break.
    #[cfg(feature = "render")]
    fn line_range(&self, line: usize) -> (usize, usize) {
        let start = self.starts[line];
        let mut end = self
            .starts
            .get(line + 1)
            .map_or(self.text.len(), |next| next - 1);
        if end > start && self.text.as_bytes()[end - 1] == b'\r' {
            end -= 1;
        }
        (start, end)
    }

    /// 1-based line and column (in characters) of `offset`.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let line = self.line_of(offset);
        let start = self.starts[line];
        (
            line + 1,
            self.chars_before(offset) - self.chars_before(start) + 1,
        )
    }
}

/// Lines longer than this many characters are shown as a window around the
/// label (miette draws columns past 65,535 with a panic, and a long line
/// repeated per problem is quadratic output).
#[cfg(feature = "render")]
const LONG_LINE: usize = 200;
/// Characters shown before a label on a long line, and after it.
#[cfg(feature = "render")]
const AROUND: usize = 60;
/// Longest label drawn on a long line, in characters.
#[cfg(feature = "render")]
const MAX_LABEL: usize = 80;
/// Most labels drawn for one problem (a long `needs` cycle).
#[cfg(feature = "render")]
const MAX_LABELS: usize = 12;

/// The excerpt of a document one problem is drawn on: one line per
/// labelled line, long lines cut to a window around the label, each
/// reported to miette with its real line and column.
#[cfg(feature = "render")]
#[derive(Debug)]
struct Snippet {
    name: String,
    text: String,
    lines: Vec<SnippetLine>,
}

#[cfg(feature = "render")]
#[derive(Debug)]
struct SnippetLine {
    /// Byte range in `Snippet::text`, without the line break.
    start: usize,
    end: usize,
    /// Bytes of the `…` marker at the start (0 or 3).
    marker: usize,
    /// 0-based line in the document.
    line: usize,
    /// 0-based column (characters) in the document of the first character
    /// after the marker.
    column: usize,
}

#[cfg(feature = "render")]
impl Snippet {
    /// The excerpt and the problem with its spans moved into it: each
    /// labelled line with one line of context either side.
    fn of(name: &str, index: &LineIndex<'_>, problem: &Problem) -> (Snippet, Problem) {
        let text = index.text;
        let line_count = index.starts.len();
        // (start, end) of each label, drawn on its first line only.
        let labels: Vec<(usize, usize)> = std::iter::once(problem.span)
            .chain(problem.related.iter().map(|(s, _)| *s))
            .take(MAX_LABELS)
            .map(|span| {
                let start = index.clamp(span.offset());
                let line = index.line_of(start);
                // A label on a line's `\r\n` is drawn at the end of its text.
                let (_, text_end) = index.line_range(line);
                let start = start.min(text_end);
                // Up to and including the line break, which a label may mark.
                let line_end = index.starts.get(line + 1).copied().unwrap_or(text.len());
                let end = index
                    .clamp(span.offset().saturating_add(span.len()))
                    .min(line_end)
                    .max(start);
                (start, end)
            })
            .collect();
        // One window per labelled line, placed by its first label.
        let mut windows: std::collections::BTreeMap<usize, (usize, usize)> =
            std::collections::BTreeMap::new();
        let mut by_offset = labels.clone();
        by_offset.sort_unstable();
        for (start, end) in by_offset {
            let line = index.line_of(start);
            windows
                .entry(line)
                .or_insert_with(|| Self::window(index, line, start, end));
        }
        let mut shown: std::collections::BTreeMap<usize, (usize, usize)> = windows.clone();
        for line in windows.keys() {
            for near in [line.checked_sub(1), Some(line + 1)].into_iter().flatten() {
                // (The empty "line" after a final line break is not shown.)
                if near < line_count
                    && index.starts[near] < text.len()
                    && !shown.contains_key(&near)
                {
                    let (ls, le) = index.line_range(near);
                    let we = text[ls..le]
                        .char_indices()
                        .nth(LONG_LINE)
                        .map_or(le, |(i, _)| ls + i);
                    shown.insert(near, (ls, we));
                }
            }
        }
        let mut snippet = Snippet {
            name: name.to_string(),
            text: String::new(),
            lines: Vec::new(),
        };
        let mut placed: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        for (line, (ws, we)) in shown {
            let (ls, le) = index.line_range(line);
            let begin = snippet.text.len();
            let marker = if ws > ls { "…" } else { "" };
            snippet.text.push_str(marker);
            snippet.text.push_str(&text[ws..we]);
            if we < le {
                snippet.text.push('…');
            }
            placed.insert(line, snippet.lines.len());
            snippet.lines.push(SnippetLine {
                start: begin,
                end: snippet.text.len(),
                marker: marker.len(),
                line,
                column: index.chars_before(ws) - index.chars_before(ls),
            });
            snippet.text.push('\n');
        }
        let moved: Vec<Option<SourceSpan>> = labels
            .iter()
            .map(|(start, end)| {
                let line = index.line_of(*start);
                let (ws, we) = windows[&line];
                if *start < ws || *start > we {
                    return None; // elsewhere on a long line: not drawn
                }
                let sl = &snippet.lines[placed[&line]];
                let at = sl.start + sl.marker + (start - ws);
                // A window that reaches the line's end is followed by its
                // line break in the excerpt too.
                let (_, le) = index.line_range(line);
                let limit = if we == le {
                    (*end).min(we + 1)
                } else {
                    (*end).min(we)
                };
                Some(SourceSpan::from(at..at + (limit - start)))
            })
            .collect();
        let mut problem = problem.clone();
        problem.span = moved[0].unwrap_or_else(|| SourceSpan::from(0..0));
        problem.related = problem
            .related
            .iter()
            .zip(moved.iter().skip(1))
            .filter_map(|((_, label), m)| m.map(|s| (s, label.clone())))
            .collect();
        (snippet, problem)
    }

    /// The byte range of `line` shown for a label at `start..end`: the
    /// whole line when it is short, else a window around the label.
    fn window(index: &LineIndex<'_>, line: usize, start: usize, end: usize) -> (usize, usize) {
        let text = index.text;
        let (ls, le) = index.line_range(line);
        if index.chars_before(le) - index.chars_before(ls) <= LONG_LINE {
            return (ls, le);
        }
        let start = start.min(le);
        let end = end.clamp(start, le);
        let ws = text[ls..start]
            .char_indices()
            .rev()
            .nth(AROUND - 1)
            .map_or(ls, |(i, _)| ls + i);
        let label_end = text[start..end]
            .char_indices()
            .nth(MAX_LABEL)
            .map_or(end, |(i, _)| start + i);
        let we = text[label_end..le]
            .char_indices()
            .nth(AROUND)
            .map_or(le, |(i, _)| label_end + i);
        (ws, we)
    }
}

#[cfg(feature = "render")]
impl SourceCode for Snippet {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let k = self
            .lines
            .partition_point(|l| l.start <= span.offset())
            .checked_sub(1)
            .ok_or(miette::MietteError::OutOfBounds)?;
        let l = &self.lines[k];
        let offset = span.offset().clamp(l.start, l.end);
        if context_lines_before == 0 {
            let column = l.column
                + self.text[(l.start + l.marker).min(offset)..offset]
                    .chars()
                    .count();
            return Ok(Box::new(miette::MietteSpanContents::new_named(
                self.name.clone(),
                &self.text.as_bytes()[offset..l.end],
                SourceSpan::from(offset..l.end),
                l.line,
                column,
                0,
            )));
        }
        // Context comes only from neighbouring lines of the document that
        // the excerpt holds, so miette numbers every line right.
        let last_line = self
            .lines
            .partition_point(|x| x.start <= span.offset() + span.len())
            .saturating_sub(1)
            .max(k);
        let mut first = k;
        while first > 0
            && k - first < context_lines_before
            && self.lines[first - 1].line + 1 == self.lines[first].line
        {
            first -= 1;
        }
        let mut last = last_line;
        while last + 1 < self.lines.len()
            && last - last_line < context_lines_after
            && self.lines[last].line + 1 == self.lines[last + 1].line
        {
            last += 1;
        }
        let (a, b) = (self.lines[first].start, self.lines[last].end + 1);
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            &self.text.as_bytes()[a..b],
            SourceSpan::from(a..b),
            self.lines[first].line,
            0,
            // miette merges two contexts when the second starts at or
            // before this line: only ever within one run of neighbours.
            self.lines[last].line - self.lines[first].line + 1,
        )))
    }
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

    /// The document, for miette's own report handler; `None` when a line is
    /// too long for it (it panics past column 65,535): the problems are then
    /// reported without excerpts. [`ParseError::render`] has no such limit.
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.0.drawable.then_some(&self.0.source as &dyn SourceCode)
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

    fn line_col(text: &str, offset: usize) -> (usize, usize) {
        LineIndex::new(text).line_col(offset)
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncé d", 0), (1, 1));
        assert_eq!(line_col("ab\ncé d", 3), (2, 1));
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("ab", 99), (1, 3));
        // inside a multi-byte character: clamp to its start
        assert_eq!(line_col("é", 1), (1, 1));
        // across the 1 KiB blocks of the index
        let long = format!("{}\n{}x", "é".repeat(1500), "ü".repeat(700));
        assert_eq!(line_col(&long, 3000), (1, 1501));
        assert_eq!(line_col(&long, 3001 + 1400), (2, 701));
    }
}
