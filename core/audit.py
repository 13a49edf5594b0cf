"""The audit trail: who did what, written to the ``audit`` collection.

An entry is ``{at, action, actor, target, detail}``, plus ``expires`` when it
is kept only for a while (the TTL index on ``expires`` deletes it then;
entries without it stay). ``actor`` and ``target`` are cut to ``MAX_NAME``
characters, since some come from strangers (the name of a failed login);
``detail`` then holds the original length as ``actor_length``/``target_length``.

``insert_recorded`` writes a document and the entry recording it together: in
one ordered ``bulkWrite`` command where the server has it (MongoDB 8.0+, the
embedded server), so that an enqueue costs one round trip; else one insert
after the other. Either way the entry is written only once the document is,
and the caller hears of every error: none is lost silently. ``also`` gives
further documents to insert with those that went in (a job's counted
change, ``core.counts``), between the documents and the entries, in the same
command where one command is used. ``RecordedInserts``
does the same for many concurrent callers at once (the server's enqueues):
those that arrive while a write is under way go in together next, which
costs the database about half as much per document.

``listing`` reads the trail, for admins (and operators): filtered by actor,
action (or an action prefix), target and time, newest first, paginated like
the journal (page numbers, or ``next``/``prev`` cursors whose pages cost what
a page holds, ``core.keyset``).
"""
from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from dateutil.parser import isoparse
from pymongo import InsertOne
from pymongo.errors import BulkWriteError, ClientBulkWriteException, DuplicateKeyError, PyMongoError, WriteError

from core.errors import BadArgument
from core.keyset import page_of
from core.listing import Page, as_utc, check_text, combine, time_range
from core.permissions import READ, require_admin

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

    from core.db import Database

__all__ = ["record", "insert_recorded", "RecordedInserts", "Also", "entry", "recent", "listing", "parse_time",
           "MAX_NAME"]

MAX_NAME = 100

#: The documents to insert with inserted documents: ``(collection, document)`` each.
Also = Callable[[list[dict[str, Any]]], list[tuple["AsyncCollection", dict[str, Any]]]]


async def record(db: Database, action: str, *, actor: str, target: str | None = None,
                 keep_for: timedelta | None = None, **detail: Any) -> None:
    """Append one audit entry, e.g. ``record(db, "user.add", actor="admin", target="bob")``.

    With ``keep_for`` the entry expires that long after now.
    """
    await db.audit.insert_one(entry(action, actor=actor, target=target, keep_for=keep_for, **detail))


async def insert_recorded(db: Database, collection: AsyncCollection, document: dict[str, Any], action: str, *,
                          actor: str, target: str | None = None, also: Also | None = None,
                          **detail: Any) -> None:
    """Insert ``document`` into ``collection`` and record ``action`` (like ``record``), in one command if possible.

    Raises ``DuplicateKeyError`` as ``insert_one`` does (nothing is recorded
    then), and any other error of either write; after an error in writing the
    entry the document may be in without it, as with two separate inserts.
    """
    await _insert_pair(db, collection, document, entry(action, actor=actor, target=target, **detail), also)


class RecordedInserts:
    """``insert_recorded`` into one collection for many concurrent callers: ``await insert(...)``, ``stop()``.

    Callers that arrive while a write is under way are written together as
    soon as it ends (at most ``max_batch`` at once): one ``insert_many`` of
    their documents, then one of the entries of those that went in. A caller
    alone waits for nothing and is written by ``insert_recorded``. Each
    ``insert`` returns once its document and its entry are acknowledged, and
    raises what concerns it: ``DuplicateKeyError`` (or another write error)
    for its own refused document, with no entry written; and an error of a
    batch's write to every caller in that batch, after which, if it was the
    entries' write, their documents are in without entries, as with
    ``insert_recorded``.
    """

    def __init__(self, db: Database, collection: AsyncCollection, *, max_batch: int = 500,
                 also: Also | None = None) -> None:
        self.db = db
        self.collection = collection
        self.also = also
        self.max_batch = max_batch
        self.batches = 0  # writes made so far
        self._pending: list[tuple[dict[str, Any], dict[str, Any], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def insert(self, document: dict[str, Any], action: str, *, actor: str, target: str | None = None,
                     **detail: Any) -> None:
        """Insert ``document`` and record ``action``, like ``insert_recorded``, maybe with others' in one write."""
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)
        self._pending.append((document, entry(action, actor=actor, target=target, **detail), done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write(), name=f"inserts into {self.collection.name}")
        await asyncio.shield(done)  # a caller who leaves does not stop the others' write

    async def stop(self) -> None:
        """Wait for the writes under way and those waiting."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            self.batches += 1
            try:
                if len(batch) == 1:
                    (document, made, done), = batch
                    await _insert_pair(self.db, self.collection, document, made, self.also)
                    done.set_result(None)
                else:
                    await self._write_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - every caller must hear of it, and only once
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("write cancelled"))
                if not isinstance(exc, Exception):
                    raise

    async def _write_batch(self, batch: list[tuple[dict[str, Any], dict[str, Any], asyncio.Future[None]]]) -> None:
        refused: dict[int, dict[str, Any]] = {}
        try:
            await self.collection.insert_many([document for document, _, _ in batch], ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise  # none of them is known to be durable
            refused = {error["index"]: error for error in exc.details.get("writeErrors", ())}
        for index, error in refused.items():
            kind = DuplicateKeyError if error.get("code") in (11000, 11001) else WriteError
            batch[index][2].set_exception(kind(error.get("errmsg", "write error"), error.get("code"), error))
        written = [item for index, item in enumerate(batch) if index not in refused]
        if written:
            await _insert_also(self.also, [document for document, _, _ in written])
            await self.db.audit.insert_many([made for _, made, _ in written], ordered=False)
        for _, _, done in written:
            done.set_result(None)


def _retrieved(done: asyncio.Future[None]) -> None:
    # The error of a caller who left is heard by nobody: not worth a warning at exit.
    if not done.cancelled():
        done.exception()


async def _insert_also(also: Also | None, documents: list[dict[str, Any]]) -> None:
    """Insert what goes with ``documents`` (one insert per collection)."""
    by_collection: dict[str, tuple[AsyncCollection, list[dict[str, Any]]]] = {}
    for collection, document in also(documents) if also else ():
        by_collection.setdefault(collection.full_name, (collection, []))[1].append(document)
    for collection, inserted in by_collection.values():
        await collection.insert_many(inserted, ordered=False)


async def _insert_pair(db: Database, collection: AsyncCollection, document: dict[str, Any],
                       made: dict[str, Any], also: Also | None = None) -> None:
    """``insert_recorded`` with the entry made already."""
    if not db.client_bulk_write:
        await collection.insert_one(document)
        await _insert_also(also, [document])
        await db.audit.insert_one(made)
        return
    with_it = [InsertOne(extra, namespace=into.full_name) for into, extra in (also([document]) if also else ())]
    try:
        await db.client.bulk_write([InsertOne(document, namespace=collection.full_name), *with_it,
                                    InsertOne(made, namespace=db.audit.full_name)], ordered=True)
    except ClientBulkWriteException as exc:
        # Raise what insert_one would have: e.g. ConnectionFailure (503), DuplicateKeyError (Conflict).
        if isinstance(exc.error, PyMongoError):
            raise exc.error from exc
        for error in exc.write_errors or ():
            if error.get("idx") == 0 and error.get("code") in (11000, 11001):
                raise DuplicateKeyError(error.get("errmsg", "duplicate key"), 11000, error) from exc
        raise


def entry(action: str, *, actor: str, target: str | None = None, keep_for: timedelta | None = None,
          **detail: Any) -> dict[str, Any]:
    """The audit entry ``record`` writes."""
    now = datetime.now(timezone.utc)
    for field, value in (("actor", actor), ("target", target)):
        if value is not None and len(value) > MAX_NAME:
            detail[f"{field}_length"] = len(value)
    made = {"at": now, "action": action, "actor": actor[:MAX_NAME],
            "target": None if target is None else target[:MAX_NAME], "detail": detail}
    if keep_for is not None:
        made["expires"] = now + keep_for
    return made


async def recent(db: Database, *, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit entries first, optionally only those about ``target``."""
    query = {} if target is None else {"target": target}
    return await db.audit.find(query, {"_id": 0}).sort("at", -1).limit(limit).to_list()


# ---------------------------------------------------------------- reading the trail

_ORDER = [("at", -1), ("_id", -1)]
_SHOWN = {"at": 1, "action": 1, "actor": 1, "target": 1, "detail": 1}
# An action, or a prefix of actions ending in "." or ".*" ("job.", "job.*"): letters, digits, _ . : -.
_ACTION = re.compile(r"[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*(\.\*?)?")
_AGE = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MAX_TIME_TEXT = 64


def parse_time(value: Any, name: str, *, now: datetime | None = None) -> datetime | None:
    """``value`` as a UTC time: a datetime, ISO 8601 text (no zone: UTC) or an age before ``now`` (``3d``).

    Ages are a number and ``s``, ``m``, ``h``, ``d`` or ``w``: ``90m``, ``2h``, ``1.5d``. ``None`` or blank text is
    None. Raises ``BadArgument`` naming ``name`` for anything else, and for a
    time outside the years 1 to 9999 in UTC.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value, name)
    text = check_text(value, name).strip()
    if not text:
        return None
    if len(text) > _MAX_TIME_TEXT:
        raise BadArgument(f"{name}: at most {_MAX_TIME_TEXT} characters, got {len(text)}")
    if age := _AGE.fullmatch(text):
        try:
            return (now or datetime.now(timezone.utc)) - timedelta(**{_UNITS[age[2]]: float(age[1])})
        except OverflowError:
            raise BadArgument(f"{name}: {text!r} reaches back before the year 1") from None
    try:
        moment = isoparse(text)
    except (ValueError, OverflowError):
        raise BadArgument(f"{name}: expected an ISO 8601 time such as 2026-11-24T10:00:00Z (without a zone: UTC) "
                          f"or an age such as 90m, 2h, 3d or 1w, got {text[:40]!r}") from None
    return as_utc(moment, name)


def _name_filter(field: str, name: str, value: Any) -> dict[str, Any]:
    """``{field: value}`` for an exact match (blank: no condition); ``BadArgument`` for a bad value."""
    if value is None:
        return {}
    value = check_text(value, name)
    if not value:
        return {}
    if len(value) > MAX_NAME:
        raise BadArgument(f"{name}: at most {MAX_NAME} characters (the trail keeps the first {MAX_NAME} of a "
                          f"name), got {len(value)}")
    return {field: value}


def _action_filter(value: Any) -> dict[str, Any]:
    """An exact action (``job.kill``), or every action under a prefix ending in ``.`` or ``.*`` (``job.*``)."""
    condition = _name_filter("action", "action", value)
    if not condition:
        return {}
    action = condition["action"]
    if not _ACTION.fullmatch(action):
        raise BadArgument(f"action: expected an action such as job.kill, or a prefix ending in '.*' such as job.* "
                          f"(letters, digits, _ : - between dots), got {action[:40]!r}")
    if not action.endswith((".", ".*")):
        return condition
    prefix = action.rstrip("*")
    # A range, not a $regex: the prefix's actions sort between "job." and "job/".
    return {"action": {"$gte": prefix, "$lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)}}


async def listing(db: Database, *, by: dict[str, Any] | None, user: Any = None, action: Any = None,
                  target: Any = None, since: Any = None, until: Any = None, page: int = 0, per_page: int = 10,
                  after: Any = None, before: Any = None) -> Page:
    """Audit entries, newest first, as ``{_id, at, action, actor, target, detail}``: a page of them.

    ``by`` the acting user: ``Forbidden`` unless an active admin (a
    read-only token of one will do); None is an operator's command. Filters,
    each optional (None or blank: none): ``user`` the entry's ``actor``
    (exact; names of failed logins are kept cut to ``MAX_NAME``
    characters); ``action`` exact, or a prefix ending in ``.`` or ``.*``
    (``job.*``: every ``job.`` action); ``target`` exact; ``since``
    (included) and ``until`` (excluded) as ``parse_time`` takes them.
    ``page``/``per_page`` or the cursors ``after``/``before`` (a page's
    ``next``/``prev``) as ``core.keyset.page_of`` takes them. Raises
    ``BadArgument`` naming the bad filter.
    """
    if by is not None:
        require_admin(by, READ)
    now = datetime.now(timezone.utc)
    query = combine(_name_filter("actor", "user", user), _action_filter(action),
                    _name_filter("target", "target", target),
                    time_range("at", parse_time(since, "since", now=now), parse_time(until, "until", now=now)))
    return await page_of(db.audit, query, listing="audit", sort=_ORDER, after=after, before=before, page=page,
                         per_page=per_page, projection=_SHOWN,
                         advice="narrow it with user, action, target or since/until", kind="time")
