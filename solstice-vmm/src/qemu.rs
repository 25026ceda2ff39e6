//! One QEMU virtual machine per job, on a qcow2 overlay of a golden image.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::task::AbortHandle;

use crate::{RunnerEndpoint, VmError, VmHandle, VmId, VmInfo, VmProvider, VmSpec, VmState, lock};

/// The address the guest dials for the runner endpoint; QEMU forwards each
/// connection to it to the VM's own unix socket on the host.
pub const GUEST_ENDPOINT: &str = "http://10.0.2.100:4000";
const GUESTFWD: &str = "tcp:10.0.2.100:4000";
/// The first line of the seed disk, which the guest's init looks for.
pub const SEED_MAGIC: &str = "SOLSTICE-SEED-1";
/// A seed disk's content, as the guest image's init reads it: one line
/// each for [`SEED_MAGIC`], the runner endpoint, the VM's name, the job
/// token, the shared directory's path (or nothing) and the names of the
/// hosts the guest may reach (`10.0.2.101=name ...`, or nothing), padded
/// with zeros to whole 4 KiB blocks. Both the QEMU and the bhyve provider
/// write it.
pub(crate) fn seed_disk(
    endpoint: &str,
    name: &str,
    token: &str,
    share: &str,
    hosts: &str,
) -> Vec<u8> {
    let mut seed =
        format!("{SEED_MAGIC}\n{endpoint}\n{name}\n{token}\n{share}\n{hosts}\n").into_bytes();
    seed.resize(seed.len().div_ceil(4096) * 4096, 0);
    seed
}

/// The most console output kept per VM (the rest is read and dropped).
pub const CONSOLE_CAP: u64 = 1 << 20;
/// The most `host:port` entries in [`QemuImage::reach`].
pub const MAX_REACH: usize = 16;
/// The most connections a guest may hold open to the runner endpoint at once.
pub const MAX_GUEST_CONNECTIONS: usize = 16;
/// The most of a VM's console [`VmProvider::console_tail`] returns.
const CONSOLE_TAIL: u64 = 16 << 10;

/// The machine QEMU emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Machine {
    /// `-M microvm`: no PCI, no firmware, virtio-mmio devices; the fastest
    /// boot. The guest kernel needs `virtio_mmio`.
    Microvm,
    /// `-M q35`: a PC with PCI; virtio-pci devices.
    Q35,
}

impl std::str::FromStr for Machine {
    type Err = String;
    fn from_str(s: &str) -> Result<Machine, String> {
        match s {
            "microvm" => Ok(Machine::Microvm),
            "q35" => Ok(Machine::Q35),
            other => Err(format!("unknown machine {other:?} (choices: microvm, q35)")),
        }
    }
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Accelerator {
    /// Probe: KVM when the host's KVM can boot ordinary guests, else TCG.
    Auto,
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's own emulator: slower, works everywhere.
    Tcg,
}

impl std::str::FromStr for Accelerator {
    type Err = String;
    fn from_str(s: &str) -> Result<Accelerator, String> {
        match s {
            "auto" => Ok(Accelerator::Auto),
            "kvm" => Ok(Accelerator::Kvm),
            "tcg" => Ok(Accelerator::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (choices: auto, kvm, tcg)"
            )),
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accelerator::Auto => "auto",
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// Chooses the accelerator for [`Accelerator::Auto`]: KVM only when the host
/// module is `kvm_intel` or `kvm_amd` and `/dev/kvm` opens. `/dev/kvm` alone
/// is not enough: a PVM host (`kvm_pvm`) accepts `KVM_CREATE_VM` but cannot
/// boot a stock kernel. Returns the choice and why.
pub fn probe_accelerator() -> (Accelerator, String) {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") {
        return (
            Accelerator::Tcg,
            "the host's KVM is PVM (kvm_pvm), which does not boot stock kernels".into(),
        );
    }
    if !(module("kvm_intel") || module("kvm_amd")) {
        return (
            Accelerator::Tcg,
            "no kvm_intel or kvm_amd module on this host".into(),
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => (Accelerator::Kvm, "kvm_intel or kvm_amd and /dev/kvm".into()),
        Err(e) => (Accelerator::Tcg, format!("/dev/kvm: {e}")),
    }
}

/// The host's TSC frequency in kHz, for the guest's `tsc_early_khz` under
/// TCG (without it a microvm guest hangs calibrating its clock in a
/// fifth to half of boots). From `/proc/cpuinfo`'s `cpu MHz`, which on
/// the virtual machines CI runs on is the constant TSC rate.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse::<f64>()
        .ok()?;
    (mhz > 0.0 && mhz < 100_000.0).then(|| (mhz * 1000.0).round() as u64)
}

/// A golden image: what every VM of one label boots.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QemuImage {
    /// The kernel (`-kernel`): an uncompressed PVH `vmlinux` or a bzImage.
    pub kernel: PathBuf,
    /// The initramfs (`-initrd`), if any.
    pub initrd: Option<PathBuf>,
    /// The golden root disk, never written: each VM gets a qcow2 overlay on it.
    pub disk: Option<PathBuf>,
    /// Kernel command line the image wants; the provider adds the console
    /// and the accelerator's settings.
    pub cmdline: String,
    /// The machine type.
    pub machine: Machine,
    /// Virtual CPUs, instead of the job's.
    pub vcpus: Option<u32>,
    /// Memory in MiB, instead of the job's.
    pub memory_mib: Option<u32>,
    /// Let the guest reach other hosts. Off by default: the guest reaches
    /// the runner endpoint and nothing else.
    pub egress: bool,
    /// Hosts the guest may reach besides the runner, as `host:port` or
    /// `name=host:port` (at most [`MAX_REACH`]; a package mirror, a
    /// database). Each name (the host's own when none is given) gets an
    /// address of its own, `10.0.2.101` and up, written to the guest's
    /// `/etc/hosts`; QEMU forwards a connection to that address and port
    /// (through `socat`) to the host and port as the orchestrator resolves
    /// them. TLS stays end to end. A name is how the guest reaches what the
    /// orchestrator knows as `localhost` (`db=localhost:5432`): the guest's
    /// `localhost` is its own, so `localhost` is refused as a name.
    pub reach: Vec<String>,
    /// The size of each VM's root disk in GiB: the overlay is created this
    /// big (when the golden disk is smaller) and the guest grows its file
    /// system to fill it at boot. The overlay can never grow past it, which
    /// is what bounds a job's use of the host's disk. `None`: the golden
    /// disk's size. `from_dir` reads it from the image's `disk-gib` (a
    /// recipe's `disk_gib`).
    pub disk_gib: Option<u32>,
    /// Boot through this UEFI firmware (OVMF) from the root disk's EFI
    /// system partition, as a bhyve zone boots, instead of loading
    /// `kernel` and `initrd` directly: the disk is an image's `disk.raw`
    /// and the machine q35 ([`QemuImage::uefi_from_dir`]). Slower to boot
    /// (the firmware's own start); what it tests is the image a bhyve
    /// host boots.
    pub firmware: Option<PathBuf>,
}

/// Debian's OVMF (the package `ovmf`): the firmware
/// [`QemuImage::uefi_from_dir`] boots with unless told otherwise.
pub const DEFAULT_UEFI_FIRMWARE: &str = "/usr/share/ovmf/OVMF.fd";

/// The largest root disk a VM may ask for, in GiB.
pub const MAX_DISK_GIB: u32 = 1_024;

impl QemuImage {
    /// An image of `kernel` alone (set the other fields on the result).
    pub fn new(kernel: impl Into<PathBuf>) -> QemuImage {
        QemuImage {
            kernel: kernel.into(),
            initrd: None,
            disk: None,
            cmdline: String::new(),
            machine: Machine::Microvm,
            vcpus: None,
            memory_mib: None,
            egress: false,
            reach: Vec::new(),
            disk_gib: None,
            firmware: None,
        }
    }

    /// Where `images/linux-guest/build.sh` puts the image by default and
    /// where `cidev` and the tests look for it: `$SOLSTICE_GUEST_IMAGE`,
    /// else `$XDG_CACHE_HOME/solstice/linux-guest`, else
    /// `~/.cache/solstice/linux-guest`.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |n: &str| {
            std::env::var_os(n)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("SOLSTICE_GUEST_IMAGE").or_else(|| {
            var("XDG_CACHE_HOME")
                .or_else(|| var("HOME").map(|h| h.join(".cache")))
                .map(|c| c.join("solstice").join("linux-guest"))
        })
    }

    /// The image `images/linux-guest/build.sh` writes into `dir`:
    /// `vmlinux`, `initrd.cpio`, `rootfs.ext4` and `cmdline`.
    pub fn from_dir(dir: &Path) -> Result<QemuImage, VmError> {
        let dir = std::path::absolute(dir)
            .map_err(|e| VmError::provider_because(format!("{}", dir.display()), e))?;
        let kernel = ["vmlinux", "vmlinuz", "bzImage"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                VmError::provider(format!(
                    "{}: no guest image here (no vmlinux); build one with images/linux-guest/build.sh",
                    dir.display()
                ))
            })?;
        let mut image = QemuImage::new(kernel);
        image.initrd = Some(dir.join("initrd.cpio")).filter(|p| p.is_file());
        image.disk = Some(dir.join("rootfs.ext4")).filter(|p| p.is_file());
        image.cmdline = std::fs::read_to_string(dir.join("cmdline"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        image.disk_gib = match std::fs::read_to_string(dir.join("disk-gib")) {
            Err(_) => None,
            Ok(text) => match text.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_DISK_GIB).contains(&n) => Some(n),
                _ => {
                    return Err(VmError::provider(format!(
                        "{}: `{}` is not a disk size in GiB (1 to {MAX_DISK_GIB})",
                        dir.join("disk-gib").display(),
                        text.trim()
                    )));
                }
            },
        };
        Ok(image)
    }

    /// The image in `dir` booted through UEFI `firmware` from its
    /// `disk.raw` (what `solstice image build` writes; the busybox test
    /// image has none), on a q35 machine. The disk's size is the recipe's
    /// `disk_gib`: its partition table ends there, so `disk_gib` is left
    /// unset.
    pub fn uefi_from_dir(dir: &Path, firmware: impl Into<PathBuf>) -> Result<QemuImage, VmError> {
        let mut image = QemuImage::from_dir(dir)?;
        let disk = image
            .kernel
            .parent()
            .unwrap_or(Path::new("."))
            .join("disk.raw");
        if !disk.is_file() {
            return Err(VmError::provider(format!(
                "{}: no disk.raw here to boot through UEFI (images from recipes have one: solstice image build)",
                dir.display()
            )));
        }
        image.disk = Some(disk);
        image.machine = Machine::Q35;
        image.disk_gib = None;
        image.firmware = Some(firmware.into());
        Ok(image)
    }
}

/// How the QEMU provider runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QemuConfig {
    /// Where VMs live: `ROOT/NAME/` holds one VM's overlay, seed disk,
    /// sockets and console. Only characters QEMU's option syntax takes
    /// unescaped are allowed in it (letters, digits, `/._-+`).
    pub root: PathBuf,
    /// The golden image of each `runs_on` label.
    pub images: BTreeMap<String, QemuImage>,
    /// The image of labels not in `images`, if any.
    pub default_image: Option<QemuImage>,
    /// The accelerator.
    pub accelerator: Accelerator,
    /// The host TSC in kHz for TCG guests (default: [`host_tsc_khz`]).
    pub tsc_khz: Option<u64>,
    /// A VM whose runner has not connected by then is stopped and reported
    /// failed, with its console.
    pub boot_timeout: Duration,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `qemu-img`.
    pub qemu_img: PathBuf,
    /// `socat`, which QEMU runs for each guest connection to the runner.
    pub socat: PathBuf,
}

impl QemuConfig {
    /// VMs under `root`, every label booting `image`; the accelerator probed,
    /// a 60 s boot timeout, the tools from `PATH`.
    pub fn new(root: impl Into<PathBuf>, image: QemuImage) -> QemuConfig {
        QemuConfig {
            root: root.into(),
            images: BTreeMap::new(),
            default_image: Some(image),
            accelerator: Accelerator::Auto,
            tsc_khz: None,
            boot_timeout: Duration::from_secs(60),
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            socat: "socat".into(),
        }
    }
}

/// What the provider keeps of a VM it started.
#[derive(Debug)]
struct Running {
    child: Child,
    connected: Arc<AtomicBool>,
    /// Being stopped for its boot timeout: still booting until its
    /// processes are gone, then failed.
    stopping: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    tasks: Tasks,
}

/// A VM's tasks (proxy, console, boot timeout): aborted when dropped, so a
/// provision that fails halfway or a VM forgotten leaves none running.
#[derive(Debug, Default)]
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Each job in its own QEMU virtual machine (Linux).
///
/// Per VM, in `ROOT/NAME/` (mode 0700):
///
/// - `disk.qcow2`: a qcow2 overlay on the label's golden disk, which is
///   never written (the Linux analogue of a ZFS clone);
/// - `seed.img`: a small read-only disk with the runner endpoint, the VM's
///   name and the job token (mode 0600). The token goes nowhere else: not
///   on QEMU's command line, which every host user can read, and not in a
///   file another VM can reach;
/// - `runner.sock`: the guest's only way out. With `restrict=on` user
///   networking the guest reaches nothing but `10.0.2.100:4000`, which QEMU
///   forwards (through `socat`) to this socket; the provider proxies what
///   arrives there to the engine's runner endpoint, and the first
///   connection marks the VM [`VmState::Running`];
/// - `console.log`: the serial console, at most [`CONSOLE_CAP`] bytes,
///   shown in the job's log when the VM fails before its runner reports;
/// - `owner`, `pid`: for [`VmProvider::list`] and a reaper in a later process.
///
/// QEMU runs in its own process group; destroy, the boot timeout and the
/// reaper kill the group (QEMU and its `socat`s) and remove the directory.
#[derive(Debug)]
pub struct QemuProvider {
    config: QemuConfig,
    accelerator: Accelerator,
    tsc_khz: Option<u64>,
    vms: Mutex<HashMap<VmId, Running>>,
}

/// `program` as a path, or found on `PATH`, if it is an executable file.
fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return runnable(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
}

fn qemu_safe_path(p: &Path) -> bool {
    p.to_str().is_some_and(|s| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
    })
}

/// One entry of [`QemuImage::reach`], planned: the guest connects to
/// `name:port` (its address is `ip`), the provider to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reach {
    pub ip: String,
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A host name or IPv4 address as `reach` takes it, lower-cased; `None`
/// when it is not one.
fn reach_host(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    (!host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
    .then_some(host)
}

/// `reach` planned, each entry `[NAME=]HOST:PORT`: the guest's names are
/// numbered from `10.0.2.101` in their first appearance's order, a name
/// being `NAME` when given (the guest's name for a host it must not see by
/// its own name, `db=127.0.0.1:5432`) and `HOST` otherwise. An error names
/// the first entry that is malformed, a name that is the guest's own
/// (`localhost`), or a name and port given twice for different hosts.
pub(crate) fn reach_plan(reach: &[String]) -> Result<Vec<Reach>, VmError> {
    if reach.len() > MAX_REACH {
        return Err(VmError::provider(format!(
            "qemu provider: at most {MAX_REACH} hosts to reach, not {}",
            reach.len()
        )));
    }
    let mut names: Vec<String> = Vec::new();
    let mut out: Vec<Reach> = Vec::new();
    for entry in reach {
        let bad = || {
            VmError::provider(format!(
                "qemu provider: cannot reach {entry:?}: write host:port or name=host:port (a host name or IPv4 address, a port from 1 to 65535)"
            ))
        };
        let (name, target) = match entry.split_once('=') {
            Some((name, target)) => (Some(name), target),
            None => (None, entry.as_str()),
        };
        let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        let host = reach_host(host).ok_or_else(bad)?;
        let name = match name {
            Some(n) => reach_host(n).ok_or_else(bad)?,
            None => host.clone(),
        };
        if name == "localhost" {
            return Err(VmError::provider(format!(
                "qemu provider: cannot reach {entry:?}: `{name}` is the guest's own loopback; give the host another name for the guest (db={host}:{port})"
            )));
        }
        if let Some(other) = out.iter().find(|r| r.name == name && r.port == port) {
            if other.host == host {
                continue;
            }
            return Err(VmError::provider(format!(
                "qemu provider: cannot reach {entry:?}: {name}:{port} already leads to {}",
                other.host
            )));
        }
        let n = match names.iter().position(|h| *h == name) {
            Some(n) => n,
            None => {
                names.push(name.clone());
                names.len() - 1
            }
        };
        out.push(Reach {
            ip: format!("10.0.2.{}", 101 + n),
            name,
            host,
            port,
        });
    }
    Ok(out)
}

/// `path` for a QEMU `key=value,...` option: commas doubled.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

impl QemuProvider {
    /// A provider with `config`. Resolves the accelerator (probing when
    /// it is [`Accelerator::Auto`]) and logs which one it uses.
    pub fn new(config: QemuConfig) -> Result<QemuProvider, VmError> {
        let root = std::path::absolute(&config.root)
            .map_err(|e| VmError::provider_because(config.root.display().to_string(), e))?;
        if !qemu_safe_path(&root) {
            return Err(VmError::provider(format!(
                "qemu provider: the VM directory {} may only contain letters, digits and /._-+ (it appears in QEMU's options)",
                root.display()
            )));
        }
        if !qemu_safe_path(&config.socat) {
            return Err(VmError::provider(format!(
                "qemu provider: the socat path {} may only contain letters, digits and /._-+ (it is part of a QEMU option)",
                config.socat.display()
            )));
        }
        for (tool, path) in [
            ("qemu", &config.qemu),
            ("qemu-img", &config.qemu_img),
            ("socat", &config.socat),
        ] {
            if find_program(path).is_none() {
                return Err(VmError::provider(format!(
                    "qemu provider: {tool} ({}) not found; images/linux-guest/build.sh installs qemu-system-x86, qemu-utils and socat",
                    path.display()
                )));
            }
        }
        for image in config.images.values().chain(config.default_image.iter()) {
            reach_plan(&image.reach)?;
            if let Some(firmware) = &image.firmware {
                if image.machine != Machine::Q35 {
                    return Err(VmError::provider(
                        "qemu provider: a UEFI boot needs the q35 machine (microvm has no firmware)",
                    ));
                }
                if !firmware.is_file() || !qemu_safe_path(firmware) {
                    return Err(VmError::provider(format!(
                        "qemu provider: UEFI firmware {} not found (or not a plain path); images/linux-guest/install-packages.sh installs Debian's ovmf",
                        firmware.display()
                    )));
                }
            }
        }
        let (accelerator, why) = match config.accelerator {
            Accelerator::Auto => probe_accelerator(),
            chosen => (chosen, "configured".to_string()),
        };
        let tsc_khz = config.tsc_khz.or_else(host_tsc_khz);
        tracing::info!(accelerator = %accelerator, reason = %why, tsc_khz, "qemu provider");
        Ok(QemuProvider {
            config: QemuConfig { root, ..config },
            accelerator,
            tsc_khz,
            vms: Mutex::new(HashMap::new()),
        })
    }

    /// The accelerator in use.
    pub fn accelerator(&self) -> Accelerator {
        self.accelerator
    }

    /// The directory of VM `id`.
    pub fn vm_dir(&self, id: &VmId) -> PathBuf {
        self.config.root.join(&id.0)
    }

    fn image(&self, label: &str) -> Result<&QemuImage, VmError> {
        self.config
            .images
            .get(label)
            .or(self.config.default_image.as_ref())
            .ok_or_else(|| {
                VmError::provider(format!("qemu provider: no image for label {label:?}"))
            })
    }

    /// The commands `provision` runs for `spec` (the overlay, then QEMU),
    /// for `--dry-run`. The seed disk and the sockets are made in-process.
    pub fn plan(&self, spec: &VmSpec) -> Result<Vec<crate::HostCommand>, VmError> {
        let image = self.image(&spec.label)?;
        reach_plan(&image.reach)?;
        let dir = self.vm_dir(&VmId(spec.name.clone()));
        let mut out = Vec::new();
        if let Some(golden) = &image.disk {
            out.push(self.overlay_command(image, golden, &dir));
        }
        let args: Vec<String> = self
            .arguments(spec, image, &dir)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        out.push(crate::HostCommand::new(
            self.config.qemu.to_string_lossy(),
            args,
        ));
        Ok(out)
    }

    fn overlay_command(&self, image: &QemuImage, golden: &Path, dir: &Path) -> crate::HostCommand {
        let format = if golden.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let mut args = vec![
            "create".to_string(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-F".into(),
            format.into(),
            "-b".into(),
            golden.to_string_lossy().into_owned(),
            dir.join("disk.qcow2").to_string_lossy().into_owned(),
        ];
        // Grown to `disk_gib` when the golden disk is smaller (a raw
        // golden disk's size is its file's; qemu-img refuses to make an
        // overlay smaller than its backing file).
        if let Some(gib) = image.disk_gib.map(|g| g.min(MAX_DISK_GIB)) {
            let want = u64::from(gib) << 30;
            let have = std::fs::metadata(golden).map(|m| m.len()).unwrap_or(0);
            if format == "raw" && want > have {
                args.push(want.to_string());
            }
        }
        crate::HostCommand::new(self.config.qemu_img.to_string_lossy(), args)
    }

    /// QEMU's arguments for a VM in `dir` booting `image`.
    fn arguments(&self, spec: &VmSpec, image: &QemuImage, dir: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(s.into());
        let (blk, net) = match image.machine {
            Machine::Microvm => {
                push("-M".into());
                push("microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=on".into());
                ("virtio-blk-device", "virtio-net-device")
            }
            Machine::Q35 => {
                push("-M".into());
                push("q35".into());
                ("virtio-blk-pci", "virtio-net-pci")
            }
        };
        let mut cmdline = format!("console=ttyS0 panic=-1 {}", image.cmdline);
        match self.accelerator {
            Accelerator::Kvm => {
                push("-accel".into());
                push("kvm".into());
                push("-cpu".into());
                push("host".into());
            }
            _ => {
                push("-accel".into());
                push("tcg".into());
                if let Some(khz) = self.tsc_khz {
                    cmdline.push_str(&format!(" tsc_early_khz={khz}"));
                }
            }
        }
        let vcpus = image.vcpus.unwrap_or(spec.vcpus).clamp(1, 64);
        let memory = image
            .memory_mib
            .unwrap_or(spec.memory_mib)
            .clamp(64, 1 << 20);
        for s in [
            "-m".to_string(),
            memory.to_string(),
            "-smp".into(),
            vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
        ] {
            push(s);
        }
        match &image.firmware {
            // The kernel, its initramfs and command line are the disk's
            // unified kernel image.
            Some(firmware) => {
                a.push("-bios".into());
                a.push(firmware.clone().into_os_string());
            }
            None => {
                a.push("-kernel".into());
                a.push(image.kernel.clone().into_os_string());
                if let Some(initrd) = &image.initrd {
                    a.push("-initrd".into());
                    a.push(initrd.clone().into_os_string());
                }
                a.push("-append".into());
                a.push(cmdline.trim().into());
            }
        }
        let mut push = |s: String| a.push(s.into());
        // The firmware boots the root disk and nothing else (no network
        // boot ROM to load and try).
        let (bootindex, romfile) = match image.firmware {
            Some(_) => (",bootindex=0", ",romfile="),
            None => ("", ""),
        };
        push("-chardev".into());
        push(format!(
            "socket,id=console,path={}",
            opt_path(&dir.join("console.sock"))
        ));
        push("-serial".into());
        push("chardev:console".into());
        if image.disk.is_some() {
            push("-drive".into());
            push(format!(
                "id=root,file={},format=qcow2,if=none,cache=unsafe,discard=unmap",
                opt_path(&dir.join("disk.qcow2"))
            ));
            push("-device".into());
            push(format!("{blk},drive=root,serial=solstice-root{bootindex}"));
        }
        push("-drive".into());
        push(format!(
            "id=seed,file={},format=raw,if=none,readonly=on",
            opt_path(&dir.join("seed.img"))
        ));
        push("-device".into());
        push(format!("{blk},drive=seed,serial=solstice-seed"));
        if spec.share.is_some() {
            push("-drive".into());
            push(format!(
                "id=share,file={},format=raw,if=none,readonly=on",
                opt_path(&dir.join("share.tar"))
            ));
            push("-device".into());
            push(format!("{blk},drive=share,serial=solstice-share"));
        }
        // socat's own messages go to its log, never into the stream: QEMU
        // gives the command the guest's connection as its stderr too, and a
        // "Broken pipe" line there reached a runner as an HTTP/2 frame.
        let mut netdev = format!(
            "user,id=net0,restrict={},guestfwd={GUESTFWD}-cmd:{} -lf {} STDIO UNIX-CONNECT:{}",
            if image.egress { "off" } else { "on" },
            self.config.socat.display(),
            dir.join("socat.log").display(),
            dir.join("runner.sock").display()
        );
        // Checked when the VM was created (and in `plan`): names and ports only.
        for Reach { ip, host, port, .. } in reach_plan(&image.reach).unwrap_or_default() {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{ip}:{port}-cmd:{} -lf {} STDIO TCP:{host}:{port}",
                self.config.socat.display(),
                dir.join("socat.log").display()
            ));
        }
        push("-netdev".into());
        push(netdev);
        push("-device".into());
        push(format!("{net},netdev=net0{romfile}"));
        a
    }

    async fn create(&self, spec: &VmSpec, dir: &Path) -> Result<Running, VmError> {
        let image = self.image(&spec.label)?.clone();
        for (what, value) in [
            ("name", &spec.name),
            ("token", &spec.token),
            ("owner", &spec.owner),
        ] {
            if value.is_empty() || value.len() > 1024 || value.chars().any(char::is_control) {
                return Err(VmError::provider(format!(
                    "qemu provider: the {what} must be 1 to 1024 characters without control characters"
                )));
            }
        }
        let io = |what: &str, e: std::io::Error| {
            VmError::boot_because(format!("{}: {what}", dir.display()), e)
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.config.root)
            .map_err(|e| io("root", e))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("create", e))?;
        crate::vmdir::write_owner(dir, &spec.owner).map_err(|e| io("owner", e))?;
        // The token: in a file only this user reads, for this VM's QEMU only.
        let share = match &spec.share {
            Some(path) => {
                let text = path.to_str().filter(|p| {
                    p.starts_with('/') && p.len() <= 4096 && !p.chars().any(char::is_control)
                });
                let Some(text) = text else {
                    return Err(VmError::provider(format!(
                        "qemu provider: cannot share {} (an absolute UTF-8 path without control characters)",
                        path.display()
                    )));
                };
                pack_share(path, &dir.join("share.tar"), spec.share_whole).await?;
                text
            }
            None => "",
        };
        // The names the guest resolves to the reachable hosts' addresses
        // (an address needs no name).
        let mut names: Vec<String> = Vec::new();
        for Reach { ip, name, .. } in reach_plan(&image.reach)? {
            let entry = format!("{ip}={name}");
            if name.parse::<std::net::Ipv4Addr>().is_err() && !names.contains(&entry) {
                names.push(entry);
            }
        }
        let seed = seed_disk(
            GUEST_ENDPOINT,
            &spec.name,
            &spec.token,
            share,
            &names.join(" "),
        );
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join("seed.img"))
                .map_err(|e| io("seed.img", e))?;
            f.write_all(&seed).map_err(|e| io("seed.img", e))?;
        }
        if let Some(golden) = &image.disk {
            let overlay = self.overlay_command(&image, golden, dir);
            let out = crate::command::clean_command(&self.config.qemu_img)
                .args(&overlay.args)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| {
                    VmError::boot_because(
                        format!("cannot run {}", self.config.qemu_img.display()),
                        e,
                    )
                })?;
            if !out.status.success() {
                return Err(VmError::boot(format!(
                    "qemu-img create failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        for (what, path) in [
            ("kernel", Some(&image.kernel)),
            ("initrd", image.initrd.as_ref()),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(VmError::boot(format!(
                    "the image's {what} {} is missing",
                    path.display()
                )));
            }
        }

        let connected = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let mut tasks = Tasks::default();
        let runner_sock = tokio::net::UnixListener::bind(dir.join("runner.sock"))
            .map_err(|e| io("runner.sock", e))?;
        tasks.0.push(
            tokio::spawn(proxy(runner_sock, spec.endpoint.clone(), connected.clone()))
                .abort_handle(),
        );
        let console_sock = tokio::net::UnixListener::bind(dir.join("console.sock"))
            .map_err(|e| io("console.sock", e))?;
        tasks
            .0
            .push(tokio::spawn(console(console_sock, dir.join("console.log"))).abort_handle());

        let log = std::fs::File::create(dir.join("qemu.log")).map_err(|e| io("qemu.log", e))?;
        let log2 = log.try_clone().map_err(|e| io("qemu.log", e))?;
        let child = crate::command::clean_command(&self.config.qemu)
            .args(self.arguments(spec, &image, dir))
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                VmError::boot_because(format!("cannot start {}", self.config.qemu.display()), e)
            })?;
        if let Some(pid) = child.id() {
            std::fs::write(dir.join("pid"), pid.to_string()).map_err(|e| io("pid", e))?;
        }
        // The boot timeout: no runner connection by then stops the VM.
        {
            let connected = connected.clone();
            let stopping = stopping.clone();
            let failed = failed.clone();
            let pid = child.id();
            let timeout = self.config.boot_timeout;
            tasks.0.push(
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    if !connected.load(Ordering::SeqCst) {
                        let why = format!(
                            "the runner did not connect within {} s of the VM's start (boot timeout)",
                            timeout.as_secs()
                        );
                        // Failed means stopped: QEMU and its socats are
                        // killed and gone (up to 10 s) before it says so.
                        stopping.store(true, Ordering::SeqCst);
                        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                            for _ in 0..500 {
                                if !crate::vmdir::group_alive(pid) {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        *lock(&failed) = Some(why);
                    }
                })
                .abort_handle(),
            );
        }
        Ok(Running {
            child,
            connected,
            stopping,
            failed,
            tasks,
        })
    }

    /// The QEMU process recorded in `dir/pid`, if it still runs and is
    /// ours (its command line names `dir`): after a reboot the number may
    /// belong to somebody else.
    fn recorded(dir: &Path) -> Option<i32> {
        let pid = crate::vmdir::live_pid(&dir.join("pid"))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = dir.join("seed.img");
        let needle = needle.to_string_lossy();
        let needle = needle.as_bytes();
        cmdline
            .windows(needle.len())
            .any(|w| w == needle)
            .then_some(pid)
    }
}

/// Packs the directory `from` into the tar archive `to` (the share disk):
/// in a git work tree the files `git ls-files` lists (tracked, and
/// untracked but not ignored, so `target/` stays behind), elsewhere
/// everything but `.git`; with `whole`, everything (a checkout the engine
/// made for the job). The guest unpacks it at the same path.
async fn pack_share(from: &Path, to: &Path, whole: bool) -> Result<(), VmError> {
    let failed = |what: String| VmError::boot(format!("sharing {}: {what}", from.display()));
    let listed = if whole {
        None
    } else {
        let listed = crate::command::clean_command("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(from)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .await;
        Some(listed)
    };
    let mut tar = crate::command::clean_command("tar");
    // A file deleted between the listing and the archive is skipped, as
    // the runner's own copy skips it.
    tar.args(["--ignore-failed-read", "-cf"])
        .arg(to)
        .arg("-C")
        .arg(from);
    let list = match listed {
        None => {
            tar.arg(".");
            None
        }
        Some(Ok(out)) if out.status.success() => {
            tar.args(["--null", "--no-recursion", "-T", "-"]);
            Some(out.stdout)
        }
        Some(_) => {
            tar.args(["--exclude=./.git", "."]);
            None
        }
    };
    let mut child = tar
        .stdin(if list.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run tar: {e}")))?;
    if let (Some(list), Some(mut stdin)) = (list, child.stdin.take()) {
        stdin
            .write_all(&list)
            .await
            .map_err(|e| failed(format!("tar: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("tar: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "tar failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // A disk is whole sectors.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .map_err(|e| failed(e.to_string()))?;
    let len = file.metadata().map_err(|e| failed(e.to_string()))?.len();
    file.set_len(len.div_ceil(4096) * 4096)
        .map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// Accepts the guest's connections on its socket and joins each to the
/// runner endpoint; the first marks the VM connected. At most
/// [`MAX_GUEST_CONNECTIONS`] at once: a guest opening more waits.
async fn proxy(
    listener: tokio::net::UnixListener,
    endpoint: RunnerEndpoint,
    connected: Arc<AtomicBool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_GUEST_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut guest, _)) = listener.accept().await else {
            return;
        };
        connected.store(true, Ordering::SeqCst);
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match &endpoint {
                RunnerEndpoint::Unix(path) => match tokio::net::UnixStream::connect(path).await {
                    Ok(mut up) => tokio::io::copy_bidirectional(&mut guest, &mut up).await,
                    Err(e) => Err(e),
                },
                RunnerEndpoint::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
                    Ok(mut up) => tokio::io::copy_bidirectional(&mut guest, &mut up).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "guest connection to the runner endpoint ended");
            }
        });
    }
}

/// Writes the serial console QEMU sends to `path`, at most [`CONSOLE_CAP`]
/// bytes; reads on after that so the guest never blocks on its console.
async fn console(listener: tokio::net::UnixListener, path: PathBuf) {
    use tokio::io::AsyncReadExt;
    let Ok((mut stream, _)) = listener.accept().await else {
        return;
    };
    let Ok(mut file) = tokio::fs::File::create(&path).await else {
        return;
    };
    let mut written = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = CONSOLE_CAP.saturating_sub(written);
        if room > 0 {
            let take = (n as u64).min(room) as usize;
            if file.write_all(&buf[..take]).await.is_err() {
                break;
            }
            written += take as u64;
            if written >= CONSOLE_CAP {
                let _ = file
                    .write_all(
                        b"\n[solstice] console output cut here: the VM wrote more than the limit\n",
                    )
                    .await;
            }
        }
    }
    let _ = file.flush().await;
}

/// The last `max` bytes of `path`, from a line start.
fn tail(path: &Path, max: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(max);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    if from > 0
        && let Some(nl) = buf.iter().position(|b| *b == b'\n')
    {
        buf.drain(..=nl);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

#[async_trait]
impl VmProvider for QemuProvider {
    fn name(&self) -> &'static str {
        "qemu"
    }

    /// Every QEMU guest gets the share, on a disk of its own.
    fn copies_share(&self, _label: &str) -> bool {
        true
    }

    async fn provision(&self, spec: &VmSpec) -> Result<VmHandle, VmError> {
        let (id, dir) = crate::vmdir::new_vm(&self.config.root, spec)?;
        match self.create(spec, &dir).await {
            Ok(running) => {
                lock(&self.vms).insert(id.clone(), running);
                Ok(VmHandle::new(id, spec.owner.clone()))
            }
            Err(e) => {
                // Whatever was created goes: a QEMU that started (dropping
                // its handle kills it), the overlay, the sockets, the seed.
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Err(e)
            }
        }
    }

    async fn state(&self, id: &VmId) -> Result<VmState, VmError> {
        if let Some(vm) = lock(&self.vms).get_mut(id) {
            let failed = lock(&vm.failed).clone();
            return Ok(match (vm.child.try_wait(), failed) {
                (_, Some(why)) => VmState::Failed(why),
                (_, None) if vm.stopping.load(Ordering::SeqCst) => VmState::Booting,
                (Ok(Some(status)), None) => VmState::Stopped(status.code()),
                (Err(e), None) => VmState::Failed(e.to_string()),
                (Ok(None), None) if vm.connected.load(Ordering::SeqCst) => VmState::Running,
                (Ok(None), None) => VmState::Booting,
            });
        }
        if !crate::vmdir::safe_name(&id.0) {
            return Err(VmError::NotFound(id.clone()));
        }
        let dir = self.vm_dir(id);
        if !dir.join("owner").exists() {
            return Err(VmError::NotFound(id.clone()));
        }
        Ok(if Self::recorded(&dir).is_some() {
            VmState::Running
        } else {
            VmState::Stopped(None)
        })
    }

    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        if !crate::vmdir::safe_name(&id.0) {
            return Ok(());
        }
        let dir = self.vm_dir(id);
        let running = lock(&self.vms).remove(id);
        let mut group = None;
        if let Some(mut vm) = running {
            drop(std::mem::take(&mut vm.tasks));
            if let Some(pid) = vm.child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                group = Some(pid);
            }
            let _ = vm.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), vm.child.wait()).await;
        } else if let Some(pid) = Self::recorded(&dir) {
            // Left by an earlier process: not our child, so poll for its end.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            for _ in 0..500 {
                if kill(Pid::from_raw(pid), None).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            group = Some(pid);
        }
        // The rest of the group (socat, QEMU's own children) may still be
        // on its way out after its leader: destroy returns once all of it
        // is gone (up to 10 s), not while a killed QEMU still releases its
        // memory (a test found one still there, 1 run in many).
        if let Some(pgid) = group {
            for _ in 0..1000 {
                if !crate::vmdir::group_alive(pgid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        crate::vmdir::remove(&dir).await
    }

    async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let mut out = Vec::new();
        for (id, owner) in crate::vmdir::owned(&self.config.root).await? {
            let state = self.state(&id).await.unwrap_or(VmState::Stopped(None));
            out.push(VmInfo::new(id, owner, state));
        }
        Ok(out)
    }

    async fn console_tail(&self, id: &VmId) -> Option<String> {
        if !crate::vmdir::safe_name(&id.0) {
            return None;
        }
        let dir = self.vm_dir(id);
        let mut text = tail(&dir.join("console.log"), CONSOLE_TAIL).unwrap_or_default();
        if let Some(qemu) = tail(&dir.join("qemu.log"), 4096).filter(|s| !s.trim().is_empty()) {
            text.push_str("\n[qemu] ");
            text.push_str(qemu.trim());
            text.push('\n');
        }
        (!text.trim().is_empty()).then_some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A UEFI image boots its disk through the firmware: `-bios`, the
    /// root disk first in the boot order, no network boot ROM, no kernel
    /// loaded directly. The provider refuses one on microvm or without its
    /// firmware, and an image without `disk.raw` cannot be one.
    #[test]
    fn a_uefi_image_boots_its_disk_through_the_firmware() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        std::fs::write(d.join("vmlinux"), b"").expect("kernel");
        std::fs::write(d.join("disk.raw"), vec![0u8; 4096]).expect("disk");
        std::fs::write(d.join("OVMF.fd"), b"firmware").expect("firmware");
        let image = QemuImage::uefi_from_dir(d, d.join("OVMF.fd")).expect("image");
        let config = |image: QemuImage| {
            let mut c = QemuConfig::new(d.join("vms"), image);
            c.accelerator = Accelerator::Tcg;
            c
        };
        let provider = QemuProvider::new(config(image.clone())).expect("provider");
        let spec = VmSpec::new(
            "vm-1",
            "owner",
            RunnerEndpoint::Unix(d.join("runner.sock")),
            "token",
        );
        let plan = provider.plan(&spec).expect("plan");
        let overlay = plan[0].to_string();
        assert!(overlay.contains("disk.raw"), "{overlay}");
        let qemu = plan.last().expect("qemu").to_string();
        for want in [
            format!("-bios {}", d.join("OVMF.fd").display()),
            "-M q35".to_string(),
            "serial=solstice-root,bootindex=0".to_string(),
            "netdev=net0,romfile=".to_string(),
        ] {
            assert!(qemu.contains(&want), "{want} not in {qemu}");
        }
        assert!(
            !qemu.contains("-kernel") && !qemu.contains("-append"),
            "{qemu}"
        );

        let mut microvm = image.clone();
        microvm.machine = Machine::Microvm;
        let e = QemuProvider::new(config(microvm)).expect_err("microvm");
        assert!(e.to_string().contains("needs the q35 machine"), "{e}");
        let mut missing = image;
        missing.firmware = Some(d.join("nowhere.fd"));
        let e = QemuProvider::new(config(missing)).expect_err("no firmware");
        assert!(e.to_string().contains("UEFI firmware"), "{e}");
        std::fs::remove_file(d.join("disk.raw")).expect("rm");
        let e = QemuImage::uefi_from_dir(d, d.join("OVMF.fd")).expect_err("no disk");
        assert!(e.to_string().contains("no disk.raw here"), "{e}");
    }

    /// `reach` entries: names numbered by first appearance, `name=` gives
    /// the guest its own name for a host, `localhost` is never a guest
    /// name, and one name and port cannot lead to two hosts.
    #[test]
    fn reach_plans_names_and_refuses_what_the_guest_cannot_use() {
        let plan = |v: &[&str]| reach_plan(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let p = plan(&[
            "deb.debian.org:80",
            "db=LocalHost:5432",
            "deb.debian.org:443",
            "db=localhost:5432",
        ])
        .expect("plan");
        let got: Vec<(&str, &str, &str, u16)> = p
            .iter()
            .map(|r| (r.ip.as_str(), r.name.as_str(), r.host.as_str(), r.port))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.2.101", "deb.debian.org", "deb.debian.org", 80),
                ("10.0.2.102", "db", "localhost", 5432),
                ("10.0.2.101", "deb.debian.org", "deb.debian.org", 443),
            ]
        );
        let err = |v: &[&str]| plan(v).expect_err("refused").to_string();
        assert!(err(&["localhost:5432"]).contains("(db=localhost:5432)"));
        assert!(err(&["localhost=db.internal:5432"]).contains("the guest's own loopback"));
        assert!(
            err(&["db=a.example:5432", "db=b.example:5432"])
                .contains("db:5432 already leads to a.example")
        );
        for bad in [
            "db=:5432", "=h:1", "d b=h:1", "db=h", "db=h:0", "x=y=h:1", "-x=h:1",
        ] {
            assert!(
                err(&[bad]).contains("write host:port or name=host:port"),
                "{bad}"
            );
        }
        assert!(plan(&["db=127.0.0.1:5432", "127.0.0.1:80"]).is_ok());
    }

    /// The console keeps `CONSOLE_CAP` bytes and a note, and reads on past
    /// the limit (the guest never blocks on it).
    #[tokio::test]
    async fn the_console_is_capped_and_drained() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("console.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let log = dir.path().join("console.log");
        let task = tokio::spawn(console(listener, log.clone()));
        let mut guest = tokio::net::UnixStream::connect(&sock)
            .await
            .expect("connect");
        let chunk = vec![b'x'; 64 << 10];
        let total = CONSOLE_CAP as usize * 3;
        let mut sent = 0;
        while sent < total {
            guest
                .write_all(&chunk)
                .await
                .expect("the console keeps reading");
            sent += chunk.len();
        }
        drop(guest);
        task.await.expect("console task");
        let kept = std::fs::read(&log).expect("log");
        let note = b"\n[solstice] console output cut here: the VM wrote more than the limit\n";
        assert_eq!(kept.len(), CONSOLE_CAP as usize + note.len());
        assert!(kept.ends_with(note));
        // Exactly at the limit: no note.
        let listener = tokio::net::UnixListener::bind(dir.path().join("c2.sock")).expect("bind");
        let log2 = dir.path().join("c2.log");
        let task = tokio::spawn(console(listener, log2.clone()));
        let mut guest = tokio::net::UnixStream::connect(dir.path().join("c2.sock"))
            .await
            .expect("connect");
        guest
            .write_all(&vec![b'y'; CONSOLE_CAP as usize - 1])
            .await
            .expect("write");
        drop(guest);
        task.await.expect("console task");
        assert_eq!(
            std::fs::metadata(&log2).expect("log").len(),
            CONSOLE_CAP - 1
        );
    }

    /// A guest holds at most `MAX_GUEST_CONNECTIONS` connections to the
    /// runner endpoint; one more waits until one closes.
    #[tokio::test]
    async fn guest_connections_are_capped() {
        let dir = tempfile::tempdir().expect("dir");
        let upstream_path = dir.path().join("engine.sock");
        let upstream = tokio::net::UnixListener::bind(&upstream_path).expect("bind");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        // The engine's side: holds each connection until the guest's side
        // closes (as the gRPC server does).
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        let guest_path = dir.path().join("runner.sock");
        let listener = tokio::net::UnixListener::bind(&guest_path).expect("bind");
        let connected = Arc::new(AtomicBool::new(false));
        let proxy_task = tokio::spawn(proxy(
            listener,
            RunnerEndpoint::Unix(upstream_path),
            connected.clone(),
        ));
        let mut conns = Vec::new();
        for _ in 0..MAX_GUEST_CONNECTIONS + 1 {
            conns.push(
                tokio::net::UnixStream::connect(&guest_path)
                    .await
                    .expect("connect"),
            );
        }
        let settle = || async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        settle().await;
        assert!(connected.load(Ordering::SeqCst));
        assert_eq!(accepted.load(Ordering::SeqCst), MAX_GUEST_CONNECTIONS);
        // One closes: the waiting one goes through.
        drop(conns.remove(0));
        settle().await;
        assert_eq!(accepted.load(Ordering::SeqCst), MAX_GUEST_CONNECTIONS + 1);
        proxy_task.abort();
    }
}
