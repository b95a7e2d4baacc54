"""Real parts for the tests: a private redis-server on a free loopback port in a temp dir
(once per session) and real ``worker-cli`` processes (``target/debug/worker-cli``, or
``$RIVULET_WORKER_CLI``). A queue per test keeps tests apart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
import redis

from rivulet import Client

ROOT = Path(__file__).resolve().parents[3]


def worker_cli() -> str:
    path = os.environ.get("RIVULET_WORKER_CLI") or str(ROOT / "target" / "debug" / "worker-cli")
    if not os.access(path, os.X_OK):
        pytest.fail(f"worker-cli not found at {path}: run `cargo build -p worker-cli` or set RIVULET_WORKER_CLI")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


#: The redis-server binary, as for the Rust fixtures (`RIVULET_REDIS_SERVER`, else PATH's).
REDIS_SERVER = os.environ.get("RIVULET_REDIS_SERVER", "redis-server")


class RedisServer:
    def __init__(self) -> None:
        if shutil.which(REDIS_SERVER) is None:
            pytest.fail(f"{REDIS_SERVER} is not runnable (set RIVULET_REDIS_SERVER or put redis-server on PATH)")
        self.dir = tempfile.mkdtemp(prefix="rivulet-py-")
        self.port = free_port()
        self.log = os.path.join(self.dir, "redis.log")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--logfile", self.log],
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}"
        r = redis.Redis(port=self.port)
        wait_until(lambda: _pings(r), 10, "redis-server to answer")
        r.close()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(r: "redis.Redis") -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False


class Worker:
    """One ``worker-cli work`` process; killed at the end of the test."""

    def __init__(self, url: str, queue: str, execs: Sequence[str], extra: Sequence[str], log_dir: str) -> None:
        args = [worker_cli(), "--redis-url", url, "work", "--queue", queue, "--retry-base", "50ms"]
        for e in execs:
            args += ["--exec", e]
        args += list(extra)
        self.log_path = os.path.join(log_dir, f"worker-{uuid.uuid4().hex[:6]}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def logs(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


@pytest.fixture(scope="session")
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    # Producers may run before any worker: the library is installed the engine's way.
    subprocess.run([worker_cli(), "--redis-url", s.url, "functions", "install"], check=True, capture_output=True)
    yield s
    s.stop()


@pytest.fixture
def queue() -> str:
    return "py-" + uuid.uuid4().hex[:10]


@pytest.fixture
def client(server: RedisServer) -> Iterator[Client]:
    c = Client.from_url(server.url)
    yield c
    c.close()


@pytest.fixture
def start_worker(server: RedisServer, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(queue: str, *execs: str, extra: Sequence[str] = ()) -> Worker:
        w = Worker(server.url, queue, execs, extra, str(tmp_path))
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def cli(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([worker_cli(), "--redis-url", server.url, *args], capture_output=True, text=True)


def raw_fields(f: dict[bytes, bytes]) -> dict[str, bytes]:
    return {k.decode(): v for k, v in f.items()}
