#!/usr/bin/env bash
# Flakiness, measured: runs each fault test (the fleet, the queues, the
# engine, the VM providers, the daemon's crash tests) N times in a row and
# prints the pass count of each. Not part of .ci/run: at 20 runs it takes
# hours on two cores. A test that passes or fails by timing is a defect.
#
#   bench/flaky.sh [--runs N] [--load] [PATTERN]
#
# --runs N   runs per test (default 20)
# --load     a CPU hog on every core beside the tests (a second heavy
#            process, as on a shared machine)
# PATTERN    only the tests whose `package/target/name` matches (grep -E)
#
# Needs what `cargo test --workspace` needs (PostgreSQL, RabbitMQ, the guest
# image). Prints one line per test: passes/runs, seconds per run, and the
# first failure's output is kept in $TMPDIR/solstice-flaky.XXXX/.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20
load=false
pattern=""
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --load) load=true; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) pattern=$1; shift ;;
    esac
done

# package test-target test-name
tests=(
    "solstice fleet three_orchestrators_run_a_thousand_jobs_once_each_within_their_capacity"
    "solstice fleet a_killed_orchestrators_job_runs_again_elsewhere_within_the_lease"
    "solstice fleet the_fleet_rides_out_a_broker_restart_and_a_database_restart"
    "solstice fleet why_says_no_host_serves_a_label_and_every_host_is_full"
    "solstice fleet an_orchestrator_started_while_the_broker_is_away_waits_for_it"
    "solstice fleet a_host_paused_past_its_lease_writes_nothing_more_and_stops_its_runner"
    "solstice fleet every_job_is_reported_once_and_in_order_through_twenty_kills_of_the_integration_daemon"
    "solstice fleet lost_jobs_start_again_ahead_of_the_backlog"
    "solstice fleet a_paused_hosts_lost_job_is_not_handed_back_to_it"
    "solstice e2e killed_right_after_acknowledging_the_run_happens_once_after_restart"
    "solstice e2e killed_while_processing_the_delivery_starts_one_run_after_restart"
    "solstice e2e sigterm_stops_accepting_cancels_what_is_still_running_and_exits"
    "solstice floods slow_bodies_declaring_25_mb_do_not_stall_a_signed_delivery"
    "solstice floods more_idle_connections_than_descriptors_do_not_lock_out_a_forge"
    "solstice-queue rabbit rabbit_queue_conforms_and_survives_a_broker_restart"
    "solstice-core rabbit a_job_longer_than_the_delivery_timeout_is_delivered_and_run_once"
    "solstice-core rabbit a_poison_message_is_dead_lettered_and_the_host_keeps_going"
    "solstice-core rabbit a_full_host_holds_no_message_another_host_could_run"
    "solstice-core engine engine_killed_mid_job_and_restarted"
    "solstice-core engine runner_crash_mid_job_is_retried"
    "solstice-core engine recovery_never_reaps_vms_of_starting_jobs"
    "solstice-core engine the_reaper_spares_the_vms_this_engine_runs_whatever_the_listing_says"
    "solstice-vmm providers local_provider_kills_what_a_dead_runner_left_even_in_a_new_session"
    "solstice-vmm providers a_new_local_provider_finds_and_reaps_what_an_old_one_left"
    "solstice-vmm qemu qemu_provider_conforms"
    "solstice-vmm qemu a_boot_timeout_stops_the_vm"
    "solstice-vmm qemu two_vms_at_once_get_their_own_overlays_and_the_golden_image_stays_as_it_was"
    "cidev qemu a_vm_a_killed_cidev_left_is_reaped_by_the_next_run"
)

work=$(mktemp -d "${TMPDIR:-/tmp}/solstice-flaky.XXXXXX")
hogs=()
stop_hogs() {
    for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap stop_hogs EXIT
if $load; then
    for _ in $(seq "$(nproc)"); do
        sh -c 'while :; do :; done' &
        hogs+=($!)
    done
fi

echo "building the test binaries" >&2
cargo test --workspace --no-run -q 2>&1 | tail -n 3 >&2

printf '%-95s %s\n' "test ($runs runs$($load && echo ', under load'))" "passed  s/run"
for t in "${tests[@]}"; do
    read -r package target name <<<"$t"
    [ -z "$pattern" ] || echo "$package/$target/$name" | grep -Eq "$pattern" || continue
    passed=0
    started=$(date +%s)
    for i in $(seq "$runs"); do
        log=$work/$package.$target.$name.$i.log
        if cargo test -q -p "$package" --test "$target" -- --exact "$name" >"$log" 2>&1; then
            passed=$((passed + 1))
            rm -f "$log"
        fi
    done
    per=$(( ($(date +%s) - started) / runs ))
    printf '%-95s %2d/%-2d  %4d\n' "$package/$target/$name" "$passed" "$runs" "$per"
done
if [ -z "$(ls -A "$work")" ]; then
    rmdir "$work"
else
    echo "failures' output: $work" >&2
fi
