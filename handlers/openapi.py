"""The OpenAPI 3.1 description, built from the routes and the ``api`` each handler declares.

Every handler lists its operations as ``api = {"get": Op(...), ...}``; the
document is generated from ``handlers.app.ROUTES``, so a route cannot exist
without a description (a test checks both directions). It says what the
server really sends, and a schema fuzzer holds it to that
(``tests/test_api_fuzz.py``): every status a route can answer with its
headers, every content type, the shape of every reply and of every event.

- Statuses: those an ``Op`` lists, and those every request of its kind can
  meet: 413 (body too large) and 503 (database) everywhere; 401 and 429
  (Basic credentials are throttled on every route) where it authenticates;
  403 and 415 (cross-site checks) for POST, PUT and DELETE; 429 for streams
  and long waits.
- Event streams: OpenAPI 3.1 cannot describe the events of a
  ``text/event-stream`` reply, so its ``schema`` describes one event, as
  OpenAPI 3.2's ``itemSchema`` does (and as schemathesis reads it):
  ``{event, id, data, retry}``, whose ``data`` is JSON text with a
  ``contentSchema``: the job, a log record or the closing summary.
- Links lead from each reply that carries a job's id (enqueue and restart
  reply a new one, the others the job) to every operation that takes one, so
  a generated client, or a fuzzer's stateful phase, knows where it goes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Op", "Param", "build", "operations", "path_template", "operation_id", "PAGE_PARAMS", "LIST_PARAMS",
           "CURSOR_PARAMS"]


@dataclass(frozen=True)
class Param:
    """One argument: from the query string or, equally, the JSON body."""

    name: str
    type: str
    description: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    #: More JSON Schema keywords, e.g. the ``items`` of an array.
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Op:
    """One operation of a route.

    ``reply`` names the component schema of the reply envelope's ``data``
    (a list of them when ``paginated`` or ``array``); without ``envelope``
    it describes the whole body, sent as ``media``.
    """

    summary: str
    params: tuple[Param, ...] = ()
    reply: str = "Any"
    paginated: bool = False
    #: ``data`` is a list of ``reply``, all of it (not paginated).
    array: bool = False
    sse: bool = False
    sse_optional: bool = False
    #: The kinds of event a stream sends.
    events: tuple[str, ...] = ("state", "log", "close")
    errors: tuple[int, ...] = (400, 401, 403, 404)
    auth: bool = True
    description: str = ""
    tags: tuple[str, ...] = field(default=("jobs",))
    #: Holds the connection open (a stream, a long poll, a wait): capped per user (429).
    long: bool = False
    #: The reply's content type, and whether ``reply`` is wrapped in the reply envelope.
    media: str = "application/json"
    envelope: bool = True
    #: A form body is accepted besides JSON (``/login``).
    form: bool = False
    #: Request headers it reads (``in: header`` parameters; ``Param.name`` is the header's).
    headers: tuple[Param, ...] = ()
    #: Headers of ``_HEADERS`` its 200 reply may carry, besides X-Request-Id.
    reply_headers: tuple[str, ...] = ()
    #: The component schema of the path's ``{id}`` (replies holding a job id link to the ``Id`` ones only).
    id: str = "Id"


PAGE_PARAMS = (
    Param("page", "integer", "0-based page; negative counts from the end (-1 = last)", default=0),
    Param("per_page", "integer", "items per page, 1-1000", default=10, minimum=1, maximum=1000),
)
CURSOR_PARAMS = (
    Param("after", "string", "the page after this cursor: a reply's `next`, unaltered, with the same sort "
                             "(not with page or before)"),
    Param("before", "string", "the page before this cursor: a reply's `prev`, unaltered, with the same sort "
                              "(not with page or after)"),
)
LIST_PARAMS = PAGE_PARAMS + (
    Param("sort", "string", "fields, '-' for descending, e.g. '-priority,_id'"),
    Param("search", "string", "qual_name contains this (case-insensitive); '*' and '?' are wildcards"),
    Param("filter", "object", "a MongoDB filter on job fields with $eq $ne $in $nin $gt $gte $lt $lte "
                              "$exists $and $or only (JSON text in the query string)"),
)

_TYPES = {"integer": {"type": "integer"}, "number": {"type": "number"}, "string": {"type": "string"},
          "boolean": {"type": "boolean"}, "object": {"type": "object"}, "array": {"type": "array"},
          "date-time": {"type": "string", "format": "date-time"}}

_FINAL = ["complete", "error", "inactive", "killed"]
_STATES = ["pending", "running", "deferred", "failed", *_FINAL]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_ID = {"type": ["string", "null"], "pattern": "^[0-9a-f]{24}$"}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}

_SCHEMAS: dict[str, Any] = {
    "Id": {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "a job id"},
    "Time": {"type": "string", "format": "date-time", "description": "ISO-8601 UTC, e.g. 2026-11-24T10:00:00.123Z"},
    "Job": {"type": "object", "description": "a job document (SPEC 3.3); `journal` tells where it is",
            "required": ["_id", "qual_name", "args", "state", "version"],
            "properties": {
                "_id": _ref("Id"), "qual_name": {"type": "string"}, "args": {"type": "object"},
                "state": {"enum": _STATES},
                "priority": {"type": "integer"}, "attempts": {"type": "integer"},
                "attempts_left": {"type": "integer"}, "trial": {"type": "integer"},
                "error_time": {"type": "number"}, "defer_time": {"type": "number"},
                "defer_max": {"type": "number"}, "wall_time": {"type": ["number", "null"]},
                "query_at": _ref("Time"),
                "enqueued": {"type": "object", "properties": {
                    "at": _ref("Time"), "username": {"type": "string"}, "hostname": {"type": ["string", "null"]},
                    "parent_id": _NULLABLE_ID, "child_id": _NULLABLE_ID}},
                "started_at": _NULLABLE_TIME, "finished_at": _NULLABLE_TIME,
                "runtime": {"type": ["number", "null"], "description": "seconds the last run took"},
                "prog": {"type": "object", "properties": {"value": {"type": "number", "minimum": 0, "maximum": 1},
                                                          "message": {"type": ["string", "null"]}}},
                "locked": {"type": ["object", "null"], "description": "the claim of the worker running it",
                           "properties": {"worker": {"type": "string"}, "host": {"type": "string"},
                                          "pid": {"type": ["integer", "null"]}, "at": _ref("Time"),
                                          "heartbeat": _ref("Time"), "token": {"type": "string"},
                                          "slots": {**_STRINGS, "description": "the concurrency slots it holds"}}},
                "last_error": {"type": ["object", "null"], "properties": {
                    "exception": {"type": "string"}, "message": {"type": ["string", "null"]},
                    "traceback": {"type": ["string", "null"]}, "at": _ref("Time")}},
                "result": {"description": "what execute returned (any JSON)"},
                "killed_at": _NULLABLE_TIME, "removed_at": _NULLABLE_TIME, "tags": _STRINGS,
                "max_parallel": {"type": "integer", "minimum": 1,
                                 "description": "at most this many jobs of its class (with this limit or a "
                                                "lower one) run at once; absent: no limit"},
                "requires": {**_STRINGS, "description": "worker tags a worker needs all of to run it"},
                "waiting_for": {**_STRINGS, "description": "a waiting live job: why it cannot start now (a "
                                "pause, tags no live worker has); empty when nothing holds it"},
                "version": {"type": "integer", "minimum": 1, "description": "bumped by every change"},
                "log_seq": {"type": "integer", "description": "seq of its last log record"},
                "journal": {"type": "boolean", "description": "finished (in the journal) or live (in the queue)"}}},
    "LogRecord": {"type": "object", "required": ["job_id", "seq", "created", "level", "message"], "properties": {
        "job_id": _ref("Id"), "seq": {"type": "integer", "minimum": 1}, "created": _ref("Time"),
        "level": {"type": "string"}, "message": {"type": "string"}, "qual_name": {"type": "string"},
        "trial": {"type": "integer"}, "exception": {"type": "string", "description": "a traceback"},
        "stream": {"enum": ["stdout", "stderr", "output"]}}},
    "Close": {"type": "object", "required": ["state", "events"], "description": (
        "why the stream ends: the job's final state, `removed`, or `forbidden` (the caller lost the right "
        "to read it); and how many events of each kind this stream sent"), "properties": {
            "state": {"enum": [*_FINAL, "removed", "forbidden"]},
            "events": {"type": "object", "required": ["state", "log"], "properties": {
                "state": {"type": "integer", "minimum": 0}, "log": {"type": "integer", "minimum": 0}}}}},
    "ScheduleId": {"type": "string", "pattern": r"^([0-9a-f]{24}|class:[A-Za-z0-9_.]{1,250})$",
                   "description": "a schedule id: 24 hex digits, or class:<qual_name> for a class's schedule"},
    "Schedule": {"type": "object", "required": ["_id", "qual_name", "cron", "tz", "enabled", "source"],
                 "description": "a schedule (core.schedules)", "properties": {
        "_id": _ref("ScheduleId"), "qual_name": {"type": "string"}, "cron": {"type": ["string", "null"]},
        "tz": {"type": "string"}, "args": {"type": "object"},
        "options": {"type": "object", "description": "enqueue options given (the others: the class's)"},
        "enabled": {"type": "boolean", "description": "false: paused"},
        "catch_up": {"enum": ["latest", "none", "all"]}, "overlap": {"enum": ["skip", "queue"]},
        "source": {"enum": ["api", "class"], "description": "class: from the job class's schedule attribute"},
        "created": {"type": "object", "properties": {"at": _ref("Time"), "by": {"type": "string"}}},
        "updated": {"type": "object", "properties": {"at": _ref("Time"), "by": {"type": "string"}}},
        "acts_as": {"type": ["string", "null"], "description": "the user its jobs are enqueued as"},
        "start_after": _ref("Time"), "next_run": {**_NULLABLE_TIME, "description": "the next tick due; null "
                                                   "while paused or broken"},
        "last_tick": _NULLABLE_TIME, "last_job_id": _NULLABLE_ID,
        "last_skip": {"type": ["object", "null"], "description": "the last tick not enqueued, and why",
                      "properties": {"tick": _ref("Time"), "reason": {"type": "string"}, "at": _ref("Time")}},
        "error": {"type": ["string", "null"], "description": "why a class's schedule attribute is invalid"},
        "version": {"type": "integer", "minimum": 1}}},
    "EventId": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+$",
                "description": "<version>.<seq>: send it back as Last-Event-ID to resume after this event"},
    "RegistryEntry": {"type": "object", "required": ["_id", "qual_name"], "properties": {
        "_id": {"type": "string"}, "qual_name": {"type": "string"}, "doc": {"type": "string"},
        "author": {"type": ["string", "null"]},
        "schema": {"type": "object", "description": "the arguments of execute", "properties": {
            "params": {"type": "array", "items": {"type": "object", "required": ["name", "type"], "properties": {
                "name": {"type": "string"},
                "type": {"enum": ["str", "int", "float", "bool", "list", "dict", "any"]},
                "nullable": {"type": "boolean"}, "required": {"type": "boolean"}, "default": {}}}},
            "extra": {"type": "boolean", "description": "execute takes **kwargs"}}},
        "tags": _STRINGS, "schedule": {"type": ["string", "null"]}, "unique": {"type": "boolean"},
        "schedule_args": {"type": "object"}, "schedule_tz": {"type": "string"},
        "valid": {"type": "boolean", "description": "false: no process offers the class any more"},
        "workers": {"type": "array", "description": "the live workers offering the class", "items": {
            "type": "object", "required": ["id"], "properties": {"id": {"type": "string"},
                                                                 "host": {"type": "string"}}}},
        "defaults": {"type": "object", "description": "the enqueue options' defaults", "properties": {
            "attempts": {"type": "integer"}, "priority": {"type": "integer"}, "error_time": {"type": "number"},
            "defer_time": {"type": "number"}, "defer_max": {"type": "number"},
            "wall_time": {"type": ["number", "null"]}, "max_parallel": {"type": ["integer", "null"]},
            "requires": _STRINGS}},
        "paused": {"type": "boolean", "description": "its jobs are not started now (PUT /job/pause)"},
        "updated_at": _ref("Time")}},
    "Stats": {"type": "object", "required": ["queue", "journal", "oldest_pending_seconds", "running_per_worker",
                                             "workers_alive", "finished_per_minute"], "properties": {
        "queue": {**_COUNTS, "description": "live jobs per state"},
        "journal": {**_COUNTS, "description": "finished jobs per state"},
        "oldest_pending_seconds": {"type": ["number", "null"]},
        "running_per_worker": {**_COUNTS, "description": "running jobs by worker id"},
        "workers_alive": {"type": "integer", "minimum": 0},
        "paused": {"type": "object", "description": "what is paused: the whole queue, and classes one by one",
                   "properties": {"all": {"type": "boolean"}, "classes": _STRINGS}},
        "unrunnable": {"type": "array", "description": "waiting jobs that require tags no live worker has",
                       "items": {"type": "object", "properties": {
                           "requires": _STRINGS, "jobs": {"type": "integer", "minimum": 1},
                           "reason": {"type": "string"}}}},
        "finished_per_minute": {"type": "object", "properties": {
            "last_minute": {"type": "integer", "minimum": 0},
            "last_hour": {"type": "number", "minimum": 0, "description": "average per minute"},
            "minutes": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 60,
                        "maxItems": 60, "description": "jobs finished in each of the last 60 minutes, oldest "
                        "first, the current minute last"}}}}},
    "Worker": {"type": "object", "required": ["_id", "heartbeat", "alive"], "properties": {
        "_id": {"type": "string"}, "host": {"type": "string", "description": "admins only"},
        "pid": {"type": "integer", "description": "admins only"}, "started": _ref("Time"),
        "heartbeat": _ref("Time"), "slots": {"type": "integer"},
        "running": {"type": "array", "items": _ref("Id"), "description": "the running jobs the caller may read"},
        "jobs": {**_STRINGS, "description": "the job classes it runs that the caller may read"},
        "alive": {"type": "boolean", "description": "its heartbeat is within the lease"},
        "tags": {**_STRINGS, "description": "it runs only jobs whose requires it has all of"},
        "pool": {"type": "string"}, "max_running": {"type": ["integer", "null"],
                                                    "description": "of its pool, across its workers"},
        "import_errors": {"type": "array", "items": _ref("ImportError"), "description": "admins only"}}},
    "Flow": {"type": "object", "required": ["flow", "workers", "acknowledged", "unacknowledged"], "properties": {
        "flow": {"type": "object", "required": ["all", "classes", "version"], "properties": {
            "all": {"type": "boolean", "description": "the whole queue is paused"},
            "classes": {**_STRINGS, "description": "job classes paused one by one"},
            "version": {"type": "integer", "minimum": 0}}},
        "workers": {"type": "integer", "minimum": 0, "description": "live workers"},
        "acknowledged": {"type": "integer", "minimum": 0,
                         "description": "live workers that claim by this version now"},
        "unacknowledged": {**_STRINGS, "description": "ids of live workers that had not acknowledged it "
                           "within the wait"}}},
    "ImportError": {"type": "object", "required": ["module", "error"], "description": "a job module that "
                    "could not be imported", "properties": {"module": {"type": "string"}, "error": {"type": "string"}}},
    # As core.users.check_name.
    "UserName": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", "description": "a user name"},
    "User": {"type": "object", "required": ["name"], "description": "a user: never its password", "properties": {
        "name": {"type": "string"}, "roles": _STRINGS, "perms": _STRINGS,
        "active": {"type": ["boolean", "null"]}, "created": _NULLABLE_TIME, "updated": _NULLABLE_TIME,
        "admin": {"type": "boolean"}}},
    "Token": {"type": "object", "required": ["name", "expires"], "description": "a login session", "properties": {
        "name": {"type": "string"}, "expires": _ref("Time"),
        "_id": {**_ref("TokenId"), "description": "the session's id (GET /session, DELETE /session/{id})"},
        "token": {"type": "string", "description": "left out with cookie_only"}}},
    "TokenId": {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "an API token's or session's id"},
    "ApiToken": {"type": "object", "required": ["_id", "name", "read_only", "expires"],
                 "description": "an API token: never its secret", "properties": {
        "_id": _ref("TokenId"), "kind": {"enum": ["api"]}, "user": {"type": "string"}, "name": {"type": "string"},
        "read_only": {"type": "boolean"}, "created": _ref("Time"), "last_used": _NULLABLE_TIME,
        "expires": {**_NULLABLE_TIME, "description": "null: until revoked"}}},
    "NewApiToken": {"type": "object", "required": ["_id", "name", "token", "read_only", "expires"], "properties": {
        "_id": _ref("TokenId"), "name": {"type": "string"}, "read_only": {"type": "boolean"},
        "token": {"type": "string", "pattern": "^jd_[0-9a-f]{24}_[A-Za-z0-9_-]{43}$",
                  "description": "the secret: shown only in this reply"},
        "created": _ref("Time"), "expires": {**_NULLABLE_TIME, "description": "null: until revoked"}}},
    "Session": {"type": "object", "required": ["_id", "created", "expires"], "description": "a login session",
                "properties": {
        "_id": _ref("TokenId"), "kind": {"enum": ["session"]}, "user": {"type": "string"},
        "created": _ref("Time"), "last_used": _NULLABLE_TIME, "expires": _ref("Time"),
        "address": {"type": ["string", "null"], "description": "the client's address at login"},
        "agent": {"type": ["string", "null"], "description": "its User-Agent at login"},
        "current": {"type": "boolean", "description": "the session this request authenticated with"},
        "name": {"type": "null"}, "read_only": {"type": "boolean"}}},
    "Health": {"type": "object", "required": ["database"], "properties": {
        "database": {"type": "string"}, "ping_ms": {"type": "number"}, "uptime": {"type": "number"},
        "job_import_errors": {"type": "array", "items": _ref("ImportError"),
                              "description": "the job modules this server could not import"}}},
    "Metrics": {"type": "string", "description": "Prometheus text exposition format 0.0.4"},
    "OpenAPI": {"type": "object", "required": ["openapi", "info", "paths"], "description": "this document",
                "properties": {"openapi": {"type": "string", "pattern": r"^3\.1\.[0-9]+$"},
                               "info": {"type": "object", "required": ["title", "version"]},
                               "servers": {"type": "array"}, "security": {"type": "array"},
                               "components": {"type": "object"}, "paths": {"type": "object"}}},
    "Index": {"type": "object", "required": ["title", "links", "routes"], "description": "GET /api/v1",
              "properties": {
        "title": {"type": "string"},
        "links": {"type": "object", "required": ["docs", "openapi", "dashboard"], "properties": {
            "docs": {"type": "string", "description": "Swagger UI"},
            "openapi": {"type": "string", "description": "this document"},
            "dashboard": {"type": "string", "description": "the web dashboard"}}},
        "routes": {"type": "array", "items": {"type": "object", "required": ["method", "path", "summary"],
                                              "properties": {"method": {"type": "string"},
                                                             "path": {"type": "string"},
                                                             "summary": {"type": "string"}}}}}},
    "Nothing": {"type": "null"},
    "Any": {},
    "Reply": {"type": "object", "required": ["_id", "code", "message", "timestamp", "data"], "properties": {
        "_id": {"type": "string", "description": "request id (also the X-Request-Id header)"},
        "code": {"type": "integer"}, "message": {"type": "string"},
        "timestamp": _ref("Time"), "data": {}}},
    "Page": {"allOf": [_ref("Reply"), {
        "type": "object", "required": ["total_count", "count", "page", "page_count", "per_page"], "properties": {
            "total_count": {"type": "integer"}, "count": {"type": "integer"},
            "page": {"type": ["integer", "null"], "description": "null for a page found by a cursor"},
            "page_count": {"type": "integer"}, "per_page": {"type": "integer"},
            "total_exact": {"type": "boolean", "description": "false: total_count stopped at a cap (10 pages), "
                                                              "there are more (listings with cursors)"},
            "next": {"type": ["string", "null"], "description": "cursor of the next page (pass as after); "
                                                               "null on the last"},
            "prev": {"type": ["string", "null"], "description": "cursor of the previous page (pass as "
                                                               "before); null on the first"}}}]},
    "Error": {"type": "object", "required": ["_id", "code", "message", "timestamp", "error"], "properties": {
        "_id": {"type": "string"}, "code": {"type": "integer"}, "message": {"type": "string"},
        "timestamp": _ref("Time"),
        "error": {"type": "string", "description": "what was wrong"}, "details": {"type": "object"}}},
}



def _event(kind: str, data: str) -> dict[str, Any]:
    """One event of a stream, as an SSE parser hands it over: ``data`` is JSON text of ``data``'s schema."""
    return {"type": "object", "required": ["event", "id", "data"], "properties": {
        "event": {"const": kind}, "id": _ref("EventId"),
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(data)},
        "retry": {"type": "integer", "description": "ms to wait before reconnecting (on the first event)"}}}


_EVENTS = {"state": "StateEvent", "log": "LogEvent", "close": "CloseEvent",
           # GET /job/events: ids of their own (see JobEventId); its log event is "log" on the wire.
           "job": "JobEvent", "job_log": "JobLogEvent", "reset": "ResetEvent"}
_SCHEMAS.update({"StateEvent": _event("state", "Job"), "LogEvent": _event("log", "LogRecord"),
                 "CloseEvent": _event("close", "Close")})
_SCHEMAS.update({
    "JobEventId": {"type": "string", "pattern": r"^[0-9]{8}-[0-9]+$", "description": (
        "<nonce>-<seq> of GET /job/events: send it back as Last-Event-ID to resume after this event; the "
        "nonce is the server process's")},
    "JobSummary": {"type": "object", "description": "what GET /job/events tells of a job",
                   "required": ["_id", "qual_name", "state", "prog", "version", "journal"], "properties": {
        "_id": _ref("Id"), "qual_name": {"type": "string"}, "state": {"enum": _STATES},
        "prog": {"type": "object", "properties": {"value": {"type": ["number", "null"]},
                                                  "message": {"type": ["string", "null"]}}},
        "priority": {"type": ["integer", "null"]}, "trial": {"type": ["integer", "null"]},
        "attempts_left": {"type": ["integer", "null"]},
        "enqueued": {"type": "object", "properties": {"at": _NULLABLE_TIME,
                                                      "username": {"type": ["string", "null"]}}},
        "started_at": _NULLABLE_TIME, "finished_at": _NULLABLE_TIME, "runtime": {"type": ["number", "null"]},
        "locked": {"type": ["object", "null"], "properties": {"worker": {"type": ["string", "null"]}}},
        "killed_at": _NULLABLE_TIME, "removed_at": _NULLABLE_TIME,
        "last_error": {"type": ["object", "null"], "properties": {
            "exception": {"type": ["string", "null"]}, "message": {"type": ["string", "null"]}}},
        "version": {"type": "integer"},
        "journal": {"type": "boolean", "description": "true: its final move to the journal, its last event"}}},
    "Reset": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}},
              "description": "re-read what you show from the REST routes: events may have been missed"},
})


_SCHEMAS.update({
    "AuditEntry": {"type": "object", "required": ["_id", "at", "action", "actor", "target", "detail"],
                   "description": "one entry of the audit trail (GET /audit)", "properties": {
        "_id": {"type": "string", "pattern": "^[0-9a-f]{24}$"}, "at": _ref("Time"),
        "action": {"type": "string", "description": "e.g. job.enqueue, job.kill, user.add, login.failed"},
        "actor": {"type": "string", "description": "who acted: a user, cli:<login> for the command line; "
                                                   "names longer than 100 characters are cut"},
        "target": {"type": ["string", "null"], "description": "what it acted on: a job id, a user name..."},
        "detail": {"type": "object", "description": "more of what happened, by action"}}},
})


def _job_event(kind: str, data: str) -> dict[str, Any]:
    """One event of ``GET /job/events``: as ``_event``, with that stream's ids."""
    event = _event(kind, data)
    event["properties"]["id"] = _ref("JobEventId")
    return event


_SCHEMAS.update({"JobEvent": _job_event("job", "JobSummary"), "JobLogEvent": _job_event("log", "LogRecord"),
                 "ResetEvent": _job_event("reset", "Reset")})

_HEADERS = {
    "X-Request-Id": {"description": "this request's id, the `_id` of the reply", "required": True,
                     "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"}},
    "WWW-Authenticate": {"description": "Basic", "required": True, "schema": {"type": "string"}},
    "Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "integer", "minimum": 0}},
    "Idempotent-Replayed": {"description": "`true` when an idempotency key was used already: the reply is the "
                                           "first job's, nothing was enqueued", "required": False,
                            "schema": {"type": "string", "enum": ["true"]}},
}

_STATUS = {400: "bad argument, id or body", 401: "no or wrong credentials (WWW-Authenticate: Basic)",
           403: "not permitted, or a cross-site request", 404: "unknown job, qual_name, schedule or user",
           409: "the job's state does not allow this (users: the name is taken, or the last active admin)", 413: "body too large",
           415: "a body that changes something must be application/json",
           429: "too many failed logins, or too many open streams and long polls (Retry-After)",
           503: "database unavailable"}
_STATUS_HEADERS = {401: ("WWW-Authenticate",), 429: ("Retry-After",)}
_UNSAFE = ("post", "put", "delete")

_EVENT_TEXT = {"state": "`state` (the job, whenever it changed)", "log": "`log` (each log record once, in seq order)",
               "close": "a last `close` (why the stream ends)",
               "job": "`job` (a job's summary, whenever it changed)",
               "job_log": "`log` (the log records of the jobs in ids, with logs=true)",
               "reset": "`reset` (re-read from the REST routes)"}
_STREAM = ("; the schema describes one event (as OpenAPI 3.2's itemSchema does), whose `data` is JSON. The first "
           "event also carries `retry: 2000`; `: keepalive` comments follow 15 s of silence. Resume with the "
           "Last-Event-ID header.")


def path_template(pattern: str) -> str:
    """``/job/kill/([^/]+)`` -> ``/job/kill/{id}``; the prefix's own route ``""`` -> ``/``."""
    return re.sub(r"\([^)]*\)", "{id}", pattern) or "/"


def operation_id(path: str, method: str) -> str:
    """``/job/kill/{id}``, ``put`` -> ``put_job_kill_by_id``: unique per path and method (``/``: ``get_index``)."""
    words = ["by_id" if part == "{id}" else part for part in re.split(r"[/.]", path) if part]
    return "_".join([method, *(words or ["index"])])


def operations(routes: list[tuple[str, type]]) -> list[tuple[str, str, Op]]:
    """(path template, method, ``Op``) of every operation the handlers of ``routes`` declare, in route order."""
    return [(path_template(pattern), method, op) for pattern, handler in routes
            for method, op in getattr(handler, "api", {}).items()]


def _headers(*names: str) -> dict[str, Any]:
    """``X-Request-Id`` (every reply has it) and the headers of ``_HEADERS`` named."""
    return {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-Id", *names)}


def _reply(op: Op) -> dict[str, Any]:
    data = _ref(op.reply)
    if not op.envelope:
        schema = data
    else:
        envelope = "Page" if op.paginated else "Reply"
        many = op.paginated or op.array
        schema = {"allOf": [_ref(envelope), {"type": "object", "properties": {
            "data": {"type": "array", "items": data} if many else data}}]}
    content: dict[str, Any] = {} if op.sse and not op.sse_optional else {op.media: {"schema": schema}}
    description = "OK"
    if op.sse:
        events = [_ref(_EVENTS[kind]) for kind in op.events]
        content["text/event-stream"] = {"schema": {"oneOf": events}}
        description = (f"{'with follow: ' if op.sse_optional else ''}Server-Sent Events: "
                       f"{', '.join(_EVENT_TEXT[kind] for kind in op.events)}{_STREAM}")
    return {"description": description, "headers": _headers(*op.reply_headers), "content": content}


def _param_schema(param: Param) -> dict[str, Any]:
    schema = dict(_TYPES[param.type])
    if param.default is not None:
        schema["default"] = param.default
    if param.minimum is not None:
        schema["minimum"] = param.minimum
    if param.maximum is not None:
        schema["maximum"] = param.maximum
    if param.pattern is not None:
        schema["pattern"] = param.pattern
    schema.update(param.schema or {})
    return schema


def _parameter(param: Param) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": param.name, "in": "query", "required": param.required,
                                 "description": param.description + " (also accepted in a JSON body)"}
    if param.type in ("object", "array"):  # JSON text, not form-style key=value pairs
        parameter["content"] = {"application/json": {"schema": _param_schema(param)}}
    else:
        parameter["schema"] = _param_schema(param)
    return parameter


def _operation(op: Op, path: str, method: str) -> dict[str, Any]:
    parameters = []
    if "{id}" in path:
        parameters.append({"name": "id", "in": "path", "required": True, "schema": _ref(op.id)})
    parameters.extend(_parameter(param) for param in op.params)
    parameters.extend({"name": param.name, "in": "header", "required": param.required,
                       "description": param.description, "schema": _param_schema(param)} for param in op.headers)
    if op.sse and any(param.name == "last_event_id" for param in op.params):
        parameters.append({"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "resume after this event id (what EventSource sends by itself)"})
    responses: dict[str, Any] = {"200": _reply(op)}
    implied = {413, 503} | ({401, 429} if op.auth else set()) | ({403, 415} if method in _UNSAFE else set()) | (
        {429} if op.long or op.sse else set())
    for status in sorted(set(op.errors) | implied):
        responses[str(status)] = {
            "description": _STATUS[status],
            "headers": _headers(*_STATUS_HEADERS.get(status, ())),
            "content": {"application/json": {"schema": _ref("Error")}}}
    operation: dict[str, Any] = {"operationId": operation_id(path, method), "summary": op.summary,
                                 "tags": list(op.tags), "parameters": parameters, "responses": responses}
    if op.description:
        operation["description"] = op.description
    if op.params:
        body = {"type": "object", "properties": {p.name: _param_schema(p) for p in op.params}}
        media = ("application/json", "application/x-www-form-urlencoded") if op.form else ("application/json",)
        operation["requestBody"] = {"required": False, "content": {m: {"schema": body} for m in media}}
    if not op.auth:
        operation["security"] = []
    return operation


def _link(paths: dict[str, Any], sources: dict[str, list[dict[str, Any]]]) -> None:
    """Link the replies of ``sources`` to every operation taking a job id.

    ``sources`` maps where a reply holds the id (``data`` for an ``Id``,
    ``data/_id`` for a ``Job``) to the operations whose replies do.
    """
    targets = [operation for path, item in paths.items() if "{id}" in path for operation in item.values()
               if operation["parameters"][0]["schema"] == _ref("Id")]
    for pointer, operations in sources.items():
        links = {target["operationId"]: {"operationId": target["operationId"],
                                         "parameters": {"id": f"$response.body#/{pointer}"},
                                         "description": f"{target['summary']}: the job of this reply"}
                 for target in targets}
        for operation in operations:
            operation["responses"]["200"]["links"] = links


def build(routes: list[tuple[str, type]], prefix: str = "/api/v1") -> dict[str, Any]:
    """The OpenAPI document for ``routes`` (each handler's ``api``), served under ``prefix``."""
    paths: dict[str, Any] = {}
    sources: dict[str, list[dict[str, Any]]] = {"data": [], "data/_id": []}
    for path, method, op in operations(routes):
        paths.setdefault(path, {})[method] = operation = _operation(op, path, method)
        if op.envelope and not (op.paginated or op.array) and op.reply in ("Id", "Job"):
            sources["data" if op.reply == "Id" else "data/_id"].append(operation)
    _link(paths, sources)
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobdeck", "version": "1", "description": (
            "Enqueue jobs, follow them live as Server-Sent Events, control them. Every route is also "
            "mounted under /core4/api/v1. Arguments come from the query string or a JSON body.")},
        "servers": [{"url": prefix}],
        "security": [{"basic": []}, {"bearer": []}, {"cookie": []}],
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "token from POST /login"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "jobdeck_token"}},
            "schemas": _SCHEMAS,
            "headers": _HEADERS},
        "paths": paths,
    }
