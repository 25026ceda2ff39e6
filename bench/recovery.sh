#!/usr/bin/env bash
# Recovery times, measured: runs the fleet's recovery fault tests N times
# (real processes on PostgreSQL and RabbitMQ, lease 6 s) and prints, for
# each run, how long after the fault the lost jobs started again:
#
# - two of three hosts killed in a busy run (48 jobs of 1.5 s): each lost
#   job's next start after the kill, with its bound (the lease, a reaper
#   pass, the wait for a free slot, 2.5 s of slack);
# - a host with free slots paused: its lost job's next start on the other
#   host after the pause, with its bound.
#
#   bench/recovery.sh [--runs N]      (default 5)
#
# The numbers go to docs/engine.md ("Recovery times, measured"). Not part
# of .ci/run (each test also runs there once).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cargo build -q --tests -p solstice
for i in $(seq 1 "$runs"); do
    for t in lost_jobs_start_again_ahead_of_the_backlog a_paused_hosts_lost_job_is_not_handed_back_to_it; do
        out=$(cargo test -q -p solstice --test fleet "$t" -- --exact --nocapture 2>&1) || {
            echo "run $i $t: FAILED"
            printf '%s\n' "$out" | grep -E "panicked|ms after" | head -5
            continue
        }
        printf 'run %s %s: %s\n' "$i" "$t" "$(printf '%s\n' "$out" | grep -E "ms after" | head -1)"
    done
done
