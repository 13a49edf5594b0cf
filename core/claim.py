"""Claiming due jobs, and the change stream that says when to look.

- ``Claimer`` finds the most urgent due jobs (highest priority, then oldest;
  ``query_at`` has come) among the classes a worker runs, and takes as many
  as it has free slots, each with a compare-and-set on ``{_id, state,
  version}`` through ``states.transition``: of two workers exactly one wins
  a job. It keeps the other candidates of a scan for the next free slot. A
  claim writes a fresh ``locked.token`` (see ``core.lease``). Ids the worker
  runs already are never claimed again by it.
- ``next_due_in`` says how long until the next waiting job falls due.
- ``QueueWatcher`` follows the queue's change stream, filtered to the fields a
  worker acts on (new jobs, state changes, kills, due times -- not lease
  renewals or progress), and calls back: ``wake()`` to look for due jobs,
  ``killed(job_id)`` when a running job is asked to die.

A job document that cannot be claimed because it is malformed (no
``query_at``, no ``version``...) is logged and skipped.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Collection

from pymongo.errors import OperationFailure, PyMongoError

from core import states
from core.errors import Conflict
from core.states import State, transition
from core.tasks import stop_task

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Claimer", "next_due_in", "QueueWatcher"]

log = logging.getLogger(__name__)

_WAITING = sorted(s.value for s in states.WAITING)
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Claimer:
    """Claims a worker's next jobs; keeps the candidates a scan found beyond its free slots.

    A scan reads the ``batch`` most urgent due jobs; those not claimed at once
    wait in a ready list, so that a slot that frees up claims its next job
    with one compare-and-set and no read. The list holds documents as read:
    a job that changed meanwhile (claimed elsewhere, killed) fails its
    compare-and-set and is dropped. Whoever learns that the queue changed in
    a way the list cannot know (a new job, one due again, one reaped) calls
    ``invalidate``, and the next claim scans again.
    """

    def __init__(self, db: Database, *, worker: str, host: str, classes: Collection[str], batch: int) -> None:
        self.db = db
        self.worker = worker
        self.host = host
        self.classes = list(classes)
        self.batch = batch
        self._ready: list[dict[str, Any]] = []

    def invalidate(self) -> None:
        """Forget the candidates: the next claim scans the queue."""
        self._ready.clear()

    async def claim(self, n: int, running: Collection[Any] = ()) -> list[dict[str, Any]]:
        """Claim up to ``n`` due jobs; return them (now ``running``), most urgent first."""
        if n <= 0:
            return []
        claimed = await self._take(n, running)
        if len(claimed) < n:
            self._ready = await self._scan(max(self.batch, n))
            claimed += await self._take(n - len(claimed), running)
        return claimed

    async def _scan(self, limit: int) -> list[dict[str, Any]]:
        return await self.db.majority(self.db.queue).find(
            {"state": {"$in": _WAITING}, "query_at": {"$lte": _now()}, "qual_name": {"$in": self.classes}},
        ).sort([("priority", -1), ("_id", 1)]).limit(limit).to_list()

    async def _take(self, n: int, running: Collection[Any]) -> list[dict[str, Any]]:
        claimed: list[dict[str, Any]] = []
        while self._ready and len(claimed) < n:
            job = self._ready.pop(0)
            if job.get("_id") in running:
                continue  # still running here under an older claim: never two processes of one job
            now = _now()
            locked = {"worker": self.worker, "host": self.host, "pid": None, "at": now, "heartbeat": now,
                      "token": secrets.token_hex(8)}
            try:
                claimed.append(await transition(self.db, job, State.RUNNING, trial=job["trial"] + 1, locked=locked,
                                                started_at=job.get("started_at") or now,
                                                prog={"value": 0.0, "message": None}))
            except Conflict:
                continue  # another worker got it first, or it changed since the scan
            except _MALFORMED as exc:
                log.error("cannot claim job %s, its document is malformed (%r); skipping it", job.get("_id"), exc)
            except BaseException:
                self._ready.clear()  # a database error: whether the last one was claimed is unknown
                raise
        return claimed


async def next_due_in(db: Database, classes: Collection[str], ceiling: float) -> float:
    """Seconds until the next waiting job of ``classes`` falls due, at most ``ceiling``."""
    # A comparison with a date matches dates only: a job with a malformed query_at is not "next".
    nxt = await db.queue.find_one(
        {"state": {"$in": _WAITING}, "qual_name": {"$in": list(classes)}, "query_at": {"$gte": _EPOCH}},
        {"query_at": 1}, sort=[("query_at", 1)])
    if nxt is None:
        return ceiling
    return max(0.0, min(ceiling, (nxt["query_at"] - _now()).total_seconds() + 0.01))


# Inserts, and updates that change what a worker acts on. secantusd reports a
# dotted $set as a nested field, MongoDB as a dotted one: both name top-level
# fields here.
_PIPELINE = [{"$match": {"$or": [
    {"operationType": {"$in": ["insert", "replace"]}},
    *({f"updateDescription.updatedFields.{name}": {"$exists": True}} for name in ("state", "killed_at", "query_at")),
]}}]


class QueueWatcher:
    """Follows the queue's change stream for a worker; ``start()``/``stop()``.

    Whenever the stream (re)opens it calls ``wake()`` and ``reopened()``: a
    job enqueued, or a kill asked for, while it was closed sent no event.
    """

    def __init__(self, db: Database, *, wake: Callable[[], None], killed: Callable[[Any], None],
                 reopened: Callable[[], None], retry_seconds: float = 1.0) -> None:
        self.db = db
        self.wake = wake
        self.killed = killed
        self.reopened = reopened
        self.retry_seconds = retry_seconds
        self._token: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the change stream in the background."""
        self._task = asyncio.create_task(self._run(), name="queue-watcher")

    async def stop(self) -> None:
        """Close it."""
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                async with await self.db.queue.watch(_PIPELINE, resume_after=self._token) as stream:
                    self.wake()
                    self.reopened()
                    while True:
                        change = await stream.try_next()
                        self._token = stream.resume_token
                        if change is not None:
                            self._dispatch(change)
            except asyncio.CancelledError:
                raise
            except OperationFailure as exc:
                log.warning("queue change stream cannot resume (%s); reopening from now", exc)
                self._token = None
            except PyMongoError as exc:
                log.warning("queue change stream failed (%s); reopening", exc)
            except Exception:  # noqa: BLE001 - a bug here must not leave the worker deaf
                log.exception("queue change stream broke; reopening")
            self.wake()
            await asyncio.sleep(self.retry_seconds)

    def _dispatch(self, change: dict[str, Any]) -> None:
        fields = (change.get("updateDescription") or {}).get("updatedFields") or {}
        document = change.get("fullDocument") or {}
        job_id = (change.get("documentKey") or {}).get("_id")
        if fields.get("killed_at") or document.get("killed_at"):
            self.killed(job_id)
        state = fields.get("state") or document.get("state")
        if state in _WAITING or "query_at" in fields:
            self.wake()
