#!/usr/bin/env bash
# Quickstart: build Dispatchbox, start a throwaway PostgreSQL (removed again on exit), load
# 50 sample events, deliver them to stdout and show the counts per status.
#
#   scripts/quickstart.sh
#
# Needs cargo (Rust 1.89 or later). What else the build and the cluster need (PostgreSQL's
# server binaries, a C compiler, pkg-config, the OpenSSL headers) it installs itself when run
# as root on a system with apt-get, dnf or apk, saying what first (scripts/lib/deps.sh);
# otherwise it prints the one command to run. Touches no existing cluster: like the test
# harness it runs initdb in a temp dir (as the postgres OS user when run as root), on a free
# port and a private unix socket.
set -euo pipefail

cd "$(dirname "$0")/.."
# Only the DSN below configures the tools, whatever this shell has exported.
for var in $(compgen -e); do
    case $var in PG* | DISPATCHBOX_*) unset "$var" ;; esac
done

# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh # (the working directory is the repository root)
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh

say() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust 1.89 or later (https://rustup.rs), then run this again" >&2
    exit 1
fi
say "system packages"
ensure_packages server cc ssl-dev
echo "all there"

say "cargo build --release"
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/dispatchbox"

say "starting a throwaway PostgreSQL"
bindir=$(find_bindir)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dispatchbox-quickstart.XXXXXX")
data=$tmp/data
sock=$tmp/sock
cleanup() {
    if [[ -f $data/postmaster.pid ]]; then
        (cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$data" stop -m fast -w >/dev/null 2>&1) || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf 's3cret-pw\n' >"$tmp/pwfile"
pg_start "$tmp" scram-sha-256 --pwfile="$tmp/pwfile" <<EOF
# dispatchbox quickstart
synchronous_commit = on
EOF

DSN="host=$sock port=$port dbname=outbox user=postgres"
echo "server: $DSN"
"$bindir/createdb" -h "$sock" -p "$port" -U postgres outbox

say "dispatchbox migrate"
"$bin" migrate --dsn "$DSN"

say "loading 50 sample events"
scripts/generate_outbox_sql.sh 50 | "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -d "$DSN"

say "dispatchbox --drain --route '*=stdout' (one JSON line per delivered event)"
"$bin" --dsn "$DSN" --drain --route '*=stdout' --poll-interval 0.2

say "dispatchbox stats"
"$bin" stats --dsn "$DSN"

say "the same, asked with psql"
"$bindir/psql" -X -v ON_ERROR_STOP=1 -d "$DSN" \
    -c "SELECT status, count(*) FROM outbox_event GROUP BY 1 ORDER BY 1"
