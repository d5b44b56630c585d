# shellcheck shell=bash
# shellcheck disable=SC2154
# (SC2154: $tmp, $bin, $pgbench, $port, $runs, $secs come from the script that sources this file.)
# Wake-up figures, sourced by bench.sh and scripts/bench-notify.sh:
#  - commit-to-handler latency (p50/p99/max) at a steady rate of single-event transactions
#    (pgbench --rate; the event's payload carries clock_timestamp() taken in the inserting
#    transaction, the `stdout` route's lines are timestamped by a perl reader as they
#    arrive), with notification wake-ups and with polling only;
#  - the queries/s and CPU of an idle worker (no trigger: a worker that LISTENs sends no
#    more queries, its listening connection sends none after LISTEN) (statements counted in the server log through
#    log_statement=all set for the worker's sessions only, via the DSN's `options`);
#  - a --processes 2 --batch-size 100 drain of 100,000 events with the default
#    --poll-interval (1.0) beside the same with 0.05 (how promptly a drain ends).
#
# Uses the sourcing script's psql_q, load_events, calc, median, fmt_int, say, warn, $tmp,
# $bin, $DSN, $pgbench, $port, $runs, $secs, $live_pid and $bindir. Needs perl (the line
# reader); without it the latency rows are skipped with a warning. latency_summary_rows
# prints the summary table's rows.

latency_rate=${BENCH_LATENCY_RATE:-1000}
latency_rows=()

# The reader: one line per delivered event in, "count p50 p99 max" (ms) out at EOF.
write_latency_reader() {
    cat >"$tmp/latency.pl" <<'PL'
use strict; use warnings; use Time::HiRes qw(time);
my @ms;
while (my $line = <STDIN>) {
    my $now = time;
    push @ms, ($now - $1) * 1000 if $line =~ /"t":\s*([0-9.]+)/;
}
@ms = sort { $a <=> $b } @ms;
my $n = @ms;
if (!$n) { print "0 0 0 0\n"; exit 0; }
my $q = sub { $ms[int(($n - 1) * $_[0] + 0.5)] };
printf "%d %.2f %.2f %.2f\n", $n, $q->(0.5), $q->(0.99), $ms[-1];
PL
    cat >"$tmp/latency.sql" <<'SQL'
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '1', 'order.created', jsonb_build_object('t', extract(epoch FROM clock_timestamp())));
SQL
}


# One latency run: label $1, extra dispatchbox flags after it. Appends a summary row.
latency_once() {
    local label=$1 err=$tmp/lat.err res=$tmp/lat.res log=$tmp/lat_pgbench.log fifo=$tmp/lat.fifo
    local tps n p50 p99 max left reader sup
    shift
    psql_q -c "TRUNCATE outbox_event RESTART IDENTITY" >/dev/null
    : >"$err"
    rm -f "$fifo"
    mkfifo "$fifo"
    perl "$tmp/latency.pl" <"$fifo" >"$res" &
    reader=$!
    "$bin" --dsn "$DSN" --route '*=stdout' "$@" >"$fifo" 2>"$err" &
    sup=$!
    live_pid=$sup
    wait_ready "$sup" 1 "$err" || return 1
    sleep 1 # the LISTEN connection comes up just after "worker ready"
    if ! "$pgbench" -n -c 2 -j 2 -R "$latency_rate" -T "$secs" -h 127.0.0.1 -p "$port" -U postgres \
        -f "$tmp/latency.sql" bench >"$log" 2>&1; then
        cat "$log" >&2
        warn "pgbench failed"
    fi
    tps=$(awk '/^tps = / { print $3; exit }' "$log")
    for _ in $(seq 1 300); do
        left=$(psql_q -c "SELECT count(*) FROM outbox_event WHERE status <> 'done'")
        [[ $left == 0 ]] && break
        sleep 0.01
    done
    kill -TERM "$sup"
    wait "$sup" 2>/dev/null || true
    live_pid=
    wait "$reader" 2>/dev/null || true
    read -r n p50 p99 max <"$res"
    printf '  %-40s %7.1f tx/s, %6s events: p50 %7.2f ms, p99 %7.2f ms, max %7.2f ms (left undone: %s)\n' \
        "$label" "${tps:-0}" "$n" "$p50" "$p99" "$max" "$left"
    [[ $left == 0 ]] || warn "$label: $left event(s) not done 3 s after the producer stopped"
    if grep -qE ' (WARNING|ERROR|CRITICAL) ' "$err"; then
        warn "$label: warnings/errors on stderr:"
        grep -E ' (WARNING|ERROR|CRITICAL) ' "$err" | head -n 5 | sed 's/^/    /'
    fi
    latency_rows+=("| commit-to-handler latency, $label, $(fmt_int "${tps:-0}") single-event tx/s | 1 | 10 | p50 $p50 ms, p99 $p99 ms, max $max ms | - | - |")
}

# CPU ticks (utime + stime) of process $1.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# An idle worker (empty table, default --poll-interval 1.0, notifications on) for $1 s:
# statements it sends per second (server log) and CPU of the supervisor and the worker.
idle_once() {
    local window=$1 err=$tmp/idle.err sup worker before after lines c0 w0 c1 w1 hz qps
    psql_q -c "TRUNCATE outbox_event RESTART IDENTITY" >/dev/null
    : >"$err"
    "$bin" --dsn "$DSN options='-c log_statement=all'" --route '*=stdout' >/dev/null 2>"$err" &
    sup=$!
    live_pid=$sup
    wait_ready "$sup" 1 "$err" || return 1
    sleep 2 # past start-up (its queries, the LISTEN connection, the first polls)
    worker=$(pgrep -P "$sup" | head -n 1)
    before=$(wc -l <"$tmp/server.log")
    c0=$(cpu_ticks "$sup")
    w0=$(cpu_ticks "$worker")
    sleep "$window"
    c1=$(cpu_ticks "$sup")
    w1=$(cpu_ticks "$worker")
    after=$(wc -l <"$tmp/server.log")
    kill -TERM "$sup"
    wait "$sup" 2>/dev/null || true
    # shellcheck disable=SC2034 # bench.sh's EXIT trap reads $live_pid
    live_pid=
    lines=$(sed -n "$((before + 1)),${after}p" "$tmp/server.log" | grep -cE 'LOG:  (statement|execute)' || true)
    hz=$(getconf CLK_TCK)
    qps=$(calc "$lines / $window")
    printf '  idle worker, %d s: %d statements (%.2f/s); CPU: supervisor %.2f %%, worker %.2f %%\n' \
        "$window" "$lines" "$qps" "$(calc "($c1 - $c0) * 100 / $hz / $window")" "$(calc "($w1 - $w0) * 100 / $hz / $window")"
    latency_rows+=("| queries/s of an idle worker (--poll-interval 1.0), over $window s | 1 | - | $(printf '%.2f' "$qps")/s; CPU worker $(calc "($w1 - $w0) * 100 / $hz / $window" | awk '{ printf "%.2f", $1 }') %, supervisor $(calc "($c1 - $c0) * 100 / $hz / $window" | awk '{ printf "%.2f", $1 }') % | - | - |")
}

# --processes 2 --batch-size 100 drains of 100,000 events: default poll vs 0.05.
drain_tail_once() {
    local poll=$1 n=100000 rc=0 t0 t1 ok
    load_events "$n"
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --drain --processes 2 --batch-size 100 --route '*=stdout' \
        --poll-interval "$poll" --log-level warning >/dev/null 2>"$tmp/tail.err" || rc=$?
    t1=$EPOCHREALTIME
    rate=$(calc "$n / ($t1 - $t0)")
    ok=$(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1")
    printf '  --poll-interval %-4s: %6.2f s  %7s events/s  (done with attempts=1: %s, exit %s)\n' \
        "$poll" "$(calc "$t1 - $t0")" "$(fmt_int "$rate")" "$ok" "$rc"
    [[ $rc == 0 && $ok == "$n" ]] || warn "drain --poll-interval $poll: expected exit 0 and $n events done once"
}

bench_latency() {
    say "Wake-ups: commit-to-handler latency at $latency_rate single-event tx/s (pgbench -R, ${secs} s), idle worker, drain end"
    if command -v perl >/dev/null; then
        write_latency_reader
        # The trigger for this section only (it is not a default; the other rows run without).
        "$bin" migrate --dsn "$DSN" --notify on --log-level warning
        latency_once "notifications (LISTEN), --poll-interval 1.0" --poll-interval 1.0
        latency_once "polling only (--notify off), --poll-interval 1.0" --poll-interval 1.0 --notify off
        latency_once "polling only (--notify off), --poll-interval 0.05" --poll-interval 0.05 --notify off
        "$bin" migrate --dsn "$DSN" --notify off --log-level warning
    else
        warn "perl not found: commit-to-handler latency skipped"
    fi
    idle_once "${BENCH_IDLE_SECONDS:-20}"
    local default=() fast=()
    for _ in $(seq 1 "$runs"); do
        drain_tail_once 1.0
        default+=("$rate")
        drain_tail_once 0.05
        fast+=("$rate")
    done
    local d f
    d=$(median "${default[@]}")
    f=$(median "${fast[@]}")
    echo "  => 2 processes, batch 100, 100,000 events: default poll $(fmt_int "$d") events/s, 0.05: $(fmt_int "$f") events/s (ratio $(calc "$d / $f" | awk '{ printf "%.2f", $1 }'))"
    latency_rows+=("| Dispatchbox --drain, 100,000 events, default --poll-interval 1.0 (vs 0.05) | 2 | 100 | $(fmt_int "$d") events/s ($(fmt_int "$f") with 0.05: $(calc "$d / $f" | awk '{ printf "%.2f", $1 }')x) | - | - |")
}

latency_summary_rows() {
    local row
    for row in "${latency_rows[@]}"; do echo "$row"; done
}
