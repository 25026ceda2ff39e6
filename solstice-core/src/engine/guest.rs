//! The mock provider's guest: the real runner code, in process, with an
//! executor that starts no processes. Engine tests and the throughput
//! benchmark run whole jobs through the real protocol this way.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use solstice_vmm::{Guest, GuestContext, RunnerEndpoint};

use crate::protocol::pb;
use crate::runner::{OutputSink, RunnerConfig, StepExecutor, StepOutcome};

/// Pretends to run steps: prints the script and succeeds, except that
/// `false` exits 1, `exit N` exits N, `sleep N` sleeps N seconds and
/// `printenv NAME` prints the variable's value.
pub struct FakeExecutor;

#[async_trait]
impl StepExecutor for FakeExecutor {
    async fn run(
        &self,
        step: &pb::StepSpec,
        _dir: &Path,
        env: &BTreeMap<String, String>,
        out: OutputSink,
    ) -> Result<StepOutcome, String> {
        let _ = out
            .send((pb::Stream::Stdout, format!("{}\n", step.run).into_bytes()))
            .await;
        let script = step.run.trim();
        if let Some(name) = script.strip_prefix("printenv ") {
            let value = env.get(name.trim()).cloned().unwrap_or_default();
            let _ = out
                .send((pb::Stream::Stdout, format!("{value}\n").into_bytes()))
                .await;
        }
        if let Some(secs) = script
            .strip_prefix("sleep ")
            .and_then(|n| n.trim().parse::<f64>().ok())
        {
            let limit =
                (step.timeout_secs > 0).then(|| std::time::Duration::from_secs(step.timeout_secs));
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
pub struct RunnerGuest {
    executor: Arc<dyn StepExecutor>,
    /// Where workspaces are made; the system's temporary directory if `None`.
    root: Option<std::path::PathBuf>,
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
        let endpoint = match &context.spec.endpoint {
            RunnerEndpoint::Tcp(addr) => format!("http://{addr}"),
            RunnerEndpoint::Unix(path) => format!("unix://{}", path.display()),
        };
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
                tracing::warn!(error = %e, "mock guest: runner failed");
                2
            }
        }
    }
}
