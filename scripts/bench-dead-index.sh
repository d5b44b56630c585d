#!/usr/bin/env bash
# What the index of dead rows (`<table>_dead_idx`: (id) WHERE status = 'dead', built by
# `migrate`) costs, on a throwaway cluster, with and without it, runs interleaved:
#  1. the claim path: `--drain` of BENCH_EVENTS fresh events (1 process, batch 100,
#     --route '*=stdout'), 1 % of them dying on their claim (attempts already used up: the
#     row enters the dead index), in a table already holding 20,000 dead rows; events/s and
#     WAL bytes per event;
#     and PostgreSQL's CPU per 1,000 events (less noisy than the rate on a shared machine);
#  2. producers: one-row INSERT transactions/s (pgbench, -M prepared) with 1 and 8 clients,
#     durable and with synchronous_commit off (CPU-bound), with PostgreSQL's CPU per insert;
#  3. 200,000-row statements (INSERT ... SELECT; UPDATE to done; UPDATE to dead), server-side
#     time per row: the index's predicate test, and an entry per dead row, without the noise
#     of round trips and commits (2 × runs + 1 rounds).
# The figures are in docs/performance.md ("The index of dead rows: what it costs").
#
#   scripts/bench-dead-index.sh [--quick]
#
#   --quick          one run each, 2 s pgbench runs (a smoke check, not figures)
#   BENCH_EVENTS     events per drain (default 50000)
#   BENCH_SECONDS    duration of each pgbench run (default 5; 2 with --quick)
#   BENCH_SECTIONS   which parts to run (default "drain insert bulk")
#   BENCH_BIN        a dispatchbox binary to use instead of building one (the index is made and
#                    dropped with SQL, so any build with the same claim path measures the same)
#
# Prints figures and never asserts timings. Same cluster set-up as bench.sh (stock durable
# settings, TCP 127.0.0.1, trust auth; removed on exit).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench_util.sh
source scripts/lib/bench_util.sh
bench_start 15,23 "$@"
if $quick; then runs=1; secs=${BENCH_SECONDS:-2}; else runs=5; secs=${BENCH_SECONDS:-5}; fi
events=${BENCH_EVENTS:-50000}
sections=${BENCH_SECTIONS:-drain insert bulk}
bulk_runs=$((runs * 2 + 1))
has_section() { [[ " $sections " == *" $1 "* ]]; }
for v in "$secs" "$events"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench-dead-index.sh: BENCH_SECONDS and BENCH_EVENTS must be positive whole numbers" >&2; exit 2; }
done

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

if [[ -n ${BENCH_BIN:-} ]]; then
    bin=$(readlink -f "$BENCH_BIN")
else
    say "cargo build --release"
    cargo build --release
    bin=$(readlink -f "${CARGO_TARGET_DIR:-target}/release/dispatchbox")
fi

say "starting a throwaway PostgreSQL on 127.0.0.1"
bindir=$(find_bindir)
pgbench=$(find_pgbench) || exit 1
bench_cluster bench-dead-index
psql_q() { "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d "$DSN" "$@"; }
"$bin" migrate --dsn "$DSN" --log-level warning

# Mode $1: `with` or `without` the index of dead rows.
set_mode() {
    case $1 in
    with) psql_q -c "SET client_min_messages = warning" -c "CREATE INDEX IF NOT EXISTS outbox_event_dead_idx ON outbox_event (id) WHERE status = 'dead'" ;;
    without) psql_q -c "SET client_min_messages = warning" -c "DROP INDEX IF EXISTS outbox_event_dead_idx" ;;
    esac
}

# 20,000 dead rows, then $events pending ones, 1 % with their attempts used up.
load_dead_and_pending() {
    psql_q -v n="$events" >/dev/null <<'SQL'
TRUNCATE outbox_event RESTART IDENTITY;
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts, last_error)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g), 'dead', 5, 'boom'
FROM generate_series(1, 20000) AS g;
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, attempts)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g), CASE WHEN g % 100 = 0 THEN 5 ELSE 0 END
FROM generate_series(1, :n::bigint) AS g;
VACUUM ANALYZE outbox_event;
CHECKPOINT;
SQL
}

# PostgreSQL's CPU so far in ms: the postmaster, its live children and the children it has
# reaped (each drain's and pgbench's backends exit when they disconnect).
# Waits (at most 5 s) until every client backend has exited and been reaped, so that its CPU
# is counted where it belongs.
tick_ms=$(calc "1000 / $(getconf CLK_TCK)")
pg_cpu_ms() {
    local pm ticks c busy
    pm=$(head -n 1 "$data/postmaster.pid")
    for _ in $(seq 1 250); do
        busy=false
        # shellcheck disable=SC2013 # the children files hold pids separated by spaces
        for c in $(cat /proc/"$pm"/task/*/children 2>/dev/null); do
            if { tr '\0' ' ' <"/proc/$c/cmdline"; } 2>/dev/null | grep -q '^postgres: postgres bench'; then busy=true; fi
        done
        $busy || break
        sleep 0.02
    done
    ticks=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat")
    # shellcheck disable=SC2013 # the children files hold pids separated by spaces
    for c in $(cat /proc/"$pm"/task/*/children 2>/dev/null); do
        ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    calc "$ticks * $tick_ms"
}

# Modes in an order that alternates with run $1: neither mode always goes first.
modes_for_run() { if (($1 % 2)); then echo "without with"; else echo "with without"; fi; }

# ---------------------------------------------------------------------------------------
if has_section drain; then
say "Drain: $events events (1 % dying on their claim), 1 process, batch 100, median of $runs"
declare -A rates wals cpus
drain_once() {
    local mode=$1 r=$2 t0 t1 lsn0 cpu0 cpu1 rc=0 elapsed rate wal cpu dead
    set_mode "$mode"
    load_dead_and_pending
    lsn0=$(psql_q -c "SELECT pg_current_wal_lsn()")
    cpu0=$(pg_cpu_ms)
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --drain --batch-size 100 --route '*=stdout' --poll-interval 0.05 \
        --log-level error >/dev/null 2>"$tmp/drain.err" || rc=$?
    t1=$EPOCHREALTIME
    cpu1=$(pg_cpu_ms)
    wal=$(psql_q -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / $events")
    dead=$(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'dead'")
    elapsed=$(calc "$t1 - $t0")
    rate=$(calc "$events / $elapsed")
    cpu=$(calc "($cpu1 - $cpu0) * 1000 / $events")
    rates[$mode]+=" $rate"
    wals[$mode]+=" $wal"
    cpus[$mode]+=" $cpu"
    printf '  %-7s run %d: %6.2f s  %7s events/s  PostgreSQL CPU %5.1f ms/1000 events  WAL %4.0f B/event  (dead after: %s, exit %s)\n' \
        "$mode" "$r" "$elapsed" "$(fmt_int "$rate")" "$cpu" "$wal" "$dead" "$rc"
    [[ $rc == 0 && $dead == $((20000 + events / 100)) ]] || warn "unexpected end: exit $rc, $dead dead"
}
for r in $(seq 1 "$runs"); do
    for mode in $(modes_for_run "$r"); do drain_once "$mode" "$r"; done
done
for mode in without with; do
    # shellcheck disable=SC2086 # the list of runs
    printf '  => %-7s median %7s events/s, PostgreSQL CPU %5.1f ms/1000 events, WAL %4.0f B/event\n' "$mode" \
        "$(fmt_int "$(median ${rates[$mode]})")" "$(median ${cpus[$mode]})" "$(median ${wals[$mode]})"
done
echo "  size of the index of dead rows holding $((20000 + events / 100)) rows:" \
    "$(psql_q -c "SELECT pg_size_pretty(pg_relation_size('outbox_event_dead_idx'))" 2>/dev/null || echo "-")"
fi

# ---------------------------------------------------------------------------------------
if has_section insert; then
say "Producers: one-row INSERT transactions/s, ${secs} s per run, median of $runs"
echo "(durable: synchronous_commit on, bound by the disk's flushes; async: off, bound by CPU)"
cat >"$tmp/insert.sql" <<'SQL'
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '1', 'order.created', '{"n": 1}');
SQL
for commit in durable async; do
    case $commit in durable) opts="-c synchronous_commit=on" ;; async) opts="-c synchronous_commit=off" ;; esac
    for c in 1 8; do
        declare -A tps=() icpu=()
        for r in $(seq 1 "$runs"); do
            for mode in $(modes_for_run "$r"); do
                set_mode "$mode"
                psql_q -c "TRUNCATE outbox_event RESTART IDENTITY" -c "CHECKPOINT" >/dev/null
                cpu0=$(pg_cpu_ms)
                PGOPTIONS=$opts "$pgbench" -n -M prepared -c "$c" -j "$((c < 2 ? c : 2))" -T "$secs" -h 127.0.0.1 \
                    -p "$port" -U postgres -f "$tmp/insert.sql" bench >"$tmp/insert.log" 2>&1 || { cat "$tmp/insert.log" >&2; exit 1; }
                cpu1=$(pg_cpu_ms)
                t=$(awk '/^tps = / { print $3; exit }' "$tmp/insert.log")
                n=$(awk '/^number of transactions actually processed:/ { print $NF; exit }' "$tmp/insert.log")
                cpu=$(calc "($cpu1 - $cpu0) * 1000 / $n")
                tps[$mode]+=" $t"
                icpu[$mode]+=" $cpu"
                printf '  %-7s %-7s clients %d, run %d: %9.1f inserts/s  PostgreSQL CPU %5.1f ms/1000 inserts\n' \
                    "$mode" "$commit" "$c" "$r" "$t" "$cpu"
            done
        done
        for mode in without with; do
            # shellcheck disable=SC2086 # the list of runs
            printf '  => %-7s %-7s clients %d: median %7s inserts/s, PostgreSQL CPU %5.1f ms/1000 inserts\n' \
                "$mode" "$commit" "$c" "$(fmt_int "$(median ${tps[$mode]})")" "$(median ${icpu[$mode]})"
        done
    done
done

fi

# ---------------------------------------------------------------------------------------
has_section bulk || exit 0
say "Bulk: 200,000 rows per statement, server-side execution time (EXPLAIN ANALYZE), $bulk_runs rounds"
echo "(insert: new rows, none dead; done: UPDATE to 'done', a completion's new row version;"
echo " dead: UPDATE to 'dead', every row entering the index; min is the least disturbed run)"
declare -A bulk
explain_ms() {
    psql_q -c "EXPLAIN (ANALYZE, FORMAT JSON) $1" | sed -n 's/.*"Execution Time": \([0-9.]*\).*/\1/p'
}
for r in $(seq 1 "$bulk_runs"); do
    for mode in $(modes_for_run "$r"); do
        set_mode "$mode"
        psql_q -c "TRUNCATE outbox_event RESTART IDENTITY" -c "CHECKPOINT" >/dev/null
        ins=$(explain_ms "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
            SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g)
            FROM generate_series(1, 200000) AS g")
        psql_q -c "VACUUM outbox_event" >/dev/null
        done_ms=$(explain_ms "UPDATE outbox_event SET status = 'done', delivered_at = now()")
        psql_q -c "VACUUM outbox_event" >/dev/null
        dead_ms=$(explain_ms "UPDATE outbox_event SET status = 'dead', last_error = 'boom'")
        bulk[${mode}_insert]+=" $ins"
        bulk[${mode}_done]+=" $done_ms"
        bulk[${mode}_dead]+=" $dead_ms"
        printf '  %-7s round %2d: insert %7.1f ms, done %7.1f ms, dead %7.1f ms\n' "$mode" "$r" "$ins" "$done_ms" "$dead_ms"
    done
done
for mode in without with; do
    for stmt in insert 'done' dead; do
        # shellcheck disable=SC2086 # the list of runs
        printf '  => %-7s %-6s median %7.1f ms (%4.0f ns/row), min %7.1f ms (%4.0f ns/row)\n' "$mode" "$stmt" \
            "$(median ${bulk[${mode}_$stmt]})" "$(calc "$(median ${bulk[${mode}_$stmt]}) * 5")" \
            "$(printf '%s\n' ${bulk[${mode}_$stmt]} | sort -g | head -n 1)" \
            "$(calc "$(printf '%s\n' ${bulk[${mode}_$stmt]} | sort -g | head -n 1) * 5")"
    done
done
