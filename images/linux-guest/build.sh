#!/usr/bin/env bash
# Builds the Linux guest image the QEMU provider boots: Debian's cloud kernel
# (as an uncompressed PVH `vmlinux`), a small initramfs with busybox and the
# virtio drivers, and an ext4 root disk with busybox, git and a statically
# linked solstice-runner started at boot. See README.md beside this script.
#
#   images/linux-guest/build.sh [OUT]
#
# OUT defaults to $SOLSTICE_GUEST_IMAGE, else ~/.cache/solstice/linux-guest
# (under $XDG_CACHE_HOME when set), which is where cidev and the tests look.
#
# Idempotent: it installs the Debian packages it needs when they are
# missing, caches the kernel package and the runner binary under
# ${XDG_CACHE_HOME:-~/.cache}/solstice, and does nothing when OUT already
# holds an image built from the same inputs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# The guest's two init scripts live with the provider (solstice-vmm embeds
# them for `solstice image build`).
guest=$repo/solstice-vmm/guest
target_dir=${CARGO_TARGET_DIR:-$repo/target}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/solstice
out=${1:-${SOLSTICE_GUEST_IMAGE:-$cache/linux-guest}}
disk_mib=${SOLSTICE_GUEST_DISK_MIB:-1024}
log() { printf 'linux-guest: %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
"$here/install-packages.sh"

# --- the kernel: Debian's cloud kernel, downloaded (not installed) ---------
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64 (apt-get update?)"; exit 1; }
kver=${kpkg#linux-image-}
mkdir -p "$cache/kernel"
kdir=$cache/kernel/$kver
if [ ! -f "$kdir/.done" ]; then
    log "downloading $kpkg"
    rm -rf "$kdir" "$kdir.tmp"
    mkdir -p "$kdir.tmp"
    (cd "$kdir.tmp" && apt-get download -q "$kpkg" >/dev/null 2>&1 && dpkg -x ./*.deb root && rm -f ./*.deb)
    depmod -b "$kdir.tmp/root" "$kver"
    mv "$kdir.tmp" "$kdir"
    touch "$kdir/.done"
fi

# --- the runner: static, cached by the hash of its sources -----------------
runner=$("$repo/images/runner.sh")

# --- is OUT up to date? ----------------------------------------------------
key=$(
    {
        echo "$kver $disk_mib"
        sha256sum "$here/build.sh" "$guest/init" "$guest/solstice-init" "$runner" /bin/busybox /usr/bin/git /usr/bin/curl
    } | sha256sum | cut -c1-16
)
if [ -f "$out/image-key" ] && [ "$(cat "$out/image-key")" = "$key" ]; then
    log "$out is up to date ($kver)"
    exit 0
fi
log "assembling the image in $out"
work=$(mktemp -d "${TMPDIR:-/tmp}/solstice-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out"

# vmlinux: the ELF inside the compressed bzImage, for a direct PVH boot
# (0.6 s faster under TCG than the bzImage's own decompressor).
vmlinuz=$kdir/root/boot/vmlinuz-$kver
python3 - "$vmlinuz" "$work/out/vmlinux" <<'PY'
import subprocess, sys
data = open(sys.argv[1], "rb").read()
decoders = [(b"\x02\x21\x4c\x18", ["lz4", "-dc"]), (b"\x1f\x8b\x08", ["gzip", "-dc"]),
            (b"\xfd7zXZ\x00", ["xz", "-dc"]), (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"])]
for magic, cmd in decoders:
    at = data.find(magic)
    while at >= 0:
        p = subprocess.run(cmd, input=data[at:], capture_output=True)
        if p.stdout[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(p.stdout)
            sys.exit(0)
        at = data.find(magic, at + 1)
sys.exit("no ELF kernel found inside " + sys.argv[1])
PY
# Without its symbol table: QEMU reads the symbols of an ELF kernel it
# loads, which cost about 0.1 s of every boot here. The PVH note stays.
strip --strip-all "$work/out/vmlinux"

# The initramfs: busybox, the virtio drivers (in dependency order), /init.
mods=$kdir/root/lib/modules/$kver
ird=$work/initramfs
mkdir -p "$ird/bin" "$ird/lib/modules"
cp /bin/busybox "$ird/bin/busybox"
cp "$guest/init" "$ird/init"
: >"$ird/modules.load"
for m in virtio_mmio virtio_pci virtio_blk virtio_net; do
    modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" | sed -n 's/^insmod \([^ ]*\).*/\1/p'
done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$ird/lib/modules/"
    basename "$ko" >>"$ird/modules.load"
done
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$work/out/initrd.cpio"

# The root disk: busybox, git and curl (with the libraries they link), the
# runner. curl, because busybox's static wget crashes resolving names (a
# static glibc cannot load NSS modules) and steps expect curl anyway.
r=$work/root
mkdir -p "$r"/{bin,sbin,etc,root,tmp,run,proc,sys,dev,work,usr/bin,usr/sbin,usr/lib/git-core,usr/share,etc/ssl/certs}
cp /bin/busybox "$r/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"
done
cp "$guest/solstice-init" "$r/sbin/solstice-init"
cp "$runner" "$r/usr/bin/solstice-runner"
copy_with_libs() {
    local f lib
    for f in "$@"; do
        mkdir -p "$r$(dirname "$f")"
        cp -L "$f" "$r$f"
        for lib in $(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
            [ -e "$r$lib" ] && continue
            mkdir -p "$r$(dirname "$lib")"
            cp -L "$lib" "$r$lib"
        done
    done
}
rm -f "$r/bin/git"
rm -f "$r/bin/wget"
copy_with_libs /usr/bin/git /usr/lib/git-core/git-remote-http /usr/bin/curl
ln -sf git-remote-http "$r/usr/lib/git-core/git-remote-https"
ln -sf ../../bin/git "$r/usr/lib/git-core/git"
cp -r /usr/share/git-core "$r/usr/share/" 2>/dev/null || true
cp -L /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
printf 'hosts: files\n' >"$r/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' >"$r/etc/hosts"
printf 'solstice linux guest, kernel %s, built %s\n' "$kver" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$r/etc/solstice-guest"
mke2fs -q -t ext4 -L solstice-root -O ^has_journal -d "$r" "$work/out/rootfs.ext4" "${disk_mib}M" >/dev/null

# The kernel command line this image wants (the provider adds the console
# and the accelerator's settings).
printf '%s\n' "quiet loglevel=0 no_timer_check mitigations=off random.trust_cpu=on rcupdate.rcu_expedited=1 cryptomgr.notests apparmor=0 audit=0 8250.nr_uarts=1" >"$work/out/cmdline"
printf '%s\n' "$kver" >"$work/out/kernel-version"
printf '%s\n' "$key" >"$work/out/image-key"

mkdir -p "$(dirname "$out")"
rm -rf "$out.old"
[ -e "$out" ] && mv "$out" "$out.old"
mv "$work/out" "$out"
rm -rf "$out.old"
log "built $out: kernel $kver, root disk ${disk_mib} MiB"
