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
