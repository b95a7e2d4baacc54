"""Wire format v1 (docs/wire-format.md): key names, shard choice, ids, task fields, codecs.

Pure functions only: no Redis here. The engine's logic (enqueue, cancel, wait, stats, replay)
is not reimplemented: it runs in Redis as the ``rivulet_v1`` function library the engine
installs, generated from the engine's own Lua scripts.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence, Union

PREFIX = "rivulet"
QUEUES_KEY = "rivulet:queues"
GROUP = "rivulet"
DEFAULT_PRIORITIES = ("high", "normal", "low")
DEFAULT_PRIORITY = "normal"
MAX_SHARDS = 1024
#: How long a finished task's record is kept unless the task says otherwise (the engine's
#: ``keys::DEFAULT_RETENTION``).
DEFAULT_RETENTION_MS = 3_600_000
#: About how many lifecycle events a queue keeps over all its shards.
DEFAULT_EVENTS_KEPT = 10_000
FUNCTION_PREFIX = "rivulet_v1_"

Codec = Literal["json", "msgpack", "bytes"]
CODECS: tuple[str, ...] = ("json", "msgpack", "bytes")
Seconds = Union[int, float]

#: Field names the wire format uses: task fields and the ones dead letters add.
RESERVED_FIELDS = frozenset(
    "id kind payload codec enqueued_at attempt max_attempts timeout_ms backoff_base_ms backoff_factor "
    "backoff_cap_ms error retention_ms unique_key unique_ttl_ms group reason dead_at origin deliveries".split()
)

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: A fair group's name (the engine's ``envelope::check_group``).
_GROUP = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")


class RivuletError(Exception):
    """Base of every error this package raises."""


class ConfigError(RivuletError, ValueError):
    """Bad input: nothing was sent."""


def check_name(what: str, name: str) -> str:
    """A queue or priority name: ``[A-Za-z0-9._-]{1,64}`` (it is part of every key)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{what} {name!r}: must match [A-Za-z0-9._-]{{1,64}}")
    return name


def shard_for(key: str, shards: int) -> int:
    """FNV-1a 64 of the UTF-8 bytes, modulo the shard count (the engine's ``shard_for``)."""
    h = 0xCBF29CE484222325
    for b in key.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % max(shards, 1)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_task_id(now: Optional[int] = None) -> str:
    """12 hex digits of ms since the epoch, then 16 random hex digits (sortable, unique)."""
    return "%012x%s" % (now if now is not None else now_ms(), os.urandom(8).hex())


@dataclass(frozen=True)
class Layout:
    """A queue's priorities (highest first) and shards per priority, as recorded in Redis."""

    priorities: tuple[str, ...] = DEFAULT_PRIORITIES
    shards: int = 1

    def __post_init__(self) -> None:
        if not self.priorities:
            raise ConfigError("a queue needs at least one priority")
        for i, p in enumerate(self.priorities):
            check_name("priority", p)
            if p in self.priorities[:i]:
                raise ConfigError(f"priority {p!r} is listed twice")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"shards {self.shards}: must be 1..={MAX_SHARDS}")

    @property
    def default_priority(self) -> str:
        """``normal`` when the queue has it, else the middle one (the engine's rule)."""
        if DEFAULT_PRIORITY in self.priorities:
            return DEFAULT_PRIORITY
        return self.priorities[len(self.priorities) // 2]

    @property
    def events_maxlen(self) -> int:
        return max(100, DEFAULT_EVENTS_KEPT // (len(self.priorities) * self.shards))

    def to_json(self) -> str:
        """The layout JSON the engine writes (serde's field order, no spaces)."""
        return json.dumps({"priorities": list(self.priorities), "shards": self.shards}, separators=(",", ":"))

    @staticmethod
    def from_json(text: Union[str, bytes]) -> "Layout":
        d = json.loads(text)
        return Layout(tuple(d["priorities"]), int(d["shards"]))


@dataclass(frozen=True)
class ShardKeys:
    """Every key of one shard; they share the Cluster hash tag ``{queue:priority:shard}``."""

    queue: str
    priority: str
    shard: int

    @property
    def tag(self) -> str:
        return "%s:{%s:%s:%d}" % (PREFIX, self.queue, self.priority, self.shard)

    def key(self, name: str) -> str:
        return "%s:%s" % (self.tag, name)

    @property
    def stream(self) -> str:
        return self.key("stream")

    @property
    def scheduled(self) -> str:
        return self.key("scheduled")

    @property
    def retry(self) -> str:
        return self.key("retry")

    @property
    def dlq(self) -> str:
        return self.key("dlq")

    @property
    def stats(self) -> str:
        return self.key("stats")

    @property
    def events(self) -> str:
        return self.key("events")

    @property
    def cancels(self) -> str:
        return self.key("cancels")

    @property
    def waiting(self) -> str:
        return self.key("waiting")

    def task(self, task_id: str) -> str:
        return self.key("task:" + task_id)

    def done(self, task_id: str) -> str:
        return self.key("done:" + task_id)

    def unique(self, unique_key: str) -> str:
        return self.key("unique:" + unique_key)


def all_shards(queue: str, layout: Layout) -> list[ShardKeys]:
    return [ShardKeys(queue, p, n) for p in layout.priorities for n in range(layout.shards)]


def encode_payload(payload: Any, codec: str) -> bytes:
    if codec == "json":
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    if codec == "msgpack":
        return bytes(_msgpack().packb(payload, use_bin_type=True))
    if codec == "bytes":
        if isinstance(payload, str):
            return payload.encode()
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return bytes(payload)
        raise ConfigError(f"codec 'bytes' takes bytes or str, not {type(payload).__name__}")
    raise ConfigError(f"unknown codec {codec!r} (expected json, msgpack or bytes)")


def decode_payload(data: bytes, codec: str) -> Any:
    if codec == "json":
        return json.loads(data)
    if codec == "msgpack":
        return _msgpack().unpackb(data, raw=False)
    return data


def _msgpack() -> Any:
    # Imported by name: msgpack is optional and ships no type information.
    try:
        return importlib.import_module("msgpack")
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError("codec 'msgpack' needs the msgpack package: pip install 'rivulet[msgpack]'") from e


def _ms(what: str, seconds: Optional[Seconds], minimum: int = 0) -> Optional[int]:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ConfigError(f"{what} {seconds!r}: must be a number of seconds")
    ms = int(round(seconds * 1000))
    if ms < minimum:
        raise ConfigError(f"{what} {seconds!r}: must be at least {minimum} ms")
    return ms


@dataclass(frozen=True)
class Backoff:
    """Retry delays of one task: the first retry waits up to ``base`` seconds, each further
    one ``factor`` times longer, never more than ``cap`` (full jitter below the ceiling).
    Any left ``None`` is the worker's setting."""

    base: Optional[Seconds] = None
    factor: Optional[float] = None
    cap: Optional[Seconds] = None


@dataclass
class Task:
    """One task to enqueue, with every option of the wire format.

    ``delay`` (seconds) or ``run_at`` (seconds since the epoch) park it until due;
    ``unique_key`` makes it unique among live tasks of its queue and priority (for
    ``unique_for`` seconds from enqueue instead, when given); ``retention`` (seconds, 0 = no
    record) overrides how long its status is kept once final; ``group`` (a tenant id, say:
    ``[A-Za-z0-9._:/-]{1,64}``) puts it in a fair group, served in turn with the other groups
    of its priority (docs/groups.md).
    """

    kind: str
    payload: Any = None
    codec: Codec = "json"
    priority: Optional[str] = None
    delay: Optional[Seconds] = None
    run_at: Optional[Seconds] = None
    unique_key: Optional[str] = None
    unique_for: Optional[Seconds] = None
    max_attempts: Optional[int] = None
    timeout: Optional[Seconds] = None
    backoff: Optional[Backoff] = None
    retention: Optional[Seconds] = None
    group: Optional[str] = None
    id: Optional[str] = None
    extra: dict[str, Union[str, bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """A task checked and encoded: its shard, and the arguments of ``rivulet_v1_enqueue``."""

    id: str
    keys: ShardKeys
    keys_of_call: tuple[str, ...]
    args: tuple[Union[str, bytes, int], ...]


def prepare(queue: str, layout: Layout, task: Task, now: int) -> Prepared:
    """Checks a task (the same rules the worker applies, so a bad one is refused here rather
    than dead-lettered there) and builds its ``FCALL rivulet_v1_enqueue`` arguments
    (contract: engine/src/broker/scripts/enqueue.lua)."""
    if not isinstance(task.kind, str) or not task.kind:
        raise ConfigError("kind must be a non-empty string")
    if task.codec not in CODECS:
        raise ConfigError(f"unknown codec {task.codec!r} (expected json, msgpack or bytes)")
    priority = task.priority if task.priority is not None else layout.default_priority
    if priority not in layout.priorities:
        raise ConfigError(f"queue {queue!r} has no priority {priority!r} (it has {', '.join(layout.priorities)})")
    if task.max_attempts is not None and (isinstance(task.max_attempts, bool) or not isinstance(task.max_attempts, int) or task.max_attempts < 1):
        raise ConfigError(f"max_attempts {task.max_attempts!r}: must be an integer >= 1")
    timeout_ms = _ms("timeout", task.timeout, minimum=1)
    retention_ms = _ms("retention", task.retention)
    unique_ttl_ms = _ms("unique_for", task.unique_for, minimum=1)
    if unique_ttl_ms is not None and task.unique_key is None:
        raise ConfigError("unique_for needs a unique_key")
    b = task.backoff or Backoff()
    base_ms, cap_ms = _ms("backoff.base", b.base), _ms("backoff.cap", b.cap)
    if b.factor is not None and (not isinstance(b.factor, (int, float)) or not math.isfinite(b.factor) or b.factor < 1):
        raise ConfigError(f"backoff.factor {b.factor!r}: must be a number >= 1")
    if base_ms is not None and cap_ms is not None and cap_ms < base_ms:
        raise ConfigError(f"backoff.cap ({cap_ms} ms) is below backoff.base ({base_ms} ms)")
    if task.group is not None and (not isinstance(task.group, str) or not _GROUP.match(task.group)):
        raise ConfigError(f"group {task.group!r}: must be 1 to 64 characters of A-Z a-z 0-9 . _ - : /")
    if task.delay is not None and task.run_at is not None:
        raise ConfigError("give delay or run_at, not both")
    due = 0
    if task.delay is not None:
        delay_ms = _ms("delay", task.delay)
        due = now + delay_ms if delay_ms else 0
    elif task.run_at is not None:
        at = _ms("run_at", task.run_at) or 0
        due = at if at > now else 0
    payload = encode_payload(task.payload, task.codec)

    # A unique task goes to the shard its key hashes to, with an id that maps there too, so
    # the lock, the task and its record share one slot and a lookup by id finds it.
    if task.unique_key is not None:
        if not isinstance(task.unique_key, str) or not task.unique_key:
            raise ConfigError("unique_key must be a non-empty string")
        shard = shard_for(task.unique_key, layout.shards)
        if task.id is not None:
            if shard_for(task.id, layout.shards) != shard:
                raise ConfigError(f"id {task.id!r} does not map to the shard of unique key {task.unique_key!r}")
            task_id = task.id
        else:
            task_id = new_task_id(now)
            while shard_for(task_id, layout.shards) != shard:
                task_id = new_task_id(now)
    else:
        task_id = task.id if task.id is not None else new_task_id(now)
        if not task_id:
            raise ConfigError("id must not be empty")
        shard = shard_for(task_id, layout.shards)
    keys = ShardKeys(queue, priority, shard)

    fields: list[Union[str, bytes, int]] = [
        "id", task_id, "kind", task.kind, "payload", payload, "codec", task.codec,
        "enqueued_at", now, "attempt", 0,
    ]  # fmt: skip
    optional: Sequence[tuple[str, Optional[Union[int, str]]]] = (
        ("max_attempts", task.max_attempts),
        ("timeout_ms", timeout_ms),
        ("backoff_base_ms", base_ms),
        ("backoff_factor", None if b.factor is None else repr(float(b.factor))),
        ("backoff_cap_ms", cap_ms),
        ("retention_ms", retention_ms),
        ("unique_key", task.unique_key),
        ("unique_ttl_ms", unique_ttl_ms),
        ("group", task.group),
    )
    for name, value in optional:
        if value is not None:
            fields += [name, value if not isinstance(value, float) else repr(value)]
    for extra_name, extra_value in task.extra.items():
        if extra_name in RESERVED_FIELDS:
            raise ConfigError(f"extra field {extra_name!r} is reserved by the wire format")
        fields += [extra_name, extra_value]
    lock = keys.unique(task.unique_key) if task.unique_key is not None else keys.stream
    retention = DEFAULT_RETENTION_MS if retention_ms is None else retention_ms
    unique_arg = "" if task.unique_key is None else str(unique_ttl_ms or 0)
    keys_of_call: tuple[str, ...] = (keys.stream, keys.scheduled, keys.stats, keys.task(task_id), keys.events, lock)
    if task.group is not None:
        # A grouped task waits its turn in the shard's fair set (fair.lua).
        keys_of_call += (keys.key("fair"), keys.key("groups"))
    return Prepared(
        id=task_id,
        keys=keys,
        keys_of_call=keys_of_call,
        args=(task_id, now, due, retention, layout.events_maxlen, unique_arg, *fields),
    )
