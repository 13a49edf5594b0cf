"""The audit trail: who did what, written to the ``audit`` collection."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["record", "recent"]


async def record(db: Database, action: str, *, actor: str, target: str | None = None,
                 **detail: Any) -> None:
    """Append one audit entry, e.g. ``record(db, "user.add", actor="admin", target="bob")``."""
    await db.audit.insert_one({
        "at": datetime.now(timezone.utc), "action": action, "actor": actor,
        "target": target, "detail": detail,
    })


async def recent(db: Database, *, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit entries first, optionally only those about ``target``."""
    query = {} if target is None else {"target": target}
    return await db.audit.find(query, {"_id": 0}).sort("at", -1).limit(limit).to_list()
