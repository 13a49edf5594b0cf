"""The OpenAPI 3.1 description, built from the routes and the ``api`` each handler declares.

Every handler lists its operations as ``api = {"get": Op(...), ...}``; the
document is generated from ``handlers.app.ROUTES``, so a route cannot exist
without a description (a test checks both directions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Op", "Param", "build", "path_template", "PAGE_PARAMS", "LIST_PARAMS"]


@dataclass(frozen=True)
class Param:
    """One argument: from the query string or, equally, the JSON body."""

    name: str
    type: str
    description: str
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class Op:
    """One operation of a route."""

    summary: str
    params: tuple[Param, ...] = ()
    reply: str = "Any"
    paginated: bool = False
    sse: bool = False
    sse_optional: bool = False
    errors: tuple[int, ...] = (400, 401, 403, 404)
    auth: bool = True
    description: str = ""
    tags: tuple[str, ...] = field(default=("jobs",))
    #: Holds the connection open (a stream, a long poll, a wait): capped per user (429).
    long: bool = False


PAGE_PARAMS = (
    Param("page", "integer", "0-based page; negative counts from the end (-1 = last)", default=0),
    Param("per_page", "integer", "items per page, 1-1000", default=10),
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

_SCHEMAS: dict[str, Any] = {
    "Id": {"type": "string", "pattern": "^[0-9a-f]{24}$", "description": "a job id"},
    "Time": {"type": "string", "format": "date-time", "description": "ISO-8601 UTC, e.g. 2026-11-24T10:00:00.123Z"},
    "Job": {"type": "object", "description": "a job document (SPEC 3.3); `journal` tells where it is",
            "properties": {
                "_id": {"$ref": "#/components/schemas/Id"}, "qual_name": {"type": "string"},
                "args": {"type": "object"},
                "state": {"enum": ["pending", "running", "deferred", "failed", "complete", "error",
                                  "inactive", "killed"]},
                "priority": {"type": "integer"}, "attempts": {"type": "integer"},
                "attempts_left": {"type": "integer"}, "trial": {"type": "integer"},
                "error_time": {"type": "number"}, "defer_time": {"type": "number"},
                "defer_max": {"type": "number"}, "wall_time": {"type": ["number", "null"]},
                "query_at": {"$ref": "#/components/schemas/Time"},
                "enqueued": {"type": "object"}, "started_at": {"type": ["string", "null"]},
                "finished_at": {"type": ["string", "null"]}, "runtime": {"type": ["number", "null"]},
                "prog": {"type": "object", "properties": {"value": {"type": "number"},
                                                          "message": {"type": ["string", "null"]}}},
                "locked": {"type": ["object", "null"]}, "last_error": {"type": ["object", "null"]},
                "result": {}, "killed_at": {"type": ["string", "null"]},
                "removed_at": {"type": ["string", "null"]}, "tags": {"type": "array"},
                "version": {"type": "integer"}, "journal": {"type": "boolean"}}},
    "LogRecord": {"type": "object", "properties": {
        "job_id": {"$ref": "#/components/schemas/Id"}, "seq": {"type": "integer"},
        "created": {"$ref": "#/components/schemas/Time"}, "level": {"type": "string"},
        "message": {"type": "string"}, "qual_name": {"type": "string"}, "trial": {"type": "integer"},
        "exception": {"type": "string"}, "stream": {"type": "string"}}},
    "RegistryEntry": {"type": "object", "properties": {
        "_id": {"type": "string"}, "qual_name": {"type": "string"}, "doc": {"type": "string"},
        "author": {"type": ["string", "null"]}, "schema": {"type": "object"}, "tags": {"type": "array"},
        "schedule": {"type": ["string", "null"]}, "valid": {"type": "boolean"},
        "defaults": {"type": "object"}, "updated_at": {"$ref": "#/components/schemas/Time"}}},
    "Stats": {"type": "object"},
    "Worker": {"type": "object", "properties": {
        "_id": {"type": "string"}, "host": {"type": "string"}, "pid": {"type": "integer"},
        "heartbeat": {"$ref": "#/components/schemas/Time"}, "slots": {"type": "integer"},
        "running": {"type": "array"}, "alive": {"type": "boolean"}}},
    "User": {"type": "object", "properties": {
        "name": {"type": "string"}, "roles": {"type": "array"}, "perms": {"type": "array"},
        "active": {"type": "boolean"}, "admin": {"type": "boolean"}}},
    "Token": {"type": "object", "properties": {"name": {"type": "string"}, "token": {"type": "string"},
                                               "expires": {"$ref": "#/components/schemas/Time"}}},
    "Health": {"type": "object", "properties": {"database": {"type": "string"}, "ping_ms": {"type": "number"},
                                                "uptime": {"type": "number"}}},
    "Any": {},
    "Reply": {"type": "object", "required": ["_id", "code", "message", "timestamp", "data"], "properties": {
        "_id": {"type": "string", "description": "request id (also the X-Request-Id header)"},
        "code": {"type": "integer"}, "message": {"type": "string"},
        "timestamp": {"$ref": "#/components/schemas/Time"}, "data": {}}},
    "Page": {"allOf": [{"$ref": "#/components/schemas/Reply"}, {"type": "object", "properties": {
        "total_count": {"type": "integer"}, "count": {"type": "integer"}, "page": {"type": "integer"},
        "page_count": {"type": "integer"}, "per_page": {"type": "integer"}}}]},
    "Error": {"type": "object", "required": ["_id", "code", "message", "timestamp", "error"], "properties": {
        "_id": {"type": "string"}, "code": {"type": "integer"}, "message": {"type": "string"},
        "timestamp": {"$ref": "#/components/schemas/Time"},
        "error": {"type": "string", "description": "what was wrong"}, "details": {"type": "object"}}},
}

_STATUS = {400: "bad argument, id or body", 401: "no or wrong credentials (WWW-Authenticate: Basic)",
           403: "not permitted", 404: "unknown job or qual_name", 405: "unknown action or method",
           409: "the job's state does not allow this", 413: "body too large",
           415: "a body that changes something must be application/json",
           429: "too many failed logins, or too many open streams and long polls (Retry-After)",
           503: "database unavailable"}
_UNSAFE = ("post", "put", "delete")

_SSE = {"text/event-stream": {"schema": {"type": "string", "description": (
    "Server-Sent Events: `retry: 2000`, then events `id: <version>.<seq>`, `event: state|log|close`, "
    "`data: <JSON>` — `state` carries a Job, `log` a LogRecord, `close` {state, events: {state, log}}; "
    "`: keepalive` comments after 15 s of silence. Resume with the Last-Event-ID header.")}}}


def path_template(pattern: str) -> str:
    """``/job/kill/([^/]+)`` -> ``/job/kill/{id}``."""
    return re.sub(r"\([^)]*\)", "{id}", pattern)


def _reply(op: Op) -> dict[str, Any]:
    data = {"$ref": f"#/components/schemas/{op.reply}"}
    envelope = "Page" if op.paginated else "Reply"
    schema = {"allOf": [{"$ref": f"#/components/schemas/{envelope}"},
                        {"type": "object", "properties": {"data": {"type": "array", "items": data}
                                                          if op.paginated else data}}]}
    content: dict[str, Any] = {} if op.sse and not op.sse_optional else {"application/json": {"schema": schema}}
    if op.sse:
        content.update(_SSE)
    return {"description": "OK", "content": content}


def _operation(op: Op, path: str, method: str) -> dict[str, Any]:
    parameters = []
    if "{id}" in path:
        parameters.append({"name": "id", "in": "path", "required": True,
                           "schema": {"$ref": "#/components/schemas/Id"}})
    for param in op.params:
        schema = dict(_TYPES[param.type])
        if param.default is not None:
            schema["default"] = param.default
        parameters.append({"name": param.name, "in": "query", "required": param.required,
                           "description": param.description + " (also accepted in a JSON body)",
                           "schema": schema})
    responses: dict[str, Any] = {"200": _reply(op)}
    implied = ((401,) if op.auth else ()) + ((403, 415) if method in _UNSAFE else ()) + (
        (429,) if op.long or op.sse else ()) + (503,)
    for status in sorted(set(op.errors + implied)):
        responses[str(status)] = {"description": _STATUS[status], "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation: dict[str, Any] = {"summary": op.summary, "tags": list(op.tags), "parameters": parameters,
                                 "responses": responses}
    if op.description:
        operation["description"] = op.description
    if op.params:
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {p.name: _TYPES[p.type] for p in op.params}}}}}
    if not op.auth:
        operation["security"] = []
    return operation


def build(routes: list[tuple[str, type]], prefix: str = "/api/v1") -> dict[str, Any]:
    """The OpenAPI document for ``routes`` (each handler's ``api``), served under ``prefix``."""
    paths: dict[str, Any] = {}
    for pattern, handler in routes:
        path = path_template(pattern)
        for method, op in getattr(handler, "api", {}).items():
            paths.setdefault(path, {})[method] = _operation(op, path, method)
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
            "schemas": _SCHEMAS},
        "paths": paths,
    }
