//! Golden tests: the rendered diagnostics of every broken file in
//! `tests/broken/` are pinned as insta snapshots, and each file must
//! report the code its name promises.

use std::path::Path;

use solstice_kdl::{ParseOptions, parse_named};

/// File stem -> codes that must be among its problems.
const EXPECTED: &[(&str, &[&str])] = &[
    ("syntax_error", &["solstice::syntax"]),
    ("syntax_errors_many", &["solstice::syntax"]),
    ("unknown_property", &["solstice::unknown_property"]),
    ("unknown_node", &["solstice::unknown_node"]),
    ("wrong_type", &["solstice::wrong_type"]),
    ("duplicate_job_id", &["solstice::duplicate_job_id"]),
    ("step_without_run", &["solstice::missing_property"]),
    ("job_without_id", &["solstice::missing_property"]),
    ("job_without_steps", &["solstice::no_steps"]),
    ("workflow_without_jobs", &["solstice::no_jobs"]),
    ("unknown_needs", &["solstice::unknown_needs"]),
    ("needs_cycle", &["solstice::needs_cycle"]),
    ("invalid_glob", &["solstice::invalid_glob"]),
    ("invalid_cron", &["solstice::invalid_cron"]),
    ("invalid_duration", &["solstice::invalid_duration"]),
    ("multiple_roots", &["solstice::root"]),
    ("wrong_root", &["solstice::root"]),
    ("empty_file", &["solstice::root"]),
    (
        "many_problems",
        &[
            "solstice::unknown_property",
            "solstice::unknown_node",
            "solstice::duplicate_job_id",
            "solstice::invalid_duration",
            "solstice::unknown_needs",
            "solstice::missing_property",
        ],
    ),
    (
        "matrix_problems",
        &["solstice::unknown_matrix_axis", "solstice::invalid_matrix"],
    ),
    ("unsafe_paths", &["solstice::invalid_value"]),
];

#[test]
fn every_broken_file_is_rejected_with_its_codes_and_pinned_text() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut seen = 0;
    for (stem, codes) in EXPECTED {
        let path = dir.join(format!("{stem}.kdl"));
        let text = std::fs::read_to_string(&path).expect("fixture");
        let name = format!("{stem}.kdl");
        let err = parse_named(&name, &text, &ParseOptions::default())
            .expect_err(&format!("{stem} must be rejected"));
        let got: Vec<&str> = err.problems().iter().map(|p| p.code.as_str()).collect();
        for code in *codes {
            assert!(got.contains(code), "{stem}: expected {code}, got {got:?}");
        }
        for p in err.problems() {
            assert!(
                p.span.offset() + p.span.len() <= text.len(),
                "{stem}: span outside the file"
            );
        }
        insta::assert_snapshot!(*stem, err.render(false, 100));
        seen += 1;
    }
    let files = std::fs::read_dir(&dir).expect("dir").count();
    assert_eq!(
        seen, files,
        "every file in tests/broken has an entry in EXPECTED"
    );
}

#[test]
fn several_syntax_errors_are_reported_in_one_pass() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken/syntax_errors_many.kdl"),
    )
    .expect("fixture");
    let err = parse_named("w.kdl", &text, &ParseOptions::default()).expect_err("invalid");
    let lines: Vec<usize> = err.to_json_records().iter().map(|r| r.line).collect();
    assert!(
        lines.len() >= 2 && lines.contains(&3) && lines.contains(&4),
        "{lines:?}"
    );
}

#[test]
fn json_records_point_at_lines_and_columns() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken/unknown_property.kdl"),
    )
    .expect("fixture");
    let err = parse_named("w.kdl", &text, &ParseOptions::default()).expect_err("invalid");
    let records = err.to_json_records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r.code, r.line, r.column),
        ("solstice::unknown_property", 2, 18)
    );
    assert_eq!(r.help.as_deref(), Some("did you mean `runs_on`?"));
}
