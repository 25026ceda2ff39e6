//! A strict, linear-time recogniser for the part of KDL v2 that workflow
//! files use. It exists because `kdl` 6.7.1's v2 parser recurses once per
//! syntax error it recovers from (its top-level `document` parser calls
//! itself after every stuck character), so a few hundred kilobytes of
//! garbage such as `}}}}...` overflow any reasonable stack. On text this
//! recogniser accepts there is nothing for `kdl` to recover from, and the
//! only recursion left is block nesting, which `guard` bounds.
//!
//! It is deliberately **stricter** than the KDL v2 grammar: anything it is
//! not sure `kdl` accepts (line continuations, exotic whitespace and newline
//! characters, non-ASCII bare identifiers, huge numbers, ...) is refused, and
//! the caller then takes the careful path (see `lib.rs`). The fuzz target
//! `parse` checks the one property that matters: whatever this accepts,
//! `kdl` parses without error.

/// Where and why the text left the strict subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub offset: usize,
    pub message: &'static str,
}

type R<T = ()> = Result<T, Rejection>;

/// Most block nesting this checker follows (the guard allows fewer).
const MAX_DEPTH: usize = 64;

/// Checks the whole document.
pub(crate) fn check(text: &str) -> R {
    let mut p = Checker {
        s: text.as_bytes(),
        text,
        i: 0,
        depth: 0,
    };
    if text.starts_with('\u{feff}') {
        p.i = 3;
    }
    p.nodes(false)
}

struct Checker<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
    depth: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

impl Checker<'_> {
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

    fn starts(&self, pat: &[u8]) -> bool {
        self.s[self.i.min(self.s.len())..].starts_with(pat)
    }

    fn at_newline(&self) -> bool {
        matches!(self.peek(), Some(b'\n' | b'\r'))
    }

    fn eat_newline(&mut self) {
        if self.starts(b"\r\n") {
            self.i += 2;
        } else if self.at_newline() {
            self.i += 1;
        }
    }

    /// Spaces, tabs and block comments on one line. Returns whether any was eaten.
    fn inline_space(&mut self) -> R<bool> {
        let start = self.i;
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.i += 1,
                Some(b'/') if self.peek_at(1) == Some(b'*') => self.block_comment()?,
                Some(b'\\') => return self.err("line continuations are not supported here"),
                Some(b'\x0b' | b'\x0c') => return self.err("unusual whitespace"),
                Some(0xc2) if self.peek_at(1) == Some(0x85) => return self.err("unusual newline"),
                Some(0xe2) if self.peek_at(1) == Some(0x80) => return self.err("unusual whitespace"),
                _ => return Ok(self.i > start),
            }
        }
    }

    fn block_comment(&mut self) -> R {
        let mut nested = 0usize;
        while self.i < self.s.len() {
            if self.starts(b"/*") {
                nested += 1;
                self.i += 2;
            } else if self.starts(b"*/") {
                nested -= 1;
                self.i += 2;
                if nested == 0 {
                    return Ok(());
                }
            } else {
                self.i += 1;
            }
        }
        self.err("unterminated block comment")
    }

    fn line_comment(&mut self) {
        while self.i < self.s.len() && !self.at_newline() {
            self.i += 1;
        }
        self.eat_newline();
    }

    /// Space, newlines and comments between nodes.
    fn line_space(&mut self) -> R {
        loop {
            self.inline_space()?;
            if self.at_newline() {
                self.eat_newline();
            } else if self.starts(b"//") {
                self.line_comment();
            } else {
                return Ok(());
            }
        }
    }

    fn nodes(&mut self, in_block: bool) -> R {
        loop {
            self.line_space()?;
            match self.peek() {
                None if in_block => return self.err("unclosed block"),
                None => return Ok(()),
                Some(b'}') if in_block => return Ok(()),
                Some(b'}') => return self.err("unmatched `}`"),
                Some(b';') => self.i += 1,
                Some(b'/') if self.peek_at(1) == Some(b'-') => {
                    self.i += 2;
                    self.line_space()?;
                    self.node()?;
                }
                Some(_) => self.node()?,
            }
        }
    }

    fn node(&mut self) -> R {
        if self.peek() == Some(b'(') {
            self.type_annotation()?;
        }
        self.string()?;
        let mut after_name = true;
        loop {
            let spaced = self.inline_space()?;
            match self.peek() {
                None => return Ok(()),
                Some(b'\n' | b'\r') => {
                    self.eat_newline();
                    return Ok(());
                }
                Some(b';') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'}') => return Ok(()),
                Some(b'/') if self.peek_at(1) == Some(b'/') => {
                    self.line_comment();
                    return Ok(());
                }
                Some(b'{') if spaced || after_name => {
                    self.children()?;
                    return self.after_children();
                }
                _ if !spaced => return self.err("expected a space before this"),
                Some(b'/') if self.peek_at(1) == Some(b'-') => {
                    self.i += 2;
                    self.inline_space()?;
                    if self.peek() == Some(b'{') {
                        self.children()?;
                        return self.after_children();
                    }
                    self.entry()?;
                }
                Some(_) => self.entry()?,
            }
            after_name = false;
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

    /// After a children block only a terminator may follow.
    fn after_children(&mut self) -> R {
        self.inline_space()?;
        match self.peek() {
            None | Some(b'}') => Ok(()),
            Some(b'\n' | b'\r') => {
                self.eat_newline();
                Ok(())
            }
            Some(b';') => {
                self.i += 1;
                Ok(())
            }
            Some(b'/') if self.peek_at(1) == Some(b'/') => {
                self.line_comment();
                Ok(())
            }
            _ => self.err("expected the end of the node after its block"),
        }
    }

    fn type_annotation(&mut self) -> R {
        self.i += 1; // `(`
        self.string()?;
        if self.peek() != Some(b')') {
            return self.err("expected `)`");
        }
        self.i += 1;
        Ok(())
    }

    /// An argument or a property.
    fn entry(&mut self) -> R {
        if self.peek() == Some(b'(') {
            self.type_annotation()?;
            return self.value();
        }
        let is_string = match self.peek() {
            Some(b'"') => true,
            Some(b'#') => matches!(self.peek_at(1), Some(b'"' | b'#')),
            Some(b) => is_ident_start(b),
            None => false,
        };
        if !is_string {
            return self.value();
        }
        self.string()?;
        let save = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        if self.peek() != Some(b'=') {
            self.i = save;
            return Ok(());
        }
        self.i += 1;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        if self.peek() == Some(b'(') {
            self.type_annotation()?;
        }
        self.value()
    }

    fn value(&mut self) -> R {
        match self.peek() {
            Some(b'#') if matches!(self.peek_at(1), Some(b'"' | b'#')) => self.string(),
            Some(b'#') => self.keyword(),
            Some(b'0'..=b'9') => self.number(),
            Some(b'+' | b'-') if matches!(self.peek_at(1), Some(b'0'..=b'9')) => self.number(),
            Some(b'"') => self.string(),
            Some(b) if is_ident_start(b) => self.string(),
            _ => self.err("expected a value"),
        }
    }

    fn keyword(&mut self) -> R {
        for kw in [&b"#true"[..], b"#false", b"#null", b"#inf", b"#-inf", b"#nan"] {
            if self.starts(kw) {
                self.i += kw.len();
                return self.delimiter();
            }
        }
        self.err("unknown keyword")
    }

    fn number(&mut self) -> R {
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.i += 1;
        }
        let radix = match (self.peek(), self.peek_at(1)) {
            (Some(b'0'), Some(b'x')) => Some((16, 24)),
            (Some(b'0'), Some(b'o')) => Some((8, 30)),
            (Some(b'0'), Some(b'b')) => Some((2, 100)),
            _ => None,
        };
        if let Some((radix, max)) = radix {
            self.i += 2;
            self.digits(radix, max)?;
            return self.delimiter();
        }
        let mut total = self.digits(10, 30)?;
        if self.peek() == Some(b'.') {
            self.i += 1;
            total += self.digits(10, 30)?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits(10, 4)?;
        }
        if total > 30 {
            return self.err("number has too many digits");
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
            return self.err("number has too many digits");
        }
        Ok(n)
    }

    /// What may follow a value or a string.
    fn delimiter(&self) -> R {
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b';' | b'}' | b')' | b'=' | b'{') => Ok(()),
            Some(b'/') if matches!(self.peek_at(1), Some(b'/' | b'*')) => Ok(()),
            _ => self.err("unexpected character after a value"),
        }
    }

    fn string(&mut self) -> R {
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
                    self.err("expected a string")
                }
            }
            Some(b) if is_ident_start(b) => self.identifier(),
            _ => self.err("expected a name or a string"),
        }
    }

    fn identifier(&mut self) -> R {
        let start = self.i;
        while self.peek().is_some_and(is_ident_char) {
            self.i += 1;
        }
        if matches!(&self.s[start..self.i], b"true" | b"false" | b"null" | b"inf" | b"nan") {
            self.i = start;
            return self.err("bare keyword");
        }
        self.delimiter()
    }

    /// Checks the character at `i` inside a string; returns its length.
    fn string_char(&self) -> R<usize> {
        let b = self.s[self.i];
        if b < 0x80 {
            return match b {
                b'\n' | b'\r' | b'\x0b' | b'\x0c' => self.err("newline in a single-line string"),
                _ => Ok(1),
            };
        }
        let c = self.text[self.i..].chars().next().map_or('\u{fffd}', |c| c);
        if matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}') {
            return self.err("unusual newline in a string");
        }
        Ok(c.len_utf8())
    }

    fn escape(&mut self) -> R {
        self.i += 1; // `\`
        match self.peek() {
            Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' | b's') => {
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
                    && u32::from_str_radix(hex, 16).ok().and_then(char::from_u32).is_some();
                if !valid || self.peek() != Some(b'}') {
                    return self.err("invalid unicode escape");
                }
                self.i += 1;
                Ok(())
            }
            _ => self.err("unsupported escape"),
        }
    }

    fn quoted(&mut self) -> R {
        self.i += 1;
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
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
        self.i += 1; // `"`
        loop {
            match self.peek() {
                None => return self.err("unterminated raw string"),
                Some(b'"') if self.closes(hashes) => {
                    self.i += 1 + hashes;
                    return self.delimiter();
                }
                Some(_) => self.i += self.string_char()?,
            }
        }
    }

    fn closes(&self, hashes: usize) -> bool {
        self.s[self.i + 1..].iter().take(hashes).filter(|&&b| b == b'#').count() == hashes
    }

    /// `"""` strings (raw when `hashes > 0`): a newline right after the
    /// opening quotes, the closing quotes alone on their line, and every
    /// content line starting with the closing line's indentation.
    fn multi_line(&mut self, hashes: usize) -> R {
        self.i += 3;
        if !self.at_newline() {
            return self.err("a multi-line string starts with a line break");
        }
        self.eat_newline();
        let mut lines: Vec<(usize, usize)> = Vec::new();
        let mut line_start = self.i;
        loop {
            match self.peek() {
                None => return self.err("unterminated multi-line string"),
                Some(b'\n' | b'\r') => {
                    lines.push((line_start, self.i));
                    self.eat_newline();
                    line_start = self.i;
                }
                Some(b'\\') if hashes == 0 => self.escape()?,
                Some(b'"') if self.starts(b"\"\"\"") && (hashes == 0 || self.closes_multi(hashes)) => {
                    let indent = &self.s[line_start..self.i];
                    if !indent.iter().all(|b| matches!(b, b' ' | b'\t')) {
                        return self.err("the closing quotes must be alone on their line");
                    }
                    for &(a, b) in &lines {
                        let line = &self.s[a..b];
                        let blank = line.iter().all(|c| matches!(c, b' ' | b'\t'));
                        if !blank && !line.starts_with(indent) {
                            self.i = a;
                            return self.err("line is indented less than the closing quotes");
                        }
                    }
                    self.i += 3 + hashes;
                    return self.delimiter();
                }
                Some(_) => self.i += self.string_char()?,
            }
        }
    }

    fn closes_multi(&self, hashes: usize) -> bool {
        self.s[self.i + 3..].iter().take(hashes).filter(|&&b| b == b'#').count() == hashes
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_what_workflows_use() {
        for ok in [
            "workflow name=\"CI\" {\n  job id=build runs_on=\"x\" {\n    step run=\"make\"\n  }\n}\n",
            "a{}",
            "a 1 -2 +3 1_000 0x1f 0o7 0b1 1.5 1e5 1.5E+10 #true #false #null #inf #-inf #nan",
            "a x = 1 y=(t)\"s\" (u)2",
            "(t)a; b; c { d; e }",
            "a \"esc \\n \\t \\\" \\\\ \\s \\u{1F600}\"",
            "a #\"raw \\ \"# ##\"x\"#\"##",
            "a run=\"\"\"\n    one\n      two\n\n    \"\"\"",
            "a run=#\"\"\"\n  raw \\ \"\"\n  \"\"\"#",
            "/- a\nb /-c /- { x }\n// comment\nd /* c */ e // c\n",
            "a {\n  /-b 1\n}\n",
            "\u{feff}a",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn refuses_what_kdl_would_recover_from() {
        for bad in [
            "}", "a }", "a {", "a =", "a b=", "a 1a", "a (t) 1", "a \"x", "a \"x\ny\"",
            "a \"\\u{d800}\"", "a \"\\/\"", "a 0x_1", "a 1.", "a true", "a {} b", "a \\\n b",
            "a \"\"\"x\"\"\"", "a \"\"\"\n  b\n c\n  \"\"\"", "a \"\"\"\n  b \"\"\"", "a \u{a0}b",
            "a 1234567890123456789012345678901", "a\"x\"", "a #\"\"\"one\"\"\"#", "a 1{}",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
    }
}
