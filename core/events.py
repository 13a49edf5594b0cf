"""The multiplexed event stream: every change of every job, to each subscriber filtered and permitted.

``JobEvents`` observes the ``Hub`` (``HubObserver``: no second change
stream) and turns each change of a job into one *entry*: ``job`` (the job's
``summary``) for an insert into the queue, each change of a job that shows in
its summary (state, progress, kill...; lease renewals alone do not) and its
final move to the journal, and ``log`` (the record, as the follow stream
sends it) for the log records of jobs some subscriber asked the logs of. An
entry is serialised once, for every subscriber.

Entries get ids ``<nonce>-<seq>``: ``seq`` counts up in this process, and
``nonce``, drawn when the process starts, tells an id of another process (or
of before a restart) apart. The last entries are kept in a ring (at most
``ring_events`` and ``ring_bytes``), from which a client reconnecting with
``Last-Event-ID`` gets exactly the entries after it that match its filter.

Each subscriber has a bounded queue (``queue_size`` events, ``queue_bytes``
bytes). Whenever a subscriber cannot be given every event it should have,
it gets ``reset`` instead (``{"reason": ...}``) and must re-read from the
REST routes what it shows: when it fell behind its queue's bounds, when the
hub reopened its change stream (changes may have been missed), while the
hub has no stream, when its ``Last-Event-ID`` is older than the ring (or
not this process's), and when a job left the queue without reaching the
journal (the change stream tells only its id, not whose it was).
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

from bson import ObjectId

from core.encoding import dumps
from core.errors import BadArgument
from core.follow import Event
from core.hub import HubObserver
from core.permissions import READ, may
from core.queue import object_id
from core.states import State

if TYPE_CHECKING:
    from core.hub import Hub

__all__ = ["JobEvents", "EventFilter", "Subscriber", "summary", "parse_filter", "MAX_IDS", "MAX_TIMEOUT"]

_MIB = 1024 * 1024
#: At most this many job ids in one ``ids`` filter.
MAX_IDS = 100
#: The longest ``timeout`` a stream takes, in seconds.
MAX_TIMEOUT = 3600
#: How long the log records of a job keep being recorded in the ring after its last log subscriber left, so a
#: client reconnecting within it resumes its logs exactly (seconds).
_LOG_LINGER = 120.0
_ENTRY_OVERHEAD = 200  # bytes an entry takes besides its text
_STATES = frozenset(state.value for state in State)


def summary(job: dict[str, Any]) -> dict[str, Any]:
    """What the event stream tells of a job (a document of the queue or the journal, ``journal`` set)."""
    prog = job.get("prog") or {}
    enqueued = job.get("enqueued") or {}
    locked = job.get("locked")
    error = job.get("last_error")
    return {
        "_id": job["_id"], "qual_name": job.get("qual_name"), "state": job.get("state"),
        "prog": {"value": prog.get("value"), "message": prog.get("message")},
        "priority": job.get("priority"), "trial": job.get("trial"), "attempts_left": job.get("attempts_left"),
        "enqueued": {"at": enqueued.get("at"), "username": enqueued.get("username")},
        "started_at": job.get("started_at"), "finished_at": job.get("finished_at"), "runtime": job.get("runtime"),
        "locked": {"worker": locked.get("worker")} if isinstance(locked, dict) else None,
        "killed_at": job.get("killed_at"), "removed_at": job.get("removed_at"),
        "last_error": ({"exception": error.get("exception"), "message": error.get("message")}
                       if isinstance(error, dict) else None),
        "version": job.get("version"), "journal": bool(job.get("journal")),
    }


@dataclass(frozen=True)
class EventFilter:
    """What a subscriber wants: ``None`` for any state, class or job; ``logs`` only with ``ids``."""

    states: frozenset[str] | None = None
    qual_names: frozenset[str] | None = None
    ids: frozenset[ObjectId] | None = None
    logs: bool = False


def _names(value: Any, what: str) -> list[str] | None:
    """The names of a comma-separated list (or a list); None (no filter) for none or an empty one."""
    if value is None or value == "" or value == []:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    names = [str(item).strip() for item in items]
    if not names or not all(names):
        raise BadArgument(f"{what}: expected comma-separated values without empty ones, got {str(value)[:80]!r}")
    return names


def parse_filter(*, state: Any = None, qual_name: Any = None, ids: Any = None, logs: bool = False) -> EventFilter:
    """The filter of ``state``, ``qual_name`` and ``ids`` (comma-separated, or lists) and ``logs``.

    Raises ``BadArgument`` for unknown states, malformed ids, more than
    ``MAX_IDS`` ids, or ``logs`` without ``ids``.
    """
    states = _names(state, "state")
    if states is not None:
        unknown = sorted(set(states) - _STATES)
        if unknown:
            raise BadArgument(f"state: unknown state {unknown[0][:60]!r}; known: {', '.join(sorted(_STATES))}")
    qual_names = _names(qual_name, "qual_name")
    if qual_names is not None and any(len(name) > 200 for name in qual_names):
        raise BadArgument("qual_name: a class name is at most 200 characters")
    job_ids = _names(ids, "ids")
    if job_ids is not None:
        if len(job_ids) > MAX_IDS:
            raise BadArgument(f"ids: at most {MAX_IDS} job ids, got {len(job_ids)}")
        job_ids = [object_id(job_id) for job_id in job_ids]
    if logs and job_ids is None:
        raise BadArgument("logs=true needs ids: log records are sent only for the jobs named in ids")
    return EventFilter(None if states is None else frozenset(states),
                       None if qual_names is None else frozenset(qual_names),
                       None if job_ids is None else frozenset(job_ids), bool(logs))


class _Entry:
    """One event of the stream, the same object in the ring and in every subscriber's queue."""

    __slots__ = ("seq", "kind", "job_id", "qual_name", "state", "text", "size")

    def __init__(self, seq: int, kind: str, job_id: Any, qual_name: str | None, state: str | None,
                 text: str) -> None:
        self.seq, self.kind, self.job_id, self.qual_name, self.state, self.text = (
            seq, kind, job_id, qual_name, state, text)
        self.size = sys.getsizeof(text) + _ENTRY_OVERHEAD


class _LogWatch:
    """The log records of one job are recorded since entry ``since``, for ``count`` subscribers."""

    __slots__ = ("count", "since", "left_at")

    def __init__(self, since: int) -> None:
        self.count, self.since, self.left_at = 0, since, 0.0


class Subscriber:
    """One client of the event stream: ``events()`` yields what it may see and asked for.

    Use as a context manager (or ``close()``): it stops receiving at once.
    """

    def __init__(self, feed: JobEvents, user: dict[str, Any], wanted: EventFilter,
                 log_classes: dict[Any, str]) -> None:
        self.feed = feed
        self.wanted = wanted
        self.user = user
        self._log_classes = log_classes  # job id -> qual_name of the ids whose logs were asked for
        self._readable: dict[str | None, bool] = {}
        self.log_ids: frozenset[Any] = frozenset()
        self.watched: frozenset[Any] = frozenset()  # the jobs whose logs the feed records for it
        self._queue: deque[_Entry] = deque()
        self.bytes = 0  # held now: the sizes of the entries queued
        self._reset: str | None = None  # why the next event is a reset
        self._wake = asyncio.Event()
        self.refresh(user)

    def refresh(self, user: dict[str, Any]) -> None:
        """Use ``user``'s rights from now on (checked again by the caller), also for what is queued."""
        self.user = user
        self._readable = {}
        self.log_ids = frozenset(job_id for job_id, qual_name in self._log_classes.items()
                                 if self.wanted.logs and self._may_read(qual_name))

    def _may_read(self, qual_name: str | None) -> bool:
        readable = self._readable.get(qual_name)
        if readable is None:
            readable = self._readable[qual_name] = isinstance(qual_name, str) and may(self.user, qual_name, READ)
        return readable

    def wants(self, entry: _Entry) -> bool:
        """Whether this subscriber gets ``entry`` (its filter and the user's rights)."""
        if entry.kind == "log":
            return entry.job_id in self.log_ids
        wanted = self.wanted
        return ((wanted.ids is None or entry.job_id in wanted.ids)
                and (wanted.states is None or entry.state in wanted.states)
                and (wanted.qual_names is None or entry.qual_name in wanted.qual_names)
                and self._may_read(entry.qual_name))

    def put(self, entry: _Entry) -> None:
        """Queue ``entry`` if wanted; past a bound drop the queue, and ``reset`` comes next."""
        if self._reset is not None or not self.wants(entry):
            return
        if self._queue and (len(self._queue) >= self.feed.queue_size
                            or self.bytes + entry.size > self.feed.queue_bytes):
            self.reset(f"this stream fell behind (more than {self.feed.queue_size} events or "
                       f"{self.feed.queue_bytes} bytes waiting to be sent); re-read")
            return
        self._queue.append(entry)
        self.bytes += entry.size
        self._wake.set()

    def reset(self, reason: str) -> None:
        """Drop what is queued: the next event is ``reset`` with ``reason`` (the first reason stays)."""
        if self._reset is None:
            self._reset = reason
        self._queue.clear()
        self.bytes = 0
        self._wake.set()

    def _next(self) -> Event | None:
        if self._reset is not None:
            reason, self._reset = self._reset, None
            # Its id is the newest: what the client re-reads now covers every event up to it.
            return Event("reset", self.feed.event_id(self.feed.seq), {"reason": reason})
        while self._queue:
            entry = self._queue.popleft()
            self.bytes -= entry.size
            if self.wants(entry):  # the rights may have changed since it was queued
                return Event(entry.kind, self.feed.event_id(entry.seq), {}, entry.text)
        return None

    async def get(self, timeout: float) -> Event | None:
        """The next event (``job``, ``log`` or ``reset``), or None after ``timeout`` seconds of silence."""
        event = self._next()
        if event is not None:
            return event
        if not self.feed.hub.live:
            # No stream, no news: the client re-reads the REST routes every few seconds.
            await asyncio.sleep(min(timeout, self.feed.down_poll))
            if self.feed.hub.live:
                return self._next()  # reopened meanwhile: its reset is queued
            self._queue.clear()
            self.bytes = 0
            self._reset = None
            return Event("reset", self.feed.event_id(self.feed.seq),
                         {"reason": "the server has no change stream open now; re-read"})
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        return self._next()

    async def events(self, *, idle: float = 15.0, timeout: float | None = None) -> AsyncIterator[Event | None]:
        """Yield events, and None when there is nothing to send at first or after ``idle`` s (a keepalive).

        Ends after ``timeout`` seconds (None: never).
        """
        clock = asyncio.get_running_loop().time
        end = math.inf if timeout is None else clock() + timeout
        event = self._next()
        quiet_since = clock()
        yield event  # at once: a replay, a reset, or None so that the stream opens
        while (now := clock()) < end:
            event = await self.get(max(0.0, min(quiet_since + idle, end) - now))
            if event is None and clock() < quiet_since + idle:
                continue  # woken without news, or the end came
            quiet_since = clock()
            yield event
            event = None  # not held while the next one is awaited

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        self.feed.unsubscribe(self)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class JobEvents(HubObserver):
    """The fan-out of every job change to filtered subscribers, and the ring to resume from.

    ``ring_events``/``ring_bytes`` bound the ring, ``queue_size``/``queue_bytes``
    each subscriber's queue; ``seen`` bounds how many jobs' last summaries
    are remembered (by a hash) to leave out changes nobody sees.
    """

    def __init__(self, hub: Hub, *, ring_events: int = 10_000, ring_bytes: int = 5 * _MIB,
                 queue_size: int = 1000, queue_bytes: int = _MIB, seen: int = 20_000) -> None:
        self.hub = hub
        self.ring_events, self.ring_bytes = ring_events, ring_bytes
        self.queue_size, self.queue_bytes = queue_size, queue_bytes
        self.seen = seen
        #: While the hub has no stream, a subscriber gets a ``reset`` this often (seconds).
        self.down_poll = max(hub.poll_seconds, 5.0)
        self.nonce = f"{secrets.randbelow(10 ** 8):08d}"  # decimal: ids read as two numbers
        self.seq = 0            # of the newest entry
        self.after = 0          # the ring holds every entry after this seq
        self._ring: deque[_Entry] = deque()
        self.ring_held = 0      # bytes the ring holds
        self._subscribers: set[Subscriber] = set()
        self._last: OrderedDict[Any, int] = OrderedDict()  # job id -> hash of its last summary
        self._logs: dict[Any, _LogWatch] = {}
        self._deleted: set[Any] = set()  # left the queue; reset unless its journal insert follows
        self._journaled: OrderedDict[Any, None] = OrderedDict()  # the last 1,000 jobs moved to the journal
        self.resets = 0         # resets told to all (hub resyncs, unexplained deletes)
        hub.observers.append(self)

    # -- ids -------------------------------------------------------------

    def event_id(self, seq: int) -> str:
        """The id of entry ``seq``, as the stream sends it."""
        return f"{self.nonce}-{seq}"

    def _parse(self, value: str) -> int | None:
        """The seq of an id of this process, or None (malformed, another process's, or not yet made)."""
        nonce, dash, seq = value.strip().partition("-")
        if not dash or nonce != self.nonce or not (seq.isascii() and seq.isdigit()) or len(seq) > 19:
            return None
        number = int(seq)
        return number if number <= self.seq else None

    # -- subscribers -----------------------------------------------------

    @property
    def subscribers(self) -> int:
        """Open subscribers."""
        return len(self._subscribers)

    @property
    def queued_bytes(self) -> int:
        """What the subscribers' queues hold now, in bytes (an entry queued for several counts for each)."""
        return sum(subscriber.bytes for subscriber in self._subscribers)

    async def subscribe(self, *, user: dict[str, Any], wanted: EventFilter,
                        last_event_id: str | None = None) -> Subscriber:
        """A subscriber for ``user`` with ``wanted``, resuming after ``last_event_id`` if given.

        Its first events are those of the ring after ``last_event_id``, or a
        ``reset`` when the ring does not reach back to it. Close it when done.
        """
        log_classes: dict[Any, str] = {}
        if wanted.logs and wanted.ids:
            # The class of each job decides who may read its logs (a log record does not say).
            query = {"_id": {"$in": sorted(wanted.ids)}}
            for collection in (self.hub.db.queue, self.hub.db.journal):
                async for job in collection.find(query, {"qual_name": 1}):
                    log_classes[job["_id"]] = job.get("qual_name")
        # From here on nothing awaits: no entry falls between the replay and the live ones.
        subscriber = Subscriber(self, user, wanted, log_classes)
        if last_event_id:
            after = self._parse(last_event_id)
            if after is None or after < self.after or not self._logs_kept(subscriber.log_ids, after):
                subscriber.reset(f"Last-Event-ID {last_event_id[:40]!r} is older than the events this server "
                                 "holds, or of another server process; re-read")
            else:
                for entry in self._ring:
                    if entry.seq > after:
                        subscriber.put(entry)
        self._subscribers.add(subscriber)
        now = time.monotonic()
        for job_id in subscriber.log_ids:
            watch = self._logs.get(job_id)
            if watch is None:
                watch = self._logs[job_id] = _LogWatch(self.seq)
            watch.count += 1
        subscriber.watched = subscriber.log_ids
        self._sweep(now)
        return subscriber

    def _logs_kept(self, job_ids: Iterable[Any], after: int) -> bool:
        """Whether the ring has held every log record of ``job_ids`` since entry ``after``."""
        for job_id in job_ids:
            watch = self._logs.get(job_id)
            if watch is None or watch.since > after:
                return False
        return True

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber`` and drop what it holds (idempotent)."""
        if subscriber not in self._subscribers:
            return
        self._subscribers.discard(subscriber)
        subscriber.reset("closed")
        now = time.monotonic()
        for job_id in subscriber.watched:
            watch = self._logs.get(job_id)
            if watch is not None:
                watch.count -= 1
                if watch.count == 0:
                    watch.left_at = now
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Stop recording the logs of jobs nobody has followed for ``_LOG_LINGER`` seconds."""
        for job_id in [job_id for job_id, watch in self._logs.items()
                       if watch.count == 0 and now - watch.left_at > _LOG_LINGER]:
            del self._logs[job_id]

    # -- the hub's news ----------------------------------------------------

    def changed(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "log":
            if data.get("job_id") in self._logs:
                self._publish("log", data["job_id"], None, None, dumps(data))
            return
        job_id = data["_id"]
        if data.get("journal"):
            self._journaled[job_id] = None
            if len(self._journaled) > 1000:
                self._journaled.popitem(last=False)
            self._deleted.discard(job_id)
        look = hash(repr((data.get("state"), data.get("prog"), data.get("priority"), data.get("trial"),
                          data.get("attempts_left"), data.get("started_at"), data.get("finished_at"),
                          data.get("runtime"), (data.get("locked") or {}).get("worker"), data.get("killed_at"),
                          data.get("removed_at"), data.get("last_error"), data.get("journal"))))
        if self._last.get(job_id) == look:
            return  # a lease renewal: nothing shown changed
        if data.get("journal"):
            self._last.pop(job_id, None)  # its last event
        else:
            self._last[job_id] = look
            self._last.move_to_end(job_id)
            if len(self._last) > self.seen:
                self._last.popitem(last=False)
        shown = summary(data)
        try:
            text = dumps(shown)
        except (TypeError, ValueError):  # not written by jobdeck: the clients re-read it
            self._reset_all(f"a change of job {job_id} cannot be serialised; re-read")
            return
        self._publish("job", job_id, shown["qual_name"], shown["state"], text)

    def deleted(self, job_id: Any) -> None:
        if job_id not in self._journaled:
            # A journal move in a transaction tells its delete first: wait for the stream to catch up.
            self._deleted.add(job_id)

    def caught_up(self) -> None:
        if self._deleted:
            for job_id in self._deleted:
                self._last.pop(job_id, None)
            self._deleted.clear()
            self._reset_all("a job left the queue without reaching the journal; re-read")

    def resync(self, reason: str) -> None:
        # Entries before now are no base to resume from: changes between them and now may be missing.
        self._ring.clear()
        self.ring_held = 0
        self.after = self.seq
        self._last.clear()
        self._deleted.clear()
        self._reset_all(reason)

    def _reset_all(self, reason: str) -> None:
        self.resets += 1
        for subscriber in self._subscribers:
            subscriber.reset(reason)

    def _publish(self, kind: str, job_id: Any, qual_name: str | None, state: str | None, text: str) -> None:
        self.seq += 1
        entry = _Entry(self.seq, kind, job_id, qual_name, state, text)
        self._ring.append(entry)
        self.ring_held += entry.size
        while self._ring and (len(self._ring) > self.ring_events or self.ring_held > self.ring_bytes):
            dropped = self._ring.popleft()
            self.ring_held -= dropped.size
            self.after = dropped.seq
        for subscriber in self._subscribers:
            subscriber.put(entry)
