//! Parse + validate against the raw `kdl` parse of the same text and
//! `serde_yaml` of the equivalent YAML, for three sizes of workflow.
//!
//! `cargo bench -p solstice-kdl --bench parse`

use std::fmt::Write;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};

const SEED: &str = r#"workflow name="Solstice CI" {
  job id="build" runs_on="illumos-stable" {
    step name="Format" run="cargo fmt --check"
    step name="Test" run="cargo test --workspace"
  }
  job id="lint" runs_on="ubuntu-22.04" {
    step name="Lint" run="ruff check ."
  }
}
"#;

/// `jobs` jobs of `steps` steps each, in KDL and in the equivalent YAML.
fn workflow(jobs: usize, steps: usize) -> (String, String) {
    let mut kdl = String::from("workflow name=\"Generated\" {\n");
    let mut yaml = String::from("name: Generated\njobs:\n");
    for j in 0..jobs {
        let needs = if j == 0 {
            String::new()
        } else {
            format!("        needs \"job-{}\"\n", j - 1)
        };
        let _ = write!(
            kdl,
            "    job id=\"job-{j}\" runs_on=\"ubuntu-22.04\" timeout=\"30m\" {{\n{needs}        env RUST_LOG=\"info\"\n"
        );
        let _ = write!(
            yaml,
            "  job-{j}:\n    runs_on: ubuntu-22.04\n    timeout: 30m\n"
        );
        if j > 0 {
            let _ = writeln!(yaml, "    needs: [job-{}]", j - 1);
        }
        yaml.push_str("    env:\n      RUST_LOG: info\n    steps:\n");
        for s in 0..steps {
            let _ = writeln!(
                kdl,
                "        step name=\"Step {s}\" run=\"cargo test --package crate-{s} -- --nocapture\""
            );
            let _ = write!(
                yaml,
                "      - name: Step {s}\n        run: cargo test --package crate-{s} -- --nocapture\n"
            );
        }
        kdl.push_str("    }\n");
    }
    kdl.push_str("}\n");
    (kdl, yaml)
}

fn seed_yaml() -> String {
    "name: Solstice CI\njobs:\n  build:\n    runs_on: illumos-stable\n    steps:\n      - name: Format\n        run: cargo fmt --check\n      - name: Test\n        run: cargo test --workspace\n  lint:\n    runs_on: ubuntu-22.04\n    steps:\n      - name: Lint\n        run: ruff check .\n".to_string()
}

fn bench(c: &mut Criterion) {
    let typical = workflow(10, 10);
    let large = workflow(2000, 3);
    let cases = [
        ("seed", SEED.to_string(), seed_yaml()),
        ("10x10", typical.0, typical.1),
        ("2000 jobs", large.0, large.1),
    ];
    for (name, kdl_text, yaml_text) in &cases {
        assert!(
            solstice_kdl::parse(kdl_text).is_ok(),
            "{name} must be valid"
        );
        let mut group = c.benchmark_group(*name);
        group.throughput(Throughput::Bytes(kdl_text.len() as u64));
        if kdl_text.len() > 100_000 {
            group.sample_size(10);
        }
        group.bench_with_input(
            BenchmarkId::new("solstice_kdl::parse", kdl_text.len()),
            kdl_text,
            |b, t| b.iter(|| solstice_kdl::parse(black_box(t)).expect("valid")),
        );
        group.bench_with_input(
            BenchmarkId::new("kdl::KdlDocument::parse_v2", kdl_text.len()),
            kdl_text,
            |b, t| b.iter(|| kdl::KdlDocument::parse_v2(black_box(t)).expect("valid")),
        );
        group.bench_with_input(
            BenchmarkId::new("serde_yaml::Value", yaml_text.len()),
            yaml_text,
            |b, t| {
                b.iter(|| serde_yaml::from_str::<serde_yaml::Value>(black_box(t)).expect("valid"))
            },
        );
        group.finish();
    }
}

// criterion_group! generates an undocumented function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
