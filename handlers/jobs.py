"""The job API (core4 style): thin handlers over ``core`` — parse arguments, call, shape the reply."""
from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Callable, ContextManager

from tornado.web import HTTPError

from core import flow, journal, logs, queue, registry, stats
from core.errors import BadArgument, Forbidden, NotFound, Unauthorized
from core.follow import Event, follow, wait_for
from core.job import OPTIONS
from core.states import FINAL

from handlers.base import BaseHandler
from handlers.openapi import CURSOR_PARAMS, LIST_PARAMS, PAGE_PARAMS, Op, Param
from handlers.sse import SSEHandler

__all__ = ["RegistryHandler", "JobHandler", "EnqueueHandler", "BatchHandler", "QueueHandler", "JournalHandler",
           "DetailHandler", "ReadDetailHandler", "FollowHandler", "LogHandler", "PollHandler", "KillHandler", "RemoveHandler",
           "RestartHandler", "StatsHandler", "PauseHandler", "ResumeHandler", "WorkerHandler", "UnknownActionHandler"]

_FOLLOW = Param("follow", "boolean", "stream the job as Server-Sent Events (default true)", default=True)
_KEY_TEXT = (f"idempotency key, 1 to {queue.MAX_KEY} characters without control characters: a repeat by the same "
             "user within idempotency_hours enqueues nothing and replies the first job")
_KEY_SCHEMA = {"minLength": 1, "maxLength": queue.MAX_KEY, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"}
_KEY = Param("key", "string", _KEY_TEXT + " (or the Idempotency-Key header)", schema=_KEY_SCHEMA)
_KEY_HEADER = Param("Idempotency-Key", "string", _KEY_TEXT + " (or the key field)", schema=_KEY_SCHEMA)
_LAST_EVENT = Param("last_event_id", "string", "resume after this event id (or the Last-Event-ID header)")
_OPTIONS = tuple(Param(name, "integer" if kind is int else "number", f"enqueue option {name} (default: the job "
                       f"class's), {low:g} to {high:g}", minimum=low, maximum=high)
                 for name, (kind, low, high, _) in queue.OPTION_LIMITS.items())
_OPTIONS += (Param("requires", "array", f"worker tags a worker must all have to run the job (default: the job "
                  f"class's), at most {flow.MAX_TAGS}", schema={"maxItems": flow.MAX_TAGS, "items": {
                      "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"}}),)
_OPTION_TYPES: dict[str, Any] = {**{name: int if kind is int else float
                                    for name, (kind, *_) in queue.OPTION_LIMITS.items()}, "requires": list}
_START = (Param("delay", "number", f"start no earlier than this many seconds from now, 0 to {queue.MAX_DELAY} "
                "(not with run_at); only the first start waits", minimum=0, maximum=queue.MAX_DELAY),
          Param("run_at", "date-time", f"start no earlier than this time, ISO 8601, without a zone UTC, at most "
                f"{queue.MAX_DELAY // 86400} days ahead (not with delay); only the first start waits"))


def _states(*names: str) -> Param:
    """The ``state`` filter of a listing that holds jobs in ``names``."""
    one = f"({'|'.join(names)})"
    return Param("state", "string", f"only these states, comma-separated: {', '.join(names)}",
                 pattern=f"^({one}(,{one})*)?$")


_LIVE_STATES = _states("pending", "running", "deferred", "failed")
_FINAL_STATES = _states("complete", "error", "inactive", "killed")
_WAIT = Param("wait", "boolean", "reply once a running job has been stopped (default true), "
              "at most the kill grace plus a lease later", default=True)
_ACTIONS = ("detail", "follow", "log", "poll", "kill", "remove", "restart")


class _JobBase(SSEHandler):
    """Shared argument readers of the job handlers."""

    def page_args(self) -> dict[str, Any]:
        return {"page": self.arg("page", int, 0), "per_page": self.arg("per_page", int, 10)}

    def list_args(self) -> dict[str, Any]:
        return {**self.page_args(), "sort": self._sort(), "search": self.arg("search", default=None),
                "filter": self.arg("filter", dict, None)}

    def _sort(self) -> Any:
        value = self.args.get("sort")
        return value if isinstance(value, (list, dict)) else self.arg("sort", default=None)

    def states(self) -> Any:
        value = self.args.get("state")
        return value if isinstance(value, list) else self.arg("state", default=None)

    def cursor_args(self) -> dict[str, Any]:
        # An empty value (a null next/prev pasted as text) is no cursor.
        return {"after": self.arg("after", default=None) or None, "before": self.arg("before", default=None) or None}

    def reply_page(self, page: Any) -> None:
        self.reply(page.items, **page.envelope_fields())

    def idempotency_key(self) -> str | None:
        """The request's idempotency key: the ``Idempotency-Key`` header or the ``key`` field, or None.

        Raises ``BadArgument`` when both are given with different values.
        """
        header = self.request.headers.get("Idempotency-Key")
        field = self.arg("key", str, None)
        if header is not None and field is not None and header != field:
            raise BadArgument("the Idempotency-Key header and the key field differ; give one of them")
        return field if field is not None else header

    # -- long-lived requests: capped, and their rights re-checked ----------

    def slot(self) -> ContextManager[None]:
        """Hold one of the caller's open-stream slots (429 when none is free)."""
        return self.services.streams.slot(self.current_user["name"])

    async def recheck(self, job_id: Any) -> None:
        """Check again that the caller may still read the job.

        Raises ``Unauthorized`` (user disabled or removed, password changed,
        token expired) or ``Forbidden`` (read permission revoked).
        """
        await queue.require_readable(self.services.db, job_id, user=await self.reauthenticate())

    async def wait(self, job_id: Any, done: Callable[[dict[str, Any]], bool],
                   timeout: float) -> dict[str, Any] | None:
        """The job once ``done(job)``, or as it is after ``timeout`` s; None if the client left.

        The caller's rights are re-checked every keepalive interval, so a
        long wait ends with 401/403 as soon as they are gone.
        """
        clock = asyncio.get_running_loop().time
        deadline = clock() + timeout
        while True:
            job = await self.unless_gone(wait_for(
                self.services.db, job_id, user=self.current_user, hub=self.services.hub, done=done,
                timeout=min(self.services.keepalive, max(0.0, deadline - clock()))))
            if job is None or done(job) or clock() >= deadline:
                return job
            await self.recheck(job_id)

    async def stopped(self, job: dict[str, Any]) -> None:
        """Reply ``job`` after a kill or removal, once its worker has ended it if it was running.

        A running job is only marked; its worker (or, if that died, the reaper
        once the lease expired) ends it. Waiting for that lets a client restart
        it right after the reply, as the core4 walkthrough does.
        """
        if job["state"] not in FINAL and self.arg("wait", bool, True):
            config = self.services.config
            with self.slot():
                job = await self.wait(job["_id"], lambda j: j["state"] in FINAL,
                                      config.kill_grace_seconds + config.lease_seconds)
            if job is None:
                return  # the client left
        self.reply(job)

    async def follow_job(self, job_id: Any, *, states: bool = True) -> None:
        """Stream the job's events (the caller holds a stream slot)."""
        version, seq = self.last_event_id()
        events = follow(self.services.db, job_id, user=self.current_user, hub=self.services.hub,
                        after_version=version, after_seq=seq, states=states, idle=self.services.keepalive)
        await self.stream(self._guarded(job_id, events))

    async def _guarded(self, job_id: Any, events: AsyncIterator[Event | None]) -> AsyncIterator[Event | None]:
        """``events``, cut short by ``close`` ``{"state": "forbidden"}`` once the caller lost access.

        Access is re-checked at every keepalive, and before an event when the
        last check is a keepalive interval old (a busy job has no keepalives).
        """
        clock = asyncio.get_running_loop().time
        checked, last_id, counts = clock(), "0.0", {"state": 0, "log": 0}
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None or clock() - checked >= self.services.keepalive:
                    checked = clock()
                    try:
                        await self.recheck(job_id)
                    except (Unauthorized, Forbidden, NotFound):
                        yield Event("close", last_id, {"state": "forbidden", "events": counts})
                        return
                if event is not None:
                    last_id = event.id
                    counts[event.kind] = counts.get(event.kind, 0) + 1
                yield event
                event = None  # held while waiting, a large document would stay alive per follower


class RegistryHandler(_JobBase):
    """``GET /job/list``: the jobs the caller may enqueue."""

    api = {"get": Op("List the jobs the caller may enqueue (the registry)", LIST_PARAMS,
                     reply="RegistryEntry", paginated=True, errors=(400, 401))}

    async def get(self) -> None:
        args = self.list_args()
        self.reply_page(await registry.list_page(self.services.db, user=self.current_user,
                                                 lease_seconds=self.services.config.lease_seconds, **args))


class QueueHandler(_JobBase):
    """``GET|POST /job/queue`` (and ``GET /job``): the live queue, paginated."""

    _op = Op("List live jobs (pending, running, deferred, failed), next to run first",
             LIST_PARAMS + CURSOR_PARAMS + (_LIVE_STATES,), reply="Job", paginated=True, errors=(400, 401))
    api = {"get": _op, "post": _op}

    async def get(self) -> None:
        page = await journal.list_queue(self.services.db, user=self.current_user, state=self.states(),
                                        **self.list_args(), **self.cursor_args())
        self.reply_page(page)

    post = get


class JobHandler(QueueHandler):
    """``POST /job`` (also ``/job/enqueue``): enqueue; ``GET /job``: the queue."""

    api = {"get": QueueHandler._op, "post": Op(
        "Enqueue a job; with follow (default) stream it as Server-Sent Events, else reply its id",
        (Param("qual_name", "string", "the job's qualified class name", required=True),
         Param("args", "object", "the job's arguments"), _FOLLOW) + _OPTIONS + _START + (_KEY,),
        reply="Id", sse=True, sse_optional=True, errors=(400, 401, 403, 404, 409, 413),
        headers=(_KEY_HEADER,), reply_headers=("Idempotent-Replayed",), description=(
            "With an idempotency key (the `Idempotency-Key` header or the `key` field; both only with the same "
            "value), a repeat of the request by the same user within `idempotency_hours` (default 24) enqueues "
            "nothing: it replies the first job's id (or, with follow, streams the first job) with 200 and the "
            "header `Idempotent-Replayed: true`. The same key with other arguments or options is a 409 whose "
            "`details.job_id` is the first job. Each user has keys of its own."))}

    async def post(self) -> None:
        options = {name: self.arg(name, _OPTION_TYPES[name]) for name in OPTIONS if self.args.get(name) is not None}
        start = {"delay": self.arg("delay", float, None), "run_at": self.arg("run_at", datetime, None)}
        following = self.arg("follow", bool, True)  # read before enqueueing: a bad value enqueues nothing
        key = self.idempotency_key()
        # The stream slot is taken first: a refused stream enqueues nothing.
        with self.slot() if following else contextlib.nullcontext():
            if key is None:
                job = await queue.enqueue(self.services.db, self.arg("qual_name"), self.arg("args", dict, {}),
                                          user=self.current_user, hostname=self.client_ip,
                                          registry_cache=self.services.registry_cache,
                                          inserts=self.services.job_inserts,
                                          **start, **options)
            else:
                job, new = await queue.enqueue_keyed(
                    self.services.db, key, self.arg("qual_name"), self.arg("args", dict, {}),
                    user=self.current_user, keep=timedelta(hours=self.services.config.idempotency_hours),
                    hostname=self.client_ip, registry_cache=self.services.registry_cache, **start, **options)
                if not new:
                    self.set_header("Idempotent-Replayed", "true")
            if following:
                await self.follow_job(job["_id"])
            else:
                self.reply(job["_id"])


class EnqueueHandler(_JobBase):
    """``POST /job/enqueue``: the same as ``POST /job``."""

    api = {"post": JobHandler.api["post"]}
    post = JobHandler.post


_BATCH_ITEM = {"type": "object", "required": ["qual_name"], "additionalProperties": False, "properties": {
    "qual_name": {"type": "string", "description": "the job's qualified class name"},
    "args": {"type": "object", "description": "the job's arguments"},
    **{param.name: {key: value for key, value in {
        "type": "string" if param.type == "date-time" else param.type,
        "format": "date-time" if param.type == "date-time" else None, "description": param.description,
        "minimum": param.minimum, "maximum": param.maximum}.items() if value is not None}
       for param in _OPTIONS + _START}}}


class BatchHandler(_JobBase):
    """``POST /job/batch``: enqueue up to ``queue.MAX_BATCH`` jobs, all or none."""

    api = {"post": Op(
        f"Enqueue up to {queue.MAX_BATCH} jobs at once, all or none; reply their ids in order",
        (Param("jobs", "array", "the jobs, each {qual_name, args, delay or run_at, options} as POST /job "
               "takes them (without follow)", required=True,
               schema={"maxItems": queue.MAX_BATCH, "items": _BATCH_ITEM}),),
        reply="Id", array=True, errors=(400, 401, 403, 404, 409, 413), description=(
            "Every job is checked before any is written; the first bad one is refused with the status a "
            "single enqueue would get, its `error` starting `jobs[<index>]: ` and `details.index` set. A "
            "unique job whose arguments a live job or an earlier job of the batch has is a 409. The body must "
            "fit max_body_size (1 MiB by default: about 1,000 bytes per job for a full batch). Idempotency "
            "keys are for single enqueues (POST /job): an `Idempotency-Key` header or `key` field is a 400."))}

    async def post(self) -> None:
        if self.request.headers.get("Idempotency-Key") is not None or self.args.get("key") is not None:
            raise BadArgument("idempotency keys are for single enqueues (POST /job), not for batches")
        jobs = await queue.enqueue_many(self.services.db, self.arg("jobs", list), user=self.current_user,
                                        hostname=self.client_ip, registry_cache=self.services.registry_cache)
        self.reply([job["_id"] for job in jobs])


class JournalHandler(_JobBase):
    """``GET|POST /job/journal``: finished jobs, newest first."""

    _op = Op("List finished jobs, newest first", LIST_PARAMS + CURSOR_PARAMS + (
        _FINAL_STATES, Param("qual_name", "string", "only this job class"),
        Param("since", "date-time", "finished at or after"), Param("until", "date-time", "finished before")),
        reply="Job", paginated=True, errors=(400, 401))
    api = {"get": _op, "post": _op}

    async def get(self) -> None:
        page = await journal.list_journal(
            self.services.db, user=self.current_user, state=self.states(),
            qual_name=self.arg("qual_name", default=None), since=self.arg("since", datetime, None),
            until=self.arg("until", datetime, None), **self.list_args(), **self.cursor_args())
        self.reply_page(page)

    post = get


class DetailHandler(_JobBase):
    """``GET /job/<id>`` (also ``/job/detail/<id>``): one job; ``DELETE /job/<id>``: remove it."""

    api = {"get": Op("One job, live or finished (`journal` says which)", reply="Job"),
           "delete": Op("Remove a live job (journaled killed, flagged removed)", (_WAIT,), reply="Job",
                        errors=(400, 401, 403, 404, 409), long=True)}

    async def get(self, job_id: str) -> None:
        self.reply(await queue.get(self.services.db, job_id, user=self.current_user,
                                   lease_seconds=self.services.config.lease_seconds))

    async def delete(self, job_id: str) -> None:
        self.arg("wait", bool, True)  # a bad value is refused before anything is done
        await self.stopped(await queue.remove(self.services.db, job_id, user=self.current_user))


class ReadDetailHandler(_JobBase):
    """``GET /job/detail/<id>``."""

    api = {"get": DetailHandler.api["get"]}
    get = DetailHandler.get


class FollowHandler(_JobBase):
    """``GET /job/follow/<id>``: Server-Sent Events of the job's states and log."""

    api = {"get": Op("Follow a job: its current state and log so far, then live changes, then close",
                     (_LAST_EVENT,), sse=True)}

    async def get(self, job_id: str) -> None:
        with self.slot():
            await self.follow_job(job_id)


class LogHandler(_JobBase):
    """``GET /job/log/<id>``: the job's log, paginated; with ``follow=true`` as events."""

    api = {"get": Op("A job's log records in seq order, paginated; follow=true streams them",
                     PAGE_PARAMS + CURSOR_PARAMS + (Param("follow", "boolean", "stream log events (default false)", default=False),
                                    _LAST_EVENT),
                     reply="LogRecord", paginated=True, sse=True, sse_optional=True, events=("log", "close"))}

    async def get(self, job_id: str) -> None:
        if self.arg("follow", bool, False):
            with self.slot():
                await self.follow_job(job_id, states=False)
            return
        job = await queue.get(self.services.db, job_id, user=self.current_user)
        self.reply_page(await logs.page(self.services.db, job["_id"], **self.page_args(), **self.cursor_args()))


class PollHandler(_JobBase):
    """``GET /job/poll/<id>``: long poll until the job changes, or ``timeout``."""

    api = {"get": Op("Long poll: the job once its version exceeds `version` (or its state differs from "
                     "`state`), or after `timeout` seconds",
                     (Param("version", "integer", "reply when the job's version is above this"),
                      Param("state", "string", "reply when the job's state differs from this"),
                      Param("timeout", "number", "seconds to wait, 1-300", default=30, minimum=1, maximum=300)),
                     reply="Job", long=True)}

    async def get(self, job_id: str) -> None:
        version = self.arg("version", int, None)
        state = self.arg("state", default=None)
        timeout = self.arg("timeout", float, 30.0)
        if not 1 <= timeout <= 300:
            raise BadArgument(f"timeout must be between 1 and 300 seconds, got {timeout:g}")
        with self.slot():
            if version is None and state is None:  # nothing given: wait for the next change
                version = (await queue.get(self.services.db, job_id, user=self.current_user))["version"]
            job = await self.wait(job_id, lambda j: self._changed(j, version, state) or j["state"] in FINAL,
                                  timeout)
        if job is not None:
            self.reply(job)

    @staticmethod
    def _changed(job: dict[str, Any], version: int | None, state: str | None) -> bool:
        return (version is not None and job["version"] > version) or (state is not None and job["state"] != state)


class KillHandler(_JobBase):
    """``PUT /job/kill/<id>``."""

    api = {"put": Op("Kill a live job (a running one ends killed once its worker has stopped it)",
                     (_WAIT,), reply="Job", errors=(400, 401, 403, 404, 409), long=True)}

    async def put(self, job_id: str) -> None:
        self.arg("wait", bool, True)  # a bad value is refused before anything is done
        await self.stopped(await queue.kill(self.services.db, job_id, user=self.current_user))


class RemoveHandler(_JobBase):
    """``PUT /job/remove/<id>``."""

    api = {"put": Op("Remove a live job (journaled killed, flagged removed)", (_WAIT,), reply="Job",
                     errors=(400, 401, 403, 404, 409), long=True)}

    async def put(self, job_id: str) -> None:
        self.arg("wait", bool, True)  # a bad value is refused before anything is done
        await self.stopped(await queue.remove(self.services.db, job_id, user=self.current_user))


class RestartHandler(_JobBase):
    """``PUT /job/restart/<id>``: retry (same id) or re-enqueue (new id); follows by default."""

    api = {"put": Op("Restart a job: failed/deferred now under the same id; killed/error/inactive as a "
                     "new job linked by parent_id/child_id. With follow (default) stream the job that "
                     "will run, else reply its id", (_FOLLOW,), reply="Id", sse=True, sse_optional=True,
                     errors=(400, 401, 403, 404, 409))}

    async def put(self, job_id: str) -> None:
        following = self.arg("follow", bool, True)  # read before restarting: a bad value restarts nothing
        with self.slot() if following else contextlib.nullcontext():
            job = await queue.restart(self.services.db, job_id, user=self.current_user, hostname=self.client_ip)
            if following:
                await self.follow_job(job["_id"])
            else:
                self.reply(job["_id"])


class StatsHandler(_JobBase):
    """``GET /job/stats``."""

    api = {"get": Op("Counts per state, oldest pending age, running per worker, alive workers, "
                     "finished per minute (of the jobs the caller may read)", reply="Stats", errors=(401,))}

    async def get(self) -> None:
        self.reply(await stats.stats(self.services.db, user=self.current_user,
                                     lease_seconds=self.services.config.lease_seconds))


_QUAL_NAME = Param("qual_name", "string", "only this job class (execute permission on it); without it the "
                   "whole queue (admins only)", schema={"minLength": 1, "maxLength": 200})
_FLOW_WAIT = Param("wait", "number", "seconds to wait for every live worker to acknowledge (default 5)",
                   minimum=0, maximum=60, default=5)


class PauseHandler(BaseHandler):
    """``PUT /job/pause``: pause the whole queue or one job class."""

    api = {"put": Op("Pause the queue (maintenance) or one job class: its jobs stay pending, running ones finish",
                     (_QUAL_NAME, _FLOW_WAIT), reply="Flow", errors=(400, 401, 403), description=(
                         "Replies once every live worker has acknowledged the change (or after `wait` "
                         "seconds; `unacknowledged` names the others): from then on no worker starts a paused "
                         "job. Pausing the whole queue needs admin; a class, execute permission on it."))}

    async def put(self) -> None:
        self.reply(await self._change(flow.pause))

    async def _change(self, change: Callable[..., Any]) -> dict[str, Any]:
        wait = self.arg("wait", float, 5.0)
        if not 0 <= wait <= 60:
            raise BadArgument(f"argument 'wait': 0 to 60 seconds, got {wait:g}")
        return await change(self.services.db, user=self.current_user, qual_name=self.arg("qual_name", str, None),
                            lease_seconds=self.services.config.lease_seconds, wait=wait)


class ResumeHandler(PauseHandler):
    """``PUT /job/resume``: undo a pause of the whole queue or of one job class."""

    api = {"put": Op("Resume the queue or one job class (classes paused one by one stay paused when the whole "
                     "queue resumes)", (_QUAL_NAME, _FLOW_WAIT), reply="Flow", errors=(400, 401, 403))}

    async def put(self) -> None:
        self.reply(await self._change(flow.resume))


class WorkerHandler(BaseHandler):
    """``GET /worker``: workers, with the running jobs the caller may read."""

    api = {"get": Op("Workers with their heartbeat and running jobs", reply="Worker", array=True, errors=(401,),
                     tags=("workers",))}

    async def get(self) -> None:
        self.reply(await stats.workers(self.services.db, user=self.current_user,
                                       lease_seconds=self.services.config.lease_seconds))


class UnknownActionHandler(BaseHandler):
    """``/job/<action>/<id>`` with an action that does not exist: 405."""

    api: dict[str, Op] = {}

    def _refuse(self, action: str, _job_id: str) -> None:
        raise HTTPError(405, "unknown action %r; actions: %s", action, ", ".join(_ACTIONS))

    get = post = put = delete = _refuse
