//! The mock provider's guest: the real runner code, in process, with an
//! executor that starts no processes. Engine tests and the throughput
//! benchmark run whole jobs through the real protocol this way.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use solstice_vmm::{Guest, GuestContext};

use crate::log::LogStream;
use crate::runner::{OutputSink, RunnerConfig, Step, StepError, StepExecutor, StepOutcome};

/// Pretends to run steps: prints the script and succeeds, except that
/// `false` exits 1, `exit N` exits N, `sleep N` sleeps N seconds and
/// `printenv NAME` prints the variable's value.
#[derive(Debug, Clone, Copy, Default)]
pub struct FakeExecutor;

#[async_trait]
impl StepExecutor for FakeExecutor {
    async fn run(
        &self,
        step: &Step,
        _dir: &Path,
        env: &BTreeMap<String, String>,
        out: OutputSink,
    ) -> Result<StepOutcome, StepError> {
        out.send(LogStream::Stdout, format!("{}\n", step.run).into_bytes())
            .await;
        let script = step.run.trim();
        if let Some(name) = script.strip_prefix("printenv ") {
            let value = env.get(name.trim()).cloned().unwrap_or_default();
            out.send(LogStream::Stdout, format!("{value}\n").into_bytes())
                .await;
        }
        if let Some(secs) = script
            .strip_prefix("sleep ")
            .and_then(|n| n.trim().parse::<f64>().ok())
        {
            let limit = step.timeout;
            let nap = std::time::Duration::from_secs_f64(secs.max(0.0));
            if let Some(limit) = limit.filter(|l| *l < nap) {
                tokio::time::sleep(limit).await;
                return Ok(StepOutcome {
                    exit_code: -1,
                    timed_out: true,
                });
            }
            tokio::time::sleep(nap).await;
        }
        let exit_code = if script == "false" {
            1
        } else {
            script
                .strip_prefix("exit ")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(StepOutcome {
            exit_code,
            timed_out: false,
        })
    }
}

/// Runs the runner against the engine from inside a mock VM.
#[derive(Clone)]
pub struct RunnerGuest {
    executor: Arc<dyn StepExecutor>,
    /// Where workspaces are made; the system's temporary directory if `None`.
    root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RunnerGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerGuest")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl RunnerGuest {
    /// A guest using `executor` for steps.
    pub fn new(executor: Arc<dyn StepExecutor>) -> Self {
        RunnerGuest {
            executor,
            root: None,
        }
    }

    /// A guest whose job workspaces are made under `root` (e.g. a tmpfs,
    /// so that a benchmark of the engine does not measure the host's
    /// filesystem).
    pub fn in_dir(executor: Arc<dyn StepExecutor>, root: impl Into<std::path::PathBuf>) -> Self {
        RunnerGuest {
            executor,
            root: Some(root.into()),
        }
    }
}

#[async_trait]
impl Guest for RunnerGuest {
    async fn run(&self, context: GuestContext) -> i32 {
        let endpoint = context.spec.endpoint.uri();
        let workspace = match &self.root {
            Some(root) => tempfile::tempdir_in(root),
            None => tempfile::tempdir(),
        };
        let Ok(workspace) = workspace else {
            return 2;
        };
        let config = RunnerConfig {
            endpoint,
            token: context.spec.token.clone(),
            workspace: workspace.path().to_path_buf(),
        };
        match crate::runner::run(&config, &*self.executor, context.crash_after_steps).await {
            Ok(true) => 0,
            Ok(false) => {
                tracing::warn!("mock guest: the job failed");
                1
            }
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "mock guest: runner failed");
                2
            }
        }
    }
}
