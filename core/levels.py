"""The queue in its own order, level by level: first and cursor pages that read about a page.

The queue's order is priority high to low, then ``_id`` (oldest first),
served by the index ``priority_id``. On the embedded server a query costs
what its index bounds hold, whatever its ``limit`` (``core.keyset``), and the
only cheap reads of that index are ranges of one level,
``{priority: p, _id: <window>}``. Two things cost a whole level to ask there:
which levels exist, and where a level starts (its smallest ``_id``).

So *hints* are kept in the ``settings`` document ``queue_levels``: per
priority level, a smallest ``_id`` (``low.p<level>``) and a largest
(``high.p<level>``). Every enqueue writes them as its counted change is
folded, a second later (``core.counts``: ``$min``/``$max``), a recount seeds
them (``counts.rebuild``), and the listing corrects what it finds. A hint is never trusted, only checked,
each check a range expected to be empty (a few milliseconds): no jobs at a
level between two hinted ones, none of a level below its ``low`` (walking
backwards: above its ``high``). Jobs a check finds are listed in their place
all the same and the hints corrected, so a page is exact whatever the hints
say; they only decide what it costs. A walk that corrected hints writes
those levels' fields only (a listing and a fold at once may overwrite each
other's value: still a hint, checked next time).

**Cost.** A first or cursor page reads about a page of jobs and counts up to
``COUNT_PAGES`` pages from the start, plus:

- the jobs a hinted level has lost since its ``low`` was written: jobs are
  taken oldest first, and the walk crosses the gap in ``_id`` windows that
  grow 256 times while empty, so the window that reaches the oldest job may
  hold several times what was taken;
- a level the hints do not know (jobs enqueued at a new priority within
  the last second, not folded yet): it is read whole, once;
- a ``before`` page that crosses into a higher level: the jobs enqueued at
  that level since its ``high`` was written.

**Filters.** The windows are read without the listing's conditions (a
condition beside the window makes the embedded server read the whole level),
then the conditions are applied to the ids read (``{_id: {$in: ids}, ...}``,
which the embedded server looks up by ``_id`` before filtering). A filtered
page (a non-admin's permissions, ``state``, ``search``, ``filter``) so reads
windows until a page of jobs matches: one matching few jobs reads many
windows, the whole queue for one matching none.

**Final states.** The queue holds live jobs only, but a copy of a job in a
final state can remain there for a moment after a crash; the walk leaves such
copies out itself (asking for ``state`` would cost the level).
"""
from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from core.errors import BadArgument
from core.keyset import COUNT_PAGES, Position, _check_per_page, windows_from, decode_cursor, encode_cursor, merge
from core.listing import QUERY_TIMEOUT_MS, Page, time_limited
from core.states import FINAL

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["HINTS_ID", "ORDER", "Hints", "load_hints", "enqueued", "level_key", "walk", "page"]

#: The ``settings`` document holding the hints.
HINTS_ID = "queue_levels"
#: The order the walk follows: the queue's default sort.
ORDER = [("priority", -1), ("_id", 1)]
_STUB = {"_id": 1, "priority": 1, "state": 1}
_FINAL = frozenset(state.value for state in FINAL)
# Beyond every priority (the walk's edges before it has a level).
_ABOVE, _BELOW = float("inf"), float("-inf")


@dataclass
class Hints:
    """Per priority level, the smallest and largest ``_id`` seen there; ``changed``: the levels corrected."""

    low: dict[int, ObjectId] = field(default_factory=dict)
    high: dict[int, ObjectId] = field(default_factory=dict)
    changed: set[int] = field(default_factory=set)

    def saw(self, items: list[dict[str, Any]], *, whole: bool, first: bool = False, last: bool = False) -> None:
        """Learn from ``items``: all of their levels (``whole``), or the start (``first``) or end of one."""
        by_level: dict[int, list[ObjectId]] = {}
        for item in items:
            by_level.setdefault(item["priority"], []).append(item["_id"])
        for level, ids in by_level.items():
            if whole or first:
                self._set(self.low, level, min(ids))
            if whole or last:
                self._set(self.high, level, max(ids))

    def forget(self, level: int) -> None:
        """The level holds no job any more."""
        if level in self.low or level in self.high:
            self.low.pop(level, None)
            self.high.pop(level, None)
            self.changed.add(level)

    def _set(self, table: dict[int, ObjectId], level: int, value: ObjectId) -> None:
        if table.get(level) != value:
            table[level] = value
            self.changed.add(level)

    def update(self) -> dict[str, Any]:
        """The update of the ``settings`` document writing the corrected levels (only those)."""
        values, gone = {}, {}
        for level in self.changed:
            for name, table in (("low", self.low), ("high", self.high)):
                if level in table:
                    values[f"{name}.{level_key(level)}"] = table[level]
                else:
                    gone[f"{name}.{level_key(level)}"] = ""
        return {key: value for key, value in (("$set", values), ("$unset", gone)) if value}


def level_key(level: int) -> str:
    """The field of a level in the hints' ``low`` and ``high`` (``p5``, ``p-1``)."""
    return f"p{level}"


def enqueued(levels: dict[int, tuple[ObjectId, ObjectId]]) -> dict[str, Any]:
    """The update of the hints for jobs enqueued at ``levels`` (level: smallest and largest new ``_id``).

    Written as each enqueue's count is folded (``core.counts``), so the
    listing knows every level and where it starts without reading it.
    """
    return {"$min": {f"low.{level_key(level)}": low for level, (low, _) in levels.items()},
            "$max": {f"high.{level_key(level)}": high for level, (_, high) in levels.items()}}


async def load_hints(db: Database) -> Hints:
    """The stored hints (none yet: empty)."""
    stored = await db.settings.find_one({"_id": HINTS_ID}, max_time_ms=QUERY_TIMEOUT_MS) or {}
    hints = Hints()
    for name, table in (("low", hints.low), ("high", hints.high)):
        for key, value in (stored.get(name) or {}).items():
            try:
                level = int(key[1:])
            except ValueError:
                continue
            if isinstance(value, ObjectId):
                table[level] = value
    return hints


async def _save(db: Database, hints: Hints) -> None:
    if update := hints.update():
        await db.settings.update_one({"_id": HINTS_ID}, update, upsert=True)


def _key(item: dict[str, Any]) -> tuple[int, ObjectId]:
    return -item["priority"], item["_id"]


class _Reader:
    """Reads ranges of the queue as stubs (``_id``, ``priority``, ``state``), the listing's conditions applied."""

    def __init__(self, db: Database, query: dict[str, Any]) -> None:
        self.db = db
        self.query = query

    async def read(self, bounds: dict[str, Any], *, forward: bool
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The live jobs in ``bounds`` matching the query, in walk order, and every job ``bounds`` held."""
        raw = await self.db.queue.find(bounds, _STUB, max_time_ms=QUERY_TIMEOUT_MS).to_list()
        raw = [item for item in raw if _is_level(item.get("priority"))]
        items = raw
        if raw and self.query:
            ids = {"_id": {"$in": [item["_id"] for item in raw]}}
            items = await self.db.queue.find(merge(ids, self.query), _STUB, max_time_ms=QUERY_TIMEOUT_MS).to_list()
        items = [item for item in items if item.get("state") not in _FINAL and _is_level(item.get("priority"))]
        items.sort(key=_key, reverse=not forward)
        return items, raw


def _is_level(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def _level(reader: _Reader, level: int, start: ObjectId, *, forward: bool, inclusive: bool, need: int
                 ) -> AsyncGenerator[tuple[list[dict[str, Any]], list[dict[str, Any]]], None]:
    """``(jobs, raw)`` of ``level`` from ``start`` on, window by window, until ``need`` jobs are given or the end."""
    windows = windows_from(start, "oid", not forward, inclusive=inclusive)
    held: int | None = None
    given = 0
    while given < need:
        try:
            bounds = next(windows) if held is None else windows.send(held)
        except StopIteration:
            return
        batch, raw = await reader.read({"priority": level, "_id": bounds}, forward=forward)
        held = len(raw)
        given += len(batch)
        yield batch, raw


async def _from_hint(reader: _Reader, hints: Hints, level: int, *, forward: bool, need: int
                     ) -> list[dict[str, Any]]:
    """Up to about ``need`` jobs of ``level`` from its start (``forward``) or end, checking its hint on the way."""
    hint = (hints.low if forward else hints.high).get(level)
    if hint is None:
        found, raw = await reader.read({"priority": level}, forward=forward)
        hints.saw(raw, whole=True)
        if not raw:
            hints.forget(level)
        return found
    # Jobs on the far side of the hint (expected none): all of them, in order, come first.
    found, raw = await reader.read({"priority": level, "_id": {"$lt" if forward else "$gt": hint}}, forward=forward)
    seen = bool(raw)
    hints.saw(raw, whole=False, first=forward, last=not forward)
    if len(found) < need:
        async for batch, raw in _level(reader, level, hint, forward=forward, inclusive=True, need=need - len(found)):
            found.extend(batch)
            if raw and not seen:  # the first jobs from the hint on: where the level starts (or ends) now
                hints.saw(raw, whole=False, first=forward, last=not forward)
                seen = True
    if not seen:  # the windows ran to the end of the level and met no job
        hints.forget(level)
    return found


async def walk(db: Database, query: dict[str, Any], position: Position | None, need: int,
               hints: Hints) -> list[dict[str, Any]]:
    """Up to ``need`` stubs of the queue's live jobs matching ``query`` after (or before) ``position``.

    ``position`` None is the start of the queue. Stubs hold ``_id``,
    ``priority`` and ``state``; they come back in ``ORDER`` (backwards for a
    ``before`` position). ``hints`` are used and corrected; the caller saves
    them.
    """
    forward = position is None or position.forward
    reader = _Reader(db, query)
    found: list[dict[str, Any]] = []
    edge: float = _ABOVE if forward else _BELOW
    if position is not None:
        level, start = position.values
        if not _is_level(level) or not isinstance(start, ObjectId):
            return []  # a cursor of another listing's values: nothing of this one is there
        async for batch, _ in _level(reader, level, start, forward=forward, inclusive=False, need=need):
            found.extend(batch)
        edge = level
    # The other levels, nearest first; each gap between hinted levels is checked for unknown ones.
    known = sorted((lv for lv in set(hints.low) | set(hints.high) if (lv < edge if forward else lv > edge)),
                   reverse=forward)
    for level in [*known, None]:
        if len(found) >= need:
            break
        far = (_BELOW if forward else _ABOVE) if level is None else level
        gap = {"$lt": edge, "$gt": far} if forward else {"$gt": edge, "$lt": far}
        unknown, raw = await reader.read({"priority": gap}, forward=forward)
        hints.saw(raw, whole=True)
        found.extend(unknown)
        if level is None or len(found) >= need:
            break
        found.extend(await _from_hint(reader, hints, level, forward=forward, need=need - len(found)))
        edge = level
    return found[:need]


async def _documents(db: Database, stubs: list[dict[str, Any]], projection: dict[str, Any] | None
                     ) -> list[dict[str, Any]]:
    """The documents of ``stubs``, in their order; one gone meanwhile (it left the queue) is left out."""
    if not stubs:
        return []
    docs = await db.queue.find({"_id": {"$in": [stub["_id"] for stub in stubs]}}, projection,
                               max_time_ms=QUERY_TIMEOUT_MS).to_list()
    by_id = {doc["_id"]: doc for doc in docs}
    return [by_id[stub["_id"]] for stub in stubs if stub["_id"] in by_id]


async def page(db: Database, query: dict[str, Any], *, after: Any = None, before: Any = None,
               per_page: int = 10, projection: dict[str, Any] | None = None, advice: str = "") -> Page:
    """The first page of the queue in ``ORDER``, or the page after/before a cursor, with ``next``/``prev``.

    As ``core.keyset.page_of`` gives it for a walked page (``total_count``
    counted up to ``COUNT_PAGES`` pages from the start, ``total_exact``),
    walked level by level (see the module). Raises ``BadArgument`` for a bad
    cursor, both cursors or a bad ``per_page``; ``DatabaseUnavailable`` when a
    read outlasts its time limit.
    """
    if after is not None and before is not None:
        raise BadArgument("give after or before, not both")
    name, cursor = ("after", after) if after is not None else ("before", before)
    position = decode_cursor(cursor, "queue", ORDER, name=name) if cursor is not None else None
    per_page = _check_per_page(per_page)
    cap = per_page * COUNT_PAGES
    with time_limited("the listing", advice):
        hints = await load_hints(db)
        # The first page and the count are one walk from the start.
        counted = await walk(db, query, None, cap + 1, hints)
        stubs = counted[:per_page + 1] if position is None else await walk(db, query, position, per_page + 1, hints)
        if hints.changed:
            await _save(db, hints)
        more = len(stubs) > per_page
        if position is None or position.forward:
            stubs, has_next, has_prev = stubs[:per_page], more, position is not None
        else:
            stubs, has_next, has_prev = stubs[:per_page][::-1], True, more
        items = await _documents(db, stubs, projection)
    total, exact = min(len(counted), cap), len(counted) <= cap
    return Page(items=items, total_count=total, count=len(items), page=0 if position is None else None,
                page_count=math.ceil(total / per_page), per_page=per_page, total_exact=exact,
                next=encode_cursor("queue", ORDER, items[-1], forward=True) if items and has_next else None,
                prev=encode_cursor("queue", ORDER, items[0], forward=False) if items and has_prev else None,
                has_cursors=True)
