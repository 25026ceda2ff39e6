//! A workflow linter in a dozen lines, depending on `solstice-kdl` alone:
//! no async runtime, no engine, no I/O beyond reading the file.
//!
//! ```text
//! cargo run -p kdl-lint -- examples/workflows/seed.kdl
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: kdl-lint FILE");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let options = solstice_kdl::ParseOptions::default();
    match solstice_kdl::parse_bytes(&path, &bytes, &options) {
        Ok(workflow) => {
            let jobs = workflow.plan().map(|p| p.jobs.len()).unwrap_or(0);
            println!("{path}: ok ({jobs} jobs)");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprint!("{}", err.render(false, 100));
            ExitCode::from(1)
        }
    }
}
