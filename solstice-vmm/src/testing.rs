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

/// Runs every check that needs only the provider. Providers that keep
/// their VMs across processes also run [`leftovers_are_found_by_a_new_instance`];
/// providers that can be made to fail halfway run
/// [`failed_provision_leaves_nothing`].
pub async fn run_all(provider: &dyn VmProvider, spec: impl Fn(&str) -> VmSpec) {
    provision_observe_destroy(provider, &spec("conformance-a")).await;
    destroy_is_idempotent_and_tolerant(provider, &spec("conformance-b")).await;
    vms_are_independent(provider, &spec("conformance-c"), &spec("conformance-d")).await;
    destroy_while_booting(provider, &spec("conformance-e")).await;
}

/// A VM destroyed right after `provision` returned, while it is still
/// booting, is gone: not listed, not found, and destroying it again is `Ok`.
pub async fn destroy_while_booting(provider: &dyn VmProvider, spec: &VmSpec) {
    let vm = provider.provision(spec).await.expect("provision");
    provider
        .destroy(&vm.id)
        .await
        .expect("destroy while booting");
    assert_gone(provider, &vm.id, "destroyed while booting").await;
    provider.destroy(&vm.id).await.expect("destroy again");
}

/// `spec` makes `provision` fail after it has created some of the VM (the
/// caller knows how: a missing kernel, a failing command): the error comes
/// back and nothing new is listed.
pub async fn failed_provision_leaves_nothing(provider: &dyn VmProvider, spec: &VmSpec) {
    let before = provider.list().await.expect("list");
    let result = provider.provision(spec).await;
    assert!(result.is_err(), "provision was meant to fail: {result:?}");
    let after = provider.list().await.expect("list");
    assert_eq!(
        before.iter().map(|i| &i.id).collect::<Vec<_>>(),
        after.iter().map(|i| &i.id).collect::<Vec<_>>(),
        "a failed provision left a VM behind"
    );
}

/// A VM made by `first` (standing for a process that died) is listed by
/// `second` (a new process on the same host and state) with its owner, and
/// `second` destroys it.
pub async fn leftovers_are_found_by_a_new_instance(
    first: &dyn VmProvider,
    second: &dyn VmProvider,
    spec: &VmSpec,
) {
    let vm = first.provision(spec).await.expect("provision");
    let listed = second.list().await.expect("list");
    let info = listed
        .iter()
        .find(|i| i.id == vm.id)
        .expect("the new instance lists the leftover VM");
    assert_eq!(info.owner, spec.owner);
    second.destroy(&vm.id).await.expect("destroy the leftover");
    assert_gone(second, &vm.id, "the leftover destroyed").await;
    // The first instance's own handle is stale now; destroying is still Ok.
    first
        .destroy(&vm.id)
        .await
        .expect("destroy from the first instance");
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
    assert_gone(provider, &vm.id, "destroyed").await;
}

/// `id` is neither listed nor found.
async fn assert_gone(provider: &dyn VmProvider, id: &VmId, what: &str) {
    assert!(
        !provider
            .list()
            .await
            .expect("list")
            .iter()
            .any(|i| i.id == *id),
        "{what}, still listed"
    );
    assert!(
        matches!(provider.state(id).await, Err(VmError::NotFound(_))),
        "{what}, still found"
    );
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
