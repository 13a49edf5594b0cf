"""Server-Sent Events: streaming ``core.follow`` events to a client.

Each event is written as::

    id: <version>.<seq>
    event: state|log|close
    data: <one line of JSON>

and a ``: keepalive`` comment line after ``keepalive`` seconds of silence.
The first event's block also carries ``retry: 2000``. Neither comes as a
block of its own: clients such as httpx-sse report every block, even one of
comments only, as a message (without data, with the last event's id), and a
client that reads each message's data as JSON would fail on it. A comment
line without the blank line after it keeps the connection busy and belongs
to the next event's block, where every client ignores it.
``await self.flush()`` after every event makes a slow client slow down its own
follower (which then catches up from the database) instead of growing a
buffer. When the client goes away, the stream is cancelled at once and its
hub subscription closed.

Nothing is cached here: an event's JSON is the hub's, made once for every
follower of a change (``Event.json``), or made for this follower alone and
dropped once written. Between events the handler holds none of them.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Iterator, TypeVar

from tornado.iostream import StreamClosedError

from core.follow import Event, parse_event_id
from handlers.base import BaseHandler

__all__ = ["SSEHandler", "format_event", "RETRY_MS"]

T = TypeVar("T")


#: How long a client waits before it reconnects, in milliseconds.
RETRY_MS = 2000


def format_event(event: Event | None, *, retry: int | None = None) -> str:
    """The wire form of one event (``None``: a keepalive comment line); ``retry``: a ``retry:`` line in its block."""
    if event is None:
        return ": keepalive\n"
    head = "" if retry is None else f"retry: {retry}\n"
    return f"{head}id: {event.id}\nevent: {event.kind}\ndata: {event.json()}\n\n"


class SSEHandler(BaseHandler):
    """A handler that can answer with an event stream, or wait long for a client.

    Whatever it waits on is cancelled the moment the client goes away, so no
    subscription outlives its request.
    """

    _waiting: asyncio.Task[Any] | None = None
    _gone = False

    @contextlib.contextmanager
    def _cancelled_on_close(self) -> Iterator[None]:
        self._waiting = asyncio.current_task()
        try:
            yield
        finally:
            self._waiting = None

    def on_connection_close(self) -> None:
        self._gone = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def unless_gone(self, awaitable: Awaitable[T]) -> T | None:
        """Await ``awaitable``; ``None`` if the client left meanwhile (it is cancelled then)."""
        with self._cancelled_on_close():
            try:
                return await awaitable
            except asyncio.CancelledError:
                if self._gone:
                    return None
                raise

    def last_event_id(self) -> tuple[int, int]:
        """(version, seq) to resume after: the ``Last-Event-ID`` header or ``last_event_id`` argument."""
        return parse_event_id(self.request.headers.get("Last-Event-ID") or self.arg("last_event_id", default=None))

    async def stream(self, events: AsyncIterator[Event | None]) -> None:
        """Send ``events`` as Server-Sent Events until they end or the client leaves.

        The first event is awaited before anything is written, so an error
        raised by the source (unknown job, no permission) is still a JSON error.
        """
        async with contextlib.aclosing(events):
            first = await anext(events)
            self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            retry: int | None = RETRY_MS  # told with the first event, not a keepalive: see the module docstring
            with self._cancelled_on_close():
                try:
                    self.write(format_event(first, retry=retry))
                    if first is not None:
                        retry = None
                    first = None  # held by nothing while the stream lasts: it may be a large document
                    await self.flush()
                    async for event in events:
                        self.write(format_event(event, retry=retry))
                        if event is not None:
                            retry = None
                        event = None  # nor while the next one is awaited
                        await self.flush()
                except StreamClosedError:
                    return  # the client left; aclosing closes the subscription
                except asyncio.CancelledError:
                    if self._gone:
                        return
                    raise
        if not self._finished:
            self.finish()
