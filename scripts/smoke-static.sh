#!/usr/bin/env bash
# Smoke test for the one-file binary (scripts/build-static.sh): against a throwaway
# PostgreSQL that accepts TCP only over TLS (its own CA and server certificate, made with
# openssl), the binary migrates, psql loads N sample events, the binary drains them to stdout
# over `sslmode=verify-full` with the test CA as `sslrootcert` (2 worker processes), and the
# counts must be exact: N lines printed, N distinct ids, N events done, none left, nothing
# logged above INFO. It must also refuse the server when told to trust only the system's
# roots (which do not hold the test CA), and say one WARNING line for a missing SSL_CERT_FILE.
#
#   scripts/smoke-static.sh [BINARY] [N]    # default: the static build's path, 200 events
#
# Needs PostgreSQL's server binaries and openssl (installed by .ci/run; scripts/lib/deps.sh).
# Touches no existing cluster: initdb in a temp dir (as the postgres OS user when root).
set -euo pipefail
cd "$(dirname "$0")/.."
for var in $(compgen -e); do
    case $var in PG* | DISPATCHBOX_* | SSL_CERT_*) unset "$var" ;; esac
done

bin=${1:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/static/dispatchbox}
count=${2:-200}
[[ -x $bin ]] || { echo "smoke-static.sh: no binary at $bin (run scripts/build-static.sh)" >&2; exit 1; }
bin=$(readlink -f "$bin")

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh
bindir=$(find_bindir)

say() { printf '\n== %s\n' "$*"; }
fail() { echo "smoke-static.sh: FAILED: $*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dispatchbox-smoke.XXXXXX")
cleanup() {
    if [[ -f $tmp/data/postmaster.pid ]]; then
        (cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$tmp/data" stop -m fast -w >/dev/null 2>&1) || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "a test CA and a server certificate for localhost"
mkdir -p "$tmp/tls"
(
    cd "$tmp/tls"
    printf '%s\n' '[req]' 'prompt = no' 'distinguished_name = dn' 'x509_extensions = v3_ca' \
        '[dn]' 'CN = dispatchbox smoke CA' '[v3_ca]' 'basicConstraints = critical,CA:TRUE' \
        'keyUsage = critical,keyCertSign,cRLSign' 'subjectKeyIdentifier = hash' >ca.cnf
    printf '%s\n' '[req]' 'prompt = no' 'distinguished_name = dn' '[dn]' 'CN = localhost' \
        '[v3_server]' 'basicConstraints = critical,CA:FALSE' \
        'keyUsage = critical,digitalSignature,keyEncipherment' 'extendedKeyUsage = serverAuth' \
        'subjectAltName = DNS:localhost,IP:127.0.0.1' 'authorityKeyIdentifier = keyid,issuer' \
        >server.cnf
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 30 -config ca.cnf \
        -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -new -nodes -newkey rsa:2048 -sha256 -config server.cnf \
        -keyout server.key -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -sha256 -extfile server.cnf -extensions v3_server -out server.crt 2>/dev/null
    chmod 600 server.key
)
ca=$tmp/tls/ca.crt

say "a throwaway PostgreSQL with TLS on"
printf 'smoke-pw\n' >"$tmp/pwfile"
pg_start "$tmp" scram-sha-256 --pwfile="$tmp/pwfile" <<EOF
ssl = on
ssl_cert_file = '$tmp/tls/server.crt'
ssl_key_file = '$tmp/tls/server.key'
EOF
# TCP only with TLS: a connection without it is refused by the server, whatever the client does.
as_pg sed -i 's/^host\([[:space:]]\)/hostssl\1/' "$tmp/data/pg_hba.conf"
(cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$tmp/data" reload >/dev/null)
"$bindir/createdb" -h "$tmp/sock" -p "$port" -U postgres outbox
# TCP with the host name checked against the certificate; hostaddr: no name lookup needed.
tls="host=localhost hostaddr=127.0.0.1 port=$port dbname=outbox user=postgres password=smoke-pw"
dsn="$tls sslmode=verify-full sslrootcert=$ca"
psql() { "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$tmp/sock" -p "$port" -U postgres -d outbox "$@"; }

say "$bin"
file -b "$bin"
"$bin" --version

say "migrate (verify-full)"
"$bin" migrate --dsn "$dsn"

say "load $count events"
scripts/generate_outbox_sql.sh "$count" | psql >/dev/null
[[ $(psql -c "SELECT count(*) FROM outbox_event") == "$count" ]] || fail "loading $count events"

say "drain (verify-full, --processes 2)"
rc=0
"$bin" --dsn "$dsn" --drain --processes 2 --route '*=stdout' --poll-interval 0.2 \
    --log-level warning >"$tmp/out.jsonl" 2>"$tmp/err.log" || rc=$?
((rc == 0)) || { cat "$tmp/err.log" >&2; fail "the drain exited with $rc"; }
lines=$(wc -l <"$tmp/out.jsonl")
done=$(psql -c "SELECT count(*) FROM outbox_event WHERE status = 'done'")
left=$(psql -c "SELECT count(*) FROM outbox_event WHERE status <> 'done' OR locked_by IS NOT NULL")
distinct=$(sed -n 's/.*"id":\([0-9]*\).*/\1/p' "$tmp/out.jsonl" | sort -u | wc -l)
echo "printed $lines lines ($distinct distinct ids), $done done, $left not done"
[[ $lines == "$count" && $distinct == "$count" && $done == "$count" && $left == 0 ]] ||
    fail "expected $count lines, ids and done events and 0 left"
[[ ! -s $tmp/err.log ]] || { cat "$tmp/err.log" >&2; fail "the drain logged warnings or errors"; }

say "stats (verify-full)"
"$bin" stats --dsn "$dsn" | tee "$tmp/stats"
grep -qx "done $count" "$tmp/stats" || fail "stats does not say done $count"

say "verify-full against the system's roots must refuse the test CA"
if "$bin" stats --dsn "$tls sslmode=verify-full sslrootcert=system connect_timeout=5" \
    >/dev/null 2>"$tmp/refused.log"; then
    fail "connected although the system's roots do not hold the test CA"
fi
grep -i "certificate" "$tmp/refused.log" || { cat "$tmp/refused.log" >&2; fail "not a certificate error"; }

say "SSL_CERT_FILE naming a missing file: one WARNING line, and it still works"
SSL_CERT_FILE=$tmp/missing.pem "$bin" stats --dsn "$dsn" >/dev/null 2>"$tmp/warn.log" ||
    { cat "$tmp/warn.log" >&2; fail "stats with a missing SSL_CERT_FILE"; }
cat "$tmp/warn.log"
if [[ $(grep -c WARNING "$tmp/warn.log") != 1 ]] ||
    ! grep -q "SSL_CERT_FILE=$tmp/missing.pem does not exist" "$tmp/warn.log"; then
    fail "expected one WARNING line naming SSL_CERT_FILE"
fi

say "ok: $count events over verify-full, exact counts"
