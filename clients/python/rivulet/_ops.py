"""The operations, written once for the sync and the asyncio client.

Each operation is a generator that yields a :class:`Batch` of Redis commands (sent as one
pipeline, or one transaction) and receives the replies (an exception object in place of a reply that failed);
``Client`` and ``AsyncClient`` only carry batches to Redis and back. The engine's logic runs
in Redis, as the ``rivulet_v1`` functions (``FCALL``); what is here is choosing keys, encoding
arguments and reading replies.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, MutableMapping, Optional, Sequence, TypeVar, Union

from ._wire import (
    FUNCTION_PREFIX,
    GROUP,
    QUEUES_KEY,
    ConfigError,
    Layout,
    RivuletError,
    ShardKeys,
    Task,
    all_shards,
    check_name,
    decode_payload,
    now_ms,
    prepare,
    shard_for,
)

T = TypeVar("T")
Command = tuple[Any, ...]


@dataclass
class Batch:
    """Commands sent in one round trip; ``atomic`` ones as one transaction (``MULTI``/``EXEC``)."""

    commands: list[Command]
    atomic: bool = False


Plan = Generator[Batch, list[Any], T]


class LibraryMissing(RivuletError):
    """The ``rivulet_v1`` function library is not loaded on this Redis."""


class LayoutMismatch(RivuletError):
    """Redis records another layout for the queue than the one asked for."""


class UnknownTask(RivuletError):
    """No record of the task: never enqueued in this queue, tracking off, or expired."""


class WaitTimeout(RivuletError):
    """The task did not reach a final state in time; ``status`` is where it is."""

    def __init__(self, message: str, status: "TaskStatus") -> None:
        super().__init__(message)
        self.status = status


class TaskState(str, enum.Enum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    ACTIVE = "active"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED)


@dataclass
class TaskStatus:
    """A task's record (docs/wire-format.md, Task records), read at one moment."""

    id: str
    queue: str
    state: TaskState
    priority: Optional[str] = None
    fields: dict[str, bytes] = field(default_factory=dict)

    def _int(self, name: str) -> Optional[int]:
        v = self.fields.get(name)
        return int(v) if v not in (None, b"") else None

    def _str(self, name: str) -> Optional[str]:
        v = self.fields.get(name)
        return v.decode(errors="replace") if v is not None else None

    @property
    def kind(self) -> Optional[str]:
        return self._str("kind")

    @property
    def attempt(self) -> int:
        return self._int("attempt") or 0

    @property
    def progress(self) -> Optional[int]:
        return self._int("progress")

    @property
    def progress_message(self) -> Optional[str]:
        return self._str("progress_message")

    @property
    def worker(self) -> Optional[str]:
        return self._str("worker")

    @property
    def error(self) -> Optional[str]:
        return self._str("error")

    @property
    def reason(self) -> Optional[str]:
        return self._str("reason")

    @property
    def enqueued_at(self) -> Optional[int]:
        return self._int("enqueued_at")

    @property
    def started_at(self) -> Optional[int]:
        return self._int("started_at")

    @property
    def finished_at(self) -> Optional[int]:
        return self._int("finished_at")

    @property
    def due_at(self) -> Optional[int]:
        return self._int("due_at")

    @property
    def runs(self) -> int:
        return self._int("runs") or 0

    @property
    def run_ms(self) -> Optional[int]:
        return self._int("run_ms")

    @property
    def result_codec(self) -> Optional[str]:
        return self._str("result_codec")

    @property
    def result_bytes(self) -> Optional[bytes]:
        return self.fields.get("result")

    @property
    def result(self) -> Any:
        """The handler's result decoded with its codec (``bytes`` stay bytes); None if none."""
        raw = self.result_bytes
        if raw is None:
            return None
        return decode_payload(raw, self.result_codec or "bytes")

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def to_dict(self) -> dict[str, Any]:
        result: Any = self.result if self.result_codec != "bytes" else None
        if self.result_codec == "bytes" and self.result_bytes is not None:
            result = self.result_bytes.decode(errors="replace")
        return {
            "id": self.id,
            "queue": self.queue,
            "state": self.state.value,
            "priority": self.priority,
            "kind": self.kind,
            "attempt": self.attempt,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "error": self.error,
            "reason": self.reason,
            "result": result,
        }


def status_of(task_id: str, queue: str, priority: Optional[str], fields: dict[str, bytes], now: int) -> TaskStatus:
    state_raw = fields.get("state")
    if state_raw is None:
        return TaskStatus(task_id, queue, TaskState.UNKNOWN)
    try:
        state = TaskState(state_raw.decode())
    except ValueError:
        state = TaskState.UNKNOWN
    # The documented reader rule: a parked task whose due time passed is ready (the promoter
    # does not rewrite the record).
    due = fields.get("due_at")
    if state in (TaskState.SCHEDULED, TaskState.RETRYING) and due and int(due) <= now:
        state = TaskState.QUEUED
    return TaskStatus(task_id, queue, state, priority, fields)


class CancelOutcome(str, enum.Enum):
    CANCELLED = "cancelled"  # it had not started and never will
    CANCELLING = "cancelling"  # running: its worker stops it within about a second
    ALREADY_FINISHED = "final"  # left as it was


@dataclass(frozen=True)
class Enqueued:
    """What an enqueue did: ``id`` is the new task's, or for a duplicate of a live unique
    task the holder's."""

    id: str
    queue: str
    duplicate: bool = False


@dataclass
class ShardNumbers:
    priority: str
    shard: int
    length: int
    lag: Optional[int]
    pending: int
    scheduled: int
    retry: int
    dlq: int
    counters: dict[str, int]
    #: Grouped tasks waiting for their group's turn (docs/groups.md).
    fair: int = 0


@dataclass
class QueueStats:
    queue: str
    layout: Layout
    shards: list[ShardNumbers]

    def _sum(self, name: str) -> int:
        return sum(int(getattr(s, name)) for s in self.shards)

    @property
    def waiting(self) -> int:
        """Ready, not yet delivered to a worker."""
        return sum(s.lag if s.lag is not None else max(0, s.length - s.pending) for s in self.shards)

    @property
    def pending(self) -> int:
        return self._sum("pending")

    @property
    def scheduled(self) -> int:
        return self._sum("scheduled")

    @property
    def retry(self) -> int:
        return self._sum("retry")

    @property
    def dlq(self) -> int:
        return self._sum("dlq")

    @property
    def fair(self) -> int:
        """Grouped tasks waiting for their group's turn in the fair sets."""
        return self._sum("fair")

    @property
    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            for k, v in s.counters.items():
                out[k] = out.get(k, 0) + v
        return out


@dataclass
class DeadLetter:
    """One dead letter; ``id`` is ``priority/shard/entry`` as ``worker-cli dlq`` names it."""

    id: str
    fields: dict[str, bytes]

    def _str(self, name: str) -> Optional[str]:
        v = self.fields.get(name)
        return v.decode(errors="replace") if v is not None else None

    @property
    def task_id(self) -> Optional[str]:
        return self._str("id")

    @property
    def kind(self) -> Optional[str]:
        return self._str("kind")

    @property
    def reason(self) -> Optional[str]:
        return self._str("reason")

    @property
    def error(self) -> Optional[str]:
        return self._str("error")

    @property
    def attempt(self) -> int:
        return int(self.fields.get("attempt") or 0)

    @property
    def payload(self) -> bytes:
        return self.fields.get("payload", b"")

    @property
    def codec(self) -> str:
        return self._str("codec") or "json"


# ---- reply helpers -------------------------------------------------------------------------


def check(reply: Any) -> Any:
    """A reply, or the error it stands for raised as this package's error."""
    if isinstance(reply, BaseException):
        if "Function not found" in str(reply):
            raise LibraryMissing(
                "the rivulet_v1 function library is not loaded on this Redis: start a worker "
                "(workers load it at start) or run `worker-cli functions install`"
            ) from reply
        raise reply
    return reply


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def pairs(flat: Any) -> dict[str, bytes]:
    """A flat ``[name, value, ...]`` reply (or one redis-py already made a dict) as a dict."""
    if isinstance(flat, dict):
        flat = [x for kv in flat.items() for x in kv]
    out: dict[str, bytes] = {}
    for i in range(0, len(flat) - 1, 2):
        v = flat[i + 1]
        out[text(flat[i])] = v if isinstance(v, bytes) else str(v).encode()
    return out


def fcall(name: str, keys: Sequence[str], *args: Any) -> Command:
    return ("FCALL", FUNCTION_PREFIX + name, len(keys), *keys, *args)


# ---- operations ----------------------------------------------------------------------------


def layout(queue: str, want: Optional[Layout] = None) -> Plan[Layout]:
    """The queue's recorded layout; a new queue is recorded with ``want`` (default layout),
    as the Rust client does (``HSETNX`` then read back)."""
    check_name("queue", queue)
    wanted = want or Layout()
    replies = yield Batch([("HSETNX", QUEUES_KEY, queue, wanted.to_json()), ("HGET", QUEUES_KEY, queue)])
    check(replies[0])
    stored = Layout.from_json(check(replies[1]))
    if want is not None and stored != want:
        raise LayoutMismatch(f"queue {queue!r} is recorded as {stored.to_json()}, not {want.to_json()}")
    return stored


def on_queue(cache: MutableMapping[str, Layout], queue: str, op: Callable[..., Plan[T]], *args: Any) -> Plan[T]:
    """Runs ``op(queue, layout, *args)`` with the queue's layout, read once per client."""
    lay = cache.get(queue)
    if lay is None:
        lay = yield from layout(queue)
        cache[queue] = lay
    return (yield from op(queue, lay, *args))


def current_layout(queue: str, lay: Layout) -> Plan[Layout]:
    """The layout ``on_queue`` found (read from Redis the first time)."""
    return lay
    yield  # pragma: no cover - makes this a generator like every operation


def enqueue(queue: str, lay: Layout, tasks: Sequence[Task]) -> Plan[list[Enqueued]]:
    """Every task through ``rivulet_v1_enqueue`` (record, event, unique lock and scheduled
    set in one atomic call per task), all in one pipeline. Every task is checked before
    anything is sent."""
    now = now_ms()
    prepared = [prepare(queue, lay, t, now) for t in tasks]
    if not prepared:
        return []
    # One transaction: a connection cut in the middle leaves the whole batch or nothing (as
    # the Rust client's batches).
    replies = yield Batch([fcall("enqueue", p.keys_of_call, *p.args) for p in prepared], atomic=len(prepared) > 1)
    out = []
    for p, r in zip(prepared, replies):
        added, task_id = check(r)
        out.append(Enqueued(text(task_id), queue, duplicate=int(added) == 0))
    return out


def candidates(queue: str, lay: Layout, task_id: str) -> list[ShardKeys]:
    """The shards that may hold a task's record: its shard in each priority."""
    n = shard_for(task_id, lay.shards)
    return [ShardKeys(queue, p, n) for p in lay.priorities]


def find(queue: str, lay: Layout, task_id: str) -> Plan[Optional[tuple[ShardKeys, dict[str, bytes]]]]:
    # ``rivulet_v1_record`` reads a record of either type (a hash while the task lives, a
    # MessagePack string once final: docs/wire-format.md), so the rule lives in one place.
    shards = candidates(queue, lay, task_id)
    replies = yield Batch([fcall("record", [k.task(task_id)]) for k in shards])
    for k, r in zip(shards, replies):
        rec = check(r)
        fields = pairs(rec)
        if "state" in fields:
            return k, fields
    return None


def status(queue: str, lay: Layout, task_id: str) -> Plan[TaskStatus]:
    found = yield from find(queue, lay, task_id)
    if found is None:
        return TaskStatus(task_id, queue, TaskState.UNKNOWN)
    keys, fields = found
    return status_of(task_id, queue, keys.priority, fields, now_ms())


def wait(queue: str, lay: Layout, task_id: str, timeout: float) -> Plan[TaskStatus]:
    """``rivulet_v1_wait`` registers a waiter (unless final), then ``BLPOP`` on the task's done
    list, which the finishing script pushes to; the token goes back for other waiters."""
    if timeout < 0:
        raise ConfigError("timeout must be >= 0 seconds")
    found = yield from find(queue, lay, task_id)
    if found is None:
        raise UnknownTask(f"no task {task_id} in queue {queue}")
    keys, _ = found
    replies = yield Batch([fcall("wait", [keys.task(task_id), keys.waiting], task_id)])
    reply = check(replies[0])
    registered = int(reply[0]) == 1
    if not registered:
        st = status_of(task_id, queue, keys.priority, pairs(reply[1:]), now_ms())
        if st.state == TaskState.UNKNOWN:
            raise UnknownTask(f"no task {task_id} in queue {queue}")
        return st
    done = keys.done(task_id)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        # redis-py takes a connection of its pool for the blocking call, so it stalls no other.
        # BLPOP takes seconds as a decimal; at least 1 ms so 0 never means "forever".
        woken = left > 0 and check((yield Batch([("BLPOP", done, "%.3f" % max(left, 0.001))]))[0]) is not None
        if not woken:
            # Drop the registration (best effort: the count only decides whether settling pushes).
            check((yield Batch([fcall("wait", [keys.task(task_id), keys.waiting], task_id, "unregister")]))[0])
            break
        st = yield from status(queue, lay, task_id)
        if st.is_final:
            # The token goes back so every other waiter wakes too.
            check((yield Batch([("RPUSH", done, "1")]))[0])
            return st
        if st.state == TaskState.UNKNOWN:
            break
        # A token left by an earlier run (the task was replayed since it finished): consumed;
        # the registration stands; block again for the time left.
    st = yield from status(queue, lay, task_id)
    if st.state == TaskState.UNKNOWN:
        raise UnknownTask(f"no task {task_id} in queue {queue}")
    if not st.is_final:
        raise WaitTimeout(f"task {task_id} is still {st.state.value} after {timeout} s", st)
    return st


def cancel(queue: str, lay: Layout, task_id: str) -> Plan[tuple[CancelOutcome, TaskState]]:
    found = yield from find(queue, lay, task_id)
    if found is None:
        raise UnknownTask(f"no task {task_id} in queue {queue}")
    keys, fields = found
    done = keys.done(task_id)
    lock = fields.get("unique_key")
    call = fcall(
        "cancel",
        [
            keys.task(task_id), keys.stream, keys.scheduled, keys.retry, keys.stats, keys.events,
            keys.cancels, done, lock.decode() if lock else done, keys.waiting, keys.key("cancelled"),
            keys.key("fair"), keys.key("groups"),
        ],
        task_id, now_ms(), lay.events_maxlen, GROUP,
    )  # fmt: skip
    outcome, state = check((yield Batch([call]))[0])
    outcome = text(outcome)
    if outcome == "unknown":
        raise UnknownTask(f"no task {task_id} in queue {queue}")
    try:
        st = TaskState(text(state))
    except ValueError:
        st = TaskState.UNKNOWN
    return CancelOutcome(outcome), st


def stats(queue: str, lay: Layout) -> Plan[QueueStats]:
    shards = all_shards(queue, lay)
    calls = [fcall("inspect", [k.stream, k.scheduled, k.retry, k.dlq, k.stats, k.key("fair")], GROUP) for k in shards]
    replies = yield Batch(calls)
    out = []
    for k, r in zip(shards, replies):
        length, lag, pending, _oldest, scheduled, retry, dlq, counters, fair = check(r)
        c = {a: int(b) for a, b in pairs(counters).items()}
        out.append(
            ShardNumbers(k.priority, k.shard, int(length), None if int(lag) < 0 else int(lag), int(pending),
                         int(scheduled), int(retry), int(dlq), c, int(fair))
        )  # fmt: skip
    return QueueStats(queue, lay, out)


def _entry_key(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def dlq_list(queue: str, lay: Layout, limit: int = 100, kind: Optional[str] = None) -> Plan[list[DeadLetter]]:
    """Up to ``limit`` dead letters, oldest first over every shard."""
    shards = all_shards(queue, lay)
    found: list[DeadLetter] = []
    for k in shards:
        start = "-"
        while True:
            rows = check((yield Batch([("XRANGE", k.dlq, start, "+", "COUNT", 500)]))[0])
            for entry, flat in rows:
                e = text(entry)
                fields = pairs(flat)
                if kind is None or fields.get("kind") == kind.encode():
                    found.append(DeadLetter("%s/%d/%s" % (k.priority, k.shard, e), fields))
            if len(rows) < 500 or len(found) >= limit:
                break
            start = "(" + text(rows[-1][0])
    found.sort(key=lambda d: _entry_key(d.id.rsplit("/", 1)[1]))
    return found[:limit]


def _by_shard(queue: str, lay: Layout, ids: Sequence[str]) -> dict[ShardKeys, list[str]]:
    out: dict[ShardKeys, list[str]] = {}
    for dl in ids:
        try:
            priority, shard, entry = dl.split("/")
            keys = ShardKeys(queue, priority, int(shard))
        except ValueError:
            raise ConfigError(f"dead letter id {dl!r}: expected PRIORITY/SHARD/ENTRY") from None
        if priority not in lay.priorities or not 0 <= keys.shard < lay.shards:
            raise ConfigError(f"dead letter id {dl!r}: no such shard in queue {queue!r}")
        out.setdefault(keys, []).append(entry)
    return out


def dlq_replay(queue: str, lay: Layout, ids: Sequence[str]) -> Plan[int]:
    """Replays dead letters by id through ``rivulet_v1_replay`` (their records read
    ``queued`` again). Returns how many; ids already gone are skipped."""
    total = 0
    for keys, entries in _by_shard(queue, lay, ids).items():
        rows = yield Batch([("XRANGE", keys.dlq, e, e) for e in entries])
        present, records = [], []
        for e, r in zip(entries, rows):
            got = check(r)
            if got:
                task_id = pairs(got[0][1]).get("id", b"").decode()
                present.append(e)
                records.append(keys.task(task_id))
        if not present:
            continue
        call = fcall("replay", [keys.dlq, keys.stream, keys.stats, keys.events, *records],
                     *present, now_ms(), lay.events_maxlen)  # fmt: skip
        total += int(check((yield Batch([call]))[0]))
    return total


def dlq_purge(queue: str, lay: Layout, ids: Sequence[str]) -> Plan[int]:
    """Deletes dead letters by id (``XDEL``). Returns how many."""
    total = 0
    for keys, entries in _by_shard(queue, lay, ids).items():
        total += int(check((yield Batch([("XDEL", keys.dlq, *entries)]))[0]))
    return total


def dlq_apply(
    queue: str, lay: Layout, op: Callable[[str, Layout, Sequence[str]], Plan[int]],
    ids: Optional[Sequence[str]], kind: Optional[str],
) -> Plan[int]:  # fmt: skip
    """``dlq_replay`` or ``dlq_purge`` of the given ids, or of every dead letter (of ``kind``)."""
    if ids is None:
        ids = [d.id for d in (yield from dlq_list(queue, lay, 1 << 62, kind))]
    return (yield from op(queue, lay, ids))


def as_task(kind: Union[str, Task], payload: Any, options: dict[str, Any]) -> Task:
    if isinstance(kind, Task):
        if payload is not None or options:
            raise ConfigError("pass a Task alone, or kind, payload and options")
        return kind
    try:
        return Task(kind, payload, **options)
    except TypeError as e:
        raise ConfigError(str(e)) from None
