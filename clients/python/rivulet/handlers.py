"""Python task handlers in a long-lived process, served to ``worker-cli --serve``.

::

    from rivulet import handlers

    @handlers.task("train")
    def train(payload, ctx):
        ctx.progress(40, "epoch 2")
        return {"loss": 0.1}

    if __name__ == "__main__":
        handlers.serve()

and ``worker-cli --workers 4 --queue ml --serve train='python -m myapp.tasks'``. The worker
(in Rust) does every Redis operation: it hands this process tasks as JSON lines on its stdin
and reads the answers on its stdout (the protocol of ``docs/serve-protocol.md``). Loading a
model or a cache at import time happens once per process, not once per task.

- A handler is ``fn(payload, ctx)``, plain or ``async def``. ``payload`` is the decoded JSON
  (codec ``json``), the unpacked value (``msgpack``, when the ``msgpack`` package is installed;
  bytes otherwise) or ``bytes`` (codec ``bytes``).
- It returns the task's result: a JSON-serialisable value, ``bytes`` (stored as codec
  ``bytes``) or ``None`` (no result).
- It raises :class:`Fatal` for a failure that retrying cannot fix (straight to the dead-letter
  stream), :class:`Retry` (optionally ``after=`` seconds) for one worth retrying; any other
  exception is retried too, with its traceback on stderr.
- ``ctx.cancelled`` says the task was cancelled (or timed out, or the worker stops); a
  long handler checks it (or waits on ``ctx.cancel_event``) and returns or raises. An async
  handler's task is also cancelled (``asyncio.CancelledError``). A handler that ignores a
  cancel for 5 s gets its process restarted by the worker.
- The worker sends up to ``--serve-concurrency`` tasks at once: sync handlers run on that many
  threads, async handlers on one event loop.
- ``print()`` is safe: in a ``--serve`` process, importing this module moves the protocol
  off file descriptors 0 and 1, so anything printed afterwards (by the module while it loads,
  the handlers, libraries, child processes) goes to stderr, which the worker logs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import queue
import inspect
import json
import os
import sys
import threading
import time
import traceback
from typing import IO, Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar, Union, cast

__all__ = [
    "PROTOCOL",
    "Context",
    "Fatal",
    "Handler",
    "ProtocolError",
    "Registry",
    "Retry",
    "serve",
    "task",
]

#: The protocol version this module speaks (``hello`` / ``ready``).
PROTOCOL = 1

Handler = Callable[[Any, "Context"], Union[Any, Awaitable[Any]]]
H = TypeVar("H", bound=Callable[..., Any])

# Guards the rare cancel bookkeeping of every context (one lock, not one per task).
_CANCEL_LOCK = threading.Lock()


class Fatal(Exception):
    """A failure retrying cannot fix: the task goes to the dead-letter stream as ``fatal``."""


class Retry(Exception):
    """A failure worth retrying; ``after`` (seconds) picks the delay instead of the backoff.

    A retry still uses up one of the task's attempts, as any failure does.
    """

    def __init__(self, message: str = "retry requested", *, after: Optional[float] = None) -> None:
        super().__init__(message)
        if after is not None and after < 0:
            raise ValueError("Retry(after=...) must not be negative")
        self.after = after


class ProtocolError(Exception):
    """The worker on the other end does not speak this protocol (or is not a worker)."""


class Context:
    """What a handler knows about its task, and its line back to the worker."""

    def __init__(self, message: Dict[str, Any], send: Callable[[Dict[str, Any]], None]) -> None:
        #: The task's id, stable across retries: use it as an idempotency key.
        self.id: str = str(message["id"])
        #: The task kind (the handler's name).
        self.kind: str = str(message["kind"])
        #: Failed attempts before this one (0 on the first run).
        self.attempt: int = int(message.get("attempt", 0))
        #: The queue and priority the task came from.
        self.queue: str = str(message.get("queue", ""))
        self.priority: str = str(message.get("priority", ""))
        #: The payload's codec: ``json``, ``msgpack`` or ``bytes``.
        self.codec: str = str(message.get("codec", "json"))
        #: When the task was first enqueued, ms since the epoch.
        self.enqueued_at: int = int(message.get("enqueued_at", 0))
        #: The previous attempt's error, if any.
        self.last_error: Optional[str] = message.get("last_error")
        deadline_ms = message.get("deadline_ms")
        #: When the worker times this run out (seconds since the epoch), if it has a timeout.
        self.deadline: Optional[float] = None if deadline_ms is None else float(deadline_ms) / 1000.0
        #: Why it was cancelled (``cancelled`` or ``stopped``), once it is.
        self.cancel_reason: Optional[str] = None
        self._send = send
        self._cancelled = False
        # Made on first use: most tasks are never cancelled and never ask.
        self._event: Optional[threading.Event] = None
        self._on_cancel: List[Callable[[], object]] = []

    @property
    def cancelled(self) -> bool:
        """Whether the task was cancelled: stop soon (return or raise)."""
        return self._cancelled

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the task is cancelled (or timed out, or the worker is stopping)."""
        with _CANCEL_LOCK:
            if self._event is None:
                self._event = threading.Event()
                if self._cancelled:
                    self._event.set()
            return self._event

    def remaining(self) -> Optional[float]:
        """Seconds left before the worker's timeout, if the task has one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())

    def progress(self, percent: float, message: str = "") -> None:
        """Reports progress (0-100 and a message); the worker stores the latest few a second."""
        self._send({"type": "progress", "id": self.id, "percent": float(percent), "message": str(message)})

    async def wait_cancelled(self) -> None:
        """For async handlers: resolves once the task is cancelled."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._add_on_cancel(lambda: loop.call_soon_threadsafe(event.set))
        await event.wait()

    def _add_on_cancel(self, callback: Callable[[], object]) -> None:
        with _CANCEL_LOCK:
            if not self._cancelled:
                self._on_cancel.append(callback)
                return
        callback()

    def _cancel(self, reason: str) -> None:
        with _CANCEL_LOCK:
            if self._cancelled:
                return
            self._cancelled = True
            self.cancel_reason = reason
            event, callbacks, self._on_cancel = self._event, self._on_cancel, []
        if event is not None:
            event.set()
        for callback in callbacks:
            callback()


class Registry:
    """Task kinds and their handlers. :func:`task` and :func:`serve` use a default one."""

    def __init__(self) -> None:
        self._handlers: Dict[str, Handler] = {}

    def task(self, kind: str) -> Callable[[H], H]:
        """Decorator: ``fn(payload, ctx)`` (plain or ``async def``) serves ``kind``."""
        if not kind or any(c.isspace() for c in kind):
            raise ValueError(f"task kind {kind!r} must be non-empty without spaces")

        def register(fn: H) -> H:
            if kind in self._handlers:
                raise ValueError(f"task kind {kind!r} already has a handler")
            self._handlers[kind] = cast(Handler, fn)
            return fn

        return register

    @property
    def kinds(self) -> List[str]:
        """The kinds served, sorted."""
        return sorted(self._handlers)

    def handler(self, kind: str) -> Optional[Handler]:
        """The handler of ``kind``, if any."""
        return self._handlers.get(kind)

    def serve(self, stdin: Optional[IO[bytes]] = None, stdout: Optional[IO[bytes]] = None) -> None:
        """Serves this registry's kinds to the worker that started this process."""
        _Server(self, stdin, stdout).run()


_default = Registry()


def task(kind: str) -> Callable[[H], H]:
    """Decorator registering ``fn(payload, ctx)`` as the handler of ``kind``."""
    return _default.task(kind)


def serve(stdin: Optional[IO[bytes]] = None, stdout: Optional[IO[bytes]] = None) -> None:
    """Serves every kind registered with :func:`task` until the worker closes stdin.

    Run as the ``--serve`` command (``python -m myapp.tasks``). Without arguments it takes the
    protocol from stdin and stdout and points file descriptors 0 and 1 elsewhere (``/dev/null``
    and stderr), so nothing printed can break the protocol.
    """
    _default.serve(stdin, stdout)


_taken: "Optional[tuple[IO[bytes], IO[bytes]]]" = None


def _take_stdio() -> "tuple[IO[bytes], IO[bytes]]":
    """The protocol's own duplicates of fds 0 and 1 (once); fd 0 becomes /dev/null, fd 1 stderr."""
    global _taken
    if _taken is not None:
        return _taken
    sys.stdout.flush()
    proto_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _taken = (proto_in, proto_out)
    return _taken


# Imported in a `--serve` process (the worker sets this): take the protocol's streams now, so a
# print while the rest of the module loads (a model, say) cannot reach the worker as garbage.
if os.environ.get("RIVULET_SERVE_PROTOCOL"):
    _take_stdio()


def _log(message: str) -> None:
    print(f"rivulet.handlers: {message}", file=sys.stderr, flush=True)


class _Server:
    def __init__(self, registry: Registry, stdin: Optional[IO[bytes]], stdout: Optional[IO[bytes]]) -> None:
        if stdin is None or stdout is None:
            taken_in, taken_out = _take_stdio()
            stdin = stdin or taken_in
            stdout = stdout or taken_out
        self.registry = registry
        self.stdin = stdin
        self.stdout = stdout
        self.write_lock = threading.Lock()
        self.running: Dict[str, Context] = {}
        self.running_lock = threading.Lock()
        # Sync handlers run on `concurrency` threads fed by one queue (leaner per task than an
        # executor's futures); None tells a thread to finish.
        self.work: "queue.SimpleQueue[Optional[Tuple[Handler, Any, Context]]]" = queue.SimpleQueue()
        self.threads: List[threading.Thread] = []
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.loop_thread: Optional[threading.Thread] = None
        self.async_tasks: Dict[str, "concurrent.futures.Future[None]"] = {}

    # The worker's side of the conversation.

    def send(self, message: Dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        with self.write_lock:
            self.stdout.write(data + b"\n")
            self.stdout.flush()

    def read(self) -> Optional[Dict[str, Any]]:
        line = self.stdin.readline()
        if not line:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ProtocolError(f"expected a JSON object per line, got {line[:200]!r}")
        return message

    def run(self) -> None:
        hello = self.read()
        if hello is None:
            raise ProtocolError("stdin closed before the worker's hello (run this under worker-cli --serve)")
        if hello.get("type") != "hello":
            raise ProtocolError(f"the first message must be hello, got {hello.get('type')!r}")
        if hello.get("protocol") != PROTOCOL:
            raise ProtocolError(f"the worker speaks protocol {hello.get('protocol')!r}; this module speaks {PROTOCOL}")
        concurrency = max(1, int(hello.get("concurrency", 1)))
        missing = [k for k in hello.get("kinds", []) if self.registry.handler(str(k)) is None]
        if missing:
            _log(f"no handler for kind(s) {', '.join(map(str, missing))}; registered: {', '.join(self.registry.kinds)}")
        for i in range(concurrency):
            thread = threading.Thread(target=self.run_queue, name=f"rivulet-task-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.send({"type": "ready", "protocol": PROTOCOL, "kinds": self.registry.kinds})
        try:
            while True:
                message = self.read()
                if message is None:
                    break
                kind = message.get("type")
                if kind == "task":
                    self.start(message)
                elif kind == "cancel":
                    self.cancel(str(message.get("id")), str(message.get("reason", "cancelled")))
                else:
                    _log(f"ignoring a message of unknown type {kind!r}")
        finally:
            # Stdin closed: finish what runs, then exit.
            for _ in self.threads:
                self.work.put(None)
            for thread in self.threads:
                thread.join()
            if self.loop is not None and self.loop_thread is not None:
                for future in list(self.async_tasks.values()):
                    try:
                        future.result()
                    except BaseException:  # noqa: BLE001 - already reported as the task's error
                        pass
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.loop_thread.join()

    # Tasks.

    def start(self, message: Dict[str, Any]) -> None:
        ctx = Context(message, self.send)
        try:
            payload = self.payload(message, ctx.codec)
        except (ValueError, binascii.Error) as e:
            self.send({"type": "error", "id": ctx.id, "message": f"malformed payload: {e}", "fatal": True})
            return
        handler = self.registry.handler(ctx.kind)
        if handler is None:
            self.send(
                {
                    "type": "error",
                    "id": ctx.id,
                    "message": f"this handler process has no handler for kind {ctx.kind!r} "
                    f"(it serves {', '.join(self.registry.kinds) or 'none'})",
                    "fatal": True,
                }
            )
            return
        with self.running_lock:
            self.running[ctx.id] = ctx
        if inspect.iscoroutinefunction(handler):
            loop = self.event_loop()
            future = asyncio.run_coroutine_threadsafe(self.run_async(handler, payload, ctx), loop)
            self.async_tasks[ctx.id] = future
            future.add_done_callback(lambda _f: self.async_tasks.pop(ctx.id, None))
        else:
            self.work.put((handler, payload, ctx))

    def run_queue(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            self.run_sync(*item)

    @staticmethod
    def payload(message: Dict[str, Any], codec: str) -> Any:
        if "payload_base64" in message:
            raw = base64.b64decode(message["payload_base64"], validate=True)
            if codec == "msgpack":
                try:
                    import msgpack
                except ImportError:
                    return raw
                return msgpack.unpackb(raw, raw=False)
            return raw
        return message.get("payload")

    def run_sync(self, handler: Handler, payload: Any, ctx: Context) -> None:
        try:
            value = handler(payload, ctx)
        except BaseException as e:  # noqa: BLE001 - every failure is the task's
            self.failed(ctx, e)
        else:
            self.succeeded(ctx, value)

    async def run_async(self, handler: Handler, payload: Any, ctx: Context) -> None:
        current = asyncio.current_task()
        if current is not None:
            loop = asyncio.get_running_loop()
            ctx._add_on_cancel(lambda: loop.call_soon_threadsafe(current.cancel))
        try:
            value = await cast(Awaitable[Any], handler(payload, ctx))
        except BaseException as e:  # noqa: BLE001 - every failure is the task's
            self.failed(ctx, e)
        else:
            self.succeeded(ctx, value)

    def event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="rivulet-asyncio", daemon=True)
            thread.start()
            self.loop, self.loop_thread = loop, thread
        return self.loop

    def cancel(self, task_id: str, reason: str) -> None:
        with self.running_lock:
            ctx = self.running.get(task_id)
        if ctx is not None:
            ctx._cancel(reason)

    def done(self, ctx: Context) -> None:
        with self.running_lock:
            self.running.pop(ctx.id, None)

    def succeeded(self, ctx: Context, value: Any) -> None:
        self.done(ctx)
        if value is None:
            self.send({"type": "result", "id": ctx.id})
        elif isinstance(value, (bytes, bytearray, memoryview)):
            self.send({"type": "result", "id": ctx.id, "result_base64": base64.b64encode(bytes(value)).decode("ascii")})
        else:
            try:
                self.send({"type": "result", "id": ctx.id, "result": value})
            except (TypeError, ValueError) as e:
                self.send({"type": "error", "id": ctx.id, "message": f"the result is not JSON: {e}", "fatal": True})

    def failed(self, ctx: Context, e: BaseException) -> None:
        self.done(ctx)
        message: Dict[str, Any] = {"type": "error", "id": ctx.id}
        if isinstance(e, Fatal):
            message.update(message=str(e) or "fatal", fatal=True)
        elif isinstance(e, Retry):
            message.update(message=str(e))
            if e.after is not None:
                message["retry_after_ms"] = int(e.after * 1000)
        elif isinstance(e, asyncio.CancelledError) or (ctx.cancelled and isinstance(e, Exception)):
            message.update(message=f"cancelled ({ctx.cancel_reason or 'cancelled'})")
        else:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            print(f"task {ctx.id} ({ctx.kind}) failed:\n{text}", file=sys.stderr, end="", flush=True)
            message.update(message=f"{type(e).__name__}: {e}")
        self.send(message)
