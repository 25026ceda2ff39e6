//! Values: keywords, numbers, identifiers and the three kinds of strings
//! (quoted, raw, multi-line) with their escapes.

use super::{Checker, R, Rejection};
use crate::chars::is_unicode_space;

impl Checker<'_> {
    pub(super) fn value(&mut self) -> R {
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

    pub(super) fn keyword(&mut self) -> R {
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

    pub(super) fn number(&mut self) -> R {
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
    pub(super) fn digits(&mut self, radix: u32, max: usize) -> R<usize> {
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
    pub(super) fn delimiter(&self) -> R {
        match self.peek() {
            None | Some(b';' | b'}' | b')' | b'=' | b'{' | b'\\') => Ok(()),
            Some(b'/') if matches!(self.peek_at(1), Some(b'/' | b'*')) => Ok(()),
            _ if self.space_at(self.i).is_some() || self.at_newline() => Ok(()),
            _ => self.err("unexpected character: put a space between values"),
        }
    }

    pub(super) fn string(&mut self, what: &'static str) -> R {
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

    pub(super) fn identifier(&mut self) -> R {
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
    pub(super) fn string_char(&self) -> R<usize> {
        if self.at_newline() {
            return self.err("a line break in a string: use \\n or a multi-line \"\"\" string");
        }
        Ok(self.char_at(self.i).map_or(1, char::len_utf8))
    }

    /// An escape inside a (non-raw) string. `\` followed by space or line
    /// breaks is a whitespace escape that swallows all of them (v2).
    pub(super) fn escape(&mut self) -> R {
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

    pub(super) fn quoted(&mut self) -> R {
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

    pub(super) fn raw(&mut self, hashes: usize) -> R {
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

    pub(super) fn closes(&self, from: usize, hashes: usize) -> bool {
        self.s
            .get(from..from + hashes)
            .is_some_and(|h| h.iter().all(|&b| b == b'#'))
    }

    /// `"""` strings (raw when `hashes > 0`): a line break right after the
    /// opening quotes, the closing quotes alone on their line after
    /// whitespace, and every other non-blank line starting with exactly the
    /// closing line's whitespace. Whitespace escapes are applied first, as
    /// `kdl` does, so a line joined to the one before is not checked.
    pub(super) fn multi_line(&mut self, hashes: usize) -> R {
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

    pub(super) fn space_at_char(&self, c: char) -> bool {
        if self.v1 {
            matches!(c, ' ' | '\t')
        } else {
            is_unicode_space(c)
        }
    }
}

pub(super) fn expected(what: &'static str) -> &'static str {
    match what {
        "a node name" => "expected a node name",
        "a type name" => "expected a type name inside `( )`",
        "a property name or a value" => "expected a property name or a value",
        _ => "expected a value",
    }
}
