"""The registry: which job classes exist, who offers them, their argument schemas, and argument checking.

Every jobdeck process ``discover``s the job classes of its configured
packages (``jobs`` always) and ``sync``s them to the ``registry`` collection,
one entry per class. Enqueue accepts only valid registered qual_names, and
checks the arguments against the stored schema, so a request never makes the
service import a module it names.

**Offers.** An entry lists the processes that offer its class in
``offered_by``, one ``{"id", "kind", "host", "at"}`` per ``Provider``:

- a **worker** (``kind: "worker"``, its worker id) offers its classes while it
  is alive, judged as the reaper judges it (``core.lease``): its ``worker``
  document's heartbeat is younger than ``lease_seconds``. It withdraws its
  offer when it stops (``withdraw``). A crashed worker's offer expires with
  its heartbeat: once a lease, workers drop the offers of dead workers
  (``expire_offers``, next to the reaper), and a worker that was cut off that
  long offers its classes again when the database answers;
- a **server** (``jobdeck serve``; ``kind: "server"``, id
  ``server:<host>:<port>``) has no heartbeat: its offer counts until it stops,
  or until a server of the same host and port starts with other classes;
- the **command line** (``jobdeck enqueue``, ``jobdeck jobs``) registers the
  classes it finds without offering them (``sync`` without a provider): it
  adds classes never registered and makes unavailable ones valid again, and
  changes nothing else.

A process only ever changes its own offer, so one with other job packages
(another host, another version) never makes another's classes unavailable.
An entry is ``valid`` from its registration until it has no offer left: its
last provider withdrew it (stopped, or started again without the class), or
the offers left all belonged to dead workers. Only then does the class become
unavailable, and a WARNING says which. An entry no process has offered yet
(registered by the command line) stays valid; one written by an older jobdeck
(no ``offered_by``) counts as offered by nobody.

**Enqueue.** A qual_name never registered is an "unknown job" and an
unavailable class "no longer available" (both ``NotFound``). A valid class is
accepted even when no live worker offers it: the job waits, pending, until a
worker with the class claims it. ``list_entries`` and ``list_page`` show, in
place of ``offered_by``, ``workers``: the live workers offering each class.

**Import failures.** ``discover`` returns a ``Discovery``: the classes found,
and ``import_errors``, one ``{"module", "error"}`` per package or module that
failed to import, each also logged as one ERROR line (the traceback at DEBUG).
A worker keeps its own in its ``worker`` document (``import_errors``;
``worker_import_errors`` lists those of the live workers), a server reports
its own in ``GET /health``.

``get_valid`` may take the server's cache of entries (``core.cache``): a
class that became unavailable in this process is refused at once, in another
process (a worker stopping) within the cache's ``stale_seconds`` (2 s;
milliseconds while the hub's change stream runs).
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import os
import pkgutil
import socket
import sys
import types
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable

from pymongo import UpdateOne

from core import flow
from core.errors import BadArgument, NotFound
from core.job import OPTIONS, Job
from core.listing import (QUERY_TIMEOUT_MS, Page, check_filter, check_sort, combine, paginate, search_filter,
                          time_limited)
from core.permissions import EXECUTE, is_admin, readable_filter

if TYPE_CHECKING:
    from core.cache import Cache
    from core.db import Database

__all__ = ["Discovery", "Provider", "discover", "add_import_paths", "schema", "sync", "withdraw", "expire_offers", "get_valid",
           "check_args", "args_from_text", "list_entries", "list_page", "worker_import_errors", "ALWAYS", "REGISTRY_FIELDS"]

log = logging.getLogger(__name__)

ALWAYS = "jobs"
_TYPES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict"}


class Discovery(dict[str, type[Job]]):
    """The job classes ``discover`` found, by qual_name, and what it could not import."""

    def __init__(self) -> None:
        super().__init__()
        #: ``{"module": name, "error": "Exception: message"}`` per package or module that failed to import.
        self.import_errors: list[dict[str, str]] = []


@dataclass(frozen=True)
class Provider:
    """A process that offers job classes: a worker, alive while its heartbeat is, or a server."""

    id: str
    kind: str  # "worker" or "server"
    host: str

    @classmethod
    def server(cls, port: int) -> Provider:
        """The server of this host listening on ``port``."""
        host = socket.gethostname()
        return cls(f"server:{host}:{port}", "server", host)

    def offer(self) -> dict[str, Any]:
        """Its element of ``offered_by``, as an expression stamped with the database's clock."""
        return {"id": {"$literal": self.id}, "kind": {"$literal": self.kind}, "host": {"$literal": self.host},
                "at": "$$NOW"}


def discover(packages: Iterable[str] = (), *, paths: Iterable[str] = (), log_errors: bool = True) -> Discovery:
    """Import ``jobs`` and ``packages`` with their submodules; return their job classes by qual_name.

    ``paths`` (``job_paths``) are searched first, by this process and by the
    job processes it starts (see ``add_import_paths``). A package or module
    that fails to import is skipped (its jobs are left out) and listed in the
    result's ``import_errors``. Each is logged as one ERROR line naming it and
    the exception, with the traceback at DEBUG, unless ``log_errors`` is false
    (the command line prints them itself).
    """
    add_import_paths(paths)
    found = Discovery()
    failed: dict[str, str] = {}
    for package_name in dict.fromkeys([ALWAYS, *packages]):
        for module in _modules(package_name, failed, log_errors):
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if _is_job(cls, module.__name__):
                    found[cls.qual_name()] = cls
    found.import_errors = [{"module": name, "error": error} for name, error in failed.items()]
    return found


def add_import_paths(paths: Iterable[str]) -> None:
    """Put ``paths`` first on this process's import path, and on ``PYTHONPATH`` for its children.

    A job process (spawned, or the fork server's launcher) is a fresh
    interpreter: it finds the job's module through the environment.
    """
    paths = [path for path in paths if path not in sys.path]
    if not paths:
        return
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    importlib.invalidate_caches()


def _modules(package_name: str, failed: dict[str, str], log_errors: bool) -> list[types.ModuleType]:
    try:
        package = importlib.import_module(package_name)
    except Exception as exc:  # noqa: BLE001 - a broken job package must not stop the service
        _failed(failed, package_name, package_name, exc, log_errors)
        return []
    modules = [package]

    def subpackage_failed(name: str) -> None:  # walk_packages imports subpackages to walk them
        _failed(failed, name, package_name, sys.exc_info()[1], log_errors)

    for info in pkgutil.walk_packages(getattr(package, "__path__", []), package_name + ".",
                                      onerror=subpackage_failed):
        if info.name in failed:
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except Exception as exc:  # noqa: BLE001
            _failed(failed, info.name, package_name, exc, log_errors)
    return modules


def _failed(failed: dict[str, str], name: str, package_name: str, exc: BaseException | None,
            log_errors: bool) -> None:
    """Record (and log) that module ``name`` of ``package_name`` failed to import with ``exc``."""
    if name in failed:
        return
    lines = f"{type(exc).__name__}: {exc}".strip().splitlines() or ["?"]
    failed[name] = lines[0][:300]
    if log_errors:
        what = f"package {name}" if name == package_name else f"module {name} of package {package_name}"
        log.error("cannot import job %s: %s; its jobs are left out", what, failed[name])
        log.debug("why job module %s cannot be imported", name, exc_info=exc)


def _is_job(cls: type, module_name: str) -> bool:
    return (issubclass(cls, Job) and cls is not Job and cls.__module__ == module_name
            and not cls.__name__.startswith("_") and not inspect.isabstract(cls)
            and cls.execute is not Job.execute)


def _type_name(annotation: Any) -> tuple[str, bool]:
    """(jobdeck type name, nullable) of a type hint."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any", False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) == 1:
            return _type_name(members[0])[0], nullable
        return "any", nullable
    return _TYPES.get(origin or annotation, "any"), False


def _hints(function: Any) -> dict[str, Any]:
    """The resolved type hints of ``function``; one that cannot be resolved means "any"."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - e.g. a name imported under TYPE_CHECKING only
        pass
    # Resolve hint by hint, so that one unresolvable hint does not make every
    # argument "any" (with postponed annotations, all hints are strings).
    hints: dict[str, Any] = {}
    namespace = getattr(function, "__globals__", {})
    for name, annotation in getattr(function, "__annotations__", {}).items():
        probe = types.SimpleNamespace(__annotations__={name: annotation}, __globals__=namespace)
        try:
            hints.update(typing.get_type_hints(probe))
        except Exception:  # noqa: BLE001
            hints[name] = Any
    return hints


def schema(cls: type[Job]) -> dict[str, Any]:
    """The argument schema of ``cls.execute``: ``{"params": [...], "extra": bool}``.

    Each param: ``name``, ``type`` (str, int, float, bool, list, dict, any),
    ``nullable``, ``required``, and ``default`` when it has a JSON default.
    ``extra`` is true when ``execute`` takes ``**kwargs``.
    """
    signature = inspect.signature(cls.execute)
    hints = _hints(cls.execute)
    params, extra = [], False
    for name, param in list(signature.parameters.items())[1:]:  # skip self
        if param.kind is param.VAR_KEYWORD:
            extra = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
            continue
        kind, nullable = _type_name(hints.get(name, param.annotation))
        entry: dict[str, Any] = {"name": name, "type": kind, "nullable": nullable,
                                 "required": param.default is param.empty}
        if param.default is not param.empty:
            try:
                json.dumps(param.default)
                entry["default"] = param.default
                entry["nullable"] = nullable or param.default is None
            except (TypeError, ValueError):
                pass
        params.append(entry)
    return {"params": params, "extra": extra}


def _entry(cls: type[Job], now: datetime) -> dict[str, Any]:
    return {
        "_id": cls.qual_name(), "qual_name": cls.qual_name(), "doc": inspect.getdoc(cls) or "",
        "author": cls.author, "schema": schema(cls), "tags": list(cls.tags),
        "schedule": cls.schedule, "schedule_args": dict(cls.schedule_args or {}),
        "schedule_tz": cls.schedule_tz, "unique": bool(cls.unique),
        "defaults": {option: getattr(cls, option) for option in OPTIONS},
        "valid": True, "updated_at": now,
    }


async def sync(db: Database, classes: dict[str, type[Job]], *, provider: Provider | None = None) -> dict[str, int]:
    """Register ``classes``; with ``provider``, record that it offers them, and only them.

    Without ``provider`` (the command line): classes never registered are
    added, unavailable ones made valid again, valid ones left as they are.
    With it, every entry of ``classes`` is written from this process's class
    and carries its renewed offer; classes it offered before but no longer
    does lose its offer, and become unavailable if that was their last.
    A WARNING names each class whose stored schema differs from this
    process's (another version of its code). Never invalidates a class that
    another process offers.

    Returns ``{"valid": len(classes), "invalidated": n}``. Raises
    ``PyMongoError``; running it again is safe.
    """
    now = datetime.now(timezone.utc)
    entries = {cls.qual_name(): _entry(cls, now) for cls in classes.values()}
    names = list(entries)
    stored = await db.registry.find({"_id": {"$in": names}, "valid": True}, {"schema": 1}).to_list()
    for entry in stored:
        if entry.get("schema") != entries[entry["_id"]]["schema"]:
            log.warning("job class %s: its arguments differ from the registered ones (another version of its "
                        "code?); the %s ones apply", entry["_id"],
                        "registered" if provider is None else f"{provider.id}'s")
    requests = []
    for name, entry in entries.items():
        fields = {key: value for key, value in entry.items() if key != "_id"}
        if provider is None:
            requests.append(UpdateOne({"_id": name}, {"$setOnInsert": {**fields, "offered_by": []}}, upsert=True))
            requests.append(UpdateOne({"_id": name, "valid": {"$ne": True}}, {"$set": fields}))
        else:
            others = {"$filter": {"input": {"$ifNull": ["$offered_by", []]}, "as": "offer",
                                  "cond": {"$ne": ["$$offer.id", {"$literal": provider.id}]}}}
            # Values go in as literals: a "$" in a doc string or a default is not a field path.
            requests.append(UpdateOne({"_id": name}, [{"$set": {
                **{key: {"$literal": value} for key, value in fields.items()},
                "offered_by": {"$concatArrays": [others, [provider.offer()]]}}}], upsert=True))
    if requests:
        await db.registry.bulk_write(requests)
    invalidated = [] if provider is None else await _withdraw(db, provider.id, keep=names)
    db.changed("registry")
    return {"valid": len(entries), "invalidated": len(invalidated)}


async def withdraw(db: Database, provider_id: str) -> list[str]:
    """Take back ``provider_id``'s offer of every class; return the classes that became unavailable.

    Raises ``PyMongoError``; running it again is safe.
    """
    unavailable = await _withdraw(db, provider_id, keep=[])
    db.changed("registry")
    return unavailable


async def _withdraw(db: Database, provider_id: str, *, keep: list[str]) -> list[str]:
    """Remove ``provider_id``'s offer from the classes not in ``keep``; return those left unavailable."""
    names = [entry["_id"] for entry in await db.registry.find(
        {"offered_by.id": provider_id, "_id": {"$nin": keep}}, {"_id": 1}).to_list()]
    if not names:
        return []
    await db.registry.update_many({"_id": {"$in": names}}, {"$pull": {"offered_by": {"id": provider_id}}})
    orphans = await db.registry.find({"_id": {"$in": names}, "valid": True, "offered_by": {"$size": 0}},
                                     {"_id": 1}).to_list()
    unavailable = []
    for entry in orphans:
        # Conditional: a process that offered the class meanwhile keeps it valid.
        result = await db.registry.update_one({"_id": entry["_id"], "valid": True, "offered_by": {"$size": 0}},
                                              {"$set": {"valid": False, "updated_at": datetime.now(timezone.utc)}})
        if result.modified_count:
            unavailable.append(entry["_id"])
            log.warning("job class %s is no longer available: %s withdrew the last offer of it; enqueue refuses "
                        "it until a process with the class offers it again", entry["_id"], provider_id)
    return unavailable


async def expire_offers(db: Database, lease_seconds: float, *, now: datetime | None = None) -> list[str]:
    """Drop the offers of dead workers; return the classes that became unavailable for want of any other.

    A worker is dead when its document is gone or its heartbeat is older
    than ``lease_seconds`` by the database's clock (``now``, read unless
    given). Each entry is written only if its offers are still those read,
    so an offer made meanwhile is never lost; an entry left with a live
    offer but marked unavailable is made valid again. A malformed entry is
    logged and skipped.
    """
    now = now or await db.server_time()
    cutoff = now - timedelta(seconds=lease_seconds)
    entries = await db.majority(db.registry).find(
        {"$or": [{"offered_by.kind": "worker"}, {"offered_by": {"$exists": False}, "valid": True}]},
        {"offered_by": 1, "valid": 1}).to_list()
    ids = {offer.get("id") for entry in entries for offer in entry.get("offered_by") or []
           if isinstance(offer, dict) and offer.get("kind") == "worker"}
    alive = set()
    if ids:
        alive = {worker["_id"] for worker in await db.majority(db.worker).find(
            {"_id": {"$in": list(ids)}, "heartbeat": {"$gte": cutoff}}, {"_id": 1}).to_list()}
    unavailable: list[str] = []
    changed = False
    for entry in entries:
        try:
            offers = entry.get("offered_by")
            kept = [offer for offer in offers or [] if offer["kind"] != "worker" or offer["id"] in alive]
            if offers is not None and kept == offers and entry.get("valid") == bool(kept):
                continue
            result = await db.registry.update_one(
                {"_id": entry["_id"], "offered_by": {"$exists": False} if offers is None else offers},
                {"$set": {"offered_by": kept, "valid": bool(kept), "updated_at": now}})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("cannot check the offers of job class %s, its registry entry is malformed (%r); skipping it",
                      entry.get("_id"), exc)
            continue
        changed = changed or bool(result.modified_count)
        if result.modified_count and entry.get("valid") and not kept:
            unavailable.append(entry["_id"])
            gone = sorted({offer["id"] for offer in offers or []})
            log.warning("job class %s is no longer available: no live process offers it (%s); enqueue refuses "
                        "it until a process with the class offers it again", entry["_id"],
                        f"the workers {', '.join(gone)} are gone" if gone else "it was registered by an older "
                        "jobdeck")
    if changed:
        db.changed("registry")
    return unavailable


async def get_valid(db: Database, qual_name: Any, *, cache: Cache | None = None) -> dict[str, Any]:
    """The registry entry of a job that may be enqueued; raises ``NotFound`` or ``BadArgument``.

    A valid class is returned whether or not a live worker offers it (the job
    then waits). With ``cache`` the entry may come from it (see the module
    docstring); it must not be changed.
    """
    if not isinstance(qual_name, str) or not qual_name:
        raise BadArgument("qual_name must be a non-empty string, e.g. jobs.example.DummyJob")
    if cache is None:
        entry = await db.registry.find_one({"_id": qual_name})
    else:
        entry = await cache.get(qual_name, lambda: db.registry.find_one({"_id": qual_name}))
    if entry is None:
        raise NotFound(f"unknown job {qual_name!r}; 'jobdeck jobs' or GET /job/list shows the known ones")
    if not entry.get("valid"):
        raise NotFound(f"job {qual_name!r} is no longer available: no worker or server offers it any more "
                       "(they stopped, or run without its job package)")
    return entry


async def list_entries(db: Database, *, valid_only: bool = True, lease_seconds: float = 30.0
                       ) -> list[dict[str, Any]]:
    """All registry entries, by qual_name, each with ``workers`` (see ``list_page``)."""
    query = {"valid": True} if valid_only else {}
    entries = await db.registry.find(query).sort("_id", 1).to_list()
    await _add_workers(db, entries, lease_seconds, hosts=True)
    return entries


async def _add_workers(db: Database, entries: list[dict[str, Any]], lease_seconds: float, *, hosts: bool) -> None:
    """Replace each entry's ``offered_by`` by ``workers``: ``{"id", "host"}`` of its live workers; add ``paused``.

    Alive means a heartbeat within ``lease_seconds``; ``host`` only with ``hosts``.
    """
    ids = {offer.get("id") for entry in entries for offer in entry.get("offered_by") or []
           if isinstance(offer, dict) and offer.get("kind") == "worker"}
    live: dict[Any, Any] = {}
    if ids:
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=lease_seconds)
        with time_limited("finding the workers of the jobs"):
            live = {worker["_id"]: worker.get("host") for worker in await db.worker.find(
                {"_id": {"$in": sorted(ids, key=str)}, "heartbeat": {"$gte": cutoff}}, {"host": 1},
                max_time_ms=QUERY_TIMEOUT_MS).to_list()}
    paused = await flow.read(db, max_time_ms=QUERY_TIMEOUT_MS)
    for entry in entries:
        entry["paused"] = paused.paused(entry["_id"])
        offers = entry.pop("offered_by", None) or []
        entry["workers"] = [{"id": offer["id"], "host": live[offer["id"]]} if hosts else {"id": offer["id"]}
                            for offer in offers if isinstance(offer, dict) and offer.get("kind") == "worker"
                            and offer.get("id") in live]


async def worker_import_errors(db: Database, lease_seconds: float) -> list[dict[str, Any]]:
    """The job modules live workers could not import: ``{"worker", "host", "module", "error"}`` each."""
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=lease_seconds)
    found = []
    with time_limited("listing the workers' import errors"):
        async for worker in db.worker.find({"heartbeat": {"$gte": cutoff}, "import_errors.0": {"$exists": True}},
                                           {"host": 1, "import_errors": 1}, max_time_ms=QUERY_TIMEOUT_MS):
            for error in worker["import_errors"]:
                found.append({"worker": worker["_id"], "host": worker.get("host"), **error})
    return found


def _matches(kind: str, value: Any) -> bool:
    if kind == "any":
        return True
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])


_INT64 = (-(2 ** 63), 2 ** 63 - 1)
_MAX_NESTING = 32


def _unstorable(value: Any, depth: int = 1) -> str | None:
    """Why ``value`` cannot be stored in MongoDB and sent back as JSON; ``None`` if it can.

    Larger integers make the BSON encoder fail (which would be a 500), and
    NaN or infinities would make every reply holding the job invalid JSON.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        return None if _INT64[0] <= value <= _INT64[1] else "holds an integer beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"holds {value!r}, not a finite number"
    if isinstance(value, (list, dict)):
        if depth > _MAX_NESTING:
            return f"is nested deeper than {_MAX_NESTING} levels"
        for item in value.values() if isinstance(value, dict) else value:
            if trouble := _unstorable(item, depth + 1):
                return trouble
    return None


_ARTICLES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
             "list": "a list", "dict": "an object"}


def check_args(entry: dict[str, Any], args: Any) -> dict[str, Any]:
    """Check ``args`` against a registry entry's schema; return them.

    Raises ``BadArgument`` naming every missing, unknown or mistyped argument.
    """
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadArgument(f"args must be an object of argument names and values, got {type(args).__name__}")
    spec = entry["schema"]
    params = {p["name"]: p for p in spec["params"]}
    problems = []
    missing = [name for name, p in params.items() if p["required"] and name not in args]
    if missing:
        problems.append("missing " + ", ".join(repr(m) for m in missing))
    unknown = [name for name in args if name not in params]
    if unknown and not spec.get("extra"):
        accepted = ", ".join(params) or "none"
        problems.append(f"unknown {', '.join(repr(u) for u in unknown)} (accepted: {accepted})")
    for name, value in args.items():
        param = params.get(name)
        if param is not None and not (value is None and param["nullable"]) and not _matches(param["type"], value):
            problems.append(f"{name!r} must be {_ARTICLES.get(param['type'], param['type'])}, got {value!r}"[:200])
        elif trouble := _unstorable(value):
            problems.append(f"{name!r} {trouble}")
    if problems:
        raise BadArgument(f"bad arguments for {entry['_id']}: " + "; ".join(problems))
    try:
        json.dumps(args)
    except (TypeError, ValueError) as exc:
        raise BadArgument(f"args must be JSON: {exc}") from None
    return args


def args_from_text(entry: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """Arguments typed on a command line (``NAME=VALUE``), read by the job's schema.

    A ``str`` argument takes the text as it is (``month=202611`` is the string
    "202611"); any other is read as JSON (``sleep=2``, ``dry_run=true``,
    ``ids=[1,2]``), and kept as text if it is not JSON, so that ``check_args``
    names the argument and the type it expected. An argument of type "any",
    or one the schema does not name, is JSON if it parses and text otherwise.
    """
    kinds = {param["name"]: param["type"] for param in entry["schema"]["params"]}
    args: dict[str, Any] = {}
    for name, text in texts.items():
        if kinds.get(name) == "str":
            args[name] = text
            continue
        try:
            args[name] = json.loads(text)
        except ValueError:
            args[name] = text
    return args


#: The fields a registry listing may filter and sort by. Who offers a class
#: (``offered_by``, and ``workers`` made from it per page) is left out on
#: purpose: it changes with every worker's start and stop.
REGISTRY_FIELDS = frozenset({"_id", "qual_name", "author", "tags", "schedule", "valid", "unique",
                             "updated_at", "doc"})


async def list_page(db: Database, *, user: dict[str, Any], search: str | None = None,
                    filter: Any = None, sort: Any = None, page: int = 0, per_page: int = 10,
                    lease_seconds: float = 30.0) -> Page:
    """A page of the valid jobs ``user`` may enqueue, each with ``workers``: the live workers offering it.

    ``workers`` holds ``{"id", "host"}`` (``host`` for admins only, as in
    ``stats.workers``); alive means a heartbeat within ``lease_seconds``. An
    empty list means jobs of the class wait until such a worker comes.
    """
    query = combine({"valid": True}, readable_filter(user, EXECUTE, field="_id"), search_filter(search, "_id"),
                    check_filter(filter or {}, REGISTRY_FIELDS))
    found = await paginate(db.registry, query, sort=check_sort(sort, REGISTRY_FIELDS, default=(("_id", 1),)),
                           page=page, per_page=per_page, advice="narrow it with a search or a filter")
    await _add_workers(db, found.items, lease_seconds, hosts=is_admin(user))
    return found
