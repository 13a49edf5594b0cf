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
from typing import TYPE_CHECKING, Any, Callable

from bson import ObjectId
from pymongo.errors import BulkWriteError, PyMongoError

from core.keyset import page_of
from core.listing import Page
from core.tasks import stop_task

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


async def page(db: Database, job_id: ObjectId, *, page: int = 0, per_page: int = 100, after: Any = None,
               before: Any = None) -> Page:
    """A page of a job's records in ``seq`` order (check permission before calling).

    ``after``/``before``: a cursor of a page's ``next``/``prev`` (``core.keyset``);
    a cursor of another job's log is refused.
    """
    return await page_of(db.log, {"job_id": job_id}, listing=f"log:{job_id}", sort=[("seq", 1)], after=after,
                         before=before, page=page, per_page=per_page, projection={"_id": 0},
                         advice="try again later", start=0, kind="int")


class LogWriter:
    """Buffers one job's records and writes them in order, in batches, losing none.

    ``add`` numbers a record and queues it; a background task writes queued
    records every ``interval`` seconds (or at once when ``batch`` are queued).
    ``add`` waits while ``max_buffer`` records or ``max_bytes`` of messages are
    queued, which slows the job's output down to the database's pace instead
    of growing memory. Failed writes are retried until the records are in; a
    duplicate key of the same trial is the writer's own retry after a lost
    reply and is skipped, one of another trial means another run of this job
    owns these ``seq`` numbers now: ``on_lost`` is called and writing stops.
    ``close(timeout)`` writes the rest, and gives up (saying how much was lost)
    when the database has not taken them within ``timeout`` seconds.
    """

    def __init__(self, db: Database, job: dict[str, Any], *, start_seq: int, trial: int,
                 batch: int = 1000, interval: float = 0.05, max_buffer: int = 20_000,
                 max_bytes: int = 16 * 1024 * 1024, on_lost: Callable[[], None] | None = None) -> None:
        self.db = db
        self.job_id = job["_id"]
        self.qual_name = job["qual_name"]
        self.trial = trial
        self.seq = start_seq
        self.batch = batch
        self.interval = interval
        self.max_buffer = max_buffer
        self.max_bytes = max_bytes
        self.on_lost = on_lost
        self._buffer: list[dict[str, Any]] = []
        self._bytes = 0
        self._queued = asyncio.Event()
        self._drained = asyncio.Event()
        self._closing = False
        self._lost = False
        self._given_up = False
        self._task: asyncio.Task[None] | None = None

    @property
    def written(self) -> int:
        """The highest ``seq`` in the database (all records up to it are stored)."""
        return self.seq - len(self._buffer)

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name=f"log-writer-{self.job_id}")

    async def add(self, level: str, message: str, *, created: datetime | None = None,
                  exception: str | None = None, stream: str | None = None) -> None:
        """Queue one record (it gets the next ``seq``)."""
        if self._lost:
            return  # another run of the job writes its log now
        while (len(self._buffer) >= self.max_buffer or self._bytes >= self.max_bytes) and not self._lost:
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
        self._bytes += _size(record)
        self._queued.set()

    async def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop; after ``timeout`` s (or ``give_up``) drop the rest."""
        self._closing = True
        self._queued.set()
        if self._task is None:
            self.start()
        task = self._task
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            self.give_up()
        while not task.done():  # give_up may come from outside meanwhile
            await asyncio.wait({task}, timeout=1.0)
            if self._given_up:
                await stop_task(task)
        self._task = None

    def give_up(self) -> None:
        """Stop retrying: what is still queued is lost (said in the log)."""
        self._given_up = True
        if self._task is not None and not self._task.done():
            log.error("gave up writing %d log records of job %s: the database did not take them",
                      len(self._buffer), self.job_id)
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._queued.wait()
            if not self._closing and len(self._buffer) < self.batch:
                await asyncio.sleep(self.interval)  # gather a batch
            self._queued.clear()
            await self._write_all()
            if self._closing and not self._buffer or self._lost:
                return

    async def _write_all(self) -> None:
        while self._buffer and not self._lost:
            chunk = self._buffer[:self.batch]
            await self._insert(chunk)
            del self._buffer[:len(chunk)]
            self._bytes -= sum(_size(record) for record in chunk)
            self._drained.set()
        if self._lost:
            self._buffer.clear()
            self._bytes = 0
            self._drained.set()

    async def _insert(self, records: list[dict[str, Any]]) -> None:
        delay = 0.1
        while records and not self._given_up:
            try:
                await self.db.log.insert_many(records, ordered=True)
                return
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if errors and errors[0].get("code") == _DUPLICATE_KEY:
                    index = errors[0]["index"]
                    if not await self._is_ours(records[index]["seq"]):
                        self._lose()
                        return
                    records = records[index + 1:]  # a retry after a lost reply: this record is in already
                    continue
                if errors:  # a record the database refuses for good; keep the others
                    log.error("log record %s of job %s refused: %s", records[errors[0]["index"]]["seq"],
                              self.job_id, errors[0].get("errmsg"))
                    records = records[errors[0]["index"] + 1:]
                    continue
                # Only a write concern error: the records are written, not yet acknowledged by a majority.
                log.warning("log records of job %s: %s; retrying", self.job_id, exc.details.get("writeConcernErrors"))
            except PyMongoError as exc:
                log.warning("writing log records of job %s failed (%s); retrying", self.job_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _is_ours(self, seq: int) -> bool:
        """Whether the stored record ``seq`` is this trial's (our own earlier, unacknowledged write)."""
        while True:
            try:
                stored = await self.db.log.find_one({"job_id": self.job_id, "seq": seq}, {"trial": 1})
                return stored is None or stored.get("trial") == self.trial
            except PyMongoError:
                await asyncio.sleep(0.5)

    def _lose(self) -> None:
        log.warning("log seq of job %s is taken by another trial: this run of trial %d is stale", self.job_id,
                    self.trial)
        self._lost = True
        if self.on_lost is not None:
            self.on_lost()


def _size(record: dict[str, Any]) -> int:
    return len(record["message"]) + len(record.get("exception") or "") + 200
