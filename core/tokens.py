"""Bearer tokens: login sessions and API tokens, stored only as hashes, revocable at once.

Both kinds are documents of the ``token`` collection::

    {_id, kind: "session" | "api", user, name, read_only, hash, stamp,
     created, expires, last_used, address, agent}

- A **session** is made by ``POST /login`` (``start_session``): it lasts
  ``token_hours`` and ends at logout (``end``), or when its user changes
  password, is disabled or removed (``revoke_user``). ``address`` and
  ``agent`` (the client's address and User-Agent) help its owner recognise it.
- An **API token** is made by its user (``create``), named, maybe
  ``read_only`` (it then authenticates as a read-only view of its user, see
  ``core.permissions``), and lasts ``expires_in_days`` or until revoked.

The client holds ``jd_<id>_<secret>``: the document's id and 32 random bytes.
Only the SHA-256 of the secret is stored (the secret has 256 bits of
entropy, so a plain hash suffices and costs nothing per request). A token is
valid while its document exists, is not past ``expires`` (a TTL index also
deletes it then), its ``stamp`` is its user's ``password_set`` (a token made
while the password changed is refused), and the user is active. Revoking
deletes the document; every server process drops it from its cache of token
documents through its change stream (``core.cache``), so a revoked token is
refused everywhere within milliseconds (2 s without change streams).

Who acts: ``by`` is the acting user's view (the HTTP routes pass the
caller): a user manages its own tokens; an admin also others' (``user=``).
An API token cannot make tokens (it could outlive itself) and a read-only one
cannot revoke either. Without ``by`` it is an operator's command (the
command line), which names itself as ``actor``. Every change is audited.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from bson.errors import InvalidId

from core import audit
from core.errors import BadArgument, Conflict, Forbidden, NotFound, Unauthorized
from core.permissions import EXECUTE, READ, is_admin, require_admin

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["SESSION", "API", "MAX_API_TOKENS", "MAX_SESSIONS", "parse", "digest", "start_session", "create",
           "list_tokens", "revoke", "end", "revoke_user", "check", "public", "view"]

SESSION, API = "session", "api"
#: API tokens a user may hold; login sessions a user keeps (the oldest ends first).
MAX_API_TOKENS = 100
MAX_SESSIONS = 100
MAX_DAYS = 3650
#: ``last_used`` is written at most this often per token (seconds).
TOUCH_SECONDS = 60.0

_PREFIX = "jd_"
_TOKEN = re.compile(r"^jd_([0-9a-f]{24})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
_PUBLIC = ("_id", "kind", "user", "name", "read_only", "created", "last_used", "expires", "address", "agent")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def digest(secret: str) -> bytes:
    """What is stored of a token's secret."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse(token: str) -> tuple[ObjectId, str] | None:
    """A token's (document id, secret), or ``None`` if it is not one jobdeck hands out."""
    match = _TOKEN.match(token) if isinstance(token, str) and len(token) < 100 else None
    if match is None:
        return None
    return ObjectId(match.group(1)), match.group(2)


def _stamp(user: dict[str, Any]) -> int:
    return int(user["password_set"].timestamp() * 1000)


def public(doc: dict[str, Any], *, current: ObjectId | None = None) -> dict[str, Any]:
    """A token document as shown to clients: never its hash."""
    shown = {key: doc.get(key) for key in _PUBLIC}
    if doc.get("kind") == SESSION:
        shown["current"] = doc["_id"] == current
    return shown


async def _insert(db: Database, user: dict[str, Any], kind: str, action: str, actor: str, *,
                  expires: datetime | None, **fields: Any) -> tuple[str, dict[str, Any]]:
    secret = secrets.token_urlsafe(32)
    doc = {"_id": ObjectId(), "kind": kind, "user": user["name"], "hash": digest(secret), "stamp": _stamp(user),
           "created": _now(), "expires": expires, "last_used": None, **fields}
    detail = {"token": str(doc["_id"])} if kind == API else {"session": str(doc["_id"])}
    if kind == API:
        detail.update(name=fields["name"], read_only=fields["read_only"])
    else:
        detail.update(address=fields.get("address"))
    await audit.insert_recorded(db, db.token, doc, action, actor=actor, target=user["name"], **detail)
    return f"{_PREFIX}{doc['_id']}_{secret}", doc


async def start_session(db: Database, user: dict[str, Any], *, hours: float, address: str | None = None,
                        agent: str | None = None) -> tuple[str, dict[str, Any]]:
    """A login session of ``user`` (whose password was just checked) for ``hours``: (token, document).

    Audited as ``login``. The user's sessions beyond ``MAX_SESSIONS`` end, the oldest first.
    """
    token, doc = await _insert(db, user, SESSION, "login", user["name"],
                               expires=_now() + timedelta(hours=hours), name=None, read_only=False,
                               address=address, agent=(agent or "")[:200] or None)
    old = await db.token.find({"kind": SESSION, "user": user["name"]}, {"_id": 1}).sort(
        "created", -1).skip(MAX_SESSIONS).to_list()
    if old:
        await db.token.delete_many({"_id": {"$in": [o["_id"] for o in old]}})
        db.changed("token")
    return token, doc


def _acting(by: dict[str, Any] | None, actor: str | None, owner: str, action: str) -> str:
    """The audit actor of a change of ``owner``'s tokens; raises ``Forbidden`` if ``by`` may not."""
    if by is None:
        if actor is None:
            raise TypeError("give by (the acting user) or actor (the operator command's name)")
        return actor
    if by.get("read_only"):
        raise Forbidden(f"a read-only token of {by.get('name')!r} may not {action}")
    if owner != by["name"]:
        require_admin(by, EXECUTE)
    return by["name"]


async def create(db: Database, *, name: Any, read_only: Any = False, expires_in_days: Any = None,
                 by: dict[str, Any] | None = None, user: str | None = None,
                 actor: str | None = None) -> tuple[str, dict[str, Any]]:
    """A new API token of ``by`` (or, for an operator, of ``user``): (the token, its document).

    The token is returned only here. Raises ``BadArgument`` for a bad name,
    flag or lifetime, ``Conflict`` when the user has a token of that name or
    ``MAX_API_TOKENS`` already, ``NotFound`` for an unknown ``user``,
    ``Forbidden`` when ``by`` authenticated with an API token.
    """
    if by is not None and by.get("token_kind") == API:
        raise Forbidden("an API token cannot make tokens; authenticate with a password or a login session")
    owner = user if user is not None else (by or {}).get("name")
    if owner is None:
        raise TypeError("give by (the acting user) or user (whose token an operator makes)")
    actor = _acting(by, actor, owner, "make tokens")
    if not isinstance(name, str) or not _NAME.match(name) or not name.strip():
        raise BadArgument(f"bad token name {str(name)[:40]!r}: 1-64 characters, no control characters")
    if not isinstance(read_only, bool):
        raise BadArgument(f"read_only must be true or false, got {str(read_only)[:20]!r}")
    if expires_in_days is not None and (isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int)
                                        or not 1 <= expires_in_days <= MAX_DAYS):
        raise BadArgument(f"expires_in_days must be a whole number of days from 1 to {MAX_DAYS}, or null "
                          f"(never), got {str(expires_in_days)[:20]!r}")
    account = by if by is not None and owner == by["name"] else await db.user.find_one({"name": owner})
    if account is None:
        raise NotFound(f"no user {owner!r}")
    if not account.get("active"):
        raise Conflict(f"user {owner!r} is disabled: enable it first")
    mine = await db.token.find({"kind": API, "user": owner}, {"name": 1}).to_list()
    if any(doc.get("name") == name for doc in mine):
        raise Conflict(f"user {owner!r} has a token named {name!r} already; revoke it or choose another name")
    if len(mine) >= MAX_API_TOKENS:
        raise Conflict(f"user {owner!r} has {len(mine)} tokens, the most allowed; revoke one first")
    expires = None if expires_in_days is None else _now() + timedelta(days=expires_in_days)
    return await _insert(db, account, API, "token.create", actor, expires=expires, name=name,
                         read_only=read_only)


async def list_tokens(db: Database, *, kind: str = API, by: dict[str, Any] | None = None,
                      user: str | None = None, current: ObjectId | None = None) -> list[dict[str, Any]]:
    """The ``kind`` tokens of ``by`` (or of ``user``: another's needs an admin), oldest first, as ``public``.

    An operator (no ``by``) without ``user`` gets everyone's, by user.
    """
    if user is not None:
        from core.users import check_name  # core.users ends tokens: imported here, not at the top
        check_name(user)
    if by is not None:
        if user is not None and user != by["name"]:
            require_admin(by, READ)
        else:
            user = by["name"]
    query: dict[str, Any] = {"kind": kind, "user": user} if user is not None else {"kind": kind}
    docs = await db.token.find(query, {"hash": 0}).sort([("user", 1), ("created", 1)]).to_list()
    return [public(doc, current=current) for doc in docs if not _expired(doc)]


def _expired(doc: dict[str, Any]) -> bool:
    # The TTL index deletes expired documents within a minute or so; until then they are not valid.
    return doc.get("expires") is not None and doc["expires"] <= _now()


def _object_id(token_id: Any, kind: str) -> ObjectId:
    try:
        return ObjectId(token_id)
    except (InvalidId, TypeError):
        raise NotFound(f"no {'session' if kind == SESSION else 'token'} {str(token_id)[:40]!r}") from None


async def revoke(db: Database, token_id: Any, *, kind: str = API, by: dict[str, Any] | None = None,
                 actor: str | None = None) -> dict[str, Any]:
    """End the ``kind`` token ``token_id``: by its user, an admin, or an operator. Returns it (``public``).

    Raises ``NotFound`` also for another's token when ``by`` is no admin (its
    existence is not told).
    """
    what = "session" if kind == SESSION else "token"
    doc = await db.token.find_one({"_id": _object_id(token_id, kind), "kind": kind}, {"hash": 0})
    if doc is None or (by is not None and doc["user"] != by["name"] and not is_admin(by)):
        raise NotFound(f"no {what} {str(token_id)[:40]!r}")
    actor = _acting(by, actor, doc["user"], f"end {what}s")
    await _delete(db, doc, "session.end" if kind == SESSION else "token.revoke", actor)
    return public(doc)


async def end(db: Database, token: str) -> bool:
    """End the session or API token ``token`` (a logout): whoever holds it may. Whether it was valid."""
    parsed = parse(token)
    if parsed is None:
        return False
    doc = await db.token.find_one({"_id": parsed[0]}, {"hash": 1, "user": 1, "kind": 1})
    if doc is None or not hmac.compare_digest(doc["hash"], digest(parsed[1])):
        return False
    await _delete(db, doc, "logout" if doc["kind"] == SESSION else "token.revoke", doc["user"])
    return True


async def _delete(db: Database, doc: dict[str, Any], action: str, actor: str) -> None:
    result = await db.token.delete_one({"_id": doc["_id"]})
    db.changed("token", doc["_id"])
    if result.deleted_count:
        await audit.record(db, action, actor=actor, target=doc["user"], token=str(doc["_id"]),
                           kind=doc.get("kind"))


async def revoke_user(db: Database, name: str) -> int:
    """End every session and API token of user ``name`` (a password change, a disable, a removal)."""
    result = await db.token.delete_many({"kind": {"$in": [SESSION, API]}, "user": name})  # on the kind_user index
    db.changed("token")
    return result.deleted_count


def check(doc: dict[str, Any] | None, secret: str, user: dict[str, Any] | None) -> None:
    """Raise ``Unauthorized`` unless ``doc`` is a valid token document for ``secret`` of the active ``user``."""
    stored = None if doc is None else doc.get("hash")
    if not isinstance(stored, bytes) or not hmac.compare_digest(stored, digest(secret)):
        raise Unauthorized("invalid token: unknown, logged out, revoked, or ended when its user's password "
                           "changed or the user was disabled or removed; log in again")
    if not isinstance(doc.get("expires"), (datetime, type(None))) or _expired(doc):
        raise Unauthorized("token expired; log in again" if doc["kind"] == SESSION else "token expired")
    if user is None:
        raise Unauthorized("invalid token: the user no longer exists")
    if _stamp(user) != doc.get("stamp"):
        raise Unauthorized("token revoked by a password change; log in again")
    if not user.get("active"):
        raise Unauthorized(f"user {user['name']!r} is disabled")


def view(user: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The user as a token authenticates it: for an API token, marked so (and ``read_only`` if it is)."""
    if doc["kind"] != API:
        return user
    return {**user, "token_kind": API, "read_only": bool(doc.get("read_only"))}


async def touch(db: Database, doc: dict[str, Any]) -> None:
    """Write that ``doc`` was used now, if its ``last_used`` is older than ``TOUCH_SECONDS``."""
    now = _now()
    last = doc.get("last_used")
    if last is None or (now - last).total_seconds() >= TOUCH_SECONDS:
        doc["last_used"] = now  # this process's copy: not again before TOUCH_SECONDS
        await db.token.update_one({"_id": doc["_id"]}, {"$max": {"last_used": now}})
