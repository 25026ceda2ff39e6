//! `solstice-runner`: the agent inside a job's VM. It reads where to connect
//! and its job token from `SOLSTICE_ENDPOINT` and `SOLSTICE_JOB_TOKEN`
//! (never from the command line, which other processes can read), uses the
//! current directory as its workspace, and exits 0 when the job succeeded,
//! 1 when it failed, 2 when it could not run it at all.

use std::process::ExitCode;

use solstice_core::runner::{RunnerConfig, ShellExecutor, run};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOLSTICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (Ok(endpoint), Ok(token)) = (
        std::env::var("SOLSTICE_ENDPOINT"),
        std::env::var("SOLSTICE_JOB_TOKEN"),
    ) else {
        eprintln!("solstice-runner: SOLSTICE_ENDPOINT and SOLSTICE_JOB_TOKEN must be set");
        return ExitCode::from(2);
    };
    let workspace = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("solstice-runner: no working directory: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("solstice-runner: {e}");
            return ExitCode::from(2);
        }
    };
    let config = RunnerConfig {
        endpoint,
        token,
        workspace,
    };
    let result = runtime.block_on(async {
        solstice_core::runner::exit_on_termination();
        run(&config, &ShellExecutor, None).await
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("solstice-runner: {e}");
            ExitCode::from(2)
        }
    }
}
