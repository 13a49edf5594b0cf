"""``GET /job/events``: every change of every job the caller may read, as one stream of Server-Sent Events.

A thin face over ``core.events``: it parses the filter, holds a stream slot,
subscribes, and checks the caller's credentials and rights again at every
keepalive (a stream whose caller lost them ends; one whose rights changed
goes on with the new ones).
"""
from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any, AsyncIterator

from core.errors import BadArgument, Unauthorized
from core.events import MAX_IDS, MAX_TIMEOUT, Subscriber, parse_filter
from core.follow import Event
from handlers.openapi import Op, Param
from handlers.sse import SSEHandler

__all__ = ["EventsHandler"]

_STATE_NAMES = "pending|running|deferred|failed|complete|error|inactive|killed"
_PARAMS = (
    Param("state", "string", "only jobs in these states, comma-separated: pending, running, deferred, failed, "
          "complete, error, inactive, killed", pattern=f"^(({_STATE_NAMES})(,({_STATE_NAMES}))*)?$"),
    Param("qual_name", "string", "only jobs of these classes, comma-separated qualified class names"),
    Param("ids", "string", f"only these jobs, comma-separated job ids (at most {MAX_IDS})",
          pattern="^([0-9a-f]{24}(,[0-9a-f]{24})*)?$"),
    Param("logs", "boolean", "also the log records of the jobs in ids (only with ids; default false)",
          default=False),
    Param("timeout", "number", f"close the stream after this many seconds, up to {MAX_TIMEOUT} (default: "
          "never)", minimum=0, maximum=MAX_TIMEOUT),
    Param("last_event_id", "string", "resume after this event id (or the Last-Event-ID header)"),
)


class EventsHandler(SSEHandler):
    """``GET /job/events``: ``job``, ``log`` and ``reset`` events of the jobs the caller may read."""

    api = {"get": Op(
        "Every change of every job the caller may read, as one event stream; filter by state, class or ids",
        _PARAMS, sse=True, events=("job", "job_log", "reset"), errors=(400, 401),
        description=(
            "`job` events carry a job summary, sent for every new job, every change shown in it (state, "
            "progress, kill, ...) and its move to the journal (`journal: true`); `log` events the log "
            "records of the jobs in `ids` when `logs=true`; `reset` tells the client to re-read what it "
            "shows from the REST routes (it fell behind, the server's change stream reopened, or its "
            "Last-Event-ID is older than what the server holds). Ids are `<nonce>-<seq>`: resume with "
            "Last-Event-ID."))}

    async def get(self) -> None:
        wanted = parse_filter(state=self.args.get("state"), qual_name=self.args.get("qual_name"),
                              ids=self.args.get("ids"), logs=self.arg("logs", bool, False))
        timeout = self.arg("timeout", float, None)
        if timeout is not None and not (math.isfinite(timeout) and 0 <= timeout <= MAX_TIMEOUT):
            raise BadArgument(f"argument 'timeout': expected seconds from 0 to {MAX_TIMEOUT}, got {timeout:g}")
        last = self.request.headers.get("Last-Event-ID") or self.arg("last_event_id", default=None)
        with self.services.streams.slot(self.current_user["name"]):
            subscriber = await self.services.events.subscribe(user=self.current_user, wanted=wanted,
                                                              last_event_id=last)
            with subscriber:
                await self.stream(self._rechecked(subscriber, subscriber.events(
                    idle=self.services.keepalive, timeout=timeout)))

    async def _rechecked(self, subscriber: Subscriber,
                         events: AsyncIterator[Event | None]) -> AsyncIterator[Event | None]:
        """``events``, ended once the caller's credentials no longer hold, with its rights as they are now.

        Checked at every keepalive, and before an event when the last check
        is a keepalive interval old (a busy stream has no keepalives).
        """
        clock = asyncio.get_running_loop().time
        checked = clock()
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None or clock() - checked >= self.services.keepalive:
                    checked = clock()
                    try:
                        user: dict[str, Any] = await self.reauthenticate()
                    except Unauthorized:
                        return
                    subscriber.refresh(user)
                yield event
                event = None

