"""The ACL user docs/python.md documents is enough for every operation of the package."""

from __future__ import annotations

import re

import redis

from conftest import ROOT, RedisServer
from rivulet import Client, Task, TaskState, WaitTimeout


def documented_rule() -> list[str]:
    text = (ROOT / "docs" / "python.md").read_text()
    line = re.search(r"^ACL SETUSER rivulet-python (.*)$", text, re.M)
    assert line, "docs/python.md has no `ACL SETUSER rivulet-python` line"
    return [">s3cret" if w == ">CHANGE-ME" else w for w in line.group(1).split()]


def test_the_documented_python_acl_is_enough(server: RedisServer, queue: str, start_worker) -> None:
    admin = redis.Redis(port=server.port)
    rule = documented_rule()
    version = tuple(int(x) for x in str(admin.info("server")["redis_version"]).split(".")[:2])
    if version >= (7, 2):
        rule.append("+client|setinfo")  # as the docs say
    admin.execute_command("ACL", "SETUSER", "rivulet-python", *rule)
    admin.execute_command("ACL", "LOG", "RESET")
    c = Client.from_url(f"redis://rivulet-python:s3cret@127.0.0.1:{server.port}")
    try:
        ready, later, unique = c.enqueue_many(
            queue, [Task("fail", 1, max_attempts=1), Task("echo", 2, delay=60), Task("echo", 3, unique_key="u")]
        )
        assert c.enqueue(queue, "echo", 4, unique_key="u").duplicate
        assert later.status().state == TaskState.SCHEDULED
        try:
            unique.wait(timeout=0.05)
        except WaitTimeout:
            pass
        assert later.cancel().value == "cancelled"
        start_worker(queue, "echo=cat")
        assert ready.wait(timeout=30).state == TaskState.DEAD
        assert c.stats(queue).dlq == 1
        dead = c.dlq.list(queue)
        assert c.dlq.replay(queue, [dead[0].id]) == 1
        # The first run's done token is still there (a minute): the wait is not fooled by it.
        assert ready.wait(timeout=30).state == TaskState.DEAD
        assert ready.status().fields["dlq_id"].decode() != dead[0].id.rsplit("/", 1)[1]  # died again
        assert c.dlq.purge(queue) == 1
    finally:
        c.close()
    denied = admin.execute_command("ACL", "LOG")
    assert denied == [], denied
