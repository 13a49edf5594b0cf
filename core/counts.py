"""Job counts per class and state, and jobs finished per 10 s, kept in the writes that change them.

Counting a collection costs what it holds (on the embedded server a
``count_documents`` reads every key in its bounds; on MongoDB an exact count
and an aggregation still grow with it), so ``core.stats`` reads counts
instead, in two collections:

- ``count_changes``: one small document per change, written in the same
  transaction as the job it counts (for an enqueue, in the same command):
  ``{"q": qual_name, "c": {"pending": -1, "failed": 1}, "w": {"m29380561": -1},
  "d": {"176283406": 1}}``. Each is a new document, so writers never wait for
  one another, and a worker killed in the middle of a transaction holds no
  lock that others need (a dead client's transaction keeps its locks until
  the server's transaction lifetime ends, 60 s by default).
- ``counts``: one document per job class, what the folded changes add up to::

    {"_id": "jobs.example.DummyJob", "qual_name": ...,
     "pending": 7, "deferred": 0, "failed": 1,                  # live jobs, by resting state
     "complete": 120, "error": 2, "inactive": 0, "killed": 4,   # the journal
     "waiting": {"m29380561": 7},     # jobs resting pending, by the minute of their _id
     "done": {"s17": {"t": 176283406, "n": 5}}}  # finished per 10 s slot, a ring of an hour

``Folder`` (run by every worker and server) folds the changes into the counts
every second, in transactions that add them and delete them together, so each
is added once. ``read`` adds the counts and the changes not folded yet, in one
snapshot: a second's worth of small documents, whatever the collections hold.

A live job is counted under its *resting* state: the state it is in, or, while
it runs, the state it was claimed from (``claimed_from``, which the claim
writes). So a claim changes no count and stays one write; the few running
jobs are read when counts are shown and subtracted from their resting state.

Without transactions (a MongoDB that is not a replica set) a change is written
right after its job, and folded one at a time; a crash between two such
writes leaves the counts off by that job. ``rebuild`` recounts (``jobdeck stats
--rebuild``), and a database that was never counted is counted by ``ensure``.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

from bson import ObjectId
from pymongo import DeleteMany, ReplaceOne, UpdateOne
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern

from core.tasks import stop_task

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["SLOT_SECONDS", "RESTING", "Change", "MalformedChange", "Folder", "resting", "added", "moved", "removed",
           "write", "inserts", "read", "fold", "rebuild", "ensure", "slot_of", "minute_of", "minute_range"]

log = logging.getLogger(__name__)

#: Width of a slot of the finished-jobs ring, in seconds; the ring holds an hour.
SLOT_SECONDS = 10
_RING = 3600 // SLOT_SECONDS
#: The states a job is counted under (a running job: the one it was claimed from).
RESTING = ("pending", "deferred", "failed", "complete", "error", "inactive", "killed")
#: Changes folded per transaction.
FOLD_BATCH = 500
_SETTING = "counts"


def slot_of(moment: datetime) -> int:
    """The number of the ``SLOT_SECONDS`` slot ``moment`` falls in (since 1970)."""
    return math.floor(moment.timestamp() / SLOT_SECONDS)


def minute_of(job_id: Any) -> str:
    """The ``waiting`` key of a job's ``_id``: the minute it was made in."""
    created = job_id.generation_time if isinstance(job_id, ObjectId) else datetime.now(timezone.utc)
    return f"m{math.floor(created.timestamp() / 60)}"


def minute_range(minute: str) -> dict[str, Any]:
    """The ``_id`` bounds of the jobs made in ``minute`` (a ``waiting`` key)."""
    start = datetime.fromtimestamp(int(minute[1:]) * 60, timezone.utc)
    return {"$gte": ObjectId.from_datetime(start), "$lt": ObjectId.from_datetime(start + timedelta(minutes=1))}


def resting(job: dict[str, Any]) -> str:
    """The state ``job`` is counted under: its state, or for a running job the one it was claimed from."""
    state = job.get("state")
    return (job.get("claimed_from") or "pending") if state == "running" else str(state)


@dataclass
class Change:
    """What to add to one class's counts: per state, per waiting minute, and per finished slot."""

    qual_name: str
    states: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    waiting: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    done: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # slot -> jobs finished
    #: New jobs' priority levels: smallest and largest ``_id`` (the queue listing's hints, ``core.levels``).
    levels: dict[int, tuple[ObjectId, ObjectId]] = field(default_factory=dict)

    def count(self, job: dict[str, Any], state: str, sign: int) -> None:
        """Count ``job`` (``sign`` +1) or uncount it (-1) under ``state``."""
        self.states[state] += sign
        if state == "pending":
            self.waiting[minute_of(job["_id"])] += sign

    def add(self, other: Change) -> None:
        for mine, theirs in ((self.states, other.states), (self.waiting, other.waiting), (self.done, other.done)):
            for key, n in theirs.items():
                mine[key] += n
        for level, (low, high) in other.levels.items():
            self.enqueued_at(level, low, high)

    def enqueued_at(self, level: int, low: ObjectId, high: ObjectId) -> None:
        """Note new jobs at priority ``level``, ``_id`` from ``low`` to ``high``."""
        known = self.levels.get(level)
        self.levels[level] = (min(low, known[0]), max(high, known[1])) if known else (low, high)

    def record(self) -> dict[str, Any]:
        """The change as a ``count_changes`` document."""
        return {"_id": ObjectId(), "q": self.qual_name, "c": {k: n for k, n in self.states.items() if n},
                "w": {k: n for k, n in self.waiting.items() if n}, "d": {str(k): n for k, n in self.done.items()},
                "l": {str(level): list(ids) for level, ids in self.levels.items()}}

    @classmethod
    def recorded(cls, record: dict[str, Any]) -> Change:
        """The change a ``count_changes`` document holds.

        Raises ``MalformedChange`` for a document ``record`` never writes:
        adding it would fail (or write fields that are no counts) every time.
        """
        qual_name = record.get("q")
        if not isinstance(qual_name, str) or not qual_name:
            raise MalformedChange(f"q must be a qual_name, got {qual_name!r:.60}")
        change = cls(qual_name)
        change.states.update(_numbers(record, "c", _FIELD.fullmatch))
        change.waiting.update(_numbers(record, "w", _MINUTE.fullmatch))
        change.done.update({int(slot): n for slot, n in _numbers(record, "d", str.isdecimal).items()})
        levels = record.get("l") or {}
        if not isinstance(levels, dict):
            raise MalformedChange(f"l must be an object, got {levels!r:.60}")
        for level, ids in levels.items():
            if not _INTEGER.fullmatch(str(level)) or not isinstance(ids, (list, tuple)) or len(ids) != 2 \
                    or not all(isinstance(one, ObjectId) for one in ids):
                raise MalformedChange(f"l.{level} must be [lowest _id, highest _id] of a level, got {ids!r:.60}")
            change.enqueued_at(int(level), ids[0], ids[1])
        return change

    @classmethod
    def stored(cls, doc: dict[str, Any], first_slot: int) -> Change:
        """The counts of a ``counts`` document, with its slots from ``first_slot`` on."""
        change = cls(str(doc.get("qual_name")))
        change.states.update({state: doc[state] for state in RESTING if doc.get(state)})
        change.waiting.update(doc.get("waiting") or {})
        for entry in (doc.get("done") or {}).values():
            if isinstance(entry, dict) and entry.get("t", -1) >= first_slot:
                change.done[entry["t"]] += entry.get("n", 0)
        return change

    def update(self) -> list[dict[str, Any]]:
        """The update pipeline adding this change to its class's counts (for an upsert).

        Absent fields count as 0; a waiting minute that reaches 0 goes; a
        slot of the ring holding an hour-old count starts again.
        """
        fields: dict[str, Any] = {"qual_name": self.qual_name}
        for state, delta in self.states.items():
            if delta:
                fields[state] = {"$add": [{"$ifNull": [f"${state}", 0]}, delta]}
        for minute, delta in self.waiting.items():
            if delta:
                path = f"waiting.{minute}"
                fields[path] = {"$let": {"vars": {"n": {"$add": [{"$ifNull": [f"${path}", 0]}, delta]}},
                                         "in": {"$cond": [{"$gt": ["$$n", 0]}, "$$n", "$$REMOVE"]}}}
        for slot, finished in self.done.items():
            path = f"done.s{slot % _RING}"
            fields[path] = {"$cond": [{"$eq": [f"${path}.t", slot]},
                                      {"t": slot, "n": {"$add": [f"${path}.n", finished]}},
                                      {"t": slot, "n": finished}]}
        return [{"$set": fields}]


class MalformedChange(ValueError):
    """Raised for a ``count_changes`` document that is no change ``Change.record`` writes."""


_FIELD = re.compile(r"[a-z_][a-z0-9_]*")  # a state: a field of the counts, never "$x" or "a.b"
_MINUTE = re.compile(r"m\d+")
_INTEGER = re.compile(r"-?\d+")


def _numbers(record: dict[str, Any], name: str, is_key: Callable[[str], Any]) -> dict[str, int]:
    """``record[name]``: an object of integers under keys ``is_key`` accepts (absent: empty)."""
    value = record.get(name) or {}
    if not isinstance(value, dict):
        raise MalformedChange(f"{name} must be an object, got {value!r:.60}")
    for key, n in value.items():
        if not isinstance(key, str) or not is_key(key) or isinstance(n, bool) or not isinstance(n, int):
            raise MalformedChange(f"{name}.{key} is no count: {n!r:.60}")
    return value


def _group(jobs: Iterable[dict[str, Any]], sign: int) -> list[Change]:
    changes: dict[str, Change] = {}
    for job in jobs:
        changes.setdefault(job["qual_name"], Change(job["qual_name"])).count(job, resting(job), sign)
    return list(changes.values())


def added(jobs: Iterable[dict[str, Any]]) -> list[Change]:
    """The change of new jobs (one per class), with their priority levels."""
    jobs = list(jobs)
    changes = {change.qual_name: change for change in _group(jobs, +1)}
    for job in jobs:
        if isinstance(job.get("priority"), int):
            changes[job["qual_name"]].enqueued_at(job["priority"], job["_id"], job["_id"])
    return list(changes.values())


def removed(jobs: Iterable[dict[str, Any]]) -> list[Change]:
    """The change of jobs deleted (each with ``_id``, ``qual_name`` and ``state``)."""
    return _group(jobs, -1)


def moved(job: dict[str, Any], to: str, *, final: bool, now: datetime) -> Change | None:
    """The change of ``job`` (as stored) becoming ``to``; None if its resting state stays.

    A final state is also counted as finished in ``now``'s slot.
    """
    before, after = resting(job), resting({**job, "state": to})
    if before == after and not final:
        return None
    change = Change(job["qual_name"])
    change.count(job, before, -1)
    change.count(job, after, +1)
    if final:
        change.done[slot_of(now)] += 1
    return change


def inserts(db: Database) -> Any:
    """``audit.Also`` for new jobs: their change is inserted with them."""
    return lambda jobs: [(db.count_changes, change.record()) for change in added(jobs)]


async def write(db: Database, changes: list[Change], *, session: Any = None) -> None:
    """Record ``changes`` (in ``session``'s transaction, if given)."""
    if changes:
        await db.count_changes.insert_many([change.record() for change in changes], session=session)


async def read(db: Database, **options: Any) -> dict[str, Change]:
    """The counts of every class: stored and not folded yet, added up in one snapshot.

    ``options`` go to both reads (``max_time_ms``). The ring's slots are
    those of the last hour.
    """
    first_slot = slot_of(datetime.now(timezone.utc)) - _RING + 1

    async def both(session: Any = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return (await db.counts.find({}, session=session, **options).to_list(),
                await db.count_changes.find({}, session=session, **options).to_list())

    if db.transactions:  # a fold between the two reads would count its changes twice, or not at all
        async with db.session() as session:
            async with await session.start_transaction(read_concern=ReadConcern("snapshot")):
                stored, pending = await both(session)
    else:
        stored, pending = await both()
    classes: dict[str, Change] = {}
    for doc in stored:
        change = Change.stored(doc, first_slot)
        classes.setdefault(change.qual_name, Change(change.qual_name)).add(change)
    for record in pending:
        try:
            change = Change.recorded(record)
        except MalformedChange as exc:
            _report(record, exc, "left out of the counts until a folder deletes it")
            continue
        classes.setdefault(change.qual_name, Change(change.qual_name)).add(change)
    return classes


#: The ``_id`` of the malformed changes ``read`` has logged already (each once).
_reported: set[Any] = set()


def _report(record: dict[str, Any], exc: MalformedChange, what: str) -> None:
    """Log a malformed change once per process, with its ``_id`` (``read`` sees it every second)."""
    if record.get("_id") in _reported:
        return
    if len(_reported) >= 1000:
        _reported.clear()
    _reported.add(record.get("_id"))
    log.error("malformed count change %s (%s), %s: %r", record.get("_id"), exc, what, record)


async def fold(db: Database, *, limit: int = FOLD_BATCH) -> int:
    """Add up to ``limit`` recorded changes to the counts and delete them; return how many.

    The changes are read, then deleted and added in one transaction where the
    server has them: another folder that took some of them first makes the
    delete fall short (or conflict), which rolls it back, so nothing is added
    twice. Without transactions, one change at a time: taken by a delete,
    then added.
    """
    if not db.transactions:
        folded = 0
        while folded < limit and (record := await db.count_changes.find_one_and_delete({})) is not None:
            folded += 1
            try:
                change = Change.recorded(record)
            except MalformedChange as exc:
                log.error("malformed count change %s (%s) deleted: %r", record.get("_id"), exc, record)
                continue
            await db.counts.update_one({"_id": change.qual_name}, change.update(), upsert=True)
            await _note_levels(db, [change])
        return folded
    records = await db.count_changes.find({}).limit(limit).to_list()
    if not records:
        return 0
    merged: dict[str, Change] = {}
    malformed: list[tuple[dict[str, Any], MalformedChange]] = []
    for record in records:
        try:
            change = Change.recorded(record)
        except MalformedChange as exc:  # deleted with the others, else it would stop every fold
            malformed.append((record, exc))
            continue
        merged.setdefault(change.qual_name, Change(change.qual_name)).add(change)
    async with db.session() as session:
        async with await session.start_transaction():
            taken = await db.count_changes.delete_many({"_id": {"$in": [record["_id"] for record in records]}},
                                                       session=session)
            if taken.deleted_count != len(records):
                raise _Raced()  # another folder took some first: roll back, read again next time
            if merged:
                await db.counts.bulk_write([UpdateOne({"_id": name}, change.update(), upsert=True)
                                            for name, change in merged.items()], ordered=False, session=session)
            await _note_levels(db, merged.values(), session)
    for record, exc in malformed:
        log.error("malformed count change %s (%s) deleted: %r", record.get("_id"), exc, record)
    return len(records)


async def _note_levels(db: Database, changes: Iterable[Change], session: Any = None) -> None:
    """Tell the queue listing's hints the levels of new jobs (``core.levels``)."""
    from core import levels  # (core.levels reads the queue: it needs more of core than this module)

    seen = Change("")
    for change in changes:
        seen.add(Change("", levels=change.levels))
    if seen.levels:
        await db.settings.update_one({"_id": levels.HINTS_ID}, levels.enqueued(seen.levels), upsert=True,
                                     session=session)


class _Raced(PyMongoError):
    """Raised in a fold whose changes another folder took first (its transaction is rolled back)."""


class Folder:
    """Folds recorded changes into the counts about every ``interval`` seconds. ``start()``/``stop()``.

    Every worker and server runs one: folds that meet are rolled back and
    tried again at the next tick, which comes a little at random.
    """

    def __init__(self, db: Database, *, interval: float = 1.0) -> None:
        self.db = db
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="counts folder")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        failing = False
        while True:
            try:
                while await fold(self.db) >= FOLD_BATCH:
                    pass
                failing = False
            except PyMongoError as exc:  # (a conflict with another folder, or the database gone)
                if not failing:
                    log.info("folding the job counts failed (%s); trying again", exc)
                failing = True
            except Exception:  # noqa: BLE001 - a bug here must not stop the counts for good
                log.exception("folding the job counts failed; trying again")
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.5))


async def ensure(db: Database) -> bool:
    """Count once a database that was never counted (made before counts existed); return whether it did."""
    if await db.settings.find_one({"_id": _SETTING}) is not None:
        return False
    await rebuild(db)
    return True


async def rebuild(db: Database) -> dict[str, int]:
    """Recount every job of the queue and the journal, and the finished slots of the last hour.

    Reads both collections in full: an operator's repair, not a request's.
    Exact when no job changes meanwhile; a job that changes during the
    recount may be counted as it was before. Returns the totals per state.
    """
    started = ObjectId()  # changes recorded from here on are not in the recount
    fresh: dict[str, Change] = {}
    journaled: set[Any] = set()
    first_slot = slot_of(datetime.now(timezone.utc)) - _RING + 1
    async for job in db.journal.find({}, {"qual_name": 1, "state": 1, "finished_at": 1}):
        journaled.add(job["_id"])
        change = fresh.setdefault(job["qual_name"], Change(job["qual_name"]))
        change.count(job, resting(job), +1)
        finished = job.get("finished_at")
        if isinstance(finished, datetime) and slot_of(finished) >= first_slot:
            change.done[slot_of(finished)] += 1
    queued = Change("")  # the priority levels of the queue, for its listing's hints
    async for job in db.queue.find({}, {"qual_name": 1, "state": 1, "claimed_from": 1, "priority": 1}):
        if job["_id"] not in journaled:  # (a finished job's copy waiting for its move is counted once)
            fresh.setdefault(job["qual_name"], Change(job["qual_name"])).count(job, resting(job), +1)
            if isinstance(job.get("priority"), int):
                queued.enqueued_at(job["priority"], job["_id"], job["_id"])
    documents = [{"_id": name, "qual_name": name, **{state: n for state, n in change.states.items() if n},
                  "waiting": {minute: n for minute, n in change.waiting.items() if n > 0},
                  "done": {f"s{slot % _RING}": {"t": slot, "n": n} for slot, n in change.done.items()}}
                 for name, change in fresh.items()]
    requests: list[Any] = [ReplaceOne({"_id": doc["_id"]}, doc, upsert=True) for doc in documents]
    requests.append(DeleteMany({"_id": {"$nin": [doc["_id"] for doc in documents]}}))
    await db.counts.bulk_write(requests, ordered=True)
    await db.count_changes.delete_many({"_id": {"$lt": started}})
    await _note_levels(db, [queued])
    await db.settings.replace_one({"_id": _SETTING}, {"_id": _SETTING, "built_at": datetime.now(timezone.utc)},
                                  upsert=True)
    totals = dict.fromkeys(RESTING, 0)
    for change in fresh.values():
        for state, n in change.states.items():
            totals[state] += n
    return totals
