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
    fn err<T>(&self, message: &'static str) -> R<T> {
        Err(Rejection {
            offset: self.i.min(self.s.len()),
            message,
        })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.s.get(self.i + n).copied()
    }

    fn char_at(&self, i: usize) -> Option<char> {
        self.text.get(i..).and_then(|t| t.chars().next())
    }

    fn starts(&self, pat: &[u8]) -> bool {
        self.s[self.i.min(self.s.len())..].starts_with(pat)
    }

    fn space_at(&self, i: usize) -> Option<usize> {
        let c = self.char_at(i)?;
        let ok = if self.v1 {
            matches!(c, ' ' | '\t')
        } else {
            is_unicode_space(c)
        };
        ok.then(|| c.len_utf8())
    }

    /// Length of the line break at `i`, if there is one.
    fn newline_at(&self, i: usize) -> Option<usize> {
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

    fn is_ident_char(&self, c: char) -> bool {
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

    fn at_newline(&self) -> bool {
        self.newline_at(self.i).is_some()
    }

    fn eat_newline(&mut self) {
        if let Some(n) = self.newline_at(self.i) {
            self.i += n;
        }
    }

    fn spaces(&mut self) -> R<bool> {
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
    fn node_space(&mut self) -> R<bool> {
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

    fn new(text: &'a str, v1: bool) -> Self {
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

    fn record(&mut self, start: usize) {
        if let Some(c) = &mut self.comments {
            c.push((start, self.i));
        }
    }

    fn block_comment(&mut self) -> R {
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

    fn line_comment(&mut self) {
        let start = self.i;
        while self.i < self.s.len() && !self.at_newline() {
            self.i += 1;
        }
        self.record(start);
        self.eat_newline();
    }

    /// `line-space`: node space, line breaks and line comments.
    fn line_space(&mut self) -> R {
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
    fn skip_line(&mut self) {
        while self.i < self.s.len() && !self.at_newline() {
            self.i += 1;
        }
    }

    fn nodes(&mut self, in_block: bool) -> R {
        loop {
            self.line_space()?;
            let result = match self.peek() {
                None if in_block => return self.err("this block is never closed with `}`"),
                None => return Ok(()),
                Some(b'}') if in_block => return Ok(()),
                Some(b'}') => self.err("this `}` closes no block"),
                Some(b'/') if self.peek_at(1) == Some(b'-') => {
                    let start = self.i;
                    self.i += 2;
                    let result = self
                        .line_space()
                        .and_then(|()| self.node())
                        .and_then(|end| match end {
                            // `kdl` ends a commented-out node only at a line break.
                            End::Semicolon | End::Brace => {
                                self.err("end a commented-out node with a line break")
                            }
                            End::Line => Ok(()),
                        });
                    self.record(start);
                    result
                }
                Some(_) => self.node().map(|_| ()),
            };
            if let Err(e) = result {
                self.errors.push(e);
                if self.errors.len() >= MAX_ERRORS {
                    return Ok(());
                }
                let before = self.i;
                self.skip_line();
                if self.i == before && self.i < self.s.len() && !self.at_newline() {
                    self.i += self.char_at(self.i).map_or(1, char::len_utf8);
                }
            }
        }
    }

    fn node(&mut self) -> R<End> {
        if self.peek() == Some(b'(') {
            self.type_annotation()?;
            if self.v1 {
                // v1 allows no space between the type and the name.
            } else {
                self.node_space()?;
            }
        }
        self.string("a node name")?;
        loop {
            let spaced = self.node_space()?;
            match self.peek() {
                None => return Ok(End::Line),
                Some(b';') => {
                    self.i += 1;
                    return Ok(End::Semicolon);
                }
                // KDL v1 wants `;` or a line break before a block's `}`.
                Some(b'}') if !self.v1 => return Ok(End::Brace),
                Some(b'/') if self.peek_at(1) == Some(b'/') => {
                    self.line_comment();
                    return Ok(End::Line);
                }
                _ if self.at_newline() => {
                    self.eat_newline();
                    return Ok(End::Line);
                }
                Some(b'{') if spaced || !self.v1 => {
                    self.children()?;
                    return self.after_children(true);
                }
                _ if !spaced => return self.err("put a space before this"),
                Some(b'/') if self.peek_at(1) == Some(b'-') => {
                    let start = self.i;
                    self.i += 2;
                    if self.v1 {
                        self.node_space()?;
                    } else {
                        self.line_space()?;
                    }
                    if self.peek() == Some(b'{') {
                        self.slashdash_children()?;
                        self.record(start);
                        return self.after_children(false);
                    }
                    self.entry()?;
                    self.record(start);
                }
                Some(_) => self.entry()?,
            }
        }
    }

    fn children(&mut self) -> R {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("blocks nest too deep");
        }
        self.i += 1; // `{`
        self.nodes(true)?;
        self.i += 1; // `}`
        self.depth -= 1;
        Ok(())
    }

    /// A commented-out `/- { ... }` block.
    fn slashdash_children(&mut self) -> R {
        self.slashdash_blocks += 1;
        let result = if self.slashdash_blocks > MAX_SLASHDASH_BLOCKS {
            self.err("commented-out `/- {` blocks nest more than 3 deep")
        } else {
            self.children()
        };
        self.slashdash_blocks -= 1;
        result
    }

    /// After a block: more commented-out blocks and at most one real block
    /// (v2), then the node's end.
    fn after_children(&mut self, mut real_block: bool) -> R<End> {
        loop {
            // `kdl` wants space before another block after a `/-` block.
            let spaced = self.node_space()?;
            if !self.v1 && spaced && !real_block && self.peek() == Some(b'{') {
                real_block = true;
                self.children()?;
                continue;
            }
            if !self.v1 && spaced && self.starts(b"/-") {
                let start = self.i;
                self.i += 2;
                self.line_space()?;
                if self.peek() != Some(b'{') {
                    return self.err("after a block only `/-` blocks may follow");
                }
                self.slashdash_children()?;
                self.record(start);
                continue;
            }
            return match self.peek() {
                None => Ok(End::Line),
                Some(b'}') if !self.v1 => Ok(End::Brace),
                Some(b';') => {
                    self.i += 1;
                    Ok(End::Semicolon)
                }
                Some(b'/') if self.peek_at(1) == Some(b'/') => {
                    self.line_comment();
                    Ok(End::Line)
                }
                _ if self.at_newline() => {
                    self.eat_newline();
                    Ok(End::Line)
                }
                _ => self.err("a node ends after its block: start a new line"),
            };
        }
    }

    fn type_annotation(&mut self) -> R {
        self.i += 1; // `(`
        if !self.v1 {
            self.node_space()?;
        }
        self.string("a type name")?;
        if !self.v1 {
            self.node_space()?;
        }
        if self.peek() != Some(b')') {
            return self.err("expected `)` to close the type annotation");
        }
        self.i += 1;
        Ok(())
    }

    /// An argument or a property.
    fn entry(&mut self) -> R {
        if self.v1 {
            return self.entry_v1();
        }
        if self.peek() == Some(b'(') {
            self.type_annotation()?;
            self.node_space()?;
            return self.value();
        }
        if !self.string_starts() {
            return self.value();
        }
        self.string("a property name or a value")?;
        let save = self.i;
        self.node_space()?;
        if self.peek() != Some(b'=') {
            self.i = save;
            return Ok(());
        }
        self.i += 1;
        self.node_space()?;
        if self.peek() == Some(b'(') {
            self.type_annotation()?;
            self.node_space()?;
        }
        self.value()
    }

    fn string_starts(&self) -> bool {
        match self.peek() {
            Some(b'"') => true,
            Some(b'#') => matches!(self.peek_at(1), Some(b'"' | b'#')),
            _ => self.ident_start(),
        }
    }

    /// Does an identifier string start here? `kdl`'s three forms:
    /// unambiguous, signed (`-x`, `+`) and dotted (`.x`, `-.x`).
    fn ident_start(&self) -> bool {
        let Some(c) = self.char_at(self.i) else {
            return false;
        };
        if !self.is_ident_char(c) {
            return false;
        }
        let next_digit = |n: usize| self.peek_at(n).is_some_and(|b| b.is_ascii_digit());
        match c {
            '0'..='9' => false,
            '+' | '-' if self.peek_at(1) == Some(b'.') => !next_digit(2),
            '+' | '-' | '.' => !next_digit(1),
            _ => true,
        }
    }

    /// KDL v1: values are never bare identifiers, keys never have space
    /// around `=`, and `true`, `false`, `null` are bare.
    fn entry_v1(&mut self) -> R {
        if self.peek() == Some(b'(') {
            self.type_annotation()?;
            return self.value();
        }
        if self.v1_keyword() {
            return self.delimiter();
        }
        match self.peek() {
            Some(b'"') => {
                self.quoted()?;
            }
            Some(b) if (b.is_ascii_alphabetic() || b == b'_') && !self.v1_raw_start() => {
                self.identifier()?;
                if self.peek() != Some(b'=') {
                    return self.err("a bare word is not a value in KDL v1: quote it");
                }
            }
            _ => return self.value(),
        }
        if self.peek() == Some(b'=') {
            self.i += 1;
            if self.peek() == Some(b'(') {
                self.type_annotation()?;
            }
            return self.value();
        }
        Ok(())
    }

    fn v1_keyword(&mut self) -> bool {
        for kw in [&b"true"[..], b"false", b"null"] {
            let after = self.s.get(self.i + kw.len()).copied();
            if self.starts(kw)
                && !after
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                self.i += kw.len();
                return true;
            }
        }
        false
    }

    fn v1_raw_start(&self) -> bool {
        self.peek() == Some(b'r') && matches!(self.peek_at(1), Some(b'"' | b'#'))
    }

    fn value(&mut self) -> R {
        if self.v1 {
            if self.v1_keyword() {
                return self.delimiter();
            }
            if self.v1_raw_start() {
                self.i += 1;
                let hashes = self.s[self.i..].iter().take_while(|&&b| b == b'#').count();
                self.i += hashes;
                if self.peek() != Some(b'"') {
                    return self.err("expected a raw string");
                }
                return self.raw(hashes);
            }
            return match self.peek() {
                Some(b'"') if !self.starts(b"\"\"\"") => self.quoted(),
                Some(b'0'..=b'9') => self.number(),
                Some(b'+' | b'-') if matches!(self.peek_at(1), Some(b'0'..=b'9')) => self.number(),
                _ => self.err("expected a value: a string, a number, true, false or null"),
            };
        }
        match self.peek() {
            Some(b'#') if matches!(self.peek_at(1), Some(b'"' | b'#')) => self.string("a value"),
            Some(b'#') => self.keyword(),
            Some(b'0'..=b'9') => self.number(),
            Some(b'+' | b'-') if matches!(self.peek_at(1), Some(b'0'..=b'9')) => self.number(),
            Some(b'"') => self.string("a value"),
            _ if self.ident_start() => self.string("a value"),
            _ => self.err("expected a value: a string, a number, #true, #false or #null"),
        }
    }

    fn keyword(&mut self) -> R {
        for kw in [
            &b"#true"[..],
            b"#false",
            b"#null",
            b"#inf",
            b"#-inf",
            b"#nan",
        ] {
            if self.starts(kw) {
                self.i += kw.len();
                return self.delimiter();
            }
        }
        self.err("unknown keyword (the keywords are #true, #false, #null, #inf, #-inf, #nan)")
    }

    fn number(&mut self) -> R {
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.i += 1;
        }
        // v2 integers are i128, v1 integers i64: stay well inside both.
        let (hex, oct, bin, dec) = if self.v1 {
            (15, 20, 62, 18)
        } else {
            (24, 30, 100, 30)
        };
        let radix = match (self.peek(), self.peek_at(1)) {
            (Some(b'0'), Some(b'x')) => Some((16, hex)),
            (Some(b'0'), Some(b'o')) => Some((8, oct)),
            (Some(b'0'), Some(b'b')) => Some((2, bin)),
            _ => None,
        };
        if let Some((radix, max)) = radix {
            self.i += 2;
            self.digits(radix, max)?;
            return self.delimiter();
        }
        let mut total = self.digits(10, dec)?;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            float = true;
            total += self.digits(10, 30)?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits(10, 4)?;
            float = true;
        }
        // kdl 4.7 (v1) refuses floats with many digits ("too large").
        let float_max = if self.v1 { 15 } else { 30 };
        if total > if float { float_max } else { dec } {
            return self.err("this number has too many digits");
        }
        if self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            return self.err("letters right after a number: quote the value, e.g. \"30m\"");
        }
        self.delimiter()
    }

    /// One digit, then digits or `_`. Returns the number of digits.
    fn digits(&mut self, radix: u32, max: usize) -> R<usize> {
        let ok = |b: u8| (b as char).is_digit(radix);
        if !self.peek().is_some_and(ok) {
            return self.err("expected a digit");
        }
        let mut n = 0;
        while let Some(b) = self.peek() {
            if ok(b) {
                n += 1;
            } else if b != b'_' {
                break;
            }
            self.i += 1;
        }
        if n > max {
            return self.err("this number has too many digits");
        }
        Ok(n)
    }

    /// What may follow a value or a string.
    fn delimiter(&self) -> R {
        match self.peek() {
            None | Some(b';' | b'}' | b')' | b'=' | b'{' | b'\\') => Ok(()),
            Some(b'/') if matches!(self.peek_at(1), Some(b'/' | b'*')) => Ok(()),
            _ if self.space_at(self.i).is_some() || self.at_newline() => Ok(()),
            _ => self.err("unexpected character: put a space between values"),
        }
    }

    fn string(&mut self, what: &'static str) -> R {
        if self.v1 {
            return match self.peek() {
                Some(b'"') if !self.starts(b"\"\"\"") => self.quoted(),
                Some(b) if (b.is_ascii_alphabetic() || b == b'_') && !self.v1_raw_start() => {
                    self.identifier()
                }
                _ => Err(Rejection {
                    offset: self.i,
                    message: expected(what),
                }),
            };
        }
        match self.peek() {
            Some(b'"') if self.starts(b"\"\"\"") => self.multi_line(0),
            Some(b'"') => self.quoted(),
            Some(b'#') => {
                let hashes = self.s[self.i..].iter().take_while(|&&b| b == b'#').count();
                self.i += hashes;
                if self.starts(b"\"\"\"") {
                    self.multi_line(hashes)
                } else if self.peek() == Some(b'"') {
                    self.raw(hashes)
                } else {
                    self.err("expected a raw string after `#`")
                }
            }
            _ if self.ident_start() => self.identifier(),
            _ => Err(Rejection {
                offset: self.i,
                message: expected(what),
            }),
        }
    }

    fn identifier(&mut self) -> R {
        let start = self.i;
        while let Some(c) = self.char_at(self.i) {
            if !self.is_ident_char(c) {
                break;
            }
            self.i += c.len_utf8();
        }
        if matches!(
            &self.s[start..self.i],
            b"true" | b"false" | b"null" | b"inf" | b"-inf" | b"nan"
        ) {
            self.i = start;
            return self.err(if self.v1 {
                "true, false and null are values, not names"
            } else {
                "a bare keyword: write #true, #false, #null, #inf, #-inf or #nan, or quote it"
            });
        }
        self.delimiter()
    }

    /// Checks the character at `i` inside a single-line string; returns its length.
    fn string_char(&self) -> R<usize> {
        if self.at_newline() {
            return self.err("a line break in a string: use \\n or a multi-line \"\"\" string");
        }
        Ok(self.char_at(self.i).map_or(1, char::len_utf8))
    }

    /// An escape inside a (non-raw) string. `\` followed by space or line
    /// breaks is a whitespace escape that swallows all of them (v2).
    fn escape(&mut self) -> R {
        self.i += 1; // `\`
        if !self.v1 && (self.space_at(self.i).is_some() || self.at_newline()) {
            while let Some(n) = self.space_at(self.i).or_else(|| self.newline_at(self.i)) {
                self.i += n;
            }
            return Ok(());
        }
        match self.peek() {
            Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 1;
                Ok(())
            }
            Some(b's') if !self.v1 => {
                self.i += 1;
                Ok(())
            }
            Some(b'/') if self.v1 => {
                self.i += 1;
                Ok(())
            }
            Some(b'u') if self.peek_at(1) == Some(b'{') => {
                self.i += 2;
                let start = self.i;
                while self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
                    self.i += 1;
                }
                let hex = &self.text[start..self.i];
                let valid = (1..=6).contains(&hex.len())
                    && u32::from_str_radix(hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .is_some();
                if !valid || self.peek() != Some(b'}') {
                    return self
                        .err("invalid unicode escape: write \\u{1F600} with 1 to 6 hex digits");
                }
                self.i += 1;
                Ok(())
            }
            _ => self.err("unknown escape (use \\n \\t \\\" \\\\ \\u{...})"),
        }
    }

    fn quoted(&mut self) -> R {
        let start = self.i;
        self.i += 1;
        loop {
            match self.peek() {
                None => {
                    self.i = start;
                    return self.err("this string is never closed");
                }
                Some(b'"') => {
                    self.i += 1;
                    return self.delimiter();
                }
                Some(b'\\') => self.escape()?,
                Some(_) => self.i += self.string_char()?,
            }
        }
    }

    fn raw(&mut self, hashes: usize) -> R {
        let start = self.i;
        self.i += 1; // `"`
        loop {
            match self.peek() {
                None => {
                    self.i = start;
                    return self.err("this raw string is never closed");
                }
                Some(b'"') if self.closes(self.i + 1, hashes) => {
                    // `kdl` refuses a raw string whose value is one `"`.
                    if &self.s[start + 1..self.i] == b"\"" {
                        return self.err("a raw string holding only `\"`: write \"\\\"\" instead");
                    }
                    self.i += 1 + hashes;
                    return self.delimiter();
                }
                Some(_) => self.i += self.string_char()?,
            }
        }
    }

    fn closes(&self, from: usize, hashes: usize) -> bool {
        self.s
            .get(from..from + hashes)
            .is_some_and(|h| h.iter().all(|&b| b == b'#'))
    }

    /// `"""` strings (raw when `hashes > 0`): a line break right after the
    /// opening quotes, the closing quotes alone on their line after
    /// whitespace, and every other non-blank line starting with exactly the
    /// closing line's whitespace. Whitespace escapes are applied first, as
    /// `kdl` does, so a line joined to the one before is not checked.
    fn multi_line(&mut self, hashes: usize) -> R {
        let open = self.i;
        self.i += 3;
        if !self.at_newline() {
            return self.err("a multi-line string starts with a line break after `\"\"\"`");
        }
        self.eat_newline();
        // Logical lines as (start, end) byte ranges, with the escaped line
        // breaks removed by merging.
        let mut lines: Vec<Vec<(usize, usize)>> = vec![Vec::new()];
        let mut seg_start = self.i;
        loop {
            match self.peek() {
                None => {
                    self.i = open;
                    return self.err("this multi-line string is never closed");
                }
                Some(b'\\') if hashes == 0 => {
                    let at = self.i;
                    let ws_escape =
                        self.space_at(at + 1).is_some() || self.newline_at(at + 1).is_some();
                    self.escape()?;
                    // A whitespace escape removes itself and what it swallowed.
                    if ws_escape {
                        if let Some(last) = lines.last_mut() {
                            last.push((seg_start, at));
                        }
                        seg_start = self.i;
                    }
                }
                Some(b'"') if self.starts(b"\"\"\"") && self.closes(self.i + 3, hashes) => {
                    if let Some(last) = lines.last_mut() {
                        last.push((seg_start, self.i));
                    }
                    let Some(closing) = lines.pop() else {
                        return self.err("internal: no closing line");
                    };
                    let indent: String = closing.iter().map(|&(a, b)| &self.text[a..b]).collect();
                    if !indent.chars().all(|c| self.space_at_char(c)) {
                        return self.err("the closing `\"\"\"` must be alone on its line");
                    }
                    for line in &lines {
                        let content: String = line.iter().map(|&(a, b)| &self.text[a..b]).collect();
                        let blank = content.chars().all(|c| self.space_at_char(c));
                        if !blank && !content.starts_with(&indent) {
                            self.i = line.first().map_or(self.i, |&(a, _)| a);
                            return self
                                .err("this line is indented less than the closing `\"\"\"`");
                        }
                    }
                    // `kdl` refuses a raw string whose value is one `"`.
                    if hashes > 0 && lines.len() == 1 {
                        let only: String =
                            lines[0].iter().map(|&(a, b)| &self.text[a..b]).collect();
                        if only.strip_prefix(indent.as_str()) == Some("\"") {
                            return self
                                .err("a raw string holding only `\"`: write \"\\\"\" instead");
                        }
                    }
                    self.i += 3 + hashes;
                    return self.delimiter();
                }
                _ if self.at_newline() => {
                    if let Some(last) = lines.last_mut() {
                        last.push((seg_start, self.i));
                    }
                    self.eat_newline();
                    seg_start = self.i;
                    lines.push(Vec::new());
                }
                Some(_) => self.i += self.char_at(self.i).map_or(1, char::len_utf8),
            }
        }
    }

    fn space_at_char(&self, c: char) -> bool {
        if self.v1 {
            matches!(c, ' ' | '\t')
        } else {
            is_unicode_space(c)
        }
    }
}

fn expected(what: &'static str) -> &'static str {
    match what {
        "a node name" => "expected a node name",
        "a type name" => "expected a type name inside `( )`",
        "a property name or a value" => "expected a property name or a value",
        _ => "expected a value",
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
