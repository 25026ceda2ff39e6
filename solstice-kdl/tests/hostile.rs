//! Hostile input: whatever the bytes, parsing returns `Ok` or `Err` in
//! bounded time and memory, and never panics, hangs or overflows the stack.
//! These run on the test harness's threads (2 MiB stacks), smaller than a
//! daemon's main thread, so they also bound the parser's stack use.

use solstice_kdl::{Code, KdlVersion, ParseOptions, parse, parse_bytes, parse_named};

fn codes(text: &str) -> Vec<Code> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.code).collect(),
    }
}

#[test]
fn hundred_thousand_nested_blocks_are_refused_before_parsing() {
    let text = format!("workflow {}", "{".repeat(100_000));
    assert_eq!(codes(&text), vec![Code::TooDeep]);
    let text = format!("workflow {}{}", "a {".repeat(100_000), "}".repeat(100_000));
    assert_eq!(codes(&text), vec![Code::TooDeep]);
}

#[test]
fn deep_block_comments_are_refused() {
    let text = format!("workflow {{ {} }}", "/*".repeat(100_000));
    assert_eq!(codes(&text), vec![Code::TooDeep]);
}

#[test]
fn nesting_at_the_limit_parses_on_a_small_stack() {
    // The deepest document the guard lets through must not overflow a 2 MiB
    // test thread in either parser, even in a debug build.
    let limit = ParseOptions::default().max_depth;
    assert_eq!(limit, 16);
    let text = format!(
        "workflow {}{}",
        "a {".repeat(limit - 1),
        "}".repeat(limit - 1)
    );
    for version in [None, Some(KdlVersion::V1), Some(KdlVersion::V2)] {
        let options = {
            let mut options = ParseOptions::default();
            options.version = version;
            options
        };
        let err = parse_named("deep.kdl", &text, &options).expect_err("not a workflow");
        assert!(
            !err.problems().iter().any(|p| p.code == Code::TooDeep),
            "{version:?}"
        );
    }
    // One more level is refused.
    let text = format!(
        "workflow {}{}",
        "a {".repeat(limit + 1),
        "}".repeat(limit + 1)
    );
    assert_eq!(codes(&text), vec![Code::TooDeep]);
}

#[test]
fn braces_inside_strings_do_not_count_but_cannot_hide_real_ones() {
    let script = "{".repeat(500);
    let text = format!("workflow {{ job id=\"a\" {{ step run=\"{script}\" }} }}");
    assert!(parse(&text).is_ok());
    let text = format!(
        "workflow {{ job id=\"a\" {{ step run=\"{}\" }} }} {}",
        "}".repeat(5000),
        "{".repeat(5000)
    );
    assert_eq!(codes(&text), vec![Code::TooDeep]);
}

#[test]
fn a_two_mebibyte_file_is_refused_up_front() {
    let big = format!(
        "workflow {{ job id=\"a\" {{ step run=\"{}\" }} }}",
        "x".repeat(2 * 1024 * 1024)
    );
    let err =
        parse_bytes("big.kdl", big.as_bytes(), &ParseOptions::default()).expect_err("too big");
    assert_eq!(err.problems()[0].code, Code::TooLarge);
    assert_eq!(codes(&big), vec![Code::TooLarge]);
}

#[test]
fn invalid_utf8_is_a_clear_error() {
    let mut bytes = b"workflow { job id=\"a\" { step run=\"".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x80]);
    bytes.extend_from_slice(b"\" } }");
    let err = parse_bytes("bad.kdl", &bytes, &ParseOptions::default()).expect_err("not utf-8");
    assert_eq!(err.problems()[0].code, Code::InvalidUtf8);
    assert_eq!(err.problems()[0].span.offset(), 34);
}

#[test]
fn forbidden_characters_are_refused() {
    for c in ['\u{0}', '\u{7f}', '\u{202e}', '\u{2066}', '\u{feff}'] {
        let text = format!("workflow {{ job id=\"a\" {{ step run=\"x{c}\" }} }}");
        assert_eq!(codes(&text), vec![Code::Syntax], "{:?}", c);
    }
    // A byte-order mark at the very start is allowed.
    assert!(parse("\u{feff}workflow { job id=\"a\" { step run=\"x\" } }").is_ok());
}

#[test]
fn a_matrix_bomb_is_refused() {
    let axes: String = (0..12)
        .map(|i| format!("a{i} \"1\" \"2\" \"3\" \"4\"\n"))
        .collect();
    let text = format!("workflow {{ job id=\"t\" {{ matrix {{ {axes} }}\n step run=\"x\" }} }}");
    assert!(codes(&text).contains(&Code::InvalidMatrix));
}

#[test]
fn a_very_long_needs_chain_is_checked_without_recursion() {
    let mut text = String::from("workflow {\n");
    let n = 5_000;
    for i in 0..n {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("needs \"j{}\"; ", i - 1)
        };
        text.push_str(&format!("job id=\"j{i}\" {{ {needs}step run=\"x\" }}\n"));
    }
    text.push_str("}\n");
    // Over the run's job limit: refused, after the graph was checked.
    assert_eq!(codes(&text), vec![Code::RunTooLarge]);
    let at_limit: String = text
        .lines()
        .filter(|l| {
            l.strip_prefix("job id=\"j")
                .and_then(|r| r.split('"').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_none_or(|i| i < solstice_kdl::MAX_RUN_JOBS)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let plan = parse(&at_limit).expect("valid").plan().expect("plan");
    assert_eq!(plan.order.len(), solstice_kdl::MAX_RUN_JOBS);
    // Close the chain into a cycle: reported, not a stack overflow.
    let cyclic = text.replacen(
        "job id=\"j0\" { ",
        &format!("job id=\"j0\" {{ needs \"j{}\"; ", n - 1),
        1,
    );
    assert!(codes(&cyclic).contains(&Code::NeedsCycle));
}

#[test]
fn long_names_do_not_make_suggestions_expensive() {
    let long = "x".repeat(200_000);
    let text = format!("workflow {{ job id=\"a\" {long}=\"1\" {{ step run=\"x\" }} }}");
    assert_eq!(codes(&text), vec![Code::UnknownProperty]);
}

/// Found by `cargo fuzz run parse`: `kdl` 4.7's v1 parser panics on this
/// (a slice out of bounds in its error path).
#[test]
fn input_that_crashes_the_v1_parser_is_a_syntax_error() {
    for version in [None, Some(KdlVersion::V1)] {
        let options = {
            let mut options = ParseOptions::default();
            options.version = version;
            options
        };
        let err = parse_named("f.kdl", "node (false\n", &options).expect_err("invalid");
        assert!(err.is_syntax(), "{version:?}");
    }
}

/// Found by `cargo fuzz run parse`: a `;` with no node before it must not
/// pass the strict recogniser, which would hand it to `kdl` unguarded.
#[test]
fn stray_semicolons_take_the_careful_path() {
    assert!(!solstice_kdl::__fuzz::strict_path(
        "nnoodenoodwwwwwwwwwwwwwwwwe0; ; ",
        false
    ));
    let err = parse("workflow { job id=\"a\" { step run=\"x\" } }; ; ").expect_err("invalid");
    assert!(err.is_syntax());
}

/// Found by `cargo fuzz run parse`: on these 1,159 bytes `kdl` 6.7.1's error
/// recovery produced 41,627 diagnostics in 13 s. Solstice checks syntax
/// itself, so `kdl` never runs its recovery; at most 20 errors come back.
#[test]
fn kdl_error_recovery_is_never_reached() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/kdl-recovery-13s.kdl");
    let bytes = std::fs::read(path).expect("fixture");
    let err = parse_bytes("slow.kdl", &bytes, &ParseOptions::default()).expect_err("invalid");
    assert!(err.is_syntax());
    assert!(
        err.problems().len() <= 20,
        "{} problems",
        err.problems().len()
    );
}

/// `kdl` recurses once per `*`, `/` or run of text inside a block comment:
/// about 580 parts overflow a 2 MiB debug thread, even in valid KDL.
#[test]
fn block_comments_with_thousands_of_parts_are_refused() {
    let text = format!(
        "workflow {{ /* {} */ job id=\"a\" {{ step run=\"x\" }} }}",
        "x*".repeat(50_000)
    );
    assert_eq!(codes(&text), vec![Code::TooDeep]);
    let banner = format!(
        "// {}\n/* {} */\nworkflow {{ job id=\"a\" {{ step run=\"x\" }} }}",
        "*".repeat(5000),
        "=".repeat(5000)
    );
    assert!(parse(&banner).is_ok());
}

/// Found by `cargo fuzz run parse`: a syntax error reported in the middle
/// of a multi-byte character made the span slicing panic.
#[test]
fn error_offsets_inside_a_character_do_not_panic() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/error-inside-a-character.kdl");
    let bytes = std::fs::read(path).expect("fixture");
    let err = parse_bytes("f.kdl", &bytes, &ParseOptions::default()).expect_err("invalid");
    let text = std::str::from_utf8(&bytes).expect("utf-8");
    for p in err.problems() {
        assert!(text.is_char_boundary(p.span.offset()), "{p:?}");
    }
    let _ = err.render(false, 80);
}

/// Found by `cargo fuzz run parse` (timeout): `kdl` 6.7.1 takes twice as
/// long for each `/- {` block nested in another, even in valid text (5 KB:
/// 1.9 s). Solstice refuses more than 3 such levels.
#[test]
fn nested_commented_out_blocks_are_limited() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/kdl-slashdash-blocks-slow.kdl");
    let bytes = std::fs::read(path).expect("fixture");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!solstice_kdl::__fuzz::strict_path(&text, false));
    let deep = format!(
        "workflow {{\n{}{}}}\n",
        "a /- {\n".repeat(12),
        "}\n".repeat(12)
    );
    assert!(!solstice_kdl::__fuzz::strict_path(&deep, false));
    let fine =
        "workflow /- { x } {\n    job id=\"a\" /- { old } {\n        step run=\"x\"\n    }\n}\n";
    assert!(parse(fine).is_ok());
}

/// Renders every problem, as `cidev validate` does.
fn rendered(text: &str) -> (usize, String) {
    let err = parse(text).expect_err("invalid");
    (err.problems().len(), err.render(false, 100))
}

#[test]
fn a_problem_past_column_65535_renders_as_a_window_with_its_real_position() {
    // miette panics when it draws a label past column 65,535 (a width
    // argument is a u16); a long line is cut around the label instead.
    for len in [65_530, 65_536, 70_000, 900_000] {
        let text = format!(
            "workflow {{ job id=\"a\" {{ step run=\"{}\" nmae=\"y\"; }} }}",
            "x".repeat(len)
        );
        let (_, out) = rendered(&text);
        let column = 34 + len + 3;
        assert!(out.contains(&format!(":1:{column}]")), "{len}: {out}");
        assert!(out.contains("nmae=\"y\""), "{out}");
        assert!(out.contains('…'), "{out}");
        assert!(out.len() < 2_000, "{len}: {} bytes", out.len());
        let json = parse(&text).expect_err("invalid").to_json_records();
        assert_eq!((json[0].line, json[0].column), (1, column));
    }
    // Multi-byte text before the label: columns count characters.
    let text = format!(
        "workflow {{ job id=\"a\" {{ step run=\"{}\" nmae=\"y\"; }} }}",
        "é".repeat(70_000)
    );
    let (_, out) = rendered(&text);
    assert!(out.contains(":1:70037]"), "{out}");
}

#[test]
fn problems_are_capped_and_their_output_is_bounded() {
    // One problem per argument: 200,000 of them on one line.
    let text = format!(
        "workflow {{ job id=\"a\" {{ step run=\"x\" {}; }} }}",
        "1 ".repeat(200_000)
    );
    let err = parse(&text).expect_err("invalid");
    let problems = err.problems();
    assert_eq!(problems.len(), solstice_kdl::MAX_PROBLEMS + 1);
    let last = problems.last().expect("problems");
    assert_eq!(last.code, Code::TooManyProblems);
    assert!(
        last.message.starts_with("199900 more problems"),
        "{}",
        last.message
    );
    let out = err.render(false, 100);
    assert!(out.len() < 100_000, "{} bytes", out.len());
    assert_eq!(err.to_json_records().len(), solstice_kdl::MAX_PROBLEMS + 1);
}

#[test]
fn help_lines_list_a_few_names_not_every_job() {
    let jobs: String = (0..3000)
        .map(|i| {
            format!("job id=\"job{i}\" {{ needs \"nothing-like-it-{i}\"; step run=\"x\"; }}\n")
        })
        .collect();
    let text = format!("workflow {{\n{jobs}}}\n");
    let err = parse(&text).expect_err("invalid");
    let help = err.problems()[0].help.clone().expect("help");
    assert!(help.ends_with("and 2992 more"), "{help}");
    let out = err.render(false, 100);
    assert!(
        out.len() < text.len(),
        "{} bytes from {}",
        out.len(),
        text.len()
    );
}

#[test]
fn a_needs_cycle_through_many_jobs_draws_a_bounded_number_of_labels() {
    let n = 2000;
    let jobs: String = (0..n)
        .map(|i| {
            format!(
                "job id=\"j{i}\" {{ needs \"j{}\"; step run=\"x\"; }}\n",
                (i + 1) % n
            )
        })
        .collect();
    let text = format!("workflow {{\n{jobs}}}\n");
    let (_, out) = rendered(&text);
    assert!(out.len() < 20_000, "{} bytes", out.len());
}

#[test]
fn labels_at_the_end_of_long_lines_and_across_lines_render() {
    // Found by `cidev run` on a long script: a label on the line break of
    // a long line (an unterminated string) was cut past the line's end.
    for len in [150, 199, 200, 201, 250, 70_000] {
        for tail in [
            "",
            "\n",
            "\r\n",
            "\r",
            "\r\nmore\r\n",
            "\nmore\n",
            "é\n",
            "\"\r\n",
            " {\r\n",
        ] {
            let text = format!(
                "workflow {{ job id=\"a\" {{ step run=\"{}{tail}\"; }} }}",
                "x".repeat(len)
            );
            if let Err(e) = parse(&text) {
                let out = e.render(false, 80);
                assert!(!out.is_empty());
            }
            for text in [
                format!("{}{tail}", "y".repeat(len)),
                format!(
                    "workflow {{\r\n job id=\"a\" {{ step run=\"{}{tail}",
                    "z".repeat(len)
                ),
                format!(
                    "workflow {{ job id=\"a\" {{ step run=\"x\" {}{tail}",
                    "1 ".repeat(len)
                ),
            ] {
                let _ = parse(&text).map_err(|e| e.render(true, 80));
            }
        }
    }
}

#[test]
fn matrix_values_equal_as_text_are_refused_and_ids_cannot_collide() {
    for text in [
        r#"workflow { job id="a" { matrix { x 1 "1"; }; step run="x"; } }"#,
        r#"workflow { job id="a" { matrix { x 1 1; }; step run="x"; } }"#,
        r##"workflow { job id="a" { matrix { x #true "true"; }; step run="x"; } }"##,
    ] {
        assert_eq!(codes(text), vec![Code::DuplicateMatrixValue], "{text}");
    }
    let text =
        r#"workflow { job id="a" { matrix { x "1, y=2" "1"; y "3" "2, y=3"; }; step run="x"; } }"#;
    let plan = parse(text).expect("valid").plan().expect("plan");
    let ids: std::collections::HashSet<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.contains(r#"a (x="1, y=2", y=3)"#), "{ids:?}");
}

#[test]
fn the_run_is_bounded_after_matrix_expansion() {
    // 256-way matrix jobs, each fine on its own; a chain of them.
    let job = |i: usize| {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("needs \"m{}\"; ", i - 1)
        };
        let a: Vec<String> = (0..16).map(|v| v.to_string()).collect();
        let b: Vec<String> = (0..16).map(|v| format!("\"v{v}\"")).collect();
        format!(
            "job id=\"m{i}\" {{ {needs}matrix {{ a {}; b {}; }}; step run=\"x\"; }}\n",
            a.join(" "),
            b.join(" ")
        )
    };
    let three: String = (0..3).map(job).collect();
    let plan = parse(&format!("workflow {{\n{three}}}\n"))
        .expect("768 jobs are fine")
        .plan()
        .expect("plan");
    assert_eq!(plan.jobs.len(), 768);
    // `needs` is kept once per job and name, not once per pair.
    let entries: usize = plan.jobs.iter().map(|j| j.job.needs.len()).sum();
    assert_eq!(entries, 512);
    assert_eq!(plan.stages().len(), 3);
    let four: String = (0..4).map(job).collect();
    let err = parse(&format!("workflow {{\n{four}}}\n")).expect_err("1,024 jobs");
    assert_eq!(err.problems().len(), 1);
    let p = &err.problems()[0];
    assert_eq!(p.code, Code::RunTooLarge);
    assert!(p.message.contains("1024 jobs"), "{}", p.message);
    assert_eq!(
        err.to_json_records()[0].line,
        5,
        "at the job that passes the limit"
    );

    // Many plain jobs that each need many others.
    let mut text = String::from("workflow {\n");
    for i in 0..60 {
        text.push_str(&format!("job id=\"b{i}\" {{ step run=\"x\"; }}\n"));
    }
    let all: Vec<String> = (0..60).map(|i| format!("\"b{i}\"")).collect();
    for i in 0..180 {
        text.push_str(&format!(
            "job id=\"c{i}\" {{ needs {}; step run=\"x\"; }}\n",
            all.join(" ")
        ));
    }
    text.push_str("}\n");
    assert_eq!(codes(&text), vec![Code::RunTooLarge]);
    // A workflow built by hand (not parsed) meets the same limit in `plan`.
    let mut wf = parse("workflow { job id=\"b\" { step run=\"x\"; } }").expect("valid");
    let template = wf.jobs[0].clone();
    for i in 0..solstice_kdl::MAX_RUN_JOBS {
        let mut j = template.clone();
        j.id = format!("x{i}");
        wf.jobs.push(j);
    }
    assert!(matches!(
        wf.plan(),
        Err(solstice_kdl::PlanError::RunTooLarge { jobs: 1001, .. })
    ));
}

/// A `ParseError` drawn by miette's own report handler, not `render`.
fn miette_report(err: &solstice_kdl::ParseError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, err)
        .expect("renders");
    out
}

#[test]
fn miette_s_own_handler_does_not_panic_on_a_long_line() {
    let text = format!(
        "workflow {{ job id=\"a\" {{ step run=\"{}\" nmae=\"y\"; }} }}",
        "x".repeat(70_000)
    );
    let err = parse(&text).expect_err("invalid");
    let out = miette_report(&err);
    assert!(out.contains("nmae"), "{out}");
}

#[test]
fn tabs_count_as_columns_too() {
    let text = format!(
        "workflow {{ job id=\"a\" {{ step run=\"x\"{}nmae=\"y\"; }} }}",
        "\t".repeat(20_000)
    );
    let err = parse(&text).expect_err("invalid");
    assert!(err.render(false, 100).contains("nmae"));
    assert!(miette_report(&err).contains("nmae"));
}
