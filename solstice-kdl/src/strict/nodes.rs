//! Documents, nodes, children blocks, type annotations and entries (with
//! KDL v1's spellings where they differ).

use super::{Checker, End, MAX_DEPTH, MAX_ERRORS, MAX_SLASHDASH_BLOCKS, R};

impl Checker<'_> {
    pub(super) fn nodes(&mut self, in_block: bool) -> R {
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

    pub(super) fn node(&mut self) -> R<End> {
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

    pub(super) fn children(&mut self) -> R {
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
    pub(super) fn slashdash_children(&mut self) -> R {
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
    pub(super) fn after_children(&mut self, mut real_block: bool) -> R<End> {
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

    pub(super) fn type_annotation(&mut self) -> R {
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
    pub(super) fn entry(&mut self) -> R {
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

    pub(super) fn string_starts(&self) -> bool {
        match self.peek() {
            Some(b'"') => true,
            Some(b'#') => matches!(self.peek_at(1), Some(b'"' | b'#')),
            _ => self.ident_start(),
        }
    }

    /// Does an identifier string start here? `kdl`'s three forms:
    /// unambiguous, signed (`-x`, `+`) and dotted (`.x`, `-.x`).
    pub(super) fn ident_start(&self) -> bool {
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
    pub(super) fn entry_v1(&mut self) -> R {
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

    pub(super) fn v1_keyword(&mut self) -> bool {
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

    pub(super) fn v1_raw_start(&self) -> bool {
        self.peek() == Some(b'r') && matches!(self.peek_at(1), Some(b'"' | b'#'))
    }
}
