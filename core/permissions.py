"""The permission model: the ``admin`` role, and ``job:<glob>:r|x`` permissions.

``r`` lets a user see and follow jobs whose qual_name matches the glob; ``x``
also lets them enqueue, kill, restart and remove them. ``admin`` may do
everything, users included. Disabled users may do nothing.

A user document with ``read_only`` set (what a read-only API token
authenticates as, ``core.tokens``) keeps every ``r`` and loses every ``x``:
``may(..., "x")`` is false, and an admin keeps only the admin's reading
rights (``require_admin(user, READ)``).
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable

from core.errors import BadArgument, Forbidden

__all__ = ["ROLES", "READ", "EXECUTE", "check_role", "check_permission", "is_admin",
           "may", "require", "require_admin", "readable_filter"]

ROLES = ("admin",)
READ, EXECUTE = "r", "x"
_PERMISSION = re.compile(r"^job:([A-Za-z0-9_.*?\[\]!-]+):([rx])$")


def check_role(role: str) -> str:
    """Return ``role`` if it is known; raise ``BadArgument`` otherwise."""
    if role not in ROLES:
        raise BadArgument(f"unknown role {role!r}; known roles: {', '.join(ROLES)}")
    return role


def check_permission(permission: str) -> str:
    """Return ``permission`` if it reads ``job:<glob>:r`` or ``job:<glob>:x``; raise ``BadArgument``."""
    if not isinstance(permission, str) or not _PERMISSION.match(permission):
        raise BadArgument(
            f"bad permission {permission!r}: expected job:<glob>:r (read) or job:<glob>:x "
            "(execute), e.g. job:jobs.example.*:x")
    return permission


def is_admin(user: dict[str, Any]) -> bool:
    """Whether ``user`` is an active admin."""
    return bool(user.get("active")) and "admin" in user.get("roles", ())


def _globs(user: dict[str, Any], action: str) -> Iterable[str]:
    for permission in user.get("perms", ()):
        match = _PERMISSION.match(permission)
        if match and (match.group(2) == EXECUTE or action == READ):
            yield match.group(1)


def may(user: dict[str, Any], qual_name: str, action: str) -> bool:
    """Whether ``user`` may read (``"r"``) or execute (``"x"``) jobs named ``qual_name``."""
    if not user.get("active") or (action != READ and user.get("read_only")):
        return False
    if is_admin(user):
        return True
    return any(fnmatch.fnmatchcase(qual_name, glob) for glob in _globs(user, action))


def require(user: dict[str, Any], qual_name: str, action: str) -> None:
    """Raise ``Forbidden`` unless ``may(user, qual_name, action)``."""
    if not may(user, qual_name, action):
        verb = "execute" if action == EXECUTE else "read"
        raise Forbidden(f"user {user.get('name')!r} may not {verb} {qual_name}")


def require_admin(user: dict[str, Any], action: str = EXECUTE) -> None:
    """Raise ``Forbidden`` unless ``user`` is an active admin; for a change (``action`` ``"x"``,
    the default) one not authenticated read-only."""
    if not is_admin(user):
        raise Forbidden(f"user {user.get('name')!r} is not an admin")
    if action != READ and user.get("read_only"):
        raise Forbidden(f"a read-only token of {user.get('name')!r} may not change anything")


def readable_filter(user: dict[str, Any], action: str = READ, field: str = "qual_name") -> dict[str, Any]:
    """A MongoDB filter matching the documents whose ``field`` the user may read (or execute)."""
    if is_admin(user) and not (action != READ and user.get("read_only")):
        return {}
    if action != READ and user.get("read_only"):
        return {field: {"$in": []}}
    patterns = [fnmatch.translate(glob) for glob in _globs(user, action)] if user.get("active") else []
    if not patterns:
        return {field: {"$in": []}}
    # fnmatch.translate anchors only the end; $regex searches, so anchor the start.
    return {field: {"$regex": "^(?:" + "|".join(f"(?:{p})" for p in patterns) + ")"}}
