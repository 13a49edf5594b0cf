"""The registry: which job classes exist, their argument schemas, and argument checking.

Workers and servers ``discover`` the job classes of the configured packages
(``jobs`` always) at start and ``sync`` them to the ``registry`` collection;
entries of classes no longer found are marked ``valid: false``. Enqueue
accepts only valid registered qual_names, and checks the arguments against the
stored schema, so a request never makes the service import a module it names.

``get_valid`` may take the server's cache of entries (``core.cache``): a
class invalidated or removed by ``sync`` in this process is refused at once,
by another process (a worker starting) within the cache's ``stale_seconds``
(2 s; milliseconds while the hub's change stream runs).
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import pkgutil
import types
import typing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

from core.errors import BadArgument, NotFound
from core.job import OPTIONS, Job
from core.listing import Page, check_filter, check_sort, combine, paginate, search_filter
from core.permissions import EXECUTE, readable_filter

if TYPE_CHECKING:
    from core.cache import Cache
    from core.db import Database

__all__ = ["discover", "schema", "sync", "get_valid", "check_args", "list_entries", "list_page",
           "ALWAYS", "REGISTRY_FIELDS"]

log = logging.getLogger(__name__)

ALWAYS = "jobs"
_TYPES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict"}


def discover(packages: Iterable[str] = ()) -> dict[str, type[Job]]:
    """Import ``jobs`` and ``packages`` with their submodules; return their job classes by qual_name.

    A module that fails to import is logged and skipped (its jobs then count
    as vanished).
    """
    found: dict[str, type[Job]] = {}
    for package_name in dict.fromkeys([ALWAYS, *packages]):
        for module in _modules(package_name):
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if _is_job(cls, module.__name__):
                    found[cls.qual_name()] = cls
    return found


def _modules(package_name: str) -> list[types.ModuleType]:
    try:
        package = importlib.import_module(package_name)
    except Exception:  # noqa: BLE001 - a broken job package must not stop the service
        log.exception("cannot import job package %s", package_name)
        return []
    modules = [package]
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), package_name + "."):
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # noqa: BLE001
            log.exception("cannot import job module %s", info.name)
    return modules


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
        "schedule": cls.schedule, "unique": bool(cls.unique),
        "defaults": {option: getattr(cls, option) for option in OPTIONS},
        "valid": True, "updated_at": now,
    }


async def sync(db: Database, classes: dict[str, type[Job]]) -> dict[str, int]:
    """Write the entries of ``classes``; mark entries of other classes invalid."""
    now = datetime.now(timezone.utc)
    for cls in classes.values():
        await db.registry.replace_one({"_id": cls.qual_name()}, _entry(cls, now), upsert=True)
    vanished = await db.registry.update_many(
        {"_id": {"$nin": list(classes)}, "valid": True}, {"$set": {"valid": False, "updated_at": now}})
    db.changed("registry")
    return {"valid": len(classes), "invalidated": vanished.modified_count}


async def get_valid(db: Database, qual_name: Any, *, cache: Cache | None = None) -> dict[str, Any]:
    """The registry entry of a job that may be enqueued; raises ``NotFound`` or ``BadArgument``.

    With ``cache`` the entry may come from it (see the module docstring); it must not be changed.
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
        raise NotFound(f"job {qual_name!r} is no longer available (its class vanished)")
    return entry


async def list_entries(db: Database, *, valid_only: bool = True) -> list[dict[str, Any]]:
    """All registry entries, by qual_name."""
    query = {"valid": True} if valid_only else {}
    return await db.registry.find(query).sort("_id", 1).to_list()


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


REGISTRY_FIELDS = frozenset({"_id", "qual_name", "author", "tags", "schedule", "valid", "unique",
                             "updated_at", "doc"})


async def list_page(db: Database, *, user: dict[str, Any], search: str | None = None,
                    filter: Any = None, sort: Any = None, page: int = 0, per_page: int = 10) -> Page:
    """A page of the valid jobs ``user`` may enqueue."""
    query = combine({"valid": True}, readable_filter(user, EXECUTE, field="_id"), search_filter(search, "_id"),
                    check_filter(filter or {}, REGISTRY_FIELDS))
    return await paginate(db.registry, query, sort=check_sort(sort, REGISTRY_FIELDS, default=(("_id", 1),)),
                          page=page, per_page=per_page, advice="narrow it with a search or a filter")
