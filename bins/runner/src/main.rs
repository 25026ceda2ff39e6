//! `solstice-runner`: the agent inside a job's VM. It reads where to connect
//! and its job token from `SOLSTICE_ENDPOINT` and `SOLSTICE_JOB_TOKEN`
//! (never from the command line, which other processes can read), uses the
//! current directory as its workspace, and exits 0 when the job succeeded,
//! 1 when it failed, 2 when it could not run it at all.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOLSTICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    ExitCode::from(solstice_core::runner::main_from_environment(
        "solstice-runner",
    ))
}
