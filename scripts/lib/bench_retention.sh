# shellcheck shell=bash
# shellcheck disable=SC2154 # $events, $bin, $tmp, $runs, $ceiling come from bench.sh
# bench.sh's retention section, sourced by it: whether --retain-done slows delivery. The
# table holds $events pending events and $retain_rows done rows delivered two hours ago; a
# --processes 2 --batch-size 100 drain to '*=stdout' runs with --retain-done 1h (the
# supervisor's retention starts with a full sweep at once, so it deletes old rows during the
# whole drain: its busiest moment) and without it, interleaved, median of $runs. Rows the
# retention removed during the drain are reported (dispatchbox_retention_removed_total is not
# scraped: the old rows left at the end are counted instead). Every drain must print each id
# once and leave every event done with attempts = 1.
#
# Uses bench.sh's psql_q, calc, median, fmt_int, ratio, warn, $tmp, $bin, $DSN, $events, $runs.
# retention_summary_rows prints the summary table's rows.

retain_rows=${BENCH_RETAIN_ROWS:-200000}
declare -A retention_rate # [off|on] = median events/s
retention_removed=()

# Empties the table, loads $events pending events (ids 1..$events) and $retain_rows old done
# rows after them, then VACUUM ANALYZE and a CHECKPOINT.
retention_load() {
    psql_q -v n="$events" -v old="$retain_rows" >/dev/null <<'SQL'
TRUNCATE outbox_event RESTART IDENTITY;
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g)
FROM generate_series(1, :n::bigint) AS g;
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts,
                          created_at, delivered_at)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g), 'done', 1,
       now() - interval '3 hours', now() - interval '2 hours'
FROM generate_series(1, :old::bigint) AS g;
VACUUM ANALYZE outbox_event;
CHECKPOINT;
SQL
}

# One drain, retention $1 (on/off), run $2; sets rate and removed.
retention_once() {
    local mode=$1 r=$2 rc=0 t0 t1 flags=() ok old lines uniq_ids
    [[ $mode == on ]] && flags=(--retain-done 1h)
    retention_load
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --drain --processes 2 --batch-size 100 "${flags[@]}" --route '*=stdout' \
        --poll-interval 0.05 --log-level warning >"$tmp/retain.out" 2>"$tmp/retain.err" || rc=$?
    t1=$EPOCHREALTIME
    rate=$(calc "$events / ($t1 - $t0)")
    IFS='|' read -r ok old < <(psql_q -c "SELECT
        count(*) FILTER (WHERE id <= $events AND status = 'done' AND attempts = 1),
        count(*) FILTER (WHERE id > $events) FROM outbox_event")
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

bench_retention() {
    local r mode
    declare -A retain_rates=()
    for r in $(seq 1 "$runs"); do
        for mode in off on; do
            retention_once "$mode" "$r"
            retain_rates[$mode]+=" $rate"
            [[ $mode == on ]] && retention_removed+=("$removed")
        done
    done
    for mode in off on; do
        # shellcheck disable=SC2086 # the list of figures
        retention_rate[$mode]=$(median ${retain_rates[$mode]})
    done
    printf '  => without retention median %s events/s; with --retain-done 1h %s events/s (%s); old rows removed during the drains: %s\n' \
        "$(fmt_int "${retention_rate[off]}")" "$(fmt_int "${retention_rate[on]}")" \
        "$(calc "${retention_rate[on]} / ${retention_rate[off]}" | awk '{ printf "%.2fx", $1 }')" "${retention_removed[*]}"
}

retention_summary_rows() {
    printf '| Dispatchbox --drain, %s events beside %s old done rows, without retention | 2 | 100 | %s events/s | %s | - |\n' \
        "$events" "$retain_rows" "$(fmt_int "${retention_rate[off]}")" "$(ratio "${retention_rate[off]}" "${ceiling[two_100]}")"
    printf '| the same with --retain-done 1h (deleting them meanwhile) | 2 | 100 | %s events/s | %s | - |\n' \
        "$(fmt_int "${retention_rate[on]}")" "$(ratio "${retention_rate[on]}" "${ceiling[two_100]}")"
}
