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
fits into an empty queue, however large. After an error the hub resumes from
its last resume token; a server without change streams gets a warning and
followers poll instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any, Iterator

from pymongo.errors import OperationFailure, PyMongoError

from core.encoding import dumps

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Hub", "Subscription", "Change", "RESYNC"]

log = logging.getLogger(__name__)

#: Delivered instead of events when a subscriber must re-read from the database.
RESYNC = ("resync", None)

_COLLECTIONS = ("queue", "journal", "log")
_MIB = 1024 * 1024


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
        self.events = 0             # change events received

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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.live = False
        self._resync_all()

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

    def _resync_all(self) -> None:
        for subs in self._subscriptions.values():
            for subscription in subs:
                subscription.put(RESYNC)

    async def _run(self) -> None:
        pipeline = [{"$match": {"ns.coll": {"$in": list(_COLLECTIONS)},
                                "operationType": {"$in": ["insert", "update", "replace"]}}}]
        delay = 0.1
        while True:
            try:
                async with await self.db.db.watch(pipeline, full_document="updateLookup",
                                                  resume_after=self._resume_token) as stream:
                    self.streams_opened += 1
                    self.live = True
                    self._ready.set()
                    delay = 0.1
                    async for change in stream:
                        self._resume_token = stream.resume_token
                        self.events += 1
                        self._dispatch(change)
            except asyncio.CancelledError:
                raise
            except OperationFailure as exc:
                # The token fell out of the oplog: start afresh; followers re-read.
                log.warning("hub change stream cannot resume (%s); reopening from now", exc)
                self._resume_token = None
            except PyMongoError as exc:
                log.warning("hub change stream failed (%s); resuming in %.1f s", exc, delay)
            self.live = False
            self._ready.set()
            self._resync_all()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _dispatch(self, change: dict[str, Any]) -> None:
        document = change.pop("fullDocument", None)  # the hub keeps none of it once fanned out
        if document is None:
            return  # an update whose document is gone already (moved to the journal)
        if change["ns"]["coll"] == "log":
            document.pop("_id", None)  # as logs.read returns records
            self._deliver(document["job_id"], "log", document)
        else:
            document.pop("unique_key", None)
            document["journal"] = change["ns"]["coll"] == "journal"
            self._deliver(document["_id"], "state", document)
