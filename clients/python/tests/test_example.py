"""examples/python/app.py through FastAPI's TestClient, against a real redis-server and a real
worker-cli running examples/python/backtest.py with --exec."""

from __future__ import annotations

import sys
import time

from fastapi.testclient import TestClient

from conftest import ROOT, RedisServer, wait_until

sys.path.insert(0, str(ROOT / "examples" / "python"))
import app as example  # noqa: E402


def test_the_fastapi_example_submits_follows_and_cancels_backtests(server: RedisServer, start_worker, monkeypatch) -> None:
    queue = "backtests-" + str(int(time.time() * 1000))
    monkeypatch.setattr(example, "QUEUE", queue)
    script = ROOT / "examples" / "python" / "backtest.py"
    start_worker(queue, f"backtest={sys.executable} {script}")
    with TestClient(example.create_app(server.url)) as http:
        assert http.get("/health").json()["ok"] is True
        made = http.post("/backtests", json={"symbol": "ACME", "days": 20})
        assert made.status_code == 202, made.text
        task_id = made.json()["id"]
        again = http.post("/backtests", json={"symbol": "ACME", "days": 20}).json()
        assert again == {"id": task_id, "duplicate": True}

        def finished() -> object:
            body = http.get(f"/backtests/{task_id}").json()
            return body if body["state"] == "succeeded" else None

        body = wait_until(finished, 30, "the backtest to succeed")
        assert body["result"]["symbol"] == "ACME" and body["result"]["days"] == 20, body  # type: ignore[index]

        # A long one, cancelled while it runs: the command is stopped, the state says so.
        long_id = http.post("/backtests", json={"symbol": "LONG", "days": 3000}).json()["id"]
        wait_until(lambda: http.get(f"/backtests/{long_id}").json()["state"] == "active", 30, "it to start")
        wait_until(lambda: (http.get(f"/backtests/{long_id}").json()["progress"] or -1) >= 0, 30, "progress")
        assert http.post(f"/backtests/{long_id}/cancel").json() == {"id": long_id, "outcome": "cancelling"}
        wait_until(lambda: http.get(f"/backtests/{long_id}").json()["state"] == "cancelled", 30, "cancelled")
        assert http.post(f"/backtests/{long_id}/cancel").json()["outcome"] == "finished"

        assert http.get("/backtests/nope").status_code == 404
        assert http.post("/backtests/nope/cancel").status_code == 404
        assert http.post("/backtests", json={"symbol": ""}).status_code == 422
