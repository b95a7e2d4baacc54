"""A FastAPI service that runs backtests on Rivulet workers.

    POST /backtests               {"symbol": "ACME", "days": 30} -> {"id": ...}
    GET  /backtests/{id}          -> state, progress, result (or error)
    POST /backtests/{id}/cancel   -> what the cancel did
    GET  /health                  -> Redis reachable and the rivulet_v1 functions loaded

Run it (README.md in this directory): a worker serving the `backtest` kind, then
``RIVULET_REDIS_URL=redis://127.0.0.1:6379 uvicorn app:app``.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from rivulet import AsyncClient, CancelOutcome, TaskStatus, UnknownTask

QUEUE = os.environ.get("RIVULET_QUEUE", "backtests")


class BacktestRequest(BaseModel):
    symbol: str = Field(min_length=1, max_length=16)
    days: int = Field(default=30, ge=1, le=3650)
    priority: Optional[str] = None


class Created(BaseModel):
    id: str
    duplicate: bool


class Backtest(BaseModel):
    id: str
    state: str
    progress: Optional[int] = None
    message: Optional[str] = None
    result: Any = None
    error: Optional[str] = None


class Cancelled(BaseModel):
    id: str
    outcome: str


def result_of(st: TaskStatus) -> Any:
    """The result: an `--exec` handler's stdout is stored as bytes; this one prints JSON."""
    if st.result_codec == "bytes" and st.result_bytes is not None:
        try:
            return json.loads(st.result_bytes)
        except ValueError:
            return st.result_bytes.decode(errors="replace")
    return st.result


def create_app(redis_url: Optional[str] = None) -> FastAPI:
    client = AsyncClient.from_url(redis_url or os.environ.get("RIVULET_REDIS_URL", "redis://127.0.0.1:6379"))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()

    app = FastAPI(title="backtests", lifespan=lifespan)

    @app.post("/backtests", response_model=Created, status_code=202)
    async def submit(req: BacktestRequest) -> Created:
        # One backtest per symbol and horizon at a time: a second POST returns the running one.
        task = await client.enqueue(
            QUEUE, "backtest", {"symbol": req.symbol, "days": req.days}, priority=req.priority,
            unique_key=f"{req.symbol}:{req.days}", timeout=600, max_attempts=3,
        )  # fmt: skip
        return Created(id=task.id, duplicate=task.duplicate)

    @app.get("/backtests/{task_id}", response_model=Backtest)
    async def show(task_id: str) -> Backtest:
        st = await client.status(QUEUE, task_id)
        if st.state.value == "unknown":
            raise HTTPException(404, f"no backtest {task_id}")
        return Backtest(
            id=task_id, state=st.state.value, progress=st.progress, message=st.progress_message,
            result=result_of(st),
            error=st.error,
        )  # fmt: skip

    @app.post("/backtests/{task_id}/cancel", response_model=Cancelled)
    async def cancel(task_id: str) -> Cancelled:
        try:
            outcome = await client.cancel(QUEUE, task_id)
        except UnknownTask:
            raise HTTPException(404, f"no backtest {task_id}") from None
        return Cancelled(id=task_id, outcome=outcome.value if outcome != CancelOutcome.ALREADY_FINISHED else "finished")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        try:
            stats = await client.stats(QUEUE)
        except Exception as e:  # Redis down or the functions missing: not healthy
            raise HTTPException(503, str(e)) from None
        return {"ok": True, "queue": QUEUE, "waiting": stats.waiting, "running": stats.pending}

    return app


app = create_app()
