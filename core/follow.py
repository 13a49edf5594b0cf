"""Following a job: its states and log records as events, the past first, then live.

``follow`` yields ``Event``s: ``state`` (the job document, whenever its
``version`` grew), ``log`` (each record once, in ``seq`` order) and finally
``close``. It always reads from the database by ``version`` and ``seq``, so a
follower that falls behind simply reads more per round instead of making
anyone buffer for it, and a follower resuming from an event id gets exactly
what it has not seen. Between rounds it waits on a ``Waker``: a change stream
on the job, or a timer.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

from bson import ObjectId
from pymongo.errors import PyMongoError

from core import logs
from core.queue import get
from core.states import FINAL

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Event", "Waker", "ChangeWaker", "TimerWaker", "follow", "parse_event_id"]


@dataclass(frozen=True)
class Event:
    """One thing to tell a follower: ``kind`` is ``state``, ``log`` or ``close``."""

    kind: str
    id: str
    data: dict[str, Any]


class Waker(Protocol):
    """Something that returns from ``wait`` when the job may have changed (or after ``timeout``)."""

    async def wait(self, timeout: float) -> None: ...


class TimerWaker:
    """Polls: returns after ``interval`` seconds (or ``timeout``, if shorter)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, self.interval))


class ChangeWaker:
    """Wakes on changes of one job and its log, through one change stream on the database."""

    def __init__(self, db: Database, job_id: ObjectId, fallback: float = 1.0) -> None:
        self.db = db
        self.job_id = job_id
        self.fallback = fallback
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ChangeWaker:
        if self.db.change_streams:
            self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PyMongoError):
                await self._task

    async def _watch(self) -> None:
        pipeline = [{"$match": {"$or": [{"documentKey._id": self.job_id},
                                        {"fullDocument.job_id": self.job_id}]}}]
        while True:
            try:
                async with await self.db.db.watch(pipeline) as stream:
                    async for _ in stream:
                        self._changed.set()
            except PyMongoError:
                self._changed.set()
                await asyncio.sleep(self.fallback)

    async def wait(self, timeout: float) -> None:
        limit = timeout if self._task is not None else min(timeout, self.fallback)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), limit)
        self._changed.clear()


def parse_event_id(value: str | None) -> tuple[int, int]:
    """``"<version>.<seq>"`` -> (version, seq); anything unreadable -> (0, 0)."""
    if not value:
        return 0, 0
    version, _, seq = value.strip().partition(".")
    try:
        return max(0, int(version)), max(0, int(seq or 0))
    except ValueError:
        return 0, 0


async def follow(db: Database, job_id: Any, *, user: dict[str, Any], waker: Waker,
                 after_version: int = 0, after_seq: int = 0, states: bool = True,
                 idle: float = 15.0, batch: int = 1000) -> AsyncIterator[Event]:
    """Yield the job's events from (``after_version``, ``after_seq``) on, until it has ended.

    Raises ``NotFound``/``Forbidden``/``BadArgument`` (from ``queue.get``)
    before the first event. ``idle`` bounds each wait, so a caller gets
    control back regularly (e.g. to send a keepalive).
    """
    version, seq = after_version, after_seq
    counts = {"state": 0, "log": 0}
    while True:
        job = await get(db, job_id, user=user)
        if states and job["version"] > version:
            version = job["version"]
            counts["state"] += 1
            yield Event("state", f"{version}.{seq}", job)
        while True:
            records = await logs.read(db, job["_id"], after=seq, limit=batch)
            for record in records:
                seq = record["seq"]
                counts["log"] += 1
                yield Event("log", f"{version}.{seq}", record)
            if len(records) < batch:
                break
        # Logs are all written before a job's final transition, so once the
        # job was read as final, the read above got its last record.
        if job["state"] in FINAL:
            final = "removed" if job.get("removed_at") else job["state"]
            yield Event("close", f"{version}.{seq}", {"state": final, "events": dict(counts)})
            return
        await waker.wait(idle)
