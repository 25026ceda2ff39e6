//! Property tests: printed models parse back to themselves, formatting
//! keeps the model, and mutated files never panic the parser.

use std::collections::BTreeMap;

use proptest::prelude::*;
use solstice_kdl::{
    Axis, Duration, Job, Matrix, ParseOptions, RefFilter, Step, Triggers, Workflow, format, parse,
};

/// Any text, including the control, bidi and newline characters KDL
/// forbids raw, but without `${{` (an expression) and never blank.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{1,12}",
        "[ -~]{1,20}",
        "\\PC{1,12}",
        "[a-z\\n]{1,20}",
        "[\\x00-\\x1f\\x7f\\u{85}\\u{2028}\\u{2029}\\u{200e}\\u{202e}\\u{2066}\\u{feff}a\\t\\n\"\\\\#]{1,12}",
    ]
    .prop_map(|s| s.replace('$', "S"))
    .prop_filter("not blank", |s| !s.trim().is_empty())
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Z_][A-Z0-9_]{0,8}"
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(env_name(), text(), 0..3)
}

fn glob() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("main".to_string()),
        Just("release/*".to_string()),
        Just("src/**".to_string()),
        "[a-z]{1,6}(/\\*)?"
    ]
}

fn globs() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(glob(), 0..3)
}

fn triggers() -> impl Strategy<Value = Option<Triggers>> {
    let filter =
        (globs(), globs(), globs(), globs()).prop_map(|(branches, tags, paths, paths_ignore)| {
            let mut value = RefFilter::default();
            value.branches = branches;
            value.tags = tags;
            value.paths = paths;
            value.paths_ignore = paths_ignore;
            value
        });
    let pr = (globs(), globs(), globs()).prop_map(|(branches, paths, paths_ignore)| {
        let mut value = RefFilter::default();
        value.branches = branches;
        value.tags = Vec::new();
        value.paths = paths;
        value.paths_ignore = paths_ignore;
        value
    });
    let cron = proptest::collection::vec(
        prop_oneof![
            Just("0 3 * * *".to_string()),
            Just("*/5 * * * 1-5".to_string()),
            Just("@daily".to_string())
        ],
        0..2,
    );
    proptest::option::of(
        (
            proptest::option::of(filter),
            proptest::option::of(pr),
            any::<bool>(),
            cron,
        )
            .prop_map(|(push, pull_request, manual, cron)| {
                let mut value = Triggers::default();
                value.push = push;
                value.pull_request = pull_request;
                value.manual = manual;
                value.cron = cron;
                value
            }),
    )
}

fn duration() -> impl Strategy<Value = Option<Duration>> {
    proptest::option::of((1u64..=Duration::MAX.as_secs()).prop_map(Duration::from_secs))
}

fn workdir() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z]{1,5}(/[a-z]{1,5})?")
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::option::of(text()),
        text(),
        env(),
        duration(),
        workdir(),
        any::<bool>(),
    )
        .prop_map(|(name, run, env, timeout, workdir, continue_on_error)| {
            let mut value = Step::default();
            value.name = name;
            value.run = run;
            value.env = env;
            value.timeout = timeout;
            value.workdir = workdir;
            value.continue_on_error = continue_on_error;
            value
        })
}

fn matrix() -> impl Strategy<Value = Option<Matrix>> {
    let axis = (
        "[a-z][a-z0-9_]{0,5}",
        proptest::collection::vec(text(), 1..3),
    )
        .prop_map(|(name, mut values)| {
            // An axis lists each value once (a repeated one is refused).
            let mut seen = std::collections::HashSet::new();
            values.retain(|v| seen.insert(v.clone()));
            Axis::new(name, values)
        });
    proptest::option::of(proptest::collection::vec(axis, 1..3).prop_filter_map(
        "unique axes",
        |mut axes| {
            axes.sort_by(|a, b| a.name.cmp(&b.name));
            axes.dedup_by(|a, b| a.name == b.name);
            let exclude = vec![BTreeMap::from([(
                axes[0].name.clone(),
                axes[0].values[0].clone(),
            )])];
            let mut matrix = Matrix::new(axes);
            matrix.exclude = exclude;
            Some(matrix)
        },
    ))
}

fn workflow() -> impl Strategy<Value = Workflow> {
    let job = (
        proptest::option::of(text()),
        env(),
        proptest::collection::vec(env_name(), 0..2),
        duration(),
        0u32..=10,
        workdir(),
        matrix(),
        proptest::collection::vec(glob(), 0..2),
        proptest::collection::vec(step(), 1..4),
    );
    (
        proptest::option::of(text()),
        triggers(),
        env(),
        proptest::collection::vec(env_name(), 0..3),
        proptest::collection::vec((job, any::<u64>()), 1..5),
    )
        .prop_map(|(name, on, env, secrets, jobs)| {
            let mut secrets = secrets;
            secrets.dedup();
            let jobs: Vec<Job> = jobs
                .into_iter()
                .enumerate()
                .map(
                    |(
                        i,
                        (
                            (
                                runs_on,
                                env,
                                mut job_secrets,
                                timeout,
                                retry,
                                workdir,
                                matrix,
                                artifacts,
                                steps,
                            ),
                            bits,
                        ),
                    )| {
                        job_secrets.dedup();
                        // `needs` only points backwards, so the graph is a DAG.
                        let needs = (0..i)
                            .filter(|j| bits >> j & 1 == 1)
                            .map(|j| format!("job-{j}"))
                            .collect();
                        {
                            let mut value = Job::default();
                            value.id = format!("job-{i}");
                            value.runs_on = runs_on;
                            value.needs = needs;
                            value.env = env;
                            value.secrets = job_secrets;
                            value.timeout = timeout;
                            value.retry = retry;
                            value.workdir = workdir;
                            value.matrix = matrix;
                            value.artifacts = artifacts;
                            value.steps = steps;
                            value
                        }
                    },
                )
                .collect();
            let mut seen = Vec::new();
            secrets.retain(|s| {
                if seen.contains(s) {
                    false
                } else {
                    seen.push(s.clone());
                    true
                }
            });
            {
                let mut value = Workflow::default();
                value.name = name;
                value.on = on;
                value.env = env;
                value.secrets = secrets;
                value.jobs = jobs;
                value
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn printed_workflows_parse_back_equal(wf in workflow()) {
        let text = wf.to_kdl();
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render(false, 100))))?;
        prop_assert_eq!(&parsed, &wf);
        // Formatting keeps the model and is idempotent.
        let formatted = format("p.kdl", &text, &ParseOptions::default())
            .map_err(|e| TestCaseError::fail(format!("{}\n{text}", e.render(false, 100))))?;
        prop_assert_eq!(parse(&formatted).expect("formatted parses"), wf);
        prop_assert_eq!(format("p.kdl", &formatted, &ParseOptions::default()).expect("again"), formatted);
    }

    #[test]
    fn json_round_trips(wf in workflow()) {
        let json = serde_json::to_string(&wf).expect("serialise");
        let back: Workflow = serde_json::from_str(&json).expect("deserialise");
        prop_assert_eq!(back, wf);
    }

    #[test]
    fn byte_mutations_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = seed(which).into_bytes();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        let _ = solstice_kdl::parse_bytes("m.kdl", &bytes, &ParseOptions::default());
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Ok(out) = format("m.kdl", text, &ParseOptions::default()) {
                prop_assert_eq!(parse(&out).ok(), parse(text).ok());
            }
    }

    #[test]
    fn token_mutations_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..6),
    ) {
        const TOKENS: &[&str] = &[
            "{", "}", "\"", "\"\"\"", "#\"", "\"#", "/-", "//", "/*", "*/", "=", "(t)", ";", "\n", "\\",
            "#true", "r#\"", "job", "step", "needs", "matrix", "${{ matrix.x }}", "0x", "1e", "\u{2028}",
        ];
        let mut text = seed(which);
        for (at, token) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) { i -= 1; }
            text.insert_str(i, token.get::<&str>(TOKENS));
        }
        let _ = parse(&text);
        if let Ok(out) = format("m.kdl", &text, &ParseOptions::default()) {
            prop_assert_eq!(parse(&out).ok(), parse(&text).ok());
        }
    }
}

fn seed(which: usize) -> String {
    let name = [
        "seed.kdl",
        "rust-project.kdl",
        "monorepo.kdl",
        "nightly-v1.kdl",
    ][which];
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workflows")
        .join(name);
    std::fs::read_to_string(path).expect("example")
}

proptest! {
    /// Two different combinations of one matrix never share an expanded id,
    /// whatever their values hold (`, y=`, quotes, control characters).
    #[test]
    fn expanded_ids_are_unique_by_construction(
        a in proptest::collection::vec("[ ,=()\"\\\\xy1\\x1b]{0,6}", 2),
        b in proptest::collection::vec("[ ,=()\"\\\\xy1\\x1b]{0,6}", 2),
    ) {
        let combo = |v: &[String]| vec![("x".to_string(), v[0].clone()), ("y".to_string(), v[1].clone())];
        let (ida, idb) = (
            solstice_kdl::matrix::expanded_id("j", &combo(&a)),
            solstice_kdl::matrix::expanded_id("j", &combo(&b)),
        );
        prop_assert_eq!(a == b, ida == idb, "{} / {}", ida, idb);
        prop_assert!(!ida.chars().any(char::is_control), "{}", ida);
    }
}
