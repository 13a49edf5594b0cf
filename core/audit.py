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
and the caller hears of every error: none is lost silently.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from pymongo import InsertOne
from pymongo.errors import ClientBulkWriteException, DuplicateKeyError, PyMongoError

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

    from core.db import Database

__all__ = ["record", "insert_recorded", "entry", "recent", "MAX_NAME"]

MAX_NAME = 100


async def record(db: Database, action: str, *, actor: str, target: str | None = None,
                 keep_for: timedelta | None = None, **detail: Any) -> None:
    """Append one audit entry, e.g. ``record(db, "user.add", actor="admin", target="bob")``.

    With ``keep_for`` the entry expires that long after now.
    """
    await db.audit.insert_one(entry(action, actor=actor, target=target, keep_for=keep_for, **detail))


async def insert_recorded(db: Database, collection: AsyncCollection, document: dict[str, Any], action: str, *,
                          actor: str, target: str | None = None, **detail: Any) -> None:
    """Insert ``document`` into ``collection`` and record ``action`` (like ``record``), in one command if possible.

    Raises ``DuplicateKeyError`` as ``insert_one`` does (nothing is recorded
    then), and any other error of either write; after an error in writing the
    entry the document may be in without it, as with two separate inserts.
    """
    audited = entry(action, actor=actor, target=target, **detail)
    if not db.client_bulk_write:
        await collection.insert_one(document)
        await db.audit.insert_one(audited)
        return
    try:
        await db.client.bulk_write([InsertOne(document, namespace=collection.full_name),
                                    InsertOne(audited, namespace=db.audit.full_name)], ordered=True)
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
