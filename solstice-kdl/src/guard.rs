//! Checks made before the KDL parser sees the text. The parser recurses once
//! per nested block or block comment and aborts the whole process on a stack
//! overflow (about 1,400 levels on an 8 MiB stack, far fewer on a test
//! thread), so the nesting depth is measured here first, with a small lexer
//! that knows where strings and comments are.
//!
//! The lexer runs twice, once with the KDL v2 rules and once with the v1
//! rules (raw strings are spelled differently), and the deeper result counts:
//! a construct that the two versions read differently can then never hide
//! real braces inside what one of them thinks is a string.

/// Which lexical rules to apply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rules {
    V1,
    V2,
}

/// Most `/-` in a row (with only space or comments between them). Both
/// `kdl` parsers take quadratic time and recurse on longer chains.
pub(crate) const MAX_SLASHDASH_RUN: usize = 8;

/// Most parts (`*`, `/`, runs of other text, nested comments) one block
/// comment may have: `kdl` recurses once per part, about 3.6 KB of stack
/// each in a debug build.
pub(crate) const MAX_COMMENT_PARTS: usize = 128;

/// Where a limit was first crossed.
pub(crate) struct TooDeep {
    pub offset: usize,
    /// The nesting depth reached, 0 for a run of `/-`, `usize::MAX` for a
    /// block comment with too many parts.
    pub depth: usize,
}

/// Returns the first place where `{` blocks or `/* */` comments nest deeper
/// than `limit` under either rule set.
pub(crate) fn check_depth(text: &str, limit: usize) -> Result<(), TooDeep> {
    scan(text.as_bytes(), Rules::V2, limit)?;
    scan(text.as_bytes(), Rules::V1, limit)
}

fn scan(b: &[u8], rules: Rules, limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut slashdashes = 0usize;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'-') => {
                slashdashes += 1;
                if slashdashes > MAX_SLASHDASH_RUN {
                    return Err(TooDeep {
                        offset: i,
                        depth: 0,
                    });
                }
                i += 2;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        if !(b[i] == b'/' && matches!(b.get(i + 1), Some(b'/' | b'*'))) {
            slashdashes = 0;
        }
        match b[i] {
            b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { offset: i, depth });
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = skip_line(b, i + 2);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i, depth, limit)?;
                continue;
            }
            b'"' => {
                if rules == Rules::V2 && b[i..].starts_with(b"\"\"\"") {
                    i = skip_escaped(b, i + 3, b"\"\"\"");
                } else {
                    i = skip_escaped(b, i + 1, b"\"");
                }
            }
            b'#' if rules == Rules::V2 => {
                let hashes = count(b, i, b'#');
                let start = i + hashes;
                if b.get(start) == Some(&b'"') {
                    let multi = b[start..].starts_with(b"\"\"\"");
                    let quote: &[u8] = if multi { b"\"\"\"" } else { b"\"" };
                    i = skip_raw(b, start + quote.len(), quote, hashes);
                } else {
                    i = start;
                }
            }
            b'r' if rules == Rules::V1 => {
                let hashes = count(b, i + 1, b'#');
                let start = i + 1 + hashes;
                if b.get(start) == Some(&b'"') {
                    i = skip_raw(b, start + 1, b"\"", hashes);
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn count(b: &[u8], from: usize, byte: u8) -> usize {
    b[from.min(b.len())..]
        .iter()
        .take_while(|&&c| c == byte)
        .count()
}

fn skip_line(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
        i += 1;
    }
    i
}

/// Skips a (nested) block comment starting at `i`; each nesting level counts
/// toward the depth limit because the parser recurses for it as well.
fn skip_block_comment(b: &[u8], i: usize, depth: usize, limit: usize) -> Result<usize, TooDeep> {
    let mut nested = 0usize;
    let mut parts = 0usize;
    let mut in_text = false;
    let mut j = i;
    while j < b.len() {
        let plain = !matches!(b[j], b'*' | b'/');
        if !(plain && in_text) {
            parts += 1;
            if parts > MAX_COMMENT_PARTS {
                return Err(TooDeep {
                    offset: j,
                    depth: usize::MAX,
                });
            }
        }
        in_text = plain;
        if b[j..].starts_with(b"/*") {
            nested += 1;
            if depth + nested > limit {
                return Err(TooDeep {
                    offset: j,
                    depth: depth + nested,
                });
            }
            j += 2;
        } else if b[j..].starts_with(b"*/") {
            nested -= 1;
            j += 2;
            if nested == 0 {
                return Ok(j);
            }
        } else {
            j += 1;
        }
    }
    Ok(j)
}

/// Skips an escaped string body up to and including `close`.
fn skip_escaped(b: &[u8], mut i: usize, close: &[u8]) -> usize {
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
        } else if b[i..].starts_with(close) {
            return i + close.len();
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Skips a raw string body up to and including `close` followed by `hashes` `#`.
fn skip_raw(b: &[u8], mut i: usize, close: &[u8], hashes: usize) -> usize {
    while i < b.len() {
        if b[i..].starts_with(close) && count(b, i + close.len(), b'#') >= hashes {
            return i + close.len() + hashes;
        }
        i += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, limit: usize) -> bool {
        check_depth(text, limit).is_ok()
    }

    #[test]
    fn counts_real_blocks() {
        assert!(depth_ok("a { b { c } }", 2));
        assert!(!depth_ok("a { b { c { } } }", 2));
        assert!(depth_ok("a {} b {} c {} d {}", 1));
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_count() {
        assert!(depth_ok(r#"a "{{{{{" b"#, 1));
        assert!(depth_ok("a #\"{{{{\\\"# b", 1));
        assert!(depth_ok("a r#\"{{{{\"# b", 1));
        assert!(depth_ok("// {{{{{\na", 1));
        assert!(depth_ok("a \"\"\"\n{{{{ \"x\" {{{\n\"\"\"", 1));
    }

    #[test]
    fn long_slashdash_runs_are_refused() {
        assert!(depth_ok("/- /- /- a /- b", 8));
        assert!(!depth_ok(&format!("a {}b", "/- ".repeat(9)), 64));
        assert!(!depth_ok(&format!("{}a", "/-".repeat(9)), 64));
        assert!(depth_ok(&"/- a\n".repeat(100), 64));
    }

    #[test]
    fn block_comments_with_many_parts_are_refused() {
        assert!(depth_ok(&format!("/* {} */", "x".repeat(10_000)), 16));
        assert!(depth_ok(&format!("/* {} */", "*".repeat(100)), 16));
        assert!(!depth_ok(&format!("/* {} */", "x*".repeat(100)), 16));
    }

    #[test]
    fn block_comments_count_as_nesting() {
        assert!(depth_ok("/* /* */ */", 2));
        assert!(!depth_ok("/* /* /* */ */ */", 2));
        assert!(!depth_ok("a { /* /* */ */ }", 2));
    }

    #[test]
    fn closing_braces_in_a_string_cannot_hide_opening_ones() {
        let text = format!("a \"{}\" {}", "}".repeat(500), "{".repeat(500));
        assert!(!depth_ok(&text, 64));
        // `r"..."` is raw in v1 but not in v2; the deeper reading wins.
        let text = format!("a r\"x\\\" \"{}", "{".repeat(100));
        assert!(!depth_ok(&text, 64));
    }
}
