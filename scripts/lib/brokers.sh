# shellcheck shell=bash
# Private brokers for scripts/bench-broker.sh (sourced, not run), the shell twin of the test
# harness's tests/common/brokers.rs: a NATS server with JetStream and a RabbitMQ node, each
# in a directory of its own on free ports of 127.0.0.1, sharing nothing with a system broker
# (RabbitMQ: its own node name, cookie in a private HOME, distribution port and epmd; no
# /etc/rabbitmq file read; not the /usr/sbin wrapper, which switches to the system's rabbitmq
# user and its cookie). brokers_stop stops what was started, by pid. Needs free_port (pg.sh).

brokers_require() {
    local missing=()
    command -v nats-server >/dev/null || missing+=(nats-server)
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
    [[ -x target/bridges-venv/bin/python && -f target/bridges-venv/requirements.txt ]] ||
        missing+=("the bridges' venv (target/bridges-venv)")
    if ((${#missing[@]})); then
        echo "missing: ${missing[*]}; run scripts/test-deps.sh once (as root: it installs the" \
            "brokers without starting their services, and makes the venv)" >&2
        exit 1
    fi
}

# wait_port PORT PID LOG WHAT: until 127.0.0.1:PORT accepts, while PID lives (90 s at most).
wait_port() {
    local port=$1 pid=$2 log=$3 what=$4
    for _ in $(seq 1 900); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$what exited while starting; its log:" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$what did not accept connections on port $port within 90 s" >&2
    exit 1
}

nats_pid=
rabbit_pid=
epmd_pid=

# nats_start DIR: sets nats_url.
nats_start() {
    local dir=$1 port
    mkdir -p "$dir"
    port=$(free_port)
    nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/jetstream" >"$dir/nats.log" 2>&1 &
    nats_pid=$!
    # shellcheck disable=SC2034 # for the script that sources this file
    nats_url=nats://127.0.0.1:$port
    wait_port "$port" "$nats_pid" "$dir/nats.log" nats-server
}

# rabbit_start DIR: sets rabbit_url (user guest).
rabbit_start() {
    local dir=$1 port dist epmd_port
    mkdir -p "$dir"
    port=$(free_port)
    dist=$(free_port)
    epmd_port=$(free_port)
    printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$port" >"$dir/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    # Our own epmd in the foreground: the node would otherwise start a daemon nobody stops.
    epmd -port "$epmd_port" -address 127.0.0.1 >"$dir/epmd.log" 2>&1 &
    epmd_pid=$!
    wait_port "$epmd_port" "$epmd_pid" "$dir/epmd.log" epmd
    (
        cd "$dir" || exit 1
        for var in $(compgen -e); do
            case $var in RABBITMQ_* | ERL_*) unset "$var" ;; esac
        done
        export HOME=$dir ERL_EPMD_PORT=$epmd_port RABBITMQ_NODENAME=dbxbench$$@localhost \
            RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$dist \
            RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
            RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config \
            RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_MNESIA_BASE=$dir/mnesia \
            RABBITMQ_LOG_BASE=$dir/log RABBITMQ_LOGS=$dir/rabbit.log RABBITMQ_PID_FILE=$dir/rabbit.pid \
            RABBITMQ_PLUGINS_EXPAND_DIR=$dir/plugins-expand \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
        # The script stays as the node's parent and turns SIGTERM into a clean stop.
        exec /usr/lib/rabbitmq/bin/rabbitmq-server
    ) >"$dir/startup.log" 2>&1 &
    rabbit_pid=$!
    # shellcheck disable=SC2034 # for the script that sources this file
    rabbit_url=amqp://guest:guest@127.0.0.1:$port/%2F
    wait_port "$port" "$rabbit_pid" "$dir/rabbit.log" rabbitmq-server
}

# Stops what was started: SIGTERM, and SIGKILL after 30 s.
brokers_stop() {
    local pid
    for pid in $rabbit_pid $nats_pid $epmd_pid; do
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rabbit_pid='' nats_pid='' epmd_pid=''
}
