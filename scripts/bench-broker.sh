#!/usr/bin/env bash
# Benchmark: Dispatchbox's `pipe:` through the example bridges (examples/bridges/) to real
# brokers, beside each bridge's own ceiling and the `stdout` drain, all in the same run.
#
#   scripts/bench-broker.sh
#
#   BENCH_EVENTS       events per run (default 20000)
#   BENCH_RUNS         runs per figure; the median is shown (default 3)
#   BENCH_WINDOW       the bridges' --window, also in --from-file mode (default 1000)
#   BENCH_PIPE_FLAGS   extra dispatchbox flags for the pipe: drains, e.g. "--pipe-window 256"
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
# After every broker run an independent consumer (examples/bridges/count.py) counts at the
# broker: delivered, duplicates, lost. Every run publishes to a stream/queue of its own.
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

events=${BENCH_EVENTS:-20000}
runs=${BENCH_RUNS:-3}
window=${BENCH_WINDOW:-1000}
read -r -a pipe_flags <<<"${BENCH_PIPE_FLAGS:-}"
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

# The bridge's command line for broker $1, run $2 (a stream / queue of its own).
bridge_cmd() {
    case $1 in
    nats) echo "$py $bridges/nats_jetstream.py --server $nats_url --window $window --subject r$2.{event_type} --stream R$2" ;;
    rabbitmq) echo "$py $bridges/rabbitmq.py --url $rabbit_url --window $window --queue r$2" ;;
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

# One drain with route $1 (label $2, run $3), extra flags after; sets $rate and checks the rows.
# The binary is $exe (default: this build).
run_n=0
drain_once() {
    local route=$1 label=$2 r=$3 rc=0 t0 t1 ok
    shift 3
    load_events "$events"
    t0=$EPOCHREALTIME
    "${exe:-$bin}" --dsn "$DSN" --drain --batch-size 100 --processes 1 --route "$route" \
        --poll-interval 0.05 --log-level warning "$@" >"$tmp/drain.out" 2>"$tmp/drain.err" || rc=$?
    t1=$EPOCHREALTIME
    rate=$(calc "$events / ($t1 - $t0)")
    ok=$(psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1")
    [[ $rc == 0 && $ok == "$events" ]] ||
        warn "$label run $r: exit $rc, $ok of $events done with attempts = 1; stderr: $(head -c 500 "$tmp/drain.err")"
}

declare -A figure # figure[label] = median events/s
declare -A counts # counts[label] = the last run's count at the broker
# One run of kind $2 (broker $3) for label $1, run $4; sets $rate and $counted.
run_kind() {
    local label=$1 kind=$2 broker=$3 r=$4 run_id out
    run_n=$((run_n + 1))
    run_id=$run_n
    counted=
    case $kind in
    stdout)
        drain_once '*=stdout' "$label" "$r"
        cp "$tmp/drain.out" "$tmp/events.jsonl"
        ;;
    ack) drain_once "*=pipe:$py $tmp/ack.py" "$label" "$r" "${pipe_flags[@]}" ;;
    ceiling)
        # shellcheck disable=SC2046 # the command line is split on purpose (no spaces in it)
        out=$($(bridge_cmd "$broker" "$run_id") --from-file "$tmp/events.jsonl" 2>"$tmp/ceiling.err") ||
            warn "$label run $r: the bridge failed: $(tail -n 3 "$tmp/ceiling.err")"
        rate=$(echo "$out" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["events_per_s"])')
        count_at "$broker" "$run_id"
        ;;
    pipe | pipe-compare)
        if [[ $kind == pipe-compare ]]; then exe=$compare; fi
        drain_once "*=pipe:$(bridge_cmd "$broker" "$run_id")" "$label" "$r" "${pipe_flags[@]}"
        exe=
        count_at "$broker" "$run_id"
        ;;
    esac
    printf '  %-22s run %d: %8s events/s  %s\n' "$label" "$r" "$(fmt_int "$rate")" "$counted"
}

# Medians of $runs runs of kind $2 for label $1 (broker $3); with kind pipe and BENCH_COMPARE,
# each run is followed by one with the other build (label "$3 compare").
measure() {
    local label=$1 kind=$2 broker=${3:-} r rates=() others=()
    for r in $(seq 1 "$runs"); do
        run_kind "$label" "$kind" "$broker" "$r"
        rates+=("$rate")
        counts[$label]=$counted
        if [[ $kind == pipe && -n $compare ]]; then
            run_kind "$broker compare" pipe-compare "$broker" "$r"
            others+=("$rate")
            counts[$broker compare]=$counted
        fi
    done
    figure[$label]=$(median "${rates[@]}")
    if ((${#others[@]} > 0)); then figure[$broker compare]=$(median "${others[@]}"); fi
}

say "$events events, batch 100, 1 worker, median of $runs; bridges' --window $window; pipe: flags: ${BENCH_PIPE_FLAGS:-(none)}"
measure stdout stdout
measure "python ack loop" ack
for broker in "${brokers[@]}"; do
    measure "$broker ceiling" ceiling "$broker"
    measure "$broker pipe:" pipe "$broker"
done

say "summary (medians; ratios to the ceiling measured in this run)"
printf '| %-22s | %9s | %-13s | %s |\n' route events/s ratio "at the broker (last run)"
printf '| %-22s | %9s | %-13s | %s |\n' --- ---: --- ---
row() { printf '| %-22s | %9s | %-13s | %s |\n' "$1" "$(fmt_int "${figure[$1]}")" "$2" "${counts[$1]:-}"; }
row stdout ""
row "python ack loop" "$(calc "${figure[python ack loop]} / ${figure[stdout]}" | xargs printf '%.2f')x stdout"
for broker in "${brokers[@]}"; do
    row "$broker ceiling" ""
    row "$broker pipe:" "$(calc "${figure[$broker pipe:]} / ${figure[$broker ceiling]}" | xargs printf '%.2f')x ceiling"
    if [[ -n $compare ]]; then row "$broker compare" "$(calc "${figure[$broker compare]} / ${figure[$broker ceiling]}" | xargs printf '%.2f')x ceiling (BENCH_COMPARE)"; fi
done
echo
echo "machine: $(nproc) cores, $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo '?');" \
    "dispatchbox: $("$bin" --version 2>&1 | head -n 1); default --threads"
