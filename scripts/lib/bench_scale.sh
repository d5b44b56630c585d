# shellcheck shell=bash
# shellcheck disable=SC2154
# (SC2154: $bin, $tmp, $runs, $drain, $drain_cmp, $ceiling, $startup_median come from the script that sources this file.)
# bench.sh's scale section, sourced by it: what a big table, a big batch and the processes'
# memory cost.
#
# - bench_big_table: the drain rate of $scale_events pending events in a table that also holds
#   $BENCH_BIG_DONE `done` rows and a fifth as many `retry` rows scheduled a day later (what
#   a long-running outbox accumulates), beside the same drain on a table holding only the
#   $scale_events events; interleaved runs, 1 process, batch 100. Both tables are separate
#   (--table), so the big one is loaded once (generate_series) and only its $scale_events
#   pending rows are replaced between runs.
# - bench_batch1000: drains of $scale_events events at --batch-size 1000 (1 and 2 processes),
#   as the main drains (drain_config: drain_once, BENCH_COMPARE interleaved).
# - bench_rss: peak RSS (VmHWM in /proc/<pid>/status) of the supervisor and of each worker of
#   a daemon (--processes 2 --batch-size 1000) that has just delivered $events events: read
#   while the processes are still alive, so the peak is exact, not sampled.
#
# Uses bench.sh's drain_once, psql_q, calc, median, fmt_int, ratio, warn, $tmp, $bin,
# $compare, $DSN, $events, $runs, $live_pid, ceiling[two_1000]. scale_summary_rows prints the
# summary table's rows.

big_done=${BENCH_BIG_DONE:-1000000}
[[ $big_done =~ ^[0-9]+$ ]] || { echo "bench.sh: BENCH_BIG_DONE must be a whole number" >&2; exit 2; }
big_retry=$((big_done / 5))
# These drains take $events x 5 events: at batch 1000, $events would be a handful of claims and
# the figure mostly process start-up.
scale_events=$((events * 5))
declare -A scale # scale[big] / scale[small] = median events/s; scale[rss_*] = kB

# Replaces the pending rows of table $1 by $scale_events fresh ones; VACUUM ANALYZE, CHECKPOINT.
# The background rows (aggregate_type 'bg') stay.
scale_load_pending() {
    psql_q -v n="$scale_events" >/dev/null <<SQL
DELETE FROM $1 WHERE aggregate_type = 'order';
INSERT INTO $1 (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g)
FROM generate_series(1, :n::bigint) AS g;
VACUUM ANALYZE $1;
CHECKPOINT;
SQL
}

# One drain of table $1 (label $2), run $3; sets $rate.
scale_drain_once() {
    local table=$1 label=$2 r=$3 events=$scale_events rc=0 t0 t1 elapsed ok not_done bg
    scale_load_pending "$table"
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --table "$table" --drain --batch-size 100 --processes 1 --route '*=stdout' \
        --poll-interval 0.05 --log-level warning >"$tmp/scale.out" 2>"$tmp/scale.err" || rc=$?
    t1=$EPOCHREALTIME
    elapsed=$(calc "$t1 - $t0")
    rate=$(calc "$events / $elapsed")
    IFS='|' read -r ok not_done bg < <(psql_q -c "SELECT
        count(*) FILTER (WHERE aggregate_type = 'order' AND status = 'done' AND attempts = 1),
        count(*) FILTER (WHERE aggregate_type = 'order' AND status <> 'done'),
        count(*) FILTER (WHERE aggregate_type = 'bg' AND attempts <> 1) FROM $table")
    printf '  %-24s run %d: %6.2f s  %7s events/s  (done with attempts=1: %s, background rows claimed: %s, exit %s)\n' \
        "$label" "$r" "$elapsed" "$(fmt_int "$rate")" "$ok" "$bg" "$rc"
    if [[ $rc != 0 || $ok != "$events" || $not_done != 0 || $bg != 0 ]]; then
        warn "$label run $r: expected exit 0, all $events events done with attempts = 1 and no background row claimed (not done: $not_done, background claimed: $bg, exit $rc)"
    fi
    [[ -s $tmp/scale.err ]] && { warn "$label run $r: output on stderr:"; head -n 5 "$tmp/scale.err" | sed 's/^/    /'; }
    return 0
}

bench_big_table() {
    local t t0 r rates_big=() rates_small=() pair=()
    say "Big table: $scale_events events among $(fmt_int "$big_done") done + $(fmt_int "$big_retry") later retries, vs alone; 1 process, batch 100, median of $runs"
    for t in bench_big bench_small; do
        "$bin" migrate --dsn "$DSN" --table "$t" >"$tmp/scale.err" 2>&1 ||
            { cat "$tmp/scale.err" >&2; echo "bench.sh: migrate --table $t failed" >&2; exit 1; }
    done
    t0=$EPOCHREALTIME
    # Done rows delivered over the past week; retries due tomorrow (in the claim index, after
    # every due row).
    psql_q -v done="$big_done" -v retry="$big_retry" >/dev/null <<'SQL'
INSERT INTO bench_big (aggregate_type, aggregate_id, event_type, payload, status, attempts,
                       next_run_at, created_at, delivered_at)
SELECT 'bg', g::text, 'order.created', jsonb_build_object('n', g), 'done', 1,
       now() - interval '7 days' + g * interval '1 ms', now() - interval '7 days',
       now() - interval '7 days' + g * interval '1 ms'
FROM generate_series(1, :done::bigint) AS g;
INSERT INTO bench_big (aggregate_type, aggregate_id, event_type, payload, status, attempts,
                       next_run_at, last_error)
SELECT 'bg', g::text, 'order.created', jsonb_build_object('n', g), 'retry', 1,
       now() + interval '1 day' + g * interval '1 ms', 'HTTP 503'
FROM generate_series(1, :retry::bigint) AS g;
VACUUM (FREEZE, ANALYZE) bench_big;
CHECKPOINT;
SQL
    printf '  loaded %s background rows in %.1f s; table + indexes: %s\n' "$(fmt_int $((big_done + big_retry)))" \
        "$(calc "$EPOCHREALTIME - $t0")" "$(psql_q -c "SELECT pg_size_pretty(pg_total_relation_size('bench_big'))")"
    for r in $(seq 1 "$runs"); do
        scale_drain_once bench_small "alone" "$r"
        rates_small+=("$rate")
        scale_drain_once bench_big "in the big table" "$r"
        rates_big+=("$rate")
        pair+=("$(calc "$rate / ${rates_small[-1]}")")
    done
    scale[small]=$(median "${rates_small[@]}")
    scale[big]=$(median "${rates_big[@]}")
    # Each big-table run against the run just before it: less exposed to the machine's noise
    # than the ratio of the two medians.
    scale[pair]=$(median "${pair[@]}" | awk '{ printf "%.2f", $1 }')
    echo "  => alone: median $(fmt_int "${scale[small]}") events/s; in the big table: median $(fmt_int "${scale[big]}") events/s" \
        "(median of the paired ratios: ${scale[pair]} x)"
    psql_q -c "DROP TABLE bench_big; DROP TABLE bench_small" >/dev/null
}

bench_batch1000() {
    local pb events=$scale_events
    say "Dispatchbox drain at batch 1000: $events events, --route '*=stdout', --poll-interval 0.05, median of $runs"
    for pb in 1:1000 2:1000; do
        drain_config "${pb%%:*}" "${pb##*:}"
    done
}

# VmHWM of pid $1 in kB (empty when the process is gone).
vm_hwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

bench_rss() {
    local err=$tmp/rss.err c w hwm worst=0 n=0 sup
    say "Peak RSS: a daemon, --processes 2 --batch-size 1000, after delivering $events events"
    load_events "$events"
    : >"$err"
    "$bin" --dsn "$DSN" --processes 2 --batch-size 1000 --route '*=stdout' \
        --poll-interval 0.05 --log-level warning >"$tmp/rss.out" 2>"$err" &
    live_pid=$!
    for _ in $(seq 1 6000); do
        [[ $(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done'") == "$events" ]] && break
        kill -0 "$live_pid" 2>/dev/null || break
        sleep 0.05
    done
    sup=$(vm_hwm "$live_pid")
    w=
    # shellcheck disable=SC2013 # the children files hold pids separated by spaces
    for c in $(cat /proc/"$live_pid"/task/*/children 2>/dev/null); do
        hwm=$(vm_hwm "$c")
        [[ -n $hwm ]] || continue
        w+=" ${hwm}"
        ((hwm > worst)) && worst=$hwm
        n=$((n + 1))
    done
    kill -TERM "$live_pid"
    wait "$live_pid" || warn "the daemon exited with $? after SIGTERM"
    live_pid=
    [[ $(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done'") == "$events" ]] ||
        warn "peak RSS: not all $events events were done when measured"
    [[ -s $err ]] && { warn "peak RSS: output on stderr:"; head -n 5 "$err" | sed 's/^/    /'; }
    scale[rss_sup]=${sup:-0}
    scale[rss_worker]=$worst
    printf '  supervisor: %s kB; workers (%d):%s kB\n' "${sup:-?}" "$n" "$w"
}

scale_summary_rows() {
    local p b est
    for p in 1 2; do
        b=1000
        est=$(calc "$scale_events / ${drain[${p}_$b]} - $startup_median / 1000")
        if awk -v t="$est" 'BEGIN { exit !(t > 0) }'; then est="$(fmt_int "$(calc "$scale_events / $est")") events/s"; else est="-"; fi
        echo "| Dispatchbox --drain, $scale_events events (incl. start-up) | $p | $b | $(fmt_int "${drain[${p}_$b]}") events/s | $(ratio "${drain[${p}_$b]}" "${ceiling[two_$b]}") | $est |"
        if [[ -n $compare ]]; then
            echo "| the same, BENCH_COMPARE binary (interleaved runs) | $p | $b | $(fmt_int "${drain_cmp[${p}_$b]}") events/s | $(ratio "${drain_cmp[${p}_$b]}" "${ceiling[two_$b]}") | - |"
        fi
    done
    echo "| Dispatchbox --drain, $scale_events events, table alone (interleaved with the next row) | 1 | 100 | $(fmt_int "${scale[small]}") events/s | $(ratio "${scale[small]}" "${ceiling[two_100]}") | - |"
    echo "| the same among $(fmt_int "$big_done") done + $(fmt_int "$big_retry") later retry rows (paired ratio to alone: ${scale[pair]}) | 1 | 100 | $(fmt_int "${scale[big]}") events/s | $(ratio "${scale[big]}" "${ceiling[two_100]}") | - |"
    echo "| peak RSS (VmHWM) of the supervisor, daemon after $events events | 2 | 1000 | $(fmt_int "${scale[rss_sup]}") kB | - | - |"
    echo "| peak RSS (VmHWM) of a worker (the larger of 2), same daemon | 2 | 1000 | $(fmt_int "${scale[rss_worker]}") kB | - | - |"
}
