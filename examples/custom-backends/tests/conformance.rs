//! The example backends pass the SDK's conformance suites.

use custom_backends::{DirProvider, SharedQueue};
use solstice_vmm::{VmProvider, VmSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_queue_conforms() {
    solstice_queue::testing::run_all(|options| async move { SharedQueue::new(options) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_provider_conforms() {
    let root = tempfile::tempdir().expect("temp dir");
    let provider = DirProvider::new(root.path().join("vms"));
    solstice_vmm::testing::run_all(&provider, VmSpec::example).await;
}

#[tokio::test]
async fn dir_provider_refuses_names_that_leave_its_root() {
    let root = tempfile::tempdir().expect("temp dir");
    let provider = DirProvider::new(root.path().join("vms"));
    for name in ["../escape", "a/b", "", ".hidden", ".."] {
        assert!(
            provider.provision(&VmSpec::example(name)).await.is_err(),
            "{name:?}"
        );
    }
    assert!(!root.path().join("escape").exists());
}
