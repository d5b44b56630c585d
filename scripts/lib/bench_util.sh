# shellcheck shell=bash
# Output and arithmetic helpers shared by the benchmark scripts (sourced, not run).

say() { printf '\n== %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*"; }

# Median of the arguments (numbers); for an even count the mean of the middle two.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.6f\n", v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
maximum() { printf '%s\n' "$@" | sort -g | tail -n 1; }
# 12345.6 -> 12,346
fmt_int() {
    awk -v x="$1" 'BEGIN { s = sprintf("%.0f", x); o = ""
        while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
        print s o }'
}
calc() { awk "BEGIN { printf \"%.6f\n\", $1 }"; }

# Empties the table and loads N pending order.created events, then VACUUM ANALYZE and a
# CHECKPOINT, so that every timed run starts from the same state. Needs the caller's psql_q.
load_events() {
    psql_q -v n="$1" >/dev/null <<'SQL'
TRUNCATE outbox_event RESTART IDENTITY;
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g)
FROM generate_series(1, :n::bigint) AS g;
VACUUM ANALYZE outbox_event;
CHECKPOINT;
SQL
}

# The start the benchmark scripts share: the C locale (decimal points in $EPOCHREALTIME and
# awk), no PG* or DISPATCHBOX_* variable from this shell (only the DSN a script sets
# configures the tools), and the arguments: --quick sets quick=true; -h/--help prints the
# script's header lines $1 (a sed range such as 10,14) and exits 2; anything else is an error.
bench_start() {
    local help=$1 arg var
    shift
    export LC_ALL=C
    for var in $(compgen -e); do
        case $var in PG* | DISPATCHBOX_*) unset "$var" ;; esac
    done
    # shellcheck disable=SC2034 # read by the script that calls bench_start
    quick=false
    # shellcheck disable=SC2034
    for arg in "$@"; do
        case $arg in
        --quick) quick=true ;;
        -h | --help) sed -n "${help}s/^# \{0,1\}//p" "$0" >&2; exit 2 ;;
        *) echo "$(basename "$0"): unknown argument: $arg" >&2; exit 2 ;;
        esac
    done
}

# Waits (up to 30 s) until the supervisor $1 has $2 "worker ready" lines in file $3.
wait_ready() {
    for _ in $(seq 1 3000); do
        (($(grep -c "worker ready" "$3") >= $2)) && return 0
        kill -0 "$1" 2>/dev/null || break
        sleep 0.01
    done
    warn "no \"worker ready\" within 30 s; the last lines of $3:"
    tail -n 20 "$3" | sed 's/^/    /'
    return 1
}
