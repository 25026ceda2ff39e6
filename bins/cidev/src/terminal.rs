//! What reaches the terminal. Workflow files and step output are untrusted:
//! a control character in a job name, a reason or a log line could set the
//! window title, clear the screen or rewrite a line that is already shown.
//! Everything cidev prints from them goes through [`clean`] or
//! [`clean_output`]; colour of cidev's own is added afterwards. Standard
//! output goes through [`out`], so that a closed pipe ends the output
//! quietly and a failing write is reported instead of lost or a panic.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// True for characters that are not shown as themselves
/// ([`solstice_kdl::text::is_hidden`]: controls, DEL, the bidirectional
/// controls that reorder what is displayed ("Trojan Source"), invisible
/// format characters) and line breaks.
fn hidden(c: char) -> bool {
    c == '\n' || solstice_kdl::text::is_hidden(c)
}

fn escape(c: char, into: &mut String) {
    let _ = match c {
        '\n' => write!(into, "\\n"),
        '\r' => write!(into, "\\r"),
        c if (c as u32) < 0x80 => write!(into, "\\x{:02x}", c as u32),
        c => write!(into, "\\u{{{:x}}}", c as u32),
    };
}

/// Text from a workflow (names, ids, reasons, messages) made printable on
/// one line: control characters, line breaks included, are shown escaped
/// (`\x1b`, `\n`).
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Multi-line text of our own that quotes workflow text (rendered
/// diagnostics): line breaks stay, other control characters are escaped;
/// colour sequences (`ESC [ ... m`) stay when `keep_colour` (ours are then
/// among them), and are escaped like the rest otherwise.
pub fn clean_lines(text: &str, keep_colour: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && hidden(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        if keep_colour {
            push_clean(body, true, &mut out);
        } else {
            out.push_str(&clean(body)); // no colour is ours: show every escape
        }
        out.push_str(newline);
    }
    Cow::Owned(out)
}

/// One line of a step's output (without its line break), decoded as UTF-8
/// (invalid bytes become U+FFFD) with control characters escaped. Colour
/// sequences (`ESC [ digits ; ... m`) are kept when `keep_colour` (a
/// terminal with colour on), and dropped otherwise.
pub fn clean_output(line: &[u8], keep_colour: bool) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let mut out = String::with_capacity(text.len());
    push_clean(text, keep_colour, &mut out);
    if keep_colour && out.contains('\x1b') {
        out.push_str("\x1b[0m"); // a colour the step left on ends with its line
    }
    out
}

fn push_clean(text: &str, keep_colour: bool, out: &mut String) {
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b'
            && let Some(len) = colour_sequence(rest)
        {
            if keep_colour {
                out.push_str(&rest[..len]);
            }
            rest = &rest[len..];
            continue;
        }
        if hidden(c) {
            escape(c, out);
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
}

/// Length of an SGR sequence (`ESC [ params m`) at the start of `text`.
fn colour_sequence(text: &str) -> Option<usize> {
    let body = text.strip_prefix("\x1b[")?;
    let params = body
        .bytes()
        .take(32)
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (body.as_bytes().get(params) == Some(&b'm')).then_some(2 + params + 1)
}

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes to standard output. A closed pipe (`cidev ... | head -1`) stops
/// further output silently; any other failure (`> /dev/full`) is kept for
/// [`failure`], and later writes are dropped.
pub fn out(bytes: &[u8]) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let result = stdout.write_all(bytes).and_then(|()| stdout.flush());
    if let Err(e) = result {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            *FAILED.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
    }
}

/// `out` for formatted text.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::terminal::out(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// Writes to standard error, ignoring failure: there is nowhere left to
/// report it (and `eprintln!` would panic on a closed pipe).
pub fn err(bytes: &[u8]) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(bytes).and_then(|()| stderr.flush());
}

/// `err` for formatted text.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::terminal::err(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// Why standard output could not be written, if it could not (a closed
/// pipe is not a failure).
pub fn failure() -> Option<String> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert_eq!(clean("build (linux, 1.80)"), "build (linux, 1.80)");
        assert_eq!(
            clean("a\x1b]0;pwned\x07b\nc\r"),
            "a\\x1b]0;pwned\\x07b\\nc\\r"
        );
        assert_eq!(clean("\u{9b}2J\u{202e}x"), "\\u{9b}2J\\u{202e}x");
        assert_eq!(clean("tab\there é ✓"), "tab\there é ✓");
    }

    #[test]
    fn step_output_keeps_colour_only_when_asked() {
        let line = b"\x1b[31merror\x1b[0m: \x1b[2J\x1b]0;t\x07done\r";
        assert_eq!(
            clean_output(line, false),
            "error: \\x1b[2J\\x1b]0;t\\x07done"
        );
        assert_eq!(
            clean_output(line, true),
            "\x1b[31merror\x1b[0m: \\x1b[2J\\x1b]0;t\\x07done\x1b[0m"
        );
        assert_eq!(clean_output(b"\xff ok", false), "\u{fffd} ok");
    }

    #[test]
    fn rendered_text_keeps_its_lines() {
        assert_eq!(
            clean_lines("a\x1b[1mb\nc\x07\n", true),
            "a\x1b[1mb\nc\\x07\n"
        );
        assert_eq!(clean_lines("a\x1b[1mb\n", false), "a\\x1b[1mb\n");
    }
}

/// An error of cidev's own with what it was doing (`state store`, a file
/// name), keeping the error it wraps as its source.
#[derive(Debug)]
pub struct Context {
    what: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Context {
    /// `what` failed because of `source`.
    pub fn new(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Context {
        Context {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// One level of an error chain, its text cleaned for the terminal.
#[derive(Debug)]
struct Level {
    text: String,
    source: Option<Box<Level>>,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Level {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|l| l as &(dyn std::error::Error + 'static))
    }
}

impl miette::Diagnostic for Level {}

/// An error and its causes as miette renders a report (`× what` and a
/// `╰─▶` line per cause), every level's text cleaned: an error can quote a
/// file name or a workflow's text.
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut texts = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        texts.push(clean(&e.to_string()).into_owned());
        next = e.source();
    }
    let chain = texts
        .into_iter()
        .rev()
        .fold(None, |source, text| Some(Box::new(Level { text, source })));
    let Some(top) = chain else {
        return String::new();
    };
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    let mut out = String::new();
    if handler.render_report(&mut out, &*top).is_err() {
        return format!("error: {}\n", top.text);
    }
    out
}

/// `--color`: when cidev colours its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set to something.
    Auto,
    /// Always (also into a pipe or file).
    Always,
    /// Never.
    Never,
}

static COLOR: std::sync::OnceLock<ColorChoice> = std::sync::OnceLock::new();

/// Sets the choice for the rest of the process (the first call wins).
pub fn set_color(choice: ColorChoice) {
    let _ = COLOR.set(choice);
}

/// `auto` asks anstream, which follows the conventions: a terminal, and
/// not `NO_COLOR` (set to something), `TERM=dumb` or `CLICOLOR=0`;
/// `CLICOLOR_FORCE` forces colour.
fn color_for<S: anstream::stream::RawStream>(stream: &S) -> bool {
    match COLOR.get().copied().unwrap_or(ColorChoice::Auto) {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => anstream::AutoStream::choice(stream) != anstream::ColorChoice::Never,
    }
}

/// Whether to colour standard output.
pub fn color_on_stdout() -> bool {
    color_for(&std::io::stdout())
}

/// Whether to colour standard error (diagnostics, tracing).
pub fn color_on_stderr() -> bool {
    color_for(&std::io::stderr())
}

/// Columns for rendered reports: the terminal's width when standard error
/// is one, else `COLUMNS`, else 100; at least 40.
pub fn width() -> usize {
    let from_terminal = terminal_size::terminal_size_of(std::io::stderr())
        .map(|(terminal_size::Width(w), _)| usize::from(w));
    from_terminal
        .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
        .unwrap_or(100)
        .max(40)
}
