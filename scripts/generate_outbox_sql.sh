#!/usr/bin/env bash
# Prints SQL that inserts N sample outbox events (default 100), for psql:
#
#   scripts/generate_outbox_sql.sh 500 | psql -v ON_ERROR_STOP=1 "$DSN"
#   scripts/generate_outbox_sql.sh 500 other_table
#
# sql/insert_outbox.sql is `scripts/generate_outbox_sql.sh 100` (a test keeps them equal).
#
# Deterministic: the same N gives the same SQL. Events cycle through order.created,
# order.paid, order.shipped, user.registered and invoice.issued; every five belong to one
# order (ord-K), its customer (usr-K) and its invoice (inv-K). Multi-row INSERTs of at
# most 1000 rows in one transaction. Payloads are JSON built with proper escaping (names
# contain quotes, apostrophes and backslashes) and then quoted as SQL literals. For
# millions of rows use scripts/load_events.sh, which generates them inside the server.
set -euo pipefail

n=${1:-100}
table=${2:-outbox_event}
if ! [[ $n =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [N] [TABLE]   (N: a number of events, default 100)" >&2
    exit 2
fi
if ! [[ $table =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "$0: TABLE must be a plain identifier, got: $table" >&2
    exit 2
fi

awk -v n="$n" -v table="$table" '
# Character by character: gsub replacement escaping differs between awks.
function json_str(s,    out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\") out = out "\\\\"
        else if (c == "\"") out = out "\\\""
        else if (c == "\t") out = out "\\t"
        else if (c == "\n") out = out "\\n"
        else out = out c
    }
    return "\"" out "\""
}
function sql_str(s,    out) {
    out = s
    gsub(/\047/, "\047\047", out)
    return "\047" out "\047"
}
BEGIN {
    split("order.created order.paid order.shipped user.registered invoice.issued", types, " ")
    split("Ada Lovelace|Grace O\047Brien|Linus \"the penguin\" T.|Margaret Hamilton|Back\\slash Tester", names, "|")
    split("DHL|UPS|La Poste|Royal Mail", carriers, "|")
    split("card|sepa|paypal", methods, "|")
    chunk = 1000
    printf "-- %d sample outbox events for table %s, made by scripts/generate_outbox_sql.sh %d\n", n, table, n
    if (n > 0) print "BEGIN;"
    for (i = 1; i <= n; i++) {
        t = types[(i - 1) % 5 + 1]
        k = int((i - 1) / 5) + 1
        name = names[(k - 1) % 5 + 1]
        cents = 1000 + (k * 7919) % 90000
        order = json_str("ord-" k)
        if (t == "order.created") {
            agg = "order"; id = "ord-" k
            payload = "{\"order_id\": " order ", \"customer\": " json_str(name) \
                ", \"total_cents\": " cents ", \"currency\": \"EUR\", \"items\": [{\"sku\": " \
                json_str("SKU-" (k % 13 + 1)) ", \"qty\": " (k % 3 + 1) "}]}"
        } else if (t == "order.paid") {
            agg = "order"; id = "ord-" k
            payload = "{\"order_id\": " order ", \"amount_cents\": " cents \
                ", \"method\": " json_str(methods[k % 3 + 1]) "}"
        } else if (t == "order.shipped") {
            agg = "order"; id = "ord-" k
            payload = "{\"order_id\": " order ", \"carrier\": " json_str(carriers[k % 4 + 1]) \
                ", \"tracking\": " json_str(sprintf("TRK%08d", k)) "}"
        } else if (t == "user.registered") {
            agg = "user"; id = "usr-" k
            payload = "{\"user_id\": " json_str(id) ", \"name\": " json_str(name) \
                ", \"email\": " json_str("user" k "@example.com") "}"
        } else {
            agg = "invoice"; id = "inv-" k
            payload = "{\"invoice_id\": " json_str(id) ", \"order_id\": " order \
                ", \"amount_cents\": " cents ", \"note\": " json_str("Thanks, " name "!") "}"
        }
        if ((i - 1) % chunk == 0) {
            printf "INSERT INTO %s (aggregate_type, aggregate_id, event_type, payload) VALUES\n", table
        }
        last = (i % chunk == 0 || i == n)
        printf "  (%s, %s, %s, %s::jsonb)%s\n", sql_str(agg), sql_str(id), sql_str(t), \
            sql_str(payload), (last ? ";" : ",")
    }
    if (n > 0) print "COMMIT;"
}
'
