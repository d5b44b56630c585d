#!/usr/bin/env python3
"""Counts what reached the broker, by message id: one JSON line on stdout.

    count.py nats --server nats://127.0.0.1:4222 --stream OUTBOX --ids 1-20000
    count.py rabbitmq --url amqp://guest:guest@127.0.0.1:5672/%2F --queue outbox --ids 1-20000

NATS: reads every message of the stream (an ordered consumer, headers only; the stream is left
as it is) and takes the id from the Nats-Msg-Id header. RabbitMQ: consumes every message in the
queue (they are removed: run it on a queue of its own) and takes the id from message_id.

Prints {"delivered": messages read, "unique": distinct ids, "duplicates": delivered - unique,
"lost": ids of --ids never seen, "unexpected": messages whose id is outside --ids or missing,
"first_lost": [up to 10 ids], "first_duplicates": [up to 10 ids]}.
JetStream drops a resend with a Nats-Msg-Id it stored within the duplicate window; RabbitMQ has
no such dedup: its consumers dedupe by message_id.
"""

import argparse
import asyncio
import collections
import json
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("broker", choices=["nats", "rabbitmq"])
    p.add_argument("--server", default="nats://127.0.0.1:4222", help="NATS URL")
    p.add_argument("--stream", default="OUTBOX", help="JetStream stream")
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F", help="AMQP URL")
    p.add_argument("--queue", default="outbox", help="RabbitMQ queue")
    p.add_argument("--ids", required=True, metavar="FIRST-LAST", help="the ids expected")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds without a message before giving up (default %(default)s)")
    args = p.parse_args()
    first, _, last = args.ids.partition("-")
    try:
        args.first, args.last = int(first), int(last)
    except ValueError:
        p.error(f"--ids: want FIRST-LAST, got {args.ids!r}")
    return args


async def nats_ids(args):
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await nats.connect(args.server)
    js = nc.jetstream()
    total = (await js.stream_info(args.stream)).state.messages
    ids = []
    if total:
        sub = await js.subscribe(
            ">", stream=args.stream, ordered_consumer=True,
            config=ConsumerConfig(headers_only=True, deliver_policy=DeliverPolicy.ALL))
        while len(ids) < total:
            msg = await sub.next_msg(timeout=args.timeout)
            ids.append((msg.headers or {}).get("Nats-Msg-Id"))
        await sub.unsubscribe()
    await nc.close()
    return ids


def rabbitmq_ids(args):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = conn.channel()
    total = channel.queue_declare(args.queue, passive=True).method.message_count
    channel.basic_qos(prefetch_count=1000)
    ids = []
    for method, props, _body in channel.consume(args.queue, inactivity_timeout=args.timeout) if total else ():
        if method is None:
            break  # nothing more within the timeout
        ids.append(props.message_id)
        channel.basic_ack(method.delivery_tag)
        if len(ids) >= total and channel.get_waiting_message_count() == 0:
            break
    channel.cancel()
    conn.close()
    return ids


def report(args, ids):
    seen = collections.Counter(ids)
    expected = range(args.first, args.last + 1)
    in_range = {i for i in seen if i is not None and i.isdigit() and int(i) in expected}
    lost = [i for i in expected if str(i) not in in_range]
    twice = sorted((int(i) for i in in_range if seen[i] > 1))
    return {
        "delivered": len(ids),
        "unique": len(seen),
        "duplicates": len(ids) - len(seen),
        "lost": len(lost),
        "unexpected": sum(n for i, n in seen.items() if i not in in_range),
        "first_lost": lost[:10],
        "first_duplicates": twice[:10],
    }


def main():
    args = parse_args()
    ids = asyncio.run(nats_ids(args)) if args.broker == "nats" else rabbitmq_ids(args)
    print(json.dumps(report(args, ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
