# shellcheck shell=bash
# shellcheck disable=SC2154
# (SC2154: $bindir (find_pgbench) come from the script that sources this file.)
# Shared by scripts/quickstart.sh and scripts/bench.sh (sourced, not run): finding the
# PostgreSQL server binaries, a free TCP port, and running the server's programs as the
# postgres OS user when we are root (initdb and postgres refuse to run as root).

find_bindir() {
    local dir
    # Debian layout, highest version first; then pg_config; then PATH.
    for dir in $(printf "%s\n" /usr/lib/postgresql/*/bin | sort -rV); do
        [[ -x $dir/initdb && -x $dir/pg_ctl ]] && { echo "$dir"; return; }
    done
    if dir=$(pg_config --bindir 2>/dev/null) && [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
        echo "$dir"
        return
    fi
    if dir=$(command -v initdb); then
        dir=$(dirname "$(readlink -f "$dir")")
        [[ -x $dir/pg_ctl ]] && { echo "$dir"; return; }
    fi
    echo "PostgreSQL server binaries (initdb, pg_ctl) not found: install them" \
        "(Debian/Ubuntu: apt-get install -y postgresql)" >&2
    exit 1
}

# pgbench beside the server binaries in $bindir, else on PATH.
find_pgbench() {
    local p=$bindir/pgbench
    [[ -x $p ]] || p=$(command -v pgbench) || { echo "pgbench not found (Debian/Ubuntu: apt-get install -y postgresql-contrib)" >&2; exit 1; }
    echo "$p"
}

# A TCP port nobody listens on (bash's /dev/tcp: a refused connect means free).
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free TCP port found" >&2
    exit 1
}

root=false
[[ $(id -u) == 0 ]] && root=true
as_pg() {
    if $root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start TMP HOST_AUTH [INITDB_ARGS...] < EXTRA_CONF
# initdb in TMP/data (as postgres when root), listen on 127.0.0.1:$port (a free port, set as
# a global) and on the socket dir TMP/sock, append EXTRA_CONF to postgresql.conf, start it.
# Needs $bindir. Stop it with: pg_ctl -D TMP/data stop.
# shellcheck disable=SC2154 # $bindir is set by the sourcing script
pg_start() {
    local tmp=$1 host_auth=$2
    shift 2
    mkdir -p "$tmp/sock"
    if $root; then
        chmod 755 "$tmp"
        chown -R postgres: "$tmp"
    fi
    # From inside $tmp: somewhere the postgres user may enter.
    (cd "$tmp" && as_pg "$bindir/initdb" -D "$tmp/data" --auth-local=trust \
        --auth-host="$host_auth" -U postgres -E UTF8 --locale=C --no-sync "$@" \
        >"$tmp/initdb.log") || { cat "$tmp/initdb.log" >&2; exit 1; }
    port=$(free_port)
    {
        printf "\nlisten_addresses = '127.0.0.1'\nport = %s\n" "$port"
        printf "unix_socket_directories = '%s'\n" "$tmp/sock"
        printf "max_connections = 200\nshared_buffers = 128MB\n"
        printf "logging_collector = off\nlog_min_messages = warning\n"
        cat
    } | as_pg tee -a "$tmp/data/postgresql.conf" >/dev/null
    (cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 start \
        >/dev/null) || { tail -n 30 "$tmp/server.log" >&2; exit 1; }
}

# bench_cluster NAME: a throwaway cluster for a benchmark script: stock durable settings, TCP on
# 127.0.0.1 with trust auth, a database `bench`. Sets tmp, data, port and DSN, and an EXIT trap
# that stops what the script left running (the supervisor in $live_pid, the webhook receiver in
# $receiver_pid) and then the cluster, and removes the directory. Needs $bindir.
# shellcheck disable=SC2034 # data, DSN, live_pid, receiver_pid are for the sourcing script
bench_cluster() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/dispatchbox-$1.XXXXXX")
    data=$tmp/data
    live_pid=
    receiver_pid=
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    # Not a pipe into pg_start: it must run in this shell, which gets its $port.
    pg_start "$tmp" trust < <(printf '%s\n' "# dispatchbox $1: stock durable settings, TCP on 127.0.0.1 only" \
        "fsync = on" "synchronous_commit = on" "full_page_writes = on")
    DSN="host=127.0.0.1 port=$port dbname=bench user=postgres"
    "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres bench
}

bench_cleanup() {
    if [[ -n ${receiver_pid:-} ]]; then kill -TERM "$receiver_pid" 2>/dev/null || true; fi
    if [[ -n ${live_pid:-} ]] && kill -0 "$live_pid" 2>/dev/null; then
        kill -TERM "$live_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$live_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$live_pid" 2>/dev/null || true
    fi
    if [[ -f $data/postmaster.pid ]]; then
        (cd "$tmp" && as_pg "$bindir/pg_ctl" -D "$data" stop -m fast -w >/dev/null 2>&1) || true
    fi
    rm -rf "$tmp"
}
