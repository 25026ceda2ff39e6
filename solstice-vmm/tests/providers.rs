//! Both providers pass the conformance suite; provider-specific behaviour.
//!
//! Waits for something that must happen (a process starting or dying) poll
//! for up to 10 s, so that a loaded machine does not fail them; they end as
//! soon as it happens.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use solstice_vmm::{
    Guest, GuestContext, LocalProvider, MockScript, MockVmProvider, VmError, VmId, VmProvider,
    VmSpec, VmState, testing,
};

/// A provider root (not yet created) inside a temporary directory that
/// the guard removes, also when the test fails.
fn temp_root(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join(name);
    (dir, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_provider_conforms() {
    testing::run_all(&MockVmProvider::idle(), VmSpec::example).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_conforms() {
    let (_dir, root) = temp_root("conform");
    let provider = LocalProvider::new(vec!["sleep".into(), "30".into()], &root);
    testing::run_all(&provider, VmSpec::example).await;
    let second = LocalProvider::new(vec!["sleep".into(), "30".into()], &root);
    testing::leftovers_are_found_by_a_new_instance(&provider, &second, &VmSpec::example("left"))
        .await;
    // Halfway: the directory exists when the runner turns out missing.
    let broken = LocalProvider::new(vec!["/nonexistent/solstice-runner".into()], &root);
    testing::failed_provision_leaves_nothing(&broken, &VmSpec::example("halfway")).await;
    assert_eq!(
        std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing left behind"
    );
}

#[tokio::test]
async fn mock_scripts_boot_failure_delay_and_crash() {
    struct Echo;
    #[async_trait]
    impl Guest for Echo {
        async fn run(&self, context: GuestContext) -> i32 {
            context.crash_after_steps.map_or(0, |n| 100 + n as i32)
        }
    }
    let provider = MockVmProvider::new(Arc::new(Echo));
    provider.script_next(MockScript::failing_boot());
    provider.script_next(MockScript::crash_after(2));
    let spec = VmSpec::example("m");
    assert!(matches!(
        provider.provision(&spec).await,
        Err(VmError::Boot { .. })
    ));
    let vm = provider
        .provision(&spec)
        .await
        .expect("second attempt boots");
    let mut state = provider.state(&vm.id).await.expect("state");
    for _ in 0..1000 {
        if matches!(state, VmState::Stopped(_)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        state = provider.state(&vm.id).await.expect("state");
    }
    assert_eq!(
        state,
        VmState::Stopped(Some(102)),
        "the guest saw crash_after_steps"
    );
    provider.set_default_script(MockScript::slow_boot(Duration::from_millis(50)));
    let started = std::time::Instant::now();
    provider.provision(&spec).await.expect("slow boot");
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(provider.provisioned(), 3);
}

#[tokio::test]
async fn local_provider_passes_the_endpoint_by_environment_the_token_on_stdin_and_kills_the_group()
{
    let (_dir, root) = temp_root("env");
    // The "runner" records what it got and leaves a grandchild running. The
    // token is not in its environment, where its steps could read it back.
    let script = "read -r t; echo \"$SOLSTICE_ENDPOINT $t ${SOLSTICE_JOB_TOKEN:-unset}\" > seen; sleep 30 & echo $! > grandchild; wait";
    let provider = LocalProvider::new(vec!["sh".into(), "-c".into(), script.into()], &root);
    let mut spec = VmSpec::example("env-test");
    spec.token = "t0ken-xyz".into();
    let vm = provider.provision(&spec).await.expect("provision");
    let work = provider.workspace(&vm.id);
    let mut grandchild = None;
    for _ in 0..1000 {
        // The file exists before `echo` writes it: only a whole number.
        if let Ok(pid) = std::fs::read_to_string(work.join("grandchild"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            grandchild = Some(pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grandchild = grandchild.expect("the runner started");
    let seen = std::fs::read_to_string(work.join("seen")).expect("seen");
    assert_eq!(seen.trim(), "http://127.0.0.1:1 t0ken-xyz unset");
    provider.destroy(&vm.id).await.expect("destroy");
    let mut gone = false;
    for _ in 0..1000 {
        gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(grandchild), None).is_err();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the whole process group is killed");
    assert!(!root.join("env-test").exists());
}

/// A runner killed with SIGKILL cannot stop its steps, and a step may leave
/// its process group and session: destroy still ends it.
#[tokio::test]
async fn local_provider_kills_what_a_dead_runner_left_even_in_a_new_session() {
    let (_dir, root) = temp_root("escape");
    let script = "setsid sleep 300 & echo $! > escaped; sleep 300";
    let provider = LocalProvider::new(vec!["sh".into(), "-c".into(), script.into()], &root);
    let vm = provider
        .provision(&VmSpec::example("escape"))
        .await
        .expect("provision");
    let dir = root.join("escape");
    let mut escaped = None;
    for _ in 0..1000 {
        if let Ok(pid) = std::fs::read_to_string(dir.join("work/escaped"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            escaped = Some(pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let escaped = nix::unistd::Pid::from_raw(escaped.expect("the runner started"));
    // Give `setsid` time to take effect, then crash the runner.
    for _ in 0..1000 {
        if nix::unistd::getsid(Some(escaped)).is_ok_and(|sid| sid == escaped) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let runner: i32 = std::fs::read_to_string(dir.join("pgid"))
        .expect("pgid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner),
        nix::sys::signal::SIGKILL,
    )
    .expect("kill the runner");
    provider.destroy(&vm.id).await.expect("destroy");
    let mut gone = false;
    for _ in 0..1000 {
        // Gone, or a zombie waiting for init to reap it.
        gone = std::fs::read_to_string(format!("/proc/{escaped}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        });
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !gone {
        let _ = nix::sys::signal::kill(escaped, nix::sys::signal::SIGKILL);
    }
    assert!(gone, "the step that left its session survived destroy");
}

/// After a reboot the number in `pgid` may belong to another process: the
/// provider neither counts it as the VM's nor kills it.
#[tokio::test]
async fn a_recorded_process_group_that_is_not_ours_is_left_alone() {
    let (_dir, root) = temp_root("stranger");
    let old = LocalProvider::new(vec!["sleep".into(), "30".into()], &root);
    let vm = old
        .provision(&VmSpec::example("stale"))
        .await
        .expect("provision");
    old.destroy(&vm.id).await.expect("destroy");
    // A stranger in its own group, and a leftover directory naming it.
    use std::os::unix::process::CommandExt;
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .expect("spawn");
    let dir = root.join("stale");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("owner"), "1").expect("owner");
    std::fs::write(dir.join("pgid"), stranger.id().to_string()).expect("pgid");
    let new = LocalProvider::new(vec!["sleep".into(), "30".into()], &root);
    let listed = new.list().await.expect("list");
    assert_eq!(
        listed[0].state,
        VmState::Stopped(None),
        "not ours: not running"
    );
    new.destroy(&vm.id).await.expect("destroy");
    let alive = stranger.try_wait().expect("try_wait").is_none();
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(alive, "the stranger was killed");
}

#[tokio::test]
async fn a_new_local_provider_finds_and_reaps_what_an_old_one_left() {
    let (_dir, root) = temp_root("reap");
    let old = LocalProvider::new(vec!["sleep".into(), "30".into()], &root);
    let vm = old
        .provision(&VmSpec::example("orphan"))
        .await
        .expect("provision");
    std::mem::forget(old); // the orchestrator "crashes": no destroy, no kill_on_drop
    let new = LocalProvider::new(vec!["sleep".into(), "30".into()], &root);
    let listed = new.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.clone(), listed[0].state.clone()),
        (vm.id.clone(), VmState::Running)
    );
    new.destroy(&vm.id).await.expect("reap");
    assert!(new.list().await.expect("list").is_empty());
    assert!(matches!(
        new.state(&VmId("orphan".into())).await,
        Err(VmError::NotFound(_))
    ));
}

#[tokio::test]
async fn local_provider_refuses_unsafe_names_and_cleans_up_failed_starts() {
    let (_dir, root) = temp_root("bad");
    let provider = LocalProvider::new(vec!["/no/such/runner".into()], &root);
    assert!(matches!(
        provider.provision(&VmSpec::example("../escape")).await,
        Err(VmError::Provider { .. })
    ));
    assert!(matches!(
        provider.provision(&VmSpec::example("nope")).await,
        Err(VmError::Boot { .. })
    ));
    assert!(
        !root.join("nope").exists(),
        "a failed start leaves nothing behind"
    );
}

/// `ByLabel` sends each label to its provider, the rest to the default,
/// lists every provider's VMs, and conforms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_label_routes_lists_and_conforms() {
    use solstice_vmm::ByLabel;
    let linux = Arc::new(MockVmProvider::idle());
    let other = Arc::new(MockVmProvider::idle());
    let router = ByLabel::new(Some(other.clone())).route("linux", linux.clone());
    let mut a = VmSpec::example("a");
    a.label = "linux".into();
    let mut b = VmSpec::example("b");
    b.label = "anything".into();
    let va = router.provision(&a).await.expect("a");
    let vb = router.provision(&b).await.expect("b");
    assert_eq!((linux.provisioned(), other.provisioned()), (1, 1));
    let listed: Vec<String> = router
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.owner)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    router.destroy(&va.id).await.expect("destroy a");
    router.destroy(&vb.id).await.expect("destroy b");
    assert!(router.list().await.expect("list").is_empty());
    testing::run_all(&router, VmSpec::example).await;

    let strict = ByLabel::new(None).route("linux", linux.clone());
    let err = strict.provision(&b).await.expect_err("no provider");
    assert!(
        err.to_string()
            .contains("no provider serves label \"anything\""),
        "{err}"
    );
}

/// A provider that cannot list (a bhyve provider on a host without
/// `zoneadm`) does not hide the other providers' VMs from the reaper.
#[tokio::test]
async fn by_label_lists_the_providers_that_answer() {
    use solstice_vmm::{ByLabel, VmHandle, VmInfo};
    #[derive(Debug)]
    struct Broken;
    #[async_trait]
    impl VmProvider for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        async fn provision(&self, _: &VmSpec) -> Result<VmHandle, VmError> {
            Err(VmError::provider("broken"))
        }
        async fn state(&self, id: &VmId) -> Result<VmState, VmError> {
            Err(VmError::NotFound(id.clone()))
        }
        async fn destroy(&self, _: &VmId) -> Result<(), VmError> {
            Ok(())
        }
        async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
            Err(VmError::provider("cannot list"))
        }
    }
    let mock = Arc::new(MockVmProvider::idle());
    let router = ByLabel::new(Some(mock.clone())).route("b", Arc::new(Broken));
    let vm = router
        .provision(&VmSpec::example("kept"))
        .await
        .expect("provision");
    let listed = router.list().await.expect("the mock answers");
    assert_eq!(listed.len(), 1);
    router.destroy(&vm.id).await.expect("destroy");
    let only_broken = ByLabel::new(Some(Arc::new(Broken)));
    assert!(only_broken.list().await.is_err(), "nobody answered");
}
