# shellcheck shell=bash
# shellcheck disable=SC2154
# (SC2154: $events, $bin, $tmp, $runs come from the script that sources this file.)
# bench.sh's ordered section, sourced by it: the drain rate with --ordered beside the same
# drain without it, on the same table (built by `migrate --ordered`, so both pay the same
# index upkeep), interleaved runs, 2 processes, batch 100, $events events each:
# - one event per aggregate (aggregate_id = n): the ordered claim's guard finds nothing;
# - ten events per aggregate, interleaved (aggregate_id = n % ($events / 10)): each
#   aggregate's events go one at a time, the others' in parallel.
# Every drain must leave all events done with attempts = 1 and print each id once.
#
# Uses bench.sh's psql_q, calc, median, fmt_int, ratio, warn, $tmp, $bin, $DSN, $events,
# $runs. ordered_summary_rows prints the summary table's rows.

declare -A ordered # ordered[<per>_<mode>] = median events/s

# Refills table ordered_bench with $events pending events, $1 per aggregate.
ordered_load() {
    local aggs=$((events / $1))
    psql_q -v n="$events" -v a="$aggs" >/dev/null <<'SQL'
TRUNCATE ordered_bench RESTART IDENTITY;
INSERT INTO ordered_bench (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', (g % :a::bigint)::text, 'order.created', jsonb_build_object('n', g)
FROM generate_series(1, :n::bigint) AS g;
VACUUM ANALYZE ordered_bench;
CHECKPOINT;
SQL
}

# One drain: $1 events per aggregate, $2 = ordered|unordered, run $3; sets $rate.
ordered_once() {
    local per=$1 mode=$2 r=$3 flag=() t0 t1 rc=0 ok lines uniq_ids
    [[ $mode == ordered ]] && flag=(--ordered)
    ordered_load "$per"
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --table ordered_bench --drain --processes 2 --batch-size 100 \
        "${flag[@]}" --route '*=stdout' --poll-interval 0.05 --log-level warning \
        >"$tmp/ordered.out" 2>"$tmp/ordered.err" || rc=$?
    t1=$EPOCHREALTIME
    rate=$(calc "$events / ($t1 - $t0)")
    ok=$(psql_q -c "SELECT count(*) FROM ordered_bench WHERE status = 'done' AND attempts = 1")
    lines=$(wc -l <"$tmp/ordered.out")
    uniq_ids=$(sed -n 's/^{"id":\([0-9]*\),.*/\1/p' "$tmp/ordered.out" | sort -u | wc -l)
    printf '  %-9s %2d per aggregate, run %d: %7s events/s  (done with attempts=1: %s, unique ids: %s, exit %s)\n' \
        "$mode" "$per" "$r" "$(fmt_int "$rate")" "$ok" "$uniq_ids" "$rc"
    if [[ $rc != 0 || $ok != "$events" || $lines != "$events" || $uniq_ids != "$events" ]]; then
        warn "$mode $per per aggregate run $r: expected exit 0 and all $events events done once"
    fi
}

bench_ordered() {
    "$bin" migrate --ordered --table ordered_bench --dsn "$DSN" --log-level warning
    local per mode r
    for per in 1 10; do
        declare -A mode_rates=([ordered]="" [unordered]="")
        for r in $(seq 1 "$runs"); do
            for mode in unordered ordered; do
                ordered_once "$per" "$mode" "$r"
                mode_rates[$mode]+=" $rate"
            done
        done
        for mode in unordered ordered; do
            # shellcheck disable=SC2086 # the list of rates
            ordered[${per}_$mode]=$(median ${mode_rates[$mode]})
        done
        echo "  => $per per aggregate: unordered $(fmt_int "${ordered[${per}_unordered]}"), ordered $(fmt_int "${ordered[${per}_ordered]}") events/s"
    done
}

ordered_summary_rows() {
    local per
    for per in 1 10; do
        echo "| Dispatchbox --drain, $events events, $per per aggregate, without / with --ordered (same table, ordered index) | 2 | 100 | $(fmt_int "${ordered[${per}_unordered]}") / $(fmt_int "${ordered[${per}_ordered]}") events/s | ordered/unordered $(ratio "${ordered[${per}_ordered]}" "${ordered[${per}_unordered]}") | - |"
    done
}
