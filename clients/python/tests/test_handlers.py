"""``rivulet.handlers`` end to end: a real ``redis-server``, the real ``worker-cli --serve``, and a
handler module written with the package, as a team would write one."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Dict, Iterator

import pytest

from serve_fixtures import RedisServer, Served, redis_server, serve_module  # noqa: F401 - fixture

APP = r'''
import asyncio, os, sys, time
from rivulet import handlers

print("loading the model... (an import-time print must not break the protocol)")

def mark(ctx):
    with open(os.path.join("@DIR@", "pid-%s-%d" % (ctx.id, ctx.attempt)), "w") as f:
        f.write(str(os.getpid()))

@handlers.task("train")
def train(payload, ctx):
    ctx.progress(40, "epoch 2")
    print("a print in a handler goes to stderr, not into the protocol")
    return {"loss": 0.1, "echo": payload, "pid": os.getpid(), "attempt": ctx.attempt}

@handlers.task("flaky")
def flaky(payload, ctx):
    raise ValueError("boom on attempt %d" % ctx.attempt)

@handlers.task("fatal")
def fatal(payload, ctx):
    raise handlers.Fatal("this input can never work")

@handlers.task("later")
def later(payload, ctx):
    if ctx.attempt == 0:
        raise handlers.Retry("busy", after=0.2)
    return "second time lucky"

@handlers.task("slow")
def slow(payload, ctx):
    mark(ctx)
    ctx.progress(5, "started")
    if ctx.cancel_event.wait(60):
        raise RuntimeError("stopping: cancelled")
    return "never cancelled"

@handlers.task("aslow")
async def aslow(payload, ctx):
    mark(ctx)
    ctx.progress(5, "started async")
    await asyncio.sleep(60)
    return "never cancelled"

@handlers.task("die_once")
def die_once(payload, ctx):
    mark(ctx)
    if ctx.attempt == 0:
        time.sleep(60)
    return {"pid": os.getpid()}

@handlers.task("big")
def big(payload, ctx):
    return {"len": len(payload["blob"]), "tail": payload["blob"][-3:], "name": payload["name"]}

@handlers.task("deadline")
def deadline(payload, ctx):
    return {"remaining": ctx.remaining(), "deadline": ctx.deadline}

@handlers.task("raw")
def raw(payload, ctx):
    return bytes(reversed(payload))

if __name__ == "__main__":
    handlers.serve()
'''

KINDS = "train,flaky,fatal,later,slow,aslow,die_once,big,raw,deadline"


@pytest.fixture(scope="module")
def served(redis_server: RedisServer) -> Iterator[Served]:
    yield from serve_module(redis_server, "py-handlers", APP, KINDS, ["--serve-concurrency", "4"])


def result_of(st: Dict[str, Any]) -> Any:
    return json.loads(st["result"])


def test_results_come_from_one_long_lived_process_and_prints_do_not_break_the_protocol(served: Served) -> None:
    ids = [served.enqueue("train", json.dumps({"i": i})) for i in range(5)]
    results = [result_of(served.wait_state(i, "succeeded")) for i in ids]
    assert [r["echo"] for r in results] == [{"i": i} for i in range(5)]
    assert {r["loss"] for r in results} == {0.1}
    assert len({r["pid"] for r in results}) == 1, results
    log = served.sup.log()
    assert "a print in a handler goes to stderr" in log and "loading the model" in log
    assert "before `ready`" not in log, "the import-time print reached stdout"


def test_progress_is_visible_while_the_task_runs_and_cancel_stops_it(served: Served) -> None:
    task_id = served.enqueue("slow", "{}")
    served.marked(f"pid-{task_id}-0")
    st = served.wait_state(task_id, "active")
    from serve_fixtures import cli_json, wait_for

    wait_for(lambda: (served.show(task_id).get("progress") or {}).get("message") == "started", 10, "progress")
    assert served.show(task_id)["progress"]["percent"] == 5, st
    cli_json(served.server.url, ["task", "cancel", task_id, "--queue", served.queue])
    served.wait_state(task_id, "cancelled")
    assert not os.path.exists(os.path.join(served.dir, f"pid-{task_id}-1")), "a cancel is not retried"


def test_an_async_handler_is_cancelled_too(served: Served) -> None:
    from serve_fixtures import cli_json

    task_id = served.enqueue("aslow", "{}")
    served.marked(f"pid-{task_id}-0")
    served.wait_state(task_id, "active")
    cli_json(served.server.url, ["task", "cancel", task_id, "--queue", served.queue])
    served.wait_state(task_id, "cancelled")


def test_an_exception_is_retried_then_dead_lettered(served: Served) -> None:
    task_id = served.enqueue("flaky", "{}")
    st = served.wait_state(task_id, "dead")
    assert st["reason"] == "exhausted", st
    assert st["error"] == "ValueError: boom on attempt 1", st
    assert "Traceback" in served.sup.log()


def test_fatal_goes_to_the_dead_letters_without_a_retry(served: Served) -> None:
    task_id = served.enqueue("fatal", "{}")
    st = served.wait_state(task_id, "dead")
    assert st["reason"] == "fatal", st
    assert "this input can never work" in st["error"], st
    assert st["attempt"] == 1, st


def test_retry_after_runs_the_task_again(served: Served) -> None:
    task_id = served.enqueue("later", "{}")
    st = served.wait_state(task_id, "succeeded")
    assert result_of(st) == "second time lucky"
    assert st["attempt"] == 1, st


def test_a_handler_process_killed_mid_task_has_its_task_run_again(served: Served) -> None:
    task_id = served.enqueue("die_once", "{}")
    first = served.marked(f"pid-{task_id}-0")
    os.kill(first, signal.SIGKILL)
    st = served.wait_state(task_id, "succeeded")
    second = result_of(st)["pid"]
    assert second != first, "a restarted process ran the retry"
    assert "handler process crashed; restarting" in served.sup.log()


def test_unicode_and_a_10_mb_payload_travel_whole(served: Served) -> None:
    blob = "ü✓" * (5 * 1024 * 1024 // 2) + "end"
    path = os.path.join(served.dir, "big.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"blob": blob, "name": "naïve – 東京 🚀"}, f, ensure_ascii=False)
    assert os.path.getsize(path) > 10 * 1024 * 1024
    task_id = served.enqueue("big", payload_file=path)
    st = served.wait_state(task_id, "succeeded", timeout=120)
    assert result_of(st) == {"len": len(blob), "tail": "end"[-3:], "name": "naïve – 東京 🚀"}


def test_the_timeout_reaches_the_handler_as_a_deadline(served: Served) -> None:
    with_timeout = served.enqueue("deadline", "{}", timeout="30s")
    without = served.enqueue("deadline", "{}")
    got = result_of(served.wait_state(with_timeout, "succeeded"))
    assert 20 < got["remaining"] <= 30, got
    assert result_of(served.wait_state(without, "succeeded")) == {"remaining": None, "deadline": None}


def test_bytes_payloads_and_results_are_bytes(served: Served) -> None:
    task_id = served.enqueue("raw", "abc", codec="bytes")
    st = served.wait_state(task_id, "succeeded")
    assert st["result"] == "cba" and st["result_codec"] == "bytes", st


GARBAGE = r'''
import json, sys
hello = json.loads(sys.stdin.readline())
sys.stdout.write(json.dumps({"type": "ready", "protocol": 1, "kinds": hello["kinds"]}) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] != "task":
        continue
    if m["attempt"] == 0:
        sys.stdout.write("Loading model... 100%\n"); sys.stdout.flush()
    else:
        sys.stdout.write(json.dumps({"type": "result", "id": m["id"], "result": "ok"}) + "\n"); sys.stdout.flush()
'''


def test_garbage_on_the_protocol_stream_is_a_clear_error_and_the_task_is_retried(redis_server: RedisServer) -> None:
    for served in serve_module(redis_server, "py-garbage", GARBAGE, "job"):
        task_id = served.enqueue("job", "{}")
        st = served.wait_state(task_id, "succeeded")
        assert st["attempt"] == 1, st
        log = served.sup.log()
        assert "broke the protocol" in log and "Loading model... 100%" in log, log
        assert log.count("handler process ready") >= 2, log


def test_serve_outside_a_worker_says_what_it_needs() -> None:
    import subprocess

    code = "from rivulet import handlers\nhandlers.serve()"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], input=b"", capture_output=True, env=env, timeout=60)
    assert out.returncode != 0
    assert b"worker-cli --serve" in out.stderr, out.stderr


def test_the_protocol_in_memory_maps_payloads_results_and_errors() -> None:
    """The Python side alone, on in-memory streams: what it answers to each message."""
    import base64
    import io

    import msgpack

    from rivulet import handlers

    reg = handlers.Registry()

    @reg.task("echo")
    def echo(payload: Any, ctx: handlers.Context) -> Any:
        ctx.progress(12.5, "working")
        return payload

    @reg.task("later")
    def later(payload: Any, ctx: handlers.Context) -> Any:
        raise handlers.Retry("busy", after=1.5)

    @reg.task("bad")
    def bad(payload: Any, ctx: handlers.Context) -> Any:
        return {1, 2}  # not JSON

    def task(i: int, kind: str, **extra: Any) -> Dict[str, Any]:
        return {"type": "task", "id": f"t{i}", "kind": kind, "attempt": 0, "codec": "json", "payload": None, **extra}

    lines = [
        {"type": "hello", "protocol": 1, "kinds": ["echo"], "concurrency": 1},
        task(1, "echo", payload={"ü": [1, 2]}),
        task(2, "echo", codec="bytes", payload_base64=base64.b64encode(b"\x00\xff").decode()),
        task(3, "echo", codec="msgpack", payload_base64=base64.b64encode(msgpack.packb({"a": 1})).decode()),
        task(4, "later"),
        task(5, "bad"),
        task(6, "nobody"),
        {"type": "cancel", "id": "t999"},
    ]
    stdin = io.BytesIO(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
    stdout = io.BytesIO()
    reg.serve(stdin, stdout)
    out = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert out[0] == {"type": "ready", "protocol": 1, "kinds": ["bad", "echo", "later"]}
    answers = {m["id"]: m for m in out[1:] if m["type"] != "progress"}
    assert answers["t1"]["result"] == {"ü": [1, 2]}
    assert base64.b64decode(answers["t2"]["result_base64"]) == b"\x00\xff"
    assert answers["t3"]["result"] == {"a": 1}
    assert answers["t4"] == {"type": "error", "id": "t4", "message": "busy", "retry_after_ms": 1500}
    assert answers["t5"]["fatal"] is True and "not JSON" in answers["t5"]["message"]
    assert answers["t6"]["fatal"] is True and "no handler for kind 'nobody'" in answers["t6"]["message"]
    progress = [m for m in out if m["type"] == "progress"]
    assert progress[0] == {"type": "progress", "id": "t1", "percent": 12.5, "message": "working"}
