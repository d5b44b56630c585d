#!/usr/bin/env bash
# Benchmark: a destination outage (docs/operations.md: "Destination outages"). A backlog of events for a
# webhook route whose receiver is down (connections refused) for a while, then comes back;
# default retry settings (--retry-backoff 30, --max-attempts 5). Reports what the outage cost:
# events dead (want 0), attempts used beyond the first per event, claims and row updates
# while the route was paused (want near 0: no churn), the time from recovery to the first and
# to the last delivery, and the delivery rate after recovery beside a drain with no outage,
# measured in the same run.
#
#   scripts/bench-outage.sh [--quick]
#
#   --quick         a 30 s outage instead of 10 minutes
#   BENCH_OUTAGE    seconds the receiver is down (default 600; 30 with --quick)
#   BENCH_EVENTS    events in the backlog (default 20000)
#
# Prints figures, never asserts timings; exits 0 unless something could not run at all.
# Needs cargo and the PostgreSQL server binaries (Debian/Ubuntu: apt-get install -y
# postgresql). Runs its own throwaway cluster (scripts/lib/pg.sh) and the receiver
# examples/webhook_receiver.rs, on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench_util.sh
source scripts/lib/bench_util.sh
bench_start 10,14 "$@"
events=${BENCH_EVENTS:-20000}
if $quick; then outage=${BENCH_OUTAGE:-30}; else outage=${BENCH_OUTAGE:-600}; fi
[[ $events =~ ^[1-9][0-9]*$ && $outage =~ ^[1-9][0-9]*$ ]] ||
    { echo "bench-outage.sh: BENCH_EVENTS and BENCH_OUTAGE must be positive whole numbers" >&2; exit 2; }

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/bench_webhook.sh
source scripts/lib/bench_webhook.sh

say "cargo build --release"
cargo build --release
bin=target/release/dispatchbox
bindir=$(find_bindir)
say "starting a throwaway PostgreSQL on 127.0.0.1"
bench_cluster outage
psql_q() { "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d "$DSN" "$@"; }
"$bin" migrate --dsn "$DSN" 2>/dev/null

# Row updates of the table so far (the statistics are flushed first).
row_updates() {
    psql_q -c "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
    sleep 1.2 # another backend's counts reach the shared statistics within about a second
    psql_q -c "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'outbox_event'"
}

# dispatchbox_claims_total from the daemon's /metrics (bash's /dev/tcp: no curl needed).
claims_total() {
    local line
    exec 8<>"/dev/tcp/127.0.0.1/$metrics_port"
    printf 'GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n' >&8
    while IFS= read -r -t 5 line <&8; do
        [[ $line == dispatchbox_claims_total* ]] && { printf '%s\n' "${line##* }" | tr -d '\r'; break; }
    done
    exec 8<&-
}

done_count() { psql_q -c "SELECT count(*) FROM outbox_event WHERE status = 'done'"; }

flags=(--batch-size 100 --poll-interval 0.05 --log-level info)

say "Drain with no outage: $events events to a live receiver"
load_events "$events"
webhook_receiver_start
t0=$EPOCHREALTIME
"$bin" --dsn "$DSN" --drain "${flags[@]}" --route "*=http://127.0.0.1:$receiver_port/hooks" \
    >/dev/null 2>"$tmp/base.err"
t1=$EPOCHREALTIME
base_rate=$(calc "$events / ($t1 - $t0)")
echo "  $(fmt_int "$base_rate") events/s (done: $(done_count))"
kill -TERM "$receiver_pid" 2>/dev/null || true
wait "$receiver_pid" 2>/dev/null || true
receiver_pid=

say "The same backlog, the receiver down for ${outage} s (connections refused), then up"
load_events "$events"
port=$(free_port)
err=$tmp/outage.err
# A daemon, not a drain: a drain would end while the few events that failed before the
# pause wait out their backoff (--retry-backoff 30) in `retry`.
"$bin" --dsn "$DSN" "${flags[@]}" --route "*=http://127.0.0.1:$port/hooks" \
    --metrics-addr 127.0.0.1:0 >/dev/null 2>"$err" &
live_pid=$!
t_start=$EPOCHREALTIME
metrics_port=
paused=false
for _ in $(seq 1 600); do
    [[ -z $metrics_port ]] && metrics_port=$(sed -n 's|.*serving metrics on http://127\.0\.0\.1:\([0-9]*\)/metrics.*|\1|p' "$err" | head -n 1)
    if grep -q ' paused: ' "$err"; then paused=true; break; fi
    kill -0 "$live_pid" 2>/dev/null || break
    sleep 0.1
done
$paused || { warn "the route did not pause within 60 s; log:"; tail -n 20 "$err"; exit 1; }
t_paused=$EPOCHREALTIME
echo "  paused $(calc "($t_paused - $t_start) * 1000" | awk '{ printf "%.0f", $1 }') ms after start"
grep ' paused: ' "$err" | head -n 1 | sed 's/^/  log: /'
claims0=$(claims_total)
upd0=$(row_updates)
left=$(calc "$outage - ($EPOCHREALTIME - $t_start)")
if awk -v l="$left" 'BEGIN { exit !(l > 0) }'; then sleep "$left"; fi
claims1=$(claims_total)
upd1=$(row_updates)
webhook_receiver_start "$port"
t_rec=$EPOCHREALTIME
t_first=
# Until every event is done (at most 10 minutes after the recovery).
t_last=
t_most=
most=$((events * 99 / 100))
while kill -0 "$live_pid" 2>/dev/null; do
    n=$(done_count)
    if [[ -z $t_first && $n -gt 0 ]]; then t_first=$EPOCHREALTIME; n_first=$n; fi
    if [[ -z $t_most && $n -ge $most ]]; then t_most=$EPOCHREALTIME; fi
    if [[ $n == "$events" ]]; then t_last=$EPOCHREALTIME; break; fi
    awk -v t="$(calc "$EPOCHREALTIME - $t_rec")" 'BEGIN { exit !(t > 600) }' && break
    sleep 0.02
done
[[ -n $t_last ]] || { warn "not every event was done within 10 minutes of the recovery"; t_last=$EPOCHREALTIME; }
[[ -n $t_first ]] || { t_first=$t_last; n_first=0; }
[[ -n $t_most ]] || t_most=$t_last
rc=0
kill -TERM "$live_pid"
wait "$live_pid" || rc=$?
live_pid=
IFS='|' read -r dead not_done extra max_att < <(psql_q -c "SELECT
    count(*) FILTER (WHERE status = 'dead'), count(*) FILTER (WHERE status <> 'done'),
    coalesce(sum(attempts), 0) - count(*), max(attempts) FROM outbox_event")
stats=$(webhook_receiver_stats)
# The rate from the first delivery after recovery until 99 % were done (the few that failed
# before the pause wait out their backoff and would make it a measure of --retry-backoff).
after_rate=$(calc "($most - $n_first) / ($t_most - $t_first + 0.000001)")
grep ' resumed after ' "$err" | head -n 1 | sed 's/^/  log: /'
if [[ $rc != 0 ]]; then
    warn "the drain exited $rc; last lines:"
    tail -n 5 "$err"
fi

say "Summary (outage ${outage} s, $events events, --batch-size 100, default retry settings)"
echo "| measurement | value |"
echo "| --- | ---: |"
echo "| events dead | $dead |"
echo "| events not done at the end | $not_done |"
echo "| attempts used beyond the first, all events | $extra (highest attempts of one event: $max_att) |"
echo "| claim statements while paused (${outage} s less the trip) | $((claims1 - claims0)) |"
echo "| row updates while paused | $((upd1 - upd0)) |"
printf '| recovery to the first delivery | %.2f s |\n' "$(calc "$t_first - $t_rec")"
printf '| recovery to 99 %% delivered | %.2f s |\n' "$(calc "$t_most - $t_rec")"
printf '| recovery to the last delivery (the few that failed before the pause wait out their backoff) | %.2f s |\n' "$(calc "$t_last - $t_rec")"
echo "| delivery rate after recovery (first delivery to 99 % delivered) | $(fmt_int "$after_rate") events/s |"
echo "| the same drain with no outage (incl. start-up) | $(fmt_int "$base_rate") events/s |"
echo "| ratio | $(calc "$after_rate / $base_rate" | awk '{ printf "%.2f", $1 }') |"
echo "| receiver: $stats | |"
