"""Authentication: passwords, tokens, a cache of verified credentials, throttling of failures.

``Authenticator`` answers "who is this?" for the HTTP layer, given Basic
credentials or a token (bearer header or login cookie):

- password verification runs off the event loop (argon2 is slow on purpose);
- a successful verification is cached for ``cache_seconds`` under a keyed
  hash of the credentials (the password is never kept), and the entry is
  dropped as soon as the user's ``version`` differs, that is after any change
  of the user, made by any process;
- with a ``user_cache`` (``core.cache``, as the server has) the user document
  itself is cached too, so that a cached credential or a token costs no
  database read: a change of the user made in this process is seen at once,
  one made in another process within the cache's ``stale_seconds`` (2 s;
  milliseconds while the hub's change stream runs). A disabled user, a
  changed password (which also revokes tokens) or a revoked permission thus
  takes effect everywhere within that bound. Without one, every check reads
  the user;
- tokens (login sessions and API tokens, ``core.tokens``) are documents of
  the ``token`` collection, read through a ``token_cache`` when there is one
  (the server's; a revoked token is refused by every process within
  milliseconds), else read for every check.

The throttle guesses against passwords, and cannot be turned against their owner:

- every attempt is counted *before* it is verified, so concurrent guesses
  count as much as consecutive ones; attempts past the allowance that arrive
  while others of the same pair are being verified wait for those to end (a
  right one lets them in through the cache, wrong ones get them refused), so
  a script's first parallel requests are not refused;
- the hard limit is per (user name, client address) pair: past
  ``free_failures`` attempts that were not right, the pair's next attempt is
  refused with ``TooManyRequests`` until ``2 ** (n - free_failures + 1)`` s
  (at most ``max_backoff`` s) after its last one. Refused attempts are not
  counted. A right password clears the pair; a pair left alone for
  ``forget_after`` s is forgotten;
- per user name and per address (many names sprayed from one address) there
  is no refusal, only a delay before verifying: after ``n >= free_failures``
  failures, ``delay_step * 2 ** (n - free_failures)`` s, at most ``max_delay``
  s. The right password from another address thus always gets in, and a
  still-valid cached credential from an address that is not hard-limited
  answers at once, with neither delay nor verification;
- each table keeps at most ``max_entries`` keys (the oldest goes first), user
  names in keys are cut to ``MAX_NAME`` characters and IPv6 addresses count
  by their /64 network, so no attacker can grow memory without bound;
- a failure is audited as ``login.failed`` (the name cut to ``MAX_NAME``
  characters, see ``core.audit``), an entry the TTL index removes after
  ``keep_failed_logins``.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Hashable, Iterator

from pymongo.errors import PyMongoError

from core import audit, tokens, users
from core.errors import TooManyRequests, Unauthorized

if TYPE_CHECKING:
    from core.cache import Cache
    from core.db import Database

__all__ = ["Authenticator", "Throttle", "MAX_NAME"]

log = logging.getLogger(__name__)

#: User names in throttle keys are cut to this many characters (valid names have at most 64).
MAX_NAME = 100


@dataclass
class _Count:
    n: int = 0
    last: float = 0.0


class _Counts:
    """Counts per key: at most ``max_entries`` keys, the one counted longest ago dropped first,
    and a key not counted for ``forget_after`` s forgotten."""

    def __init__(self, max_entries: int, forget_after: float, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self.forget_after = forget_after
        self.clock = clock
        self._counts: OrderedDict[Hashable, _Count] = OrderedDict()  # oldest ``last`` first

    def __len__(self) -> int:
        return len(self._counts)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._counts)

    def get(self, key: Hashable) -> _Count:
        """The count of ``key`` (zero when unknown or forgotten); not to be changed."""
        now = self.clock()
        while self._counts:
            oldest, count = next(iter(self._counts.items()))
            if now - count.last <= self.forget_after:
                break
            del self._counts[oldest]
        return self._counts.get(key) or _Count()

    def add(self, key: Hashable) -> None:
        """Count one more for ``key``, now."""
        count = self._counts.pop(key, None) or _Count()
        count.n += 1
        count.last = self.clock()
        self._counts[key] = count  # at the end: the newest
        if len(self._counts) > self.max_entries:
            self._counts.popitem(last=False)

    def subtract(self, key: Hashable) -> None:
        """Take back one count of ``key``."""
        count = self._counts.get(key)
        if count is not None:
            count.n -= 1
            if count.n <= 0:
                del self._counts[key]

    def drop(self, key: Hashable) -> None:
        """Forget ``key``."""
        self._counts.pop(key, None)


class Throttle:
    """Counts login attempts; refuses a (user, address) pair past its limit, delays the rest.

    The rules are in the module docstring. Call ``admit`` before verifying a
    password, then ``succeed``, ``fail`` or (the check did not finish) ``release``.
    ``pairs``, ``users`` and ``addresses`` are the three tables.
    """

    def __init__(self, *, free_failures: int = 5, max_backoff: float = 60.0,
                 forget_after: float = 900.0, delay_step: float = 0.25, max_delay: float = 2.0,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.max_backoff = max_backoff
        self.delay_step = delay_step
        self.max_delay = max_delay
        self.clock = clock
        #: Attempts per (name, address) not (yet) proven right: the hard limit.
        self.pairs = _Counts(max_entries, forget_after, clock)
        #: Failures per name and per address: the delays.
        self.users = _Counts(max_entries, forget_after, clock)
        self.addresses = _Counts(max_entries, forget_after, clock)

    def check(self, name: str, address: str) -> None:
        """Raise ``TooManyRequests`` while the pair (``name``, ``address``) must wait."""
        count = self.pairs.get(_pair(name, address))
        if count.n < self.free_failures:
            return
        backoff = min(2.0 ** (count.n - self.free_failures + 1), self.max_backoff)
        wait = count.last + backoff - self.clock()
        if wait > 0:
            raise TooManyRequests(
                f"too many failed logins for {name[:MAX_NAME]!r} from {_network(address)}; "
                f"retry in {math.ceil(wait)} s", retry_after=math.ceil(wait))

    def admit(self, name: str, address: str) -> float:
        """Count an attempt of the pair as failed until it succeeds; return the seconds
        to wait before verifying it.

        Raises ``TooManyRequests`` (and counts nothing) while the pair must wait.
        Synchronous, so that concurrent attempts are counted before any is verified.
        """
        self.check(name, address)
        self.pairs.add(_pair(name, address))
        failures = max(self.users.get(_name(name)).n, self.addresses.get(_network(address)).n)
        if failures < self.free_failures:
            return 0.0
        return min(self.delay_step * 2.0 ** (failures - self.free_failures), self.max_delay)

    def fail(self, name: str, address: str) -> None:
        """The admitted attempt was wrong: count it against the name and the address too."""
        self.users.add(_name(name))
        self.addresses.add(_network(address))

    def succeed(self, name: str, address: str) -> None:
        """The pair's attempt was right: forget the pair's attempts."""
        self.pairs.drop(_pair(name, address))

    def release(self, name: str, address: str) -> None:
        """The admitted attempt was not checked (an error): take it back."""
        self.pairs.subtract(_pair(name, address))


def _name(name: str) -> str:
    return name[:MAX_NAME]


@functools.lru_cache(maxsize=4096)  # parsed three times per request otherwise; addresses repeat
def _network(address: str) -> str:
    """The address as the throttle counts it: IPv4 as it is, IPv6 by its /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:MAX_NAME]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # One host usually holds a whole /64: counting single addresses would not limit it.
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _pair(name: str, address: str) -> tuple[str, str]:
    return _name(name), _network(address)


class Authenticator:
    """Turns credentials into a user document, or raises ``Unauthorized``/``TooManyRequests``."""

    def __init__(self, db: Database, *, token_seconds: float = 12 * 3600,
                 cache_seconds: float = 60.0, cache_size: int = 10_000,
                 throttle: Throttle | None = None,
                 keep_failed_logins: timedelta = timedelta(days=30),
                 user_cache: Cache | None = None, token_cache: Cache | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.db = db
        self.user_cache = user_cache
        self.token_cache = token_cache
        self.token_seconds = token_seconds
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.throttle = throttle or Throttle(clock=clock)
        self.keep_failed_logins = keep_failed_logins
        self.clock = clock
        self.sleep = sleep
        self._cache_key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        self._cache: OrderedDict[bytes, tuple[str, int, float]] = OrderedDict()
        self.stats = {"verifications": 0, "cache_hits": 0}
        # Attempts being verified per throttle pair, and a future resolved when one ends.
        self._checking: dict[tuple[str, str], int] = {}
        self._ends: dict[tuple[str, str], asyncio.Future[None]] = {}

    # -- passwords -------------------------------------------------------

    async def password(self, name: str, password: str, *, address: str,
                       recheck: bool = False) -> dict[str, Any]:
        """The active user ``name`` if ``password`` is right.

        Raises ``TooManyRequests`` while the pair (``name``, ``address``) is
        throttled, ``Unauthorized`` for a wrong name or password or a disabled
        user. May first wait up to the throttle's ``max_delay``.

        ``recheck=True`` checks again credentials this request was already
        authenticated with (a long-lived request): no throttle, no audit, no
        delay; still the cache, and a full verification when the user changed.
        """
        if recheck:
            return await self._recheck(name, password)
        try:
            name.encode()
        except UnicodeEncodeError:  # a lone surrogate (from JSON): no user has it, BSON cannot store it
            raise Unauthorized("wrong user name or password") from None
        pair = _pair(name, address)
        while True:
            self.throttle.check(name, address)  # a hard-limited pair gets no cache hit either
            user = await self._find(name)
            if user is not None and self._cached(name, password, user):
                self.stats["cache_hits"] += 1
                self.throttle.succeed(name, address)
                return self._require_active(user)
            if not (self._checking.get(pair) and self.throttle.pairs.get(pair).n >= self.throttle.free_failures):
                break
            # The pair's allowance is taken by attempts still being verified: wait for one to end
            # rather than refuse, so that a script's first parallel requests all get in.
            await self._settled(pair)
        delay = self.throttle.admit(name, address)  # no await since the check above
        self._checking[pair] = self._checking.get(pair, 0) + 1
        try:
            if delay:
                await self.sleep(delay)
                user = await self._find(name)  # it may have changed meanwhile
            self.stats["verifications"] += 1
            right = await users.verify_password(self.db, user, password)
        except BaseException:
            self.throttle.release(name, address)
            raise
        finally:
            self._settle(pair)
        if not right:
            self.throttle.fail(name, address)
            await audit.record(self.db, "login.failed", actor=name, target=name, address=address,
                               keep_for=self.keep_failed_logins)
            raise Unauthorized("wrong user name or password")
        self.throttle.succeed(name, address)
        self._remember(name, password, user)
        return self._require_active(user)

    async def _settled(self, pair: tuple[str, str]) -> None:
        """Wait until an attempt of ``pair`` that is being verified has ended."""
        end = self._ends.get(pair)
        if end is None:
            end = self._ends[pair] = asyncio.get_running_loop().create_future()
        await asyncio.shield(end)

    def _settle(self, pair: tuple[str, str]) -> None:
        """One attempt of ``pair`` has ended: wake those waiting for it."""
        left = self._checking[pair] - 1
        if left:
            self._checking[pair] = left
        else:
            del self._checking[pair]
        end = self._ends.pop(pair, None)
        if end is not None and not end.done():
            end.set_result(None)

    async def _find(self, name: str) -> dict[str, Any] | None:
        """The user document named ``name`` (from the user cache if there is one), or None."""
        if self.user_cache is None:
            return await users.find(self.db, name)
        return await self.user_cache.get(name, lambda: users.find(self.db, name))

    async def _recheck(self, name: str, password: str) -> dict[str, Any]:
        user = await self._find(name)
        if user is None:
            raise Unauthorized(f"user {name[:MAX_NAME]!r} no longer exists")
        if self._cached(name, password, user):
            self.stats["cache_hits"] += 1
            return self._require_active(user)
        self.stats["verifications"] += 1
        if not await users.verify_password(self.db, user, password):
            raise Unauthorized("the password was changed; log in again")
        self._remember(name, password, user)
        return self._require_active(user)

    def _key(self, name: str, password: str) -> bytes:
        return hmac.digest(self._cache_key, f"{name}\0{password}".encode("utf-8", "surrogatepass"), "sha256")

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

    async def issue_token(self, user: dict[str, Any], *, address: str | None = None,
                          agent: str | None = None) -> tuple[str, datetime]:
        """A login session for ``user`` (``core.tokens``): its token and when it expires."""
        token, doc = await tokens.start_session(self.db, user, hours=self.token_seconds / 3600,
                                                address=address, agent=agent)
        return token, doc["expires"]

    async def token(self, token: str) -> dict[str, Any]:
        """The active user a login session or API token belongs to (for a read-only token, its
        read-only view); raises ``Unauthorized`` if it is not valid now.

        Neither throttled nor audited, and cheap (two lookups by key, or none
        from the caches): also the way to check again the token of a long-lived request.
        """
        parsed = tokens.parse(token)
        if parsed is None:
            raise Unauthorized("invalid token")
        token_id, secret = parsed
        if self.token_cache is None:
            doc = await self.db.token.find_one({"_id": token_id})
        else:
            doc = await self.token_cache.get(token_id, lambda: self.db.token.find_one({"_id": token_id}))
        name = None if doc is None else doc.get("user")
        user = await self._find(name) if isinstance(name, str) else None
        tokens.check(doc, secret, user)
        try:
            await tokens.touch(self.db, doc)
        except PyMongoError as exc:  # when it was last used is not worth failing the request for
            log.debug("could not note the use of token %s: %s", token_id, exc)
        return tokens.view(user, doc)
