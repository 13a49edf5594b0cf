"""JSON as jobdeck speaks it: ids as 24-character hex strings, times as ISO-8601 UTC."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId

__all__ = ["dumps", "isotime", "jsonable", "is_utf8"]


def isotime(moment: datetime) -> str:
    """``2026-11-24T10:00:00.123Z``: UTC, millisecond precision (as MongoDB stores it)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def jsonable(value: Any) -> Any:
    """``value`` with ObjectIds, datetimes, tuples and sets turned into JSON types."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return isotime(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Serialise ``value`` to JSON text after ``jsonable``."""
    return json.dumps(jsonable(value), ensure_ascii=False, **kwargs)


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: a JSON string may hold a lone surrogate, which no BSON string can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
