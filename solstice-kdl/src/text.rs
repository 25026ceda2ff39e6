//! Showing untrusted text (names, reasons, log lines) to people: which
//! characters are not shown as themselves, so that a display escapes them
//! instead of letting them act. One predicate for every place Solstice
//! shows such text: `cidev`'s terminal output, the daemon's pages, `ciadm`.
//!
//! ```
//! use solstice_kdl::text::{is_hidden, escape_hidden};
//!
//! assert!(is_hidden('\u{1b}'));
//! assert!(is_hidden('\u{202e}')); // RIGHT-TO-LEFT OVERRIDE
//! assert!(!is_hidden('é'));
//! assert_eq!(escape_hidden("a\u{202e}b\tc\n"), "a\\u{202e}b\tc\n");
//! ```

/// Characters that are not shown as themselves: the C0 and C1 controls but
/// tab and newline, DEL, the bidirectional marks, embeddings, overrides
/// and isolates (which reorder what is shown: "Trojan Source"), and the
/// invisible format characters (soft hyphen, zero-width spaces and
/// joiners, word joiner and invisible operators, the byte-order mark,
/// interlinear annotation marks).
pub fn is_hidden(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n')
        || matches!(c,
            '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
}

/// `text` with every [`is_hidden`] character written as its escape
/// (`\u{1b}`, `\u{202e}`); tab and newline stay.
pub fn escape_hidden(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_hidden() {
        for c in ['\0', '\u{7}', '\u{1b}', '\r', '\u{7f}', '\u{85}', '\u{9b}'] {
            assert!(is_hidden(c), "{c:?}");
        }
        for c in [
            '\u{200b}', '\u{200d}', '\u{200e}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}',
            '\u{feff}', '\u{ad}',
        ] {
            assert!(is_hidden(c), "{c:?}");
        }
        for c in ['\t', '\n', ' ', 'a', 'é', '中', '😀', '\u{a0}'] {
            assert!(!is_hidden(c), "{c:?}");
        }
    }
}
