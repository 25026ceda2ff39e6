//! `cidev` as a user runs it: exit codes, rendered diagnostics, JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cidev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(args)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .output()
        .expect("cidev runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .expect("exited normally, not killed by a signal")
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cidev-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn validate_accepts_the_seed_and_every_example() {
    let o = cidev(&[
        "validate",
        "examples/workflows/seed.kdl",
        "examples/workflows/rust-project.kdl",
        "examples/workflows/monorepo.kdl",
        "examples/workflows/nightly-v1.kdl",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches(": valid")
            .count(),
        4
    );
}

#[test]
fn validate_defaults_to_the_repository_workflow() {
    let o = cidev(&["validate"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(".solstice/workflow.kdl: valid"));
}

#[test]
fn every_broken_file_exits_1_with_a_span_pointing_message() {
    let dir = repo().join("solstice-kdl/tests/broken");
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let path = entry.expect("entry").path();
        let o = cidev(&["validate", path.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 1, "{path:?}: {stderr}");
        assert!(
            stderr.contains("solstice::"),
            "{path:?}: no code in {stderr}"
        );
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            stderr.contains(&format!("[{}", path.display())) || stderr.contains(name),
            "{path:?}: no file in {stderr}"
        );
    }
}

#[test]
fn hostile_files_exit_1_without_crashing() {
    let deep = temp_file(
        "deep.kdl",
        format!("workflow {}", "{".repeat(100_000)).as_bytes(),
    );
    let big = temp_file("big.kdl", &vec![b'a'; 2 * 1024 * 1024]);
    let binary = temp_file("binary.kdl", &[0xff, 0xfe, 0x00, 0x01]);
    let braces = temp_file("braces.kdl", "}".repeat(500_000).as_bytes());
    for (path, expected) in [
        (&deep, "solstice::too_deep"),
        (&big, "solstice::too_large"),
        (&binary, "solstice::invalid_utf8"),
        (&braces, "solstice::syntax"),
    ] {
        let o = cidev(&["validate", path.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 1, "{path:?}: {stderr}");
        assert!(stderr.contains(expected), "{path:?}: {stderr}");
    }
}

#[test]
fn missing_files_and_bad_usage_exit_2() {
    assert_eq!(code(&cidev(&["validate", "no/such/file.kdl"])), 2);
    assert_eq!(code(&cidev(&["validate", "--format", "yaml"])), 2);
    assert_eq!(code(&cidev(&["frobnicate"])), 2);
    // A mix: the worst outcome wins.
    assert_eq!(
        code(&cidev(&[
            "validate",
            "examples/workflows/seed.kdl",
            "no/such/file.kdl"
        ])),
        2
    );
}

#[test]
fn validate_json_lists_problems_with_positions() {
    let o = cidev(&[
        "validate",
        "--format",
        "json",
        "solstice-kdl/tests/broken/unknown_property.kdl",
    ]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let p = &v[0]["problems"][0];
    assert_eq!(p["code"], "solstice::unknown_property");
    assert_eq!(
        (p["line"].as_u64(), p["column"].as_u64()),
        (Some(2), Some(18))
    );
    assert_eq!(p["help"], "did you mean `runs_on`?");
    assert_eq!(v[0]["valid"], false);
}

#[test]
fn inspect_shows_matrix_expansion_and_order() {
    let o = cidev(&["inspect", "examples/workflows/rust-project.kdl"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("jobs (7 after matrix expansion)"), "{out}");
    assert!(out.contains("test (rust=beta, os=ubuntu-22.04)"), "{out}");
    assert!(
        !out.contains("test (rust=beta, os=illumos-stable)"),
        "excluded combination shown: {out}"
    );
    assert!(out.contains("stage 2: release"), "{out}");

    let o = cidev(&[
        "inspect",
        "--format",
        "json",
        "examples/workflows/rust-project.kdl",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["plan"]["jobs"].as_array().map(Vec::len), Some(7));
    assert_eq!(v["stages"][1][0], "release");
    assert_eq!(v["plan"]["jobs"][1]["job"]["runs_on"], "ubuntu-22.04");
}

#[test]
fn fmt_check_and_write() {
    let messy = temp_file(
        "messy.kdl",
        b"workflow{\n// keep me\njob id=\"a\"{\nstep run=\"x\"\n}\n}\n",
    );
    let path = messy.to_str().expect("utf-8");
    assert_eq!(code(&cidev(&["fmt", "--check", path])), 1);
    assert_eq!(code(&cidev(&["fmt", path])), 0);
    let formatted = std::fs::read_to_string(&messy).expect("read");
    assert_eq!(
        formatted,
        "workflow {\n    // keep me\n    job id=\"a\" {\n        step run=\"x\"\n    }\n}\n"
    );
    assert_eq!(code(&cidev(&["fmt", "--check", path])), 0);
    // An invalid file is left alone.
    let broken = temp_file(
        "broken.kdl",
        b"workflow { job id=\"a\" { stpe run=\"x\" } }",
    );
    assert_eq!(code(&cidev(&["fmt", broken.to_str().expect("utf-8")])), 1);
    assert_eq!(
        std::fs::read(&broken).expect("read"),
        b"workflow { job id=\"a\" { stpe run=\"x\" } }"
    );
}
