#!/usr/bin/env bash
# Lints a real scrape: runs a short daemon with --metrics-addr against a throwaway cluster
# (scripts/lib/pg.sh), lets it deliver a few events (some to a route that fails, so the dead
# outcome has a sample), then pipes GET /metrics into `promtool check metrics`, which fails on
# what Prometheus's conventions reject (a counter without _total, a unit missing, bad names,
# duplicate families). Then checks what uses the metrics (scripts/lib/monitoring_examples.py):
# every query of the Grafana dashboard parses (`promtool check rules`), and every metric name
# the alert rules and the dashboard query is in that scrape. Run by .ci/run after the tests.
#
#   scripts/check-metrics.sh
#
#   DISPATCHBOX_BIN   the binary to run (default: `cargo build`, then target/debug/dispatchbox)
#
# Needs promtool (Debian: the prometheus package; .ci/run installs it through
# scripts/lib/deps.sh), python3 and the PostgreSQL server binaries. Exits 0 when promtool is content,
# 1 otherwise (with promtool's findings and the daemon's log).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
bin=${DISPATCHBOX_BIN:-}
for var in $(compgen -e); do
    case $var in PG* | DISPATCHBOX_*) unset "$var" ;; esac
done

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
# shellcheck source=scripts/lib/bench_util.sh
source scripts/lib/bench_util.sh

command -v promtool >/dev/null ||
    { echo "check-metrics.sh: promtool not found (Debian: apt-get install -y prometheus)" >&2; exit 1; }
if [[ -z $bin ]]; then
    cargo build --quiet
    bin=${CARGO_TARGET_DIR:-target}/debug/dispatchbox
fi
bindir=$(find_bindir)
say "a throwaway PostgreSQL on 127.0.0.1"
bench_cluster metrics
"$bin" migrate --dsn "$DSN" >/dev/null 2>"$tmp/migrate.err" || { cat "$tmp/migrate.err" >&2; exit 1; }
events=20 # every fifth is an invoice.issued: 4 go dead
scripts/generate_outbox_sql.sh "$events" |
    "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -d "$DSN" >/dev/null

# GET PATH from the daemon: the whole answer, head and body (bash's /dev/tcp: no curl needed).
http_get() {
    exec 8<>"/dev/tcp/127.0.0.1/$metrics_port"
    printf 'GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n' "$1" >&8
    timeout 10 cat <&8
    exec 8<&-
}
body() { sed '1,/^\r*$/d'; }
# Counts reach the supervisor about every second: wait for the dead ones and an empty backlog.
settled() {
    grep -q '^dispatchbox_ready 1$' "$scrape" && grep -q '^dispatchbox_outbox_due 0$' "$scrape" &&
        grep -q '^dispatchbox_events_total{route="exec:/bin/false",outcome="dead"} 4$' "$scrape"
}

say "a daemon with --metrics-addr 127.0.0.1:0"
err=$tmp/daemon.err
"$bin" --dsn "$DSN" --metrics-addr 127.0.0.1:0 --max-attempts 1 --poll-interval 0.1 \
    --route 'order.*=stdout' --route 'user.*=exec:/bin/true' --route 'invoice.*=exec:/bin/false' \
    >/dev/null 2>"$err" &
live_pid=$!
metrics_port=
scrape=$tmp/metrics.txt
for _ in $(seq 1 300); do
    kill -0 "$live_pid" 2>/dev/null || break
    [[ -z $metrics_port ]] &&
        metrics_port=$(sed -n 's|.*serving metrics on http://127\.0\.0\.1:\([0-9]*\)/metrics.*|\1|p' "$err" | head -n 1)
    if [[ -n $metrics_port ]]; then
        http_get /metrics | body >"$scrape" || true
        settled && break
    fi
    sleep 0.1
done
if ! [[ -f $scrape ]] || ! settled; then
    echo "check-metrics.sh: the daemon did not show the expected counts within 30 s; its log:" >&2
    tail -n 30 "$err" >&2
    [[ -f $scrape ]] && { echo "last scrape:" >&2; cat "$scrape" >&2; }
    exit 1
fi
http_get /readyz >"$tmp/readyz" || true
grep -q '^HTTP/1.1 200' "$tmp/readyz" ||
    { echo "check-metrics.sh: /readyz did not answer 200:" >&2; cat "$tmp/readyz" >&2; exit 1; }

say "promtool check metrics ($(grep -c '^# TYPE' "$scrape") families, $(grep -vc '^#' "$scrape") samples)"
if ! promtool check metrics <"$scrape"; then
    echo "check-metrics.sh: promtool check metrics found the problems above in this scrape:" >&2
    cat "$scrape" >&2
    exit 1
fi

say "the dashboard's queries (promtool check rules) and the names the examples use"
python3 scripts/lib/monitoring_examples.py rules >"$tmp/dashboard-rules.json"
promtool check rules "$tmp/dashboard-rules.json"
python3 scripts/lib/monitoring_examples.py names "$scrape"
echo "ok"
