#!/usr/bin/env bash
# Benchmark: Dispatchbox's `pipe:` through the example bridges (examples/bridges/) to real
# brokers, beside each bridge's own ceiling and the `stdout` drain, all in the same run.
#
#   scripts/bench-broker.sh
#
#   BENCH_EVENTS       events per run (default 20000)
#   BENCH_RUNS         runs per figure; the median is shown (default 3)
#   BENCH_WINDOW       the bridges' --window, also in --from-file mode, and the bridges' pipe:
#                      drains' --pipe-window: the same window everywhere (default 1000)
#   BENCH_PIPE_FLAGS   extra dispatchbox flags for the pipe: drains, e.g. "--pipe-window 4096"
#                      (replaces BENCH_WINDOW's there)
#   BENCH_COMPARE      another dispatchbox binary (e.g. an older build): each pipe: drain is
#                      followed by the same drain with it (interleaved runs), and the summary
#                      shows both
#   BENCH_BROKERS      which brokers (default "nats rabbitmq")
#
# Each run: 20,000 order.created events, --batch-size 100, 1 worker (--processes 1, default
# --threads), --drain, including start-up. Rows measured:
#   stdout             --route '*=stdout' into a file (its lines are the bridges' input file)
#   python ack loop    pipe: a trivial Python loop answering `ok ID` at once, flushing each
#   <broker> ceiling   the bridge publishing the same lines from that file (--from-file), same
#                      client and window, without Dispatchbox
#   <broker> pipe:     Dispatchbox --drain through the bridge
# Per broker, the runs are interleaved: ceiling, pipe:, ceiling, pipe:, ... (each pair right
# after loading the events), so the same load from elsewhere on the machine affects both; the
# summary gives the ratio of the medians and the median of the per-pair ratios. After each
# pair an independent consumer (examples/bridges/count.py) counts at the broker: delivered,
# duplicates, lost. Every run publishes to a stream/queue of its own.
# Every run's CPU is split (scripts/lib/bench_split.sh) into the bridge, the broker,
# PostgreSQL and the relay, in µs per event: does the bridge work more per event inside
# Dispatchbox than from a file?
# Prints figures and never asserts timings; correctness problems print WARNING lines.
#
# Needs what scripts/test-deps.sh installs (nats-server, rabbitmq-server, the bridges' venv)
# and PostgreSQL's server binaries. Runs a throwaway PostgreSQL, NATS server and RabbitMQ node
# in a temp dir on free ports of 127.0.0.1 and removes them on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
export LC_ALL=C
for var in $(compgen -e); do
    case $var in PG* | DISPATCHBOX_*) unset "$var" ;; esac
done

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/bench_util.sh
source scripts/lib/bench_util.sh
# shellcheck source=scripts/lib/brokers.sh
source scripts/lib/brokers.sh
# shellcheck source=scripts/lib/bench_cpu.sh
source scripts/lib/bench_cpu.sh # pg_cpu
# shellcheck source=scripts/lib/bench_split.sh
source scripts/lib/bench_split.sh

events=${BENCH_EVENTS:-20000}
runs=${BENCH_RUNS:-3}
window=${BENCH_WINDOW:-1000}
read -r -a pipe_flags <<<"${BENCH_PIPE_FLAGS:-}"
# Through a bridge, the window of events outstanding is the smaller of --pipe-window and the
# bridge's --window: the same as the ceiling's only with --pipe-window as large.
bridge_flags=(--pipe-window "$window")
if [[ " ${pipe_flags[*]} " == *" --pipe-window "* ]]; then bridge_flags=(); fi
bridge_flags+=("${pipe_flags[@]}")
read -r -a brokers <<<"${BENCH_BROKERS:-nats rabbitmq}"
for b in "${brokers[@]}"; do
    [[ $b == nats || $b == rabbitmq ]] || { echo "bench-broker.sh: BENCH_BROKERS: unknown broker $b (nats, rabbitmq)" >&2; exit 2; }
done
for n in "$events" "$runs" "$window"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "bench-broker.sh: BENCH_EVENTS, BENCH_RUNS and BENCH_WINDOW must be positive numbers" >&2; exit 2; }
done
brokers_require
py=$PWD/target/bridges-venv/bin/python # not resolved: the symlink is what makes it the venv
bridges=$(readlink -f examples/bridges)

say "cargo build --release"
cargo build --release
bin=$(readlink -f "${CARGO_TARGET_DIR:-target}/release/dispatchbox")
compare=${BENCH_COMPARE:-}
if [[ -n $compare ]]; then
    [[ -x $compare ]] || { echo "bench-broker.sh: BENCH_COMPARE is not an executable: $compare" >&2; exit 2; }
    compare=$(readlink -f "$compare")
fi

say "starting a throwaway PostgreSQL, NATS server (JetStream) and RabbitMQ node on 127.0.0.1"
bindir=$(find_bindir)
bench_cluster bench-broker
trap 'brokers_stop; bench_cleanup' EXIT
nats_start "$tmp/nats"
rabbit_start "$tmp/rabbitmq"
echo "PostgreSQL: $DSN; NATS: $nats_url ($(nats-server --version)); RabbitMQ: $rabbit_url" \
    "($(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?'))"
psql_q() { "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d "$DSN" "$@"; }
"$bin" migrate --dsn "$DSN" >/dev/null

cat >"$tmp/ack.py" <<'EOF'
import sys
for line in sys.stdin:
    print("ok", line[6:line.index(",")], flush=True)
EOF

# The bridge's command line for broker $1, run $2 (a stream / queue of its own), under the CPU
# wrapper (bench_split.sh).
bridge_cmd() {
    case $1 in
    nats) echo "$cpu_of $bridges/nats_jetstream.py --server $nats_url --window $window --subject r$2.{event_type} --stream R$2" ;;
    rabbitmq) echo "$cpu_of $bridges/rabbitmq.py --url $rabbit_url --window $window --queue r$2" ;;
    esac
}

# count.py for broker $1, run $2: sets counted="delivered D, duplicates U, lost L" and warns
# unless D = events, U = 0 and L = 0.
count_at() {
    local json d u l
    case $1 in
    nats) json=$("$py" "$bridges/count.py" nats --server "$nats_url" --stream "R$2" --ids "1-$events") ;;
    rabbitmq) json=$("$py" "$bridges/count.py" rabbitmq --url "$rabbit_url" --queue "r$2" --ids "1-$events") ;;
    esac
    read -r d u l < <(echo "$json" | "$py" -c 'import json,sys; v=json.load(sys.stdin); print(v["delivered"], v["duplicates"], v["lost"])')
    counted="delivered $d, duplicates $u, lost $l"
    [[ $d == "$events" && $u == 0 && $l == 0 ]] || warn "$1 run $2: at the broker: $json"
}

# The broker process of broker $1 (its CPU is counted), none for ''.
broker_pid() {
    case $1 in
    nats) echo "$nats_pid" ;;
    rabbitmq) echo "$rabbit_pid" ;;
    esac
}

# One drain of the loaded events with route $1, extra flags after; sets $rate and $drain_rc.
# The binary is $exe (default: this build).
drain_once() {
    local route=$1 t0 t1
    shift
    drain_rc=0
    t0=$EPOCHREALTIME
    "${exe:-$bin}" --dsn "$DSN" --drain --batch-size 100 --processes 1 --route "$route" \
        --poll-interval 0.05 --log-level warning "$@" >"$tmp/drain.out" 2>"$tmp/drain.err" || drain_rc=$?
    t1=$EPOCHREALTIME
    rate=$(calc "$events / ($t1 - $t0)")
}

# After a drain (label $1, run $2): warns unless it exited 0 with every event done at the
# first attempt.
check_drain() {
    local ok
    ok=$(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1")
    [[ $drain_rc == 0 && $ok == "$events" ]] ||
        warn "$1 run $2: exit $drain_rc, $ok of $events done with attempts = 1; stderr: $(head -c 500 "$tmp/drain.err")"
}

declare -A figure # figure[label] = median events/s
declare -A counts # counts[label] = the last run's count at the broker
declare -A cpu    # cpu[label/part] = median; part: bridge broker pg relay (CPU µs per event),
#                   wait idle (% of the bridge's life)
declare -A rates cpus # every run's figures, space-separated: rates[label], cpus[label/part]
parts=(bridge broker pg relay)

# One timed run of kind $2 (broker $3) for label $1, run $4, id $5 (its stream / queue); sets
# $rate, appends the rate and the CPU split to rates/cpus and prints them. The broker's count
# is left to the caller (outside the timed part).
run_kind() {
    local label=$1 kind=$2 broker=$3 r=$4 run_id=$5 part us line t0 t1 life wait idle cmd
    cmd=$(bridge_cmd "$broker" "$run_id") # before the counters: it is a subshell
    split_begin "$(broker_pid "$broker")"
    t0=$EPOCHREALTIME
    case $kind in
    stdout) drain_once '*=stdout' ;;
    ack) drain_once "*=pipe:$cpu_of $tmp/ack.py" "${pipe_flags[@]}" ;;
    ceiling)
        # shellcheck disable=SC2086 # the command line is split on purpose (no spaces in it)
        $cmd --from-file "$tmp/events.jsonl" >"$tmp/ceiling.out" 2>"$tmp/ceiling.err" ||
            warn "$label run $r: the bridge failed: $(tail -n 3 "$tmp/ceiling.err")"
        ;;
    pipe) drain_once "*=pipe:$cmd" "${bridge_flags[@]}" ;;
    compare) exe=$compare drain_once "*=pipe:$cmd" "${bridge_flags[@]}" ;;
    esac
    t1=$EPOCHREALTIME
    split_end
    if [[ $kind == ceiling ]]; then
        # Like a drain: from the start of the process to its exit. What the bridge reports
        # leaves out its start-up (imports, connecting) and its exit: the publishing alone.
        rate=$(calc "$events / ($t1 - $t0)")
        rates[$label, publishing only]+=" $("$py" -c 'import json,sys; print(json.load(sys.stdin)["events_per_s"])' <"$tmp/ceiling.out")"
    else
        check_drain "$label" "$r"
    fi
    rates[$label]+=" $rate"
    line=
    for part in "${parts[@]}"; do
        us=$(calc "${split[$part]} * 1e6 / $events")
        cpus[$label/$part]+=" $us"
        line+=$(printf ' %s %5.1f' "$part" "$us")
    done
    life=${split[bridge_life]}
    wait=0 idle=0
    if [[ $(calc "($life > 0)") != 0.000000 ]]; then
        wait=$(calc "100 * ${split[bridge_wait]} / $life")
        idle=$(calc "100 * ($life - ${split[bridge]} - ${split[bridge_wait]}) / $life")
        line+=$(printf '; bridge: %2.0f%% of its life waiting for a CPU, %2.0f%% idle' "$wait" "$idle")
    fi
    cpus[$label/wait]+=" $wait"
    cpus[$label/idle]+=" $idle"
    printf '  %-22s run %d: %8s events/s  CPU µs/event:%s\n' "$label" "$r" "$(fmt_int "$rate")" "$line"
}

# Medians of what run_kind gathered for label $1.
settle_label() {
    local part
    # shellcheck disable=SC2086 # the lists of figures
    figure[$1]=$(median ${rates[$1]})
    for part in "${parts[@]}" wait idle; do
        # shellcheck disable=SC2086
        cpu[$1/$part]=$(median ${cpus[$1/$part]})
    done
}

# A Dispatchbox-only figure (stdout, python ack loop): $runs runs of kind $2 for label $1.
measure() {
    local label=$1 kind=$2 r
    for r in $(seq 1 "$runs"); do
        load_events "$events"
        run_kind "$label" "$kind" "" "$r" 0
        if [[ $kind == stdout ]]; then cp "$tmp/drain.out" "$tmp/events.jsonl"; fi
    done
    settle_label "$label"
}

# Broker $1: $runs pairs, each the ceiling then the pipe: drain right after it (the same load
# on the machine affects both), each on a stream / queue of its own, counted at the broker
# after both; with BENCH_COMPARE, the other build's drain follows. Sets pair_ratio[$1] (and
# pair_ratio[$1 compare]): the median of the per-pair ratios pipe / ceiling.
declare -A pair_ratio
run_n=0
measure_broker() {
    local broker=$1 r c p o ceiling_rate ratios=() others=()
    for r in $(seq 1 "$runs"); do
        c=$((run_n + 1)) p=$((run_n + 2)) o=$((run_n + 3))
        run_n=$o
        load_events "$events"
        run_kind "$broker ceiling" ceiling "$broker" "$r" "$c"
        ceiling_rate=$rate
        run_kind "$broker pipe:" pipe "$broker" "$r" "$p"
        ratios+=("$(calc "$rate / $ceiling_rate")")
        count_at "$broker" "$c"
        counts[$broker ceiling]=$counted
        count_at "$broker" "$p"
        counts[$broker pipe:]=$counted
        if [[ -n $compare ]]; then
            load_events "$events"
            run_kind "$broker compare" compare "$broker" "$r" "$o"
            others+=("$(calc "$rate / $ceiling_rate")")
            count_at "$broker" "$o"
            counts[$broker compare]=$counted
        fi
        printf '  %-22s pair %d: pipe: / ceiling %.2f%s\n' "$broker" "$r" "${ratios[-1]}" \
            "$(if [[ -n $compare ]]; then printf ', compare / ceiling %.2f' "${others[-1]}"; fi)"
    done
    settle_label "$broker ceiling"
    # shellcheck disable=SC2086
    figure[$broker ceiling, publishing only]=$(median ${rates[$broker ceiling, publishing only]})
    settle_label "$broker pipe:"
    pair_ratio[$broker]=$(median "${ratios[@]}")
    if [[ -n $compare ]]; then
        settle_label "$broker compare"
        pair_ratio[$broker compare]=$(median "${others[@]}")
    fi
}

say "$events events, batch 100, 1 worker, median of $runs; bridges' --window $window; their pipe: drains' flags: ${bridge_flags[*]}; the ack loop's: ${pipe_flags[*]:-(none)}; load: $(cut -d' ' -f1-3 /proc/loadavg)"
split_wrapper
measure stdout stdout
measure "python ack loop" ack
for broker in "${brokers[@]}"; do
    measure_broker "$broker"
done

say "summary (medians; ratios: of the medians, and the median of the per-pair ratios)"
printf '| %-33s | %9s | %-29s | %s |\n' route events/s ratio "at the broker (last run)"
printf '| %-33s | %9s | %-29s | %s |\n' --- ---: --- ---
row() { printf '| %-33s | %9s | %-29s | %s |\n' "$1" "$(fmt_int "${figure[$1]}")" "$2" "${counts[$1]:-}"; }
ratio2() { printf '%.2fx ceiling (pairs: %.2fx)' "$(calc "${figure[$1]} / ${figure[$2 ceiling]}")" "${pair_ratio[$3]}"; }
row stdout ""
row "python ack loop" "$(calc "${figure[python ack loop]} / ${figure[stdout]}" | xargs printf '%.2f')x stdout"
for broker in "${brokers[@]}"; do
    row "$broker ceiling" ""
    row "$broker ceiling, publishing only" ""
    row "$broker pipe:" "$(ratio2 "$broker pipe:" "$broker" "$broker")"
    if [[ -n $compare ]]; then row "$broker compare" "$(ratio2 "$broker compare" "$broker" "$broker compare") BENCH_COMPARE"; fi
done
echo "(ceiling: the bridge's process from start to exit, as a drain is timed; publishing only:"
echo "what the bridge reports, without its start-up: the pipe: drain's ratio to it is lower)"

say "CPU per event (µs, medians): where each run's CPU went; the bridge's life (%): waiting for a CPU / idle"
printf '| %-22s | %6s | %11s | %6s | %10s | %5s | %5s |\n' route bridge "wait / idle" broker PostgreSQL relay total
printf '| %-22s | %6s | %11s | %6s | %10s | %5s | %5s |\n' --- ---: ---: ---: ---: ---: ---:
cpu_row() {
    printf '| %-22s | %6.1f | %4.0f%% / %2.0f%% | %6.1f | %10.1f | %5.1f | %5.1f |\n' "$1" "${cpu[$1/bridge]}" \
        "${cpu[$1/wait]}" "${cpu[$1/idle]}" "${cpu[$1/broker]}" "${cpu[$1/pg]}" "${cpu[$1/relay]}" \
        "$(calc "${cpu[$1/bridge]} + ${cpu[$1/broker]} + ${cpu[$1/pg]} + ${cpu[$1/relay]}")"
}
cpu_row stdout
cpu_row "python ack loop"
for broker in "${brokers[@]}"; do
    cpu_row "$broker ceiling"
    cpu_row "$broker pipe:"
    if [[ -n $compare ]]; then cpu_row "$broker compare"; fi
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $(nproc) cores, $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo '?');" \
    "dispatchbox: $("$bin" --version 2>&1 | head -n 1); default --threads"
