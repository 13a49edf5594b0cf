"""Bounded growth of the journal: archiving finished jobs, and removing them past their retention.

- ``export`` yields finished jobs in ``finished_at`` order (optionally each
  followed by its log records), for ``jobdeck journal export``.
- ``sweep`` removes the jobs that finished more than ``journal_retention_days``
  ago, with their log records; ``Sweeper`` runs it in every worker every
  ``SWEEP_SECONDS``. Deleting the same ids twice is harmless, so workers need
  no coordination.

Why a sweep and not a TTL index on ``journal.finished_at``: a TTL index
deletes journal documents one by one in the server's own background pass,
with nothing to delete their log records (the ``log`` TTL runs by its own
age), so a journal retention shorter than the log retention would leave
orphan records. The sweep deletes the logs first, then the jobs: a fault in
between leaves jobs without logs, never logs without a job, and the next
sweep finishes the work.

Both walk ``finished_at`` in windows (``_Windows``) instead of one open
range: the embedded server reads every document inside a query's index
bounds before it applies ``limit``, so the cost of a query is what its range
holds. A window shrinks when it was full and grows while sparse.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from core import counts, logs
from core.tasks import stop_task

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["export", "sweep", "Sweeper", "SWEEP_SECONDS", "BATCH"]

log = logging.getLogger(__name__)

#: Seconds between two sweeps of a worker.
SWEEP_SECONDS = 600.0
#: Jobs removed per round of a sweep.
BATCH = 1000
#: Jobs whose log records are deleted by one command.
_LOG_BATCH = 100
#: No jobdeck job finished before this; the windows start here (older stragglers are read in one go).
EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)
_FIRST_WINDOW = timedelta(hours=1)
_MIN_WINDOW = timedelta(seconds=1)
_MAX_WINDOW = timedelta(days=30)
#: Seconds a sweep rests between rounds that deleted something, so other work gets the database.
_PAUSE = 0.05


class _Windows:
    """Consecutive ``finished_at`` windows from ``start`` to ``end``, sized by how full the last one was."""

    def __init__(self, start: datetime, end: datetime, *, target: int = BATCH) -> None:
        self.low = start
        self.end = end
        self.size = _FIRST_WINDOW
        self.target = target

    @property
    def high(self) -> datetime:
        """The (exclusive) end of the current window."""
        return min(self.low + self.size, self.end)

    def query(self) -> dict[str, Any]:
        """The ``finished_at`` range of the current window."""
        return {"finished_at": {"$gte": self.low, "$lt": self.high}}

    def done(self) -> bool:
        """Whether every window has been read."""
        return self.low >= self.end

    def full(self) -> None:
        """The window held more than the target: read it again, smaller."""
        self.size = max(self.size / 2, _MIN_WINDOW)

    def advance(self, found: int) -> None:
        """The window is read; move past it, wider if it held few documents."""
        self.low = self.high
        if found <= self.target // 4:
            self.size = min(self.size * 2, _MAX_WINDOW)
        elif found > self.target:
            self.size = max(self.size / 2, _MIN_WINDOW)


async def sweep(db: Database, retention_days: float, *, now: datetime | None = None, start: datetime | None = None,
                batch: int = BATCH, pause: float = _PAUSE) -> tuple[int, datetime]:
    """Remove jobs that finished more than ``retention_days`` before ``now``, with their log records.

    ``now`` is the database's clock unless given. Walks ``finished_at`` from
    ``start`` (default: everything) to the cutoff, ``batch`` jobs per round:
    their ids from the ``finished_at`` index, then their log records by
    ``job_id``, then the jobs by ``_id``. Only the journal is touched: live
    jobs are in the queue. Returns how many jobs were removed and the cutoff,
    before which nothing is left (the next sweep may ``start`` there).
    Raises ``PyMongoError`` from the database; what was removed stays removed
    and the rest is consistent (see the module docstring).
    """
    now = now or await db.server_time()
    cutoff = now - timedelta(days=retention_days)
    removed = 0
    if start is None:  # stragglers from before EPOCH, in rounds of one (bounded) range
        while ids := await _ids(db, {"finished_at": {"$lt": min(EPOCH, cutoff)}}, batch):
            removed += await _remove(db, ids, pause)
    windows = _Windows(EPOCH if start is None else start, cutoff, target=batch)
    while not windows.done():
        ids = await _ids(db, windows.query(), batch)
        if ids:
            removed += await _remove(db, ids, pause)
        if len(ids) >= batch:
            windows.full()  # more in this window
        else:
            windows.advance(len(ids))
    if removed:
        log.info("removed %d jobs that finished before %s from the journal", removed, cutoff.isoformat())
    return removed, cutoff


async def _ids(db: Database, query: dict[str, Any], batch: int) -> list[Any]:
    return [job["_id"] for job in await db.journal.find(query, {"_id": 1}).limit(batch).to_list()]


async def _remove(db: Database, ids: list[Any], pause: float) -> int:
    """Delete the log records of ``ids``, then the jobs and their counts (no record outlives its job)."""
    for i in range(0, len(ids), _LOG_BATCH):
        await db.log.delete_many({"job_id": {"$in": ids[i:i + _LOG_BATCH]}})

    async def delete(session: Any = None) -> int:
        # Read in the transaction: a job another server's sweep deleted first is not uncounted twice.
        jobs = await db.journal.find({"_id": {"$in": ids}}, {"qual_name": 1, "state": 1},
                                     session=session).to_list()
        result = await db.journal.delete_many({"_id": {"$in": [job["_id"] for job in jobs]}}, session=session)
        await counts.write(db, counts.removed(jobs), session=session)
        return result.deleted_count

    if db.transactions:
        async with db.session() as session:
            deleted = await session.with_transaction(delete)
    else:
        deleted = await delete()
    db.changed("journal")
    await asyncio.sleep(pause)
    return deleted


class Sweeper:
    """Runs ``sweep`` every ``interval`` seconds while ``retention_days`` is set. ``start()``/``stop()``.

    ``retention_days`` is read at each sweep. The first sweep of a process
    walks the whole journal (cheap where it is empty), later ones start at the
    previous cutoff. A failed sweep is logged and tried again after
    ``retry_seconds``.
    """

    def __init__(self, db: Database, *, retention_days: float | None, interval: float = SWEEP_SECONDS,
                 retry_seconds: float = 60.0, batch: int = BATCH) -> None:
        self.db = db
        self.retention_days = retention_days
        self.interval = interval
        self.retry_seconds = retry_seconds
        self.batch = batch
        #: Before this, the journal was empty at the last sweep (None: not swept yet).
        self.swept_before: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sweeping (the first sweep comes at once)."""
        self._task = asyncio.create_task(self._loop(), name="journal-sweeper")

    async def stop(self) -> None:
        """Stop sweeping (a round under way is cancelled; what it removed stays removed)."""
        await stop_task(self._task)
        self._task = None

    async def sweep(self) -> int:
        """One sweep now (nothing without ``retention_days``); return how many jobs were removed."""
        if not self.retention_days:
            return 0
        start = self.swept_before
        removed, cutoff = await sweep(self.db, self.retention_days, start=start, batch=self.batch)
        # A retention raised meanwhile puts the cutoff before ``start``: nothing older is left all the same.
        self.swept_before = cutoff if start is None else max(cutoff, start)
        return removed

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
                # Jitter: workers started together do not sweep together.
                await asyncio.sleep(self.interval * random.uniform(0.9, 1.1))
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                log.warning("sweeping the journal failed (%s); retrying in %g s", exc, self.retry_seconds)
                await asyncio.sleep(self.retry_seconds)
            except Exception:  # noqa: BLE001 - a bug here must not end the worker's other parts
                log.exception("sweeping the journal failed; retrying")
                await asyncio.sleep(self.retry_seconds)


async def export(db: Database, *, until: datetime, since: datetime | None = None,
                 with_logs: bool = False) -> AsyncIterator[dict[str, Any]]:
    """Finished jobs with ``since <= finished_at < until``, oldest first; with ``with_logs``
    each job is followed by its log records in ``seq`` order.

    Streams: a window of jobs and 1,000 log records at a time are in memory.
    Naive times are UTC.
    """
    until, since = _utc(until), since and _utc(since)
    found = 0

    async def jobs(query: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        nonlocal found
        async for job in db.journal.find(query, batch_size=BATCH).sort("finished_at", 1):
            found += 1
            yield job
            if with_logs:
                seq = 0
                while records := await logs.read(db, job["_id"], after=seq):
                    for record in records:
                        yield record
                    seq = records[-1]["seq"]

    if since is None or since < EPOCH:
        query: dict[str, Any] = {"$lt": min(EPOCH, until)}
        if since is not None:
            query["$gte"] = since
        async for document in jobs({"finished_at": query}):
            yield document
    windows = _Windows(max(since or EPOCH, EPOCH), until)
    while not windows.done():
        found = 0
        async for document in jobs(windows.query()):
            yield document
        windows.advance(found)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
