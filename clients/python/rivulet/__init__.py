"""Rivulet for Python: enqueue tasks for Rivulet workers and follow them.

>>> from rivulet import Client                                    # doctest: +SKIP
>>> client = Client.from_url("redis://127.0.0.1:6379")            # doctest: +SKIP
>>> task = client.enqueue("backtests", "backtest", {"symbol": "ACME"}, priority="high")
>>> task.wait(timeout=60).result                                   # doctest: +SKIP

``AsyncClient`` (``rivulet.aio``) has the same methods as coroutines. Every state change runs
in Redis as one of the engine's own functions (the ``rivulet_v1`` library the workers load),
so this package holds no copy of the engine's logic: see docs/python.md and
docs/wire-format.md.
"""

from ._ops import (
    CancelOutcome,
    DeadLetter,
    Enqueued,
    LayoutMismatch,
    LibraryMissing,
    QueueStats,
    ShardNumbers,
    TaskState,
    TaskStatus,
    UnknownTask,
    WaitTimeout,
)
from ._wire import Backoff, ConfigError, Layout, RivuletError, Task, shard_for
from .aio import AsyncClient, AsyncTaskHandle
from .client import Client, TaskHandle

__all__ = [
    "AsyncClient",
    "AsyncTaskHandle",
    "Backoff",
    "CancelOutcome",
    "Client",
    "ConfigError",
    "DeadLetter",
    "Enqueued",
    "Layout",
    "LayoutMismatch",
    "LibraryMissing",
    "QueueStats",
    "RivuletError",
    "ShardNumbers",
    "Task",
    "TaskHandle",
    "TaskState",
    "TaskStatus",
    "UnknownTask",
    "WaitTimeout",
    "shard_for",
]
