"""The asyncio client: ``AsyncClient`` and its ``AsyncTaskHandle``, the same operations as
``Client`` (both run the plans of ``_ops``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import redis.asyncio as aioredis

from . import _ops
from ._ops import Batch, CancelOutcome, DeadLetter, Plan, QueueStats, TaskStatus
from ._wire import Layout, Task

T = TypeVar("T")


class AsyncTaskHandle:
    """A task enqueued (or found by id): status, progress, result, wait, cancel."""

    def __init__(self, client: "AsyncClient", queue: str, task_id: str, duplicate: bool = False) -> None:
        self.client, self.queue, self.id, self.duplicate = client, queue, task_id, duplicate

    def __repr__(self) -> str:
        return f"AsyncTaskHandle(queue={self.queue!r}, id={self.id!r}, duplicate={self.duplicate})"

    async def status(self) -> TaskStatus:
        return await self.client.status(self.queue, self.id)

    async def progress(self) -> tuple[Optional[int], Optional[str]]:
        st = await self.status()
        return st.progress, st.progress_message

    async def result(self) -> Any:
        """The decoded result once succeeded; None before (or when it returned none)."""
        return (await self.status()).result

    async def wait(self, timeout: float = 30.0) -> TaskStatus:
        """Blocks until the task is final (woken by the engine's notification, not polling);
        raises ``WaitTimeout`` (with the status it is in) or ``UnknownTask``."""
        return await self.client.wait(self.queue, self.id, timeout)

    async def cancel(self) -> CancelOutcome:
        return await self.client.cancel(self.queue, self.id)


class AsyncDeadLetters:
    """``client.dlq``: list, replay and purge dead letters."""

    def __init__(self, client: "AsyncClient") -> None:
        self._c = client

    async def list(self, queue: str, limit: int = 100, kind: Optional[str] = None) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first over every shard (of ``kind``)."""
        return await self._c._on(queue, _ops.dlq_list, limit, kind)

    async def replay(self, queue: str, ids: Optional[Sequence[str]] = None, *, kind: Optional[str] = None) -> int:
        """Replays the given ids, or every dead letter (of ``kind`` when given)."""
        return await self._c._on(queue, _ops.dlq_apply, _ops.dlq_replay, ids, kind)

    async def purge(self, queue: str, ids: Optional[Sequence[str]] = None, *, kind: Optional[str] = None) -> int:
        """Deletes the given ids, or every dead letter (of ``kind`` when given)."""
        return await self._c._on(queue, _ops.dlq_apply, _ops.dlq_purge, ids, kind)


class AsyncClient:
    """A producer: ``Client.from_url("redis://127.0.0.1:6379")``.

    Enqueue, status, wait and cancel go through the ``rivulet_v1`` Redis functions the engine
    installs (workers load them at start; ``worker-cli functions install`` otherwise).
    """

    def __init__(self, connection: "aioredis.Redis") -> None:
        self.redis = connection
        self._layouts: dict[str, Layout] = {}
        self.dlq = AsyncDeadLetters(self)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "AsyncClient":
        return cls(aioredis.Redis.from_url(url, **kwargs))

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, batch: Batch) -> list[Any]:
        async with self.redis.pipeline(transaction=batch.atomic) as pipe:
            for cmd in batch.commands:
                pipe.execute_command(*cmd)
            return list(await pipe.execute(raise_on_error=False))

    async def _run(self, plan: Plan[T]) -> T:
        try:
            batch = next(plan)
            while True:
                batch = plan.send(await self._send(batch))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _on(self, queue: str, op: Callable[..., Plan[T]], *args: Any) -> T:
        return await self._run(_ops.on_queue(self._layouts, queue, op, *args))

    async def layout(self, queue: str) -> Layout:
        """The queue's layout as Redis records it (a new queue gets the default one)."""
        return await self._on(queue, _ops.current_layout)

    async def declare(self, queue: str, priorities: Sequence[str] = ("high", "normal", "low"), shards: int = 1) -> Layout:
        """Records a queue's layout, or checks it against the recorded one (``LayoutMismatch``)."""
        lay = await self._run(_ops.layout(queue, Layout(tuple(priorities), shards)))
        self._layouts[queue] = lay
        return lay

    async def enqueue(self, queue: str, kind: Union[str, Task], payload: Any = None, **options: Any) -> AsyncTaskHandle:
        """Enqueues one task: ``enqueue("q", "kind", {...}, priority="high", delay=5)`` or
        ``enqueue("q", Task(...))``. Options are :class:`Task`'s fields."""
        return (await self.enqueue_many(queue, [_ops.as_task(kind, payload, options)]))[0]

    async def enqueue_many(self, queue: str, tasks: Sequence[Task]) -> list[AsyncTaskHandle]:
        """Enqueues tasks in one round trip and one transaction (each task one atomic function
        call), checking them all before sending anything."""
        done = await self._on(queue, _ops.enqueue, tasks)
        return [AsyncTaskHandle(self, queue, e.id, e.duplicate) for e in done]

    def task(self, queue: str, task_id: str) -> AsyncTaskHandle:
        """A handle for a task id stored elsewhere."""
        return AsyncTaskHandle(self, queue, task_id)

    async def status(self, queue: str, task_id: str) -> TaskStatus:
        return await self._on(queue, _ops.status, task_id)

    async def wait(self, queue: str, task_id: str, timeout: float = 30.0) -> TaskStatus:
        return await self._on(queue, _ops.wait, task_id, timeout)

    async def cancel(self, queue: str, task_id: str) -> CancelOutcome:
        return (await self._on(queue, _ops.cancel, task_id))[0]

    async def stats(self, queue: str) -> QueueStats:
        return await self._on(queue, _ops.stats)
