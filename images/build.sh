#!/usr/bin/env bash
# Builds the golden image of a recipe (see docs/vms.md), as root:
#
#   images/build.sh RECIPE [--out DIR] [--rebuild]
#
# RECIPE is a recipe file or a directory holding `image.kdl`
# (images/debian-12, images/debian-12-rust). The image goes to
# ~/.cache/solstice/images/NAME unless --out says otherwise, and the path
# is printed on stdout. This installs the host's packages (QEMU,
# debootstrap, ...), builds the static runner the image carries and
# `solstice`, then runs `solstice image build`, which does nothing when the
# image is up to date.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
[ "$(id -u)" -eq 0 ] || { echo "images/build.sh: run as root (debootstrap and chroot)" >&2; exit 2; }
"$here/linux-guest/install-packages.sh"
runner=$("$here/runner.sh")
(cd "$repo" && cargo build -q -p solstice)
exec "$target_dir/debug/solstice" image build --runner "$runner" "$@"
