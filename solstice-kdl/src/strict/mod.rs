//! A linear-time KDL syntax checker that decides what the `kdl` crate is
//! allowed to see.
//!
//! `kdl` 6.7.1's v2 parser recovers from syntax errors by recursing once per
//! stuck character (its `document` parser calls itself), and its recovery can
//! take seconds on a one-kilobyte file (a fuzzer found 1,159 bytes that gave
//! 41,627 diagnostics in 13 s). So hostile text must never reach that
//! recovery. This module checks KDL v2 syntax itself, with `kdl`'s own
//! character tables and rules, and reports the syntax errors; only text it
//! accepts is handed to `kdl`, which then has nothing to recover from. The
//! fuzz target `parse` checks the one property that matters: whatever this
//! accepts, `kdl` parses without error.
//!
//! Upstream reports this works around: kdl-org/kdl-rs#177 (malformed
//! input with nested slashdashed children takes time exponential in its
//! length: 132 bytes, 78 s), and what our fuzzing found and
//! `tests/hostile/` keeps (the recursion of the v2 parser's recovery, the
//! 13-second recovery, the v1 parser's panics). Once `kdl` recovers in
//! linear time and without recursion, this check can shrink to the limits
//! the guards do not cover; until then every byte `kdl` sees has passed it.
//!
//! Where `kdl` and the KDL specification disagree, this follows `kdl` or is
//! stricter. The v1 mode is deliberately narrower (ASCII only): `kdl` 4.7's
//! v1 parser panics on some malformed input, so it too only gets text known
//! to be well formed, or small text under `catch_unwind`.

use crate::chars::{is_disallowed, is_newline as is_newline_char, is_unicode_space};

/// Where and why the text is not well-formed KDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub offset: usize,
    pub message: &'static str,
}

type R<T = ()> = Result<T, Rejection>;

/// Most block nesting this checker follows (the guard allows fewer).
const MAX_DEPTH: usize = 64;
/// Most errors collected before giving up; later ones are usually echoes.
const MAX_ERRORS: usize = 20;
/// Most `/-` blocks nested in each other: `kdl` takes twice as long for
/// each level (found by fuzzing: 5 KB took 1.9 s).
const MAX_SLASHDASH_BLOCKS: usize = 3;

mod nodes;
mod values;

/// Checks the whole document; an empty result means `kdl` may parse it.
pub(crate) fn check(text: &str, v1: bool) -> Vec<Rejection> {
    let mut p = Checker::new(text, v1);
    // v1 mode knows only CR and LF as line breaks: the rarer ones (which
    // end a `//` comment in `kdl` 4.7) are left to the careful path.
    if v1 && let Some(at) = text.find(['\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}']) {
        return vec![Rejection {
            offset: at,
            message: "unusual line break character",
        }];
    }
    if let Err(e) = p.nodes(false) {
        p.errors.push(e);
    }
    p.errors
}

/// Byte ranges of the comments of a text `check` accepts: `// ...` (without
/// the line break), `/* ... */`, and each `/-` with what it comments out.
/// A comment inside commented-out text is listed too.
pub(crate) fn comments(text: &str, v1: bool) -> Vec<(usize, usize)> {
    let mut p = Checker::new(text, v1);
    p.comments = Some(Vec::new());
    let _ = p.nodes(false);
    p.comments.unwrap_or_default()
}

/// How a node ended.
#[derive(PartialEq, Eq)]
enum End {
    /// A line break, a line comment or the end of the text.
    Line,
    Semicolon,
    /// The `}` of the enclosing block (not consumed).
    Brace,
}

struct Checker<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
    depth: usize,
    slashdash_blocks: usize,
    v1: bool,
    errors: Vec<Rejection>,
    /// Where comments are, when asked for (`comments`).
    comments: Option<Vec<(usize, usize)>>,
}

impl<'a> Checker<'a> {
    pub(super) fn err<T>(&self, message: &'static str) -> R<T> {
        Err(Rejection {
            offset: self.i.min(self.s.len()),
            message,
        })
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    pub(super) fn peek_at(&self, n: usize) -> Option<u8> {
        self.s.get(self.i + n).copied()
    }

    pub(super) fn char_at(&self, i: usize) -> Option<char> {
        self.text.get(i..).and_then(|t| t.chars().next())
    }

    pub(super) fn starts(&self, pat: &[u8]) -> bool {
        self.s[self.i.min(self.s.len())..].starts_with(pat)
    }

    pub(super) fn space_at(&self, i: usize) -> Option<usize> {
        let c = self.char_at(i)?;
        let ok = if self.v1 {
            matches!(c, ' ' | '\t')
        } else {
            is_unicode_space(c)
        };
        ok.then(|| c.len_utf8())
    }

    /// Length of the line break at `i`, if there is one.
    pub(super) fn newline_at(&self, i: usize) -> Option<usize> {
        if self.s[i.min(self.s.len())..].starts_with(b"\r\n") {
            return Some(2);
        }
        let c = self.char_at(i)?;
        let ok = if self.v1 {
            matches!(c, '\r' | '\n')
        } else {
            is_newline_char(c)
        };
        ok.then(|| c.len_utf8())
    }

    pub(super) fn is_ident_char(&self, c: char) -> bool {
        if self.v1 {
            return c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        }
        !is_unicode_space(c)
            && !is_newline_char(c)
            && !is_disallowed(c)
            && !matches!(
                c,
                '=' | '\\' | '/' | '(' | ')' | '{' | '}' | '[' | ']' | ';' | '"' | '#'
            )
    }

    pub(super) fn at_newline(&self) -> bool {
        self.newline_at(self.i).is_some()
    }

    pub(super) fn eat_newline(&mut self) {
        if let Some(n) = self.newline_at(self.i) {
            self.i += n;
        }
    }

    pub(super) fn spaces(&mut self) -> R<bool> {
        let start = self.i;
        loop {
            if let Some(n) = self.space_at(self.i) {
                self.i += n;
            } else if self.starts(b"/*") {
                self.block_comment()?;
            } else {
                return Ok(self.i > start);
            }
        }
    }

    /// `node-space`: spaces, block comments and line continuations.
    pub(super) fn node_space(&mut self) -> R<bool> {
        let start = self.i;
        loop {
            self.spaces()?;
            // v1: line continuations are left to the guarded careful path.
            if self.peek() != Some(b'\\') || self.v1 {
                return Ok(self.i > start);
            }
            // escline := '\' ws* (single-line-comment | newline | eof) ws*
            self.i += 1;
            self.spaces()?;
            if self.starts(b"//") {
                self.line_comment();
            } else if self.at_newline() {
                self.eat_newline();
            } else if self.i < self.s.len() {
                return self.err("a `\\` outside a string continues the line and must end it");
            }
        }
    }

    pub(super) fn new(text: &'a str, v1: bool) -> Self {
        Checker {
            s: text.as_bytes(),
            text,
            // A leading byte order mark is not part of the document.
            i: if text.starts_with('\u{feff}') { 3 } else { 0 },
            depth: 0,
            slashdash_blocks: 0,
            v1,
            errors: Vec::new(),
            comments: None,
        }
    }

    pub(super) fn record(&mut self, start: usize) {
        if let Some(c) = &mut self.comments {
            c.push((start, self.i));
        }
    }

    pub(super) fn block_comment(&mut self) -> R {
        let start = self.i;
        let mut nested = 0usize;
        while self.i < self.s.len() {
            if self.starts(b"/*") {
                nested += 1;
                self.i += 2;
            } else if self.starts(b"*/") {
                nested -= 1;
                self.i += 2;
                if nested == 0 {
                    self.record(start);
                    return Ok(());
                }
            } else {
                self.i += 1;
            }
        }
        self.i = start;
        self.err("this block comment is never closed")
    }

    pub(super) fn line_comment(&mut self) {
        let start = self.i;
        while self.i < self.s.len() && !self.at_newline() {
            self.i += 1;
        }
        self.record(start);
        self.eat_newline();
    }

    /// `line-space`: node space, line breaks and line comments.
    pub(super) fn line_space(&mut self) -> R {
        loop {
            self.node_space()?;
            if self.at_newline() {
                self.eat_newline();
            } else if self.starts(b"//") {
                self.line_comment();
            } else {
                return Ok(());
            }
        }
    }

    /// Skips to the next line break, to resume checking after an error.
    /// (Byte steps are safe: no line break byte occurs inside a UTF-8
    /// sequence, and the multi-byte line breaks are found by `at_newline`
    /// only at character starts, which byte stepping also visits.)
    pub(super) fn skip_line(&mut self) {
        while self.i < self.s.len() && !self.at_newline() {
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    fn ok(text: &str, v1: bool) -> bool {
        check(text, v1).is_empty()
    }

    #[test]
    fn accepts_kdl_v2() {
        for text in [
            "workflow name=\"CI\" {\n  job id=build runs_on=\"x\" {\n    step run=\"make\"\n  }\n}\n",
            "a{}",
            "a 1 -2 +3 1_000 0x1f 0o7 0b1 1.5 1e5 1.5E+10 #true #false #null #inf #-inf #nan",
            "a x = 1 y=(t)\"s\" (u)2 (t) 3 ( t )4",
            "(t)a; b; c { d; e }",
            "a \"esc \\n \\t \\\" \\\\ \\s \\u{1F600}\"",
            "a #\"raw \\ \"# ##\"x\"#\"##",
            "a run=\"\"\"\n    one\n      two\n\n    \"\"\"",
            "a run=#\"\"\"\n  raw \\ \"\"\n  \"\"\"#",
            "/- a\nb /-c /- { x }\n// comment\nd /* c */ e // c\n",
            "a {\n  /-b 1\n}\n",
            "\u{feff}a",
            "node \\\n  arg1 \\// comment\n  arg2\n",
            "node foo /-\nnot-a-node bar\n",
            "?15 -- .a +a -.b ⌘ é=1",
            "node \"1\\\n\n\n2\"",
            "node \"\"\"\n  foo \\\nbar\n  baz\n  \\   \"\"\"",
            "a\u{3000}b\u{2028}c\u{b}d",
        ] {
            assert!(ok(text, false), "{text:?}: {:?}", check(text, false));
        }
    }

    #[test]
    fn refuses_malformed_kdl_v2() {
        for bad in [
            "a; ; ",
            "; a",
            "}",
            "a }",
            "a {",
            "a =",
            "a b=",
            "a 1a",
            "a \"x",
            "a \"x\ny\"",
            "a \"\\u{d800}\"",
            "a \"\\/\"",
            "a 0x_1",
            "a 1.",
            "a true",
            "a {} b",
            "a \\ b",
            "a \"\"\"x\"\"\"",
            "a \"\"\"\n  b\n c\n  \"\"\"",
            "a \"\"\"\n  b \"\"\"",
            "a 1234567890123456789012345678901",
            "a\"x\"",
            "a #\"\"\"one\"\"\"#",
            "a \"x\"/-{}",
            "a // x\u{b}/-1\n",
            "/-\nnode 1 2 ;\n",
            "a { /- b }",
            "node foo /-{\n}/-{\n}\n",
            "de #\"\"\"\n\"\n\"\"\"#",
            "de #\"\"\"\"#",
            "a /- {\nb /- {\nc /- {\nd /- {\n}\n}\n}\n}\n",
            "a /* unclosed",
            "a .5",
            "a #maybe",
        ] {
            assert!(!ok(bad, false), "{bad:?} accepted");
        }
    }

    #[test]
    fn reports_several_errors_line_by_line() {
        let errors = check("a {\n  b \"x\n  c 1a\n  d\n}\n", false);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn v1_mode() {
        for text in [
            "workflow name=\"x\" {\n  job id=\"a\" retry=2 {\n    step run=r#\"a \"b\"\"# ok=true\n  }\n}\n",
            "a 1 \"s\" true false null r\"raw\" (t)\"x\" k=(t)1 \"q k\"=\"v\"",
            "a \"\\/\"",
        ] {
            assert!(ok(text, true), "{text:?}: {:?}", check(text, true));
        }
        for bad in [
            "node {foo;bar;baz}\n",
            "a { b {\n}}\n",
            "a #true",
            "a x = 1",
            "a bare",
            "a{}",
            "a \"\"\"\n x\n \"\"\"",
            "a \"\\s\"",
            "a 12345678901234567890",
            "node (false\n",
            "ode 99.999990000000000000000002",
            "foo123<bar>foee\n",
            "node //-\u{c}-\u{c}{\nno",
            "\\\n",
            "a \\\n b",
        ] {
            assert!(!ok(bad, true), "{bad:?} accepted");
        }
    }
}
