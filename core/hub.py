"""The change-stream hub: one watcher per server process, fanned out to every follower by job id.

The hub watches ``queue``, ``journal`` and ``log`` through a single change
stream and hands each event to the subscriptions of its job as one shared
``Change``: ``state`` (the job document) for inserts and updates of a job,
``log`` (the record) for new log records. A change is serialised to JSON once,
when it is fanned out, for all its followers, and nothing keeps it once they
have all taken it.

Subscriptions are bounded queues, in events and in bytes (the memory of the
queued changes' JSON): per subscription, and in all across the hub, where a
change queued for many subscriptions counts once. A subscriber that falls
behind loses its queue and is told to ``resync`` (re-read from the database by
``version`` and ``seq``), so no buffer grows without bound; a change always
fits into an empty queue, however large.

After an error the hub reopens the stream from its last resume token (kept
after every batch, so a quiet stream has one too), or from now when the
server cannot resume from it, and only once the stream is open tells every
subscriber to ``resync``: what a follower re-reads then covers everything
committed before the reopen, and the stream everything after. While the
stream is down ``live`` is False: a follower asking for news polls, and one
already waiting hears from the reopened stream. The hub retries ever more
slowly (0.1 s doubling to 5 s) while opening fails or the stream fails at once.
A server without change streams gets a warning and followers poll instead.

The same stream keeps this process's caches (``core.cache``) of users and
registry entries fresh: a change of a ``user`` or ``registry`` document, made
by any process, drops it from them (``Database.changed``), every (re)open of
the stream clears them, and ``heard_at`` tells them until when the stream is
known to have delivered every change (its last empty answer; a quiet stream
answers every second).

Observers (``Hub.observers``, see ``HubObserver``) hear of every change of
every job, followed or not, without a change stream of their own: the
multiplexed event stream (``core.events``) is one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pymongo.errors import OperationFailure, PyMongoError

from core.encoding import dumps
from core.tasks import stop_task

if TYPE_CHECKING:
    from pymongo.asynchronous.change_stream import AsyncChangeStream

    from core.db import Database

__all__ = ["Hub", "HubObserver", "Subscription", "Change", "RESYNC"]

log = logging.getLogger(__name__)

#: Delivered instead of events when a subscriber must re-read from the database.
RESYNC = ("resync", None)

_COLLECTIONS = ("queue", "journal", "log")
#: Collections cached by ``core.cache``: every change of theirs counts, deletes and drops too.
_CACHED = ("user", "registry", "token")
_PIPELINE = [{"$match": {"$or": [
    {"ns.coll": {"$in": list(_COLLECTIONS)}, "operationType": {"$in": ["insert", "update", "replace"]}},
    {"ns.coll": "queue", "operationType": "delete"},  # for observers: a job that left the queue
    {"ns.coll": {"$in": list(_CACHED)}},
]}}]
_MIB = 1024 * 1024
_FIRST_DELAY, _MAX_DELAY = 0.1, 5.0  # seconds between attempts to reopen, doubling

#: Errors that say the stream cannot go on from its resume token: it is no
#: token of this stream (InvalidResumeToken), its history has left the oplog
#: (ChangeStreamHistoryLost), or the stream cannot be resumed at all
#: (ChangeStreamFatalError).
_TOKEN_UNUSABLE = frozenset({260, 280, 286})


class Change:
    """One change of one job, the same object in every subscription of that job.

    ``kind`` is ``state`` (``data``: the job document) or ``log`` (``data``: the
    record). ``text``, the JSON of ``data``, is made once, when the hub fans the
    change out, and ``size`` (the bytes ``text`` takes) is what holding it
    costs. ``digest`` is left for the first follower that needs one to fill in
    for the others. Unpacks as ``(kind, data)``.
    """

    __slots__ = ("kind", "data", "text", "size", "digest", "holders")

    def __init__(self, kind: str, data: dict[str, Any]) -> None:
        self.kind = kind
        self.data = data
        self.text = dumps(data)
        self.size = sys.getsizeof(self.text)
        self.digest: bytes | None = None
        self.holders = 0  # subscriptions whose queue holds it

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kind, self.data))


class Subscription:
    """One follower's view of one job: ``await get(timeout)`` for the next event.

    Holds at most ``max_events`` events and ``max_bytes`` bytes of changes, and
    only what the hub's total allows; an event that would pass a bound, unless
    the queue is empty, drops the queue instead, and ``get`` answers ``RESYNC``.
    """

    def __init__(self, hub: Hub, job_id: Any, max_events: int, max_bytes: int) -> None:
        self.hub = hub
        self.job_id = job_id
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0  # held now: the sizes of the changes in the queue
        self._queue: asyncio.Queue[Change | tuple[str, Any]] = asyncio.Queue()
        self._overflowed = False

    def put(self, event: Change | tuple[str, Any], *, hub_full: bool = False) -> None:
        """Queue ``event``; past a bound (``hub_full``: the hub's), drop the queue and answer ``RESYNC`` next."""
        if self._overflowed:
            return
        size = event.size if isinstance(event, Change) else 0
        if not self._queue.empty() and (hub_full or self._queue.qsize() >= self.max_events
                                        or self.bytes + size > self.max_bytes):
            self._overflowed = True  # the follower re-reads from the database
            self.clear()
            return
        self._queue.put_nowait(event)
        if isinstance(event, Change):
            self.bytes += size
            self.hub.hold(event)

    def _taken(self, event: Change | tuple[str, Any]) -> Change | tuple[str, Any]:
        if isinstance(event, Change):
            self.bytes -= event.size
            self.hub.release(event)
        return event

    def clear(self) -> None:
        """Drop every queued event."""
        while not self._queue.empty():
            self._taken(self._queue.get_nowait())

    async def get(self, timeout: float) -> Change | tuple[str, Any] | None:
        """The next event, ``RESYNC``, or None after ``timeout`` seconds of silence."""
        if self._overflowed:
            self._overflowed = False
            return RESYNC
        if not self.hub.live:
            self.clear()
            await asyncio.sleep(min(timeout, self.hub.poll_seconds))
            return RESYNC
        if not self._queue.empty():
            return self._taken(self._queue.get_nowait())
        try:
            # asyncio.timeout, not wait_for: no extra task per event, which
            # counts with a thousand followers.
            async with asyncio.timeout(timeout):
                return self._taken(await self._queue.get())
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        self.hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HubObserver:
    """Hears of every change of every job; subclass and override what you need (each is a no-op here).

    Called on the event loop, between two changes: an observer must not block
    or await, and what it raises is logged, never the hub's end.
    """

    def changed(self, kind: str, data: dict[str, Any]) -> None:
        """``kind`` ``state``: a job document (``journal`` set); ``log``: a log record.

        ``data`` is shared with the followers: read it, never change it.
        """

    def deleted(self, job_id: Any) -> None:
        """A job left the queue (a journal move, whose journal insert comes too, or a delete)."""

    def caught_up(self) -> None:
        """The stream answered empty: every change committed before has been told."""

    def resync(self, reason: str) -> None:
        """Changes may have been missed (the stream reopened or stopped): whoever shows jobs must re-read."""


class Hub:
    """Fans one change stream out to subscriptions by job id. ``start()``/``stop()``.

    ``queue_size`` and ``queue_bytes`` bound each subscription, ``max_bytes``
    all of them together (a change held by many counts once), see ``queued_bytes``.
    """

    def __init__(self, db: Database, *, queue_size: int = 1000, queue_bytes: int = 4 * _MIB,
                 max_bytes: int = 64 * _MIB, poll_seconds: float = 1.0) -> None:
        self.db = db
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.max_bytes = max_bytes
        self.poll_seconds = poll_seconds
        self.queued_bytes = 0       # the sizes of the changes some subscription holds
        self._subscriptions: dict[Any, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._resume_token: Any = None
        self._ready = asyncio.Event()
        self.live = False           # a change stream is open
        self.streams_opened = 0     # change streams opened so far (1 unless errors)
        self.failures = 0           # errors opening or reading the stream so far
        self.events = 0             # change events received
        #: Called with the journal document of every job that reaches a final state.
        self.on_final: list[Callable[[dict[str, Any]], None]] = []
        #: Told of every change of every job (see ``HubObserver``).
        self.observers: list[HubObserver] = []
        #: ``time.monotonic()`` when the stream was last asked for news and
        #: answered none: every change made before is known. None until then.
        self.heard_at: float | None = None

    @property
    def subscribers(self) -> int:
        """Open subscriptions."""
        return sum(len(subs) for subs in self._subscriptions.values())

    async def start(self) -> None:
        """Open the change stream (or warn and fall back to polling)."""
        if not self.db.change_streams:
            log.warning("the database has no change streams; followers poll every %g s", self.poll_seconds)
            return
        self._task = asyncio.create_task(self._run(), name="hub")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        """Close the change stream; wake every subscriber so it can finish."""
        await stop_task(self._task)  # the driver may swallow one cancellation during an outage
        self._task = None
        self.live = False
        self._resync_all("the server is stopping")

    def subscribe(self, job_id: Any) -> Subscription:
        """Start receiving the events of ``job_id``; close the subscription when done."""
        subscription = Subscription(self, job_id, self.queue_size, self.queue_bytes)
        self._subscriptions.setdefault(job_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``, and drop what it holds."""
        subscription.clear()
        subs = self._subscriptions.get(subscription.job_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._subscriptions[subscription.job_id]

    def hold(self, change: Change) -> None:
        """A subscription queued ``change``: it counts once, however many hold it."""
        change.holders += 1
        if change.holders == 1:
            self.queued_bytes += change.size

    def release(self, change: Change) -> None:
        """A subscription took or dropped ``change``."""
        change.holders -= 1
        if change.holders == 0:
            self.queued_bytes -= change.size

    def _deliver(self, job_id: Any, kind: str, data: dict[str, Any]) -> None:
        subscriptions = self._subscriptions.get(job_id)
        if not subscriptions:
            return  # nobody follows the job: not even serialised
        try:
            change = Change(kind, data)
        except (TypeError, ValueError) as exc:
            # Not JSON (written by something else than jobdeck): each follower
            # meets it when it re-reads; the hub must go on for the others.
            log.warning("a change of job %s cannot be serialised (%s); its followers re-read", job_id, exc)
            for subscription in subscriptions:
                subscription.put(RESYNC)
            return
        # Decided once for all: those behind resync, those caught up take it.
        hub_full = self.queued_bytes + change.size > self.max_bytes
        for subscription in subscriptions:
            subscription.put(change, hub_full=hub_full)

    def _resync_all(self, reason: str) -> None:
        for subs in self._subscriptions.values():
            for subscription in subs:
                subscription.put(RESYNC)
        self._tell("resync", reason)

    def _tell(self, method: str, *args: Any) -> None:
        """Call ``method`` of every observer; one that fails is logged, the others and the hub go on."""
        for observer in self.observers:
            try:
                getattr(observer, method)(*args)
            except Exception:  # an observer's bug must not stop the followers' stream
                log.exception("hub observer %r failed in %s", observer, method)

    async def _run(self) -> None:
        delay = _FIRST_DELAY
        while True:
            try:
                async with await self._open() as stream:
                    self.streams_opened += 1
                    self.live = True
                    self._ready.set()
                    # Changes made while no stream was open may never come.
                    for collection in _CACHED:
                        self.db.changed(collection)
                    # Only now that the stream is open: a follower's re-read
                    # covers what was committed before, the stream what comes
                    # after. Told before the open, a follower could re-read,
                    # miss a final transition committed before a stream opened
                    # from now, and then wait for it forever.
                    self._resync_all("the server's change stream was reopened; changes may have been missed")
                    while stream.alive:
                        asked = time.monotonic()
                        # try_next, not async for: an empty batch still
                        # advances the resume token (the post-batch one), and
                        # a quiet stream must keep it to resume.
                        change = await stream.try_next()
                        self._resume_token = stream.resume_token
                        # Reset once the stream has answered, not when it opens:
                        # one that fails right after every open is retried ever
                        # more slowly, so its followers are not woken in a loop.
                        delay = _FIRST_DELAY
                        if change is not None:
                            self.events += 1
                            self._dispatch(change)
                            continue
                        # An empty answer: every change committed before it was
                        # asked for has been dispatched.
                        self.heard_at = asked
                        self._tell("caught_up")
                log.warning("hub change stream ended; reopening in %.1f s", delay)
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                self.failures += 1
                if self._resume_token is not None and _token_unusable(exc):
                    self._forget_token(exc)
                else:
                    log.warning("hub change stream failed (%s); reopening in %.1f s", exc, delay)
            self.live = False
            self._ready.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    async def _open(self) -> AsyncChangeStream[dict[str, Any]]:
        """The change stream, from the resume token if there is one and the server can use it."""
        if self._resume_token is not None:
            try:
                return await self.db.db.watch(_PIPELINE, full_document="updateLookup",
                                              start_after=self._resume_token)
            except OperationFailure as exc:
                if not _token_unusable(exc):
                    raise
                self.failures += 1
                self._forget_token(exc)
        return await self.db.db.watch(_PIPELINE, full_document="updateLookup")

    def _forget_token(self, exc: PyMongoError) -> None:
        # Correct, not just a fallback: every follower re-reads once the
        # stream is open again, so nothing committed meanwhile is lost.
        log.warning("hub change stream cannot resume from its token (%s); reopening from now, "
                    "followers re-read", exc)
        self._resume_token = None

    def _dispatch(self, change: dict[str, Any]) -> None:
        collection = change.get("ns", {}).get("coll")
        if collection in _CACHED:
            # A drop or rename has no documentKey: anything may have changed.
            self.db.changed(collection, change.get("documentKey", {}).get("_id"))
            return
        if change["operationType"] == "delete":
            self._tell("deleted", change.get("documentKey", {}).get("_id"))
            return
        document = change.pop("fullDocument", None)  # the hub keeps none of it once fanned out
        if document is None:
            return  # an update whose document is gone already (moved to the journal)
        if change["ns"]["coll"] == "log":
            document.pop("_id", None)  # as logs.read returns records
            self._tell("changed", "log", document)
            self._deliver(document["job_id"], "log", document)
        else:
            document.pop("unique_key", None)
            document["journal"] = change["ns"]["coll"] == "journal"
            if document["journal"] and change["operationType"] != "update":  # a job's final move
                for observer in self.on_final:
                    observer(document)
            self._tell("changed", "state", document)
            self._deliver(document["_id"], "state", document)


def _token_unusable(exc: PyMongoError) -> bool:
    """Whether ``exc`` says the stream cannot resume from its token (a new one must start from now)."""
    return isinstance(exc, OperationFailure) and (
        exc.code in _TOKEN_UNUSABLE or exc.has_error_label("NonResumableChangeStreamError"))
