"""Job states and the one function that changes them.

::

    pending ──claim──▶ running ──▶ complete
       ▲                 │ ├────▶ failed ──(error_time)──▶ claimed again
       │                 │ ├────▶ error      (no attempts left)
       │                 │ ├────▶ deferred ──(defer_time)──▶ claimed again
       │                 │ ├────▶ inactive   (deferred past defer_max)
       └──(shutdown)─────┘ └────▶ killed     (request, wall_time, removal)

    failed/deferred ──restart──▶ pending;   any live state ──kill──▶ killed

``transition`` is the only writer of ``state`` (with ``claim``, its form for
workers): one conditional update on ``{_id, state, version}`` that bumps
``version``, so of two actors racing for the same job exactly one wins; the
loser gets ``Conflict``. A transition to a
final state also moves the job from ``queue`` to ``journal``: in a transaction
(delete from the queue, insert into the journal) when the server has them,
otherwise in an order that ``complete_moves`` can finish after a crash (a job
is never in neither collection, and a copy left in ``queue`` has a final
state, so no reader takes it for live). A transition that changes what the
job is counted under writes its counts in the same transaction
(``core.counts``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

from pymongo import ReplaceOne

from core import counts, slots
from core.errors import Conflict

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["State", "FINAL", "LIVE", "WAITING", "TRANSITIONS", "transition", "claim", "claim_limited", "complete_moves", "is_final"]


class State(str, Enum):
    """The state of a job."""

    PENDING = "pending"
    RUNNING = "running"
    DEFERRED = "deferred"
    FAILED = "failed"
    COMPLETE = "complete"
    ERROR = "error"
    INACTIVE = "inactive"
    KILLED = "killed"

    def __str__(self) -> str:
        return self.value


FINAL = frozenset({State.COMPLETE, State.ERROR, State.INACTIVE, State.KILLED})
LIVE = frozenset(State) - FINAL
#: States a worker may claim from (when ``query_at`` has come).
WAITING = frozenset({State.PENDING, State.DEFERRED, State.FAILED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.RUNNING, State.KILLED}),
    State.DEFERRED: frozenset({State.RUNNING, State.PENDING, State.KILLED}),
    State.FAILED: frozenset({State.RUNNING, State.PENDING, State.KILLED}),
    State.RUNNING: frozenset({State.COMPLETE, State.FAILED, State.ERROR, State.DEFERRED,
                              State.INACTIVE, State.KILLED, State.PENDING}),
    State.COMPLETE: frozenset(),
    State.ERROR: frozenset(),
    State.INACTIVE: frozenset(),
    State.KILLED: frozenset(),
}


def is_final(state: str) -> bool:
    """Whether ``state`` is one a job never leaves."""
    return state in FINAL


async def transition(db: Database, job: dict[str, Any], to: State, *, fence: dict[str, Any] | None = None,
                     **fields: Any) -> dict[str, Any]:
    """Move ``job`` (as last read) to state ``to``, setting ``fields``; return the new document.

    The move is conditioned on the job's ``state`` and ``version``, or, with
    ``fence`` (e.g. ``{"locked.token": ...}``), on its state and the fence
    instead of the version: a run ends its job by its claim token without
    reading it first. Moves to a final state return the document as stored
    in the journal; others return ``job`` updated (after a fenced move its
    ``version`` is a guess).

    Raises ``Conflict`` if the table forbids the move, or if the job changed
    since it was read (another actor won).
    """
    source = State(job["state"])
    if to not in TRANSITIONS[source]:
        raise Conflict(f"job {job['_id']} is {source}; it cannot become {to}")
    condition = {"_id": job["_id"], "state": source.value, **(fence or {"version": job["version"]})}
    update = {"$set": {"state": to.value, **fields}, "$inc": {"version": 1}}
    # Leaving ``running`` frees the run's concurrency slots, in the same write (core.slots).
    held = job if source is State.RUNNING and (job.get("locked") or {}).get("slots") else None
    if to not in FINAL:
        await _change(db, condition, update, job, counts.moved(job, to.value, final=False, now=_now()), held)
        return {**job, **fields, "state": to.value, "version": job["version"] + 1}
    finished_at = fields.get("finished_at") if isinstance(fields.get("finished_at"), datetime) else _now()
    if db.transactions:
        # Three writes: the job leaves the queue (as it is now, not as read), enters the journal, and
        # is counted. A read and a delete, not findAndModify: on the embedded server that costs what
        # the collection holds, these cost the same with a million jobs queued. In the transaction
        # the delete conflicts with any write since the read, which makes it start over.
        async def move(session: Any) -> dict[str, Any]:
            current = await db.queue.find_one(condition, session=session)
            if current is None or not (await db.queue.delete_one(
                    {"_id": job["_id"], "version": current["version"]}, session=session)).deleted_count:
                raise _lost(job)
            after = {**current, **fields, "state": to.value, "version": current["version"] + 1}
            await db.journal.replace_one({"_id": job["_id"]}, after, upsert=True, session=session)
            await slots.release(db, current, session=session)
            await counts.write(db, [counts.moved(current, to.value, final=True, now=finished_at)], session=session)
            return after
        async with db.session() as session:
            return await session.with_transaction(move)
    await _change(db, condition, update, job, counts.moved(job, to.value, final=True, now=finished_at), held)
    after = await db.queue.find_one({"_id": job["_id"], "state": to.value})
    if after is None:  # moved meanwhile by complete_moves
        return await db.journal.find_one({"_id": job["_id"]}) or {**job, **fields, "state": to.value}
    await _move(db, [after])
    return after


async def _change(db: Database, condition: dict[str, Any], update: dict[str, Any], job: dict[str, Any],
                  change: counts.Change | None, held: dict[str, Any] | None) -> None:
    """The conditional update of a job, its counts and the slots it frees (of ``held``, the job as it ran):
    in one transaction where the server has them."""
    if (change is not None or held is not None) and db.transactions:
        async def write(session: Any) -> None:
            if not (await db.queue.update_one(condition, update, session=session)).modified_count:
                raise _lost(job)
            if change is not None:
                await counts.write(db, [change], session=session)
            if held is not None:
                await slots.release(db, held, session=session)
        async with db.session() as session:
            await session.with_transaction(write)
        return
    if not (await db.queue.update_one(condition, update)).modified_count:
        raise _lost(job)
    # A crash right here leaves the counts off by this job (see core.counts), and its slots to the reaper.
    if change is not None:
        await counts.write(db, [change])
    if held is not None:
        await slots.release(db, held)


async def claim(db: Database, ids: list[Any], *, locked: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """Make the first of the jobs ``ids`` (most urgent first) that is waiting and due ``running``; return it.

    The claim's compare-and-set: an update by ``_id`` whose condition is that
    the job is still waiting and due, so of two workers exactly one gets it,
    and a job taken or changed since it was read is passed over for the next
    of ``ids``; the winner reads its job back by its claim token. (Not one
    ``findAndModify`` over all ``ids``: on the embedded server that costs what
    the collection holds, 35 ms with 1,000 jobs queued and 235 ms with
    10,000, while an update and a read by ``_id`` cost 3 and 2 ms at any
    size.) It starts a new trial: ``trial`` + 1, ``locked`` set,
    ``started_at`` kept from the first trial, progress cleared, ``version``
    bumped, and ``claimed_from`` the state it left (a running job is counted
    under it: a claim changes no count, see ``core.counts``). None if every
    one of ``ids`` was taken.
    """
    for job_id in ids:
        taken = await db.queue.update_one(_claimable(job_id, now), _start(locked, now))
        if taken.modified_count:
            job = await db.queue.find_one({"_id": job_id, "locked.token": locked["token"]})
            if job is not None:  # (None: reaped or removed in the instant between)
                return job
    return None


async def claim_limited(db: Database, job_id: Any, limits: list[tuple[str, int]], *, locked: dict[str, Any],
                        now: datetime) -> dict[str, Any] | None:
    """``claim`` of one job that must take a slot of each of ``limits`` (``core.slots``); None if it was taken.

    The slots and the claim are written in one transaction (their ids go in
    ``locked.slots``); raises ``slots.Full`` when a limit has no free slot.
    """
    async def compare_and_set(session: Any, held: list[str]) -> bool:
        taken = await db.queue.update_one(_claimable(job_id, now), _start({**locked, "slots": held}, now),
                                          session=session)
        return bool(taken.modified_count)

    if await slots.take(db, job_id, limits, locked["token"], compare_and_set) is None:
        return None
    return await db.queue.find_one({"_id": job_id, "locked.token": locked["token"]})


def _claimable(job_id: Any, now: datetime) -> dict[str, Any]:
    return {"_id": job_id, "state": {"$in": _CLAIMABLE}, "query_at": {"$lte": now},
            "trial": {"$type": "number"}, "version": {"$type": "number"}}


def _start(locked: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    return [{"$set": {"state": State.RUNNING.value, "claimed_from": "$state", "trial": {"$add": ["$trial", 1]},
                      "locked": {"$literal": locked}, "started_at": {"$ifNull": ["$started_at", now]},
                      "prog": {"$literal": {"value": 0.0, "message": None}}, "version": {"$add": ["$version", 1]}}}]


#: The states a claim takes a job from.
_CLAIMABLE = sorted(state.value for state in WAITING if State.RUNNING in TRANSITIONS[state])


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _lost(job: dict[str, Any]) -> Conflict:
    return Conflict(f"job {job['_id']} changed meanwhile (it was {job['state']}, "
                    f"version {job['version']}); read it again")


async def _move(db: Database, jobs: list[dict[str, Any]]) -> None:
    """Copy finished jobs to the journal, then delete them from the queue (repeatable)."""
    await db.journal.bulk_write([ReplaceOne({"_id": j["_id"]}, j, upsert=True) for j in jobs])
    for job in jobs:
        await db.queue.delete_one({"_id": job["_id"], "version": job["version"]})


async def complete_moves(db: Database) -> int:
    """Finish journal moves a crash interrupted; return how many jobs were moved."""
    stranded = await db.queue.find({"state": {"$in": [s.value for s in FINAL]}}).to_list()
    if stranded:
        await _move(db, stranded)
    return len(stranded)
