# shellcheck shell=bash
# shellcheck disable=SC2154 # $events, $bin, $compare, $tmp, $runs, $ceiling come from bench.sh
# bench.sh's retention section, sourced by it: whether --retain-done slows delivery. The
# table holds $retain_rows done rows delivered two hours ago and after them $retain_events
# pending events; a --processes 2 --batch-size 100 drain to '*=stdout' runs with
# --retain-done 1h (the supervisor's retention starts at once, so it has old rows to delete
# during the whole drain: its busiest moment) and without it, and with BENCH_COMPARE's
# binary (--retain-done 1h) when set, interleaved, median of $runs. Rows the retention
# removed during the drain are reported (dispatchbox_retention_removed_total is not scraped:
# the old rows left at the end are counted instead). Every drain must print each id once and
# leave every event done with attempts = 1. Then, once per build, a daemon with nothing to
# deliver and --retain-done 1h runs until the $retain_rows old rows are gone: how long
# retention takes to clear such a backlog at idle.
#
# Uses bench.sh's psql_q, calc, median, fmt_int, ratio, warn, $tmp, $bin, $compare, $DSN,
# $events, $runs. retention_summary_rows prints the summary table's rows.

retain_rows=${BENCH_RETAIN_ROWS:-200000}
retain_events=${BENCH_RETAIN_EVENTS:-$events}
declare -A retention_rate    # [off|on|cmp] = median events/s
declare -A retention_removed # [on|cmp] = old rows removed during each drain
declare -A retention_clear   # [on|cmp] = seconds until the old rows were gone, at idle

# Empties the table, loads $retain_rows old done rows (ids 1..$retain_rows: created before the
# new events, as in a table that has been in use) and $1 pending events after them, then
# VACUUM ANALYZE and a CHECKPOINT.
retention_load() {
    psql_q -v n="$1" -v old="$retain_rows" >/dev/null <<'SQL'
TRUNCATE outbox_event RESTART IDENTITY;
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts,
                          created_at, delivered_at)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g), 'done', 1,
       now() - interval '3 hours', now() - interval '2 hours'
FROM generate_series(1, :old::bigint) AS g;
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g)
FROM generate_series(1, :n::bigint) AS g;
VACUUM ANALYZE outbox_event;
CHECKPOINT;
SQL
}

# One drain, retention $1 (off, on, or cmp: BENCH_COMPARE's binary with it on), run $2; sets
# rate and removed.
retention_once() {
    local mode=$1 r=$2 rc=0 t0 t1 flags=() ok old lines uniq_ids exe=$bin events=$retain_events
    [[ $mode != off ]] && flags=(--retain-done 1h)
    [[ $mode == cmp ]] && exe=$compare
    retention_load "$events"
    t0=$EPOCHREALTIME
    "$exe" --dsn "$DSN" --drain --processes 2 --batch-size 100 "${flags[@]}" --route '*=stdout' \
        --poll-interval 0.05 --log-level warning >"$tmp/retain.out" 2>"$tmp/retain.err" || rc=$?
    t1=$EPOCHREALTIME
    rate=$(calc "$events / ($t1 - $t0)")
    IFS='|' read -r ok old < <(psql_q -c "SELECT
        count(*) FILTER (WHERE id > $retain_rows AND status = 'done' AND attempts = 1),
        count(*) FILTER (WHERE id <= $retain_rows) FROM outbox_event")
    removed=$((retain_rows - old))
    lines=$(wc -l <"$tmp/retain.out")
    uniq_ids=$(sed -n 's/^{"id":\([0-9]*\),.*/\1/p' "$tmp/retain.out" | sort -u | wc -l)
    printf '  retention %-3s run %d: %7s events/s  (old done rows removed during the drain: %s of %s; done with attempts=1: %s, unique ids: %s, exit %s)\n' \
        "$mode" "$r" "$(fmt_int "$rate")" "$removed" "$retain_rows" "$ok" "$uniq_ids" "$rc"
    if [[ $rc != 0 || $ok != "$events" || $lines != "$events" || $uniq_ids != "$events" ]]; then
        warn "retention $mode run $r: expected exit 0 and each of $events events delivered once, done with attempts = 1"
    fi
    if [[ -s $tmp/retain.err ]]; then
        warn "retention $mode run $r: output on stderr at --log-level warning; first lines:"
        head -n 5 "$tmp/retain.err" | sed 's/^/    /'
    fi
}

# A daemon (--processes 2, nothing to deliver) with --retain-done 1h, build $1 (on: this one,
# cmp: BENCH_COMPARE's), beside $retain_rows old done rows: the seconds until they are gone
# (polled every 0.2 s, at most 600 s), into retention_clear[$1].
retention_idle() {
    local mode=$1 exe=$bin pid t0 left=$retain_rows rc=0
    [[ $mode == cmp ]] && exe=$compare
    retention_load 0
    t0=$EPOCHREALTIME
    "$exe" --dsn "$DSN" --processes 2 --retain-done 1h --route '*=stdout' --log-level warning \
        >"$tmp/retain-idle.out" 2>"$tmp/retain-idle.err" &
    pid=$!
    while ((left > 0)) && awk -v t="$(calc "$EPOCHREALTIME - $t0")" 'BEGIN { exit !(t < 600) }'; do
        sleep 0.2
        left=$(psql_q -c "SELECT count(*) FROM outbox_event")
    done
    retention_clear[$mode]=$(calc "$EPOCHREALTIME - $t0")
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    printf '  retention %-3s at idle: %s old done rows gone after %.1f s (%s left; exit %s)\n' \
        "$mode" "$retain_rows" "${retention_clear[$mode]}" "$left" "$rc"
    if [[ $rc != 0 || $left != 0 ]]; then
        warn "retention $mode at idle: expected every old row gone within 600 s and exit 0"
    fi
    if [[ -s $tmp/retain-idle.err ]]; then
        warn "retention $mode at idle: output on stderr at --log-level warning; first lines:"
        head -n 5 "$tmp/retain-idle.err" | sed 's/^/    /'
    fi
}

bench_retention() {
    local r mode modes=(off on)
    declare -A retain_rates=()
    [[ -n $compare ]] && modes+=(cmp)
    for r in $(seq 1 "$runs"); do
        for mode in "${modes[@]}"; do
            retention_once "$mode" "$r"
            retain_rates[$mode]+=" $rate"
            [[ $mode != off ]] && retention_removed[$mode]+=" $removed"
        done
    done
    for mode in "${modes[@]}"; do
        # shellcheck disable=SC2086 # the list of figures
        retention_rate[$mode]=$(median ${retain_rates[$mode]})
    done
    for mode in "${modes[@]:1}"; do
        printf '  => %s: without retention median %s events/s; with --retain-done 1h %s events/s (%s); old rows removed during the drains:%s\n' \
            "$([[ $mode == on ]] && echo "this build" || echo "[compare]")" \
            "$(fmt_int "${retention_rate[off]}")" "$(fmt_int "${retention_rate[$mode]}")" \
            "$(calc "${retention_rate[$mode]} / ${retention_rate[off]}" | awk '{ printf "%.2fx", $1 }')" "${retention_removed[$mode]}"
    done
    for mode in "${modes[@]:1}"; do
        retention_idle "$mode"
    done
}

retention_summary_rows() {
    printf '| Dispatchbox --drain, %s events beside %s old done rows, without retention | 2 | 100 | %s events/s | %s | - |\n' \
        "$retain_events" "$retain_rows" "$(fmt_int "${retention_rate[off]}")" "$(ratio "${retention_rate[off]}" "${ceiling[two_100]}")"
    printf '| the same with --retain-done 1h (deleting them meanwhile) | 2 | 100 | %s events/s | %s | - |\n' \
        "$(fmt_int "${retention_rate[on]}")" "$(ratio "${retention_rate[on]}" "${ceiling[two_100]}")"
    if [[ -n ${retention_rate[cmp]:-} ]]; then
        printf '| the same, BENCH_COMPARE binary (interleaved runs) | 2 | 100 | %s events/s | %s | - |\n' \
            "$(fmt_int "${retention_rate[cmp]}")" "$(ratio "${retention_rate[cmp]}" "${ceiling[two_100]}")"
    fi
    printf '| --retain-done 1h at idle, until the %s old done rows were gone | 2 | - | %.1f s | - | - |\n' \
        "$retain_rows" "${retention_clear[on]}"
    if [[ -n ${retention_clear[cmp]:-} ]]; then
        printf '| the same, BENCH_COMPARE binary | 2 | - | %.1f s | - | - |\n' "${retention_clear[cmp]}"
    fi
}
