#!/usr/bin/env python3
"""The Python producer's enqueue rate, single and batched, beside the bare-Redis ceiling of the
same run.

    cargo build -p worker-cli && pip install ./clients/python
    python3 benches/python_enqueue.py [--single 5000] [--batched 50000] [--batch 500]

Starts its own redis-server (loopback, free port, temp dir), loads the rivulet_v1 functions with
`worker-cli functions install` (RIVULET_WORKER_CLI overrides target/debug/worker-cli), then
times, on fresh queues:
  - single:  Client.enqueue, one round trip per task (tracked: record + event, the default);
  - batched: Client.enqueue_many in batches of --batch (one pipeline per batch);
  - batched, retention=0 (no record: the cheapest enqueue);
  - ceiling: redis-py pipelined plain XADDs of the same fields (what Redis and redis-py do
    without the engine's script: the bare-Redis ceiling).
Prints tasks/s and Redis CPU per task (INFO's used_cpu_sys + used_cpu_user, before and after).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import redis

from rivulet import Client, Task

ROOT = Path(__file__).resolve().parents[1]


def redis_cpu(r: "redis.Redis") -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def timed(r: "redis.Redis", n: int, run: Callable[[], None]) -> tuple[float, float]:
    cpu0, t0 = redis_cpu(r), time.perf_counter()
    run()
    dt, cpu = time.perf_counter() - t0, redis_cpu(r) - cpu0
    return n / dt, cpu / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", type=int, default=5000)
    ap.add_argument("--batched", type=int, default=50000)
    ap.add_argument("--batch", type=int, default=500)
    a = ap.parse_args()
    if min(a.single, a.batched, a.batch) < 1:
        ap.error("counts must be >= 1")
    cli = os.environ.get("RIVULET_WORKER_CLI") or str(ROOT / "target" / "debug" / "worker-cli")
    d = tempfile.mkdtemp(prefix="rivulet-bench-py-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}"
        r = redis.Redis(port=port)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        subprocess.run([cli, "--redis-url", url, "functions", "install"], check=True, capture_output=True)
        c = Client.from_url(url)
        payload = {"symbol": "ACME", "days": 30, "pad": "x" * 20}
        rows = []

        def single() -> None:
            for _ in range(a.single):
                c.enqueue("bench-single", "noop", payload)

        rows.append(("single (enqueue, 1 round trip per task)", a.single, *timed(r, a.single, single)))

        def batched(retention: float | None, q: str) -> Callable[[], None]:
            def run() -> None:
                for i in range(0, a.batched, a.batch):
                    n = min(a.batch, a.batched - i)
                    c.enqueue_many(q, [Task("noop", payload, retention=retention) for _ in range(n)])

            return run

        rows.append((f"batched (enqueue_many x {a.batch})", a.batched, *timed(r, a.batched, batched(None, "bench-batch"))))
        rows.append((f"batched, retention=0 (no record)", a.batched, *timed(r, a.batched, batched(0, "bench-batch0"))))

        def ceiling() -> None:
            import json

            body = json.dumps(payload)
            for i in range(0, a.batched, a.batch):
                p = r.pipeline(transaction=False)
                for _ in range(min(a.batch, a.batched - i)):
                    p.xadd("rivulet:{bench-raw:normal:0}:stream", {"id": os.urandom(8).hex(), "kind": "noop", "payload": body})
                p.execute()

        rows.append((f"ceiling: bare XADD, pipelined x {a.batch}", a.batched, *timed(r, a.batched, ceiling)))
        print(f"{'':45} {'tasks':>7} {'tasks/s':>9} {'Redis CPU/task':>15}")
        for name, n, rate, cpu in rows:
            print(f"{name:45} {n:7} {rate:9.0f} {cpu:12.1f} µs")
        try:
            import hiredis  # noqa: F401

            packer = "hiredis"
        except ImportError:
            packer = "pure-Python packing (pip install 'rivulet[hiredis]' for C)"
        print(
            f"(python {sys.version.split()[0]}, redis-py {redis.__version__} with {packer}, "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
        )
        c.close()
        return 0
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
