"""Claiming due jobs, and the change stream that says when to look.

- ``claim`` finds the most urgent due jobs (highest priority, then oldest;
  ``query_at`` has come) among the classes a worker runs, and takes up to
  ``n`` of them, each with a compare-and-set on ``{_id, state, version}``
  through ``states.transition``: of two workers exactly one wins a job. A
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

__all__ = ["claim", "next_due_in", "QueueWatcher"]

log = logging.getLogger(__name__)

_WAITING = sorted(s.value for s in states.WAITING)
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def claim(db: Database, *, worker: str, host: str, classes: Collection[str], n: int,
                running: Collection[Any] = ()) -> list[dict[str, Any]]:
    """Claim up to ``n`` due jobs of ``classes``; return them (now ``running``), most urgent first."""
    if n <= 0:
        return []
    now = _now()
    candidates = await db.majority(db.queue).find(
        {"state": {"$in": _WAITING}, "query_at": {"$lte": now}, "qual_name": {"$in": list(classes)}},
    ).sort([("priority", -1), ("_id", 1)]).limit(n * 2 + 2).to_list()
    claimed: list[dict[str, Any]] = []
    for job in candidates:
        if len(claimed) == n:
            break
        if job.get("_id") in running:
            continue  # still running here under an older claim: never two processes of one job
        locked = {"worker": worker, "host": host, "pid": None, "at": now, "heartbeat": now,
                  "token": secrets.token_hex(8)}
        try:
            claimed.append(await transition(db, job, State.RUNNING, trial=job["trial"] + 1, locked=locked,
                                            started_at=job.get("started_at") or now,
                                            prog={"value": 0.0, "message": None}))
        except Conflict:
            continue  # another worker got it first
        except _MALFORMED as exc:
            log.error("cannot claim job %s, its document is malformed (%r); skipping it", job.get("_id"), exc)
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
