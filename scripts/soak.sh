#!/usr/bin/env bash
# Soak: an hour of steady traffic with faults, and how the daemon and the table age (issue 23;
# README/docs "Performance → soak"). A producer commits one event per transaction at a steady
# rate (pgbench, a few connections; the payload carries the transaction's clock); a daemon
# (--processes 2, notifications on, --retain-done with an archive table) delivers them to a
# webhook receiver (examples/webhook_receiver.rs) that records every POST. Faults on a schedule:
# a worker `kill -9` every few minutes, one PostgreSQL restart, one destination outage (the
# receiver down, connections refused), one SIGTERM and restart of the whole daemon.
#
#   scripts/soak.sh [--quick]
#
#   --quick         5 minutes, a sample every 10 s, a 30 s outage (the faults scaled down)
#   SOAK_MINUTES    run time (default 60; 5 with --quick)
#   SOAK_RATE       events/s (default 2000)      SOAK_CLIENTS  producer connections (default 16)
#   SOAK_RETAIN     --retain-done (default 5m; 1m with --quick)
#   SOAK_OUT        results (default target/soak)
#   SOAK_FLAGS      more daemon flags (e.g. "--batch-size 100")
#   SOAK_FAULTS     off: no faults (for comparing settings)
#   SOAK_RELOPTIONS storage parameters set on the table after `migrate`, e.g.
#                   "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000"
#   SOAK_PREFILL    done rows (delivered 2 days ago) put in the table first (default 0); with a
#                   longer SOAK_RETAIN they stay: a big table, as after weeks of history
#
# Each sample (a minute; 10 s with --quick) goes to SOAK_OUT/samples.csv: delivered, produced,
# commit-to-handler p50/p99/max, RSS/fds/threads of the supervisor and each worker slot, table
# and index sizes, dead tuples, autovacuum runs, the claim statement's mean time
# (pg_stat_statements, preloaded in the private cluster), rows retention removed, faults. At
# the end: the exactly-once check over every event (0 lost; duplicates at most the events in
# flight at the kills and restarts), the verdict against issue 23's targets (verdict.md) and
# soak.png (gnuplot). Exits 0 when every target is met, 1 when one is missed, 2 on bad usage.
# Needs cargo, python3, gnuplot (installed like .ci/run installs its tools: scripts/lib/deps.sh)
# and the PostgreSQL server binaries with pgbench. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench_util.sh
source scripts/lib/bench_util.sh
bench_start 10,23 "$@"
if $quick; then
    minutes=${SOAK_MINUTES:-5} interval=10 outage=30 kill_every=60 retain=${SOAK_RETAIN:-1m}
else
    minutes=${SOAK_MINUTES:-60} interval=60 outage=60 kill_every=240 retain=${SOAK_RETAIN:-5m}
fi
rate=${SOAK_RATE:-2000}
clients=${SOAK_CLIENTS:-16}
faults=${SOAK_FAULTS:-on}
reloptions=${SOAK_RELOPTIONS:-}
prefill=${SOAK_PREFILL:-0}
out=${SOAK_OUT:-target/soak}
read -r -a extra <<<"${SOAK_FLAGS:-}"
[[ $minutes =~ ^[1-9][0-9]*$ && $rate =~ ^[1-9][0-9]*$ && $clients =~ ^[1-9][0-9]*$ && $prefill =~ ^[0-9]+$ ]] ||
    { echo "soak.sh: SOAK_MINUTES, SOAK_RATE and SOAK_CLIENTS must be positive whole numbers, SOAK_PREFILL a whole number" >&2; exit 2; }

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
ensure_packages server gnuplot
# shellcheck source=scripts/lib/bench_webhook.sh
source scripts/lib/bench_webhook.sh

say "cargo build --release"
cargo build --release
bindir=$(find_bindir)
pgbench=$(find_pgbench)
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/{samples.csv,received.txt,faults.log,daemon.log,producer.log,verdict.md,soak.png}

say "starting a throwaway PostgreSQL on 127.0.0.1 (stock settings, pg_stat_statements loaded)"
bench_cluster soak "shared_preload_libraries = 'pg_stat_statements'" \
    "pg_stat_statements.track = 'top'" "log_autovacuum_min_duration = 0"
psql_q() { "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -d "$DSN" "$@"; }
# Copies: a rebuild during the run must not change what restarts exec.
cargo build --release --quiet --example webhook_receiver
cp target/release/dispatchbox "${CARGO_TARGET_DIR:-target}/release/examples/webhook_receiver" "$tmp/"
bin=$tmp/dispatchbox
"$bin" migrate --dsn "$DSN" --notify on 2>/dev/null
psql_q -c "CREATE EXTENSION pg_stat_statements; CREATE TABLE outbox_archive (LIKE outbox_event)"
if [[ -n $reloptions ]]; then psql_q -c "ALTER TABLE outbox_event SET ($reloptions)"; fi
if ((prefill > 0)); then
    say "prefill: $prefill done rows delivered 2 days ago"
    psql_q -v n="$prefill" >/dev/null <<'SQL'
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts,
                          created_at, delivered_at)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g), 'done', 1,
       now() - interval '2 days', now() - interval '2 days'
FROM generate_series(1, :n::bigint) AS g;
VACUUM ANALYZE outbox_event;
CHECKPOINT;
SQL
fi
cat >"$tmp/insert.sql" <<'SQL'
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '1', 'order.created', jsonb_build_object('t', extract(epoch FROM clock_timestamp())));
SQL

producer_pid='' sampler_pid=''
# shellcheck disable=SC2317 # run by the EXIT trap
soak_cleanup() {
    for pid in $producer_pid $sampler_pid; do kill -TERM "$pid" 2>/dev/null || true; done
    bench_cleanup
}
trap soak_cleanup EXIT

receiver_port=$(free_port)
receiver_start() {
    "$tmp/webhook_receiver" "$receiver_port" \
        "$out/received.txt" >"$tmp/receiver.out" 2>&1 &
    receiver_pid=$!
    for _ in $(seq 1 500); do
        grep -q '^listening on' "$tmp/receiver.out" && return 0
        sleep 0.01
    done
    echo "soak.sh: the webhook receiver did not start:" >&2
    cat "$tmp/receiver.out" >&2
    exit 1
}
receiver_start

metrics_port=$(free_port)
daemon_start() {
    local ready
    ready=$(grep -c "worker ready" "$out/daemon.log" || true)
    "$bin" --dsn "$DSN" --processes 2 --notify on --retain-done "$retain" \
        --retain-archive outbox_archive --route "*=http://127.0.0.1:$receiver_port/hooks" \
        --metrics-addr "127.0.0.1:$metrics_port" "${extra[@]}" >/dev/null 2>>"$out/daemon.log" &
    live_pid=$!
    echo "$live_pid" >"$out/daemon.pid"
    wait_ready "$live_pid" $((ready + 2)) "$out/daemon.log" || exit 1
}
: >"$out/daemon.log"
: >"$out/faults.log"
daemon_start

t0=$(date +%s)
end=$((t0 + minutes * 60))
# The producer: pgbench at a fixed rate until the end; started again when a restart of the
# server ended it.
produce() {
    local left
    while :; do
        left=$((end - $(date +%s)))
        ((left >= 1)) || return 0
        "$pgbench" -n -c "$clients" -j 2 -R "$rate" -T "$left" -h 127.0.0.1 -p "$port" \
            -U postgres -f "$tmp/insert.sql" bench >>"$out/producer.log" 2>&1 || sleep 1
    done
}
produce &
producer_pid=$!
python3 scripts/lib/soak_sample.py sample "$out" "$DSN" "$interval" "$end" "$metrics_port" &
sampler_pid=$!

# A fault line: epoch, kind, events in flight (leased) then (or -), detail.
fault() { printf '%s %s %s %s\n' "$(date +%s)" "$1" "$2" "${3:-}" >>"$out/faults.log"; echo "  +$(($(date +%s) - t0)) s: $1 (in flight: $2) ${3:-}"; }
leased() { psql_q -c "SELECT count(*) FROM outbox_event WHERE status IN ('pending', 'retry')
    AND locked_by IS NOT NULL AND next_run_at > now() ${1:-}" 2>/dev/null || echo 0; }
worker_pid() {
    local c
    # shellcheck disable=SC2013 # the file is one line of pids
    for c in $(cat /proc/"$live_pid"/task/*/children 2>/dev/null); do
        tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null | grep -q -- "--worker-index $1 " && { echo "$c"; return; }
    done
}
# The killed worker's leases stay in the table under its name until they run out: counted
# after the kill, they are exactly the events it had in flight.
kill_worker() {
    local pid n
    pid=$(worker_pid "$1")
    [[ -n $pid ]] || { fault worker-kill - "no worker $1 found"; return; }
    kill -KILL "$pid"
    n=$(leased "AND locked_by LIKE '%:$pid:w%'")
    fault worker-kill "$n" "worker $1 pid $pid"
}
restart_pg() {
    local n
    n=$(leased)
    (cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$data" -l "$tmp/server.log" restart -m fast -w >/dev/null)
    fault pg-restart "$n"
}
outage() {
    kill -TERM "$receiver_pid"
    wait "$receiver_pid" 2>/dev/null || true
    fault outage-start - "receiver down for $outage s"
    sleep "$outage"
    receiver_start
    fault outage-end -
}
restart_daemon() {
    local n t
    n=$(leased)
    t=$EPOCHREALTIME
    kill -TERM "$live_pid"
    wait "$live_pid" 2>/dev/null || true
    fault daemon-restart "$n" "stopped in $(calc "$EPOCHREALTIME - $t" | awk '{ printf "%.1f", $1 }') s"
    daemon_start
}

# The schedule, in seconds from the start: the worker kills alternate between the slots; the
# other faults fall between 35 % and 65 % of the run, outside the windows the verdict compares.
declare -A plan=()
[[ $faults == off ]] && kill_every=$((minutes * 60))
for ((s = kill_every; s < minutes * 60 - 30; s += kill_every)); do plan[$s]="kill $(((s / kill_every) % 2))"; done
pg_at=$((minutes * 60 * 35 / 100)) outage_at=$((minutes * 60 / 2)) restart_at=$((minutes * 60 * 65 / 100))
[[ $faults == off ]] || { plan[$pg_at]=pg plan[$outage_at]=outage plan[$restart_at]=daemon; }
say "soak: $minutes min at $rate events/s from $clients connections; results in $out"
echo "  retention $retain; prefill $prefill; table options: ${reloptions:-(defaults)}; daemon flags: --processes 2 --notify on ${extra[*]}"
if ((${#plan[@]})); then
    echo "  faults at (s): $(printf '%s\n' "${!plan[@]}" | sort -n | while read -r s; do printf '%s=%s ' "$s" "${plan[$s]// /}"; done)"
fi
for s in $(printf '%s\n' "${!plan[@]}" | sort -n); do
    now=$(($(date +%s) - t0))
    ((s > now)) && sleep $((s - now))
    case ${plan[$s]} in
        kill\ *) kill_worker "${plan[$s]#kill }" ;;
        pg) restart_pg ;;
        outage) outage ;;
        daemon) restart_daemon ;;
    esac
done
now=$(date +%s)
((end > now)) && sleep $((end - now))
wait "$producer_pid" 2>/dev/null || true
producer_pid=
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=

say "end of the run: waiting (up to 5 min) until no event waits, then stopping the daemon"
for _ in $(seq 1 300); do
    [[ $(psql_q -c "SELECT count(*) FROM outbox_event WHERE status IN ('pending', 'retry')") == 0 ]] && break
    sleep 1
done
kill -TERM "$live_pid"
wait "$live_pid" 2>/dev/null || true
live_pid=
grep -c "" "$out/received.txt" | sed 's/^/  POSTs recorded: /'
awk '/^tps = / { print "  producer: " $0 }' "$out/producer.log"
grep -E "WARNING|ERROR" "$out/daemon.log" | grep -v "connection refused\|paused\|unavailable" | head -n 5 | sed 's/^/  daemon: /' || true

say "verdict"
rc=0
python3 scripts/lib/soak_sample.py report "$out" "$DSN" "$minutes" || rc=$?
gnuplot "$out/plot.gp" && echo "  plot: $out/soak.png"
echo "  samples: $out/samples.csv"
exit "$rc"
