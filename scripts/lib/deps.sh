# shellcheck shell=bash
# What building Dispatchbox and running its throwaway PostgreSQL need from the system, and
# how to get it. Sourced (not run) by .ci/run and scripts/quickstart.sh, so the list lives in
# one place. The test harness never installs anything: it fails with a message instead.
#
#   ensure_packages server cc ssl-dev openssl
#
# Each name is checked; what is missing is installed when we are root and the system has
# apt-get, dnf or apk (saying what, first). Otherwise the exact command to run is printed and
# the script exits 1. A cluster that a server package starts by itself is left alone: our
# scripts and tests always run a private one in a temp dir.
#   server   PostgreSQL's server binaries (initdb, pg_ctl) and psql
#   promtool Prometheus's promtool (.ci/run checks the example alert rules and a scrape with it)
#   cc       a C compiler (crates with C parts; the linker)
#   ssl-dev  pkg-config and the OpenSSL headers (native-tls links the system's OpenSSL)
#   openssl  the openssl command (the test harness makes its TLS certificates with it)
#   nats-server      NATS with JetStream (the example bridges' tests and bench-broker.sh)
#   rabbitmq-server  RabbitMQ (the same; its Erlang runtime comes with it)
#   python-venv      python3 with venv and ensurepip (scripts/test-deps.sh makes the venv)
#   man groff zsh fish   man-db's man and groff (the generated man page's test renders it),
#                    zsh and fish (the generated completions' tests run them)
#   ShellCheck's `shellcheck` (.ci/run lints scripts/ and .ci/run with it)
# Installing a broker package must not leave a broker running on its default port: with apt,
# a temporary /usr/sbin/policy-rc.d (exit 101) stops the packages' services from starting; it
# is removed afterwards, and one that was there before is left as it was.

have_server() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
    local dir
    if dir=$(pg_config --bindir 2>/dev/null) && [[ -x $dir/initdb ]]; then
        return 0
    fi
    command -v initdb >/dev/null
}

# The node's own start script (the /usr/sbin wrapper switches to the system's rabbitmq user).
have_rabbitmq() {
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || command -v rabbitmq-server >/dev/null
}

# The system's python3 (not a per-user one earlier in PATH): the package manager installs its venv.
system_python() {
    if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else echo python3; fi
}

# The missing ones among the names given, as abstract names.
missing_deps() {
    local what
    for what in "$@"; do
        case $what in
            server) have_server && command -v runuser >/dev/null || echo server ;;
            cc) command -v cc >/dev/null || echo cc ;;
            promtool) command -v promtool >/dev/null || echo promtool ;;
            ssl-dev)
                command -v pkg-config >/dev/null || echo pkg-config
                pkg-config --exists openssl 2>/dev/null || echo ssl-dev
                ;;
            openssl) command -v openssl >/dev/null || echo openssl ;;
            nats-server) command -v nats-server >/dev/null || echo nats-server ;;
            rabbitmq-server) have_rabbitmq || echo rabbitmq-server ;;
            python-venv) "$(system_python)" -c 'import venv, ensurepip' 2>/dev/null || echo python-venv ;;
            man | groff | zsh | fish | shellcheck) command -v "$what" >/dev/null || echo "$what" ;;
            *) echo "deps.sh: unknown dependency $what" >&2; exit 2 ;;
        esac
    done
}

package_manager() {
    local pm
    for pm in apt-get dnf apk; do
        command -v "$pm" >/dev/null && { echo "$pm"; return; }
    done
}

# Package names for abstract names, for one package manager.
packages_for() {
    local pm=$1 what
    shift
    for what in "$@"; do
        case $pm:$what in
            apt-get:server) echo postgresql ;;
            apt-get:cc) echo gcc libc6-dev ;;
            apt-get:promtool | apk:promtool) echo prometheus ;;
            dnf:promtool) echo golang-github-prometheus ;;
            apt-get:pkg-config) echo pkg-config ;;
            apt-get:ssl-dev) echo libssl-dev ;;
            dnf:server) echo postgresql-server postgresql util-linux ;;
            dnf:cc) echo gcc ;;
            dnf:pkg-config) echo pkgconf-pkg-config ;;
            dnf:ssl-dev) echo openssl-devel ;;
            apk:server) echo postgresql postgresql-client runuser ;;
            apk:cc) echo gcc musl-dev ;;
            apk:pkg-config) echo pkgconf ;;
            apk:ssl-dev) echo openssl-dev ;;
            *:openssl) echo openssl ;;
            *:nats-server) echo nats-server ;;
            *:rabbitmq-server) echo rabbitmq-server ;;
            apt-get:python-venv) echo python3-venv ;;
            dnf:python-venv) echo python3 ;;
            apk:python-venv) echo python3 py3-pip ;;
            apt-get:man | dnf:man | apk:man) echo man-db ;;
            apt-get:groff | dnf:groff) echo groff-base ;;
            apk:groff) echo groff ;;
            *:zsh) echo zsh ;;
            *:fish) echo fish ;;
            apt-get:shellcheck | apk:shellcheck) echo shellcheck ;;
            dnf:shellcheck) echo ShellCheck ;;
        esac
    done
}

ensure_packages() {
    local missing pm pkgs
    mapfile -t missing < <(missing_deps "$@")
    ((${#missing[@]})) || return 0
    pm=$(package_manager)
    if [[ -z $pm ]]; then
        echo "missing: ${missing[*]} (PostgreSQL server binaries, a C compiler, pkg-config," \
            "OpenSSL headers); install them with your system's package manager" >&2
        exit 1
    fi
    # shellcheck disable=SC2207 # package names have no spaces
    pkgs=($(packages_for "$pm" "${missing[@]}"))
    local cmd
    case $pm in
        apt-get) cmd="apt-get update && apt-get install -y ${pkgs[*]}" ;;
        dnf) cmd="dnf install -y ${pkgs[*]}" ;;
        apk) cmd="apk add ${pkgs[*]}" ;;
    esac
    if [[ $(id -u) != 0 ]]; then
        echo "missing: ${missing[*]}; install as root with: $cmd" >&2
        exit 1
    fi
    echo "installing what is missing (${missing[*]}): $cmd" >&2
    case $pm in
        apt-get)
            export DEBIAN_FRONTEND=noninteractive
            apt-get update
            apt_install_no_services "${pkgs[@]}"
            ;;
        dnf) dnf install -y "${pkgs[@]}" ;;
        apk) apk add "${pkgs[@]}" ;;
    esac
    mapfile -t missing < <(missing_deps "$@")
    if ((${#missing[@]})); then
        echo "still missing after installing: ${missing[*]}" >&2
        exit 1
    fi
}

# apt-get install -y PACKAGES without starting their services (a broker on its default port
# would be left running): invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d, and
# exit status 101 means "do not start". Ours is removed afterwards; one that was there stays.
apt_install_no_services() {
    local policy=/usr/sbin/policy-rc.d ours=false rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# dispatchbox scripts/lib/deps.sh: no services started while installing\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=true
    fi
    apt-get install -y "$@" || rc=$?
    if $ours; then rm -f "$policy"; fi
    return "$rc"
}
