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
