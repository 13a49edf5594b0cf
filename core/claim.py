"""Claiming due jobs, and the change stream that says when to look.

- ``Claimer`` keeps the most urgent due jobs (highest priority, then oldest;
  ``query_at`` has come) of the classes a worker runs in a ready list, and
  takes as many as it has free slots, each with a compare-and-set that the
  job is still waiting (``states.claim``): of two workers exactly one wins a
  job. A claim writes a fresh ``locked.token`` (see ``core.lease``). Ids the
  worker runs already are never claimed again by it.
- ``next_due_in`` says how long until the next waiting job falls due.
- ``QueueWatcher`` follows the queue's change stream, filtered to the fields a
  worker acts on (new jobs, changes into a waiting state, kills, due times --
  not claims, ends, lease renewals or progress), and calls back:
  ``inserted(job)`` for a new job, ``wake()`` for other changes that may make
  a job claimable, ``killed(job_id)`` when a running job is asked to die.

A job document that cannot be claimed because it is malformed (no
``query_at``, no ``version``...) is logged and skipped.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Collection

from bson import ObjectId
from pymongo.errors import OperationFailure, PyMongoError

from core import flow, slots, states
from core.tasks import stop_task

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Claimer", "next_due_in", "QueueWatcher"]

log = logging.getLogger(__name__)

_WAITING = sorted(s.value for s in states.WAITING)
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError)
#: How far back ``next_due_in`` looks: a job that fell due while the claim before ran.
_LOOK_BACK = timedelta(seconds=1)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Claimer:
    """Claims a worker's next jobs from a ready list: the most urgent due jobs, in order, kept between claims.

    The list holds small stubs (``_id``, ``version``, ``state``, ``priority``,
    ``trial``, ``started_at``) of at most ``limit`` jobs: the head of the due
    jobs of this worker's classes, by priority, then age. A claim takes the
    first stub and makes it ``running`` with one compare-and-set by ``_id``,
    then reads the job back; a stub whose job changed meanwhile (claimed
    elsewhere, killed) fails it and is dropped. So a claim costs one write
    and one read by ``_id``, and the queue is read only when the list is
    empty but may not hold every due job, or after ``invalidate``.

    It is kept true by the queue's change stream: a new job is ``offer``-ed
    (added in its place when it is due and ours), and whatever else makes a
    job claimable (a retry or a deferral due, a restart, a reaped job, a
    reopened stream, a timer for the next due time) calls ``invalidate``.
    A job known to fall due later (``due_in``: from an offer, or the worker's
    timer) makes the first claim after its time read the queue. Whatever an
    event may have missed, the list is read anew when it is older than
    ``max_age`` seconds: a retry that falls due while every slot is busy and
    the list still holds jobs takes its place in the order within that time.
    """

    def __init__(self, db: Database, *, worker: str, host: str, classes: Collection[str], limit: int = 1000,
                 max_age: float = 30.0, clock: Callable[[], float] = time.monotonic, tags: Collection[str] = (),
                 pool: tuple[str, int] | None = None) -> None:
        """``tags``: the worker's (it claims only jobs whose ``requires`` it has); ``pool``: its pool's
        name and ``max_running`` (each claim takes a slot of the pool, ``core.slots``)."""
        self.db = db
        self.worker = worker
        self.host = host
        self.classes = set(classes)
        self.tags = frozenset(tags)
        self.pool = pool
        #: What is paused (``core.flow``): jobs of paused classes are not claimed.
        self.flow = flow.Flow()
        #: Whether the last claim passed over jobs for want of a free slot (``core.slots``).
        self.blocked = False
        self.limit = limit
        self.max_age = max_age
        self.clock = clock
        self._ready: list[tuple[Any, dict[str, Any]]] = []  # (sort key, stub), most urgent first
        self._complete = False     # the list held every due job of ours when it was read
        self._read_at: float | None = None  # when it was read (None: it must be read)
        self._due_at: float | None = None   # when a job known not to be due yet falls due
        self._offered: list[dict[str, Any]] | None = None  # offers made while the queue is read
        #: Reads of the queue so far (tests and benchmarks look at it).
        self.scans = 0

    def invalidate(self) -> None:
        """The list may be wrong: the next claim reads the queue."""
        self._read_at = None

    def set_flow(self, paused: flow.Flow) -> None:
        """Claim by ``paused`` from now on; the next claim reads the queue when what is paused changed
        (a read costs what the due jobs are, on the embedded server: not for a flow read again unchanged,
        as every reopening of the change stream does)."""
        changed = (paused.all, paused.classes) != (self.flow.all, self.flow.classes)
        self.flow = paused
        if changed:
            self.invalidate()

    def _wanted(self, job: dict[str, Any]) -> bool:
        """Whether ``job`` is of this worker's classes, not paused, and requires no tag it lacks."""
        requires = job.get("requires") or ()
        return job["qual_name"] in self.classes and not self.flow.paused(job["qual_name"]) and \
            isinstance(requires, (list, tuple)) and set(requires) <= self.tags

    def due_in(self, seconds: float) -> None:
        """A waiting job falls due in ``seconds``: read the queue at the first claim after that."""
        due = self.clock() + seconds
        self._due_at = due if self._due_at is None else min(self._due_at, due)

    def offer(self, job: dict[str, Any]) -> None:
        """A new job (from the change stream): add it in its place if it is due and this worker's."""
        if self._offered is not None:
            self._offered.append(job)  # the read under way may not see it: offered again after it
            return
        if self._read_at is None:
            return  # read again at the next claim anyway
        try:
            if not self._wanted(job) or job["state"] not in _WAITING:
                return
            wait = (job["query_at"] - _now()).total_seconds()
            if wait > 0:
                self.due_in(wait)
                return
            key = _key(job)
        except _MALFORMED:
            return  # the next read of the queue logs it
        if not self._complete and (not self._ready or key > self._ready[-1][0]):
            return  # jobs the list does not hold come before it: a later read finds it
        bisect.insort(self._ready, (key, _stub(job)), key=lambda entry: entry[0])
        if len(self._ready) > self.limit:
            self._ready.pop()
            self._complete = False

    async def claim(self, n: int, running: Collection[Any] = ()) -> list[dict[str, Any]]:
        """Claim up to ``n`` due jobs; return them (now ``running``), most urgent first."""
        if n <= 0:
            return []
        now = self.clock()
        if self._read_at is None or now - self._read_at > self.max_age or \
                (self._due_at is not None and now >= self._due_at):
            await self._read()
        claimed = await self._take(n, running)
        if len(claimed) < n and not self._complete:
            await self._read()
            claimed += await self._take(n - len(claimed), running)
        return claimed

    async def _read(self) -> None:
        self.scans += 1
        read_at = self.clock()
        self._offered = []
        try:
            stubs = await self._stubs()
        except BaseException:
            self.invalidate()  # the offers made meanwhile are dropped: read again
            raise
        finally:
            offered, self._offered = self._offered, None
        ready = []
        for stub in stubs:
            try:
                ready.append((_key(stub), stub))
            except _MALFORMED as exc:
                log.error("cannot claim job %s, its document is malformed (%r); skipping it", stub.get("_id"), exc)
        self._ready, self._complete, self._read_at = ready, len(stubs) < self.limit, read_at
        if self._due_at is not None and self._due_at <= read_at:
            self._due_at = None
        known = {stub["_id"] for stub in stubs}
        for job in offered:
            if job.get("_id") not in known:
                self.offer(job)

    async def _stubs(self) -> list[dict[str, Any]]:
        """The head of the due jobs of this worker's classes (not paused, tags it has), in claim order."""
        classes = sorted(name for name in self.classes if not self.flow.paused(name))
        if not classes:
            return []
        return await self.db.majority(self.db.queue).find(
            {"state": {"$in": _WAITING}, "query_at": {"$lte": _now()}, "qual_name": {"$in": classes},
             **flow.runnable_by(self.tags)},
            _STUB).sort([("priority", -1), ("_id", 1)]).limit(self.limit).to_list()

    async def _take(self, n: int, running: Collection[Any]) -> list[dict[str, Any]]:
        """Claim from the head of the list, ``_WINDOW`` stubs at a time (``states.claim``).

        The first job of the window that is still waiting and due is taken;
        the stubs before it were taken by other workers (or changed) and are
        dropped with it, each having cost one write. A job under a
        concurrency limit is claimed alone with its slots
        (``states.claim_limited``); when a limit is full its jobs stay in the
        list, passed over until a slot frees (``blocked``). Jobs of a class
        paused meanwhile stay too. Ids this worker still runs under an older
        claim are never offered: never two processes of one job.
        """
        claimed: list[dict[str, Any]] = []
        if running:
            self._ready = [entry for entry in self._ready if entry[1]["_id"] not in running]
        full: set[str] = set()
        self.blocked = False
        while len(claimed) < n:
            window = []
            for _, stub in self._ready:
                limits = slots.keys(stub, self.pool)
                if self.flow.paused(stub["qual_name"]) or any(key in full for key, _ in limits):
                    continue
                if limits and window:
                    break  # a limited job is claimed alone
                window.append(stub)
                if limits or len(window) == _WINDOW:
                    break
            if not window:
                break
            now = _now()
            locked = {"worker": self.worker, "host": self.host, "pid": None, "at": now, "heartbeat": now,
                      "token": secrets.token_hex(8)}
            ids = [stub["_id"] for stub in window]
            try:
                if limits := slots.keys(window[0], self.pool):
                    job = await states.claim_limited(self.db, ids[0], limits, locked=locked, now=now)
                else:
                    job = await states.claim(self.db, ids, locked=locked, now=now)
            except slots.Full as exc:
                full.add(exc.key)
                self.blocked = True
                continue
            except BaseException:
                self.invalidate()  # a database error: whether one was claimed is unknown
                raise
            # By id, not by position: an offer made while the claim was
            # written may have put a job at the head of the list.
            if job is None:  # all taken: another worker is ahead in the same list
                self._drop(ids)
                continue
            self._drop(ids[:ids.index(job["_id"]) + 1])
            claimed.append(job)
        return claimed

    def _drop(self, ids: list[Any]) -> None:
        gone = set(ids)
        self._ready = [entry for entry in self._ready if entry[1]["_id"] not in gone]


#: Stubs one call of ``states.claim`` tries, in order.
_WINDOW = 8
_STUB = {"_id": 1, "version": 1, "state": 1, "priority": 1, "trial": 1, "started_at": 1, "qual_name": 1,
         "max_parallel": 1, "requires": 1}


def _stub(job: dict[str, Any]) -> dict[str, Any]:
    return {name: job[name] for name in _STUB if name in job}


def _key(job: dict[str, Any]) -> tuple[int, ObjectId]:
    """The claim order: highest priority first, then oldest (ObjectIds grow with time).

    Raises ``TypeError`` for a document that cannot be claimed (malformed).
    """
    priority, job_id = job["priority"], job["_id"]
    if not isinstance(priority, int) or not isinstance(job_id, ObjectId) or \
            not isinstance(job.get("trial"), int) or not isinstance(job.get("version"), int):
        raise TypeError(f"priority {priority!r}, _id {job_id!r}, trial {job.get('trial')!r}, "
                        f"version {job.get('version')!r}")
    return -priority, job_id


async def next_due_in(db: Database, classes: Collection[str], ceiling: float, *, tags: Collection[str] = ()
                      ) -> float:
    """Seconds until the next waiting job of ``classes`` a worker with ``tags`` may run falls due, at most ``ceiling``.

    Only the jobs that fall due from a second ago to ``ceiling`` from now
    are looked at (the index range of ``query_at`` is that window): the cost
    grows neither with the jobs that wait for later nor with those due
    already, however many (a database that applies ``limit`` late, as the
    embedded one does, would read them all after every claim). The caller has
    just claimed what was due; one missed anyway is found by the ready list's
    next read, within its ``max_age``.
    """
    now = _now()
    nxt = await db.queue.find_one(
        {"query_at": {"$gte": now - _LOOK_BACK, "$lte": now + timedelta(seconds=ceiling)},
         "state": {"$in": _WAITING}, "qual_name": {"$in": list(classes)}, **flow.runnable_by(tags)},
        {"query_at": 1}, sort=[("query_at", 1)])
    if nxt is None:
        return ceiling
    return max(0.0, min(ceiling, (nxt["query_at"] - now).total_seconds() + 0.01))


# Inserts, and updates that change what a worker acts on. secantusd reports a
# dotted $set as a nested field, MongoDB as a dotted one: both name top-level
# fields here.
# A state change matters only into a state a worker claims from: not a claim
# (running), not an end (a final move deletes from the queue), each of which
# would otherwise cost the server an event to deliver per job. Besides the
# queue: freed concurrency slots and changes of what is paused (core.flow).
_PIPELINE = [{"$match": {"$or": [
    {"ns.coll": "queue", "$or": [
        {"operationType": {"$in": ["insert", "replace"]}},
        {"updateDescription.updatedFields.state": {"$in": _WAITING}},
        *({f"updateDescription.updatedFields.{name}": {"$exists": True}} for name in ("killed_at", "query_at")),
    ]},
    {"ns.coll": "slots", "operationType": "delete"},
    {"ns.coll": "settings", "documentKey._id": flow.FLOW_ID},
]}}]


class QueueWatcher:
    """Follows the database's change stream for a worker: the queue, freed slots, pauses; ``start()``/``stop()``.

    Whenever the stream (re)opens it calls ``wake()`` and ``reopened()``: a
    job enqueued, or a kill asked for, while it was closed sent no event.
    ``freed()`` is called when a concurrency slot frees, ``flow_changed()``
    when what is paused changes (``core.flow``).
    """

    def __init__(self, db: Database, *, wake: Callable[[], None], killed: Callable[[Any], None],
                 reopened: Callable[[], None], inserted: Callable[[dict[str, Any]], None] | None = None,
                 freed: Callable[[], None] | None = None, flow_changed: Callable[[], None] | None = None,
                 retry_seconds: float = 1.0) -> None:
        self.db = db
        self.wake = wake
        self.inserted = inserted
        self.killed = killed
        self.reopened = reopened
        self.freed = freed or wake
        self.flow_changed = flow_changed or wake
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
                async with await self.db.db.watch(_PIPELINE, resume_after=self._token) as stream:
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
        collection = (change.get("ns") or {}).get("coll")
        if collection == "slots":
            self.freed()
            return
        if collection == "settings":
            self.flow_changed()
            return
        fields = (change.get("updateDescription") or {}).get("updatedFields") or {}
        document = change.get("fullDocument") or {}
        job_id = (change.get("documentKey") or {}).get("_id")
        if fields.get("killed_at") or document.get("killed_at"):
            self.killed(job_id)
        if change.get("operationType") == "insert" and self.inserted is not None:
            self.inserted(document)
            return
        state = fields.get("state") or document.get("state")
        if state in _WAITING or "query_at" in fields:
            self.wake()
