#!/usr/bin/env python3
"""Enqueue Rivulet tasks from Python with plain redis-py commands (wire format v1).

    pip install redis
    python3 examples/python_producer.py --url redis://127.0.0.1:6379 --queue default \
        --kind resize --payload '{"width": 640}' --count 3 [--priority high] [--shards 1]

Each task is one XADD of flat string fields to the stream of its shard; see
docs/wire-format.md. The queue's layout (priorities, shards) is the one recorded in
`rivulet:queues`; --shards only chooses it for a queue not recorded yet. It prints one task
id per line. Exit codes: 0 done, 1 Redis failed, 2 bad arguments.
"""
import argparse
import json
import os
import re
import sys
import time

import redis

DEFAULT_PRIORITIES = ["high", "normal", "low"]
QUEUE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as the Rust side validates it


class Usage(Exception):
    """A bad argument: reported without a traceback, exit code 2."""


def shard_for(task_id: str, shards: int) -> int:
    """FNV-1a (64 bit) of the task id modulo the shard count, as the Rust client does."""
    h = 0xCBF29CE484222325
    for b in task_id.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % shards


def new_task_id() -> str:
    # 12 hex digits of ms, 16 random hex digits: sortable and unique, like TaskId::generate.
    return "%012x%s" % (int(time.time() * 1000), os.urandom(8).hex())


def layout_of(r: redis.Redis, queue: str, shards=None) -> dict:
    """The queue's recorded layout; records one (default priorities, `shards` or 1) if none is.

    Writing to a layout other than the recorded one would put tasks on shards no worker reads,
    so a --shards that disagrees with the record is an error, as in the Rust client.
    """
    if not QUEUE_NAME.match(queue):
        raise Usage("invalid queue name %r: 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'" % queue)
    wanted = {"priorities": DEFAULT_PRIORITIES, "shards": shards or 1}
    r.hsetnx("rivulet:queues", queue, json.dumps(wanted, separators=(",", ":")))
    layout = json.loads(r.hget("rivulet:queues", queue))
    if shards is not None and layout["shards"] != shards:
        raise Usage("queue %s is recorded with %d shard(s) per priority, not %d"
                    % (queue, layout["shards"], shards))
    return layout


def enqueue(r: redis.Redis, queue: str, layout: dict, kind: str, payload: bytes,
            priority: str = "normal", codec: str = "json") -> str:
    if priority not in layout["priorities"]:
        raise Usage("queue %s has no priority %r (it has %s)"
                    % (queue, priority, ", ".join(layout["priorities"])))
    if not kind.strip():
        raise Usage("the kind must not be empty")
    task_id = new_task_id()
    tag = "{%s:%s:%d}" % (queue, priority, shard_for(task_id, layout["shards"]))
    fields = {
        "id": task_id,
        "kind": kind,
        "payload": payload,
        "codec": codec,
        "enqueued_at": str(int(time.time() * 1000)),
        "attempt": "0",
    }
    pipe = r.pipeline(transaction=False)
    pipe.xadd("rivulet:%s:stream" % tag, fields)  # never with MAXLEN: it would drop tasks
    pipe.hincrby("rivulet:%s:stats" % tag, "enqueued", 1)
    pipe.execute()
    return task_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    ap.add_argument("--queue", default="default")
    ap.add_argument("--kind", default="noop")
    ap.add_argument("--payload", default="{}", help="JSON payload; $i is replaced by the task's index")
    ap.add_argument("--priority", default="normal")
    ap.add_argument("--shards", type=int, default=None,
                    help="shards per priority for a queue not recorded yet (default 1)")
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    try:
        if args.shards is not None and not 1 <= args.shards <= 1024:
            raise Usage("--shards must be between 1 and 1024")
        r = redis.Redis.from_url(args.url)
        layout = layout_of(r, args.queue, args.shards)
        for i in range(args.count):
            # "$i" in the payload becomes the task's index, for demos and tests.
            payload = args.payload.replace("$i", str(i))
            try:
                json.loads(payload)
            except ValueError as e:
                raise Usage("--payload is not JSON: %s" % e) from None
            print(enqueue(r, args.queue, layout, args.kind, payload.encode(), args.priority))
    except Usage as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except redis.RedisError as e:
        shown = re.sub(r"//([^:/@]*):.*@", r"//\1:***@", args.url)  # no password in messages
        print("error: Redis at %s: %s" % (shown, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
