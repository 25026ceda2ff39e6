#!/usr/bin/env bash
# A job's checkout in a QEMU VM, two ways, for this repository and a
# generated 1 GB one (100 files of 10 MB of random bytes, so nothing
# compresses), on the Debian 12 image:
#
# - share: the tree goes in as the VM's share disk (a tar archive made on
#   the host, unpacked by the guest's init, copied by the runner): what the
#   daemon does with a checkout it made on the host (.git included);
# - clone: the guest clones it itself over git:// from the host
#   (`git daemon`, reached through `--reach`): what a runner cloning in the
#   VM costs.
#
# Each job's time is `cidev run`'s for a one-step job, minus the same job
# with an empty checkout (the boot) measured in the same run; the median of
# N runs (default 3) is printed. TCG, so slow: minutes per repository.
#
#   images/build.sh images/debian-12     # first
#   bench/checkout.sh [--runs N] [--skip-large]
#
# The numbers go to docs/performance.md. Not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
runs=3
large=yes
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --skip-large) large=""; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
image=${BENCH_DEBIAN_IMAGE:-$HOME/.cache/solstice/images/debian-12}
[ -f "$image/rootfs.ext4" ] || { echo "no image in $image: images/build.sh images/debian-12" >&2; exit 2; }
cargo build -q -p cidev
cidev=${CARGO_TARGET_DIR:-$repo/target}/debug/cidev
work=$(mktemp -d "${TMPDIR:-/tmp}/solstice-bench-checkout.XXXXXX")
daemon=""
cleanup() {
    [ -z "$daemon" ] || kill "$daemon" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
host=$(hostname)
port=9418
mkdir -p "$work/served"
git daemon --export-all --reuseaddr --listen=0.0.0.0 --port=$port --base-path="$work/served" &
daemon=$!

# One job, its duration in seconds from cidev's summary.
job() { # DIR WORKFLOW [cidev args...]
    local dir=$1 wf=$2
    shift 2
    # From the directory itself: outside a git work tree, cidev shares
    # the current directory.
    (cd "$dir" && "$cidev" run --provider qemu --image "$image" --state "$work/state" "$@" "$wf" 2>/dev/null) |
        awk '$1 == "j" { sub(/s$/, "", $3); print $3 }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# An empty checkout: the boot and the runner, nothing to copy.
mkdir -p "$work/empty"
printf 'workflow { job id="j" { step run="true" } }\n' >"$work/empty/wf.kdl"

measure() { # NAME SOURCE-REPO
    local name=$1 src=$2
    rm -rf "$work/served/$name.git" "$work/$name"
    git clone -q --bare "$src" "$work/served/$name.git"
    # The share: the whole checkout, .git included, as the daemon sends it
    # (renamed so cidev packs it as plain files, not as a git work tree).
    git clone -q "$src" "$work/$name"
    mv "$work/$name/.git" "$work/$name/dot-git"
    printf 'workflow { job id="j" { step run="du -sh . | tail -n 1" } }\n' >"$work/$name/wf.kdl"
    mkdir -p "$work/$name-clone"
    printf 'workflow { job id="j" { step run="git clone -q git://%s:%s/%s.git c && du -sh c | tail -n 1" } }\n' \
        "$host" "$port" "$name" >"$work/$name-clone/wf.kdl"
    local size
    size=$(du -sh "$work/$name" | cut -f1)
    local boot=() share=() clone=()
    for _ in $(seq 1 "$runs"); do
        boot+=("$(job "$work/empty" wf.kdl)")
        share+=("$(job "$work/$name" wf.kdl)")
        clone+=("$(job "$work/$name-clone" wf.kdl --reach "$host:$port")")
    done
    local b s c
    b=$(printf '%s\n' "${boot[@]}" | median)
    s=$(printf '%s\n' "${share[@]}" | median)
    c=$(printf '%s\n' "${clone[@]}" | median)
    printf '%-12s %6s   boot (empty checkout) %6.1f s   share %6.1f s (+%.1f)   clone in the guest %6.1f s (+%.1f)\n' \
        "$name" "$size" "$b" "$s" "$(awk -v a="$s" -v b="$b" 'BEGIN { print a - b }')" "$c" "$(awk -v a="$c" -v b="$b" 'BEGIN { print a - b }')"
}

measure solstice "$repo"
if [ -n "$large" ]; then
    big=$work/big-src
    mkdir -p "$big"
    git -C "$big" init -q
    for i in $(seq 1 100); do head -c 10485760 /dev/urandom >"$big/blob-$i"; done
    git -C "$big" add .
    git -C "$big" -c user.name=bench -c user.email=bench@localhost commit -q -m "1 GB"
    measure large "$big"
fi
