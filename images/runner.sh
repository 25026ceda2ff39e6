#!/usr/bin/env bash
# Builds the statically linked solstice-runner that guest images carry and
# prints its path. Cached in ${XDG_CACHE_HOME:-~/.cache}/solstice/runner by
# a hash of the runner's sources and the toolchain: a second run builds
# nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/solstice
log() { printf 'runner: %s\n' "$*" >&2; }

host=$(rustc -vV | sed -n 's/^host: //p')
runner_key=$(
    cd "$repo"
    {
        rustc -vV
        echo "crt-static release $host"
        if git rev-parse --git-dir >/dev/null 2>&1 && [ -z "$(git status --porcelain -- Cargo.lock Cargo.toml solstice-core solstice-kdl solstice-queue solstice-vmm bins/runner)" ]; then
            git ls-files -s Cargo.lock Cargo.toml solstice-core solstice-kdl solstice-queue solstice-vmm bins/runner
        else
            # Not a clean checkout: hash the files themselves.
            find Cargo.lock Cargo.toml solstice-core solstice-kdl solstice-queue solstice-vmm bins/runner -type f -not -path '*/target/*' -print0 | sort -z | xargs -0 sha256sum
        fi
    } | sha256sum | cut -c1-16
)
runner=$cache/runner/$runner_key/solstice-runner
if [ ! -x "$runner" ]; then
    log "building the static solstice-runner"
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p solstice-runner --target "$host")
    mkdir -p "$(dirname "$runner")"
    cp "$target_dir/$host/release/solstice-runner" "$runner.tmp"
    strip "$runner.tmp"
    mv "$runner.tmp" "$runner"
fi
if ! ldd "$runner" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
    log "$runner is not statically linked"
    exit 1
fi

printf '%s\n' "$runner"
