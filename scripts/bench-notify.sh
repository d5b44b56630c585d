#!/usr/bin/env bash
# Benchmark of the notify trigger and of wake-ups by notification, on a throwaway cluster:
#  1. what the trigger costs producers: one-row INSERT transactions/s (pgbench, -M prepared)
#     with 1 and 8 client connections, without the trigger (`migrate --notify off`), with it
#     and nobody listening, and with it while an idle worker LISTENs (and claims, finding
#     nothing of the inserted type, on every wake-up);
#  2. the wake-up rows bench.sh also prints (scripts/lib/bench_latency.sh): commit-to-handler
#     latency with notifications and with polling only, an idle worker's queries/s and CPU,
#     and a 2-process drain's end with the default poll interval vs 0.05.
# The figures are in docs/guide.md, "Wake-ups by notification".
#
#   scripts/bench-notify.sh [--quick]
#
#   --quick          one run each, 2 s runs (a smoke check, not figures)
#   BENCH_SECONDS    duration of each pgbench run (default 5; 2 with --quick)
#
# Prints figures and never asserts timings. Same cluster set-up as bench.sh (stock durable
# settings, TCP 127.0.0.1, trust auth; removed on exit).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench_util.sh
source scripts/lib/bench_util.sh
bench_start 14,17 "$@"
if $quick; then runs=1; secs=${BENCH_SECONDS:-2}; else runs=3; secs=${BENCH_SECONDS:-5}; fi
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "bench-notify.sh: BENCH_SECONDS must be a positive whole number" >&2; exit 2; }

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/bench_latency.sh
source scripts/lib/bench_latency.sh

say "cargo build --release"
cargo build --release
bin=$(readlink -f "${CARGO_TARGET_DIR:-target}/release/dispatchbox")

say "starting a throwaway PostgreSQL on 127.0.0.1"
bindir=$(find_bindir)
pgbench=$(find_pgbench) || exit 1
bench_cluster bench-notify
psql_q() { "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d "$DSN" "$@"; }
"$bin" migrate --dsn "$DSN" --log-level warning

# ---------------------------------------------------------------------------------------
say "What the trigger costs producers: one-row INSERT transactions/s, ${secs} s per run, median of $runs"
cat >"$tmp/insert.sql" <<'SQL'
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '1', 'order.created', '{"n": 1}');
SQL
declare -A cost # cost[MODE_C] = median tps
modes="none trigger listened"
# One pgbench run in mode $1 with $2 clients; sets $tps.
insert_once() {
    local mode=$1 c=$2 log=$tmp/insert.log listener=
    case $mode in
    none) "$bin" migrate --dsn "$DSN" --notify off --log-level warning ;;
    *) "$bin" migrate --dsn "$DSN" --notify on --log-level warning ;;
    esac
    psql_q -c "TRUNCATE outbox_event RESTART IDENTITY" -c "CHECKPOINT" >/dev/null
    if [[ $mode == listened ]]; then
        # Routes a type nobody inserts: it wakes and claims (nothing) on every notification.
        "$bin" --dsn "$DSN" --route 'nothing.inserted=stdout' --log-level warning >/dev/null 2>"$tmp/listener.err" &
        listener=$!
        live_pid=$listener
        sleep 1.5
    fi
    "$pgbench" -n -M prepared -c "$c" -j "$((c < 2 ? c : 2))" -T "$secs" -h 127.0.0.1 -p "$port" -U postgres \
        -f "$tmp/insert.sql" bench >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    tps=$(awk '/^tps = / { print $3; exit }' "$log")
    if [[ -n $listener ]]; then
        kill -TERM "$listener"
        wait "$listener" 2>/dev/null || true
        live_pid=
    fi
}
for c in 1 8; do
    declare -A got=()
    for r in $(seq 1 "$runs"); do
        for mode in $modes; do # interleaved: every mode sees the same machine
            insert_once "$mode" "$c"
            got[$mode]+=" $tps"
            printf '  %-9s clients %d, run %d: %9.1f inserts/s\n' "$mode" "$c" "$r" "$tps"
        done
    done
    for mode in $modes; do
        # shellcheck disable=SC2086 # the list of runs
        cost[${mode}_$c]=$(median ${got[$mode]})
    done
    unset got
done

# ---------------------------------------------------------------------------------------
bench_latency

say "Summary"
echo
echo "Machine: nproc $(nproc); PostgreSQL: $(psql_q -c 'SHOW server_version')"
$quick && echo "(--quick: one run each: a smoke check, not figures to quote)"
echo
echo "| one-row INSERT transactions/s | 1 client | 8 clients |"
echo "| --- | ---: | ---: |"
declare -A label=(
    [none]="no trigger (\`migrate --notify off\`)"
    [trigger]="notify trigger, nobody listening"
    [listened]="notify trigger, an idle worker listening"
)
for mode in $modes; do
    printf '| %s | %s (%s) | %s (%s) |\n' "${label[$mode]}" \
        "$(fmt_int "${cost[${mode}_1]}")" "$(calc "${cost[${mode}_1]} / ${cost[none_1]}" | awk '{ printf "%.2fx", $1 }')" \
        "$(fmt_int "${cost[${mode}_8]}")" "$(calc "${cost[${mode}_8]} / ${cost[none_8]}" | awk '{ printf "%.2fx", $1 }')"
done
echo
echo "| measurement | processes | batch | figure | - | - |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
latency_summary_rows
exit 0
