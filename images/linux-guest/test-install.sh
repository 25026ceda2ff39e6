#!/usr/bin/env bash
# Tests install-packages.sh where a developer's machine cannot: in fresh
# Debian 12 roots made by debootstrap (as root; needs network access to the
# Debian archive, about 2 minutes per case). Not part of .ci/run, which
# runs on a machine that already has what the first run installed.
#
#   images/linux-guest/test-install.sh [WORKDIR]
#
# Cases:
#   fresh     nothing of QEMU installed: the packages install, both programs run.
#   backport  a qemu-utils 10.0 from a backport is installed (declaring
#             `Breaks: qemu-system-common (<< 1:8.0+dfsg-5~)`, as Debian's
#             does): the script installs the matching 7.2 pair, downgrading
#             qemu-utils, and says so.
#   again     a second run in the same root installs nothing.
#
# The backport is a stand-in package with the real one's name, version and
# relations (the real .deb is not in any archive this machine reaches).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "test-install: run as root (debootstrap and chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
# A WORKDIR given is kept (with the debootstrap base, reused next time).
keep=${1:+yes}
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/solstice-test-install.XXXXXX")}
mkdir -p "$work"
cleanup() {
    for root in "$work"/*/root; do
        umount "$root/proc" 2>/dev/null || true
    done
    [ -n "$keep" ] || rm -rf "$work"
}
trap 'cleanup' EXIT
say() { printf '\n== test-install: %s\n' "$*"; }

base=$work/base.tar
if [ ! -f "$base" ]; then
    say "debootstrap bookworm (minbase)"
    debootstrap --variant=minbase bookworm "$work/base" http://deb.debian.org/debian >/dev/null
    tar -C "$work/base" -cf "$base" .
    rm -rf "$work/base"
fi

new_root() {
    local root=$work/$1/root
    rm -rf "$work/$1"
    mkdir -p "$root"
    tar -C "$root" -xf "$base"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir -p "$root/opt/solstice"
    cp "$here/install-packages.sh" "$root/opt/solstice/"
    mount -t proc proc "$root/proc"
    echo "$root"
}

run_install() {
    chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        bash /opt/solstice/install-packages.sh
}

check_qemu() {
    chroot "$1" qemu-img --version | head -n1
    chroot "$1" qemu-system-x86_64 --version | head -n1
    local utils system
    utils=$(chroot "$1" dpkg-query -W -f='${Version}' qemu-utils)
    system=$(chroot "$1" dpkg-query -W -f='${Version}' qemu-system-x86)
    [ "$utils" = "$system" ] || { echo "FAIL: qemu-utils $utils beside qemu-system-x86 $system" >&2; exit 1; }
}

say "case fresh"
root=$(new_root fresh)
run_install "$root"
check_qemu "$root"
say "case again (nothing to do)"
out=$(run_install "$root" 2>&1)
[ -z "$out" ] || { echo "FAIL: a second run printed: $out" >&2; exit 1; }
umount "$root/proc"

say "case backport"
root=$(new_root backport)
pkg=$work/backport/qemu-utils
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin"
printf '#!/bin/sh\necho "qemu-img version 10.0.2 (stand-in)"\n' >"$pkg/usr/bin/qemu-img"
chmod 755 "$pkg/usr/bin/qemu-img"
cat >"$pkg/DEBIAN/control" <<'EOF'
Package: qemu-utils
Source: qemu
Version: 1:10.0.2+ds-2+deb13u1~bpo12+1
Architecture: amd64
Maintainer: Solstice CI tests <tests@invalid>
Replaces: qemu-system-common (<< 1:8.0+dfsg-5~)
Breaks: qemu-system-common (<< 1:8.0+dfsg-5~)
Description: stand-in for the qemu-utils 10.0 backport
EOF
dpkg-deb --build --root-owner-group "$pkg" "$work/backport/qemu-utils.deb" >/dev/null
cp "$work/backport/qemu-utils.deb" "$root/tmp/"
chroot "$root" dpkg -i /tmp/qemu-utils.deb >/dev/null
# What the earlier script asked for here: apt refuses ("held broken
# packages"), as on a fresh machine of the project's kind. (Simulated: -s.)
chroot "$root" apt-get update -qq
if chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -s -y -qq --no-install-recommends qemu-system-x86 qemu-utils >/dev/null 2>&1; then
    echo "FAIL: the stand-in backport did not block a plain install (the test proves nothing)" >&2
    exit 1
fi
out=$(run_install "$root" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
echo "$out" | grep -q 'qemu-utils 1:10.0.2.* does not match' || { echo "FAIL: the downgrade was not announced" >&2; exit 1; }
check_qemu "$root"
umount "$root/proc"
say "ok"
