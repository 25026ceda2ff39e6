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

/// A file in a directory of its own, removed with the guard (also when the
/// test fails).
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write");
    (dir, path)
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
    let (_deep_dir, deep) = temp_file(
        "deep.kdl",
        format!("workflow {}", "{".repeat(100_000)).as_bytes(),
    );
    let (_big_dir, big) = temp_file("big.kdl", &vec![b'a'; 2 * 1024 * 1024]);
    let (_binary_dir, binary) = temp_file("binary.kdl", &[0xff, 0xfe, 0x00, 0x01]);
    let (_braces_dir, braces) = temp_file("braces.kdl", "}".repeat(500_000).as_bytes());
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
    let (_messy_dir, messy) = temp_file(
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
    let (_broken_dir, broken) = temp_file(
        "broken.kdl",
        b"workflow { job id=\"a\" { stpe run=\"x\" } }",
    );
    assert_eq!(code(&cidev(&["fmt", broken.to_str().expect("utf-8")])), 1);
    assert_eq!(
        std::fs::read(&broken).expect("read"),
        b"workflow { job id=\"a\" { stpe run=\"x\" } }"
    );
}

/// A workflow that tries to drive the terminal through every name it has.
const ESCAPES: &str = r#"workflow name="w\u{1b}]0;pwned\u{7}" {
  job id="a" runs_on="l\u{9b}2J" {
    step name="n\u{1b}[2J\u{202e}" run="true"
    step run="x" "nm\u{1b}[31mae"="y"
  }
}
"#;

fn no_raw_controls(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c)),
        "{what} printed a control character: {text:?}"
    );
}

#[test]
fn names_from_the_file_never_reach_the_terminal_raw() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("escapes.kdl");
    std::fs::write(&bad, ESCAPES).expect("write");
    let good = dir.path().join("good.kdl");
    let parsed = ESCAPES.replace(r#" "nm\u{1b}[31mae"="y""#, "");
    std::fs::write(
        &good,
        parsed.replace(r#"runs_on="l\u{9b}2J""#, r#"runs_on="linux""#),
    )
    .expect("write");
    // The label parses, and planning refuses it (labels name queues).
    let label = dir.path().join("label.kdl");
    std::fs::write(&label, &parsed).expect("write");
    let o = cidev(&["inspect", &label.display().to_string()]);
    assert_eq!(code(&o), 1);
    no_raw_controls("inspect", &o.stderr);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(r#"runs on "l\u{9b}2J""#),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (bad, good) = (bad.display().to_string(), good.display().to_string());
    let o = cidev(&["validate", &bad]);
    assert_eq!(code(&o), 1);
    no_raw_controls("validate", &o.stderr);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("`nm\\x1b[31mae`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cidev(&["inspect", &good]);
    assert_eq!(code(&o), 0);
    no_raw_controls("inspect", &o.stdout);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("workflow w\\x1b]0;pwned\\x07"), "{out}");
    assert!(out.contains("n\\x1b[2J\\u{202e}"), "{out}");
    assert!(out.contains("runs_on linux"), "{out}");
}

#[test]
fn inspect_json_on_an_invalid_file_still_prints_json() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.kdl");
    std::fs::write(&bad, "workflow { job id=\"a\" { stpe run=\"x\" } }").expect("write");
    let o = cidev(&["inspect", "--format", "json", &bad.display().to_string()]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["code"], "solstice::unknown_node");
    let o = cidev(&["inspect", "--format", "json", "/no/such/file.kdl"]);
    assert_eq!(code(&o), 2);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("/no/such")));
}

#[test]
fn a_full_disk_is_an_error_and_a_closed_pipe_is_not_a_crash() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let o = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args([
            "inspect",
            "--format",
            "json",
            "examples/workflows/hello.kdl",
        ])
        .current_dir(repo())
        .stdout(full)
        .output()
        .expect("cidev runs");
    assert_eq!(code(&o), 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot write to standard output"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A reader that goes away at once: every command ends without a panic.
    let many: Vec<String> =
        std::iter::repeat_n("examples/workflows/hello.kdl".to_string(), 2000).collect();
    for args in [
        vec!["validate".to_string()],
        vec![
            "inspect".to_string(),
            "examples/workflows/monorepo.kdl".into(),
        ],
        vec!["run".to_string(), "examples/workflows/hello.kdl".into()],
    ] {
        let mut args = args;
        if args.len() == 1 {
            args.extend(many.iter().cloned());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_cidev"))
            .args(&args)
            .current_dir(repo())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take()); // closed before cidev writes
        let o = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(o.status.code().is_some(), "{args:?}: killed by a signal");
        if args[0] == "run" {
            assert_eq!(
                o.status.code(),
                Some(0),
                "the run itself succeeds: {stderr}"
            );
        }
    }
}

#[test]
fn color_follows_the_flag_and_no_color() {
    let (_dir, path) = temp_file("bad.kdl", b"workflow { job id=\"a\" { step rn=\"x\"; } }\n");
    let path = path.to_str().expect("utf-8");
    let run = |args: &[&str], no_color: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cidev"));
        c.args(args).current_dir(repo());
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        c.output().expect("cidev runs")
    };
    let colored = |o: &Output| String::from_utf8_lossy(&o.stderr).contains("\u{1b}[");
    // Into a pipe, `auto` is plain; `always` colours even with NO_COLOR.
    assert!(!colored(&run(&["validate", path], false)));
    assert!(colored(&run(
        &["--color", "always", "validate", path],
        true
    )));
    assert!(colored(&run(&["validate", path, "--color=always"], false)));
    assert!(!colored(&run(
        &["--color", "never", "validate", path],
        false
    )));
    let o = run(&["--color", "sometimes", "validate", path], false);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("always"));
}

#[test]
fn fmt_replaces_the_file_atomically_keeping_its_mode_and_symlinks() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, messy) = temp_file(
        "messy.kdl",
        b"workflow{\njob id=\"a\"{\nstep run=\"x\"\n}\n}\n",
    );
    std::fs::set_permissions(&messy, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let link = dir.path().join("link.kdl");
    std::os::unix::fs::symlink(&messy, &link).expect("symlink");
    assert_eq!(code(&cidev(&["fmt", link.to_str().expect("utf-8")])), 0);
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink(),
        "the symlink stays a symlink"
    );
    let mode = std::fs::metadata(&messy)
        .expect("file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640, "permissions kept");
    assert!(
        std::fs::read_to_string(&messy)
            .expect("read")
            .starts_with("workflow {\n")
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let o = cidev(&["completions", "bash"]);
    assert_eq!(code(&o), 0);
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(
        script.contains("cidev") && script.contains("--provider"),
        "{script}"
    );
    let o = cidev(&["completions", "zsh"]);
    assert_eq!(code(&o), 0);
    let o = cidev(&["man"]);
    assert_eq!(code(&o), 0);
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(
        page.contains(".TH cidev") && page.contains("validate"),
        "{page}"
    );
    assert_eq!(code(&cidev(&["completions", "cmd.exe"])), 2);
}
