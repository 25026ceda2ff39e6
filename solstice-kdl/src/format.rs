//! `cidev fmt`: canonical layout that keeps comments.
//!
//! The layout comes from `kdl`'s autoformatter; every string and identifier
//! is then spelled by [`crate::print`], because `kdl` 6.7.1 writes some
//! characters raw (most control characters, U+007F, U+0085, U+2028, U+2029,
//! bidi controls, U+FEFF) and so produces text that no longer parses.
//! Finally the output is parsed again and must give the same [`Workflow`];
//! if it does not, the file is refused rather than rewritten wrongly.

use std::sync::Arc;

use kdl::{KdlDocument, KdlEntryFormat, KdlValue};
use miette::SourceSpan;

use crate::diagnostic::{Code, ParseError, Problem};
use crate::print::{ident, string_value};
use crate::{KdlVersion, ParseOptions, Workflow, parse_named, read_document, schema};

/// Formats a workflow file. The input must be a valid workflow; the output
/// is KDL v2 (v1 input is converted), keeps the comments, and parses back to
/// an equal [`Workflow`].
pub fn format(name: &str, text: &str, options: &ParseOptions) -> Result<String, ParseError> {
    // A byte order mark is allowed only as a file's first character and
    // means nothing; the canonical layout has none. (Editors do not show
    // it, so positions in errors are better counted without it too.) A
    // second one is a forbidden character, reported as `parse` does.
    if let Some(rest) = text.strip_prefix('\u{feff}')
        && !rest.starts_with('\u{feff}')
    {
        return format(name, rest, options);
    }
    let source: Arc<str> = Arc::from(text);
    let fail = |problems| ParseError::new(name, source.clone(), problems);
    let (mut doc, version) = read_document(text, options).map_err(fail)?;
    let mut problems = Vec::new();
    let mut omitted = 0;
    let Some(before) = schema::workflow(&doc, &mut problems, &mut omitted) else {
        return Err(ParseError::with_omitted(
            name,
            source.clone(),
            problems,
            omitted,
        ));
    };
    let mut kept = Vec::new();
    remember(&doc, text, version == KdlVersion::V2, &mut kept);
    if version == KdlVersion::V1 {
        doc.ensure_v2();
    }
    doc.autoformat();
    let mut kept = kept.into_iter();
    respell(&mut doc, 0, &mut kept);
    let mut out = doc.to_string();
    if version == KdlVersion::V1 {
        // U+000B is text in a KDL v1 comment but a line break in v2. Every
        // string and name in `out` is spelled with escapes, so a raw one can
        // only be in a comment, where a space means the same.
        out = out.replace('\u{b}', " ");
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    // The output may grow past the input limit only by escapes; allow that.
    let relaxed = ParseOptions {
        max_bytes: options.max_bytes.saturating_mul(8),
        ..*options
    };
    match parse_named(name, &out, &relaxed) {
        Ok(after) if after == before => match dropped_comment(text, version, &out) {
            None => Ok(out),
            Some(span) => Err(fail(vec![
                Problem::new(
                    Code::FormatWouldDropComment,
                    span,
                    "`format` cannot keep this comment where it is; the file was left unchanged",
                    "this comment",
                )
                .help("move the comment to a line of its own (before the node it is about), then format again"),
            ])),
        },
        // Commented-out (`/-`) text is kept as written, and `kdl` 4.7
        // accepts some v1 there that KDL v2 does not (a name such as
        // `-0.ep`): say so instead of reporting a bug.
        _ if version == KdlVersion::V1 && text.contains("/-") => Err(fail(vec![
            Problem::new(
                Code::V1CommentedOut,
                SourceSpan::from(0..0),
                "this KDL v1 file has commented-out (`/-`) text that is not valid KDL v2; `format` writes KDL v2 and cannot convert it, so the file was left unchanged",
                "here",
            )
            .help("delete the `/-` parts, or rewrite them in KDL v2, and format again"),
        ])),
        _ => Err(fail(vec![unformattable(before)])),
    }
}

/// The first comment (or commented-out `/-` text) of `input` that `output`
/// does not keep, if any. Compared word by word, whitespace aside and in
/// any order, so that a comment `format` moves or re-indents still counts
/// as kept; a word that went missing is a dropped comment.
fn dropped_comment(input: &str, version: KdlVersion, output: &str) -> Option<SourceSpan> {
    let before = crate::strict::comments(input, version == KdlVersion::V1);
    let after = crate::strict::comments(output, false);
    let mut kept: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for &(a, b) in &after {
        for w in output[a..b].split_whitespace() {
            *kept.entry(w).or_default() += 1;
        }
    }
    for &(a, b) in &before {
        for w in input[a..b].split_whitespace() {
            match kept.get_mut(w) {
                Some(n) if *n > 0 => *n -= 1,
                _ => return Some(SourceSpan::from(a..b)),
            }
        }
    }
    None
}

fn unformattable(_: Workflow) -> Problem {
    Problem::new(
        Code::Syntax,
        SourceSpan::from(0..0),
        "this file cannot be formatted without changing its meaning; it was left unchanged",
        "here",
    )
    .help("please report this file as a bug in `cidev fmt`")
}

/// What autoformat throws away but a person wants kept, per node in
/// document order: a blank line before it, and the spelling of each string
/// value when it is already safe (raw and multi-line strings stay as written).
struct Kept {
    blank_line_before: bool,
    string_reprs: Vec<Option<String>>,
    /// Block comments before entries, by entry index.
    entry_comments: Vec<Option<String>>,
    /// `/* ... */` after the last entry, and `// ...` ending the line.
    before_terminator: Option<String>,
    line_comment: Option<String>,
}

fn has_comment(s: &str) -> bool {
    s.contains("/*") || s.contains("//")
}

/// `kdl` 6.7.1 drops a comment that follows a block's closing `}` on the
/// same line; read it from the source instead.
fn comment_after_block(text: &str, node_end: usize) -> Option<String> {
    let rest = text.get(node_end..)?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let line = rest.split(['\n', '\r']).next().unwrap_or("");
    line.starts_with("//").then(|| line.trim_end().to_string())
}

fn remember(doc: &KdlDocument, text: &str, keep_reprs: bool, out: &mut Vec<Kept>) {
    for (i, node) in doc.nodes().iter().enumerate() {
        let leading = node.format().map_or("", |f| f.leading.as_str());
        // The previous node's terminator took one newline; another one right
        // away is a blank line.
        let blank_line_before = i > 0
            && matches!(
                leading.trim_start_matches([' ', '\t']).as_bytes().first(),
                Some(b'\n' | b'\r')
            );
        let string_reprs = node
            .entries()
            .iter()
            .map(|e| {
                let repr = e
                    .format()
                    .map(|f| f.value_repr.clone())
                    .filter(|r| !r.is_empty())?;
                let safe = keep_reprs
                    && matches!(e.value(), KdlValue::String(_))
                    && !repr
                        .chars()
                        .any(|c| c != '\n' && c != '\t' && crate::chars::needs_escape(c))
                    && !repr.contains('\r');
                safe.then_some(repr)
            })
            .collect();
        let entry_comments = node
            .entries()
            .iter()
            .map(|e| {
                e.format()
                    .map(|f| f.leading.trim().to_string())
                    .filter(|l| has_comment(l))
            })
            .collect();
        let format = node.format();
        let before_terminator = format
            .map(|f| f.before_terminator.trim().to_string())
            .filter(|t| has_comment(t));
        let line_comment = format
            .map(|f| {
                f.terminator
                    .trim_end_matches(['\n', '\r'])
                    .trim()
                    .to_string()
            })
            .filter(|t| t.starts_with("//"))
            // `kdl`'s v1 parser keeps a `//` comment ending the node's line
            // after the terminator, where it is printed in front of the next
            // node and comments it out (found by the `roundtrip` fuzz
            // target): it is this node's line comment.
            .or_else(|| {
                format
                    .map(|f| f.trailing.trim().to_string())
                    .filter(|t| t.starts_with("//") && !t.contains(['\n', '\r']))
            })
            .or_else(|| {
                node.children()?;
                comment_after_block(text, node.span().offset() + node.span().len())
            });
        out.push(Kept {
            blank_line_before,
            string_reprs,
            entry_comments,
            before_terminator,
            line_comment,
        });
        if let Some(children) = node.children() {
            remember(children, text, keep_reprs, out);
        }
    }
}

fn respell(doc: &mut KdlDocument, depth: usize, kept: &mut std::vec::IntoIter<Kept>) {
    for node in doc.nodes_mut() {
        let memory = kept.next();
        if let Some(f) = node.format_mut() {
            // `kdl` 6.7.1's autoformat ends the text of a commented-out
            // (`/-`) entry with a newline of its own, before the terminator:
            // a blank line that grew by one each time a file was formatted.
            // (Not after a `\`, which would join the next line.)
            let before = f.before_terminator.trim_end();
            if !before.ends_with('\\') {
                f.before_terminator = before.to_string();
            }
        }
        if let Some(m) = &memory
            && let Some(f) = node.format_mut()
        {
            if m.blank_line_before {
                f.leading.insert(0, '\n');
            }
            if let Some(c) = &m.before_terminator {
                f.before_terminator = format!(" {c}");
            }
            if let Some(c) = &m.line_comment {
                f.before_terminator.push(' ');
                f.terminator = format!("{c}\n");
                if f.trailing.trim() == c.as_str() {
                    f.trailing.clear();
                }
            }
        }
        let name = node.name().value().to_string();
        node.name_mut().set_repr(ident(&name));
        if let Some(ty) = node.ty_mut() {
            let t = ty.value().to_string();
            ty.set_repr(ident(&t));
        }
        for (i, entry) in node.entries_mut().iter_mut().enumerate() {
            let original = memory
                .as_ref()
                .and_then(|m| m.string_reprs.get(i).cloned().flatten());
            if let Some(key) = entry.name_mut() {
                let k = key.value().to_string();
                key.set_repr(ident(&k));
            }
            if let Some(ty) = entry.ty_mut() {
                let t = ty.value().to_string();
                ty.set_repr(ident(&t));
            }
            let comment = memory
                .as_ref()
                .and_then(|m| m.entry_comments.get(i).cloned().flatten());
            let leading = match &comment {
                Some(c) => format!(" {c} "),
                None => " ".to_string(),
            };
            let repr = match entry.value() {
                KdlValue::String(s) => Some(original.unwrap_or_else(|| string_value(s, depth))),
                _ if comment.is_some() => Some(entry.value().to_string()),
                _ => None,
            };
            if let Some(value_repr) = repr {
                // A property's key is printed from its name; `value_repr` is the value alone.
                entry.set_format(KdlEntryFormat {
                    value_repr,
                    leading,
                    ..Default::default()
                });
            }
        }
        if let Some(children) = node.children_mut() {
            respell(children, depth + 1, kept);
        }
    }
}
