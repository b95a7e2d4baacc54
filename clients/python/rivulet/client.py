"""The synchronous client: ``Client`` and its ``TaskHandle``."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import redis

from . import _ops
from ._ops import Batch, CancelOutcome, DeadLetter, Plan, QueueStats, TaskStatus
from ._wire import Layout, Task

T = TypeVar("T")


class TaskHandle:
    """A task enqueued (or found by id): status, progress, result, wait, cancel."""

    def __init__(self, client: "Client", queue: str, task_id: str, duplicate: bool = False) -> None:
        self.client, self.queue, self.id, self.duplicate = client, queue, task_id, duplicate

    def __repr__(self) -> str:
        return f"TaskHandle(queue={self.queue!r}, id={self.id!r}, duplicate={self.duplicate})"

    def status(self) -> TaskStatus:
        return self.client.status(self.queue, self.id)

    def progress(self) -> tuple[Optional[int], Optional[str]]:
        st = self.status()
        return st.progress, st.progress_message

    def result(self) -> Any:
        """The decoded result once succeeded; None before (or when it returned none)."""
        return self.status().result

    def wait(self, timeout: float = 30.0) -> TaskStatus:
        """Blocks until the task is final (woken by the engine's notification, not polling);
        raises ``WaitTimeout`` (with the status it is in) or ``UnknownTask``."""
        return self.client.wait(self.queue, self.id, timeout)

    def cancel(self) -> CancelOutcome:
        return self.client.cancel(self.queue, self.id)


class DeadLetters:
    """``client.dlq``: list, replay and purge dead letters."""

    def __init__(self, client: "Client") -> None:
        self._c = client

    def list(self, queue: str, limit: int = 100, kind: Optional[str] = None) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first over every shard (of ``kind``)."""
        return self._c._on(queue, _ops.dlq_list, limit, kind)

    def replay(self, queue: str, ids: Optional[Sequence[str]] = None, *, kind: Optional[str] = None) -> int:
        """Replays the given ids, or every dead letter (of ``kind`` when given)."""
        return self._c._on(queue, _ops.dlq_apply, _ops.dlq_replay, ids, kind)

    def purge(self, queue: str, ids: Optional[Sequence[str]] = None, *, kind: Optional[str] = None) -> int:
        """Deletes the given ids, or every dead letter (of ``kind`` when given)."""
        return self._c._on(queue, _ops.dlq_apply, _ops.dlq_purge, ids, kind)


class Client:
    """A producer: ``Client.from_url("redis://127.0.0.1:6379")``.

    Enqueue, status, wait and cancel go through the ``rivulet_v1`` Redis functions the engine
    installs (workers load them at start; ``worker-cli functions install`` otherwise).
    """

    def __init__(self, connection: "redis.Redis") -> None:
        self.redis = connection
        self._layouts: dict[str, Layout] = {}
        self.dlq = DeadLetters(self)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "Client":
        return cls(redis.Redis.from_url(url, **kwargs))

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, batch: Batch) -> list[Any]:
        pipe = self.redis.pipeline(transaction=batch.atomic)
        for cmd in batch.commands:
            pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
        return list(pipe.execute(raise_on_error=False))

    def _run(self, plan: Plan[T]) -> T:
        try:
            batch = next(plan)
            while True:
                batch = plan.send(self._send(batch))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _on(self, queue: str, op: Callable[..., Plan[T]], *args: Any) -> T:
        return self._run(_ops.on_queue(self._layouts, queue, op, *args))

    def layout(self, queue: str) -> Layout:
        """The queue's layout as Redis records it (a new queue gets the default one)."""
        return self._on(queue, _ops.current_layout)

    def declare(self, queue: str, priorities: Sequence[str] = ("high", "normal", "low"), shards: int = 1) -> Layout:
        """Records a queue's layout, or checks it against the recorded one (``LayoutMismatch``)."""
        lay = self._run(_ops.layout(queue, Layout(tuple(priorities), shards)))
        self._layouts[queue] = lay
        return lay

    def enqueue(self, queue: str, kind: Union[str, Task], payload: Any = None, **options: Any) -> TaskHandle:
        """Enqueues one task: ``enqueue("q", "kind", {...}, priority="high", delay=5)`` or
        ``enqueue("q", Task(...))``. Options are :class:`Task`'s fields."""
        return self.enqueue_many(queue, [_ops.as_task(kind, payload, options)])[0]

    def enqueue_many(self, queue: str, tasks: Sequence[Task]) -> list[TaskHandle]:
        """Enqueues tasks in one round trip and one transaction (each task one atomic function
        call), checking them all before sending anything."""
        done = self._on(queue, _ops.enqueue, tasks)
        return [TaskHandle(self, queue, e.id, e.duplicate) for e in done]

    def task(self, queue: str, task_id: str) -> TaskHandle:
        """A handle for a task id stored elsewhere."""
        return TaskHandle(self, queue, task_id)

    def status(self, queue: str, task_id: str) -> TaskStatus:
        return self._on(queue, _ops.status, task_id)

    def wait(self, queue: str, task_id: str, timeout: float = 30.0) -> TaskStatus:
        return self._on(queue, _ops.wait, task_id, timeout)

    def cancel(self, queue: str, task_id: str) -> CancelOutcome:
        return self._on(queue, _ops.cancel, task_id)[0]

    def stats(self, queue: str) -> QueueStats:
        return self._on(queue, _ops.stats)
