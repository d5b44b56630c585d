#!/usr/bin/env bash
# Benchmark: Dispatchbox's drain rate (stdout, pipe:, exec:, a local webhook receiver), SIGTERM
# latency and orphaned-worker exit beside the SQL ceiling that PostgreSQL itself allows on this
# machine, all measured in the same run. The method, the figures and the original tool's
# baseline are in docs/performance.md.
#
#   scripts/bench.sh [--quick]
#
#   --quick          one run of everything and 2 s pgbench runs (a smoke check, not figures)
#   BENCH_EVENTS     events per Dispatchbox drain run (default 20000)
#   BENCH_SECONDS    duration of each pgbench run (default 5; 2 with --quick)
#   BENCH_COMPARE    another dispatchbox binary (e.g. an older build): its drains run
#                    interleaved with this build's, and the summary shows both
#   BENCH_BIG_DONE   done rows in the big-table drain (default 1000000; a fifth as many
#                    later retries are added; see scripts/lib/bench_scale.sh)
#   BENCH_SECTIONS   only these optional sections, comma-separated, beside the ceiling, the
#                    main drains and the signal timings: pipe, webhook, batch1000, big,
#                    ordered, rss, latency, cpu, retention (default: all)
#   BENCH_RETAIN_ROWS old done rows beside the events in the retention section (default 200000)
#   BENCH_RETAIN_EVENTS events per drain in the retention section (default BENCH_EVENTS)
#
# Prints figures and never asserts timings: it exits 0 unless something could not run at
# all. Correctness checks (every event done with attempts = 1, each id delivered once, no
# stderr output, clean exit codes) print WARNING lines instead of failing.
#
# Needs cargo and the PostgreSQL server binaries incl. pgbench (Debian/Ubuntu: apt-get
# install -y postgresql). Touches no existing cluster: it runs initdb in a temp dir (as the
# postgres OS user when run as root) on a free port, listening on TCP 127.0.0.1 only with
# trust auth, stock durable settings (fsync on, synchronous_commit on), and removes it on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
export LC_ALL=C # decimal points in $EPOCHREALTIME and awk
# Only the DSN below configures the tools, whatever this shell has exported.
for var in $(compgen -e); do
    case $var in PG* | DISPATCHBOX_*) unset "$var" ;; esac
done

usage() {
    sed -n '7,20s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

quick=false
for arg in "$@"; do
    case $arg in
    --quick) quick=true ;;
    -h | --help) usage ;;
    *) echo "bench.sh: unknown argument: $arg" >&2; usage ;;
    esac
done

events=${BENCH_EVENTS:-20000}
if $quick; then runs=1; sig_runs=1; secs=${BENCH_SECONDS:-2}; else runs=3; sig_runs=5; secs=${BENCH_SECONDS:-5}; fi
[[ $events =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: BENCH_EVENTS must be a positive number" >&2; exit 2; }
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: BENCH_SECONDS must be a positive whole number" >&2; exit 2; }
ceiling_rows=200000
pg_clients=2

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh # (the working directory is the repository root)
# shellcheck source=scripts/lib/bench_webhook.sh
source scripts/lib/bench_webhook.sh
# shellcheck source=scripts/lib/bench_scale.sh
source scripts/lib/bench_scale.sh
# shellcheck source=scripts/lib/bench_latency.sh
source scripts/lib/bench_latency.sh
# shellcheck source=scripts/lib/bench_ordered.sh
source scripts/lib/bench_ordered.sh
# shellcheck source=scripts/lib/bench_cpu.sh
source scripts/lib/bench_cpu.sh
# shellcheck source=scripts/lib/bench_retention.sh
source scripts/lib/bench_retention.sh

# shellcheck source=scripts/lib/bench_util.sh
source scripts/lib/bench_util.sh



say "cargo build --release"
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/dispatchbox"
bin=$(readlink -f "$bin")
compare=${BENCH_COMPARE:-}
if [[ -n $compare ]]; then
    compare=$(readlink -f "$compare")
    [[ -x $compare ]] || { echo "bench.sh: BENCH_COMPARE is not an executable: $compare" >&2; exit 2; }
fi

say "starting a throwaway PostgreSQL on 127.0.0.1"
bindir=$(find_bindir)
pgbench=$(find_pgbench) || exit 1
bench_cluster bench
echo "server: $DSN"
psql_q() { "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d "$DSN" "$@"; }

say "dispatchbox migrate"
"$bin" migrate --dsn "$DSN"


nproc_n=$(nproc)
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
pg_version=$(psql_q -c "SELECT version()")
pg_settings=$(psql_q -F ' ' -c "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings
    WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'wal_sync_method')")
db_version=$("$bin" --version 2>&1 || true)

# ---------------------------------------------------------------------------------------
say "SQL ceiling: pgbench, $pg_clients clients, -M prepared, ${secs} s per run, median of $runs"
# one: claim and complete in one UPDATE. two: the claim (lease: next_run_at pushed forward,
# attempts + 1, RETURNING the rows) commits, then the completion commits, as a correct
# worker must do. pgbench runs each statement in its own transaction (autocommit). The ids
# travel from the claim to the completion through \gset as a bigint[] text ('{1,2,3}'),
# which -M prepared sends as a parameter ($1::bigint[]); pgbench has no psql-style :'var'.
# (coalesce: an empty claim gives '{}', not NULL, which pgbench would pass as '' and fail.)
write_scripts() {
    local b=$1
    cat >"$tmp/one_$b.sql" <<EOF
WITH c AS (SELECT id FROM outbox_event WHERE status IN ('pending','retry') AND next_run_at <= now() ORDER BY next_run_at LIMIT $b FOR UPDATE SKIP LOCKED) UPDATE outbox_event e SET status = 'done', attempts = attempts + 1 FROM c WHERE e.id = c.id RETURNING e.id, e.payload;
EOF
    cat >"$tmp/two_$b.sql" <<EOF
WITH c AS (SELECT id FROM outbox_event WHERE status IN ('pending','retry') AND next_run_at <= now() ORDER BY next_run_at LIMIT $b FOR UPDATE SKIP LOCKED), u AS (UPDATE outbox_event e SET next_run_at = now() + interval '30 seconds', attempts = attempts + 1 FROM c WHERE e.id = c.id RETURNING e.id, e.payload) SELECT coalesce(array_agg(id), '{}') AS ids FROM u \gset
UPDATE outbox_event SET status = 'done' WHERE id = ANY(:ids::bigint[]);
EOF
}

declare -A ceiling # ceiling[one_10] = median rows/s
for b in 10 100 1000; do
    write_scripts "$b"
    for kind in one two; do
        rates=()
        rows=$((b >= 1000 ? ceiling_rows * 4 : ceiling_rows)) # grows (and stays grown for the next runs) when a run ran dry
        for r in $(seq 1 "$runs"); do
            while :; do
                load_events "$rows"
                log=$tmp/pgbench_${kind}_${b}_$r.log
                if ! "$pgbench" -n -M prepared -c "$pg_clients" -j "$pg_clients" -T "$secs" \
                    -h 127.0.0.1 -p "$port" -U postgres -f "$tmp/${kind}_$b.sql" bench >"$log" 2>&1; then
                    cat "$log" >&2
                    echo "bench.sh: pgbench failed" >&2
                    exit 1
                fi
                tps=$(awk '/^tps = / { print $3; exit }' "$log")
                xacts=$(awk -F': *' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$log")
                failed=$(awk -F'[: ]+' '/^number of failed transactions/ { print $5; exit }' "$log")
                IFS='|' read -r done_n claimed_open left max_att < <(psql_q -c "SELECT
                    count(*) FILTER (WHERE status = 'done'),
                    count(*) FILTER (WHERE status <> 'done' AND attempts > 0),
                    count(*) FILTER (WHERE status IN ('pending', 'retry') AND attempts = 0),
                    coalesce(max(attempts), 0) FROM outbox_event")
                # Ran (nearly) dry: the figure would be too low. Reload more rows and redo.
                if ((left < rows / 10)) && ((rows < 20000000)); then
                    echo "  $kind batch $b: only $left of $rows rows left unclaimed; redoing with $((rows * 4)) rows"
                    rows=$((rows * 4))
                    continue
                fi
                break
            done
            rate=$(calc "$tps * $b")
            rates+=("$rate")
            printf '  %-3s statement(s), batch %3d, run %d: %8.1f tps x %3d = %7s rows/s  (rows loaded %s, done %s, %s transactions x %d = %s, claimed-not-done %s, max attempts %s, failed %s)\n' \
                "$kind" "$b" "$r" "$tps" "$b" "$(fmt_int "$rate")" "$rows" "$done_n" "$xacts" "$b" \
                "$((xacts * b))" "$claimed_open" "$max_att" "${failed:-?}"
            if [[ $done_n != $((xacts * b)) || $max_att != 1 || ${failed:-0} != 0 ]]; then
                warn "$kind batch $b run $r: expected done = transactions x batch, max attempts 1 and 0 failed"
            fi
        done
        ceiling[${kind}_$b]=$(median "${rates[@]}")
        echo "  => $kind statement(s), batch $b: median $(fmt_int "${ceiling[${kind}_$b]}") rows/s"
    done
done

# ---------------------------------------------------------------------------------------
say "Dispatchbox drain: $events order.created events, --route '*=stdout', --poll-interval 0.05, median of $runs"
echo "(each time includes the supervisor and worker process start-up, connecting and the final"
echo " empty poll; the delivered JSON lines go to a file so duplicates can be counted)"
declare -A drain     # drain[P_B] = median events/s
declare -A drain_cmp # the same for $BENCH_COMPARE
# One drain of $events fresh events with binary $1 (label $2), processes $3, batch $4, run $5;
# sets $rate.
drain_once() {
    local bin=$1 label=$2 p=$3 b=$4 r=$5 out err rc t0 t1 elapsed ok not_done multi lines uniq_ids err_lines
    load_events "$events"
    out=$tmp/drain.out
    err=$tmp/drain.err
    rc=0
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --drain --batch-size "$b" --processes "$p" --route '*=stdout' \
        --poll-interval 0.05 --log-level warning >"$out" 2>"$err" || rc=$?
    t1=$EPOCHREALTIME
    elapsed=$(calc "$t1 - $t0")
    rate=$(calc "$events / $elapsed")
    IFS='|' read -r ok not_done multi < <(psql_q -c "SELECT
        count(*) FILTER (WHERE status = 'done' AND attempts = 1),
        count(*) FILTER (WHERE status <> 'done'),
        count(*) FILTER (WHERE attempts <> 1) FROM outbox_event")
    lines=$(wc -l <"$out")
    uniq_ids=$(sed -n 's/^{"id":\([0-9]*\),.*/\1/p' "$out" | sort -u | wc -l)
    err_lines=$(wc -l <"$err")
    printf '  %sprocesses %d, batch %3d, run %d: %6.2f s  %7s events/s  (done with attempts=1: %s, lines out: %s, unique ids: %s, exit %s)\n' \
        "$label" "$p" "$b" "$r" "$elapsed" "$(fmt_int "$rate")" "$ok" "$lines" "$uniq_ids" "$rc"
    if [[ $rc != 0 || $ok != "$events" || $not_done != 0 || $multi != 0 || $lines != "$events" || $uniq_ids != "$events" ]]; then
        warn "${label}processes $p batch $b run $r: expected exit 0 and all $events events done with attempts = 1, each delivered once" \
            "(not done: $not_done, attempts <> 1: $multi, lines: $lines, unique: $uniq_ids, exit: $rc)"
    fi
    if ((err_lines > 0)); then
        warn "${label}processes $p batch $b run $r: $err_lines line(s) on stderr at --log-level warning; first ones:"
        head -n 5 "$err" | sed 's/^/    /'
    fi
}
# Medians of $runs drains at processes $1 and batch $2 (with BENCH_COMPARE's interleaved), into
# drain[P_B] and drain_cmp[P_B].
drain_config() {
    local p=$1 b=$2 r rates=() cmp_rates=()
    for r in $(seq 1 "$runs"); do
        drain_once "$bin" "" "$p" "$b" "$r"
        rates+=("$rate")
        # Interleaved with the run above, so that both see the same machine.
        if [[ -n $compare ]]; then
            drain_once "$compare" "[compare] " "$p" "$b" "$r"
            cmp_rates+=("$rate")
        fi
    done
    drain[${p}_$b]=$(median "${rates[@]}")
    echo "  => processes $p, batch $b: median $(fmt_int "${drain[${p}_$b]}") events/s"
    if [[ -n $compare ]]; then
        drain_cmp[${p}_$b]=$(median "${cmp_rates[@]}")
        echo "  => [compare] processes $p, batch $b: median $(fmt_int "${drain_cmp[${p}_$b]}") events/s"
    fi
}
for pb in 1:10 1:100 2:100 2:10; do
    drain_config "${pb%%:*}" "${pb##*:}"
done

# The fixed cost inside each drain time above: the same command on an empty table.
startup=()
psql_q -c "TRUNCATE outbox_event RESTART IDENTITY" >/dev/null
for r in $(seq 1 "$runs"); do
    rc=0
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --drain --batch-size 100 --processes 1 --route '*=stdout' \
        --poll-interval 0.05 --log-level warning >/dev/null 2>"$tmp/empty.err" || rc=$?
    t1=$EPOCHREALTIME
    startup+=("$(calc "($t1 - $t0) * 1000")")
    [[ $rc == 0 ]] || warn "empty drain run $r exited with $rc"
done
startup_median=$(median "${startup[@]}")
printf '  start-up: --drain on an empty table (1 process) takes %.1f ms (median of %d): that much of each time above is fixed cost\n' \
    "$startup_median" "$runs"

# ---------------------------------------------------------------------------------------
# pipe: deliveries/s, beside exec: (a process per event), with --processes 1, --batch-size 100.
# Each pipe: publisher answers `ok ID` at once; --pipe-window 1 (one event at a time, the old
# protocol) beside the default window. Self-contained: sets pipe_rows (summary table lines).
pipe_rows=()
bench_pipe() {
    local ack=$tmp/pipe-ack.sh window rates r rc t0 t1 elapsed ok n label route what spec flags
    # The publisher: acks each event at once (bash builtins only, no fork per event).
    cat >"$ack" <<'SH'
#!/usr/bin/env bash
while IFS= read -r line; do
    [[ $line =~ ^\{\"id\":([0-9]+), ]] || exit 1
    echo "ok ${BASH_REMATCH[1]}"
done
SH
    chmod +x "$ack"
    local specs=("pipe:1" "pipe:256")
    # The same in perl (buffered reads, where bash reads a pipe a byte at a time) and in
    # Python (the trivial acking loop a user would write first, flushing every answer).
    local perl_ack=$tmp/pipe-ack.pl py_ack=$tmp/pipe-ack.py
    if command -v perl >/dev/null; then
        # shellcheck disable=SC2016 # perl code, not shell
        printf '%s\n' '#!/usr/bin/env perl' '$| = 1;' \
            'while (<STDIN>) { /^\{"id":(\d+),/ or exit 1; print "ok $1\n"; }' >"$perl_ack"
        chmod +x "$perl_ack"
        specs+=("perl:1" "perl:256")
    fi
    if command -v python3 >/dev/null; then
        printf '%s\n' 'import sys' 'for line in sys.stdin:' \
            '    print("ok", line[6:line.index(",")], flush=True)' >"$py_ack"
        specs+=("python:1" "python:256")
    fi
    specs+=("exec:0")
    # exec: costs a fork and exec per event: a tenth of the events is enough.
    local exec_events=$(((events + 9) / 10))
    say "pipe: and exec: deliveries, --processes 1, --batch-size 100, --threads 10, median of $runs"
    echo "(pipe: one process per worker answering \`ok ID\` at once: a bash read loop, the same in"
    echo " perl, a Python loop flushing each answer; --pipe-window 1 (one event at a time) beside"
    echo " --pipe-window 256 (the default); exec: \`true\` run once per event, on $exec_events events)"
    for spec in "${specs[@]}"; do
        label=${spec%%:*}
        window=${spec##*:}
        flags=(--pipe-window "$window")
        case $label in
        pipe) n=$events; route="*=pipe:$ack" ;;
        perl) n=$events; route="*=pipe:$perl_ack" ;;
        python) n=$events; route="*=pipe:python3 $py_ack" ;;
        *) n=$exec_events; route='*=exec:true'; flags=() ;;
        esac
        rates=()
        for r in $(seq 1 "$runs"); do
            load_events "$n"
            rc=0
            t0=$EPOCHREALTIME
            "$bin" --dsn "$DSN" --drain --batch-size 100 --processes 1 --threads 10 "${flags[@]}" \
                --route "$route" --poll-interval 0.05 --log-level warning >/dev/null 2>"$tmp/pipe.err" || rc=$?
            t1=$EPOCHREALTIME
            elapsed=$(calc "$t1 - $t0")
            rate=$(calc "$n / $elapsed")
            rates+=("$rate")
            ok=$(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1")
            printf '  %-6s window %3s, run %d: %6.2f s  %7s events/s  (done with attempts=1: %s of %s, exit %s)\n' \
                "$label" "${window/#0/-}" "$r" "$elapsed" "$(fmt_int "$rate")" "$ok" "$n" "$rc"
            if [[ $rc != 0 || $ok != "$n" ]]; then
                warn "$label window $window run $r: expected exit 0 and all $n events done with attempts = 1"
            fi
            if [[ -s $tmp/pipe.err ]]; then
                warn "$label window $window run $r: output on stderr at --log-level warning; first lines:"
                head -n 5 "$tmp/pipe.err" | sed 's/^/    /'
            fi
        done
        rate=$(median "${rates[@]}")
        echo "  => $label, window ${window/#0/-}: median $(fmt_int "$rate") events/s"
        case $label in
        pipe) what="\`pipe:\` (bash loop acking at once), --pipe-window $window" ;;
        perl) what="\`pipe:\` (perl loop acking at once), --pipe-window $window" ;;
        python) what="\`pipe:\` (Python loop acking at once), --pipe-window $window" ;;
        *) what="\`exec:true\` (a process per event)" ;;
        esac
        pipe_rows+=("| Dispatchbox --drain to $what, $n events, --threads 10 | 1 | 100 | $(fmt_int "$rate") events/s | $(calc "$rate / ${ceiling[two_100]}" | awk '{ printf "%.2f", $1 }') | - |")
    done
}
# Whether an optional section runs (BENCH_SECTIONS).
want() { [[ -z ${BENCH_SECTIONS:-} || ,$BENCH_SECTIONS, == *,$1,* ]]; }
if want pipe; then bench_pipe; fi
if want webhook; then bench_webhook; fi
if want batch1000; then bench_batch1000; fi
if want big; then bench_big_table; fi
if want ordered; then
    say "Ordered delivery: --ordered beside the same drain without it, $events events, median of $runs"
    bench_ordered
fi
if want rss; then bench_rss; fi
if want latency; then bench_latency; fi
if want cpu; then
    say "CPU per event: relay (supervisor + workers) and PostgreSQL, --on-done keep beside delete, $events events, median of $runs"
    bench_cpu
fi
if want retention; then
    say "Retention: --retain-done 1h deleting $retain_rows old done rows during a drain of $retain_events events, beside the same drain without it, median of $runs; then at idle"
    bench_retention
fi

# ---------------------------------------------------------------------------------------
say "SIGTERM to exit, nothing in flight: --poll-interval 1.0, empty table, $sig_runs run(s)"
echo "(SIGTERM goes to the supervisor a spread 0.1-0.9 s after its worker logged \"worker ready\","
echo " so it lands at different points of the 1 s idle poll; measured until the supervisor exits)"
psql_q -c "TRUNCATE outbox_event RESTART IDENTITY" >/dev/null
lat=()
for r in $(seq 1 "$sig_runs"); do
    err=$tmp/sig.err
    : >"$err"
    "$bin" --dsn "$DSN" --poll-interval 1.0 --route '*=stdout' >"$tmp/sig.out" 2>"$err" &
    live_pid=$!
    ready=false
    for _ in $(seq 1 3000); do
        if grep -q "worker ready" "$err"; then ready=true; break; fi
        kill -0 "$live_pid" 2>/dev/null || break
        sleep 0.01
    done
    if ! $ready; then
        warn "run $r: no \"worker ready\" within 30 s; stderr:"
        sed 's/^/    /' "$err"
        exit 1
    fi
    children=$(cat /proc/"$live_pid"/task/*/children 2>/dev/null | tr -s ' \n' ' ' || true)
    sleep "$(calc "0.1 + 0.8 * ($r - 1) / ($sig_runs > 1 ? $sig_runs - 1 : 1)")"
    rc=0
    t0=$EPOCHREALTIME
    kill -TERM "$live_pid"
    wait "$live_pid" || rc=$?
    t1=$EPOCHREALTIME
    live_pid=
    ms=$(calc "($t1 - $t0) * 1000")
    lat+=("$ms")
    left=
    for c in $children; do kill -0 "$c" 2>/dev/null && left+=" $c"; done
    printf '  run %d: %7.1f ms  (exit %s, worker pid(s): %s)\n' "$r" "$ms" "$rc" "${children% }"
    [[ $rc == 0 ]] || warn "run $r: supervisor exited with $rc after SIGTERM, expected 0"
    if [[ -n $left ]]; then
        warn "run $r: worker process(es)$left still running after the supervisor exited; stopping them"
        for c in $left; do kill -TERM "$c" 2>/dev/null || true; done
    fi
    if grep -qE ' (WARNING|ERROR|CRITICAL) ' "$err"; then
        warn "run $r: warnings/errors on stderr:"
        grep -E ' (WARNING|ERROR|CRITICAL) ' "$err" | head -n 5 | sed 's/^/    /'
    fi
done
sig_median=$(median "${lat[@]}")
sig_max=$(maximum "${lat[@]}")

# ---------------------------------------------------------------------------------------
say "SIGKILL of the supervisor: until both idle workers (--processes 2) have exited, $sig_runs run(s)"
orphan=()
for r in $(seq 1 "$sig_runs"); do
    err=$tmp/orphan.err
    : >"$err"
    "$bin" --dsn "$DSN" --processes 2 --poll-interval 1.0 --route '*=stdout' >/dev/null 2>"$err" &
    live_pid=$!
    for _ in $(seq 1 3000); do
        [[ $(grep -c "worker ready" "$err") == 2 ]] && break
        kill -0 "$live_pid" 2>/dev/null || break
        sleep 0.01
    done
    children=$(cat /proc/"$live_pid"/task/*/children 2>/dev/null | tr -s ' \n' ' ' || true)
    [[ -n ${children// /} ]] || { warn "run $r: no worker processes found"; exit 1; }
    sleep "$(calc "0.1 + 0.8 * ($r - 1) / ($sig_runs > 1 ? $sig_runs - 1 : 1)")"
    t0=$EPOCHREALTIME
    kill -KILL "$live_pid"
    wait "$live_pid" 2>/dev/null || true
    live_pid=
    for _ in $(seq 1 5000); do
        left=
        for c in $children; do
            [[ -r /proc/$c/stat ]] && ! grep -q ') Z' "/proc/$c/stat" 2>/dev/null && left+=" $c"
        done
        [[ -z $left ]] && break
        sleep 0.001
    done
    t1=$EPOCHREALTIME
    ms=$(calc "($t1 - $t0) * 1000")
    orphan+=("$ms")
    printf '  run %d: %7.1f ms  (worker pid(s): %s)\n' "$r" "$ms" "${children% }"
    if [[ -n $left ]]; then
        warn "run $r: worker(s)$left still running 5 s after the supervisor's SIGKILL; stopping them"
        for c in $left; do kill -TERM "$c" 2>/dev/null || true; done
    fi
    grep -q "the supervisor is gone" "$err" || warn "run $r: the workers' shutdown lines did not reach the supervisor's stderr"
done
orphan_median=$(median "${orphan[@]}")
orphan_max=$(maximum "${orphan[@]}")

# ---------------------------------------------------------------------------------------
say "Summary"
echo
echo "Machine: nproc $nproc_n${cpu:+, $cpu}"
echo "PostgreSQL: $pg_version"
echo "Settings: $pg_settings; TCP 127.0.0.1, trust auth"
echo "Dispatchbox: $db_version"
$quick && echo "(--quick: one run each, ${secs} s pgbench runs: a smoke check, not figures to quote)"
echo
ratio() { calc "$1 / $2" | awk '{ printf "%.2f", $1 }'; }
echo "| measurement | processes / clients | batch | median | vs two-statement ceiling | excl. start-up (estimate) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for b in 10 100 1000; do
    echo "| SQL ceiling, one statement (claim + done) | $pg_clients clients | $b | $(fmt_int "${ceiling[one_$b]}") rows/s | $(ratio "${ceiling[one_$b]}" "${ceiling[two_$b]}") | - |"
    echo "| SQL ceiling, two statements (claim, then done) | $pg_clients clients | $b | $(fmt_int "${ceiling[two_$b]}") rows/s | 1.00 | - |"
done
for pb in 1:10 2:10 1:100 2:100; do
    p=${pb%%:*}
    b=${pb##*:}
    # events / (median time - the empty-table drain time); no estimate when that is <= 0
    est=$(calc "$events / ${drain[${p}_$b]} - $startup_median / 1000") # seconds
    if awk -v t="$est" 'BEGIN { exit !(t > 0) }'; then est="$(fmt_int "$(calc "$events / $est")") events/s"; else est="-"; fi
    echo "| Dispatchbox --drain, $events events (incl. start-up) | $p | $b | $(fmt_int "${drain[${p}_$b]}") events/s | $(ratio "${drain[${p}_$b]}" "${ceiling[two_$b]}") | $est |"
    if [[ -n $compare ]]; then
        echo "| the same, BENCH_COMPARE binary (interleaved runs) | $p | $b | $(fmt_int "${drain_cmp[${p}_$b]}") events/s | $(ratio "${drain_cmp[${p}_$b]}" "${ceiling[two_$b]}") | - |"
    fi
done
for row in "${pipe_rows[@]}"; do echo "$row"; done
if want webhook; then webhook_summary_rows; fi
if want batch1000 && want big && want rss; then scale_summary_rows; fi
if want latency; then latency_summary_rows; fi
if want ordered; then ordered_summary_rows; fi
if want cpu; then cpu_summary_rows; fi
if want retention; then retention_summary_rows; fi
printf '| Dispatchbox --drain on an empty table (start-up + one empty poll) | 1 | 100 | %.1f ms | - | - |\n' "$startup_median"
printf '| SIGTERM to exit, idle (--poll-interval 1.0), %d run(s) | 1 | - | %.1f ms (max %.1f ms) | - | - |\n' \
    "$sig_runs" "$sig_median" "$sig_max"
printf '| SIGKILL of the supervisor until its idle workers exited, %d run(s) | 2 | - | %.1f ms (max %.1f ms) | - | - |\n' \
    "$sig_runs" "$orphan_median" "$orphan_max"
exit 0
