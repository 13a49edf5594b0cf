"""Queue operations shared by the command line and the HTTP API: enqueue (one or a batch), get, kill, remove, restart.

Every function takes the acting ``user`` (a user document; the command line
acts as an admin operator) and checks its permission here, so no caller can
forget to.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import socket
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from dateutil.parser import isoparse
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from core import audit, counts, flow, registry
from core.errors import BadArgument, Conflict, JobdeckError, NotFound
from core.job import OPTIONS
from core.permissions import EXECUTE, READ, may, require
from core.states import FINAL, WAITING, State, transition

if TYPE_CHECKING:
    from core.audit import RecordedInserts
    from core.cache import Cache
    from core.db import Database

__all__ = ["enqueue", "enqueue_once", "enqueue_keyed", "idempotency_key", "enqueue_many", "start_time", "get", "require_readable", "find", "kill", "remove", "restart", "object_id", "operator", "check_options",
           "OPTION_LIMITS", "MAX_BATCH", "MAX_DELAY", "ONCE_RETRY_SECONDS", "MAX_KEY"]

_RETRIES = 20  # compare-and-set attempts before giving up on a busy job


def _now() -> datetime:
    return datetime.now(timezone.utc)


def operator(name: str) -> dict[str, Any]:
    """The principal an operator command acts as: an active admin named ``name``."""
    return {"name": name, "roles": ["admin"], "perms": [], "active": True}


def object_id(value: Any) -> ObjectId:
    """``value`` as a job id; raises ``BadArgument`` unless it is 24 hex characters."""
    if isinstance(value, ObjectId):
        return value
    if not isinstance(value, str) or len(value) != 24 or not ObjectId.is_valid(value):
        raise BadArgument(f"bad job id {str(value)[:40]!r}: expected 24 hexadecimal characters")
    return ObjectId(value)


#: What each enqueue option may be: (type, minimum, maximum, may be None).
OPTION_LIMITS: dict[str, tuple[type, float, float, bool]] = {
    "attempts": (int, 1, 1000, False),
    "priority": (int, -1_000_000, 1_000_000, False),
    "error_time": (float, 0, 365 * 86400, False),
    "defer_time": (float, 0, 365 * 86400, False),
    "defer_max": (float, 0, 10 * 365 * 86400, False),
    "wall_time": (float, 0.001, 365 * 86400, True),
    "max_parallel": (int, 1, 100_000, True),
}


def check_options(defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Enqueue options: the class's defaults overridden by ``options``, checked.

    Raises ``BadArgument`` for an unknown option or a value of the wrong type or range.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BadArgument(f"unknown enqueue option {unknown[0]!r}; options: {', '.join(OPTIONS)}")
    merged = {**{k: defaults.get(k) for k in OPTIONS}, **options}
    for name, (kind, low, high, nullable) in OPTION_LIMITS.items():
        value = merged[name]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and isinstance(value, float) and not value.is_integer()):
            raise BadArgument(f"option {name!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not low <= value <= high:
            raise BadArgument(f"option {name!r} must be between {low:g} and {high:g}, got {value!r}")
        merged[name] = kind(value)
    merged["requires"] = flow.check_tags(merged["requires"] or [], "option 'requires'")
    return merged


def _unique_key(qual_name: str, args: dict[str, Any]) -> str:
    canonical = json.dumps([qual_name, args], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Most jobs one ``enqueue_many`` takes.
MAX_BATCH = 1000
#: Latest first start a ``delay`` or ``run_at`` may ask for, in seconds from now.
MAX_DELAY = 365 * 86400


def start_time(now: datetime, delay: Any = None, run_at: Any = None) -> datetime:
    """When a new job may first start (its ``query_at``): ``now``, ``delay`` seconds later, or ``run_at``.

    ``run_at`` is a datetime or ISO 8601 text; without a zone it is UTC, and
    a time already past means now. Raises ``BadArgument`` when both are
    given, for a delay that is not a number from 0 to ``MAX_DELAY``, and for
    a ``run_at`` that is no time or more than ``MAX_DELAY`` seconds ahead.
    """
    if delay is not None and run_at is not None:
        raise BadArgument("give delay or run_at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DELAY:
            raise BadArgument(f"delay must be a number of seconds from 0 to {MAX_DELAY}, got {str(delay)[:40]!r}")
        return now + timedelta(seconds=delay)
    if run_at is None:
        return now
    try:
        moment = isoparse(run_at) if isinstance(run_at, str) else run_at
        if not isinstance(moment, datetime):
            raise TypeError(type(run_at).__name__)
        moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except (ValueError, TypeError, OverflowError):
        raise BadArgument(f"run_at must be an ISO 8601 time, e.g. 2026-11-24T10:00:00Z, got {str(run_at)[:40]!r}"
                          ) from None
    if (moment - now).total_seconds() > MAX_DELAY:
        raise BadArgument(f"run_at must be at most {MAX_DELAY} s ({MAX_DELAY // 86400} days) ahead, got {run_at!s:.40}")
    return max(now, moment)


def _new_job(entry: dict[str, Any], qual_name: str, args: Any, options: dict[str, Any], *, user: dict[str, Any],
             hostname: str | None, parent_id: ObjectId | None, now: datetime, delay: Any, run_at: Any
             ) -> dict[str, Any]:
    """The document of a new pending job of ``entry``'s class, checked; raises like ``enqueue``."""
    require(user, qual_name, EXECUTE)
    args = registry.check_args(entry, args)
    settings = check_options(entry.get("defaults", {}), options)
    job: dict[str, Any] = {
        "_id": ObjectId(), "qual_name": qual_name, "args": args, "state": State.PENDING.value,
        **settings, "attempts_left": settings["attempts"], "trial": 0,
        "query_at": start_time(now, delay, run_at),
        "enqueued": {"at": now, "username": user["name"], "hostname": hostname or socket.gethostname(),
                     "parent_id": parent_id, "child_id": None},
        "started_at": None, "finished_at": None, "runtime": None,
        "prog": {"value": 0.0, "message": None}, "locked": None, "last_error": None,
        "result": None, "killed_at": None, "removed_at": None,
        "tags": list(entry.get("tags", [])), "version": 1,
    }
    for name in ("requires", "max_parallel"):  # absent unless set: see core.flow, core.slots
        if not job[name]:
            del job[name]
    if entry.get("unique"):
        job["unique_key"] = _unique_key(qual_name, args)
    return job


def _record(job: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The fields of a job's ``job.enqueue`` audit entry."""
    return {"actor": user["name"], "target": str(job["_id"]), "qual_name": job["qual_name"]}


async def _unique_conflict(db: Database, job: dict[str, Any], prefix: str = "", **details: Any) -> Conflict:
    """The ``Conflict`` of a unique job whose key a live job holds already."""
    existing = await db.queue.find_one({"unique_key": job.get("unique_key")}, {"_id": 1})
    existing_id = existing["_id"] if existing else None
    return Conflict(f"{prefix}{job['qual_name']} is unique and a live job with the same arguments exists: "
                    f"{existing_id}", job_id=str(existing_id), **details)


async def enqueue(db: Database, qual_name: Any, args: Any = None, *, user: dict[str, Any],
                  hostname: str | None = None, parent_id: ObjectId | None = None,
                  registry_cache: Cache | None = None, inserts: RecordedInserts | None = None,
                  delay: Any = None, run_at: Any = None, **options: Any) -> dict[str, Any]:
    """Add a pending job and its ``job.enqueue`` audit entry; return the job's document.

    Raises ``NotFound`` for an unknown or vanished qual_name, ``Forbidden``
    without execute permission, ``BadArgument`` for bad arguments or options,
    and ``Conflict`` (with ``details["job_id"]``) when the class is ``unique``
    and a live job with the same arguments exists. ``delay`` or ``run_at``
    (not both): the job starts no earlier (see ``start_time``); only its
    first start waits, retries and deferrals count from their run's end.
    ``registry_cache``: see ``registry.get_valid``. The job and its audit
    entry go in one command where the server can (``audit.insert_recorded``),
    or, through ``inserts`` (the server's), together with those of
    concurrent enqueues.
    """
    entry = await registry.get_valid(db, qual_name, cache=registry_cache)
    job = _new_job(entry, qual_name, args, options, user=user, hostname=hostname, parent_id=parent_id,
                   now=_now(), delay=delay, run_at=run_at)
    try:
        if inserts is None:
            await audit.insert_recorded(db, db.queue, job, "job.enqueue", also=counts.inserts(db),
                                        **_record(job, user))
        else:
            await inserts.insert(job, "job.enqueue", **_record(job, user))
    except DuplicateKeyError:
        raise await _unique_conflict(db, job) from None
    return job


#: How long ``enqueue_once`` tries again a transaction that met a concurrent one (an identical call).
ONCE_RETRY_SECONDS = 5.0
#: Job fields that later writes add, which ``extra`` may not name either.
_LATER_FIELDS = frozenset({"unique_key", "claimed_from", "journal"})


def _fingerprint(qual_name: str, args: Any, options: dict[str, Any], delay: Any, run_at: Any,
                 extra: dict[str, Any]) -> str:
    """The sha256 of an ``enqueue_once`` request: what a repeat with the same key must match."""
    canonical = json.dumps({"qual_name": qual_name, "args": args, "options": options, "delay": delay,
                            "run_at": run_at, "extra": extra}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _is_transient(exc: PyMongoError) -> bool:
    """Whether a failed transaction may simply be run again (a write conflict with a concurrent one)."""
    if isinstance(exc, ConnectionFailure):
        return False  # the database is gone: a 503 now, not a request held for seconds
    return exc.has_error_label("TransientTransactionError") or getattr(exc, "code", None) == 112  # WriteConflict


async def _repeat(db: Database, held: dict[str, Any], fingerprint: str, qual_name: str) -> tuple[dict[str, Any], bool]:
    """``(first_job, False)`` for a key held with ``fingerprint``; ``Conflict`` for one held with another."""
    job_id = held["job_id"]
    if held.get("fingerprint") != fingerprint:
        raise Conflict(f"this key was used for job {job_id} with other arguments or options", job_id=str(job_id))
    job, _ = await find(db, job_id)
    if job is None:  # removed since, or (without transactions) not inserted yet
        return {"_id": job_id, "qual_name": qual_name}, False
    job.pop("unique_key", None)
    return job, False


async def enqueue_once(db: Database, key: str, qual_name: Any, args: Any = None, *, user: dict[str, Any],
                       keep: timedelta, hostname: str | None = None, parent_id: ObjectId | None = None,
                       delay: Any = None, run_at: Any = None, extra: dict[str, Any] | None = None,
                       registry_cache: Cache | None = None, **options: Any) -> tuple[dict[str, Any], bool]:
    """Enqueue like ``enqueue``, but once per ``key`` for ``keep``: ``(job, True)``, or ``(first_job, False)``.

    A guard ``{_id: key, job_id, fingerprint, user, at, expires}`` in
    ``enqueue_keys`` (deleted by its TTL index after ``expires``) is written
    with the job: in one transaction with the job, its count change and its
    ``job.enqueue`` entry where the server has them (tried again for up to
    ``ONCE_RETRY_SECONDS`` on a write conflict, which concurrent identical
    calls meet on the guard's ``_id``); without transactions the guard first,
    then the job, and the guard deleted again if the job is not in.

    The request's ``fingerprint`` covers qual_name, the checked arguments and
    options given, ``delay``/``run_at`` as given and ``extra``. A key held
    with the same fingerprint returns the first job (from the queue, else
    the journal, else just ``{_id, qual_name}`` if it is gone) and writes
    nothing; with another fingerprint it raises ``Conflict`` naming the
    first job (``details["job_id"]``). Every check of ``enqueue`` runs first
    and raises as there, also for a repeat. ``extra``: fields added to the
    new job (e.g. a schedule's ``{"schedule": {"id", "tick"}}``); a name a
    job has already is ``BadArgument``. A database error is raised as it
    came (``ConnectionFailure``: 503), with neither guard nor job written
    where transactions exist.
    """
    if not isinstance(key, str) or not key:
        raise BadArgument("an idempotency key must be a non-empty string")
    if not isinstance(keep, timedelta) or keep.total_seconds() <= 0:
        raise BadArgument(f"keep must be a positive timedelta, got {keep!r}")
    if extra is not None and not isinstance(extra, dict):
        raise BadArgument(f"extra must be a dict of job fields, got {type(extra).__name__}")
    extra = dict(extra or {})
    entry = await registry.get_valid(db, qual_name, cache=registry_cache)
    now = _now()
    job = _new_job(entry, qual_name, args, options, user=user, hostname=hostname, parent_id=parent_id,
                   now=now, delay=delay, run_at=run_at)
    taken = [name for name in extra if not isinstance(name, str) or name in job or name in _LATER_FIELDS
             or not name or name.startswith("$") or "." in name]
    if taken:
        raise BadArgument(f"extra field {str(taken[0])[:40]!r} is a job field or not a field name")
    job.update(extra)
    checked = check_options(entry.get("defaults", {}), options)
    fingerprint = _fingerprint(qual_name, job["args"], {name: checked[name] for name in options}, delay, run_at,
                               extra)
    guard = {"_id": key, "job_id": job["_id"], "fingerprint": fingerprint, "user": user["name"], "at": now,
             "expires": now + keep}
    clock = asyncio.get_running_loop().time
    deadline = clock() + ONCE_RETRY_SECONDS
    pause = 0.005
    while True:
        held = await db.enqueue_keys.find_one({"_id": key})
        if held is not None and held.get("job_id") == job["_id"]:
            return job, True  # ours: a commit whose answer was lost went through
        if held is not None and held["expires"] > _now():
            return await _repeat(db, held, fingerprint, qual_name)
        expired = None if held is None else held["expires"]  # the TTL monitor runs once a minute
        try:
            if db.transactions:
                await _insert_once_in_transaction(db, guard, job, user, expired)
            else:
                await _insert_once(db, guard, job, user, expired)
            return job, True
        except _UniqueTaken:
            raise await _unique_conflict(db, job) from None
        except (DuplicateKeyError, _KeyChanged):
            pass  # the key was taken (or its expired guard changed) meanwhile: read its holder again
        except PyMongoError as exc:
            if not _is_transient(exc) or clock() >= deadline:
                raise
        await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.2)
        if clock() >= deadline:
            raise Conflict("this key is being used by concurrent requests; try again")


class _KeyChanged(Exception):
    """Raised when an expired guard changed before ``enqueue_once`` could replace it."""


class _UniqueTaken(Exception):
    """Raised when ``enqueue_once``'s job is refused for its unique key (a live job has the same arguments)."""


async def _insert_once_in_transaction(db: Database, guard: dict[str, Any], job: dict[str, Any],
                                      user: dict[str, Any], expired: datetime | None) -> None:
    """Write guard, job, count change and audit entry in one transaction (``expired``: the old guard's)."""
    async with db.session() as session:
        async with await session.start_transaction():
            if expired is not None:
                gone = await db.enqueue_keys.delete_one({"_id": guard["_id"], "expires": expired}, session=session)
                if not gone.deleted_count:
                    raise _KeyChanged()
            await db.enqueue_keys.insert_one(guard, session=session)
            try:
                await db.queue.insert_one(job, session=session)
            except DuplicateKeyError:
                raise _UniqueTaken() from None
            await counts.write(db, counts.added([job]), session=session)
            await db.audit.insert_one(audit.entry("job.enqueue", **_record(job, user)), session=session)


async def _insert_once(db: Database, guard: dict[str, Any], job: dict[str, Any], user: dict[str, Any],
                       expired: datetime | None) -> None:
    """Without transactions: the guard, then the job with its entry; the guard goes again if the job is not in."""
    if expired is not None:
        gone = await db.enqueue_keys.delete_one({"_id": guard["_id"], "expires": expired})
        if not gone.deleted_count:
            raise _KeyChanged()
    await db.enqueue_keys.insert_one(guard)
    try:
        await audit.insert_recorded(db, db.queue, job, "job.enqueue", also=counts.inserts(db), **_record(job, user))
    except BaseException as exc:
        # The job may be in with its entry missing (see audit.insert_recorded): then the guard holds it.
        with contextlib.suppress(PyMongoError):
            if await db.queue.find_one({"_id": job["_id"]}, {"_id": 1}) is None:
                await db.enqueue_keys.delete_one({"_id": guard["_id"], "job_id": job["_id"]})
        if isinstance(exc, DuplicateKeyError):
            raise _UniqueTaken() from None
        raise


#: Longest idempotency key a client may send, in characters.
MAX_KEY = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def idempotency_key(user: dict[str, Any], key: Any) -> str:
    """The ``enqueue_once`` key of a client's idempotency ``key``: each user has keys of its own.

    Raises ``BadArgument`` unless ``key`` is text of 1 to ``MAX_KEY``
    characters without control characters.
    """
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY or _CONTROL.search(key):
        raise BadArgument(f"an idempotency key must be 1 to {MAX_KEY} printable characters, got {str(key)[:40]!r}")
    return "idem:" + hashlib.sha256(f"{user['name']}\0{key}".encode()).hexdigest()


async def enqueue_keyed(db: Database, key: Any, qual_name: Any, args: Any = None, *, user: dict[str, Any],
                        keep: timedelta, **settings: Any) -> tuple[dict[str, Any], bool]:
    """``enqueue_once`` under a client's idempotency ``key`` (see ``idempotency_key``): ``(job, new)``.

    A second enqueue by the same user with the same key within ``keep``
    returns the first job and ``False``; with other arguments or options it
    raises ``Conflict`` naming the first job.
    """
    return await enqueue_once(db, idempotency_key(user, key), qual_name, args, user=user, keep=keep, **settings)


_ITEM_FIELDS = ("qual_name", "args", "delay", "run_at")


def _at(index: int, exc: JobdeckError) -> JobdeckError:
    """``exc`` of the batch's item ``index``: the same error, its message prefixed ``jobs[index]: ``."""
    return type(exc)(f"jobs[{index}]: {exc}", index=index, **exc.details)


async def enqueue_many(db: Database, items: Any, *, user: dict[str, Any], hostname: str | None = None,
                       registry_cache: Cache | None = None) -> list[dict[str, Any]]:
    """Add the pending jobs ``items`` (at most ``MAX_BATCH``), all or none; return their documents in order.

    Each item is ``{"qual_name", "args", "delay" or "run_at", <options>}``,
    taken as ``enqueue`` takes them. Every item is checked before anything
    is written, and the first bad one raises what ``enqueue`` would, its
    message starting ``jobs[<index>]: `` and ``details["index"]`` set: also
    a ``Conflict`` for a ``unique`` job whose arguments a live job or an
    earlier item has (``details["job_id"]`` or ``details["duplicate_of"]``).
    The jobs and their ``job.enqueue`` audit entries are then written in
    one transaction where the server has them (an insert of the jobs, one of
    the entries), so a failed write leaves none of them; without
    transactions the jobs go in with one ordered insert, and those in before
    a failure are deleted again (see ``_insert_batch``). A database error
    is raised as it came (``ConnectionFailure``: 503).
    """
    if not isinstance(items, list):
        raise BadArgument(f"jobs must be a list of jobs, got {type(items).__name__}")
    if len(items) > MAX_BATCH:
        raise BadArgument(f"at most {MAX_BATCH} jobs per batch, got {len(items)}")
    now = _now()
    entries: dict[str, dict[str, Any]] = {}
    jobs: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise BadArgument(f"a job must be an object with qual_name, args and options, "
                                  f"got {type(item).__name__}")
            unknown = [name for name in item if name not in _ITEM_FIELDS and name not in OPTIONS]
            if unknown:
                raise BadArgument(f"unknown field {unknown[0][:40]!r}; fields: {', '.join(_ITEM_FIELDS + OPTIONS)}")
            qual_name = item.get("qual_name")
            entry = entries.get(qual_name) if isinstance(qual_name, str) else None
            if entry is None:
                entry = await registry.get_valid(db, qual_name, cache=registry_cache)
                entries[qual_name] = entry
            options = {name: item[name] for name in OPTIONS if item.get(name) is not None}  # null: the default
            jobs.append(_new_job(entry, qual_name, item.get("args"), options, user=user, hostname=hostname,
                                 parent_id=None, now=now, delay=item.get("delay"), run_at=item.get("run_at")))
        except JobdeckError as exc:
            raise _at(index, exc) from None
    await _check_unique(db, jobs)
    if jobs:
        await _insert_batch(db, jobs, [audit.entry("job.enqueue", **_record(job, user)) for job in jobs])
    return jobs


async def _check_unique(db: Database, jobs: list[dict[str, Any]]) -> None:
    """Raise ``Conflict`` for the first unique job of a batch whose key an earlier one or a live job holds."""
    first: dict[str, int] = {}
    for index, job in enumerate(jobs):
        key = job.get("unique_key")
        if key is None:
            continue
        if key in first:
            raise Conflict(f"jobs[{index}]: {job['qual_name']} is unique and jobs[{first[key]}] has the same "
                           "arguments", index=index, duplicate_of=first[key])
        first[key] = index
    if first:
        taken = await db.queue.find({"unique_key": {"$in": list(first)}}, {"unique_key": 1}).to_list()
        if taken:
            index = min(first[job["unique_key"]] for job in taken)
            raise await _unique_conflict(db, jobs[index], f"jobs[{index}]: ", index=index)


async def _insert_batch(db: Database, jobs: list[dict[str, Any]], made: list[dict[str, Any]]) -> None:
    """Write a batch's jobs and their audit entries, all or none (see ``enqueue_many``).

    A unique job that a concurrent enqueue got in first (after the check)
    is a ``Conflict`` naming its index.
    """
    if db.transactions:
        async with db.session() as session:
            try:
                # No with_transaction: its retries could hold a request for two minutes; a 503 says try again.
                # Three inserts, not one bulkWrite: that would save round
                # trips, but the embedded server takes 1.7 times as long.
                async with await session.start_transaction():
                    await db.queue.insert_many(jobs, session=session)
                    await counts.write(db, counts.added(jobs), session=session)
                    await db.audit.insert_many(made, session=session)
            except BulkWriteError as exc:
                raise await _refused(db, jobs, exc.details.get("writeErrors", ())) or exc
        return
    # An ordered insert stops at its first refused job, those before it are in:
    # delete them, unless a worker has claimed one already (it runs then). If
    # the database is gone meanwhile, they stay: only a transaction is atomic.
    try:
        await db.queue.insert_many(jobs, ordered=True)
    except PyMongoError as exc:
        with contextlib.suppress(PyMongoError):
            await db.queue.delete_many({"_id": {"$in": [job["_id"] for job in jobs]}, "trial": 0, "version": 1})
        if isinstance(exc, BulkWriteError):
            raise await _refused(db, jobs, exc.details.get("writeErrors", ())) or exc
        raise
    await counts.write(db, counts.added(jobs))
    await db.audit.insert_many(made)


async def _refused(db: Database, jobs: list[dict[str, Any]], errors: Any) -> Conflict | None:
    """The ``Conflict`` of a job of a batch refused for its unique key, or None for other write errors."""
    for error in errors:
        index = error.get("index")
        if error.get("code") in (11000, 11001) and isinstance(index, int) and index < len(jobs) \
                and "unique_key" in jobs[index]:
            return await _unique_conflict(db, jobs[index], f"jobs[{index}]: ", index=index)
    return None


async def find(db: Database, job_id: ObjectId) -> tuple[dict[str, Any] | None, bool]:
    """``(job, journaled)``: the job from the queue if live there, else from the journal."""
    job = await db.queue.find_one({"_id": job_id})
    if job is not None and job["state"] not in FINAL:
        return job, False
    journaled = await db.journal.find_one({"_id": job_id})
    if journaled is not None:
        return journaled, True
    return job, job is not None  # finished, its move to the journal under way


async def _readable(db: Database, job_id: ObjectId, user: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``find``, for ``user``: a job it may not read is ``NotFound``, exactly like a missing one.

    Ids are guessable, so a 403 would confirm that the job exists and name its class.
    """
    job, journaled = await find(db, job_id)
    if job is None or not may(user, job["qual_name"], READ):
        raise NotFound(f"no job {job_id}")
    return job, journaled


async def get(db: Database, job_id: Any, *, user: dict[str, Any], lease_seconds: float = 30.0) -> dict[str, Any]:
    """One job, from queue or journal, with ``journal: true/false``.

    A waiting job that cannot start now says why in ``waiting_for`` (the
    queue or its class is paused; no live worker has the tags it requires:
    alive is a heartbeat within ``lease_seconds``). Raises ``BadArgument``
    for a malformed id, and ``NotFound`` for a missing job or one the user
    may not read.
    """
    job_id = object_id(job_id)
    job, journaled = await _readable(db, job_id, user)
    job.pop("unique_key", None)
    if not journaled and job["state"] in {state.value for state in WAITING}:
        job["waiting_for"] = await _waiting_for(db, job, lease_seconds)
    return {**job, "journal": journaled}


async def _waiting_for(db: Database, job: dict[str, Any], lease_seconds: float) -> list[str]:
    reasons = []
    paused = await flow.read(db)
    if paused.all:
        reasons.append("the queue is paused")
    elif paused.paused(job["qual_name"]):
        reasons.append(f"{job['qual_name']} is paused")
    if job.get("requires") and (unmet := flow.unmet(job["requires"], await flow.live_tags(db, lease_seconds))):
        reasons.append(unmet)
    return reasons


async def require_readable(db: Database, job_id: Any, *, user: dict[str, Any]) -> None:
    """Raise ``Forbidden`` unless ``user`` may (still) read the job.

    For a request that has shown the job already and checks its rights again
    (an open stream, a long poll): it reads the job's class only, and a lost
    right is ``Forbidden``, not ``NotFound``. A job that is gone passes.
    """
    job_id = object_id(job_id)
    for collection in (db.queue, db.journal):
        job = await collection.find_one({"_id": job_id}, {"qual_name": 1})
        if job is not None:
            require(user, job["qual_name"], READ)
            return


async def _live(db: Database, job_id: ObjectId, user: dict[str, Any], action: str) -> dict[str, Any]:
    """The live job, checked for execute permission; ``Conflict`` if it has finished."""
    job, journaled = await _readable(db, job_id, user)
    require(user, job["qual_name"], EXECUTE)
    if journaled or job["state"] in FINAL:
        removed = " (removed)" if job.get("removed_at") else ""
        raise Conflict(f"cannot {action} job {job_id}: it has finished as {job['state']}{removed}",
                       state=job["state"])
    return job


async def _stop(db: Database, job_id: Any, user: dict[str, Any], *, remove: bool) -> dict[str, Any]:
    """Kill (or remove) a live job; a running one is marked and its worker ends it."""
    job_id = object_id(job_id)
    action = "remove" if remove else "kill"
    for _ in range(_RETRIES):
        job = await _live(db, job_id, user, action)
        now = _now()
        marks = {"killed_at": job.get("killed_at") or now}
        if remove:
            marks["removed_at"] = job.get("removed_at") or now
        try:
            if job["state"] == State.RUNNING.value:
                # The worker sees the mark, stops the process and ends the job
                # killed; if the worker is dead, the reaper does.
                changed = await db.queue.update_one(
                    {"_id": job_id, "state": State.RUNNING.value, "version": job["version"]},
                    {"$set": marks, "$inc": {"version": 1}})
                if not changed.modified_count:
                    continue
                job = {**job, **marks, "version": job["version"] + 1}
            else:
                job = await transition(db, job, State.KILLED, **marks, finished_at=now, locked=None)
        except Conflict:
            continue
        await audit.record(db, f"job.{action}", actor=user["name"], target=str(job_id),
                           qual_name=job["qual_name"], state=job["state"])
        return job
    raise Conflict(f"job {job_id} keeps changing; try again")


async def kill(db: Database, job_id: Any, *, user: dict[str, Any]) -> dict[str, Any]:
    """Kill a live job: a waiting one ends ``killed`` at once, a running one as soon as its worker stops it.

    Raises ``NotFound`` (also for a job the user may not read), ``Forbidden``
    (may read, not execute), or ``Conflict`` naming the final state of a job
    that has already finished.
    """
    return await _stop(db, job_id, user, remove=False)


async def remove(db: Database, job_id: Any, *, user: dict[str, Any]) -> dict[str, Any]:
    """Remove a live job: it ends ``killed`` with ``removed_at`` set, in the journal.

    Raises like ``kill``.
    """
    return await _stop(db, job_id, user, remove=True)


async def restart(db: Database, job_id: Any, *, user: dict[str, Any], hostname: str | None = None
                  ) -> dict[str, Any]:
    """Restart a job; return the job that will run.

    A ``failed`` or ``deferred`` job is retried now under the same id. A
    ``killed``, ``error`` or ``inactive`` job is enqueued again as a new job
    with ``enqueued.parent_id`` pointing back; the old one gets
    ``enqueued.child_id``. Raises ``Conflict`` for pending, running and
    complete jobs, and for a job that was already restarted. ``hostname``:
    where the request came from, for the new job's ``enqueued.hostname``.
    """
    job_id = object_id(job_id)
    for _ in range(_RETRIES):
        job, journaled = await _readable(db, job_id, user)
        require(user, job["qual_name"], EXECUTE)
        state = State(job["state"])
        if state in (State.FAILED, State.DEFERRED):
            try:
                job = await transition(db, job, State.PENDING, query_at=_now())
            except Conflict:
                continue
            await audit.record(db, "job.restart", actor=user["name"], target=str(job_id), new_id=str(job_id))
            return job
        if state in (State.PENDING, State.RUNNING, State.COMPLETE) or not journaled:
            raise Conflict(f"cannot restart job {job_id}: it is {state}; only failed, deferred, "
                           "killed, error and inactive jobs can be restarted", state=state.value)
        return await _rerun(db, job, user, hostname)
    raise Conflict(f"job {job_id} keeps changing; try again")


async def _rerun(db: Database, old: dict[str, Any], user: dict[str, Any], hostname: str | None) -> dict[str, Any]:
    """Enqueue a finished job again as its child."""
    child_id = (old.get("enqueued") or {}).get("child_id")
    if child_id:
        raise Conflict(f"job {old['_id']} was already restarted as {child_id}", job_id=str(child_id))
    new_id = ObjectId()
    # Claim the link first, so that two restarts cannot both make a child.
    claimed = await db.journal.update_one(
        {"_id": old["_id"], "enqueued.child_id": None},
        {"$set": {"enqueued.child_id": new_id}, "$inc": {"version": 1}})
    if not claimed.modified_count:
        raise Conflict(f"job {old['_id']} is being restarted by someone else")
    try:
        job = await enqueue(db, old["qual_name"], old.get("args"), user=user, parent_id=old["_id"],
                            hostname=hostname, **{option: old.get(option) for option in OPTIONS if option in old})
    except Exception:
        await db.journal.update_one({"_id": old["_id"], "enqueued.child_id": new_id},
                                    {"$set": {"enqueued.child_id": None}, "$inc": {"version": 1}})
        raise
    # enqueue chose its own id; point the link at it.
    await db.journal.update_one({"_id": old["_id"], "enqueued.child_id": new_id},
                                {"$set": {"enqueued.child_id": job["_id"]}, "$inc": {"version": 1}})
    await audit.record(db, "job.restart", actor=user["name"], target=str(old["_id"]), new_id=str(job["_id"]))
    return job
