#!/usr/bin/env bash
# An example publisher for Dispatchbox's `pipe:` target (docs/guide.md: "Routes and handlers", `pipe:`).
#
#   dispatchbox --route 'order.*=pipe:/path/to/pipe-publisher-example.sh'
#
# Dispatchbox starts this once per route in each worker (--pipe-processes) and keeps it running.
# It reads one event per line on stdin ({"id":N,"event_type":...,"payload":{...}}) and must
# answer exactly one line per event on stdout. Answers may come in any order; this loop answers
# one event at a time, in order, which is always allowed (the events Dispatchbox writes ahead,
# up to --pipe-window, wait in the pipe). A streaming publisher: examples/bridges/.
#
#   ok ID                          the event is delivered (the broker confirmed it)
#   retry ID [REASON]              try again later (with backoff)
#   retry ID after=SECS [REASON]   try again, not sooner than SECS seconds
#   dead ID [REASON]               never deliver this event (it goes to `dead`)
#
# Nothing else may go to stdout: send logs to stderr (each line is logged by Dispatchbox at INFO,
# and its tail is stored as the event's error when the process fails). At EOF on stdin (Dispatchbox stops), finish
# and exit; after 2 s it gets SIGTERM, one more second then SIGKILL.
#
# To connect a broker with real acknowledgements, replace `publish` with a call that returns
# only once the broker confirmed the message (Kafka: acks=all and wait for the delivery report;
# NATS JetStream: wait for the PubAck; RabbitMQ: publisher confirms). A long-lived client
# (e.g. a Python or Go program with the same read-line / answer-line loop) avoids a connection
# per event; this script only shows the protocol.
set -u

# Publishes one event line; returns 0 when the broker confirmed it, 75 for a temporary
# failure, anything else for a message the broker will never accept. Here: a stand-in that
# appends to a file when PIPE_EXAMPLE_OUT is set.
publish() {
    if [[ -n ${PIPE_EXAMPLE_OUT:-} ]]; then
        printf '%s\n' "$1" >>"$PIPE_EXAMPLE_OUT" || return 75
    fi
    return 0
}

while IFS= read -r line; do
    # The line starts with {"id":N, — take the id without a JSON parser or a fork.
    if [[ $line =~ ^\{\"id\":([0-9]+), ]]; then
        id=${BASH_REMATCH[1]}
    else
        echo "pipe-publisher-example: not an event line: ${line:0:200}" >&2
        exit 1 # Dispatchbox restarts us and retries the event
    fi
    rc=0
    publish "$line" || rc=$?
    case $rc in
    0) echo "ok $id" ;;
    75) echo "retry $id broker unavailable" ;;
    *) echo "dead $id rejected by the broker (status $rc)" ;;
    esac
done
