"""The synchronous client: ``Client`` and its ``TaskHandle``."""

from __future__ import annotations

from typing import Any, Optional, Sequence, TypeVar, Union

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
        """Blocks until the task is final (driven by the engine's notification, not polling);
        raises ``WaitTimeout`` (with the status it is in) or ``UnknownTask``."""
        return self.client.wait(self.queue, self.id, timeout)

    def cancel(self) -> CancelOutcome:
        return self.client.cancel(self.queue, self.id)


class DeadLetters:
    """``client.dlq``: list, replay and purge dead letters."""

    def __init__(self, client: "Client") -> None:
        self._c = client

    def list(self, queue: str, limit: int = 100, kind: Optional[str] = None) -> list[DeadLetter]:
        return self._c._run(_ops.dlq_list(queue, self._c.layout(queue), limit, kind))

    def replay(self, queue: str, ids: Optional[Sequence[str]] = None, *, kind: Optional[str] = None) -> int:
        """Replays the given ids, or every dead letter (of ``kind`` when given)."""
        lay = self._c.layout(queue)
        if ids is None:
            ids = [d.id for d in self.list(queue, limit=1 << 62, kind=kind)]
        return self._c._run(_ops.dlq_replay(queue, lay, ids))

    def purge(self, queue: str, ids: Optional[Sequence[str]] = None, *, kind: Optional[str] = None) -> int:
        """Deletes the given ids, or every dead letter (of ``kind`` when given)."""
        lay = self._c.layout(queue)
        if ids is None:
            ids = [d.id for d in self.list(queue, limit=1 << 62, kind=kind)]
        return self._c._run(_ops.dlq_purge(queue, lay, ids))


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

    def layout(self, queue: str) -> Layout:
        """The queue's layout as Redis records it (a new queue gets the default one)."""
        lay = self._layouts.get(queue)
        if lay is None:
            lay = self._layouts[queue] = self._run(_ops.layout(queue))
        return lay

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
        """Enqueues tasks in one pipelined round trip (each one atomic), checking them all
        before sending anything."""
        done = self._run(_ops.enqueue(queue, self.layout(queue), tasks))
        return [TaskHandle(self, queue, e.id, e.duplicate) for e in done]

    def task(self, queue: str, task_id: str) -> TaskHandle:
        return TaskHandle(self, queue, task_id)

    def status(self, queue: str, task_id: str) -> TaskStatus:
        return self._run(_ops.status(queue, self.layout(queue), task_id))

    def wait(self, queue: str, task_id: str, timeout: float = 30.0) -> TaskStatus:
        return self._run(_ops.wait(queue, self.layout(queue), task_id, timeout))

    def cancel(self, queue: str, task_id: str) -> CancelOutcome:
        return self._run(_ops.cancel(queue, self.layout(queue), task_id))[0]

    def stats(self, queue: str) -> QueueStats:
        return self._run(_ops.stats(queue, self.layout(queue)))
