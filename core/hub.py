"""The change-stream hub: one watcher per server process, fanned out to every follower by job id.

The hub watches ``queue``, ``journal`` and ``log`` through a single change
stream and hands each event to the subscriptions of its job: ``("state",
job document)`` for inserts and updates of a job, ``("log", record)`` for new
log records. Subscriptions are bounded queues: a subscriber that falls behind
loses events and is told to ``resync`` (re-read from the database by
``version`` and ``seq``), so no buffer grows without bound. After an error the
hub resumes from its last resume token; a server without change streams gets a
warning and followers poll instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pymongo.errors import OperationFailure, PyMongoError

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Hub", "Subscription", "RESYNC"]

log = logging.getLogger(__name__)

#: Delivered instead of events when a subscriber must re-read from the database.
RESYNC = ("resync", None)

_COLLECTIONS = ("queue", "journal", "log")


class Subscription:
    """One follower's view of one job: ``await get(timeout)`` for the next event."""

    def __init__(self, hub: Hub, job_id: Any, size: int) -> None:
        self.hub = hub
        self.job_id = job_id
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(size)
        self._overflowed = False

    def put(self, event: tuple[str, Any]) -> None:
        if self._overflowed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._overflowed = True  # the follower re-reads from the database

    async def get(self, timeout: float) -> tuple[str, Any] | None:
        """The next event, ``RESYNC``, or None after ``timeout`` seconds of silence."""
        if self._overflowed:
            self._overflowed = False
            while not self._queue.empty():
                self._queue.get_nowait()
            return RESYNC
        if not self.hub.live:
            await asyncio.sleep(min(timeout, self.hub.poll_seconds))
            return RESYNC
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            # asyncio.timeout, not wait_for: no extra task per event, which
            # counts with a thousand followers.
            async with asyncio.timeout(timeout):
                return await self._queue.get()
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
    """Fans one change stream out to subscriptions by job id. ``start()``/``stop()``."""

    def __init__(self, db: Database, *, queue_size: int = 1000, poll_seconds: float = 1.0) -> None:
        self.db = db
        self.queue_size = queue_size
        self.poll_seconds = poll_seconds
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
        subscription = Subscription(self, job_id, self.queue_size)
        self._subscriptions.setdefault(job_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``."""
        subs = self._subscriptions.get(subscription.job_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._subscriptions[subscription.job_id]

    def _deliver(self, job_id: Any, event: tuple[str, Any]) -> None:
        for subscription in self._subscriptions.get(job_id, ()):
            subscription.put(event)

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
        document = change.get("fullDocument")
        if document is None:
            return  # an update whose document is gone already (moved to the journal)
        if change["ns"]["coll"] == "log":
            document.pop("_id", None)  # as logs.read returns records
            self._deliver(document["job_id"], ("log", document))
        else:
            document.pop("unique_key", None)
            document["journal"] = change["ns"]["coll"] == "journal"
            self._deliver(document["_id"], ("state", document))
