# shellcheck shell=bash
# shellcheck disable=SC2154
# (SC2154: $tmp, $py, $clk_tck come from the script that sources this file.)
# Where one run's CPU goes, for scripts/bench-broker.sh (sourced, not run): the bridge, the
# broker, PostgreSQL and the relay (Dispatchbox's supervisor and worker), as deltas around the
# timed part of the run. Needs bench_cpu.sh's pg_cpu (sourced first).
# - bridge: the bridge runs under $tmp/bridge_stats.py, which runs the bridge's script in the
#   same interpreter and, when it exits, appends to a file its CPU (getrusage, all threads),
#   its main thread's time waiting for a CPU (the run queue, /proc/self/schedstat) and its
#   lifetime;
# - broker: the broker's process and its live descendants, utime + stime + cutime + cstime in
#   /proc/PID/stat (all threads: a Go or Erlang broker is multithreaded);
# - PostgreSQL: pg_cpu (the postmaster, its live and reaped children);
# - relay: this shell's reaped children's CPU (`times`, as bench_cpu.sh's relay_cpu: the
#   supervisor waits for its workers, which wait for their bridges) minus the bridge's. About
#   0 in a ceiling run.
# split_begin before the timed part, split_end after it: sets split[bridge], split[broker],
# split[pg], split[relay] (seconds), and split[bridge_wait], split[bridge_life]: the bridge
# waited that long for a CPU, in a lifetime that long (the rest of its life it ran, or was
# idle: waiting for input or for the broker).

# shellcheck disable=SC2034 # read by the sourcing script
declare -A split

# The wrapper: `python bridge_stats.py FILE SCRIPT ARGS...` runs SCRIPT as __main__ (stdin,
# stdout, stderr its own), then appends "CPU WAIT LIFETIME" (seconds) to FILE. Sets cpu_of,
# the prefix of a bridge's command line.
split_wrapper() {
    cat >"$tmp/bridge_stats.py" <<'EOF'
import atexit, os, resource, runpy, sys, time
out, script, start = sys.argv[1], sys.argv[2], time.monotonic()

def report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/schedstat") as f:
        wait_ns = int(f.read().split()[1])
    with open(out, "a") as f:
        f.write(f"{r.ru_utime + r.ru_stime:.6f} {wait_ns / 1e9:.6f} {time.monotonic() - start:.6f}\n")

atexit.register(report)
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
runpy.run_path(script, run_name="__main__")
EOF
    # shellcheck disable=SC2034 # for the sourcing script
    cpu_of="$py $tmp/bridge_stats.py $tmp/bridge.times"
}

# The reaped children's CPU (user + system, seconds) in the output of `times` in file $1.
times_children() {
    sed -n 2p "$1" | awk '{ s = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); s += p[1] * 60 + p[2] }
        printf "%.6f\n", s }'
}

# CPU seconds of process $1 and its live descendants (utime + stime + cutime + cstime).
tree_cpu() {
    [[ -n $1 ]] || { echo 0; return; }
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" -v hz="$clk_tck" '
        { pid = $1; sub(/^.*\) /, ""); up[pid] = $2; t[pid] = $12 + $13 + $14 + $15 }
        END {
            for (p in t) {
                q = p
                for (n = 0; n < 64 && q != root && q in up; n++) q = up[q]
                if (q == root) s += t[p]
            }
            printf "%.6f\n", s / hz
        }'
}

# split_begin BROKER_PID: the counters before the run.
split_begin() {
    split_pid=$1
    rm -f "$tmp/bridge.times"
    split_b0=$(tree_cpu "$split_pid")
    split_g0=$(pg_cpu)
    times >"$tmp/times0" # last: the forks above are reaped already, none below
}

split_end() {
    local r0 r1 b1 g1 stats
    times >"$tmp/times1" # first
    r0=$(times_children "$tmp/times0")
    r1=$(times_children "$tmp/times1")
    b1=$(tree_cpu "$split_pid")
    g1=$(pg_cpu)
    # Sums over the run's bridge processes (one, unless it was restarted).
    stats="0 0 0"
    if [[ -s $tmp/bridge.times ]]; then
        stats=$(awk '{ c += $1; w += $2; l += $3 } END { printf "%.6f %.6f %.6f\n", c, w, l }' "$tmp/bridge.times")
    fi
    read -r 'split[bridge]' 'split[bridge_wait]' 'split[bridge_life]' <<<"$stats"
    split[broker]=$(calc "$b1 - $split_b0")
    split[pg]=$(calc "$g1 - $split_g0")
    split[relay]=$(calc "$r1 - $r0 - ${split[bridge]}")
}
