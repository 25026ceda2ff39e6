//! The shell executor passes the step executor conformance suite.

use solstice_core::runner::ShellExecutor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_executor_conforms() {
    solstice_core::testing::executor::run_all(&ShellExecutor).await;
}
