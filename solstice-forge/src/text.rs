//! Cutting text to a forge's limits on character boundaries, and keeping
//! terminal control characters out of what a forge shows.

/// The first `max` characters of `text`.
pub fn head_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// The last `max` characters of `text`.
pub fn tail_chars(text: &str, max: usize) -> &str {
    if max == 0 {
        return "";
    }
    match text.char_indices().rev().nth(max - 1) {
        Some((at, _)) => &text[at..],
        None => text,
    }
}

/// `text` with control characters other than newline and tab dropped
/// (ANSI colour sequences lose their ESC and show as plain text).
pub fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let text = "aé😀b";
        assert_eq!(head_chars(text, 0), "");
        assert_eq!(head_chars(text, 2), "aé");
        assert_eq!(head_chars(text, 3), "aé😀");
        assert_eq!(head_chars(text, 9), text);
        assert_eq!(tail_chars(text, 0), "");
        assert_eq!(tail_chars(text, 1), "b");
        assert_eq!(tail_chars(text, 2), "😀b");
        assert_eq!(tail_chars(text, 9), text);
    }

    #[test]
    fn control_characters_are_dropped() {
        assert_eq!(
            printable("\u{1b}[31mred\u{1b}[0m\r\nx\ty"),
            "[31mred[0m\nx\ty"
        );
    }
}
