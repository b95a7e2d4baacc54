"""The producer against real Rust workers: every wire option, both codecs, status, wait,
cancel, unique keys, dead letters and stats."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgpack
import pytest

from conftest import RedisServer, cli, wait_until
from rivulet import (
    AsyncClient,
    Backoff,
    CancelOutcome,
    Client,
    ConfigError,
    Task,
    TaskState,
    UnknownTask,
    WaitTimeout,
)

# The exec command's stdout is the task's result: `cat` hands back the payload exactly as the
# Rust worker read it from the stream.
ECHO = "echo=cat"


def test_json_msgpack_and_bytes_payloads_reach_a_rust_worker_intact(client: Client, queue: str, start_worker) -> None:
    start_worker(queue, ECHO)
    doc = {"symbol": "ACME", "n": 3, "w": [1.5, None, True], "text": "ünïcode ✓"}
    tasks = [
        Task("echo", doc),
        Task("echo", doc, codec="msgpack"),
        Task("echo", b"\x00\xffraw", codec="bytes"),
    ]
    handles = client.enqueue_many(queue, tasks)
    got = [h.wait(timeout=30) for h in handles]
    assert [g.state for g in got] == [TaskState.SUCCEEDED] * 3, [g.fields for g in got]
    assert json.loads(got[0].result_bytes or b"") == doc
    assert msgpack.unpackb(got[1].result_bytes, raw=False) == doc
    assert got[2].result_bytes == b"\x00\xffraw"


def test_every_option_is_written_in_wire_format_and_honoured_by_the_worker(
    client: Client, server: RedisServer, queue: str, start_worker
) -> None:
    client.declare(queue, priorities=["urgent", "bulk"], shards=2)
    h = client.enqueue(
        queue, "fail", {"x": 1}, priority="bulk", max_attempts=2, timeout=5,
        backoff=Backoff(base=0.05, factor=1.5, cap=0.1), retention=120, unique_key="fail-1", unique_for=60,
    )  # fmt: skip
    # The fields on the wire, as a foreign reader sees them (docs/wire-format.md).
    key = "rivulet:{%s:bulk:%d}:task:%s" % (queue, __import__("rivulet").shard_for("fail-1", 2), h.id)
    rec = client.redis.hgetall(key)
    assert rec[b"state"] == b"queued" and rec[b"retention_ms"] == b"120000", rec
    start_worker(queue, extra=["--max-attempts", "9"])
    st = h.wait(timeout=30)
    # The built-in `fail` kind always fails: its own max_attempts (2), not the worker's (9).
    assert st.state == TaskState.DEAD and st.reason == "exhausted" and st.attempt == 2, st.fields
    # Final, the record is a string: a MessagePack map of the same fields, expiring with the
    # retention.
    import msgpack

    assert client.redis.type(key) == b"string"
    final = msgpack.unpackb(client.redis.get(key), raw=True)
    assert final[b"state"] == b"dead" and final[b"reason"] == b"exhausted" and final[b"kind"] == b"fail", final
    assert 0 < client.redis.pttl(key) <= 120_000
    assert st.priority == "bulk"
    dead = client.dlq.list(queue)
    assert len(dead) == 1
    f = dead[0].fields
    assert f["timeout_ms"] == b"5000" and f["backoff_base_ms"] == b"50" and f["backoff_factor"] == b"1.5"
    assert f["backoff_cap_ms"] == b"100" and f["max_attempts"] == b"2" and f["unique_ttl_ms"] == b"60000"
    # unique_for: the key stays taken for its window even though the task is final.
    again = client.enqueue(queue, "fail", {"x": 2}, priority="bulk", unique_key="fail-1")
    assert again.duplicate and again.id == h.id


def test_a_succeeded_record_is_a_field_of_the_shards_finished_hash(client: Client, queue: str, start_worker) -> None:
    client.declare(queue, priorities=["normal"], shards=1)
    start_worker(queue, ECHO)
    h = client.enqueue(queue, "echo", {"n": 1}, retention=120)
    assert h.wait(timeout=30).state == TaskState.SUCCEEDED
    # As a foreign reader finds it (docs/wire-format.md "Task records"): no record key, a
    # field of the shard's finished hash, "<expires at ms> <MessagePack map>".
    base = "rivulet:{%s:normal:0}" % queue
    assert client.redis.exists(base + ":task:" + h.id) == 0
    value = client.redis.hget(base + ":finished", h.id)
    assert value is not None
    expires, packed = value.split(b" ", 1)
    secs, micros = client.redis.time()
    assert 0 < int(expires) - (secs * 1000 + micros // 1000) <= 120_000
    final = msgpack.unpackb(packed, raw=True)
    assert final[b"state"] == b"succeeded" and final[b"kind"] == b"echo", final
    assert json.loads(final[b"result"]) == {"n": 1} and final[b"runs"] == b"1", final


def test_a_task_timeout_kills_the_command_and_counts_as_a_failed_attempt(client: Client, queue: str, start_worker) -> None:
    start_worker(queue, "slow=sleep 20")
    st = client.enqueue(queue, "slow", {}, timeout=0.3, max_attempts=1).wait(timeout=30)
    assert st.state == TaskState.DEAD and st.reason == "exhausted", st.fields
    assert "time" in (st.error or ""), st.error


def test_delayed_tasks_are_atomic_scheduled_then_run_when_due(client: Client, queue: str, start_worker) -> None:
    start_worker(queue, ECHO)
    h = client.enqueue(queue, "echo", {"late": True}, delay=1.0)
    assert h.status().state == TaskState.SCHEDULED
    assert client.stats(queue).scheduled == 1
    began = time.monotonic()
    st = h.wait(timeout=30)
    assert st.state == TaskState.SUCCEEDED and json.loads(st.result_bytes or b"") == {"late": True}
    assert time.monotonic() - began > 0.5  # it did wait for its due time (a lower bound only)
    # run_at in the past: ready now.
    assert client.enqueue(queue, "echo", 1, run_at=time.time() - 5).wait(timeout=30).state == TaskState.SUCCEEDED


def test_unique_keys_make_one_task_until_it_is_final(client: Client, queue: str, start_worker) -> None:
    first = client.enqueue(queue, "echo", 1, unique_key="nightly")
    dup = client.enqueue(queue, "echo", 2, unique_key="nightly")
    assert not first.duplicate and dup.duplicate and dup.id == first.id
    assert client.stats(queue).counters.get("enqueued") == 1
    start_worker(queue, ECHO)
    assert first.wait(timeout=30).state == TaskState.SUCCEEDED
    # Final: the key is free again.
    third = client.enqueue(queue, "echo", 3, unique_key="nightly")
    assert not third.duplicate and third.id != first.id


def test_progress_and_cancel_of_a_running_task(client: Client, queue: str, start_worker) -> None:
    start_worker(queue, 'long=echo "40 half way" > "$RIVULET_PROGRESS_FILE"; sleep 30')
    h = client.enqueue(queue, "long", {})
    wait_until(lambda: h.progress() == (40, "half way"), 30, "progress 40")
    assert h.status().state == TaskState.ACTIVE
    assert h.cancel() == CancelOutcome.CANCELLING
    st = h.wait(timeout=30)
    assert st.state == TaskState.CANCELLED and st.fields.get("started") == b"1", st.fields


def test_a_cancelled_delayed_task_never_runs(client: Client, queue: str, start_worker) -> None:
    h = client.enqueue(queue, "echo", {}, delay=0.5)
    assert h.cancel() == CancelOutcome.CANCELLED
    start_worker(queue, ECHO)
    time.sleep(1.5)
    st = h.status()
    assert st.state == TaskState.CANCELLED and st.fields.get("started") == b"0"
    assert h.cancel() == CancelOutcome.ALREADY_FINISHED
    assert client.stats(queue).counters.get("done", 0) == 0


def test_grouped_tasks_wait_their_turn_are_cancelled_there_and_run(client: Client, queue: str, start_worker) -> None:
    # No worker yet: the shard's default window (100) goes to the stream, 5 wait their turn.
    handles = [client.enqueue(queue, "echo", n, group="tenant-a") for n in range(105)]
    assert client.stats(queue).fair == 5
    last = handles[-1]
    assert last.status().state == TaskState.QUEUED
    assert last.status().fields.get("group") == b"tenant-a"
    assert last.cancel() == CancelOutcome.CANCELLED
    assert client.stats(queue).fair == 4
    delayed = client.enqueue(queue, "echo", "late", group="tenant-b", delay=0.3)
    start_worker(queue, ECHO)
    for h in handles[:-1] + [delayed]:
        assert h.wait(timeout=60).state == TaskState.SUCCEEDED
    st = last.status()
    assert st.state == TaskState.CANCELLED and st.fields.get("started") == b"0"
    assert client.stats(queue).fair == 0


def test_wait_times_out_with_the_state_and_unknown_ids_are_named(client: Client, queue: str) -> None:
    h = client.enqueue(queue, "echo", {})
    with pytest.raises(WaitTimeout) as e:
        h.wait(timeout=0.2)
    assert e.value.status.state == TaskState.QUEUED
    with pytest.raises(UnknownTask):
        client.wait(queue, "nope", 0.1)
    assert client.status(queue, "nope").state == TaskState.UNKNOWN


def test_retention_zero_keeps_no_record_but_the_task_runs(client: Client, queue: str, start_worker) -> None:
    h = client.enqueue(queue, "echo", {}, retention=0)
    assert h.status().state == TaskState.UNKNOWN
    start_worker(queue, ECHO)
    wait_until(lambda: client.stats(queue).counters.get("done") == 1, 30, "the task to run")


def test_dead_letters_list_replay_and_purge(client: Client, queue: str, start_worker) -> None:
    start_worker(queue)
    hs = client.enqueue_many(queue, [Task("fail", i, max_attempts=1) for i in range(3)])
    for h in hs:
        assert h.wait(timeout=30).state == TaskState.DEAD
    dead = client.dlq.list(queue)
    assert sorted(d.task_id or "" for d in dead) == sorted(h.id for h in hs)
    assert all(d.reason == "exhausted" and d.attempt == 1 for d in dead)
    assert client.dlq.replay(queue, [dead[0].id]) == 1
    assert hs[0].id in {hs[0].id}
    wait_until(lambda: client.stats(queue).counters.get("replayed") == 1 and len(client.dlq.list(queue)) == 3, 30, "replayed and dead again")
    assert client.dlq.purge(queue, kind="fail") == 3
    assert client.dlq.list(queue) == [] and client.stats(queue).dlq == 0


def test_bad_input_is_refused_before_anything_is_sent(client: Client, queue: str) -> None:
    for bad in [
        dict(timeout=0), dict(max_attempts=0), dict(priority="nope"), dict(codec="xml"),
        dict(backoff=Backoff(base=2, cap=1)), dict(backoff=Backoff(factor=0.5)), dict(unique_for=5),
        dict(delay=1, run_at=5), dict(extra={"reason": "x"}), dict(group=""), dict(group="a b"),
        dict(group="x" * 65), dict(extra={"group": "g"}),
    ]:  # fmt: skip
        with pytest.raises(ConfigError):
            client.enqueue(queue, "echo", {}, **bad)
    with pytest.raises(ConfigError):
        client.enqueue("bad{name}", "echo", {})
    with pytest.raises(ConfigError):
        client.enqueue(queue, "", {})
    assert client.stats(queue).counters.get("enqueued", 0) == 0


def test_timeout_ms_zero_on_the_wire_is_buried_as_malformed(client: Client, queue: str, start_worker, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    start_worker(queue, f"touch=touch {ran}")
    stream = "rivulet:{%s:normal:0}:stream" % queue
    client.redis.xadd(stream, {"id": "t0", "kind": "touch", "payload": "{}", "timeout_ms": "0"})
    dead = wait_until(lambda: client.dlq.list(queue), 30, "the dead letter")
    assert dead[0].reason == "malformed" and "timeout_ms" in (dead[0].error or ""), dead[0].fields  # type: ignore[index]
    assert not ran.exists()


def test_an_exec_handler_does_not_run_on_a_payload_that_does_not_decode(
    client: Client, queue: str, start_worker, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    start_worker(queue, f"touch=touch {ran}")
    stream = "rivulet:{%s:normal:0}:stream" % queue
    client.redis.xadd(stream, {"id": "j", "kind": "touch", "payload": "{not json", "codec": "json"})
    client.redis.xadd(stream, {"id": "m", "kind": "touch", "payload": b"\xc1", "codec": "msgpack"})
    dead = wait_until(lambda: len(client.dlq.list(queue)) == 2 and client.dlq.list(queue), 30, "two dead letters")
    assert {d.reason for d in dead} == {"malformed"}, [d.fields for d in dead]  # type: ignore[union-attr]
    assert all("does not decode" in (d.error or "") for d in dead)  # type: ignore[union-attr]
    assert not ran.exists()
    # A valid payload (and any `bytes` one) still runs the command.
    client.enqueue(queue, "touch", b"\xc1 anything", codec="bytes").wait(timeout=30)
    assert ran.exists()


def test_the_rust_cli_refuses_a_zero_timeout_too(server: RedisServer, queue: str) -> None:
    out = cli(server, "enqueue", "--queue", queue, "--kind", "noop", "--timeout", "0s")
    assert out.returncode != 0 and "timeout" in out.stderr, out.stderr


def test_the_asyncio_client_enqueues_waits_and_cancels(server: RedisServer, queue: str, start_worker) -> None:
    start_worker(queue, ECHO)

    async def main() -> None:
        async with AsyncClient.from_url(server.url) as c:
            hs = await c.enqueue_many(queue, [Task("echo", {"i": i}, codec="msgpack") for i in range(5)])
            done = await asyncio.gather(*(h.wait(timeout=30) for h in hs))
            assert [msgpack.unpackb(d.result_bytes) for d in done] == [{"i": i} for i in range(5)]
            later = await c.enqueue(queue, "echo", {}, delay=60)
            assert (await later.status()).state == TaskState.SCHEDULED
            assert await later.cancel() == CancelOutcome.CANCELLED
            assert (await c.stats(queue)).counters["cancelled"] == 1

    asyncio.run(main())


def test_a_missing_library_is_named(server: RedisServer, queue: str) -> None:
    import redis as redis_py

    from rivulet import LibraryMissing

    c = Client(redis_py.Redis(port=server.port))
    c.redis.function_delete("rivulet_v1")
    try:
        with pytest.raises(LibraryMissing, match="worker-cli functions install"):
            c.enqueue(queue, "echo", {})
    finally:
        assert cli(server, "functions", "install").returncode == 0
        c.close()
