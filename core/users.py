"""Users: stored in the ``user`` collection, passwords hashed with argon2.

A user document::

    {name, password (hash), roles, perms, active, created, updated,
     password_set, version}

``version`` grows with every change, which is how caches of verified
credentials in every server process notice that a user changed.
A password change, a disable and a removal end every login session and API
token of the user (``core.tokens.revoke_user``).
Every change is written to ``audit``, and dropped from this process's caches
of user documents at once (``Database.changed``; other processes' hubs hear
of it from their change stream). Hashing runs off the event loop.

Who acts: every function takes ``by``, the acting user's document (the HTTP
routes pass the caller), and then raises ``Forbidden`` unless it is an active
admin (``get`` also lets a user read itself) and audits its name; without
``by`` it is an operator's command (the command line, the first start), which
names itself as ``actor``.
"""
from __future__ import annotations

import functools
import re
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

from passlib.context import CryptContext
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from core import audit, tokens
from core.blocking import run_blocking
from core.encoding import is_utf8
from core.errors import BadArgument, Conflict, NotFound
from core.permissions import READ, check_permission, check_role, require_admin

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["PASSWORDS", "add", "get", "find", "list_users", "set_password", "change_access",
           "set_active", "update", "remove", "verify_password", "public", "bootstrap_admin", "check_name"]

# argon2 for new hashes; older schemes are still verified, then rehashed.
PASSWORDS = CryptContext(schemes=["argon2", "pbkdf2_sha256", "bcrypt"], deprecated="auto")


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so that a wrong name
    takes as long as a wrong password and names cannot be probed by timing."""
    return PASSWORDS.hash(secrets.token_hex(8))


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_MAX_PASSWORD = 1024
_PUBLIC_FIELDS = ("name", "roles", "perms", "active", "created", "updated")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid user name; raise ``BadArgument`` saying why not."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadArgument(
            f"bad user name {name!r}: 1-64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit")
    return name


def _check_password(password: str) -> str:
    if not isinstance(password, str) or not password:
        raise BadArgument("the password must not be empty")
    if len(password) > _MAX_PASSWORD:
        raise BadArgument(f"the password is longer than {_MAX_PASSWORD} characters")
    return password


def _acting(by: dict[str, Any] | None, actor: str | None) -> str:
    """The audit actor of a change: ``by``'s name once it is known to be an admin, else ``actor``.

    Raises ``Forbidden`` when ``by`` is not an active admin.
    """
    if by is not None:
        require_admin(by)
        return by["name"]
    if actor is None:
        raise TypeError("give by (the acting user) or actor (the operator command's name)")
    return actor


def public(user: dict[str, Any]) -> dict[str, Any]:
    """The user as shown to clients: everything but the hash and internals."""
    return {key: user.get(key) for key in _PUBLIC_FIELDS}


async def find(db: Database, name: str) -> dict[str, Any] | None:
    """The user document named ``name``, or ``None``."""
    return await db.user.find_one({"name": name})


async def get(db: Database, name: str, *, by: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user document named ``name``; raises ``NotFound``.

    With ``by``, raises ``Forbidden`` unless ``by`` is an admin or that user.
    """
    if by is not None and by.get("name") != name:
        require_admin(by, READ)
    user = await find(db, name)
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


async def list_users(db: Database, *, by: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All users, by name, without password hashes; with ``by``, for admins only (``Forbidden``)."""
    if by is not None:
        require_admin(by, READ)
    return [public(user) async for user in db.user.find({}).sort("name", 1)]


async def add(db: Database, name: str, password: str, *, roles: Iterable[str] = (),
              perms: Iterable[str] = (), actor: str | None = None,
              by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create an active user; raises ``BadArgument`` or ``Conflict`` if the name is taken."""
    actor = _acting(by, actor)
    check_name(name)
    _check_password(password)
    roles = sorted({check_role(role) for role in roles})
    perms = sorted({check_permission(perm) for perm in perms})
    now = _now()
    user = {"name": name, "password": await run_blocking(PASSWORDS.hash, password),
            "roles": roles, "perms": perms, "active": True, "created": now, "updated": now,
            "password_set": now, "version": 1}
    try:
        await db.user.insert_one(user)
    except DuplicateKeyError:
        raise Conflict(f"user {name!r} exists already") from None
    await audit.record(db, "user.add", actor=actor, target=name, roles=roles, perms=perms)
    return public(user)


async def _update(db: Database, name: str, change: dict[str, Any]) -> dict[str, Any]:
    """Apply ``$set`` fields to a user, bumping ``version``; raises ``NotFound``."""
    change = {**change, "updated": _now()}
    user = await db.user.find_one_and_update(
        {"name": name}, {"$set": change, "$inc": {"version": 1}},
        return_document=ReturnDocument.AFTER)
    if user is None:
        raise NotFound(f"no user {name!r}")
    db.changed("user", user["_id"])
    return user


async def set_password(db: Database, name: str, password: str, *, actor: str | None = None,
                       by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replace a user's password; its sessions and API tokens end."""
    actor = _acting(by, actor)
    _check_password(password)
    await get(db, name)
    hashed = await run_blocking(PASSWORDS.hash, password)
    user = await _update(db, name, {"password": hashed, "password_set": _now()})
    await tokens.revoke_user(db, name)
    await audit.record(db, "user.passwd", actor=actor, target=name)
    return public(user)


async def _require_other_admin(db: Database, name: str, action: str) -> None:
    """Raise ``Conflict`` if ``name`` is the last active admin."""
    others = await db.user.count_documents(
        {"roles": "admin", "active": True, "name": {"$ne": name}}, limit=1)
    user = await get(db, name)
    if not others and "admin" in user.get("roles", ()) and user.get("active"):
        raise Conflict(f"cannot {action} {name!r}: it is the last active admin; "
                       "make another user admin first")


async def change_access(db: Database, name: str, *, grant: Iterable[str] = (),
                        revoke: Iterable[str] = (), add_roles: Iterable[str] = (),
                        drop_roles: Iterable[str] = (), actor: str | None = None,
                        by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grant and revoke permissions and roles of a user.

    Raises ``BadArgument`` for malformed permissions or unknown roles, and
    ``Conflict`` when dropping the admin role of the last active admin.
    """
    actor = _acting(by, actor)
    grant = {check_permission(p) for p in grant}
    revoke = {check_permission(p) for p in revoke}
    add_roles = {check_role(r) for r in add_roles}
    drop_roles = {check_role(r) for r in drop_roles}
    if "admin" in drop_roles:
        await _require_other_admin(db, name, "drop the admin role of")
    while True:
        user = await get(db, name)
        perms = sorted((set(user.get("perms", ())) | grant) - revoke)
        roles = sorted((set(user.get("roles", ())) | add_roles) - drop_roles)
        # Compare-and-set on version: a concurrent change makes us re-read.
        result = await db.user.update_one(
            {"_id": user["_id"], "version": user["version"]},
            {"$set": {"perms": perms, "roles": roles, "updated": _now()}, "$inc": {"version": 1}})
        if result.modified_count:
            break
    db.changed("user", user["_id"])
    await audit.record(db, "user.access", actor=actor, target=name,
                       grant=sorted(grant), revoke=sorted(revoke),
                       add_roles=sorted(add_roles), drop_roles=sorted(drop_roles))
    return public(await get(db, name))


async def set_active(db: Database, name: str, active: bool, *, actor: str | None = None,
                     by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Enable or disable a user; a disabled user cannot log in, and its sessions and API tokens end.

    Raises ``Conflict`` when disabling the last active admin.
    """
    actor = _acting(by, actor)
    if not active:
        await _require_other_admin(db, name, "disable")
    user = await _update(db, name, {"active": bool(active)})
    if not active:
        await tokens.revoke_user(db, name)
    await audit.record(db, "user.enable" if active else "user.disable", actor=actor, target=name)
    return public(user)


async def update(db: Database, name: str, *, password: str | None = None, grant: Iterable[str] = (),
                 revoke: Iterable[str] = (), admin: bool | None = None, active: bool | None = None,
                 actor: str | None = None, by: dict[str, Any] | None = None) -> dict[str, Any]:
    """Change several things of a user at once: access, then ``active``, then the password.

    Every argument is checked before anything changes: raises ``BadArgument``
    (also when nothing is to change), ``NotFound``, or ``Conflict`` when the
    last active admin would lose its role or be disabled. Each change is
    audited as by the function making it.
    """
    actor = _acting(by, actor)
    grant, revoke = [check_permission(p) for p in grant], [check_permission(p) for p in revoke]
    if password is not None:
        _check_password(password)
    if not (grant or revoke or password is not None or admin is not None or active is not None):
        raise BadArgument("nothing to change: give password, grant, revoke, admin or active")
    user = await get(db, name)
    if admin is False or active is False:
        await _require_other_admin(db, name, "drop the admin role of" if admin is False else "disable")
    if grant or revoke or admin is not None:
        user = await change_access(db, name, grant=grant, revoke=revoke, add_roles=["admin"] if admin else [],
                                   drop_roles=["admin"] if admin is False else [], actor=actor)
    if active is not None:
        user = await set_active(db, name, active, actor=actor)
    if password is not None:
        user = await set_password(db, name, password, actor=actor)
    return public(user)


async def remove(db: Database, name: str, *, actor: str | None = None,
                 by: dict[str, Any] | None = None) -> None:
    """Delete a user; raises ``NotFound``, or ``Conflict`` for the last active admin."""
    actor = _acting(by, actor)
    await _require_other_admin(db, name, "remove")
    removed = await db.user.find_one_and_delete({"name": name}, {"_id": 1})
    if removed is None:
        raise NotFound(f"no user {name!r}")
    db.changed("user", removed["_id"])
    await tokens.revoke_user(db, name)
    await audit.record(db, "user.remove", actor=actor, target=name)


async def verify_password(db: Database, user: dict[str, Any] | None, password: str) -> bool:
    """Check ``password`` against ``user``'s hash off the loop; rehash old schemes.

    With ``user=None`` a dummy hash is verified so the call takes as long. A
    password no user can have (too long, or not UTF-8) is wrong at once.
    """
    if len(password) > _MAX_PASSWORD or not is_utf8(password):
        return False  # argon2 would raise on it; answering at once says nothing about the user
    if user is None:
        await run_blocking(PASSWORDS.verify, password, _dummy_hash())
        return False
    ok, new_hash = await run_blocking(PASSWORDS.verify_and_update, password, user["password"])
    if ok and new_hash:
        # Same password, stronger hash: not a change of the user, so neither
        # version nor password_set move (caches and tokens stay valid).
        await db.user.update_one({"_id": user["_id"], "password": user["password"]},
                                 {"$set": {"password": new_hash}})
        db.changed("user", user["_id"])
    return ok


async def bootstrap_admin(db: Database, password: str | None = None) -> str | None:
    """Create the ``admin`` user when no admin exists yet.

    Uses ``password`` (``JOBDECK_ADMIN_PASSWORD``) or a generated one. Returns
    the password if it was generated (to be printed once), else ``None``.
    """
    if await db.user.count_documents({"roles": "admin"}, limit=1):
        return None
    generated = None if password else secrets.token_urlsafe(12)
    try:
        await add(db, "admin", password or generated, roles=["admin"], actor="bootstrap")
    except Conflict:
        return None  # another process created it first, or a non-admin 'admin' exists
    return generated
