"""Authentication: passwords, tokens, a cache of verified credentials, throttling of failures.

``Authenticator`` answers "who is this?" for the HTTP layer, given Basic
credentials or a token (bearer header or login cookie):

- password verification runs off the event loop (argon2 is slow on purpose);
- a successful verification is cached for ``cache_seconds`` under a keyed
  hash of the credentials (the password is never kept), and the entry is
  dropped as soon as the user's ``version`` differs, that is after any change
  of the user, made by any process;
- failures are counted per user name and per client address; past
  ``free_failures`` each further attempt must wait twice as long (up to
  ``max_backoff`` s) and is refused with ``TooManyRequests`` meanwhile;
- tokens are signed (HMAC-SHA256) with a secret kept in the database, so every
  server process accepts them, and carry the user's ``password_set`` time, so
  a password change revokes them.
"""
from __future__ import annotations

import base64
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pymongo.errors import DuplicateKeyError

from core import audit, users
from core.errors import TooManyRequests, Unauthorized

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Authenticator", "Throttle", "load_secret"]

_SECRET_ID = "token_secret"


async def load_secret(db: Database) -> bytes:
    """The token-signing secret shared by all processes, created on first use."""
    try:
        await db.settings.insert_one({"_id": _SECRET_ID, "value": secrets.token_bytes(32)})
    except DuplicateKeyError:
        pass
    doc = await db.settings.find_one({"_id": _SECRET_ID})
    return bytes(doc["value"])


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


class Throttle:
    """Counts failed logins per key and says how long the next attempt must wait."""

    def __init__(self, *, free_failures: int = 5, max_backoff: float = 60.0,
                 forget_after: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.max_backoff = max_backoff
        self.forget_after = forget_after
        self.clock = clock
        self._failures: dict[str, _Failures] = {}

    def wait_for(self, key: str) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        entry = self._failures.get(key)
        if entry is not None and self.clock() - entry.last > self.forget_after:
            del self._failures[key]
            return 0.0
        if entry is None or entry.count < self.free_failures:
            return 0.0
        backoff = min(2.0 ** (entry.count - self.free_failures + 1), self.max_backoff)
        return max(0.0, entry.last + backoff - self.clock())

    def check(self, *keys: str) -> None:
        """Raise ``TooManyRequests`` if any of ``keys`` must still wait."""
        for key in keys:
            wait = self.wait_for(key)
            if wait > 0:
                kind, _, name = key.partition(":")
                raise TooManyRequests(
                    f"too many failed logins for {kind} {name!r}; retry in {math.ceil(wait)} s",
                    retry_after=math.ceil(wait))

    def fail(self, *keys: str) -> None:
        """Count one failure against each of ``keys``."""
        now = self.clock()
        self._forget(now)
        for key in keys:
            entry = self._failures.setdefault(key, _Failures())
            entry.count += 1
            entry.last = now

    def succeed(self, *keys: str) -> None:
        """Forget the failures of ``keys`` after a successful login."""
        for key in keys:
            self._failures.pop(key, None)

    def _forget(self, now: float) -> None:
        # Old entries go, so that a stream of failures cannot grow memory forever.
        if len(self._failures) > 10_000:
            for key in [k for k, e in self._failures.items() if now - e.last > self.forget_after]:
                del self._failures[key]


class Authenticator:
    """Turns credentials into a user document, or raises ``Unauthorized``/``TooManyRequests``."""

    def __init__(self, db: Database, secret: bytes, *, token_seconds: float = 12 * 3600,
                 cache_seconds: float = 60.0, cache_size: int = 10_000,
                 throttle: Throttle | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.secret = secret
        self.token_seconds = token_seconds
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.throttle = throttle or Throttle(clock=clock)
        self.clock = clock
        self._cache_key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        self._cache: OrderedDict[bytes, tuple[str, int, float]] = OrderedDict()
        self.stats = {"verifications": 0, "cache_hits": 0}

    # -- passwords -------------------------------------------------------

    async def password(self, name: str, password: str, *, address: str) -> dict[str, Any]:
        """The active user ``name`` if ``password`` is right.

        Raises ``TooManyRequests`` while the name or the address is throttled,
        ``Unauthorized`` for a wrong name or password or a disabled user.
        """
        keys = (f"user:{name}", f"address:{address}")
        self.throttle.check(*keys)
        user = await users.find(self.db, name)
        if user is not None and self._cached(name, password, user):
            self.stats["cache_hits"] += 1
            return self._require_active(user)
        self.stats["verifications"] += 1
        if not await users.verify_password(self.db, user, password):
            self.throttle.fail(*keys)
            await audit.record(self.db, "login.failed", actor=name, target=name, address=address)
            raise Unauthorized("wrong user name or password")
        self.throttle.succeed(*keys)
        self._remember(name, password, user)
        return self._require_active(user)

    def _key(self, name: str, password: str) -> bytes:
        return hmac.digest(self._cache_key, f"{name}\0{password}".encode(), "sha256")

    def _cached(self, name: str, password: str, user: dict[str, Any]) -> bool:
        key = self._key(name, password)
        entry = self._cache.get(key)
        if entry is None:
            return False
        cached_name, version, expires = entry
        if cached_name != name or version != user.get("version") or self.clock() > expires:
            del self._cache[key]  # the user changed (or time is up): verify again
            return False
        return True

    def _remember(self, name: str, password: str, user: dict[str, Any]) -> None:
        key = self._key(name, password)
        self._cache[key] = (name, user.get("version"), self.clock() + self.cache_seconds)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def forget(self, name: str) -> None:
        """Drop every cached verification of ``name`` (e.g. after changing it here)."""
        for key in [k for k, (n, _, _) in self._cache.items() if n == name]:
            del self._cache[key]

    @staticmethod
    def _require_active(user: dict[str, Any]) -> dict[str, Any]:
        if not user.get("active"):
            raise Unauthorized(f"user {user['name']!r} is disabled")
        return user

    # -- tokens ----------------------------------------------------------

    def issue_token(self, user: dict[str, Any]) -> tuple[str, float]:
        """A signed token for ``user`` and its expiry (Unix time)."""
        expires = time.time() + self.token_seconds
        payload = {"u": user["name"], "e": int(expires), "p": _stamp(user)}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}", expires

    def _sign(self, body: str) -> str:
        return _b64(hmac.digest(self.secret, body.encode(), "sha256"))

    async def token(self, token: str) -> dict[str, Any]:
        """The active user a token was issued to; raises ``Unauthorized`` if it is not valid now."""
        body, _, signature = token.partition(".")
        if not signature or not hmac.compare_digest(signature, self._sign(body)):
            raise Unauthorized("invalid token")
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            name, expires, stamp = payload["u"], payload["e"], payload["p"]
        except (ValueError, KeyError, TypeError):
            raise Unauthorized("invalid token") from None
        if time.time() > expires:
            raise Unauthorized("token expired; log in again")
        user = await users.find(self.db, name)
        if user is None:
            raise Unauthorized("invalid token: the user no longer exists")
        if _stamp(user) != stamp:
            raise Unauthorized("token revoked by a password change; log in again")
        return self._require_active(user)


def _stamp(user: dict[str, Any]) -> int:
    return int(user["password_set"].timestamp() * 1000)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
