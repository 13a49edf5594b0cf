"""The audit trail: who did what, written to the ``audit`` collection.

An entry is ``{at, action, actor, target, detail}``, plus ``expires`` when it
is kept only for a while (the TTL index on ``expires`` deletes it then;
entries without it stay). ``actor`` and ``target`` are cut to ``MAX_NAME``
characters, since some come from strangers (the name of a failed login);
``detail`` then holds the original length as ``actor_length``/``target_length``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["record", "recent", "MAX_NAME"]

MAX_NAME = 100


async def record(db: Database, action: str, *, actor: str, target: str | None = None,
                 keep_for: timedelta | None = None, **detail: Any) -> None:
    """Append one audit entry, e.g. ``record(db, "user.add", actor="admin", target="bob")``.

    With ``keep_for`` the entry expires that long after now.
    """
    now = datetime.now(timezone.utc)
    for field, value in (("actor", actor), ("target", target)):
        if value is not None and len(value) > MAX_NAME:
            detail[f"{field}_length"] = len(value)
    entry = {"at": now, "action": action, "actor": actor[:MAX_NAME],
             "target": None if target is None else target[:MAX_NAME], "detail": detail}
    if keep_for is not None:
        entry["expires"] = now + keep_for
    await db.audit.insert_one(entry)


async def recent(db: Database, *, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit entries first, optionally only those about ``target``."""
    query = {} if target is None else {"target": target}
    return await db.audit.find(query, {"_id": 0}).sort("at", -1).limit(limit).to_list()
