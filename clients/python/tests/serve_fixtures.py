"""Real parts for the handler tests: a ``redis-server`` on a free loopback port in a temp dir,
(``RIVULET_REDIS_SERVER`` names the binary, as for the Rust fixtures), the real ``worker-cli`` binary (``RIVULET_WORKER_CLI``, else the workspace's
``target/debug/worker-cli``, built with cargo when missing), and a supervisor process killed
with its children when the test module ends. Never the Redis at 6379."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_ROOT.parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "a condition") -> None:
    """The one way to wait: polls ``check`` until it holds; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rivulet-py-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [os.environ.get("RIVULET_REDIS_SERVER", "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}"
        wait_for(self._answers, 20, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def worker_cli() -> str:
    explicit = os.environ.get("RIVULET_WORKER_CLI")
    if explicit:
        return explicit
    path = REPO_ROOT / "target" / "debug" / "worker-cli"
    if not path.exists():
        subprocess.run(["cargo", "build", "-p", "worker-cli"], cwd=REPO_ROOT, check=True)
    return str(path)


def child_env(redis_url: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    env["RUST_LOG"] = "info"
    # The handler processes import the package under test, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


class Supervisor:
    """``worker-cli ARGS`` in its own process group; its log (stderr) kept in a file."""

    def __init__(self, redis_url: str, args: List[str], log_dir: str) -> None:
        self.log_path = os.path.join(log_dir, "worker-cli.log")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [worker_cli(), *args],
            env=child_env(redis_url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            start_new_session=True,
        )

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        # The supervisor's children die with it (parent-death signal); the group catches the rest.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log_file.close()


def cli(redis_url: str, args: List[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run([worker_cli(), *args], env=child_env(redis_url), capture_output=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"worker-cli {args} failed ({out.returncode}):\n{out.stderr.decode()}")
    return out


def cli_json(redis_url: str, args: List[str]) -> Any:
    return json.loads(cli(redis_url, [*args, "--json"]).stdout)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class Served:
    """A supervisor serving a handler module's kinds on one queue, and the calls tests make."""

    def __init__(self, server: RedisServer, queue: str, sup: Supervisor, work_dir: str) -> None:
        self.server, self.queue, self.sup, self.dir = server, queue, sup, work_dir

    def enqueue(self, kind: str, payload: Optional[str] = None, *, payload_file: Optional[str] = None,
                codec: str = "json", max_attempts: Optional[int] = None, timeout: Optional[str] = None) -> str:
        args = ["enqueue", "--queue", self.queue, "--kind", kind, "--codec", codec]
        if payload_file is not None:
            args += ["--payload-file", payload_file]
        elif payload is not None:
            args += ["--payload", payload]
        if max_attempts is not None:
            args += ["--max-attempts", str(max_attempts)]
        if timeout is not None:
            args += ["--timeout", timeout]
        return str(cli_json(self.server.url, args)["ids"][0])

    def show(self, task_id: str) -> Dict[str, Any]:
        return dict(cli_json(self.server.url, ["task", "show", task_id, "--queue", self.queue]))

    def wait_state(self, task_id: str, state: str, timeout: float = 60.0) -> Dict[str, Any]:
        seen: Dict[str, Any] = {}

        def reached() -> bool:
            seen.clear()
            seen.update(self.show(task_id))
            return seen.get("state") == state

        try:
            wait_for(reached, timeout, f"task {task_id} to be {state}")
        except AssertionError as e:
            raise AssertionError(f"{e}: {json.dumps(seen, indent=1)}\n--- worker log ---\n{self.sup.log()}") from None
        return seen

    def marked(self, name: str) -> int:
        path = os.path.join(self.dir, name)
        wait_for(lambda: os.path.exists(path) and os.path.getsize(path) > 0, 60, f"the handler to write {name}")
        with open(path) as f:
            return int(f.read().strip())


def serve_module(server: RedisServer, queue: str, module_source: str, kinds: str,
                 extra: Optional[List[str]] = None) -> Iterator[Served]:
    """Writes ``module_source`` as ``app.py`` in a temp dir and serves ``kinds`` with it."""
    work_dir = tempfile.mkdtemp(prefix="rivulet-py-serve-")
    app = os.path.join(work_dir, "app.py")
    with open(app, "w") as f:
        f.write(module_source.replace("@DIR@", work_dir))
    import sys

    command = f"{sys.executable} {app}"
    args = ["--workers", "1", "--queue", queue, "--serve", f"{kinds}={command}", "--max-attempts", "2",
            "--retry-base", "100ms", *(extra or [])]
    sup = Supervisor(server.url, args, work_dir)
    try:
        yield Served(server, queue, sup, work_dir)
    finally:
        sup.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
