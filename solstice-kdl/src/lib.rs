//! # solstice-kdl
//!
//! The Solstice CI workflow language: KDL text (v2, or v1) in, a typed and
//! validated [`Workflow`] out, or a [`ParseError`] holding **every** problem
//! of the document as [`miette`] diagnostics with stable codes
//! (`solstice::unknown_property`, ...) and labels on the exact spans.
//!
//! The crate has no async runtime and does no I/O, so an editor plugin or a
//! linter can depend on it alone. The reference of the language is
//! `docs/workflow-language.md` in the repository.
//!
//! ```
//! let text = r#"
//! workflow name="Solstice CI" {
//!   job id="build" runs_on="illumos-stable" {
//!     step name="Format" run="cargo fmt --check"
//!     step name="Test" run="cargo test --workspace"
//!   }
//!   job id="lint" runs_on="ubuntu-22.04" {
//!     step name="Lint" run="ruff check ."
//!   }
//! }
//! "#;
//! let workflow = solstice_kdl::parse(text).unwrap();
//! assert_eq!(workflow.jobs[1].steps[0].run, "ruff check .");
//!
//! let plan = workflow.plan().unwrap();
//! assert_eq!(plan.jobs.len(), 2);
//!
//! let broken = solstice_kdl::parse("workflow { job id=\"a\" { stpe run=\"x\" } }").unwrap_err();
//! let typo = broken.problems().iter().find(|p| p.code.as_str() == "solstice::unknown_node").unwrap();
//! assert_eq!(typo.help.as_deref(), Some("did you mean `step`?"));
//! ```
//!
//! ## Hostile input
//!
//! Workflow files come from whoever opened the pull request. Every entry
//! point returns `Ok` or `Err` in bounded time and memory: files over
//! [`ParseOptions::max_bytes`] and invalid UTF-8 are refused up front, and
//! nesting deeper than [`ParseOptions::max_depth`] is refused before the KDL
//! parser (which recurses per level) sees it.

mod chars;
mod cron;
mod dag;
mod diagnostic;
mod format;
mod guard;
pub mod matrix;
mod model;
mod plan;
mod print;
pub mod recipe;
mod schema;
mod strict;
pub mod text;
mod trigger;

use std::sync::Arc;

use kdl::KdlDocument;
use miette::SourceSpan;

pub use cron::Schedule as CronSchedule;
pub use diagnostic::{Code, MAX_PROBLEMS, ParseError, Problem, ProblemRecord};
pub use format::format;
/// The KDL crate the documents of [`parse_document`] come from.
pub use kdl;
pub use model::{
    Axis, Duration, DurationError, Env, Job, MAX_DEFAULT_NAME, Matrix, RefFilter, Step, Triggers,
    Workflow,
};
pub use plan::{
    MAX_LABEL_BYTES, MAX_RUN_JOBS, MAX_RUN_NEEDS, Plan, PlanError, PlannedJob, UnknownJob,
    valid_label,
};
pub use print::{ident as print_ident, quote as print_string};
pub use schema::{MAX_MATRIX_COMBINATIONS, MAX_RETRY};
pub use trigger::{Event, GitRef};

/// The default file name when none is given.
pub const DEFAULT_FILE_NAME: &str = "workflow.kdl";

/// Limits applied before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseOptions {
    /// Largest accepted file, in bytes. Default 1 MiB.
    pub max_bytes: usize,
    /// Deepest accepted nesting of `{ }` blocks and `/* */` comments. Default 16
    /// (a workflow needs 4; `kdl` needs about 34 KB of stack per level in a
    /// debug build, so 16 levels stay well inside a 2 MiB thread).
    pub max_depth: usize,
    /// Read the text as this KDL version only. `None` (the default): a
    /// `/- kdl-version N` first line decides, otherwise v2 with v1 fallback.
    pub version: Option<KdlVersion>,
}

impl ParseOptions {
    /// These options with another size limit.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// These options with another nesting limit.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// These options reading only `version`.
    pub fn with_version(mut self, version: KdlVersion) -> Self {
        self.version = Some(version);
        self
    }
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_bytes: 1024 * 1024,
            max_depth: 16,
            version: None,
        }
    }
}

/// Which KDL syntax a document was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KdlVersion {
    /// KDL 1.0
    V1,
    /// KDL 2.0
    V2,
}

/// Parses and validates workflow text with the default limits.
pub fn parse(text: &str) -> Result<Workflow, ParseError> {
    parse_named(DEFAULT_FILE_NAME, text, &ParseOptions::default())
}

/// Parses and validates workflow text; `name` is used in diagnostics.
pub fn parse_named(name: &str, text: &str, options: &ParseOptions) -> Result<Workflow, ParseError> {
    let source: Arc<str> = Arc::from(text);
    let fail = |problems| ParseError::new(name, source.clone(), problems);
    let (doc, _) = read_document(text, options).map_err(fail)?;
    let mut problems = Vec::new();
    let mut omitted = 0;
    schema::workflow(&doc, &mut problems, &mut omitted)
        .ok_or_else(|| ParseError::with_omitted(name, source.clone(), problems, omitted))
}

/// Parses and validates raw bytes (as read from a file or a forge API):
/// oversized files and invalid UTF-8 are refused with a diagnostic.
pub fn parse_bytes(
    name: &str,
    bytes: &[u8],
    options: &ParseOptions,
) -> Result<Workflow, ParseError> {
    let text = decode(name, bytes, options)?;
    parse_named(name, text, options)
}

/// Checks size and encoding of raw bytes and returns them as text.
pub fn decode<'a>(
    name: &str,
    bytes: &'a [u8],
    options: &ParseOptions,
) -> Result<&'a str, ParseError> {
    if bytes.len() > options.max_bytes {
        return Err(ParseError::new(
            name,
            Arc::from(""),
            vec![too_large(bytes.len(), options.max_bytes)],
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let lossy: Arc<str> = Arc::from(String::from_utf8_lossy(bytes).as_ref());
        let problem = Problem::new(
            Code::InvalidUtf8,
            SourceSpan::from(at..at + 1),
            format!("the file is not valid UTF-8 (byte {at})"),
            "invalid UTF-8 here",
        )
        .help("save the workflow as UTF-8");
        ParseError::new(name, lossy, vec![problem])
    })
}

/// Reads any KDL document behind the same guards as a workflow (size,
/// encoding, nesting, forbidden characters; KDL v2 with v1 as the
/// fallback), for other files written in KDL: the daemons' configuration
/// is one. The errors render like a workflow's.
pub fn parse_document(
    name: &str,
    bytes: &[u8],
    options: &ParseOptions,
) -> Result<(KdlDocument, Arc<str>), ParseError> {
    let text = decode(name, bytes, options)?;
    let shared: Arc<str> = Arc::from(text);
    match read_document(text, options) {
        Ok((doc, _)) => Ok((doc, shared)),
        Err(problems) => Err(ParseError::new(name, shared, problems)),
    }
}

fn too_large(len: usize, max: usize) -> Problem {
    Problem::new(
        Code::TooLarge,
        SourceSpan::from(0..0),
        format!("the file is {len} bytes, more than the limit of {max} bytes"),
        "file too large",
    )
    .help("split the workflow, or move long scripts into files in the repository")
}

/// Applies the guards, then parses KDL v2, falling back to v1. A first line
/// of `/- kdl-version 1` or `/- kdl-version 2` selects the version outright.
pub(crate) fn read_document(
    text: &str,
    options: &ParseOptions,
) -> Result<(KdlDocument, KdlVersion), Vec<Problem>> {
    if text.len() > options.max_bytes {
        return Err(vec![too_large(text.len(), options.max_bytes)]);
    }
    if let Err(deep) = guard::check_depth(text, options.max_depth) {
        if deep.depth == usize::MAX {
            return Err(vec![
                Problem::new(
                    Code::TooDeep,
                    SourceSpan::from(deep.offset..deep.offset + 1),
                    format!(
                        "a block comment with more than {} `*` or `/`",
                        guard::MAX_COMMENT_PARTS
                    ),
                    "too many parts",
                )
                .help("use `//` line comments for banners and long commented-out text"),
            ]);
        }
        if deep.depth == 0 {
            return Err(vec![
                Problem::new(
                    Code::TooDeep,
                    SourceSpan::from(deep.offset..deep.offset + 2),
                    format!("more than {} `/-` in a row", guard::MAX_SLASHDASH_RUN),
                    "one `/-` too many",
                )
                .help("one `/-` comments out the whole node, entry or block after it"),
            ]);
        }
        return Err(vec![
            Problem::new(
                Code::TooDeep,
                SourceSpan::from(deep.offset..deep.offset + 1),
                format!("blocks nest more than {} levels deep", options.max_depth),
                format!("level {} starts here", deep.depth),
            )
            .help("a workflow needs only a few levels: workflow > job > step"),
        ]);
    }
    if let Some((at, c)) = forbidden_char(text) {
        return Err(vec![
            Problem::new(
                Code::Syntax,
                SourceSpan::from(at..at + c.len_utf8()),
                format!("U+{:04X} may not appear in a KDL document", c as u32),
                "forbidden character",
            )
            .help("write it as an escape inside a string, e.g. \\u{7f}"),
        ]);
    }
    let first_line = text
        .trim_start_matches('\u{feff}')
        .lines()
        .next()
        .unwrap_or("");
    let marker = first_line.trim().strip_prefix("/-").map(str::trim);
    let forced = match options.version {
        Some(KdlVersion::V1) => Some("kdl-version 1"),
        Some(KdlVersion::V2) => Some("kdl-version 2"),
        None => marker,
    };
    match forced {
        Some("kdl-version 1") => return parse_v1(text).map(|d| (d, KdlVersion::V1)),
        Some("kdl-version 2") => return parse_v2(text).map(|d| (d, KdlVersion::V2)),
        _ => {}
    }
    match parse_v2(text) {
        Ok(doc) => Ok((doc, KdlVersion::V2)),
        Err(v2_problems) => match parse_v1(text) {
            Ok(doc) => Ok((doc, KdlVersion::V1)),
            Err(v1_problems) if looks_like_v1(text) => Err(v1_problems),
            Err(_) => Err(v2_problems),
        },
    }
}

/// Runs one of `kdl`'s parsers; a panic inside it (`kdl` 4.7's v1 parser
/// slices out of bounds on some malformed input) becomes a syntax error.
fn guarded(
    parse: fn(&str) -> Result<KdlDocument, kdl::KdlError>,
    text: &str,
) -> Result<KdlDocument, Vec<Problem>> {
    match std::panic::catch_unwind(|| parse(text)) {
        Ok(result) => result.map_err(syntax),
        Err(_) => Err(vec![
            Problem::new(
                Code::Syntax,
                SourceSpan::from(0..0),
                "invalid KDL",
                "the KDL parser gave up here",
            )
            .help(
                "check the file with a KDL v2 validator; this input also crashed the KDL v1 parser",
            ),
        ]),
    }
}

/// KDL v1: text in the strict v1 subset goes straight to the parser; other
/// text only when small, and under `catch_unwind`.
fn parse_v1(text: &str) -> Result<KdlDocument, Vec<Problem>> {
    let rejections = strict::check(text, true);
    if rejections.is_empty() || text.len() <= CAREFUL_MAX_BYTES {
        return guarded(KdlDocument::parse_v1, text);
    }
    Err(rejections
        .iter()
        .map(|r| strict_rejection(text, r, "KDL v1"))
        .collect())
}

fn strict_rejection(text: &str, rejection: &strict::Rejection, version: &str) -> Problem {
    let mut at = rejection.offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let end = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
    Problem::new(
        Code::Syntax,
        SourceSpan::from(at..end),
        format!("invalid {version}: {}", rejection.message),
        "here",
    )
}

/// Largest text that goes to the v1 parser without passing the strict v1
/// check (under `catch_unwind`); it has no error recovery and is linear.
const CAREFUL_MAX_BYTES: usize = 64 * 1024;

/// KDL v2: `strict` checks the syntax and reports its errors; only text it
/// accepts reaches `kdl`, whose error recovery can recurse and take seconds.
fn parse_v2(text: &str) -> Result<KdlDocument, Vec<Problem>> {
    let rejections = strict::check(text, false);
    if rejections.is_empty() {
        return guarded(KdlDocument::parse_v2, text);
    }
    Err(rejections
        .iter()
        .map(|r| strict_rejection(text, r, "KDL"))
        .collect())
}

/// The first code point that KDL v2 forbids anywhere in a document
/// (control characters other than whitespace and newlines, U+007F, bidi
/// controls, and U+FEFF except as the first character). `kdl` 6.7.1 lets
/// U+007F through; Solstice refuses all of them, in v1 documents too.
fn forbidden_char(text: &str) -> Option<(usize, char)> {
    text.char_indices()
        .find(|&(i, c)| chars::is_disallowed(c) && !(c == '\u{FEFF}' && i == 0))
}

/// When neither version parses, whose errors to show: v1 when the text
/// uses spellings only v1 has.
fn looks_like_v1(text: &str) -> bool {
    if text.contains("#true")
        || text.contains("#false")
        || text.contains("#null")
        || text.contains("\"\"\"")
    {
        return false;
    }
    // A v1 raw string `r"..."` or `r#"..."#` starts a token: `r` after space or `=`.
    let raw = text.match_indices('r').any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = &text[i + 1..];
        before.is_none_or(|c| c.is_whitespace() || c == '=')
            && (after.starts_with('"') || after.starts_with("#\""))
    });
    raw || ["=true", "=false", "=null"]
        .iter()
        .any(|s| text.contains(s))
}

fn syntax(err: kdl::KdlError) -> Vec<Problem> {
    let mut problems: Vec<Problem> = err
        .diagnostics
        .into_iter()
        .map(|d| {
            let message = d
                .message
                .unwrap_or_else(|| "invalid KDL syntax".to_string());
            let label = d.label.unwrap_or_else(|| "here".to_string());
            let p = Problem::new(Code::Syntax, d.span, message, label);
            match d.help {
                Some(h) => p.help(h),
                None => p,
            }
        })
        .collect();
    if problems.is_empty() {
        problems.push(Problem::new(
            Code::Syntax,
            SourceSpan::from(0..0),
            "invalid KDL syntax",
            "here",
        ));
    }
    problems
}

/// Hooks for the fuzz targets; not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    /// True when the text passes the pre-parse guards and the strict
    /// recogniser (of KDL v1 when `v1`, else v2), i.e. when `kdl` is called
    /// on it directly. The property the fuzzer checks: `kdl` then parses it
    /// without error or panic.
    pub fn strict_path(text: &str, v1: bool) -> bool {
        let options = crate::ParseOptions::default();
        text.len() <= options.max_bytes
            && crate::guard::check_depth(text, options.max_depth).is_ok()
            && crate::forbidden_char(text).is_none()
            && crate::strict::check(text, v1).is_empty()
    }

    /// The `//` and `/* */` comments of a text the strict recogniser
    /// accepts, as written (not the `/-` parts).
    pub fn comment_texts(text: &str, v1: bool) -> Vec<&str> {
        crate::strict::comments(text, v1)
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .filter(|c| c.starts_with("//") || c.starts_with("/*"))
            .collect()
    }
}
