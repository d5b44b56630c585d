# shellcheck shell=bash
# shellcheck disable=SC2154
# (SC2154: $tmp, $events, $bin, $runs, $ceiling come from the script that sources this file.)
# bench.sh's webhook section, sourced by it: drains to an http:// route whose receiver is
# examples/webhook_receiver.rs (a keep-alive HTTP/1.1 server answering 200 at once, on the
# same machine: it shares the CPUs with Dispatchbox and PostgreSQL). Written in Rust so the
# bench needs nothing beyond cargo (no python3).
#
# Uses bench.sh's load_events, psql_q, calc, median, fmt_int, warn, $tmp, $bin, $DSN,
# $events, $runs. bench_webhook sets webhook[P_B] (median events/s); webhook_summary_rows
# prints the summary table's rows (ratio to the two-statement ceiling[two_B]).

declare -A webhook # webhook[P_B] = median events/s
webhook_configs="1:100 2:100"

# Starts the receiver on a free port, sets $receiver_pid and $receiver_port.
webhook_receiver_start() {
    local out=$tmp/receiver.out
    cargo build --release --quiet --example webhook_receiver
    "${CARGO_TARGET_DIR:-target}/release/examples/webhook_receiver" 0 >"$out" 2>&1 &
    receiver_pid=$!
    receiver_port=
    for _ in $(seq 1 500); do
        receiver_port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$out")
        [[ -n $receiver_port ]] && return 0
        kill -0 "$receiver_pid" 2>/dev/null || break
        sleep 0.01
    done
    echo "bench.sh: the webhook receiver did not start:" >&2
    cat "$out" >&2
    exit 1
}

# `posts N unique M connections C` from the receiver (bash's /dev/tcp: no curl needed).
webhook_receiver_stats() {
    local reply
    exec 7<>"/dev/tcp/127.0.0.1/$receiver_port"
    printf 'GET /stats HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n' >&7
    # Status line, header, blank line, the counts.
    for _ in 1 2 3 4; do IFS= read -r -t 5 reply <&7 || break; done
    exec 7<&-
    printf '%s\n' "${reply%$'\r'}"
}

# One drain of $events fresh events to the receiver; processes $1, batch $2, run $3; sets $rate.
webhook_drain_once() {
    local p=$1 b=$2 r=$3 err=$tmp/webhook.err rc=0 t0 t1 elapsed ok not_done before after posts unique conns
    load_events "$events"
    before=$(webhook_receiver_stats)
    t0=$EPOCHREALTIME
    "$bin" --dsn "$DSN" --drain --batch-size "$b" --processes "$p" \
        --route "*=http://127.0.0.1:$receiver_port/hooks/orders" \
        --poll-interval 0.05 --log-level warning >/dev/null 2>"$err" || rc=$?
    t1=$EPOCHREALTIME
    after=$(webhook_receiver_stats)
    elapsed=$(calc "$t1 - $t0")
    rate=$(calc "$events / $elapsed")
    IFS='|' read -r ok not_done < <(psql_q -c "SELECT
        count(*) FILTER (WHERE status = 'done' AND attempts = 1),
        count(*) FILTER (WHERE status <> 'done') FROM outbox_event")
    # webhook-ids repeat across runs (the table restarts at id 1): compare differences.
    posts=$(($(awk '{ print $2 }' <<<"$after") - $(awk '{ print $2 }' <<<"$before")))
    unique=$(awk '{ print $4 }' <<<"$after")
    # Connections this run opened: the difference less the one that asked for `after`.
    conns=$(($(awk '{ print $6 }' <<<"$after") - $(awk '{ print $6 }' <<<"$before") - 1))
    printf '  processes %d, batch %3d, run %d: %6.2f s  %7s events/s  (done with attempts=1: %s, POSTs received: %s, distinct ids so far: %s, connections: %s, exit %s)\n' \
        "$p" "$b" "$r" "$elapsed" "$(fmt_int "$rate")" "$ok" "$posts" "$unique" "$conns" "$rc"
    if [[ $rc != 0 || $ok != "$events" || $not_done != 0 || $posts != "$events" ]]; then
        warn "webhook processes $p batch $b run $r: expected exit 0, all $events events done with attempts = 1 and one POST each" \
            "(not done: $not_done, POSTs: $posts, exit: $rc)"
    fi
    if [[ -s $err ]]; then
        warn "webhook processes $p batch $b run $r: output on stderr at --log-level warning; first lines:"
        head -n 5 "$err" | sed 's/^/    /'
    fi
}

bench_webhook() {
    local pb p b r rates
    say "Dispatchbox drain to a webhook: $events events, --route '*=http://127.0.0.1:PORT/...', median of $runs"
    echo "(receiver: examples/webhook_receiver.rs, keep-alive, answers 200 at once, on this machine;"
    echo " 10 handler threads per process, each POST waits for its answer)"
    webhook_receiver_start
    for pb in $webhook_configs; do
        p=${pb%%:*}
        b=${pb##*:}
        rates=()
        for r in $(seq 1 "$runs"); do
            webhook_drain_once "$p" "$b" "$r"
            rates+=("$rate")
        done
        webhook[${p}_$b]=$(median "${rates[@]}")
        echo "  => webhook, processes $p, batch $b: median $(fmt_int "${webhook[${p}_$b]}") events/s"
    done
    kill -TERM "$receiver_pid" 2>/dev/null || true
    wait "$receiver_pid" 2>/dev/null || true
    receiver_pid=
}

webhook_summary_rows() {
    local pb p b
    for pb in $webhook_configs; do
        p=${pb%%:*}
        b=${pb##*:}
        echo "| Dispatchbox --drain to a webhook (local receiver, 200 at once), $events events (incl. start-up) | $p | $b | $(fmt_int "${webhook[${p}_$b]}") events/s | $(ratio "${webhook[${p}_$b]}" "${ceiling[two_$b]}") | - |"
    done
}
