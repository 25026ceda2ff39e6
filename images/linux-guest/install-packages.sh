#!/usr/bin/env bash
# Installs the Debian packages images/linux-guest/build.sh and images/build.sh
# (debootstrap; fdisk, dosfstools and mtools for a disk image's partitions)
# need, and the UEFI firmware (ovmf) QEMU boots disk images with, when they
# are missing. Run by build.sh; runnable alone (images/linux-guest/test-install.sh
# runs it in a fresh debootstrap root).
#
# QEMU's binary packages come from one source package and must be of one
# version: `qemu-utils` 10.0 from a backport declares `Breaks:
# qemu-system-common (<< 8.0)`, so apt refuses Debian 12's `qemu-system-x86`
# 7.2 beside it ("held broken packages"). When the QEMU packages on the
# machine do not match the `qemu-system-x86` apt would install, every QEMU
# package is asked for at that version, downgrading the odd one explicitly
# (and saying so).
set -euo pipefail
log() { printf 'linux-guest: %s\n' "$*" >&2; }

packages=(qemu-system-x86 qemu-utils busybox-static cpio kmod lz4 e2fsprogs socat git curl ca-certificates binutils debootstrap
    fdisk dosfstools mtools ovmf)

installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'; }
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }
# The versions of a package that apt can download (not the one installed),
# highest first.
archive_versions() { apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}'; }
# The installed binary packages built from the source package qemu.
installed_qemu() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${source:Package}\n' 2>/dev/null |
        awk '$1 == "ii" && $3 == "qemu" {print $2}'
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
# The QEMU packages present, whether their version matches qemu-system-x86.
mismatched=()
if installed qemu-system-x86; then
    want=$(version_of qemu-system-x86)
    for p in $(installed_qemu); do
        v=$(version_of "$p")
        # Architecture-independent packages (qemu-system-data) carry no
        # binNMU suffix (+bN).
        [ "$v" = "$want" ] || [ "$v" = "${want%+b[0-9]*}" ] || mismatched+=("$p")
    done
fi
if [ ${#missing[@]} -eq 0 ] && [ ${#mismatched[@]} -eq 0 ]; then
    exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
$sudo apt-get update -qq
asks=()
qemu_asked=false
for p in "${missing[@]}"; do
    case "$p" in qemu-system-x86 | qemu-utils) qemu_asked=true ;; *) asks+=("$p") ;; esac
done
[ ${#mismatched[@]} -eq 0 ] || qemu_asked=true
downgrade=()
if $qemu_asked; then
    # The version apt would install (the one installed, if it is).
    if installed qemu-system-x86; then
        want=$(version_of qemu-system-x86)
    else
        want=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
    fi
    if [ -z "$want" ] || [ "$want" = "(none)" ]; then
        log "apt has no qemu-system-x86 to install (is a Debian archive in /etc/apt/sources.list?)"
        exit 1
    fi
    # Every QEMU package: the two we need and any other present.
    for p in $(printf '%s\n' qemu-system-x86 qemu-utils $(installed_qemu) | awk '!seen[$0]++'); do
        pick=""
        for v in $(archive_versions "$p"); do
            if [ "$v" = "$want" ] || [ "$v" = "${want%+b[0-9]*}" ]; then
                pick=$v
                break
            fi
        done
        if [ -z "$pick" ]; then
            log "apt offers no $p at version $want (to match qemu-system-x86); versions: $(archive_versions "$p" | tr '\n' ' ')"
            exit 1
        fi
        if installed "$p" && [ "$(version_of "$p")" != "$pick" ]; then
            log "$p $(version_of "$p") is installed, which does not match qemu-system-x86 $want: installing $p $pick instead (QEMU's packages must be of one version)"
            downgrade+=("$p")
        fi
        asks+=("$p=$pick")
    done
fi
log "installing ${asks[*]}"
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    ${downgrade[@]:+--allow-downgrades} "${asks[@]}" >/dev/null
for tool in qemu-img qemu-system-x86_64 socat busybox cpio mke2fs git curl objcopy sfdisk mkfs.vfat mcopy; do
    command -v "$tool" >/dev/null || { log "$tool is missing after installing the packages"; exit 1; }
done
# Both QEMU programs run (a mismatched pair may install and still fail to load).
qemu-img --version >/dev/null
qemu-system-x86_64 --version >/dev/null
