"""Concurrency slots: at most N running jobs of a class (``max_parallel``) or of a worker pool (``max_running``).

A limit is a set of slot documents in the ``slots`` collection, ``_id``
``"<key>#<n>"`` for ``n`` below the limit, each holding the job that runs
in it and that run's claim token. The key is ``class:<qual_name>`` for a
job's ``max_parallel`` and ``pool:<name>`` for a worker pool's
``max_running``. A slot is taken in the claim's transaction (a duplicate
``_id`` means it is taken: no race lets N+1 run) and freed in the same
transaction that ends or reaps the run (``core.states.transition``); there
is no counter to drift. A slot whose job no longer runs under its token
(left by a crash on a server without transactions, or a job document
changed by hand) is freed by ``release_stale``, which the reaper calls.

A job whose limit is N takes one of the slots 0..N-1 of its class, so jobs
with different limits of the same class (a per-enqueue ``max_parallel``)
keep this invariant: at most N jobs with a limit of N or less run at once.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["keys", "Full", "take", "release", "release_stale"]

log = logging.getLogger(__name__)

#: Attempts of a slot claim that lost a race for a slot to another claim.
_ATTEMPTS = 5


class Full(Exception):
    """Raised by ``take`` when every slot of ``key`` is taken."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def keys(job: dict[str, Any], pool: tuple[str, int] | None = None) -> list[tuple[str, int]]:
    """The limits a claim of ``job`` must take a slot of: ``(key, limit)`` each (``pool``: the worker's)."""
    limits = []
    limit = job.get("max_parallel")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        limits.append((f"class:{job['qual_name']}", limit))
    if pool is not None:
        limits.append((f"pool:{pool[0]}", pool[1]))
    return limits


async def take(db: Database, job_id: Any, limits: list[tuple[str, int]], token: str,
               claim: Callable[[Any, list[str]], Awaitable[bool]]) -> list[str] | None:
    """Take a free slot of each of ``limits`` for ``job_id`` and run ``claim(session, slot_ids)`` with them.

    ``claim`` is the job's compare-and-set (it returns whether it won); it
    and the slots are written in one transaction, so a lost claim leaves
    no slot taken. Returns the slot ids, or None when the claim was lost.
    Raises ``Full`` when a limit has no free slot. Without transactions the
    slots are inserted first and deleted again after a lost claim; a crash
    in between leaves them to ``release_stale``.
    """
    for _ in range(_ATTEMPTS):
        chosen = await _free(db, limits)
        documents = [{"_id": slot, "key": key, "job_id": job_id, "token": token, "at": datetime.now(timezone.utc)}
                     for slot, key in chosen]
        ids = [document["_id"] for document in documents]
        try:
            if db.transactions:
                async with db.session() as session:
                    async with await session.start_transaction():
                        await db.slots.insert_many(documents, session=session)
                        if not await claim(session, ids):
                            await session.abort_transaction()
                            return None
                return ids
            await db.slots.insert_many(documents)
        except (DuplicateKeyError, OperationFailure) as exc:
            if not _lost_race(exc):
                raise
            await asyncio.sleep(0.01)
            continue  # another claim took one of them meanwhile: look again
        try:
            if await claim(None, ids):
                return ids
        except BaseException:
            await _delete(db, ids, token)
            raise
        await _delete(db, ids, token)
        return None
    raise Full(limits[0][0])


def _lost_race(exc: PyMongoError) -> bool:
    """Whether ``exc`` says a slot was taken meanwhile (a duplicate ``_id``, a write conflict)."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors") or [{}]
        return all(error.get("code") in (11000, 11001) for error in errors)
    return isinstance(exc, DuplicateKeyError) or getattr(exc, "code", None) in (11000, 112) or \
        bool(isinstance(exc, PyMongoError) and exc.has_error_label("TransientTransactionError"))


async def _free(db: Database, limits: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(slot id, key): the lowest free slot of each limit; raises ``Full``."""
    taken = {(slot["key"], slot["_id"]) for slot in await db.slots.find(
        {"key": {"$in": [key for key, _ in limits]}}, {"key": 1}).to_list()}
    chosen = []
    for key, limit in limits:
        slot = next((f"{key}#{n}" for n in range(limit) if (key, f"{key}#{n}") not in taken), None)
        if slot is None:
            raise Full(key)
        chosen.append((slot, key))
    return chosen


async def _delete(db: Database, ids: list[str], token: str) -> None:
    try:
        await db.slots.delete_many({"_id": {"$in": ids}, "token": token})
    except PyMongoError as exc:  # the reaper's release_stale frees them
        log.warning("could not free slots %s (%s); they are freed when found stale", ids, exc)


async def release(db: Database, job: dict[str, Any], *, session: Any = None) -> None:
    """Free the slots ``job``'s run holds (its ``locked.slots``), in ``session``'s transaction if given."""
    locked = job.get("locked") or {}
    held = locked.get("slots")
    if held and isinstance(held, list):
        await db.slots.delete_many({"_id": {"$in": held}, "token": locked.get("token")}, session=session)


async def release_stale(db: Database, *, older_than: float = 30.0) -> int:
    """Free slots taken more than ``older_than`` s ago whose job does not run under their token; return how many.

    (The age spares a claim in flight on a server without transactions.)
    """
    since = datetime.now(timezone.utc) - timedelta(seconds=older_than)
    held = await db.slots.find({}).to_list()
    held = [slot for slot in held if not isinstance(slot.get("at"), datetime) or
            slot["at"].replace(tzinfo=slot["at"].tzinfo or timezone.utc) < since]
    if not held:
        return 0
    running = {(job["_id"], (job.get("locked") or {}).get("token")) for job in await db.queue.find(
        {"_id": {"$in": [slot.get("job_id") for slot in held]}, "state": "running"}, {"locked.token": 1}).to_list()}
    freed = 0
    for slot in held:
        if (slot.get("job_id"), slot.get("token")) not in running:
            freed += (await db.slots.delete_one({"_id": slot["_id"], "token": slot.get("token")})).deleted_count
    if freed:
        log.warning("freed %d concurrency slots whose jobs no longer run", freed)
    return freed
