"""Following a job: its states and log records as events, the past first, then live.

``follow`` yields ``Event``s: ``state`` (the job document, whenever it
changed), ``log`` (each record exactly once, in ``seq`` order) and finally
``close``; and ``None`` after ``idle`` seconds without news (time for a
keepalive), and at once when the catch-up had nothing to send. It subscribes
to the ``Hub`` before reading the database, so nothing falls between the past
and the live part. Live events are used as they come when they are the next
ones; whenever something is missing (a gap in ``seq``, a subscriber that fell
behind, a hub that restarted) it re-reads from the database by ``version``
and ``seq``. A follower resuming from an event id
gets exactly what it has not seen, also across server restarts.

A follower holds no job document while it sends its backlog or waits: it
remembers the last state it sent by a digest, and the hub's changes are
shared by all the followers of a job, serialised once for all of them.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from core import logs
from core.encoding import dumps
from core.errors import BadArgument
from core.hub import RESYNC
from core.queue import get, object_id
from core.states import FINAL

if TYPE_CHECKING:
    from core.db import Database
    from core.hub import Change, Hub

__all__ = ["Event", "follow", "parse_event_id", "wait_for"]

_MAX_INT64 = 2 ** 63 - 1


@dataclass(frozen=True)
class Event:
    """One thing to tell a follower: ``kind`` is ``state``, ``log`` or ``close``.

    ``text`` is ``data`` as JSON when that was made already: a hub change's,
    made once for all its followers.
    """

    kind: str
    id: str
    data: dict[str, Any]
    text: str | None = field(default=None, repr=False, compare=False)

    def json(self) -> str:
        """``data`` as JSON (``text``, or made now and not kept)."""
        return dumps(self.data) if self.text is None else self.text


def parse_event_id(value: str | None) -> tuple[int, int]:
    """``"<version>.<seq>"`` -> (version, seq); anything unreadable -> (0, 0).

    Raises ``BadArgument`` for numbers past what the database stores (64 bits).
    """
    if not value:
        return 0, 0
    version, _, seq = value.strip().partition(".")
    try:
        parsed = max(0, int(version)), max(0, int(seq or 0))
    except ValueError:
        return 0, 0
    if max(parsed) > _MAX_INT64:
        raise BadArgument(f"event id {value[:60]!r} is out of range: expected <version>.<seq>, "
                          "as sent in the stream's id: lines")
    return parsed


def _material(job: dict[str, Any]) -> dict[str, Any]:
    """The job without what a lease renewal changes (not worth a ``state`` event)."""
    locked = job.get("locked")
    if isinstance(locked, dict):
        locked = {k: v for k, v in locked.items() if k != "heartbeat"}
    return {**job, "version": None, "locked": locked}


def _digest(job: dict[str, Any]) -> bytes:
    """A digest of the job's material: two states with the same one are not worth two events."""
    text = dumps(_material(job), sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _final(job: dict[str, Any]) -> str | None:
    """What a ``close`` event says of ``job`` (``removed`` or its final state); None while it lives."""
    if job["state"] not in FINAL:
        return None
    return "removed" if job.get("removed_at") else job["state"]


class _Follower:
    """What one follower has sent so far, and turning news into its events.

    Of the last state sent it keeps a digest, not the document: with many
    followers of a large job, the documents would add up.
    """

    def __init__(self, db: Database, job_id: Any, states: bool, version: int, seq: int, batch: int) -> None:
        self.db, self.job_id, self.states = db, job_id, states
        self.version, self.seq, self.batch = version, seq, batch
        self.counts = {"state": 0, "log": 0}
        self.sent: bytes | None = None  # the _digest of the last state sent

    def _id(self) -> str:
        return f"{self.version}.{self.seq}"

    def state(self, job: dict[str, Any], change: Change | None = None) -> list[Event]:
        """The event for ``job`` if it is news; ``change``: the hub's, whose JSON and digest are shared."""
        if job["version"] <= self.version:
            return []
        self.version = job["version"]
        if not self.states:
            return []
        if change is None:
            digest = _digest(job)
        else:
            if change.digest is None:
                change.digest = _digest(job)
            digest = change.digest
        if digest == self.sent:
            return []
        self.sent = digest
        self.counts["state"] += 1
        return [Event("state", self._id(), job, None if change is None else change.text)]

    def log(self, record: dict[str, Any], change: Change | None = None) -> list[Event]:
        self.seq = record["seq"]
        self.counts["log"] += 1
        return [Event("log", self._id(), record, None if change is None else change.text)]

    def take(self, change: Change) -> list[Event] | None:
        """The events for a change from the hub; None if the database must be re-read instead."""
        kind, data = change
        if kind == "log":
            if data["seq"] > self.seq + 1:
                return None  # records are missing
            return self.log(data, change) if data["seq"] == self.seq + 1 else []
        if kind == "state":
            if data["state"] in FINAL:
                return None  # the database's is authoritative, with the journal flag
            return self.state(data, change)
        return []

    async def backlog(self) -> AsyncIterator[Event]:
        while True:
            records = await logs.read(self.db, self.job_id, after=self.seq, limit=self.batch)
            for record in records:
                for event in self.log(record):
                    yield event
            if len(records) < self.batch:
                return

    def close(self, final: str) -> Event:
        return Event("close", self._id(), {"state": final, "events": dict(self.counts)})


async def follow(db: Database, job_id: Any, *, user: dict[str, Any], hub: Hub,
                 after_version: int = 0, after_seq: int = 0, states: bool = True,
                 idle: float = 15.0, batch: int = 1000) -> AsyncIterator[Event | None]:
    """Yield the job's events after (``after_version``, ``after_seq``) until it has ended.

    Yields ``None`` when there is nothing to send at first (so a stream can
    open at once) and after every ``idle`` seconds without an event (time for
    a keepalive). Raises ``BadArgument``, ``NotFound`` or ``Forbidden`` (from
    ``queue.get``) before the first event.
    """
    job_id = object_id(job_id)
    follower = _Follower(db, job_id, states, after_version, after_seq, batch)
    clock = asyncio.get_running_loop().time
    quiet_since: float | None = None  # when the last thing was sent; None: nothing yet
    with hub.subscribe(job_id) as subscription:
        job: dict[str, Any] | None = await get(db, job_id, user=user)
        while True:
            # Catch up from the database: the state, then the log after seq.
            final = _final(job)
            for event in follower.state(job):
                quiet_since = clock()
                yield event
            # From here on hold no document: a slow client's backlog can take
            # long, and a thousand followers waiting would hold a thousand.
            job = event = None
            async for event in follower.backlog():
                quiet_since = clock()
                yield event
            # Logs are all written before a job's final transition, so once the
            # job was read as final, the backlog above held its last record.
            if final is not None:
                yield follower.close(final)
                return
            if quiet_since is None or clock() - quiet_since >= idle:
                quiet_since = clock()
                yield None
            # Live: use events while they are the next ones; re-read otherwise.
            while True:
                fresh = event = None  # else the last events would stay bound while awaiting the next
                news = await subscription.get(max(0.0, quiet_since + idle - clock()))
                if news is None:
                    quiet_since = clock()
                    yield None
                    continue
                fresh = None if news is RESYNC else follower.take(news)
                news = None
                if fresh is None:
                    job = await get(db, job_id, user=user)
                    break
                for event in fresh:
                    quiet_since = clock()
                    yield event


async def wait_for(db: Database, job_id: Any, *, user: dict[str, Any], hub: Hub,
                   done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """The job once ``done(job)`` holds, or as it is after ``timeout`` seconds.

    Re-reads the job whenever the hub reports a change (or, without change
    streams, every poll interval). Raises like ``queue.get``.
    """
    clock = asyncio.get_running_loop().time
    deadline = clock() + timeout
    with hub.subscribe(object_id(job_id)) as subscription:
        job = await get(db, job_id, user=user)  # read after subscribing: no change slips by
        while not done(job) and (remaining := deadline - clock()) > 0:
            if await subscription.get(remaining) is not None:
                job = await get(db, job_id, user=user)
    return job
