//! `format`: canonical layout, comments kept, output always parses back to
//! the same workflow, and never a raw character that KDL forbids.

use std::path::Path;

use solstice_kdl::{ParseOptions, format, parse, parse_named};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workflows")
        .join(name);
    std::fs::read_to_string(path).expect("example")
}

fn fmt(text: &str) -> String {
    format("w.kdl", text, &ParseOptions::default()).expect("formats")
}

#[test]
fn formatted_examples_are_fixed_points() {
    for name in ["rust-project.kdl", "monorepo.kdl"] {
        let text = example(name);
        assert_eq!(fmt(&text), text, "{name} is not in canonical form");
    }
}

#[test]
fn every_example_formats_to_an_equal_workflow_idempotently() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let once = fmt(&text);
        assert_eq!(
            parse(&once).expect("reparses"),
            parse(&text).expect("valid"),
            "{path:?}"
        );
        assert_eq!(fmt(&once), once, "{path:?} is not idempotent");
    }
}

#[test]
fn layout_is_canonical_and_comments_and_blank_lines_stay() {
    let text = "workflow   name=\"x\"{\n// lead\n  job id=\"a\" {   step run=\"make\"   name=\"Make\" // why\n\n\n  step run=\"make test\"\n}\n}\n";
    let out = fmt(text);
    assert_eq!(
        out,
        "workflow name=\"x\" {\n    // lead\n    job id=\"a\" {\n        step run=\"make\" name=\"Make\" // why\n\n        step run=\"make test\"\n    }\n}\n"
    );
}

#[test]
fn end_of_line_and_inline_comments_stay() {
    let text = "workflow {\n    job id=\"a\" { // job\n        step run=\"x\" /* inline */ name=\"y\" /* end */\n        step run=\"z\" // last\n    } // after job\n} // after workflow\n";
    let out = fmt(text);
    for comment in [
        "// job",
        "/* inline */",
        "/* end */",
        "// last",
        "// after job",
        "// after workflow",
    ] {
        assert!(out.contains(comment), "{comment} lost:\n{out}");
    }
    assert_eq!(fmt(&out), out);
}

#[test]
fn kdl_v1_input_becomes_v2() {
    let out = fmt(&example("nightly-v1.kdl"));
    assert!(out.contains("continue_on_error=#true"), "{out}");
    assert!(!out.contains("run=r#"), "{out}");
    let options = {
        let mut options = ParseOptions::default();
        options.version = Some(solstice_kdl::KdlVersion::V2);
        options
    };
    parse_named("out.kdl", &out, &options).expect("output is KDL v2");
}

/// `kdl` 6.7.1 prints these characters raw, which yields text that does not
/// parse; `format` must escape every one of them.
#[test]
fn characters_kdl_prints_raw_are_escaped() {
    let nasty = [
        "\\u{0}",
        "\\u{1}",
        "\\u{b}",
        "\\u{1f}",
        "\\u{7f}",
        "\\u{85}",
        "\\u{2028}",
        "\\u{2029}",
        "\\u{200e}",
        "\\u{202e}",
        "\\u{2066}",
        "\\u{feff}",
    ];
    let mut raw_in_kdl_output = 0;
    for esc in nasty {
        let text = format!(
            "workflow {{\n    job id=\"a\" {{\n        step run=\"echo {esc}x\" name=\"n{esc}\"\n    }}\n}}\n"
        );
        let before = parse(&text).expect("escapes are valid");
        // The bug being guarded against: kdl's own printer emits the raw character.
        let mut doc: kdl::KdlDocument = text.parse().expect("kdl parses");
        doc.autoformat();
        let raw = char::from_u32(u32::from_str_radix(&esc[3..esc.len() - 1], 16).expect("hex"))
            .expect("char");
        if doc.to_string().contains(raw) {
            raw_in_kdl_output += 1;
        }
        let out = fmt(&text);
        assert_eq!(parse(&out).expect("formatted text parses"), before, "{esc}");
        assert!(
            out.chars().all(|c| c == '\n'
                || !(c.is_control()
                    || matches!(
                        c,
                        '\u{85}'
                            | '\u{2028}'
                            | '\u{2029}'
                            | '\u{200e}'
                            | '\u{202e}'
                            | '\u{2066}'
                            | '\u{feff}'
                    ))),
            "{esc}: raw character in {out:?}"
        );
    }
    assert!(
        raw_in_kdl_output > 0,
        "kdl's printer no longer writes raw characters; simplify format.rs"
    );
}

#[test]
fn invalid_workflows_are_not_formatted() {
    let err = format(
        "w.kdl",
        "workflow { job id=\"a\" { stpe run=\"x\" } }",
        &ParseOptions::default(),
    )
    .expect_err("invalid");
    assert_eq!(err.problems()[0].code.as_str(), "solstice::unknown_node");
}

/// Found by `cargo fuzz run roundtrip`: a v1 string holding a line break and
/// then a line of U+00A0 was printed as a multi-line string, where KDL
/// normalises a whitespace-only line to empty; `format` then (rightly)
/// refused its own output. Such values stay single-line now.
#[test]
fn a_line_of_unicode_whitespace_keeps_its_value() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/format-nbsp-line.kdl");
    let text = String::from_utf8(std::fs::read(path).expect("fixture")).expect("utf-8");
    let out = fmt(&text);
    assert_eq!(
        parse(&out).expect("formatted parses"),
        parse(&text).expect("valid")
    );
}

/// Found by `cargo fuzz run roundtrip`: U+000B inside a v1 comment is a line
/// break once the file is KDL v2, which ended the comment early.
#[test]
fn a_vertical_tab_in_a_v1_comment_does_not_end_it_in_v2() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/format-v1-vertical-tab-comment.kdl");
    let text = String::from_utf8(std::fs::read(path).expect("fixture")).expect("utf-8");
    let out = fmt(&text);
    assert_eq!(
        parse(&out).expect("formatted parses"),
        parse(&text).expect("valid")
    );
}

/// A byte order mark (allowed only as the first character) is dropped: the
/// canonical layout has none. Found by the `roundtrip` fuzz target.
#[test]
fn a_byte_order_mark_is_dropped() {
    for text in [
        "\u{feff}// a comment\nworkflow { job id=\"a\" { step run=\"true\"; }; }\n",
        "\u{feff}workflow { job id=\"a\" { step run=\"true\"; }; }",
    ] {
        let out = fmt(text);
        assert!(!out.contains('\u{feff}'), "{out:?}");
        assert_eq!(parse(&out).expect("parses"), parse(text).expect("parses"));
        assert_eq!(fmt(&out), out, "idempotent");
    }
    // Only the first character may be one: a second is refused, as by `parse`.
    let twice = "\u{feff}\u{feff}workflow { job id=\"a\" { step run=\"true\"; }; }";
    assert!(parse(twice).is_err());
    assert!(format("w.kdl", twice, &ParseOptions::default()).is_err());
}

/// A commented-out entry at the end of a node keeps its line and adds no
/// blank line, however often the file is formatted. Found by the
/// `roundtrip` fuzz target (with U+000B as the line break).
#[test]
fn a_commented_out_last_entry_adds_no_blank_line() {
    let expected = "workflow {\n    job id=\"b\" {\n        step run=d /-\"x\"\n        step run=d /-\"x\" // why\n        step run=t\n    }\n}\n";
    for text in [
        "workflow {\n  job id=\"b\" {\n    step run=d /-\"x\"\n    step run=d /-\"x\" // why\n    step run=t\n  }\n}\n",
        "workflow {\n  job id=\"b\" {\n    step run=d /-\"x\"\u{b}    step run=d /-\"x\" // why\n    step run=t\n  }\n}\n",
    ] {
        let once = fmt(text);
        assert_eq!(once, expected);
        assert_eq!(fmt(&once), once, "idempotent");
    }
}

/// `format` writes KDL v2 and keeps commented-out (`/-`) text as written, so
/// a v1 file whose commented-out text is not valid v2 is refused with a
/// clear reason (not reported as a bug). Found by the `roundtrip` fuzz
/// target: `kdl` 4.7 accepts `-0.ep` as a v1 node name.
#[test]
fn v1_commented_out_text_that_v2_refuses_is_reported() {
    // The raw newline in a quoted string makes this KDL v1.
    let text = "workflow {\n    job id=\"a\" {\n        /--0.ep name=\"x\"\n        step run=\"a\nb\"\n    }\n}\n";
    assert!(parse(text).is_ok(), "a valid v1 workflow");
    let err = format("w.kdl", text, &ParseOptions::default()).expect_err("refused");
    assert_eq!(
        err.problems().iter().map(|p| p.code).collect::<Vec<_>>(),
        vec![solstice_kdl::Code::V1CommentedOut]
    );
    // Without the commented-out text it converts.
    let converted = fmt(&text.replace("        /--0.ep name=\"x\"\n", ""));
    assert!(converted.contains("step run=\"\"\"\n"), "{converted}");
}

/// A workflow with a place for a comment in every position `format` meets:
/// `@` inside a node (between its parts), `#` at the end of a line.
const SPOTS: &str = "workflow name=\"w\"@{#\n    job@id=\"build\"@runs_on=\"linux\"@{#\n        needs@\"lint\"#\n        env@A=\"1\"#\n        step@name=\"Test\"@run=\"make test\"#\n    }#\n    job@id=\"lint\"@{#\n        step@run=\"lint\"@{@env@B=\"2\"@}#\n    }#\n}#\n";

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    /// Comments and `/-` text anywhere: `format` keeps every one of them,
    /// or refuses with `format_would_drop_comment` (and the caller writes
    /// nothing).
    #[test]
    fn format_never_loses_a_comment(kinds in proptest::collection::vec(0u8..6, 40)) {
        let mut text = String::new();
        let mut markers = Vec::new();
        let mut kinds = kinds.into_iter();
        for c in SPOTS.chars() {
            if c != '@' && c != '#' {
                text.push(c);
                continue;
            }
            let kind = kinds.next().unwrap_or(5);
            let n = markers.len();
            let piece = match (c, kind) {
                (_, 0) => format!(" /* c{n} */ "),
                ('#', 1) => format!(" // c{n}"),
                ('@', 2) => format!(" /- x{n}=1 "),
                (_, 3) => format!(" /*c{n}*/"),
                ('@', _) => " ".to_string(),
                _ => String::new(),
            };
            if piece.contains(&format!("{n}")) {
                markers.push(format!("{}{n}", if piece.contains("/-") { "x" } else { "c" }));
            }
            text.push_str(&piece);
        }
        // Not every placement is valid KDL (a `/-` property after a block):
        // only valid workflows are formatted.
        proptest::prop_assume!(solstice_kdl::parse(&text).is_ok());
        match solstice_kdl::format("f.kdl", &text, &solstice_kdl::ParseOptions::default()) {
            Ok(out) => {
                for m in &markers {
                    proptest::prop_assert!(out.contains(m.as_str()), "{m} dropped:\n{text}\n=>\n{out}");
                }
            }
            Err(e) => {
                proptest::prop_assert!(
                    e.problems().iter().all(|p| p.code == solstice_kdl::Code::FormatWouldDropComment),
                    "{}", e.render(false, 100)
                );
            }
        }
    }
}

#[test]
fn comments_format_cannot_place_are_refused_not_dropped() {
    for text in [
        "workflow { job id=\"a\" /* between */ { step run=\"y\"; } }\n",
        "workflow { job id=\"a\" /- { step run=\"old\"; } { step run=\"y\"; } }\n",
        "workflow {\n    job id=\"a\" {\n        step run=\"y\"\n    } /* after the block */\n}\n",
    ] {
        let err = solstice_kdl::format("f.kdl", text, &solstice_kdl::ParseOptions::default())
            .expect_err(text);
        assert_eq!(
            err.problems()[0].code,
            solstice_kdl::Code::FormatWouldDropComment,
            "{text}"
        );
    }
    // Where it can, it keeps them.
    let text = "workflow { job id=\"a\" /* c1 */ runs_on=\"x\" { step run=\"y\" /* c2 */ name=\"n\"; } }\n";
    let out = solstice_kdl::format("f.kdl", text, &solstice_kdl::ParseOptions::default())
        .expect("formats");
    assert!(
        out.contains("/* c1 */") && out.contains("/* c2 */"),
        "{out}"
    );
}

/// Found by the `roundtrip` fuzz target's comment check (2026-12-01): in a
/// KDL v1 comment U+000B is text, and `format` writes it as a space (a v2
/// line break). The comment is kept, with that one change.
#[test]
fn a_v1_comment_with_a_vertical_tab_is_kept_with_a_space() {
    let text = "// The same language in KDL v1 syntax: `true`/`false` without `#`,\n// `r#\"...\"#` rXw stringsdo b 3_3_e reads both versions.'\nworkflow name=\"Nightly (KDL v1)\" {\n    on {\n        cron \"0 2 * * *\"\n        manual\n    }\n    job id=\"soak\" runs_on=\"illumos-stable\" timeout=\"3h\" retry=2 {\n        step name=\"Soak\" run=r#\"./bench/soak.sh --hours 2 --out \"results\"\"# timeout=\"2h30m\"\n// A monorepo: each par\u{b} builds onl        step name=\"Report\" run=\"./bench/report.sh\" continue_on_error=true\n        artifact \"results/**\"\n    }\n}\n";
    let out = format("f.kdl", text, &ParseOptions::default()).expect("formats");
    assert!(out.contains("// A monorepo: each par  builds onl"), "{out}");
}

/// Found by the `roundtrip` fuzz target (2026-12-01): `kdl`'s v1 parser
/// keeps a `//` comment that ends a node's line after the node's
/// terminator, and printing it there commented out the next node; `format`
/// refused the file as one it could not format.
#[test]
fn a_v1_line_comment_after_a_node_stays_on_its_line() {
    let text = "workflow {\n    job id=\"d\" {\n        needs \"web\" \"api\"// why it waits\n        secret \"X\"\n        step run=\"x\" continue_on_error=true\n    }\n    job id=\"web\" { step run=\"w\"; }\n    job id=\"api\" { step run=\"a\"; }\n}\n";
    assert!(parse(text).is_ok(), "a KDL v1 file (`true`)");
    let out = format("f.kdl", text, &ParseOptions::default()).expect("formats");
    assert!(
        out.contains("needs \"web\" \"api\" // why it waits\n"),
        "{out}"
    );
    assert!(out.contains("\n        secret \"X\"\n"), "{out}");
}
