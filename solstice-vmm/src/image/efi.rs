//! `disk.raw`: the image as a disk a UEFI firmware boots (a bhyve zone's
//! bootrom, OVMF under QEMU). GPT with two partitions: an EFI system
//! partition holding one unified kernel image (the image's kernel, its
//! initramfs and the kernel command line in one EFI program, under the
//! path a firmware boots without a boot entry), and the root file system,
//! named [`ROOT_PARTITION`], which the initramfs mounts. The file is the
//! recipe's `disk_gib` long and sparse: it takes the space of what it
//! holds.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::{ImageError, SOURCE_DATE_EPOCH, io, key_uuid, run};

/// The EFI system partition's size in MiB.
pub const ESP_MIB: u64 = 64;
/// The root file system's partition name (GPT), which the kernel command
/// line of the unified image names (`solstice.rootpart=`).
pub const ROOT_PARTITION: &str = "solstice-root";
/// Where the unified kernel image is in the EFI system partition: the
/// removable-media path, which a firmware boots with no boot entry.
pub const BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// systemd's EFI stub in the image (Debian's `systemd-boot-efi`).
const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where partitions start: 1 MiB, in 512-byte sectors.
const FIRST_SECTOR: u64 = 2048;
/// What the unified image's kernel command line starts with (what the QEMU
/// provider adds to a direct boot's).
const CONSOLE: &str = "console=ttyS0 panic=-1";

/// The unified kernel image of `vmlinuz` and `initrd` with `cmdline`, from
/// the stub in the image at `root`, written to `out`. Each section is
/// placed after the stub's, at the stub's section alignment (what
/// `ukify` does; it is not in Debian 12).
pub(super) fn unified_kernel(
    root: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    work: &Path,
    out: &Path,
) -> Result<(), ImageError> {
    let stub = root.join(STUB);
    if !stub.is_file() {
        return Err(ImageError::Invalid(format!(
            "{STUB} is not in the image (the package systemd-boot-efi)"
        )));
    }
    let (mut next, align) = stub_layout(&stub)?;
    let cmdline_file = work.join("uki-cmdline");
    std::fs::write(
        &cmdline_file,
        format!("{CONSOLE} {cmdline} solstice.rootpart={ROOT_PARTITION}"),
    )
    .map_err(io("cannot write the kernel command line"))?;
    let osrel = root.join("usr/lib/os-release");
    let mut cmd = Command::new("objcopy");
    for (section, file) in [
        (".osrel", osrel.as_path()),
        (".cmdline", cmdline_file.as_path()),
        (".linux", vmlinuz),
        (".initrd", initrd),
    ] {
        let len = std::fs::metadata(file)
            .map_err(io(format!("{}", file.display())))?
            .len();
        next = next.div_ceil(align) * align;
        cmd.arg("--add-section")
            .arg(format!("{section}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{section}={next:#x}"));
        next += len;
    }
    run(cmd.arg(&stub).arg(out))
}

/// Where the stub's sections end (the highest address plus size) and its
/// section alignment, from `objdump`.
fn stub_layout(stub: &Path) -> Result<(u64, u64), ImageError> {
    let objdump = |flag: &str| -> Result<String, ImageError> {
        let out = Command::new("objdump")
            .arg(flag)
            .arg(stub)
            .stderr(Stdio::null())
            .output()
            .map_err(io("cannot run objdump"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let align = objdump("-p")?
        .lines()
        .find_map(|l| l.strip_prefix("SectionAlignment"))
        .and_then(|v| hex(v.trim()))
        .filter(|a| a.is_power_of_two());
    // "Idx Name Size VMA LMA File-off Algn": sections are the lines of
    // seven fields that start with their index.
    let end = objdump("-h")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7 && f[0].parse::<u32>().is_ok())
                .then(|| Some(hex(f[2])? + hex(f[3])?))
                .flatten()
        })
        .max();
    match (end, align) {
        (Some(end), Some(align)) => Ok((end, align)),
        _ => Err(ImageError::Invalid(format!(
            "objdump cannot read the sections of {}",
            stub.display()
        ))),
    }
}

/// `disk.raw` at `out`, `gib` GiB long: the EFI system partition with
/// `uki` at [`BOOT_PATH`], and `rootfs` (an ext4 image, grown to the
/// partition at boot) in [`ROOT_PARTITION`]. Identifiers come from `key`
/// and every time is [`SOURCE_DATE_EPOCH`], so one key gives the same
/// bytes.
pub(super) fn disk(
    uki: &Path,
    rootfs: &Path,
    gib: u32,
    key: &str,
    work: &Path,
    out: &Path,
) -> Result<(), ImageError> {
    let size = u64::from(gib) << 30;
    let root_start = FIRST_SECTOR + ESP_MIB * 2048;
    let fs = std::fs::metadata(rootfs)
        .map_err(io(format!("{}", rootfs.display())))?
        .len();
    // The backup GPT takes the last 33 sectors.
    if root_start * 512 + fs + 33 * 512 > size {
        return Err(ImageError::Invalid(format!(
            "the root file system ({} MiB) and the EFI system partition ({ESP_MIB} MiB) do not fit in disk_gib {gib}",
            fs >> 20
        )));
    }

    // The EFI system partition, as a FAT file system of its own.
    let esp = work.join("esp.img");
    let _ = std::fs::remove_file(&esp);
    let volume_id = &key_uuid(key, "esp")[..8];
    let mtools = |cmd: &mut Command| {
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
            .env("TZ", "UTC")
            .stdout(Stdio::null());
    };
    let mut mkfs = Command::new("mkfs.vfat");
    mkfs.args(["-n", "SOLSTICE", "-i", volume_id, "--invariant", "-C"])
        .arg(&esp)
        .arg((ESP_MIB * 1024).to_string());
    mtools(&mut mkfs);
    run(&mut mkfs)?;
    let mut mmd = Command::new("mmd");
    mmd.arg("-i").arg(&esp).args(["::EFI", "::EFI/BOOT"]);
    mtools(&mut mmd);
    run(&mut mmd)?;
    let program = work.join("BOOTX64.EFI");
    std::fs::copy(uki, &program).map_err(io("cannot copy the unified kernel image"))?;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(SOURCE_DATE_EPOCH);
    std::fs::File::options()
        .write(true)
        .open(&program)
        .and_then(|f| f.set_modified(when))
        .map_err(io("cannot date the unified kernel image"))?;
    let mut mcopy = Command::new("mcopy");
    mcopy
        .args(["-m", "-i"])
        .arg(&esp)
        .arg(&program)
        .arg(format!("::{BOOT_PATH}"));
    mtools(&mut mcopy);
    run(&mut mcopy)?;
    let _ = std::fs::remove_file(&program);

    // The partition table, then both file systems at their partitions.
    let file =
        std::fs::File::create(out).map_err(io(format!("cannot create {}", out.display())))?;
    file.set_len(size)
        .map_err(io(format!("cannot size {}", out.display())))?;
    drop(file);
    let table = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: {FIRST_SECTOR}\n\
         start={FIRST_SECTOR}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=\"EFI system\"\n\
         start={root_start}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={}, name=\"{ROOT_PARTITION}\"\n",
        key_uuid(key, "gpt"),
        ESP_MIB * 2048,
        key_uuid(key, "esp-part"),
        key_uuid(key, "root-part"),
    );
    let mut sfdisk = Command::new("sfdisk")
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
        ])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("cannot run sfdisk (the package fdisk)"))?;
    if let Some(mut stdin) = sfdisk.stdin.take() {
        stdin
            .write_all(table.as_bytes())
            .map_err(io("cannot write to sfdisk"))?;
    }
    let done = sfdisk.wait_with_output().map_err(io("sfdisk"))?;
    if !done.status.success() {
        return Err(ImageError::Invalid(format!(
            "sfdisk {}: {}",
            out.display(),
            String::from_utf8_lossy(&done.stderr).trim()
        )));
    }
    place(&esp, out, FIRST_SECTOR * 512)?;
    let _ = std::fs::remove_file(&esp);
    place(rootfs, out, root_start * 512)
}

/// Writes `from` into `to` at `offset`, leaving holes where `from` has
/// blocks of zeros (the disk stays as sparse as its file systems).
fn place(from: &Path, to: &Path, offset: u64) -> Result<(), ImageError> {
    const BLOCK: usize = 1 << 20;
    let mut src = std::fs::File::open(from).map_err(io(format!("{}", from.display())))?;
    let mut dst = std::fs::File::options()
        .write(true)
        .open(to)
        .map_err(io(format!("{}", to.display())))?;
    let mut buf = vec![0u8; BLOCK];
    let mut at = offset;
    loop {
        let mut n = 0;
        while n < BLOCK {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(format!("{}", from.display()))(e)),
            }
        }
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(at))
                .and_then(|_| dst.write_all(&buf[..n]))
                .map_err(io(format!("cannot write {}", to.display())))?;
        }
        at += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The disk's partition table, names and offsets as the guest's
    /// initramfs and a firmware read them; the ESP holds the program at the
    /// removable-media path; the root file system's bytes are at its
    /// partition; two builds are the same bytes; the file is sparse.
    #[test]
    fn a_disk_holds_the_boot_program_and_the_root_at_their_partitions() {
        let dir = tempfile::tempdir().expect("dir");
        let uki = dir.path().join("uki.efi");
        std::fs::write(&uki, b"MZ not really a program").expect("uki");
        let rootfs = dir.path().join("rootfs.ext4");
        let mut fs = vec![0u8; 3 << 20];
        fs[..6].copy_from_slice(b"rootfs");
        fs[(2 << 20) + 5] = 7;
        std::fs::write(&rootfs, &fs).expect("rootfs");
        let build = |name: &str| {
            let out = dir.path().join(name);
            disk(&uki, &rootfs, 1, "k3y", dir.path(), &out).expect("disk");
            out
        };
        let a = build("a.raw");
        let b = build("b.raw");
        // What is not a hole: the table, both partitions' data, the backup
        // table at the end.
        let read_at = |p: &Path, at: u64, len: usize| {
            let mut f = std::fs::File::open(p).expect("open");
            f.seek(SeekFrom::Start(at)).expect("seek");
            let mut v = vec![0u8; len];
            f.read_exact(&mut v).expect("read");
            v
        };
        assert_eq!(std::fs::metadata(&a).expect("meta").len(), 1 << 30);
        let head = 80 << 20;
        let bytes = read_at(&a, 0, head);
        assert!(bytes == read_at(&b, 0, head), "two builds differ");
        let tail = (1 << 30) - (1 << 20);
        assert!(
            read_at(&a, tail, 1 << 20) == read_at(&b, tail, 1 << 20),
            "two builds' backup tables differ"
        );
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&a).expect("meta").blocks() * 512;
        assert!(blocks < 80 << 20, "not sparse: {blocks} bytes allocated");

        let dump = Command::new("sfdisk")
            .arg("--dump")
            .arg(&a)
            .output()
            .expect("sfdisk");
        let dump = String::from_utf8_lossy(&dump.stdout);
        let parts: Vec<String> = dump
            .lines()
            .filter(|l| l.contains(" : start="))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(parts.len(), 2, "{dump}");
        assert!(
            parts[0].contains(&format!(
                ": start= 2048, size= {}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                ESP_MIB * 2048
            )),
            "{dump}"
        );
        assert!(
            parts[1].contains(&format!(": start= {}, ", 2048 + ESP_MIB * 2048))
                && parts[1].contains(&format!("name=\"{ROOT_PARTITION}\"")),
            "{dump}"
        );
        let root_at = (2048 + ESP_MIB * 2048) as usize * 512;
        assert_eq!(&bytes[root_at..root_at + fs.len()], &fs[..]);

        let esp = dir.path().join("esp-out.img");
        std::fs::write(&esp, &bytes[1 << 20..(1 << 20) + (ESP_MIB << 20) as usize]).expect("esp");
        let read = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg(format!("::{BOOT_PATH}"))
            .output()
            .expect("mtype");
        assert_eq!(read.stdout, b"MZ not really a program");

        // A root file system bigger than the disk is refused, by name.
        std::fs::File::options()
            .write(true)
            .open(&rootfs)
            .and_then(|f| f.set_len(1 << 30))
            .expect("grow");
        let e = disk(
            &uki,
            &rootfs,
            1,
            "k3y",
            dir.path(),
            &dir.path().join("c.raw"),
        )
        .expect_err("too big");
        assert!(e.to_string().contains("do not fit in disk_gib 1"), "{e}");
    }
}
