# shellcheck shell=bash
# shellcheck disable=SC2154
# (SC2154: $tmp, $data, $events, $bin, $runs, $ceiling come from the script that sources this file.)
# bench.sh's cpu section, sourced by it: where a drain's CPU goes, per event, with the default
# completion (--on-done keep) and with --on-done delete, and with BENCH_COMPARE's binary
# (--on-done keep, shown as `compare`) when it is set: interleaved runs, $events events each,
# --route '*=stdout' into a file, batch 10 and 100 at 1 and 2 processes:
# - relay: the supervisor and its workers (bash's `times` for this shell's reaped children,
#   taken around the drain: the supervisor waits for its workers, so their CPU is in its own);
# - PostgreSQL: the postmaster's own CPU, its reaped children's (cutime + cstime in
#   /proc/PID/stat: the drain's backends exit with it) and its live children's (on-CPU time in
#   /proc/PID/schedstat: background writer, WAL writer, checkpointer, autovacuum), as deltas
#   around the drain. Autovacuum work that starts after a drain is not in its figure.
# Every drain must print each id once and leave every event done with attempts = 1 (keep) or
# no row at all (delete).
# Each repetition also runs the two-statement SQL ceiling (mode `ceiling`: pgbench, 2 clients,
# the same $events rows, bench.sh's two_<batch>.sql), so every drain has a ceiling measured
# under the same load beside it, and the summary gives the median of the per-repetition
# ratios; its "relay" column is pgbench's own CPU.
#
# Uses bench.sh's psql_q, calc, median, fmt_int, ratio, warn, load_events, $tmp, $bin, $DSN,
# $data, $events, $runs. cpu_summary_rows prints the summary table's rows.

declare -A cpu_rate cpu_relay cpu_pg # [<processes>_<batch>_<keep|delete>] = median
cpu_configs=(1:10 1:100 2:100 2:10)
clk_tck=$(getconf CLK_TCK)

# Sets relay_s: this shell's reaped children's CPU (user + system) so far, in seconds. Call it
# as a command, not in $(...): `times` must run in this shell (a command substitution is a
# fresh child with no children of its own yet).
relay_cpu() {
    times >"$tmp/times"
    relay_s=$(sed -n 2p "$tmp/times" | awk '{ s = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); s += p[1] * 60 + p[2] }
        printf "%.6f\n", s }')
}

# The postmaster's children (there is no /proc/PID/task/*/children on every kernel).
pg_children() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$1" '{ pid = $1; sub(/^.*\) /, ""); if ($2 == pm) print pid }'
}

# Waits (at most 5 s) until no client backend is left: one exiting while the CPU is read could
# be counted both live and reaped, or neither.
pg_settle() {
    local pm=$1 k c busy
    for _ in $(seq 1 500); do
        busy=false
        for k in $(pg_children "$pm"); do
            c=$(tr '\0' ' ' 2>/dev/null <"/proc/$k/cmdline" || true)
            if [[ $c == *'127.0.0.1('* || $c == *'[local]'* ]]; then busy=true; break; fi
        done
        $busy || return 0
        sleep 0.01
    done
}

# PostgreSQL's CPU so far, in seconds (see the header).
pg_cpu() {
    local pm ns=0 k a f
    pm=$(head -n 1 "$data/postmaster.pid")
    pg_settle "$pm"
    for k in "$pm" $(pg_children "$pm"); do
        read -r a _ 2>/dev/null <"/proc/$k/schedstat" && ns=$((ns + a))
    done
    # Fields 16 and 17 (cutime, cstime) are 14 and 15 after "pid (comm) ".
    read -r -a f < <(sed 's/^.*) //' "/proc/$pm/stat")
    calc "$ns / 1e9 + (${f[13]} + ${f[14]}) / $clk_tck"
}

# The modes each configuration runs in: the SQL ceiling, keep, delete, and compare
# (BENCH_COMPARE, keep); set by bench_cpu.
cpu_modes=(ceiling keep delete)
declare -A cpu_vs # [<processes>_<batch>_<mode>] = median of the per-repetition ratios to `ceiling`

# The two-statement ceiling over $events rows: processes $1 (ignored: always 2 clients, as in
# the ceiling section), batch $2, run $3; sets rate (pgbench's tps x batch), relay_us (pgbench's
# CPU), pg_us.
cpu_ceiling_once() {
    local b=$2 r=$3 c0 c1 g0 g1 done_n tps per=$((events / $2 / 2))
    load_events "$events"
    g0=$(pg_cpu)
    relay_cpu
    c0=$relay_s
    "$pgbench" -n -M prepared -c 2 -j 2 -t "$per" -h 127.0.0.1 -p "$port" -U postgres \
        -f "$tmp/two_$b.sql" bench >"$tmp/cpu_ceiling.log" 2>&1 || { cat "$tmp/cpu_ceiling.log" >&2; warn "pgbench failed"; }
    relay_cpu
    c1=$relay_s
    g1=$(pg_cpu)
    tps=$(awk '/^tps = / { print $3; exit }' "$tmp/cpu_ceiling.log")
    rate=$(calc "${tps:-0} * $b")
    relay_us=$(calc "($c1 - $c0) * 1e6 / ($per * 2 * $b)")
    pg_us=$(calc "($g1 - $g0) * 1e6 / ($per * 2 * $b)")
    done_n=$(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1")
    printf '  processes -, batch %3d, %-7s run %d: %7s rows/s    pgbench %5.2f µs/row    PostgreSQL %5.2f µs/row  (done with attempts=1: %s of %s claimed)\n' \
        "$b" ceiling "$r" "$(fmt_int "$rate")" "$relay_us" "$pg_us" "$done_n" "$((per * 2 * b))"
    if [[ $done_n != $((per * 2 * b)) ]]; then
        warn "ceiling batch $b run $r: expected $((per * 2 * b)) rows done with attempts = 1"
    fi
}

# One drain: processes $1, batch $2, mode $3 (see cpu_modes), run $4; sets rate, relay_us,
# pg_us.
cpu_once() {
    local p=$1 b=$2 mode=$3 r=$4 rc=0 t0 t1 c0 c1 g0 g1 left ok lines uniq_ids exe=$bin on_done=$3
    if [[ $mode == ceiling ]]; then cpu_ceiling_once "$p" "$b" "$r"; return; fi
    if [[ $mode == compare ]]; then exe=$compare on_done=keep; fi
    load_events "$events"
    g0=$(pg_cpu)
    relay_cpu
    c0=$relay_s
    t0=$EPOCHREALTIME
    "$exe" --dsn "$DSN" --drain --batch-size "$b" --processes "$p" --on-done "$on_done" \
        --route '*=stdout' --poll-interval 0.05 --log-level warning >"$tmp/cpu.out" 2>"$tmp/cpu.err" || rc=$?
    t1=$EPOCHREALTIME
    relay_cpu
    c1=$relay_s
    g1=$(pg_cpu)
    rate=$(calc "$events / ($t1 - $t0)")
    relay_us=$(calc "($c1 - $c0) * 1e6 / $events")
    pg_us=$(calc "($g1 - $g0) * 1e6 / $events")
    IFS='|' read -r left ok < <(psql_q -c "SELECT count(*),
        count(*) FILTER (WHERE status = 'done' AND attempts = 1) FROM outbox_event")
    lines=$(wc -l <"$tmp/cpu.out")
    uniq_ids=$(sed -n 's/^{"id":\([0-9]*\),.*/\1/p' "$tmp/cpu.out" | sort -u | wc -l)
    printf '  processes %d, batch %3d, %-7s run %d: %7s events/s  relay %5.2f µs/event  PostgreSQL %5.2f µs/event  (rows left: %s, done with attempts=1: %s, unique ids: %s, exit %s)\n' \
        "$p" "$b" "$mode" "$r" "$(fmt_int "$rate")" "$relay_us" "$pg_us" "$left" "$ok" "$uniq_ids" "$rc"
    local want_left=$events
    [[ $on_done == delete ]] && want_left=0
    if [[ $rc != 0 || $left != "$want_left" || $ok != "$want_left" || $lines != "$events" || $uniq_ids != "$events" ]]; then
        warn "processes $p batch $b --on-done $mode run $r: expected exit 0, each of $events events delivered once and $want_left rows left, all done with attempts = 1"
    fi
    if [[ -s $tmp/cpu.err ]]; then
        warn "processes $p batch $b --on-done $mode run $r: output on stderr at --log-level warning; first lines:"
        head -n 5 "$tmp/cpu.err" | sed 's/^/    /'
    fi
}

bench_cpu() {
    local pb p b r mode key
    [[ -n $compare ]] && cpu_modes+=(compare)
    for pb in "${cpu_configs[@]}"; do
        p=${pb%%:*}
        b=${pb##*:}
        declare -A mode_rates=() relays=() pgs=() vs=()
        local top
        for r in $(seq 1 "$runs"); do
            for mode in "${cpu_modes[@]}"; do
                cpu_once "$p" "$b" "$mode" "$r"
                mode_rates[$mode]+=" $rate"
                relays[$mode]+=" $relay_us"
                pgs[$mode]+=" $pg_us"
                [[ $mode == ceiling ]] && top=$rate
                vs[$mode]+=" $(calc "$rate / $top")"
            done
        done
        for mode in "${cpu_modes[@]}"; do
            key=${p}_${b}_$mode
            # shellcheck disable=SC2086 # the lists of figures
            cpu_rate[$key]=$(median ${mode_rates[$mode]})
            # shellcheck disable=SC2086
            cpu_relay[$key]=$(median ${relays[$mode]})
            # shellcheck disable=SC2086
            cpu_pg[$key]=$(median ${pgs[$mode]})
            # shellcheck disable=SC2086
            cpu_vs[$key]=$(median ${vs[$mode]})
            printf '  => processes %d, batch %3d, %-7s median %7s events/s, relay %.2f µs/event, PostgreSQL %.2f µs/event, %.2f x the ceiling of its repetition (median)\n' \
                "$p" "$b" "$mode" "$(fmt_int "${cpu_rate[$key]}")" "${cpu_relay[$key]}" "${cpu_pg[$key]}" "${cpu_vs[$key]}"
        done
    done
}

cpu_summary_rows() {
    local pb p b mode key what who
    for pb in "${cpu_configs[@]}"; do
        p=${pb%%:*}
        b=${pb##*:}
        for mode in "${cpu_modes[@]}"; do
            key=${p}_${b}_$mode
            what="Dispatchbox --drain, $events events, $mode: rate; CPU per event, relay / PostgreSQL" who=$p
            [[ $mode == ceiling ]] && who="2 clients" && what="SQL ceiling, two statements, $events rows, interleaved with the drains below: rate; CPU per row, pgbench / PostgreSQL"
            # The last column: the median of the ratios to the ceiling run of the same repetition.
            printf '| %s | %s | %d | %s/s; %.2f / %.2f µs | %s | %.2f x interleaved ceiling |\n' \
                "$what" "$who" "$b" "$(fmt_int "${cpu_rate[$key]}")" "${cpu_relay[$key]}" "${cpu_pg[$key]}" \
                "$(ratio "${cpu_rate[$key]}" "${ceiling[two_$b]}")" "${cpu_vs[$key]}"
        done
    done
}
