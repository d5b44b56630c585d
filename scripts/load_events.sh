#!/usr/bin/env bash
# Loads many outbox events fast: the server generates them in one
# INSERT ... SELECT ... FROM generate_series(1, N), then the table is ANALYZEd.
#
#   scripts/load_events.sh --dsn DSN [--count N] [--type T] [--table T]
#
#   --dsn DSN     libpq key=value DSN or postgres:// URI (default: $DISPATCHBOX_DSN)
#   --count N     number of events (default 100000)
#   --type T      event type of every event (default: a mix of order.created, order.paid,
#                 order.shipped, user.registered, invoice.issued)
#   --table T     outbox table, a plain name (default outbox_event); run
#                 `dispatchbox migrate` first
#
# Needs psql. Values reach the SQL as psql variables (:'type', :"table"), never pasted in.
set -euo pipefail

usage() {
    sed -n '5,12s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

dsn=${DISPATCHBOX_DSN:-}
count=100000
type=
table=outbox_event
while [[ $# -gt 0 ]]; do
    case $1 in
    --dsn) dsn=${2:?--dsn needs a value}; shift 2 ;;
    --count) count=${2:?--count needs a value}; shift 2 ;;
    --type) type=${2:?--type needs a value}; shift 2 ;;
    --table) table=${2:?--table needs a value}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "load_events.sh: unknown argument: $1" >&2; usage ;;
    esac
done
[[ -n $dsn ]] || { echo "load_events.sh: --dsn is required" >&2; usage; }
[[ $count =~ ^[0-9]+$ ]] || { echo "load_events.sh: --count must be a number" >&2; exit 2; }

start=$(date +%s.%N)
psql -X -q -v ON_ERROR_STOP=1 -v count="$count" -v type="$type" -v table="$table" \
    -d "$dsn" <<'SQL'
INSERT INTO :"table" (aggregate_type, aggregate_id, event_type, payload)
SELECT split_part(t.event_type, '.', 1),
       g::text,
       t.event_type,
       jsonb_build_object('n', g, 'source', 'load_events.sh')
FROM generate_series(1, :count::bigint) AS g
CROSS JOIN LATERAL (
    SELECT coalesce(nullif(:'type', ''),
                    (ARRAY['order.created', 'order.paid', 'order.shipped',
                           'user.registered', 'invoice.issued'])[1 + (g % 5)::int])
           AS event_type
) AS t;
ANALYZE :"table";
SQL
end=$(date +%s.%N)
awk -v n="$count" -v t="$table" -v s="$start" -v e="$end" \
    'BEGIN { printf "loaded %d events into %s in %.1f s\n", n, t, e - s }'
