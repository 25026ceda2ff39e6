//! Valid workflows: `format` succeeds (or refuses a comment it cannot keep
//! in place), its output parses to the same model, keeps every comment, is
//! a fixed point, and holds no raw character KDL forbids; the model
//! printer's output parses back to the same model.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use solstice_kdl::{Code, ParseOptions, format, parse};

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // See `parse.rs`: panics inside `kdl` are caught by the library.
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if !info.location().is_some_and(|l| l.file().contains("/kdl-")) {
                eprintln!("{info}");
                std::process::abort();
            }
        }));
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(workflow) = parse(text) else {
        assert!(
            format("f.kdl", text, &ParseOptions::default()).is_err(),
            "formatted an invalid file"
        );
        return;
    };
    let out = match format("f.kdl", text, &ParseOptions::default()) {
        Ok(out) => out,
        // The one documented refusal: KDL v1 commented-out text that is
        // not valid v2 (kept as written, so it cannot be converted).
        Err(e) if e.problems().iter().all(|p| p.code == Code::V1CommentedOut) => return,
        // A comment `format` cannot keep where it is: refused, not dropped.
        Err(e)
            if e.problems()
                .iter()
                .all(|p| p.code == Code::FormatWouldDropComment) =>
        {
            return;
        }
        Err(e) => panic!(
            "a valid workflow could not be formatted: {}",
            e.render(false, 100)
        ),
    };
    let relaxed = ParseOptions::default().with_max_bytes(usize::MAX);
    let again =
        solstice_kdl::parse_named("f.kdl", &out, &relaxed).expect("formatted output parses");
    assert_eq!(again, workflow, "format changed the meaning");
    assert_eq!(
        format("f.kdl", &out, &relaxed).expect("formats again"),
        out,
        "format is not idempotent"
    );
    // Code points KDL forbids anywhere (a raw line separator inside a string
    // would already have failed the comparison above).
    assert!(
        !out.chars().any(|c| matches!(c,
            '\u{0}'..='\u{8}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{200e}' | '\u{200f}'
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')),
        "raw forbidden character in formatted output"
    );
    // Every comment of the input is in the output: each of its lines, as
    // written apart from the indentation around it.
    let v1 = !solstice_kdl::__fuzz::strict_path(text, false);
    for comment in solstice_kdl::__fuzz::comment_texts(text, v1) {
        for line in comment.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // U+000B is text in a v1 comment and a line break in v2: `format`
            // writes it as a space (see `format.rs`).
            let line = line.replace('\u{b}', " ");
            assert!(
                out.contains(line.as_str()),
                "format dropped the comment line {line:?}"
            );
        }
    }
    let printed = workflow.to_kdl();
    let reparsed =
        solstice_kdl::parse_named("p.kdl", &printed, &relaxed).expect("printed model parses");
    assert_eq!(reparsed, workflow, "to_kdl changed the meaning");
});
