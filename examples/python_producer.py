#!/usr/bin/env python3
"""Enqueue Rivulet tasks from the command line with the `rivulet` Python package.

    pip install ./clients/python
    worker-cli functions install          # once per Redis (every worker also does it at start)
    python3 examples/python_producer.py --url redis://127.0.0.1:6379 --queue default \
        --kind resize --payload '{"width": 640}' --count 3 [--priority high] [--shards 1]

Each task goes through the engine's own `rivulet_v1_enqueue` function (docs/wire-format.md,
docs/python.md). The queue's layout (priorities, shards) is the one recorded in
`rivulet:queues`; --shards only chooses it for a queue not recorded yet and is refused when it
disagrees. It prints one task id per line. Exit codes: 0 done, 1 Redis failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import redis

from rivulet import Client, ConfigError, LayoutMismatch, RivuletError, Task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    ap.add_argument("--queue", default="default")
    ap.add_argument("--kind", default="noop")
    ap.add_argument("--payload", default="{}", help="JSON payload; $i is replaced by the task's index")
    ap.add_argument("--priority", default=None)
    ap.add_argument("--shards", type=int, default=None, help="shards per priority for a queue not recorded yet (default 1)")
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    client = Client.from_url(args.url)
    try:
        if args.shards is not None:
            try:
                client.declare(args.queue, shards=args.shards)
            except LayoutMismatch:
                raise ConfigError(
                    "queue %s is recorded with %d shard(s), not --shards %d"
                    % (args.queue, client.layout(args.queue).shards, args.shards)
                ) from None
        tasks = []
        for i in range(args.count):
            # "$i" in the payload becomes the task's index, for demos and tests.
            text = args.payload.replace("$i", str(i))
            try:
                payload = json.loads(text)
            except ValueError as e:
                raise ConfigError("--payload is not JSON: %s" % e) from None
            tasks.append(Task(args.kind, payload, priority=args.priority))
        for handle in client.enqueue_many(args.queue, tasks):
            print(handle.id)
    except ConfigError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except (redis.RedisError, RivuletError) as e:
        shown = re.sub(r"//([^:/@]*):.*@", r"//\1:***@", args.url)  # no password in messages
        print("error: Redis at %s: %s" % (shown, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
