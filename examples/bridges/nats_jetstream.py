#!/usr/bin/env python3
"""A Dispatchbox `pipe:` bridge to NATS JetStream (nats-py), streaming.

    dispatchbox --route '*=pipe:/opt/venv/bin/python /opt/bridges/nats_jetstream.py \
        --server nats://127.0.0.1:4222 --subject outbox.{event_type} --stream OUTBOX'

Reads event lines ({"id":N,...}) from stdin and publishes each one, unchanged, to a subject
(`--subject`; `{event_type}` is replaced by the event's type) with the header
`Nats-Msg-Id: <event id>`. JetStream drops a message whose Nats-Msg-Id it has already stored
within the stream's duplicate window (2 minutes by default), so an event that Dispatchbox
sends again after a crash or a timeout is stored once.

Many publishes are outstanding at once (at most --window; Dispatchbox's --pipe-window bounds
them too). Each answer names its event and is written when the broker has answered:
  ok ID              on the PubAck (the message is stored; also for a dropped duplicate)
  unavailable ID R   not connected, no stream answered, or no PubAck within --ack-timeout
                     seconds (checked every tenth of it, at most 0.5 s apart): the broker
                     is down (Dispatchbox pauses the route after a few such answers, and
                     probes it)
  retry ID REASON    the broker refused this message (e.g. no stream for its subject)
Answers go out in the order the broker acknowledges, not the order of the lines; all those
ready at the same moment are written in one write, none is held back while the bridge waits.

Connection loss: nats-py reconnects by itself (forever, every 0.5 s) and resends what it had
buffered; publishes that get no PubAck in time are answered `unavailable`, and Dispatchbox
sends them again (same Nats-Msg-Id: no duplicate in the stream). If the first connection fails the
bridge exits 1: Dispatchbox reports a command that exits at start-up.

At EOF on stdin (Dispatchbox stops) it waits for every outstanding PubAck (or its timeout),
answers, and exits 0. Logs go to stderr; nothing but answers goes to stdout.

--from-file FILE publishes the lines of FILE the same way without Dispatchbox and prints one
JSON line of counts and the rate: the bridge's own ceiling, for scripts/bench-broker.sh.

--stream NAME creates the stream (file storage, the subjects of --subject) if it is missing.
"""

import argparse
import asyncio
import json
import logging
import os
import stat
import sys
import time

import nats
from nats.js.api import StorageType, StreamConfig

log = logging.getLogger("nats_jetstream")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
                   help="NATS URL(s), comma-separated (default: $NATS_URL or %(default)s)")
    p.add_argument("--subject", default="outbox.{event_type}",
                   help="subject; {event_type} is replaced by the event's type (default %(default)s)")
    p.add_argument("--stream", help="create this stream for the subject(s) if it does not exist")
    p.add_argument("--window", type=int, default=10000,
                   help="most publishes awaiting their PubAck (default %(default)s)")
    p.add_argument("--ack-timeout", type=float, default=5.0,
                   help="seconds to wait for a PubAck before answering unavailable (default %(default)s)")
    p.add_argument("--from-file", metavar="FILE",
                   help="publish FILE's lines, print counts and the rate as JSON, exit")
    args = p.parse_args()
    if args.window < 1:
        p.error("--window must be at least 1")
    return args


def event_id(line):
    """The id from a line starting with {"id":N, (no JSON parser needed); None if not."""
    if not line.startswith(b'{"id":'):
        return None
    end = line.find(b",", 6)
    digits = line[6:end] if end > 0 else b""
    return digits.decode() if digits.isdigit() else None


def event_type_of(line):
    """The event_type, which Dispatchbox writes right after the id; JSON-parsed only when it
    holds an escape (or the line is laid out otherwise): a full parse costs ~10% of the CPU."""
    start = line.find(b',"event_type":"')
    end = line.find(b'"', start + 15) if start > 0 else -1
    if end > 0 and b"\\" not in line[start + 15:end]:
        return line[start + 15:end].decode()
    return json.loads(line).get("event_type") or ""


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


class Publisher:
    """Publishes lines with Nats-Msg-Id, keeps at most `window` unacknowledged, and calls
    `done(id, None, "")` on the PubAck or `done(id, answer, reason)` on a failure (answer
    `unavailable` or `retry`), exactly once per line."""

    def __init__(self, js, args, done):
        self.js, self.args, self.done = js, args, done
        self.loop = asyncio.get_running_loop()
        self.outstanding = 0
        self.room = asyncio.Event()
        self.room.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.needs_type = "{event_type}" in args.subject
        # PubAck futures awaited -> when they are overdue, in publish order (so the oldest is
        # first); one sweep a fraction of --ack-timeout apart fails the overdue ones. A timer
        # per publish would cost ~10% of the bridge's CPU.
        self.due = {}
        self.sweeper = None
        self.sweep_every = min(0.5, args.ack_timeout / 10)

    def subject(self, line):
        if not self.needs_type:
            return self.args.subject
        event_type = event_type_of(line)
        if not event_type or any(c in event_type for c in " \t*>"):
            raise ValueError(f"event_type {event_type!r} cannot be part of a subject")
        return self.args.subject.replace("{event_type}", event_type)

    async def publish(self, eid, line):
        subject = self.subject(line)  # a ValueError here: the event is not counted
        while self.outstanding >= self.args.window:
            self.room.clear()
            await self.room.wait()
        self.outstanding += 1
        self.idle.clear()
        try:
            future = await self.js.publish_async(subject, line, headers={"Nats-Msg-Id": eid})
        except Exception as e:  # noqa: BLE001 - not connected, buffer full: the broker is away
            self.finish(eid, "unavailable", f"publish failed: {type(e).__name__}: {e}")
            return
        self.due[future] = self.loop.time() + self.args.ack_timeout
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.sweep_every, self.sweep)
        future.add_done_callback(lambda f: self.acked(eid, f))

    def sweep(self):
        """Fails the PubAcks overdue by now (their callbacks answer `unavailable`)."""
        now = self.loop.time()
        overdue = []
        for future, due in self.due.items():
            if due > now:
                break
            overdue.append(future)
        for future in overdue:
            if not future.done():
                future.set_exception(asyncio.TimeoutError())
        self.sweeper = self.loop.call_later(self.sweep_every, self.sweep) if self.due else None

    def acked(self, eid, future):
        self.due.pop(future, None)
        if future.cancelled():
            self.finish(eid, "unavailable", "publish cancelled")
        elif isinstance(future.exception(), asyncio.TimeoutError):
            self.finish(eid, "unavailable", f"no PubAck within {self.args.ack_timeout}s")
        elif isinstance(future.exception(), nats.js.errors.NoStreamResponseError):
            self.finish(eid, "unavailable", "no stream answered (JetStream down, or no stream for the subject)")
        elif future.exception() is not None:
            e = future.exception()
            self.finish(eid, "retry", f"{type(e).__name__}: {e}")
        else:
            self.finish(eid, None, "")

    def finish(self, eid, answer, reason):
        self.outstanding -= 1
        self.room.set()
        if self.outstanding == 0:
            self.idle.set()
        self.done(eid, answer, reason)


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


async def connect(args):
    """Connects (reconnecting forever later on); makes the stream if asked. Returns (nc, js)."""
    nc = None

    async def error_cb(e):
        log.warning("connection: %s: %s", type(e).__name__, e)

    async def disconnected_cb():
        if nc is not None and not nc.is_closed:
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected_cb():
        log.info("reconnected to NATS")

    # Reconnects forever once connected; the first connection gets 10 s (then exit 1).
    try:
        nc = await asyncio.wait_for(nats.connect(
            args.server.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            error_cb=error_cb, disconnected_cb=disconnected_cb, reconnected_cb=reconnected_cb), 10)
    except asyncio.TimeoutError:
        raise ConnectionError(f"no connection to NATS at {args.server} within 10 s") from None
    js = nc.jetstream(publish_async_max_pending=args.window)
    if args.stream:
        subjects = [args.subject.replace("{event_type}", ">")]
        try:
            await js.stream_info(args.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=args.stream, subjects=subjects,
                                             storage=StorageType.FILE))
            log.info("created stream %s for %s", args.stream, subjects[0])
    return nc, js


async def bridge(args):
    loop = asyncio.get_running_loop()
    answers = Answers(loop, await stdout_writer(loop))
    nc, js = await connect(args)

    def done(eid, answer, reason):
        if answer is None:
            answers.add(f"ok {eid}")
        else:
            reason = " ".join(reason.split())  # one line
            log.warning("event %s: %s: %s", eid, answer, reason)
            answers.add(f"{answer} {eid} {reason}")

    publisher = Publisher(js, args, done)
    async for line in read_lines(loop):
        eid = event_id(line)
        if eid is None:
            log.error("not an event line: %r", line[:200])
            return 1  # Dispatchbox restarts the bridge and retries what was outstanding
        try:
            await publisher.publish(eid, line)
        except ValueError as e:
            answers.add(f"dead {eid} {e}")
    await publisher.idle.wait()
    answers.flush()
    await nc.close()
    return 0


async def from_file(args):
    with open(args.from_file, "rb") as f:
        lines = [line for line in f.read().split(b"\n") if line]
    nc, js = await connect(args)
    counts = {"ok": 0, "failed": 0}

    def done(_eid, answer, _reason):
        counts["ok" if answer is None else "failed"] += 1

    publisher = Publisher(js, args, done)
    start = time.monotonic()
    for line in lines:
        await publisher.publish(event_id(line) or "0", line)
    await publisher.idle.wait()
    seconds = time.monotonic() - start
    await nc.close()
    print(json.dumps({"events": len(lines), **counts, "seconds": round(seconds, 3),
                      "events_per_s": round(len(lines) / seconds, 1) if seconds else None}))
    return 0 if counts["failed"] == 0 else 1


def main():
    args = parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="nats_jetstream[%(process)d] %(levelname)s %(message)s")
    try:
        return asyncio.run(from_file(args) if args.from_file else bridge(args))
    except (OSError, nats.errors.Error) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
