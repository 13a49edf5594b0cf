"""Keyset pagination: pages that cost what a page holds, found through cursors.

A cursor is an opaque string naming a position in a listing: the listing's
name, its sort and the sort key values of one item (the last of a page for
``after``, the first for ``before``). ``decode_cursor`` refuses, with
``BadArgument``, a cursor that is malformed, altered (a keyed checksum covers
it), made for another listing or another sort, or holding values of a type a
sort key cannot take. A cursor only says where to start: the listing's own
filter (permissions included) still applies, so a forged one shows nothing
the caller could not list anyway.

**Cost.** The embedded server reads every document inside a query's index
bounds before it applies ``limit`` (a query there costs what its bounds hold,
not what it returns). So ``walk`` never asks for "everything after the
cursor": it reads *windows*, ranges of the first sort key bounded on both
sides, growing from the cursor (or, for the first page, from the start of the
listing: ``now`` for a time sorted newest first) until a page is found. An
empty window costs a few milliseconds, a full one what it holds. Items that
tie with the cursor on a leading key come first, from ranges on the next key
with the leading ones fixed (an index ``(k1, k2, ...)`` serves those). Dates,
integers and ObjectIds can be windowed; other types (text) are read as one
open range, which costs what is left on the embedded server.

Each window is one query whose filter is a plain document, the window's
clauses first: the embedded planner uses no index for a top-level ``$and`` or
``$or``, and takes the first clause an index leads with. ``merge`` builds it;
where a caller's filter cannot be merged so (a top-level ``$or``, two
conditions on one field that cannot be intersected), the window still bounds
the result but not the read: such a listing costs the collection there.

``count_capped`` counts the same way, window by window, and stops at a cap.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from core.errors import BadArgument
from core.listing import MAX_PER_PAGE, QUERY_TIMEOUT_MS, Page, paginate, time_limited

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

__all__ = ["COUNT_PAGES", "Position", "encode_cursor", "decode_cursor", "merge", "walk", "count_capped", "page_of", "windows_from"]

#: A first or cursor page counts its listing up to this many pages (``per_page`` items each), then says
#: ``total_exact: false``: the count costs what ten pages hold.
COUNT_PAGES = 10
_VERSION = 1
# Not a secret: it makes an altered cursor fail its check (a 400), nothing more.
_KEY = b"jobdeck keyset cursor v1"
_MAX_CURSOR = 2048
_RANGE = ("$gt", "$gte", "$lt", "$lte")
_OID_MAX = (1 << 96) - 1
_INT_LIMITS = (-(2 ** 63), 2 ** 63 - 1)
_TIME_LIMITS = (datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30, tzinfo=timezone.utc))
_OLDEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
_SCALARS = (type(None), bool, int, float, str, datetime, ObjectId)


@dataclass(frozen=True)
class Position:
    """A decoded cursor: items after (``forward``) or before the item whose sort values are ``values``."""

    forward: bool
    values: tuple[Any, ...]


# ---------------------------------------------------------------- cursors

def _mac(body: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(_KEY, body, hashlib.blake2s).digest()[:12]).decode().rstrip("=")


def encode_cursor(listing: str, sort: list[tuple[str, int]], item: dict[str, Any], *, forward: bool) -> str:
    """The cursor for the items after (``forward``) or before ``item`` in ``listing`` sorted by ``sort``."""
    values = [_get(item, name) for name, _ in sort]
    payload = [_VERSION, listing, [[name, direction] for name, direction in sort], "a" if forward else "b", values]
    body = json_util.dumps(payload, json_options=CANONICAL_JSON_OPTIONS, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + _mac(body)


def decode_cursor(cursor: Any, listing: str, sort: list[tuple[str, int]], *, name: str) -> Position:
    """The position ``cursor`` (the ``after`` or ``before`` argument ``name``) holds; ``BadArgument`` if it is bad.

    Refused: anything but a string made by ``encode_cursor`` for this
    ``listing`` and this ``sort``, unaltered, used as the kind it was made
    for (an ``after`` cursor as ``after``).
    """
    bad = f"{name}: not a cursor of this listing (use the next/prev value of a reply, unaltered)"
    if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_CURSOR or cursor.count(".") != 1:
        raise BadArgument(bad)
    text, mac = cursor.split(".")
    try:
        body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise BadArgument(bad) from None
    if not hmac.compare_digest(_mac(body), mac):
        raise BadArgument(bad)
    try:
        payload = json_util.loads(body, json_options=CANONICAL_JSON_OPTIONS)
        version, made_for, made_sort, kind, values = payload
    except (ValueError, TypeError):
        raise BadArgument(bad) from None
    if version != _VERSION or made_for != listing or not isinstance(values, list) or kind not in ("a", "b"):
        raise BadArgument(bad)
    if [tuple(key) for key in made_sort] != [tuple(key) for key in sort]:
        raise BadArgument(f"{name}: the cursor was made for sort {_sort_text(made_sort)}, not "
                          f"{_sort_text(sort)}; give the same sort, or start again without a cursor")
    if (kind == "a") != (name == "after"):
        raise BadArgument(f"{name}: this is {'an after' if kind == 'a' else 'a before'} cursor; "
                          f"pass it as {'after' if kind == 'a' else 'before'}")
    if len(values) != len(sort) or not all(isinstance(value, _SCALARS) for value in values):
        raise BadArgument(bad)
    values = [value.replace(tzinfo=timezone.utc) if isinstance(value, datetime) and value.tzinfo is None
              else value for value in values]
    return Position(forward=kind == "a", values=tuple(values))


def _sort_text(sort: Any) -> str:
    return ",".join(("-" if direction == -1 else "") + str(name) for name, direction in sort)


def _get(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, _SCALARS) else None


# ---------------------------------------------------------------- filters

def _intersect(a: Any, b: Any) -> dict[str, Any] | None:
    """One range document equal to both range documents, or None if they cannot be joined so."""
    if not (isinstance(a, dict) and isinstance(b, dict) and a and b
            and all(op in _RANGE for op in (*a, *b))):
        return None
    joined = dict(a)
    for op, value in b.items():
        if op not in joined:
            joined[op] = value
            continue
        try:
            tighter = value > joined[op] if op in ("$gt", "$gte") else value < joined[op]
        except TypeError:
            return None
        if tighter:
            joined[op] = value
    return joined


def merge(window: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
    """``window`` and ``query`` as one plain document, ``window``'s clauses first; ``$and`` where impossible."""
    clauses = query["$and"] if len(query) == 1 and isinstance(query.get("$and"), list) else [query]
    merged = dict(window)
    rest: list[dict[str, Any]] = []
    for clause in clauses:
        for field, condition in clause.items():
            if field.startswith("$"):
                rest.append({field: condition})
            elif field not in merged:
                merged[field] = condition
            elif (joined := _intersect(merged[field], condition)) is not None:
                merged[field] = joined
            else:
                rest.append({field: condition})
    # The rest beside the plain conditions, not around them: the embedded server
    # plans no index for a filter that is only a $and.
    return {**merged, "$and": rest} if rest else merged


# ---------------------------------------------------------------- windows

def _kind(value: Any) -> str | None:
    if isinstance(value, datetime):
        return "time"
    if isinstance(value, ObjectId):
        return "oid"
    if isinstance(value, int) and not isinstance(value, bool):
        return "int"
    return None


def _step(value: Any, kind: str, width: int, down: bool) -> Any:
    """``value`` moved ``width`` units (ms, 1, ObjectId steps) down or up, clamped to the type's range."""
    sign = -1 if down else 1
    if kind == "time":
        low, high = _TIME_LIMITS
        moved = value.timestamp() * 1000 + sign * width
        if moved <= low.timestamp() * 1000:
            return low
        if moved >= high.timestamp() * 1000:
            return high
        return value + timedelta(milliseconds=sign * width)
    if kind == "oid":
        moved = min(max(int(str(value), 16) + sign * width, 0), _OID_MAX)
        return ObjectId(f"{moved:024x}")
    return min(max(value + sign * width, _INT_LIMITS[0]), _INT_LIMITS[1])


def _at_end(value: Any, kind: str, down: bool) -> bool:
    if kind == "time":
        return value == (_TIME_LIMITS[0] if down else _TIME_LIMITS[1])
    if kind == "oid":
        return int(str(value), 16) == (0 if down else _OID_MAX)
    return value == (_INT_LIMITS[0] if down else _INT_LIMITS[1])


_START_WIDTH = {"time": 1000, "oid": 1 << 6, "int": 16}
# ObjectIds of one process and second are consecutive, those of the next second 2**64 further: empty
# windows grow fast.
_EMPTY_GROWTH = {"time": 4, "oid": 1 << 8, "int": 4}


def _before_start(start: Any, down: bool) -> dict[str, Any]:
    """The open range on the far side of a listing's start (times in the future, say): expected empty."""
    return {"$gt" if down else "$lt": start}


def windows_from(start: Any, kind: str, down: bool, inclusive: bool = True):
    """Window ranges of ``kind`` values moving away from ``start``; send how many items each held.

    Each window is four times as wide as the one before (an empty
    ObjectId window 256 times).
    Far bounds are inclusive: with an exclusive one the embedded server steps
    over the keys equal to it one by one.
    """
    near, near_op, width = start, ("$lte" if inclusive else "$lt") if down else ("$gte" if inclusive else "$gt"), \
        _START_WIDTH[kind]
    while True:
        far = _beyond_data(_step(near, kind, width, down), kind, down)
        held = yield {near_op: near, ("$gte" if down else "$lte"): far}
        if _at_end(far, kind, down):
            return
        near, near_op = _step(far, kind, 1, down), "$lte" if down else "$gte"
        width *= 4 if held else _EMPTY_GROWTH[kind]


def _beyond_data(far: Any, kind: str, down: bool) -> Any:
    """``far``, or the end of its type once past where times and ObjectIds can be (2000 to tomorrow)."""
    if kind == "int":
        return far
    moment = far if kind == "time" else far.generation_time
    if down and moment < _OLDEST:
        return _TIME_LIMITS[0] if kind == "time" else ObjectId("0" * 24)
    if not down and moment > datetime.now(timezone.utc) + timedelta(days=1):
        return _TIME_LIMITS[1] if kind == "time" else ObjectId(f"{_OID_MAX:024x}")
    return far


async def _level(collection: AsyncCollection, query: dict[str, Any], sort: list[tuple[str, int]],
                 fixed: dict[str, Any], field: str, direction: int, start: Any, *, first: bool,
                 need: int, projection: dict[str, Any] | None, kind: str | None) -> list[dict[str, Any]]:
    """Up to ``need`` items with ``fixed`` and ``field`` past ``start`` in ``direction``, window by window.

    ``first``: ``start`` is where the listing starts (included, and the
    few items beyond it come first), not a cursor's value (excluded).
    """
    down = direction == -1
    found: list[dict[str, Any]] = []

    async def read(bounds: dict[str, Any]) -> list[dict[str, Any]]:
        window = {**fixed, field: bounds}
        if fixed and kind is not None and query:
            # Equal leading keys plus a range on this one is an index range only alone (the embedded
            # planner takes a filter's first clause, and an equality leads): find the window's ids so,
            # then apply the filter to those ids.
            ids = await collection.find(window, {"_id": 1}, max_time_ms=QUERY_TIMEOUT_MS).to_list()
            window = {"_id": {"$in": [doc["_id"] for doc in ids]}}
        cursor = collection.find(merge(window, query), projection, max_time_ms=QUERY_TIMEOUT_MS)
        return await cursor.sort(sort).limit(need - len(found)).to_list()

    if kind is None:  # not windowable: one open range
        if start is None:
            return await _open(collection, merge(fixed, query), sort, need, projection)
        return await read({("$lte" if first else "$lt") if down else ("$gte" if first else "$gt"): start})
    if first:
        found = await read(_before_start(start, down))
    windows = windows_from(start, kind, down, inclusive=first)
    held = None
    while len(found) < need:
        try:
            bounds = await _send(windows, held)
        except StopAsyncIteration:
            break
        batch = await read(bounds)
        found.extend(batch)
        held = len(batch)
    return found


async def _send(windows: Any, held: int | None) -> dict[str, Any]:
    try:
        return next(windows) if held is None else windows.send(held)
    except StopIteration:
        raise StopAsyncIteration from None


async def _open(collection: AsyncCollection, query: dict[str, Any], sort: list[tuple[str, int]], need: int,
                projection: dict[str, Any] | None) -> list[dict[str, Any]]:
    cursor = collection.find(query, projection, max_time_ms=QUERY_TIMEOUT_MS)
    return await cursor.sort(sort).limit(need).to_list()


async def walk(collection: AsyncCollection, query: dict[str, Any], sort: list[tuple[str, int]],
               position: Position | None, need: int, *, projection: dict[str, Any] | None = None,
               start: Any = None, kind: str | None = None, window_ties: bool = False) -> list[dict[str, Any]]:
    """Up to ``need`` items of ``query`` in ``sort`` order after (or, backwards, before) ``position``.

    ``position`` None is the first page: it starts at ``start``, a value of
    the first sort key of kind ``kind`` (``time``, ``int`` or ``oid``;
    ``start`` None with ``time`` is now), the few items beyond it first.
    Without ``kind`` the first page is one open read. Items tying with the
    cursor on the leading keys are read as one range (an index on the sort
    keys holds them together), in windows only with ``window_ties`` (when a
    leading key has few values, as priorities do). Items come back in
    ``sort`` order either way.
    """
    forward = position is None or position.forward
    order = sort if forward else [(name, -direction) for name, direction in sort]
    found: list[dict[str, Any]] = []
    if position is None:
        name, direction = order[0]
        if kind == "time" and start is None:
            start = datetime.now(timezone.utc)
        found = await _level(collection, query, order, {}, name, direction, start, first=True, need=need,
                             projection=projection, kind=kind if start is not None else None)
    else:
        # Ties on the leading keys first: the last key past the cursor, then the one before it...
        for depth in range(len(order) - 1, -1, -1):
            if len(found) >= need:
                break
            fixed = {name: value for (name, _), value in zip(order[:depth], position.values)}
            name, direction = order[depth]
            value = position.values[depth]
            if value is None:  # a missing value sorts first: the rest of this level is one open range
                found.extend(await _open(collection, merge(fixed, query), order, need - len(found), projection))
                continue
            windowed = depth == 0 or window_ties
            found.extend(await _level(collection, query, order, fixed, name, direction, value, first=False,
                                      need=need - len(found), projection=projection,
                                      kind=_kind(value) if windowed else None))
    found = found[:need]
    return found if forward else found[::-1]


async def count_capped(collection: AsyncCollection, query: dict[str, Any], sort: list[tuple[str, int]], *,
                       start: Any = None, kind: str | None = None, cap: int) -> tuple[int, bool]:
    """``(count, exact)``: the items of ``query``, counted window by window from the start up to ``cap``.

    ``start`` and ``kind`` as for ``walk``. Past ``cap`` it stops and says
    ``exact`` False (``count`` is then ``cap``): each window counted costs
    what it holds, so the count costs about ``cap`` items. Without ``kind``
    the listing is counted whole (``count_documents``), exactly.
    """
    name, direction = sort[0]
    if kind == "time" and start is None:
        start = datetime.now(timezone.utc)
    if kind is None or start is None:
        return await collection.count_documents(query, maxTimeMS=QUERY_TIMEOUT_MS), True
    down = direction == -1

    async def count(bounds: dict[str, Any]) -> int:
        return await collection.count_documents(merge({name: bounds}, query), maxTimeMS=QUERY_TIMEOUT_MS)

    total = await count(_before_start(start, down))
    windows = windows_from(start, kind, down)
    held = None
    while total <= cap:
        try:
            bounds = await _send(windows, held)
        except StopAsyncIteration:
            return total, True
        held = await count(bounds)
        total += held
    return cap, False


async def page_of(collection: AsyncCollection, query: dict[str, Any], *, listing: str,
                  sort: list[tuple[str, int]], after: Any = None, before: Any = None, page: int = 0,
                  per_page: int = 10, projection: dict[str, Any] | None = None, advice: str = "",
                  start: Any = None, kind: str | None = None, window_ties: bool = False,
                  walk_first: bool = True) -> Page:
    """A page of a listing with ``next``/``prev`` cursors: by cursor, the first page, or by number.

    ``after``/``before`` (cursors, one at most, only with ``page`` 0) and the
    first page are found through ``walk``: they cost about a page, and
    ``total_count`` is counted up to ``COUNT_PAGES`` pages (``total_exact``
    says whether it got there). Any other ``page`` number is ``paginate``'s:
    counted exactly and skipped to, costing what lies before it. Raises
    ``BadArgument`` for a bad cursor (``decode_cursor``), both cursors, or a
    cursor with a page number. Without ``walk_first`` the first page is
    ``paginate``'s too (where walking would read more, see ``list_queue``).
    """
    if after is not None and before is not None:
        raise BadArgument("give after or before, not both")
    cursor_name, cursor = ("after", after) if after is not None else ("before", before)
    if cursor is not None and page != 0:
        raise BadArgument(f"give {cursor_name} or page, not both")
    if cursor is None and (page != 0 or not walk_first):
        found = await paginate(collection, query, sort=sort, page=page, per_page=per_page, projection=projection,
                               advice=advice)
        found.has_cursors = True
        if found.items:
            found.next = encode_cursor(listing, sort, found.items[-1], forward=True)
            found.prev = encode_cursor(listing, sort, found.items[0], forward=False) if found.page else None
        return found
    position = decode_cursor(cursor, listing, sort, name=cursor_name) if cursor is not None else None
    per_page = _check_per_page(per_page)
    with time_limited("the listing", advice):
        items = await walk(collection, query, sort, position, per_page + 1, projection=projection, start=start,
                           kind=kind, window_ties=window_ties)
        total, exact = await count_capped(collection, query, sort, start=start, kind=kind,
                                          cap=per_page * COUNT_PAGES)
    more = len(items) > per_page
    if position is None or position.forward:
        items = items[:per_page]
        has_next, has_prev = more, position is not None
    else:
        items = items[len(items) - per_page:] if more else items
        has_next, has_prev = True, more
    return Page(items=items, total_count=total, count=len(items), page=0 if position is None else None,
                page_count=math.ceil(total / per_page), per_page=per_page, total_exact=exact,
                next=encode_cursor(listing, sort, items[-1], forward=True) if items and has_next else None,
                prev=encode_cursor(listing, sort, items[0], forward=False) if items and has_prev else None,
                has_cursors=True)


def _check_per_page(per_page: Any) -> int:
    if isinstance(per_page, bool) or not isinstance(per_page, int):
        raise BadArgument(f"per_page must be an integer, got {per_page!r}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise BadArgument(f"per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}")
    return per_page
