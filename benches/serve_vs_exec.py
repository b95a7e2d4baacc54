#!/usr/bin/env python3
"""No-op Python handlers through ``worker-cli --serve`` against ``--exec``, one worker process,
in the same run, beside the worker's built-in ``noop`` kind (no handler process at all: the
ceiling of one worker process on this machine, measured in the same run).

Usage (from the repository root; needs ``redis-server`` on PATH)::

    cargo build --release -p worker-cli
    python3 benches/serve_vs_exec.py --runs 3

It starts its own ``redis-server`` on a free loopback port. For each mode and run it fills a
fresh queue with N tasks (``worker-cli enqueue --count N``), resets Redis's statistics, and
runs one ``worker-cli work --max-tasks N`` (it takes exactly N tasks, drains and exits):

- ``builtin cC``: the built-in Rust ``noop`` kind, in process, ``-c C`` (64, and each
  ``--serve-concurrency`` value: the engine's own cost at that concurrency, without a handler
  process);
- ``serve cC``: ``--serve noop_py='python3 app.py' --serve-concurrency C -c C``, the handler
  module written with ``rivulet.handlers`` (``def noop(payload, ctx): return None``);
- ``exec``: ``--exec noop_py='python3 -c pass'`` (a new interpreter per task), at the worker's
  default concurrency for ``--exec`` (the CPU count).

Figures per mode: tasks/s from the first task's start (the handler process writes the time
when it takes its first task; for ``builtin`` and ``exec``, the worker's start) to the worker's
exit; Redis commands per task (``INFO commandstats``, every call inside a script counted, the
bench's own ``INFO`` and ``CONFIG`` excluded); Redis CPU per task (``used_cpu_user +
used_cpu_sys``); the worker process's own CPU per task (``/proc/<pid>/stat``, sampled until it
exits) and its children's (the handler processes, from ``wait4``). Medians of ``--runs``, with
min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

APP = """
import os, time
from rivulet import handlers

_first = []

@handlers.task("noop_py")
def noop(payload, ctx):
    if not _first:
        _first.append(time.time())
        with open(os.environ["BENCH_FIRST"], "w") as f:
            f.write(repr(_first[0]))
    return None

if __name__ == "__main__":
    handlers.serve()
"""


class Redis:
    """Just enough RESP for INFO and CONFIG."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def call(self, *args: str) -> Any:
        out = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
        )
        self.sock.sendall(out)
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data.decode()
        raise RuntimeError(f"unexpected reply {line!r}")

    def info(self, section: str) -> Dict[str, str]:
        out = {}
        for line in self.call("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command_calls(r: Redis) -> int:
    total = 0
    for k, v in r.info("commandstats").items():
        cmd = k.removeprefix("cmdstat_")
        if cmd in ("info", "config|resetstat", "config"):
            continue
        total += int(dict(p.split("=") for p in v.split(","))["calls"])
    return total


def redis_cpu(r: Redis) -> float:
    i = r.info("cpu")
    return float(i["used_cpu_user"]) + float(i["used_cpu_sys"])


def self_cpu(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the name: state is field 3, utime 14 and stime 15 (1-based): indexes 11 and 12 here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_mode(bin_: str, url: str, r: Redis, mode: str, n: int, conc: int, work: Path, run: int) -> Dict[str, float]:
    queue = f"bench-{mode.replace(' ', '-')}-{run}"
    kind = "noop" if mode.startswith("builtin") else "noop_py"
    env = dict(os.environ, REDIS_URL=url, RUST_LOG="warn",
               PYTHONPATH=os.pathsep.join([str(REPO / "clients" / "python"), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([bin_, "enqueue", "--queue", queue, "--kind", kind, "--payload", "{}", "--count", str(n),
                    "--json"], env=env, check=True, stdout=subprocess.DEVNULL)
    first_file = work / f"first-{queue}"
    env["BENCH_FIRST"] = str(first_file)
    args = [bin_, "work", "--queue", queue, "--max-tasks", str(n)]
    if mode.startswith("serve"):
        args += ["--serve", f"noop_py={sys.executable} {work / 'app.py'}", "--serve-concurrency", str(conc),
                 "-c", str(conc)]
    elif mode == "exec":
        args += ["--exec", f"noop_py={sys.executable} -c pass"]
    else:
        args += ["-c", str(conc)]
    r.call("CONFIG", "RESETSTAT")
    calls0, cpu0 = command_calls(r), redis_cpu(r)
    started = time.time()
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"{queue}.log", "wb"))
    own = 0.0
    status = None
    while status is None:
        sample = self_cpu(child.pid)
        if sample is not None:
            own = sample
        pid, st, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            status = st
            break
        time.sleep(0.05)
    ended = time.time()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode}: worker exited {status}; log: {work / (queue + '.log')}")
    total = usage.ru_utime + usage.ru_stime
    begin = float(first_file.read_text()) if first_file.exists() else started
    calls = command_calls(r) - calls0
    return {
        "tasks": n,
        "rate": n / (ended - begin),
        "commands_per_task": calls / n,
        "redis_cpu_us_per_task": (redis_cpu(r) - cpu0) / n * 1e6,
        "worker_cpu_us_per_task": own / n * 1e6,
        "handler_cpu_us_per_task": max(0.0, total - own) / n * 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tasks", type=int, default=20000, help="tasks per run for builtin and --serve")
    p.add_argument("--exec-tasks", type=int, default=200, help="tasks per run for --exec")
    p.add_argument("--serve-concurrency", default="1,16", help="comma-separated --serve-concurrency values")
    p.add_argument("--worker-cli", default=str(REPO / "target" / "release" / "worker-cli"))
    p.add_argument("--json", action="store_true", help="print the medians as JSON")
    a = p.parse_args()
    if not Path(a.worker_cli).exists():
        raise SystemExit(f"{a.worker_cli} not found: cargo build --release -p worker-cli")
    work = Path(tempfile.mkdtemp(prefix="rivulet-serve-bench-"))
    (work / "app.py").write_text(APP)
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                r = Redis(port)
                r.call("PING")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}"
        concs = [int(c) for c in a.serve_concurrency.split(",")]
        modes: List[Tuple[str, int, int]] = [("builtin c64", a.tasks, 64)]
        modes += [(f"builtin c{c}", a.tasks, c) for c in concs if c != 64]
        modes += [(f"serve c{c}", a.tasks, c) for c in concs]
        modes += [("exec", a.exec_tasks, 0)]
        results: Dict[str, List[Dict[str, float]]] = {m: [] for m, _, _ in modes}
        for run in range(a.runs):
            # Interleaved, so a slower moment of a shared machine hits every mode alike.
            for mode, n, conc in modes:
                res = run_mode(a.worker_cli, url, r, mode, n, conc, work, run)
                results[mode].append(res)
                print(f"run {run + 1} {mode:>11}: {res['rate']:>9,.0f} tasks/s", file=sys.stderr)
        keys = ["rate", "commands_per_task", "redis_cpu_us_per_task", "worker_cpu_us_per_task",
                "handler_cpu_us_per_task"]
        summary = {m: {k: [statistics.median(x[k] for x in rs), min(x[k] for x in rs), max(x[k] for x in rs)]
                       for k in keys} for m, rs in results.items()}
        if a.json:
            print(json.dumps(summary, indent=1))
            return
        print(f"median (min-max) of {a.runs} runs; load average {os.getloadavg()[0]:.1f}")
        print(f"{'mode':>11} | {'tasks/s':>26} | {'cmds/task':>9} | {'Redis CPU µs/task':>17} | "
              f"{'worker CPU µs/task':>18} | {'handler CPU µs/task':>19}")
        for m, s in summary.items():
            rate = f"{s['rate'][0]:,.0f} ({s['rate'][1]:,.0f}-{s['rate'][2]:,.0f})"
            print(f"{m:>11} | {rate:>26} | {s['commands_per_task'][0]:>9.2f} | "
                  f"{s['redis_cpu_us_per_task'][0]:>17.1f} | {s['worker_cpu_us_per_task'][0]:>18.1f} | "
                  f"{s['handler_cpu_us_per_task'][0]:>19.1f}")
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
