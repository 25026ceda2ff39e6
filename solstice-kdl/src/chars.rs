//! KDL's character classes, in one place: the syntax check (`strict.rs`),
//! the guards (`lib.rs`) and the printer (`print.rs`) all read them from
//! here, so they cannot drift apart. They follow the KDL 2.0 specification
//! and `kdl` 6.7.1's tables (`UNICODE_SPACES`, `NEWLINES`, disallowed code
//! points).

/// KDL's `unicode-space`: whitespace inside a line.
pub(crate) fn is_unicode_space(c: char) -> bool {
    matches!(
        c,
        '\t' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// KDL's `newline` characters (CRLF is two of them).
pub(crate) fn is_newline(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{85}' | '\u{b}' | '\u{c}' | '\u{2028}' | '\u{2029}'
    )
}

/// Code points KDL 2.0 forbids anywhere in a document: control characters
/// other than whitespace and newlines, U+007F, the bidirectional marks,
/// embeddings, overrides and isolates, and U+FEFF (allowed only as the very
/// first character, which the caller checks).
pub(crate) fn is_disallowed(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{200e}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Characters that must never appear raw inside a quoted string the
/// printer writes: the forbidden ones, every newline, and tab.
pub(crate) fn needs_escape(c: char) -> bool {
    is_disallowed(c) || is_newline(c) || c == '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_table_is_what_the_printer_had() {
        // The printer's own list before the tables were shared.
        let old = |c: char| {
            matches!(c,
                '\u{0}'..='\u{1F}'
                | '\u{7F}'
                | '\u{85}'
                | '\u{200E}' | '\u{200F}'
                | '\u{2028}' | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}')
        };
        for c in (0..=0x3100u32).filter_map(char::from_u32) {
            assert_eq!(needs_escape(c), old(c), "{:?}", c);
        }
    }
}
