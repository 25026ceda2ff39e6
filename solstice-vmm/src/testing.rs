//! The conformance suite for [`VmProvider`] implementations.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use solstice_vmm::{MockVmProvider, VmSpec, testing};
//! testing::run_all(&MockVmProvider::idle(), VmSpec::example).await;
//! # });
//! ```
//!
//! `spec` makes a spec for a given unique name; the suite provisions a few
//! VMs and destroys all of them.

use crate::{VmError, VmId, VmProvider, VmSpec, VmState};

/// Runs every check.
pub async fn run_all(provider: &dyn VmProvider, spec: impl Fn(&str) -> VmSpec) {
    provision_observe_destroy(provider, &spec("conformance-a")).await;
    destroy_is_idempotent_and_tolerant(provider, &spec("conformance-b")).await;
    vms_are_independent(provider, &spec("conformance-c"), &spec("conformance-d")).await;
}

/// A provisioned VM is listed with its owner, observable, and gone after destroy.
pub async fn provision_observe_destroy(provider: &dyn VmProvider, spec: &VmSpec) {
    let vm = provider.provision(spec).await.expect("provision");
    assert_eq!(vm.owner, spec.owner);
    let state = provider.state(&vm.id).await.expect("state");
    assert!(
        matches!(
            state,
            VmState::Booting | VmState::Running | VmState::Stopped(_)
        ),
        "{state:?}"
    );
    let listed = provider.list().await.expect("list");
    let info = listed.iter().find(|i| i.id == vm.id).expect("listed");
    assert_eq!(info.owner, spec.owner, "the reaper needs the owner");
    provider.destroy(&vm.id).await.expect("destroy");
    assert!(
        !provider
            .list()
            .await
            .expect("list")
            .iter()
            .any(|i| i.id == vm.id)
    );
    assert!(matches!(
        provider.state(&vm.id).await,
        Err(VmError::NotFound(_))
    ));
}

/// Destroying twice, or something that never existed, is `Ok`.
pub async fn destroy_is_idempotent_and_tolerant(provider: &dyn VmProvider, spec: &VmSpec) {
    let vm = provider.provision(spec).await.expect("provision");
    provider.destroy(&vm.id).await.expect("destroy");
    provider.destroy(&vm.id).await.expect("destroy again");
    provider
        .destroy(&VmId("never-existed".into()))
        .await
        .expect("destroy unknown");
}

/// Two VMs get distinct ids; destroying one leaves the other.
pub async fn vms_are_independent(provider: &dyn VmProvider, a: &VmSpec, b: &VmSpec) {
    let va = provider.provision(a).await.expect("provision a");
    let vb = provider.provision(b).await.expect("provision b");
    assert_ne!(va.id, vb.id);
    provider.destroy(&va.id).await.expect("destroy a");
    assert!(provider.state(&vb.id).await.is_ok(), "b survives");
    assert!(
        provider
            .list()
            .await
            .expect("list")
            .iter()
            .any(|i| i.id == vb.id)
    );
    provider.destroy(&vb.id).await.expect("destroy b");
}
