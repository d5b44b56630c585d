#!/usr/bin/env python3
"""A Dispatchbox `pipe:` bridge to RabbitMQ (pika, publisher confirms), streaming.

    dispatchbox --route '*=pipe:/opt/venv/bin/python /opt/bridges/rabbitmq.py \
        --url amqp://user:pass@mq.internal:5672/%2F --queue outbox'

Reads event lines ({"id":N,...}) from stdin and publishes each one, unchanged, as a persistent
message (delivery_mode 2, message_id = the event id, content_type JSON, mandatory) on a
channel in confirm mode. With --queue only, messages go through the default exchange to that
durable queue; with --exchange, to that durable topic exchange with routing key --routing-key
({event_type} is replaced by the event's type), and a --queue given too is bound to it with
"#". Both are declared at start (durable).

Many publishes are outstanding at once (at most --window). The broker confirms them by delivery
tag, one by one or many at a time (multiple=True: every tag up to this one); the bridge maps
tags back to event ids and answers, in the order the broker confirms:
  ok ID              confirmed (basic.ack): the message is on disk in the queue(s)
  unavailable ID R   the connection was lost before the confirm, or there is none (the broker
                     is down: Dispatchbox pauses the route after a few, and probes it)
  retry ID REASON    nacked, or returned as unroutable
All answers ready at the same moment go out in one write; none is held back while idle.

RabbitMQ has NO deduplication: an event whose confirm was lost (the connection dropped after
the broker stored it) is sent again by Dispatchbox and is then in the queue twice. Consumers
dedupe by message_id (the event id).

Connection loss (the simplest correct choice): every unconfirmed event is answered
`unavailable` at once (Dispatchbox sends it again later) and the bridge reconnects in the
background, every 0.5 s growing to 5 s; lines that arrive meanwhile are answered `unavailable`
straight away. The bridge does not exit: an exit while the broker is down would cost the events
it had read an attempt each, and look like a command that cannot start. Only if the very first
connection fails does it exit 1.

At EOF on stdin (Dispatchbox stops) it waits for every outstanding confirm, answers, closes
the connection and exits 0. Logs go to stderr; nothing but answers goes to stdout.

--from-file FILE publishes the lines of FILE the same way without Dispatchbox and prints one
JSON line of counts and the rate: the bridge's own ceiling, for scripts/bench-broker.sh.
"""

import argparse
import asyncio
import collections
import json
import logging
import os
import stat
import sys
import time

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

log = logging.getLogger("rabbitmq")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                   help="AMQP URL (default: $AMQP_URL or %(default)s)")
    p.add_argument("--exchange", default="", help="durable topic exchange (default: none)")
    p.add_argument("--queue", default="", help="durable queue (bound with # to --exchange)")
    p.add_argument("--routing-key", default="{event_type}",
                   help="with --exchange; {event_type} is replaced (default %(default)s)")
    p.add_argument("--window", type=int, default=10000,
                   help="most publishes awaiting their confirm (default %(default)s)")
    p.add_argument("--from-file", metavar="FILE",
                   help="publish FILE's lines, print counts and the rate as JSON, exit")
    args = p.parse_args()
    if args.window < 1:
        p.error("--window must be at least 1")
    if not args.exchange and not args.queue:
        p.error("give --queue, --exchange or both")
    return args


def event_id(line):
    """The id from a line starting with {"id":N, (no JSON parser needed); None if not."""
    if not line.startswith(b'{"id":'):
        return None
    end = line.find(b",", 6)
    digits = line[6:end] if end > 0 else b""
    return digits.decode() if digits.isdigit() else None


class Answers:
    """Answer lines for stdout, written together once per turn of the event loop."""

    def __init__(self, loop, write):
        self.loop, self.write, self.lines, self.scheduled = loop, write, [], False

    def add(self, text):
        self.lines.append(text)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self):
        self.scheduled = False
        if self.lines:
            data = ("\n".join(self.lines) + "\n").encode()
            self.lines.clear()
            self.write(data)


def wait_for(loop, start, timeout=10.0):
    """Runs pika's `start(callback)` and awaits the callback's argument (at most `timeout` s)."""
    future = loop.create_future()
    start(lambda *result: future.done() or future.set_result(result))
    return asyncio.wait_for(future, timeout)


class Publisher:
    """One connection and confirm-mode channel. Calls `done(id, None, "")` when the broker
    confirmed an event and `done(id, answer, reason)` when it did not (answer `retry`: it
    refused this message; `unavailable`: it is out of reach), exactly once per event."""

    def __init__(self, args, done):
        self.args, self.done = args, done
        self.loop = asyncio.get_running_loop()
        self.conn = self.channel = None
        self.pending = collections.OrderedDict()  # delivery tag -> event id, in tag order
        self.returned = set()  # ids returned as unroutable, answered when confirmed
        self.next_tag = 0
        self.stopping = False
        self.reconnecting = None
        self.room = asyncio.Event()
        self.room.set()
        self.idle = asyncio.Event()
        self.idle.set()

    async def connect(self):
        opened = self.loop.create_future()
        AsyncioConnection(
            pika.URLParameters(self.args.url), custom_ioloop=self.loop,
            on_open_callback=lambda c: opened.done() or opened.set_result(c),
            on_open_error_callback=lambda c, e: opened.done() or opened.set_exception(
                ConnectionError(f"cannot connect to RabbitMQ: {e!r}")),
            on_close_callback=lambda c, reason: self.lost(f"connection closed: {reason}"))
        conn = await asyncio.wait_for(opened, 30)
        try:
            (channel,) = await wait_for(self.loop, lambda cb: conn.channel(on_open_callback=cb))
            channel.add_on_close_callback(lambda ch, reason: self.channel_closed(conn, reason))
            channel.add_on_return_callback(self.on_return)
            await wait_for(self.loop, lambda cb: channel.confirm_delivery(self.on_confirm, callback=cb))
            await self.declare(channel)
        except BaseException:
            conn.close()
            raise
        self.conn, self.channel, self.next_tag = conn, channel, 0
        log.info("connected to RabbitMQ; publishing to exchange %r", self.args.exchange)

    async def declare(self, channel):
        a = self.args
        if a.exchange:
            await wait_for(self.loop, lambda cb: channel.exchange_declare(
                a.exchange, "topic", durable=True, callback=cb))
        if a.queue:
            await wait_for(self.loop, lambda cb: channel.queue_declare(a.queue, durable=True, callback=cb))
        if a.queue and a.exchange:
            await wait_for(self.loop, lambda cb: channel.queue_bind(a.queue, a.exchange, "#", callback=cb))

    def routing_key(self, line):
        if not self.args.exchange:
            return self.args.queue
        if "{event_type}" not in self.args.routing_key:
            return self.args.routing_key
        return self.args.routing_key.replace("{event_type}", json.loads(line).get("event_type") or "")

    async def publish(self, eid, line):
        key = self.routing_key(line)
        while len(self.pending) >= self.args.window:
            self.room.clear()
            await self.room.wait()
        if self.channel is None:
            self.done(eid, "unavailable", "no connection to RabbitMQ (reconnecting)")
            return
        props = pika.BasicProperties(message_id=eid, delivery_mode=2, content_type="application/json")
        self.next_tag += 1
        self.pending[self.next_tag] = eid
        self.idle.clear()
        try:
            self.channel.basic_publish(self.args.exchange, key, line, props, mandatory=True)
        except Exception as e:  # noqa: BLE001 - a closed channel: the close callback follows
            self.settle([self.pending.pop(self.next_tag)], "unavailable",
                        f"publish failed: {type(e).__name__}: {e}")

    def on_return(self, _channel, method, props, _body):
        self.returned.add(props.message_id)
        log.warning("event %s returned: %s (routing key %r)", props.message_id, method.reply_text,
                    method.routing_key)

    def on_confirm(self, frame):
        method = frame.method
        tag = method.delivery_tag
        ids = []
        if method.multiple:
            while self.pending and next(iter(self.pending)) <= tag:
                ids.append(self.pending.popitem(last=False)[1])
        elif tag in self.pending:
            ids.append(self.pending.pop(tag))
        if isinstance(method, pika.spec.Basic.Ack):
            unroutable = [i for i in ids if i in self.returned]
            self.returned.difference_update(unroutable)
            self.settle([i for i in ids if i not in unroutable], None, "")
            self.settle(unroutable, "retry", "unroutable: no queue bound for its routing key")
        else:
            self.settle(ids, "retry", "nacked by RabbitMQ")

    def settle(self, ids, answer, reason):
        for eid in ids:
            self.done(eid, answer, reason)
        self.room.set()
        if not self.pending:
            self.idle.set()

    def channel_closed(self, conn, reason):
        if not self.stopping:
            log.warning("channel closed: %s", reason)
        if conn.is_open:
            conn.close()  # one way back: the connection's close callback reconnects

    def lost(self, reason):
        was_open, self.channel = self.channel is not None, None
        ids = list(self.pending.values())
        self.pending.clear()
        self.returned.clear()
        self.settle(ids, "unavailable", reason)
        if was_open and not self.stopping:
            log.warning("%s; %d unconfirmed answered unavailable; reconnecting", reason, len(ids))
            self.reconnecting = self.loop.create_task(self.reconnect())

    async def reconnect(self):
        delay = 0.5
        while not self.stopping:
            await asyncio.sleep(delay)
            try:
                await self.connect()
                return
            except (OSError, ConnectionError, asyncio.TimeoutError, pika.exceptions.AMQPError) as e:
                log.warning("reconnect failed: %s", e)
                delay = min(delay * 2, 5.0)

    async def close(self):
        self.stopping = True
        if self.reconnecting:
            self.reconnecting.cancel()
        if self.channel is not None:
            closed = self.loop.create_future()
            self.conn.add_on_close_callback(lambda *_: closed.done() or closed.set_result(None))
            self.conn.close()
            await asyncio.wait_for(closed, 10)


def is_pipe(stream):
    """A pipe or socket (what Dispatchbox gives): the event loop can watch it."""
    mode = os.fstat(stream.fileno()).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def read_lines(loop):
    """Yields stdin's lines (bytes, without the newline) as they arrive, until EOF."""
    if is_pipe(sys.stdin):
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
        read = lambda: reader.read(1 << 16)  # noqa: E731
    else:  # a file, /dev/null, a terminal: blocking reads in a thread
        read = lambda: loop.run_in_executor(None, sys.stdin.buffer.read1, 1 << 16)  # noqa: E731
    rest = b""
    while True:
        chunk = await read()
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line
    if rest:
        yield rest


async def stdout_writer(loop):
    """A function writing bytes to stdout without blocking the loop (a pipe), or plainly."""
    if is_pipe(sys.stdout):
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
        return transport.write
    out = sys.stdout.buffer
    return lambda data: (out.write(data), out.flush())


async def bridge(args):
    loop = asyncio.get_running_loop()
    answers = Answers(loop, await stdout_writer(loop))

    def done(eid, answer, reason):
        if answer is None:
            answers.add(f"ok {eid}")
        else:
            reason = " ".join(reason.split())  # one line
            log.warning("event %s: %s: %s", eid, answer, reason)
            answers.add(f"{answer} {eid} {reason}")

    publisher = Publisher(args, done)
    await publisher.connect()
    async for line in read_lines(loop):
        eid = event_id(line)
        if eid is None:
            log.error("not an event line: %r", line[:200])
            return 1  # Dispatchbox restarts the bridge and retries what was outstanding
        await publisher.publish(eid, line)
    await publisher.idle.wait()
    answers.flush()
    await publisher.close()
    return 0


async def from_file(args):
    with open(args.from_file, "rb") as f:
        lines = [line for line in f.read().split(b"\n") if line]
    counts = {"ok": 0, "failed": 0}

    def done(_eid, answer, _reason):
        counts["ok" if answer is None else "failed"] += 1

    publisher = Publisher(args, done)
    await publisher.connect()
    start = time.monotonic()
    for line in lines:
        await publisher.publish(event_id(line) or "0", line)
    await publisher.idle.wait()
    seconds = time.monotonic() - start
    await publisher.close()
    print(json.dumps({"events": len(lines), **counts, "seconds": round(seconds, 3),
                      "events_per_s": round(len(lines) / seconds, 1) if seconds else None}))
    return 0 if counts["failed"] == 0 else 1


def main():
    args = parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="rabbitmq[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)  # its INFO is one line per step
    try:
        return asyncio.run(from_file(args) if args.from_file else bridge(args))
    except (OSError, ConnectionError, asyncio.TimeoutError, pika.exceptions.AMQPError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
