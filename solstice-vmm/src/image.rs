//! Building golden images from recipes (`solstice image build`): a Debian
//! root from `debootstrap` (or another recipe's), the recipe's packages,
//! user, files and commands, then the parts the QEMU provider boots: the
//! image's own kernel as a PVH `vmlinux`, a small initramfs with the virtio
//! drivers (MMIO for QEMU's microvm, PCI for q35 and bhyve) and an ext4
//! root disk; and the same as one disk a UEFI firmware boots ([`efi`]).
//! The recipe language is `solstice_kdl::recipe`; `docs/vms.md` is the
//! guide.
//!
//! The output directory holds what [`crate::qemu::QemuImage::from_dir`]
//! reads (`vmlinux`, `initrd.cpio`, `rootfs.ext4`, `cmdline`, `disk-gib`),
//! `disk.raw` (what [`crate::qemu::QemuImage::uefi_from_dir`] and a bhyve
//! zone boot), `root.tar` (what a recipe built `from` this one starts with),
//! `labels`, `kernel-version` and `image-key`: a hash of the recipe, its
//! base's key, the files it copies in, the runner and the guest's init
//! scripts. A build whose key matches the directory's does nothing.
//!
//! Reproducible up to Debian's packages: every timestamp is clamped to
//! [`SOURCE_DATE_EPOCH`], the file system's UUID and hash seed come from
//! the key, package lists, caches, logs and the machine id are removed.
//!
//! Building needs root (`debootstrap`, `chroot`), and the host tools
//! `debootstrap`, `tar`, `cpio`, `mke2fs`, `strip`, `objcopy`, `sfdisk`,
//! `mkfs.vfat`, `mtools` and the decompressor of the kernel (`lz4`,
//! `gzip`, `xz` or `zstd`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use solstice_kdl::recipe::{Base, Recipe, RecipeStep};

pub mod efi;

/// The time every file in an image is dated at most (2024-01-01 UTC), so
/// that two builds of one recipe give the same bytes where Debian's
/// packages do.
pub const SOURCE_DATE_EPOCH: u64 = 1_704_067_200;
/// How deep `from` chains may go.
pub const MAX_FROM_DEPTH: usize = 8;
/// The packages every image gets besides the recipe's: the kernel (its
/// modules stay in the image), `kmod` to list them, `iproute2` for the
/// network, `e2fsprogs` to grow the disk, `busybox-static` for the
/// initramfs, `systemd-boot-efi` for the EFI stub of `disk.raw`'s unified
/// kernel image (nothing of systemd runs).
pub const BASE_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "kmod",
    "iproute2",
    "e2fsprogs",
    "busybox-static",
    "systemd-boot-efi",
];
/// The drivers the initramfs loads (with what they depend on).
pub const INITRAMFS_MODULES: &[&str] = &["virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net"];
/// The kernel arguments the image asks for (the provider adds the console
/// and the accelerator's).
pub const CMDLINE: &str = "quiet loglevel=0 no_timer_check mitigations=off random.trust_cpu=on rcupdate.rcu_expedited=1 cryptomgr.notests apparmor=0 audit=0 8250.nr_uarts=1";

/// The initramfs's `/init` (also used by `images/linux-guest/build.sh`).
pub const GUEST_INIT: &str = include_str!("../guest/init");
/// The job disk's `/sbin/solstice-init`.
pub const GUEST_SOLSTICE_INIT: &str = include_str!("../guest/solstice-init");

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The recipe does not parse; the error renders its diagnostics.
    #[error("{path}: the recipe has problems")]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// Every problem.
        #[source]
        source: solstice_kdl::ParseError,
    },
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A command of the build failed.
    #[error("{command} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Command {
        /// The command (program and first arguments).
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed on stderr.
        stderr: String,
    },
    /// Something the recipe or the host does not provide.
    #[error("{0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// How to build.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildOptions {
    /// Where images go: a recipe `NAME` is built into `CACHE/NAME` (and the
    /// recipes it is built `from` into theirs).
    pub cache: PathBuf,
    /// Where this recipe's image goes instead of `CACHE/NAME`.
    pub out: Option<PathBuf>,
    /// The `solstice-runner` put in the image (statically linked, or built
    /// against the image's C library).
    pub runner: PathBuf,
    /// Build even when the image is up to date (its bases are still reused).
    pub rebuild: bool,
}

impl BuildOptions {
    /// Images in `cache`, with `runner`.
    pub fn new(cache: impl Into<PathBuf>, runner: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            cache: cache.into(),
            out: None,
            runner: runner.into(),
            rebuild: false,
        }
    }

    /// `$XDG_CACHE_HOME/solstice/images`, else `~/.cache/solstice/images`.
    pub fn default_cache() -> Option<PathBuf> {
        let var = |n: &str| {
            std::env::var_os(n)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("solstice").join("images"))
    }
}

/// A built (or found up to date) image.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuiltImage {
    /// Its directory.
    pub dir: PathBuf,
    /// The recipe's name.
    pub name: String,
    /// The labels it serves.
    pub labels: Vec<String>,
    /// Its key (the hash of its inputs).
    pub key: String,
    /// `true` when it was already up to date.
    pub cached: bool,
}

/// Reads and parses a recipe: `path` is the file or a directory holding
/// `image.kdl`. Returns the file's path and the recipe.
pub fn load_recipe(path: &Path) -> Result<(PathBuf, Recipe), ImageError> {
    let file = if path.is_dir() {
        path.join("image.kdl")
    } else {
        path.to_path_buf()
    };
    let bytes = read_limited(&file)?;
    let name = file.display().to_string();
    let recipe = solstice_kdl::recipe::parse_recipe_bytes(&name, &bytes).map_err(|source| {
        ImageError::Recipe {
            path: file.clone(),
            source,
        }
    })?;
    Ok((file, recipe))
}

fn read_limited(file: &Path) -> Result<Vec<u8>, ImageError> {
    let max = solstice_kdl::ParseOptions::default().max_bytes;
    let f = std::fs::File::open(file).map_err(io(format!("cannot read {}", file.display())))?;
    let mut bytes = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(format!("cannot read {}", file.display())))?;
    Ok(bytes)
}

/// Builds the image of the recipe at `path` (a file, or a directory with
/// `image.kdl`), first the recipes it is built `from`. `log` gets one line
/// per stage; the commands' own output goes to this process's stderr.
pub fn build(
    path: &Path,
    options: &BuildOptions,
    log: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    let mut chain = Vec::new();
    build_inner(
        path,
        options,
        options.out.as_deref(),
        options.rebuild,
        log,
        &mut chain,
    )
}

fn build_inner(
    path: &Path,
    options: &BuildOptions,
    out: Option<&Path>,
    rebuild: bool,
    log: &mut dyn FnMut(&str),
    chain: &mut Vec<PathBuf>,
) -> Result<BuiltImage, ImageError> {
    let (file, recipe) = load_recipe(path)?;
    let canonical = file
        .canonicalize()
        .map_err(io(format!("cannot resolve {}", file.display())))?;
    if chain.contains(&canonical) {
        return Err(ImageError::Invalid(format!(
            "{}: `from` goes round in a circle",
            file.display()
        )));
    }
    if chain.len() >= MAX_FROM_DEPTH {
        return Err(ImageError::Invalid(format!(
            "{}: more than {MAX_FROM_DEPTH} recipes built `from` one another",
            file.display()
        )));
    }
    chain.push(canonical);
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let base = match &recipe.base {
        Base::Recipe { path } => Some(build_inner(
            &dir.join(path),
            options,
            None,
            false,
            log,
            chain,
        )?),
        _ => None,
    };
    chain.pop();

    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| options.cache.join(&recipe.name));
    replaceable(&out)?;
    let copies = resolve_copies(&recipe, &dir)?;
    let key = image_key(&file, base.as_ref(), &copies, &options.runner)?;
    if !rebuild && std::fs::read_to_string(out.join("image-key")).is_ok_and(|k| k.trim() == key) {
        log(&format!("{}: up to date ({})", recipe.name, out.display()));
        return Ok(BuiltImage {
            dir: out,
            name: recipe.name,
            labels: recipe.labels,
            key,
            cached: true,
        });
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::Invalid(
            "building an image needs root (debootstrap and chroot)".into(),
        ));
    }
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.build-", recipe.name))
        .tempdir_in(parent)
        .map_err(io(format!(
            "cannot create a directory in {}",
            parent.display()
        )))?;
    let root = work.path().join("root");
    let staged = work.path().join("out");
    std::fs::create_dir_all(&staged).map_err(io("cannot create the output"))?;
    std::fs::create_dir_all(&root).map_err(io("cannot create the root"))?;
    let started = std::time::Instant::now();

    match (&recipe.base, &base) {
        (Base::Debootstrap { suite, mirror }, _) => {
            let mirror = mirror.as_deref().unwrap_or("http://deb.debian.org/debian");
            log(&format!(
                "{}: debootstrap {suite} from {mirror}",
                recipe.name
            ));
            let mut include: Vec<&str> = BASE_PACKAGES.to_vec();
            if recipe.user.is_some() {
                include.push("sudo");
            }
            run(Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(format!("--include={}", include.join(",")))
                .arg(suite)
                .arg(&root)
                .arg(mirror)
                .stdout(Stdio::null()))?;
        }
        (Base::Recipe { .. }, Some(b)) => {
            log(&format!("{}: starting from {}", recipe.name, b.name));
            run(Command::new("tar")
                .arg("-C")
                .arg(&root)
                .args(["--numeric-owner", "--xattrs"])
                .arg("-xpf")
                .arg(b.dir.join("root.tar")))?;
        }
        _ => {
            return Err(ImageError::Invalid(
                "the recipe's base was not built".into(),
            ));
        }
    }

    {
        let _mounts = Mounts::new(&root)?;
        // Removed first: a link in the image must not lead the copy to a
        // file of the host.
        let resolv = root.join("etc/resolv.conf");
        let _ = std::fs::remove_file(&resolv);
        std::fs::copy("/etc/resolv.conf", &resolv)
            .map_err(io("cannot copy /etc/resolv.conf into the image"))?;
        if !recipe.packages.is_empty() {
            log(&format!(
                "{}: installing {} packages",
                recipe.name,
                recipe.packages.len()
            ));
            chroot_sh(&root, "apt-get update -q", &[])?;
            chroot_sh(
                &root,
                "apt-get install -y -q --no-install-recommends \"$@\"",
                &recipe.packages,
            )?;
        }
        if let Some(user) = &recipe.user {
            log(&format!(
                "{}: user {user} (sudo without a password)",
                recipe.name
            ));
            chroot_sh(
                &root,
                "id -u \"$1\" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --user-group \"$1\"; \
                 mkdir -p /etc/sudoers.d /etc/solstice; \
                 printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\\n' \"$1\" > /etc/sudoers.d/solstice-$1; \
                 chmod 0440 /etc/sudoers.d/solstice-$1; \
                 printf '%s\\n' \"$1\" > /etc/solstice/user",
                std::slice::from_ref(user),
            )?;
        }
        for (step, from) in recipe.steps.iter().zip(&copies) {
            match (step, from) {
                (RecipeStep::Copy { to, .. }, Some(from)) => {
                    log(&format!("{}: copy {} to {to}", recipe.name, from.display()));
                    copy_in(&root, from, to)?;
                }
                (RecipeStep::Run { command }, _) => {
                    log(&format!("{}: run {}", recipe.name, first_line(command)));
                    chroot_sh(&root, command, &[])?;
                }
                _ => {}
            }
        }
    }

    log(&format!(
        "{}: the guest's init, runner and kernel",
        recipe.name
    ));
    install_guest(&root, &options.runner)?;
    let kver = kernel_version(&root)?;
    extract_vmlinux(
        &root.join(format!("boot/vmlinuz-{kver}")),
        &staged.join("vmlinux"),
    )?;
    initramfs(
        &root,
        &kver,
        &work.path().join("initramfs"),
        &staged.join("initrd.cpio"),
    )?;
    let uki = work.path().join("uki.efi");
    efi::unified_kernel(
        &root,
        &root.join(format!("boot/vmlinuz-{kver}")),
        &staged.join("initrd.cpio"),
        CMDLINE,
        work.path(),
        &uki,
    )?;
    clean_root(&root)?;
    log(&format!("{}: the root disk", recipe.name));
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--sort=name", "--numeric-owner", "--xattrs", "-cf"])
        .arg(staged.join("root.tar"))
        .arg("."))?;
    make_ext4(&root, &staged.join("rootfs.ext4"), &key)?;
    log(&format!("{}: the UEFI disk", recipe.name));
    efi::disk(
        &uki,
        &staged.join("rootfs.ext4"),
        recipe.disk_gib,
        &key,
        work.path(),
        &staged.join("disk.raw"),
    )?;
    let write = |name: &str, text: String| {
        std::fs::write(staged.join(name), text).map_err(io(format!("cannot write {name}")))
    };
    write("cmdline", format!("{CMDLINE}\n"))?;
    write("kernel-version", format!("{kver}\n"))?;
    write("disk-gib", format!("{}\n", recipe.disk_gib))?;
    write(
        "labels",
        recipe.labels.iter().map(|l| format!("{l}\n")).collect(),
    )?;
    std::fs::copy(&file, staged.join("recipe.kdl")).map_err(io("cannot copy the recipe"))?;
    write("image-key", format!("{key}\n"))?;

    let old = work.path().join("old");
    if out.exists() {
        std::fs::rename(&out, &old).map_err(io(format!("cannot move {} aside", out.display())))?;
    }
    std::fs::rename(&staged, &out)
        .map_err(io(format!("cannot move the image to {}", out.display())))?;
    log(&format!(
        "{}: built {} in {:.0} s (kernel {kver})",
        recipe.name,
        out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(BuiltImage {
        dir: out,
        name: recipe.name,
        labels: recipe.labels,
        key,
        cached: false,
    })
}

/// A build replaces its output directory: only when it is missing, empty,
/// or an image (it has `image-key`), never a directory of something else
/// given by mistake as `--out`.
fn replaceable(out: &Path) -> Result<(), ImageError> {
    match std::fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::Io {
            what: format!("{}", out.display()),
            source: e,
        }),
        Ok(mut entries) => {
            if entries.next().is_none() || out.join("image-key").is_file() {
                Ok(())
            } else {
                Err(ImageError::Invalid(format!(
                    "{} is not an image directory (it has files and no image-key): the build would replace it; choose another --out",
                    out.display()
                )))
            }
        }
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 80 {
        let mut end = 80;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        &line[..end]
    } else {
        line
    }
}

/// `copy`'s host paths, expanded (`${VAR}`, `~/`) and made absolute;
/// `None` for `run` steps.
fn resolve_copies(recipe: &Recipe, dir: &Path) -> Result<Vec<Option<PathBuf>>, ImageError> {
    recipe
        .steps
        .iter()
        .map(|s| match s {
            RecipeStep::Copy { from, .. } => {
                let expanded = expand(from)?;
                let p = PathBuf::from(&expanded);
                let p = if p.is_absolute() { p } else { dir.join(p) };
                if std::fs::symlink_metadata(&p).is_err() {
                    return Err(ImageError::Invalid(format!(
                        "copy from `{from}`: {} does not exist",
                        p.display()
                    )));
                }
                Ok(Some(p))
            }
            _ => Ok(None),
        })
        .collect()
}

/// `${VAR}` from the environment (unset is an error) and a leading `~/`.
pub fn expand(text: &str) -> Result<String, ImageError> {
    let mut out = String::new();
    let mut rest = text;
    if let Some(r) = rest.strip_prefix("~/") {
        let home = std::env::var("HOME")
            .map_err(|_| ImageError::Invalid(format!("`{text}`: HOME is not set")))?;
        out.push_str(&home);
        out.push('/');
        rest = r;
    }
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ImageError::Invalid(format!("`{text}`: `${{` without `}}`")))?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| {
            ImageError::Invalid(format!(
                "`{text}`: the environment variable {name} is not set"
            ))
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn image_key(
    recipe: &Path,
    base: Option<&BuiltImage>,
    copies: &[Option<PathBuf>],
    runner: &Path,
) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    h.update(b"solstice-image-1\0");
    h.update(read_limited(recipe)?);
    h.update(b"\0base\0");
    if let Some(b) = base {
        h.update(b.key.as_bytes());
    }
    h.update(b"\0init\0");
    h.update(GUEST_INIT.as_bytes());
    h.update(GUEST_SOLSTICE_INIT.as_bytes());
    h.update(CMDLINE.as_bytes());
    h.update(b"\0runner\0");
    hash_tree(&mut h, runner)?;
    for c in copies.iter().flatten() {
        h.update(b"\0copy\0");
        hash_tree(&mut h, c)?;
    }
    let d = h.finalize();
    Ok(d.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// Hashes a file or a tree: relative paths, modes, symlink targets and
/// contents, in name order.
fn hash_tree(h: &mut Sha256, path: &Path) -> Result<(), ImageError> {
    let mut stack = vec![(path.to_path_buf(), PathBuf::new())];
    while let Some((p, rel)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(io(format!("{}", p.display())))?;
        use std::os::unix::fs::PermissionsExt;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(format!("\0{:o}\0", meta.permissions().mode()).as_bytes());
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(io(format!("{}", p.display())))?;
            h.update(t.as_os_str().as_encoded_bytes());
        } else if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .map_err(io(format!("{}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            for n in names.into_iter().rev() {
                stack.push((p.join(&n), rel.join(&n)));
            }
        } else if meta.is_file() {
            let mut f = std::fs::File::open(&p).map_err(io(format!("{}", p.display())))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).map_err(io(format!("{}", p.display())))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args().take(3) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command; its stderr is kept (the last 4 KiB) for the error and
/// also shown.
fn run(cmd: &mut Command) -> Result<(), ImageError> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|c| c.wait_with_output())
        .map_err(io(format!("cannot run {what}")))?;
    let _ = std::io::stderr().write_all(&out.stderr);
    if out.status.success() {
        return Ok(());
    }
    let tail = String::from_utf8_lossy(&out.stderr[out.stderr.len().saturating_sub(4096)..])
        .trim()
        .to_string();
    Err(ImageError::Command {
        command: what,
        status: out.status.to_string(),
        stderr: tail,
    })
}

/// `/bin/sh -c SCRIPT sh ARGS...` in the image, as root, with a clean
/// environment; the arguments reach the script as `$1...`, never as text
/// of the script.
fn chroot_sh(root: &Path, script: &str, args: &[String]) -> Result<(), ImageError> {
    run(Command::new("chroot")
        .arg(root)
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
            "DEBIAN_FRONTEND=noninteractive",
            "/bin/sh",
            "-ec",
            script,
            "sh",
        ])
        .args(args)
        .stdout(Stdio::inherit()))
}

/// Copies a host file or directory to `to` in the image. The copy is
/// unpacked inside the chroot, so a symlink in the image never leads out of
/// it; everything copied belongs to root.
fn copy_in(root: &Path, from: &Path, to: &str) -> Result<(), ImageError> {
    let meta = std::fs::metadata(from).map_err(io(format!("{}", from.display())))?;
    let (dir, name) = if meta.is_dir() {
        (from.to_path_buf(), ".".to_string())
    } else {
        (
            from.parent().unwrap_or(Path::new("/")).to_path_buf(),
            from.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    };
    let mut pack = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            "-",
            "--",
        ])
        .arg(&name)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(io("cannot run tar"))?;
    let stdout = pack
        .stdout
        .take()
        .ok_or_else(|| ImageError::Invalid("tar gave no output".into()))?;
    // A directory's contents go into `to`; a file becomes `to`.
    let script = if meta.is_dir() {
        "mkdir -p \"$1\" && tar -C \"$1\" -xof -"
    } else {
        "d=$(dirname \"$1\") && mkdir -p \"$d\" && t=$(mktemp -d) && tar -C \"$t\" -xof - && mv -f \"$t/$2\" \"$1\" && rmdir \"$t\""
    };
    let unpacked = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-ec", script, "sh", to, &name])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(stdout)
        .stderr(Stdio::piped())
        .output()
        .map_err(io("cannot run chroot"))?;
    let packed = pack.wait().map_err(io("tar"))?;
    if !packed.success() || !unpacked.status.success() {
        return Err(ImageError::Command {
            command: format!("copy {} to {to}", from.display()),
            status: if packed.success() {
                unpacked.status.to_string()
            } else {
                packed.to_string()
            },
            stderr: String::from_utf8_lossy(&unpacked.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `/proc` mounted in the image while packages install; unmounted on drop.
struct Mounts(PathBuf);

impl Mounts {
    fn new(root: &Path) -> Result<Mounts, ImageError> {
        let proc = root.join("proc");
        std::fs::create_dir_all(&proc).map_err(io("cannot create /proc in the image"))?;
        run(Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc))?;
        Ok(Mounts(proc))
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

fn install_guest(root: &Path, runner: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<(), ImageError> {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(format!("cannot create /{rel}'s directory")))?;
        }
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).map_err(io(format!("cannot write /{rel}")))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("cannot chmod /{rel}")))
    };
    put(
        "usr/sbin/solstice-init",
        GUEST_SOLSTICE_INIT.as_bytes(),
        0o755,
    )?;
    let runner_bytes = std::fs::read(runner)
        .map_err(io(format!("cannot read the runner {}", runner.display())))?;
    put("usr/bin/solstice-runner", &runner_bytes, 0o755)?;
    put("etc/solstice-guest", b"solstice guest image\n", 0o644)?;
    std::fs::create_dir_all(root.join("work")).map_err(io("cannot create /work"))?;
    // Debian's /sbin is a link to usr/sbin; older roots have their own.
    let sbin = root.join("sbin/solstice-init");
    if !sbin.exists() {
        std::os::unix::fs::symlink("../usr/sbin/solstice-init", &sbin)
            .map_err(io("cannot link /sbin/solstice-init"))?;
    }
    Ok(())
}

fn kernel_version(root: &Path) -> Result<String, ImageError> {
    let mut found: Vec<String> = std::fs::read_dir(root.join("boot"))
        .map_err(io("cannot read the image's /boot"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        ImageError::Invalid("the image has no kernel in /boot (linux-image-cloud-amd64)".into())
    })
}

/// The ELF kernel inside a bzImage, for a direct PVH boot, without its
/// symbol table (QEMU reads it at every start).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), ImageError> {
    let data = std::fs::read(bzimage).map_err(io(format!("cannot read {}", bzimage.display())))?;
    let decoders: [(&[u8], &[&str]); 4] = [
        (b"\x02\x21\x4c\x18", &["lz4", "-dc"]),
        (b"\x1f\x8b\x08", &["gzip", "-dc"]),
        (b"\xfd7zXZ\x00", &["xz", "-dc"]),
        (b"\x28\xb5\x2f\xfd", &["zstd", "-dc"]),
    ];
    for (magic, cmd) in decoders {
        let mut from = 0;
        while let Some(at) = find(&data[from..], magic).map(|a| a + from) {
            from = at + 1;
            let Ok(mut child) = Command::new(cmd[0])
                .args(&cmd[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            else {
                break;
            };
            let input = data[at..].to_vec();
            let mut stdin = child.stdin.take();
            let feeder = std::thread::spawn(move || {
                if let Some(s) = stdin.as_mut() {
                    let _ = s.write_all(&input);
                }
            });
            let output = child.wait_with_output().map_err(io(cmd[0]))?;
            let _ = feeder.join();
            if output.stdout.starts_with(b"\x7fELF") {
                std::fs::write(out, &output.stdout).map_err(io("cannot write vmlinux"))?;
                return run(Command::new("strip").arg("--strip-all").arg(out));
            }
        }
    }
    Err(ImageError::Invalid(format!(
        "no ELF kernel found inside {}",
        bzimage.display()
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// busybox, the virtio drivers in dependency order and `/init`, as an
/// uncompressed cpio archive with every file dated [`SOURCE_DATE_EPOCH`].
fn initramfs(root: &Path, kver: &str, dir: &Path, out: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir.join("bin")).map_err(io("initramfs"))?;
    std::fs::create_dir_all(dir.join("lib/modules")).map_err(io("initramfs"))?;
    std::fs::copy(root.join("bin/busybox"), dir.join("bin/busybox"))
        .map_err(io("cannot copy the image's /bin/busybox (busybox-static)"))?;
    std::fs::write(dir.join("init"), GUEST_INIT).map_err(io("cannot write /init"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("init"), std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod /init"))?;
    }
    let mut seen = BTreeSet::new();
    let mut order = String::new();
    for m in INITRAMFS_MODULES {
        let out = Command::new("chroot")
            .arg(root)
            .args(["/usr/sbin/modprobe", "-S", kver, "--show-depends", m])
            .output()
            .map_err(io("cannot run modprobe in the image"))?;
        if !out.status.success() {
            return Err(ImageError::Command {
                command: format!("modprobe --show-depends {m}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(ko) = line
                .strip_prefix("insmod ")
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            if !seen.insert(ko.to_string()) {
                continue;
            }
            let name = Path::new(ko)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            std::fs::copy(
                root.join(ko.trim_start_matches('/')),
                dir.join("lib/modules").join(&name),
            )
            .map_err(io(format!("cannot copy {ko}")))?;
            order.push_str(&name);
            order.push('\n');
        }
    }
    std::fs::write(dir.join("modules.load"), order).map_err(io("modules.load"))?;
    clamp_times(dir)?;
    let list = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible")
        .current_dir(dir)
        .stdout(std::fs::File::create(out).map_err(io("initrd.cpio"))?)
        .stderr(Stdio::piped())
        .output()
        .map_err(io("cannot run cpio"))?;
    if !list.status.success() {
        return Err(ImageError::Command {
            command: "cpio -o".into(),
            status: list.status.to_string(),
            stderr: String::from_utf8_lossy(&list.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn clamp_times(dir: &Path) -> Result<(), ImageError> {
    run(Command::new("find")
        .arg(dir)
        .arg("-newermt")
        .arg(format!("@{SOURCE_DATE_EPOCH}"))
        .args(["-exec", "touch", "-h", "-d"])
        .arg(format!("@{SOURCE_DATE_EPOCH}"))
        .args(["{}", "+"]))
}

/// What a build leaves that differs from one build to the next, or that a
/// VM does not need: package lists and caches, logs, the machine id, the
/// host's resolver, the kernel's own initramfs.
fn clean_root(root: &Path) -> Result<(), ImageError> {
    let script = "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
        /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/* /tmp/* /var/tmp/* /boot/initrd.img-* \
        /root/.bash_history /etc/ssh/ssh_host_*; \
        : > /etc/machine-id; : > /etc/resolv.conf; echo solstice > /etc/hostname; \
        printf '127.0.0.1 localhost\\n' > /etc/hosts; \
        mkdir -p /var/lib/apt/lists/partial /var/cache/apt/archives/partial";
    chroot_sh(root, script, &[])?;
    clamp_times(root)
}

/// An ext4 file system holding `root`, big enough for it and a little
/// more (each VM's overlay grows to the recipe's `disk_gib`), with its
/// UUID and hash seed from the key and its times from
/// [`SOURCE_DATE_EPOCH`].
fn make_ext4(root: &Path, out: &Path, key: &str) -> Result<(), ImageError> {
    let (bytes, files) = tree_size(root)?;
    let mib = (bytes + bytes / 4) / (1 << 20) + 256;
    let mib = mib.div_ceil(64) * 64;
    let inodes = (files * 2).max(65_536);
    let uuid = |salt: &str| key_uuid(key, salt);
    run(Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", SOURCE_DATE_EPOCH.to_string())
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-L",
            "solstice-root",
        ])
        .arg("-U")
        .arg(uuid("fs"))
        .arg("-E")
        .arg(format!("hash_seed={},root_owner=0:0", uuid("hash")))
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(root)
        .arg(out)
        .arg(format!("{mib}M")))?;
    clamp_inode_times(out)
}

/// `mke2fs -d` copies each file's change and access times from the host,
/// where the first cannot be set and reading the file for the image moves
/// the second: every inode in use gets [`SOURCE_DATE_EPOCH`] for both,
/// through `debugfs`. `mke2fs -d` numbers inodes in order, so the ones in
/// use are the first `count - free`.
fn clamp_inode_times(image: &Path) -> Result<(), ImageError> {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .map_err(io("cannot run dumpe2fs"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let (Some(count), Some(free)) = (field("Inode count:"), field("Free inodes:")) else {
        return Err(ImageError::Invalid(format!(
            "dumpe2fs {}: no inode counts",
            image.display()
        )));
    };
    // 2024-01-01 00:00:00 UTC, as debugfs reads a date.
    const WHEN: &str = "20240101000000";
    let mut script = String::new();
    for inode in std::iter::once(2).chain(11..=count.saturating_sub(free)) {
        // The access time too: reading a file for the image updates it.
        script.push_str(&format!(
            "sif <{inode}> ctime {WHEN}\nsif <{inode}> atime {WHEN}\n"
        ));
    }
    let file = image.with_extension("debugfs");
    std::fs::write(&file, script).map_err(io("cannot write the debugfs script"))?;
    let done = run(Command::new("debugfs")
        .env("TZ", "UTC")
        .args(["-w", "-f"])
        .arg(&file)
        .arg(image)
        .stdout(Stdio::null()));
    let _ = std::fs::remove_file(&file);
    done
}

/// A UUID (version 4 in form) derived from the image's key and `salt`.
fn key_uuid(key: &str, salt: &str) -> String {
    let d = Sha256::digest(format!("{salt}{key}").as_bytes());
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn tree_size(root: &Path) -> Result<(u64, u64), ImageError> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(format!("{}", d.display())))? {
            let e = e.map_err(io(format!("{}", d.display())))?;
            let meta = e
                .metadata()
                .map_err(io(format!("{}", e.path().display())))?;
            files += 1;
            bytes += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ext4_image_is_the_same_bytes_built_twice() {
        let dir = tempfile::tempdir().expect("test setup");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc/deep")).expect("test setup");
        std::fs::write(root.join("etc/a"), "a\n").expect("test setup");
        std::fs::write(root.join("etc/deep/b"), vec![7u8; 100_000]).expect("test setup");
        std::os::unix::fs::symlink("deep/b", root.join("etc/link")).expect("test setup");
        clamp_times(&root).expect("test setup");
        make_ext4(&root, &dir.path().join("one.ext4"), "0123abcd").expect("test setup");
        // Files written again between the builds (a new change time on the
        // host): clamped to the same times.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(root.join("etc/a"), "a\n").expect("test setup");
        clamp_times(&root).expect("test setup");
        make_ext4(&root, &dir.path().join("two.ext4"), "0123abcd").expect("test setup");
        let one = std::fs::read(dir.path().join("one.ext4")).expect("test setup");
        let two = std::fs::read(dir.path().join("two.ext4")).expect("test setup");
        let differ = one.iter().zip(&two).filter(|(a, b)| a != b).count();
        assert!(
            one == two,
            "two builds of one tree differ in {differ} bytes"
        );
        make_ext4(&root, &dir.path().join("three.ext4"), "another-key").expect("test setup");
        let three = std::fs::read(dir.path().join("three.ext4")).expect("test setup");
        assert!(one != three, "the UUID comes from the key");
    }

    #[test]
    fn the_key_follows_the_recipe_and_what_it_copies() {
        let dir = tempfile::tempdir().expect("test setup");
        let recipe = dir.path().join("image.kdl");
        std::fs::write(
            &recipe,
            "image name=\"x\" { label \"x\"; debootstrap suite=\"bookworm\" }",
        )
        .expect("test setup");
        let runner = dir.path().join("runner");
        std::fs::write(&runner, "runner").expect("test setup");
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).expect("test setup");
        std::fs::write(files.join("f"), "one").expect("test setup");
        let copies = vec![Some(files.clone())];
        let key = || image_key(&recipe, None, &copies, &runner).expect("test setup");
        let first = key();
        assert_eq!(first, key(), "the same inputs, the same key");
        std::fs::write(files.join("f"), "two").expect("test setup");
        let second = key();
        assert_ne!(first, second, "a copied file changed");
        std::fs::write(&runner, "runner 2").expect("test setup");
        assert_ne!(second, key(), "the runner changed");
    }

    #[test]
    fn a_directory_that_is_not_an_image_is_never_replaced() {
        let dir = tempfile::tempdir().expect("test setup");
        std::fs::write(
            dir.path().join("image.kdl"),
            "image name=\"x\" { label \"x\"; debootstrap suite=\"bookworm\" }",
        )
        .expect("test setup");
        let precious = dir.path().join("home");
        std::fs::create_dir_all(&precious).expect("test setup");
        std::fs::write(precious.join("notes.txt"), "keep me").expect("test setup");
        let mut options = BuildOptions::new(dir.path().join("cache"), dir.path().join("image.kdl"));
        options.out = Some(precious.clone());
        let err = build(dir.path(), &options, &mut |_| {}).expect_err("refused");
        assert!(
            err.to_string().contains("is not an image directory"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(precious.join("notes.txt")).expect("still there"),
            "keep me"
        );
        // Missing, empty, or an image: fine.
        assert!(replaceable(&dir.path().join("missing")).is_ok());
        std::fs::create_dir_all(dir.path().join("empty")).expect("test setup");
        assert!(replaceable(&dir.path().join("empty")).is_ok());
        std::fs::write(precious.join("image-key"), "k").expect("test setup");
        assert!(replaceable(&precious).is_ok());
    }

    #[test]
    fn from_chains_that_go_round_are_refused() {
        let dir = tempfile::tempdir().expect("test setup");
        for (name, base) in [("a", "../b"), ("b", "../a")] {
            std::fs::create_dir_all(dir.path().join(name)).expect("test setup");
            std::fs::write(
                dir.path().join(name).join("image.kdl"),
                format!("image name=\"{name}\" {{ label \"{name}\"; from \"{base}\" }}"),
            )
            .expect("test setup");
        }
        let options = BuildOptions::new(dir.path().join("cache"), dir.path().join("runner"));
        let err = build(&dir.path().join("a"), &options, &mut |_| {}).expect_err("refused");
        assert!(err.to_string().contains("goes round in a circle"), "{err}");
        assert!(!dir.path().join("cache").exists(), "nothing was built");
    }

    /// A copy into the image follows the image's symlinks inside the
    /// image, never the host's: `/evil` is an absolute link to a host
    /// directory, and the file lands in the image all the same.
    #[test]
    fn a_copy_never_leaves_the_image_through_its_symlinks() {
        if !nix::unistd::geteuid().is_root() {
            // chroot needs root; CI runs as root.
            return;
        }
        let dir = tempfile::tempdir().expect("test setup");
        let root = dir.path().join("root");
        let host = dir.path().join("host");
        std::fs::create_dir_all(root.join("bin")).expect("test setup");
        std::fs::create_dir_all(&host).expect("test setup");
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("a static /bin/busybox (busybox-static)");
        for applet in ["sh", "mkdir", "tar", "dirname", "mktemp", "mv", "rmdir"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .expect("test setup");
        }
        std::fs::create_dir_all(root.join("tmp")).expect("test setup");
        std::os::unix::fs::symlink(&host, root.join("evil")).expect("test setup");
        let file = dir.path().join("payload");
        std::fs::write(&file, "payload").expect("test setup");
        // The link leads nowhere inside the image: refused, nothing written.
        let err = copy_in(&root, &file, "/evil/payload").expect_err("refused");
        assert!(err.to_string().contains("copy"), "{err}");
        assert_eq!(
            std::fs::read_dir(&host).expect("test setup").count(),
            0,
            "written outside the image"
        );
        // Where the link's target exists in the image, the file goes there.
        let inside = root.join(host.strip_prefix("/").expect("test setup"));
        std::fs::create_dir_all(&inside).expect("test setup");
        copy_in(&root, &file, "/evil/payload").expect("test setup");
        assert_eq!(
            std::fs::read_dir(&host).expect("test setup").count(),
            0,
            "written outside the image"
        );
        assert_eq!(
            std::fs::read_to_string(inside.join("payload")).expect("test setup"),
            "payload"
        );
        // A directory's contents go into `to`.
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).expect("test setup");
        std::fs::write(tree.join("sub/x"), "x").expect("test setup");
        copy_in(&root, &tree, "/opt/tree").expect("test setup");
        assert_eq!(
            std::fs::read_to_string(root.join("opt/tree/sub/x")).expect("test setup"),
            "x"
        );
    }

    #[test]
    fn expansion() {
        let path = std::env::var("PATH").expect("PATH is set under cargo test");
        assert_eq!(
            expand("${PATH}/bin").expect("test setup"),
            format!("{path}/bin")
        );
        assert_eq!(
            expand("a${PATH}b${PATH}").expect("test setup"),
            format!("a{path}b{path}")
        );
        assert_eq!(expand("plain/path").expect("test setup"), "plain/path");
        assert!(expand("${SOLSTICE_IMAGE_TEST_UNSET_VAR}").is_err());
        assert!(expand("${unterminated").is_err());
    }

    #[test]
    fn first_lines_are_short() {
        assert_eq!(first_line("a\nb"), "a");
        assert_eq!(first_line(&"é".repeat(100)).len(), 80);
    }
}
