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
    let source: Arc<str> = Arc::from(text);
    let fail = |problems| ParseError::new(name, source.clone(), problems);
    let (mut doc, version) = read_document(text, options).map_err(fail)?;
    let mut problems = Vec::new();
    let Some(before) = schema::workflow(&doc, &mut problems) else {
        return Err(fail(problems));
    };
    if version == KdlVersion::V1 {
        doc.ensure_v2();
    }
    doc.autoformat();
    respell(&mut doc, 0);
    let mut out = doc.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    // The output may grow past the input limit only by escapes; allow that.
    let relaxed = ParseOptions {
        max_bytes: options.max_bytes.saturating_mul(8),
        ..*options
    };
    match parse_named(name, &out, &relaxed) {
        Ok(after) if after == before => Ok(out),
        _ => Err(fail(vec![unformattable(before)])),
    }
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

fn respell(doc: &mut KdlDocument, depth: usize) {
    for node in doc.nodes_mut() {
        let name = node.name().value().to_string();
        node.name_mut().set_repr(ident(&name));
        if let Some(ty) = node.ty_mut() {
            let t = ty.value().to_string();
            ty.set_repr(ident(&t));
        }
        for entry in node.entries_mut() {
            if let Some(key) = entry.name_mut() {
                let k = key.value().to_string();
                key.set_repr(ident(&k));
            }
            if let Some(ty) = entry.ty_mut() {
                let t = ty.value().to_string();
                ty.set_repr(ident(&t));
            }
            if let KdlValue::String(s) = entry.value() {
                let repr = string_value(s, depth);
                entry.set_format(KdlEntryFormat {
                    value_repr: repr,
                    leading: " ".into(),
                    ..Default::default()
                });
            }
        }
        if let Some(children) = node.children_mut() {
            respell(children, depth + 1);
        }
    }
}
