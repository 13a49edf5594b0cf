"""Caches of the documents every request reads: the user behind a credential, a job class's registry entry.

A ``Cache`` keeps documents of one collection by a lookup key (a user's name,
a qual_name). An entry is dropped:

- at once when this process changed the document: the core function that
  wrote it calls ``Database.changed``;
- when the hub's change stream reports a change of it, made by any process
  (within milliseconds);
- all of them whenever the hub (re)opens its stream, since changes may have
  been missed meanwhile.

An entry is never used more than ``stale_seconds`` (default 2 s) after the
database changed: it is used while the hub's change stream has answered
within the last ``stale_seconds`` (a quiet stream answers every second; any
change made before an answer has dropped its entry by then), and otherwise
(no change streams, a stream that is down or behind) only within
``stale_seconds`` of being read. However fresh the stream, an entry is read
again after ``max_age``. A read that a change overtakes is not kept, so a
slow read cannot put back what a change dropped.

Documents are shared, not copied: callers must not change them.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Hashable

if TYPE_CHECKING:
    from core.db import Database
    from core.hub import Hub

__all__ = ["Cache"]


@dataclass
class _Entry:
    document: dict[str, Any]
    read_at: float  # when the read began


class Cache:
    """Documents of ``collection`` by key; ``await get(key, load)``, ``close()`` when done.

    Registers with ``db`` (``Database.changed`` drops its entries); ``hub``,
    when given, is the change stream whose answers let entries live past
    ``stale_seconds``. Holds at most ``max_entries`` documents, the least
    recently used go first.
    """

    def __init__(self, db: Database, collection: str, *, hub: Hub | None = None, stale_seconds: float = 2.0,
                 max_age: float = 60.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.collection = collection
        self.hub = hub
        self.stale_seconds = stale_seconds
        self.max_age = max_age
        self.max_entries = max_entries
        self.clock = clock
        self.stats = {"hits": 0, "reads": 0}
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._keys: dict[Any, Hashable] = {}  # document _id -> key
        # Bumped by every drop: a read that began before it must not be kept.
        self._generation = 0
        db.caches.setdefault(collection, []).append(self)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Stop caching: drop everything and unregister from the database."""
        self.drop()
        caches = self.db.caches.get(self.collection, [])
        if self in caches:
            caches.remove(self)

    async def get(self, key: Hashable,
                  load: Callable[[], Awaitable[dict[str, Any] | None]]) -> dict[str, Any] | None:
        """The document of ``key``: cached if still fresh enough, else ``await load()`` (and kept).

        ``None`` (nothing found) is not kept. Raises what ``load`` raises.
        """
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None:
            if self._usable(entry, now):
                self.stats["hits"] += 1
                self._entries.move_to_end(key)
                return entry.document
            self._forget(key)
        generation = self._generation
        self.stats["reads"] += 1
        document = await load()
        if document is not None and generation == self._generation:
            self._keep(key, _Entry(document, now))
        return document

    def _usable(self, entry: _Entry, now: float) -> bool:
        age = now - entry.read_at
        if age > self.max_age:
            return False
        if age <= self.stale_seconds:
            return True
        # Every change made before the stream's last answer has dropped its entry.
        heard = None if self.hub is None else self.hub.heard_at
        return heard is not None and now - heard <= self.stale_seconds

    def _keep(self, key: Hashable, entry: _Entry) -> None:
        self._forget(key)
        self._entries[key] = entry
        self._keys[entry.document.get("_id")] = key
        while len(self._entries) > self.max_entries:
            self._forget(next(iter(self._entries)))

    def _forget(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._keys.pop(entry.document.get("_id"), None)

    def drop(self, document_id: Any = None) -> None:
        """The document ``document_id`` changed (``None``: any may have): forget it."""
        self._generation += 1
        if document_id is None:
            self._entries.clear()
            self._keys.clear()
            return
        key = self._keys.get(document_id)
        if key is not None:
            self._forget(key)
