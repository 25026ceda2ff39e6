//! The QEMU provider, booting the project's guest image for real (under TCG
//! on machines without usable KVM). Build the image first:
//! `images/linux-guest/build.sh` (the README's test command does).
//!
//! Boots take 1–3 s here and up to 30 s on a loaded machine: every wait
//! polls with a generous limit and ends as soon as the thing happened.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use solstice_vmm::{
    QemuConfig, QemuImage, QemuProvider, RunnerEndpoint, VmError, VmId, VmProvider, VmSpec,
    VmState, testing,
};

/// The guest image, where `build.sh` puts it.
fn guest_image() -> QemuImage {
    let dir = QemuImage::default_dir().expect("no SOLSTICE_GUEST_IMAGE, XDG_CACHE_HOME or HOME");
    QemuImage::from_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{e}\n(the QEMU tests boot the project's guest image: run images/linux-guest/build.sh)"
        )
    })
}

/// A runner endpoint that accepts connections and counts them.
struct Endpoint {
    _dir: tempfile::TempDir,
    endpoint: RunnerEndpoint,
    connections: Arc<AtomicUsize>,
    first_bytes: Arc<std::sync::Mutex<Vec<u8>>>,
}

async fn endpoint() -> Endpoint {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runner.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let connections = Arc::new(AtomicUsize::new(0));
    let first_bytes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, f) = (connections.clone(), first_bytes.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let f = f.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let mut f = f.lock().expect("lock");
                    if f.is_empty() {
                        f.extend_from_slice(&buf[..n]);
                    }
                }
                // Held open, unanswered, until the VM goes: read to the end
                // (a second read that returned the runner's next bytes
                // once closed the connection under the runner, which then
                // exited: a flaky test).
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    Endpoint {
        _dir: dir,
        endpoint: RunnerEndpoint::Unix(path),
        connections,
        first_bytes,
    }
}

fn spec(name: &str, endpoint: &Endpoint) -> VmSpec {
    let mut spec = VmSpec::new(
        name,
        format!("owner-{name}"),
        endpoint.endpoint.clone(),
        format!("token-{name}"),
    );
    spec.memory_mib = 256;
    spec
}

fn provider(root: &Path, image: QemuImage) -> QemuProvider {
    QemuProvider::new(QemuConfig::new(root, image)).expect("provider")
}

/// Processes whose command line mentions `needle` (a VM directory).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&needle)
        {
            found.push(pid);
        }
    }
    found
}

async fn wait_for_state(
    provider: &dyn VmProvider,
    id: &VmId,
    done: impl Fn(&VmState) -> bool,
) -> VmState {
    let mut state = provider.state(id).await.expect("state");
    for _ in 0..1200 {
        if done(&state) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        state = provider.state(id).await.expect("state");
    }
    panic!("still {state:?} after 60 s");
}

fn assert_clean(root: &Path) {
    let left: Vec<_> = std::fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        root.display()
    );
    assert!(
        processes_mentioning(root).is_empty(),
        "QEMU processes left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_provider_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("vms");
    let image = guest_image();
    let ep = endpoint().await;
    let first = provider(&root, image.clone());
    testing::run_all(&first, |name| spec(name, &ep)).await;
    assert_clean(&root);

    // Halfway: the overlay and the seed exist when the kernel turns out missing.
    let mut broken = image.clone();
    broken.kernel = dir.path().join("no-such-vmlinux");
    let mut config = QemuConfig::new(&root, image.clone());
    config.images.insert("broken".into(), broken);
    let halfway = QemuProvider::new(config).expect("provider");
    let mut bad = spec("conformance-halfway", &ep);
    bad.label = "broken".into();
    testing::failed_provision_leaves_nothing(&halfway, &bad).await;
    assert_clean(&root);

    let second = provider(&root, image);
    testing::leftovers_are_found_by_a_new_instance(
        &first,
        &second,
        &spec("conformance-leftover", &ep),
    )
    .await;
    assert_clean(&root);
}

/// Provisions `spec` and waits until its runner connected (the console in
/// the failure's message otherwise).
async fn provision_until_running(provider: &QemuProvider, spec: &VmSpec) -> solstice_vmm::VmHandle {
    let vm = provider.provision(spec).await.expect("provision");
    let state = wait_for_state(provider, &vm.id, |s| !matches!(s, VmState::Booting)).await;
    assert_eq!(
        state,
        VmState::Running,
        "{:?}",
        provider.console_tail(&vm.id).await
    );
    vm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_boots_and_its_runner_dials_the_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("vms");
    let ep = endpoint().await;
    let provider = provider(&root, guest_image());
    let vm = provision_until_running(&provider, &spec("boot", &ep)).await;
    for _ in 0..600 {
        if !ep.first_bytes.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ep.connections.load(Ordering::SeqCst) >= 1);
    assert!(
        ep.first_bytes
            .lock()
            .expect("lock")
            .starts_with(b"PRI * HTTP/2.0"),
        "the runner speaks gRPC (HTTP/2) through the channel"
    );
    // The token is on no command line.
    let vm_dir = provider.vm_dir(&vm.id);
    for pid in processes_mentioning(&vm_dir) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("token-boot"),
            "the job token is on a command line"
        );
    }
    let mode = std::fs::metadata(vm_dir.join("seed.img"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("seed");
    assert_eq!(mode, 0o600, "only the orchestrator's user reads the token");
    provider.destroy(&vm.id).await.expect("destroy");
    assert_clean(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_timeout_stops_the_vm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("vms");
    let ep = endpoint().await;
    let image = guest_image();
    // Too short a timeout for any runner to connect.
    let mut config = QemuConfig::new(&root, image);
    config.boot_timeout = Duration::from_millis(300);
    let provider = QemuProvider::new(config).expect("provider");
    let vm = provider
        .provision(&spec("timeout", &ep))
        .await
        .expect("provision");
    let state = wait_for_state(&provider, &vm.id, |s| matches!(s, VmState::Failed(_))).await;
    assert!(
        matches!(&state, VmState::Failed(why) if why.contains("boot timeout")),
        "{state:?}"
    );
    assert!(
        processes_mentioning(&provider.vm_dir(&vm.id)).is_empty(),
        "the timeout killed QEMU"
    );
    provider.destroy(&vm.id).await.expect("destroy");
    assert_clean(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_dies_early_explains_itself_in_its_console() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("vms");
    let ep = endpoint().await;
    let mut image = guest_image();
    // No initramfs: the kernel finds no root and panics (panic=-1 reboots,
    // -no-reboot stops QEMU).
    image.initrd = None;
    image.cmdline = String::new();
    let provider = provider(&root, image);
    let vm = provider
        .provision(&spec("panics", &ep))
        .await
        .expect("provision");
    let state = wait_for_state(&provider, &vm.id, |s| {
        matches!(s, VmState::Stopped(_) | VmState::Failed(_))
    })
    .await;
    assert!(matches!(state, VmState::Stopped(_)), "{state:?}");
    let console = provider.console_tail(&vm.id).await.expect("a console");
    assert!(console.contains("Kernel panic"), "{console}");
    provider.destroy(&vm.id).await.expect("destroy");
    assert_clean(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vms_at_once_get_their_own_overlays_and_the_golden_image_stays_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("vms");
    let ep = endpoint().await;
    let image = guest_image();
    let golden = image.disk.clone().expect("the image has a root disk");
    // sha256sum: a debug build of a hasher takes a minute for a 1 GiB disk.
    let digest = |p: &Path| {
        let out = std::process::Command::new("sha256sum")
            .arg(p)
            .output()
            .expect("sha256sum");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .map(str::to_string)
            .expect("a digest")
    };
    let before = digest(&golden);
    let provider = provider(&root, image);
    let (spec_a, spec_b) = (spec("para-a", &ep), spec("para-b", &ep));
    let (a, b) = tokio::join!(provider.provision(&spec_a), provider.provision(&spec_b));
    let (a, b) = (a.expect("a"), b.expect("b"));
    let overlay = |id: &VmId| provider.vm_dir(id).join("disk.qcow2");
    assert_ne!(overlay(&a.id), overlay(&b.id));
    for vm in [&a, &b] {
        let state = wait_for_state(&provider, &vm.id, |s| !matches!(s, VmState::Booting)).await;
        if state != VmState::Running {
            let console = provider.console_tail(&vm.id).await.unwrap_or_default();
            let qemu_log = std::fs::read_to_string(provider.vm_dir(&vm.id).join("qemu.log"))
                .unwrap_or_default()
                + &std::fs::read_to_string(provider.vm_dir(&vm.id).join("socat.log"))
                    .unwrap_or_default();
            panic!(
                "{}: {state:?}, {} connections\nconsole:\n{console}\nqemu.log:\n{qemu_log}",
                vm.id,
                ep.connections.load(Ordering::SeqCst)
            );
        }
        assert!(overlay(&vm.id).is_file());
    }
    provider.destroy(&a.id).await.expect("destroy a");
    assert!(matches!(provider.state(&b.id).await, Ok(VmState::Running)));
    provider.destroy(&b.id).await.expect("destroy b");
    assert_clean(&root);
    assert!(before == digest(&golden), "the golden image changed");
    assert!(matches!(
        provider.state(&a.id).await,
        Err(VmError::NotFound(_))
    ));
}

#[test]
fn missing_tools_are_named_with_how_to_get_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = QemuConfig::new(dir.path().join("vms"), guest_image());
    config.socat = "/nonexistent/socat".into();
    let err = QemuProvider::new(config).expect_err("no socat");
    assert!(
        err.to_string()
            .contains("socat (/nonexistent/socat) not found"),
        "{err}"
    );
    assert!(err.to_string().contains("build.sh installs"), "{err}");
    let mut config = QemuConfig::new(dir.path().join("vms, with a comma"), guest_image());
    config.qemu = "qemu-system-x86_64".into();
    let err = QemuProvider::new(config).expect_err("unsafe root");
    assert!(err.to_string().contains("may only contain"), "{err}");
}

/// The initramfs carries the virtio-pci drivers beside virtio-mmio's: the
/// same image boots on q35 (PCI disks and NIC, as a bhyve guest has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_q35_guest_finds_its_pci_disks_and_dials_the_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("vms");
    let ep = endpoint().await;
    let mut image = guest_image();
    image.machine = solstice_vmm::Machine::Q35;
    let provider = provider(&root, image);
    let vm = provision_until_running(&provider, &spec("q35", &ep)).await;
    provider.destroy(&vm.id).await.expect("destroy");
    assert_clean(&root);
}

/// `disk_gib` makes each VM's overlay that big (the guest grows its file
/// system into it); without it the overlay has the golden disk's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overlay_is_as_big_as_the_images_disk_gib() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ep = endpoint().await;
    let golden = dir.path().join("rootfs.ext4");
    std::fs::File::create(&golden)
        .and_then(|f| f.set_len(64 << 20))
        .expect("golden");
    let mut image = QemuImage::new(dir.path().join("vmlinux"));
    image.disk = Some(golden.clone());
    let plain = provider(&dir.path().join("vms"), image.clone());
    let overlay = |p: &QemuProvider| p.plan(&spec("sized", &ep)).expect("plan")[0].args.clone();
    let args = overlay(&plain);
    assert!(
        args.last().is_some_and(|a| a.ends_with("disk.qcow2")),
        "{args:?}"
    );
    image.disk_gib = Some(3);
    let sized = provider(&dir.path().join("vms"), image.clone());
    let args = overlay(&sized);
    assert_eq!(
        args.last().map(String::as_str),
        Some("3221225472"),
        "{args:?}"
    );
    // A golden disk already bigger than disk_gib keeps its size
    // (qemu-img cannot make an overlay smaller than its base).
    std::fs::File::options()
        .write(true)
        .open(&golden)
        .and_then(|f| f.set_len(4 << 30))
        .expect("grow");
    let args = overlay(&sized);
    assert!(
        args.last().is_some_and(|a| a.ends_with("disk.qcow2")),
        "{args:?}"
    );
    // The image's directory says it: `disk-gib`.
    std::fs::write(dir.path().join("vmlinux"), b"").expect("kernel");
    std::fs::write(dir.path().join("disk-gib"), "12\n").expect("disk-gib");
    assert_eq!(
        QemuImage::from_dir(dir.path()).expect("image").disk_gib,
        Some(12)
    );
    std::fs::write(dir.path().join("disk-gib"), "0\n").expect("disk-gib");
    assert!(QemuImage::from_dir(dir.path()).is_err(), "0 GiB is refused");
}
