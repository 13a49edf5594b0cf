"""Job log records: written in ``seq`` order by the worker, read back by ``seq``.

A record: ``{job_id, seq, created, level, message, qual_name, trial}`` plus
``exception`` (a traceback) and ``stream`` (``stdout``, ``stderr`` or
``output`` for raw file-descriptor writes) when they apply. ``seq`` runs 1, 2,
... per job, across its trials, without gaps; the unique ``(job_id, seq)``
index makes a repeated write after a lost reply harmless.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import BulkWriteError, ConnectionFailure

from core.listing import Page, paginate

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["LogWriter", "last_seq", "read", "page"]

log = logging.getLogger(__name__)

_DUPLICATE_KEY = 11000


async def last_seq(db: Database, job_id: ObjectId) -> int:
    """The highest ``seq`` stored for a job (0 if none)."""
    record = await db.log.find_one({"job_id": job_id}, {"seq": 1}, sort=[("seq", -1)])
    return record["seq"] if record else 0


async def read(db: Database, job_id: ObjectId, *, after: int = 0, limit: int = 1000,
               skip: int = 0) -> list[dict[str, Any]]:
    """Records of a job with ``seq > after``, in ``seq`` order."""
    cursor = db.log.find({"job_id": job_id, "seq": {"$gt": after}}, {"_id": 0})
    return await cursor.sort("seq", 1).skip(skip).limit(limit).to_list()


async def page(db: Database, job_id: ObjectId, *, page: int = 0, per_page: int = 100) -> Page:
    """A page of a job's records in ``seq`` order (check permission before calling)."""
    return await paginate(db.log, {"job_id": job_id}, sort=[("seq", 1)], page=page, per_page=per_page,
                          projection={"_id": 0}, advice="try again later")


class LogWriter:
    """Buffers one job's records and writes them in order, in batches, losing none.

    ``add`` numbers a record and queues it; a background task writes queued
    records every ``interval`` seconds (or at once when ``batch`` are queued);
    ``add`` waits when ``max_buffer`` records are queued, which slows the job's
    output down to the database's pace instead of growing memory. ``close``
    writes the rest. Connection errors are retried until the records are in.
    """

    def __init__(self, db: Database, job: dict[str, Any], *, start_seq: int, trial: int,
                 batch: int = 1000, interval: float = 0.05, max_buffer: int = 20_000) -> None:
        self.db = db
        self.job_id = job["_id"]
        self.qual_name = job["qual_name"]
        self.trial = trial
        self.seq = start_seq
        self.batch = batch
        self.interval = interval
        self.max_buffer = max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._queued = asyncio.Event()
        self._drained = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name=f"log-writer-{self.job_id}")

    async def add(self, level: str, message: str, *, created: datetime | None = None,
                  exception: str | None = None, stream: str | None = None) -> None:
        """Queue one record (it gets the next ``seq``)."""
        while len(self._buffer) >= self.max_buffer:
            self._drained.clear()
            self._queued.set()
            await self._drained.wait()
        self.seq += 1
        record: dict[str, Any] = {
            "job_id": self.job_id, "seq": self.seq, "created": created or datetime.now(timezone.utc),
            "level": level, "message": message, "qual_name": self.qual_name, "trial": self.trial,
        }
        if exception:
            record["exception"] = exception
        if stream:
            record["stream"] = stream
        self._buffer.append(record)
        self._queued.set()

    async def close(self) -> None:
        """Write everything queued, then stop."""
        self._closing = True
        self._queued.set()
        if self._task is not None:
            await self._task
            self._task = None
        else:
            await self._write_all()

    async def _run(self) -> None:
        while True:
            await self._queued.wait()
            if not self._closing and len(self._buffer) < self.batch:
                await asyncio.sleep(self.interval)  # gather a batch
            self._queued.clear()
            await self._write_all()
            if self._closing and not self._buffer:
                return

    async def _write_all(self) -> None:
        while self._buffer:
            chunk = self._buffer[:self.batch]
            await self._insert(chunk)
            del self._buffer[:len(chunk)]
            self._drained.set()

    async def _insert(self, records: list[dict[str, Any]]) -> None:
        delay = 0.1
        while records:
            try:
                await self.db.log.insert_many(records, ordered=True)
                return
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if not errors or errors[0].get("code") != _DUPLICATE_KEY:
                    raise
                # A retry after a lost reply: this record is in already.
                records = records[errors[0]["index"] + 1:]
            except ConnectionFailure as exc:
                log.warning("writing log records of job %s failed (%s); retrying", self.job_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
