#!/usr/bin/env python3
"""Enqueue Rivulet tasks from Python with plain redis-py commands (wire format v1).

    pip install redis
    python3 examples/python_producer.py --url redis://127.0.0.1:6379 --queue default \
        --kind resize --payload '{"width": 640}' --count 3 [--priority high] [--shards 1]

Each task is one XADD of flat string fields to the stream of its shard; see
docs/wire-format.md. It prints one task id per line.
"""
import argparse
import json
import os
import time

import redis

PRIORITIES = ["high", "normal", "low"]


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


def enqueue(r: redis.Redis, queue: str, kind: str, payload: bytes, priority: str = "normal",
            shards: int = 1, codec: str = "json") -> str:
    # Register the layout once so workers, the CLI and the autoscaler can find the queue.
    layout = json.dumps({"priorities": PRIORITIES, "shards": shards}, separators=(",", ":"))
    r.hsetnx("rivulet:queues", queue, layout)
    task_id = new_task_id()
    tag = "{%s:%s:%d}" % (queue, priority, shard_for(task_id, shards))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    ap.add_argument("--queue", default="default")
    ap.add_argument("--kind", default="noop")
    ap.add_argument("--payload", default="{}", help="JSON payload; $i is replaced by the task's index")
    ap.add_argument("--priority", default="normal", choices=PRIORITIES)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    r = redis.Redis.from_url(args.url)
    for i in range(args.count):
        # "$i" in the payload becomes the task's index, for demos and tests.
        payload = args.payload.replace("$i", str(i))
        json.loads(payload)  # fail early on a payload that is not JSON
        print(enqueue(r, args.queue, args.kind, payload.encode(), args.priority, args.shards))


if __name__ == "__main__":
    main()
