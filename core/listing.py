"""Listing documents safely: user filters, sort keys, wildcard search, pagination.

Every listing endpoint (queue, journal, registry, log) takes its ``filter``,
``sort``, ``search``, ``page`` and ``per_page`` through here, so that a
user-supplied query can only name known fields and the operators in
``OPERATORS``: no ``$where``, ``$function``, ``$expr`` or ``$regex`` ever
reaches MongoDB from a caller (SPEC §5). ``search_filter`` builds its own,
escaped ``$regex``, which cannot backtrack; combine it with the checked
filter and the caller's ``permissions.readable_filter`` using ``combine``.

Every query of a listing carries ``maxTimeMS`` (``QUERY_TIMEOUT_MS``), so the
database stops a runaway one; ``time_limited`` turns that into
``DatabaseUnavailable``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field as dataclass_field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from dateutil.parser import isoparse
from pymongo.errors import ExecutionTimeout

from core.encoding import is_utf8
from core.errors import BadArgument, DatabaseUnavailable

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

__all__ = ["JOB_FIELDS", "ID_FIELDS", "DATE_FIELDS", "OPERATORS", "MAX_PER_PAGE", "MAX_DEPTH",
           "MAX_SEARCH", "MAX_WILDCARDS", "QUERY_TIMEOUT_MS", "check_filter", "check_sort",
           "check_text", "search_filter", "Page", "paginate", "time_limited", "time_range",
           "combine", "as_utc"]

# An entry ending in ".*" allows any dotted path below it ("args.sleep", "args.a.b").
JOB_FIELDS: frozenset[str] = frozenset({
    "_id", "qual_name", "args", "args.*", "state", "priority", "attempts", "attempts_left",
    "trial", "error_time", "defer_time", "defer_max", "wall_time", "query_at",
    "enqueued.at", "enqueued.username", "enqueued.hostname", "enqueued.parent_id",
    "enqueued.child_id", "started_at", "finished_at", "runtime", "prog.value", "prog.message",
    "locked.worker", "locked.pid", "locked.at", "locked.heartbeat", "last_error.exception",
    "last_error.message", "last_error.at", "killed_at", "removed_at", "tags", "version",
})
# Values for these given as 24-hex strings become ObjectIds.
ID_FIELDS: frozenset[str] = frozenset({"_id", "enqueued.parent_id", "enqueued.child_id"})
# Values for these given as ISO-8601 strings become timezone-aware datetimes.
DATE_FIELDS: frozenset[str] = frozenset({
    "query_at", "enqueued.at", "started_at", "finished_at", "locked.at", "locked.heartbeat",
    "last_error.at", "killed_at", "removed_at",
})

_LOGICAL = frozenset({"$and", "$or"})
_COMPARISON = frozenset({"$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists"})
OPERATORS: frozenset[str] = _LOGICAL | _COMPARISON
MAX_PER_PAGE = 1000
MAX_DEPTH = 8
MAX_SEARCH = 200
# Wildcards in a search, a run of '*' counting once.
MAX_WILDCARDS = 8
# The database stops any listing query running longer than this.
QUERY_TIMEOUT_MS = 5000

# An allow-list longer than this is not spelled out in error messages.
_MAX_LISTED_FIELDS = 12
_HEX_ID = re.compile(r"[0-9a-fA-F]{24}")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


# ---------------------------------------------------------------- values

def check_text(value: Any, name: str) -> str:
    """Return ``value`` if it is a string MongoDB can store; raise ``BadArgument`` naming ``name``."""
    if not isinstance(value, str):
        raise BadArgument(f"{name}: expected a string, got {type(value).__name__}")
    if not is_utf8(value):
        raise BadArgument(f"{name}: {value!r} is not valid Unicode text (it holds a lone surrogate)")
    return value


def as_utc(moment: datetime, name: str) -> datetime:
    """``moment`` in UTC (naive means UTC); ``BadArgument`` if that leaves the years 1 to 9999.

    An offset can push a time just inside the range out of it
    (``0001-01-01T00:00+01:00``), and the BSON encoder, which converts to
    UTC, would fail on it: a 500.
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise BadArgument(f"{name}: {moment.isoformat()} is out of range once converted to UTC "
                          "(years 1 to 9999)") from None


# ---------------------------------------------------------------- filters

def _allowed_operators() -> str:
    return ", ".join(sorted(OPERATORS))


def _bad_operator(key: str) -> BadArgument:
    return BadArgument(f"filter: operator {key!r} is not allowed; allowed: {_allowed_operators()}")


def _describe(fields: Collection[str]) -> str:
    if len(fields) > _MAX_LISTED_FIELDS:
        return "see the job document fields"
    return ", ".join(sorted(name.replace(".*", ".<anything>") for name in fields))


def _is_known(name: str, fields: Collection[str]) -> bool:
    if name in fields:
        return True
    parts = name.split(".")
    return any(".".join(parts[:end]) + ".*" in fields for end in range(1, len(parts)))


def _check_field(name: Any, fields: Collection[str], where: str) -> str:
    """Return ``name`` if it is a well-formed path on the allow-list; raise ``BadArgument``."""
    if not isinstance(name, str) or not name:
        raise BadArgument(f"{where}: field names must be non-empty strings, got {name!r}")
    if ("$" in name or "\x00" in name or name.startswith(".") or name.endswith(".") or ".." in name
            or not is_utf8(name)):
        raise BadArgument(f"{where}: bad field name {name!r}")
    if not _is_known(name, fields):
        raise BadArgument(f"{where}: unknown field {name!r}; allowed: {_describe(fields)}")
    return name


def _check_literal(value: Any, field: str, depth: int) -> Any:
    """A copy of a plain value (no operators anywhere inside), or ``BadArgument``."""
    if depth > MAX_DEPTH:
        raise BadArgument(f"filter: nested deeper than {MAX_DEPTH} levels (at {field!r})")
    if value is None or isinstance(value, (bool, float, ObjectId)):
        return value
    if isinstance(value, str):
        return check_text(value, f"filter: the value of {field!r}")
    if isinstance(value, datetime):
        return as_utc(value, f"filter: the time for {field!r}")
    if isinstance(value, int):
        # Larger integers fail inside the BSON encoder, which would be a 500.
        if not _INT64[0] <= value <= _INT64[1]:
            raise BadArgument(f"filter: integer for {field!r} is out of range: {value}")
        return value
    if isinstance(value, (list, tuple)):
        # A list inside a list is one level deeper; a list of documents is not.
        return [_check_literal(item, field, depth + 1 if isinstance(item, (list, tuple)) else depth)
                for item in value]
    if isinstance(value, dict):
        copy = {}
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key or not is_utf8(key):
                raise BadArgument(f"filter: bad key {key!r} in the value of {field!r}")
            if key.startswith("$"):
                if key not in OPERATORS:
                    raise _bad_operator(key)
                raise BadArgument(f"filter: key {key!r} in the value of {field!r} may not "
                                  "start with '$'")
            copy[key] = _check_literal(item, field, depth + 1)
        return copy
    raise BadArgument(f"filter: unsupported value for {field!r}: {type(value).__name__}")


def _convert(field: str, value: Any) -> Any:
    """Turn a hex id or ISO time string into the type ``field`` holds in MongoDB."""
    if not isinstance(value, str):
        return value
    if field in ID_FIELDS:
        if not _HEX_ID.fullmatch(value):
            raise BadArgument(f"filter: {field!r} expects a 24-character hex id, got {value!r}")
        return ObjectId(value)
    if field in DATE_FIELDS:
        try:
            moment = isoparse(value)
        except (ValueError, OverflowError):
            raise BadArgument(f"filter: {field!r} expects an ISO-8601 time, got {value!r}") from None
        return as_utc(moment, f"filter: the time for {field!r}")
    return value


def _check_condition(field: str, value: Any, depth: int) -> Any:
    """The checked value of ``{field: value}``: an operator document or a plain value."""
    if not (isinstance(value, dict) and any(isinstance(key, str) and key.startswith("$")
                                            for key in value)):
        return _convert(field, _check_literal(value, field, depth))
    if depth > MAX_DEPTH:
        raise BadArgument(f"filter: nested deeper than {MAX_DEPTH} levels (at {field!r})")
    for key in value:
        if isinstance(key, str) and key.startswith("$") and key not in OPERATORS:
            raise _bad_operator(key)
    checked: dict[str, Any] = {}
    for key, operand in value.items():
        if not (isinstance(key, str) and key.startswith("$")):
            raise BadArgument(f"filter: the value of {field!r} mixes operators and plain key "
                              f"{key!r}")
        if key in _LOGICAL:
            raise BadArgument(f"filter: operator {key!r} is not allowed inside field {field!r}; "
                              "use it at the top level")
        if key == "$exists":
            if not isinstance(operand, bool):
                raise BadArgument(f"filter: '$exists' for {field!r} must be true or false, "
                                  f"got {operand!r}")
            checked[key] = operand
        elif key in ("$in", "$nin"):
            if not isinstance(operand, (list, tuple)):
                raise BadArgument(f"filter: {key!r} for {field!r} must be a list, "
                                  f"got {type(operand).__name__}")
            checked[key] = [_convert(field, item)
                            for item in _check_literal(operand, field, depth + 1)]
        else:
            checked[key] = _convert(field, _check_literal(operand, field, depth + 1))
    return checked


def _check_query(query: Any, fields: Collection[str], depth: int) -> dict[str, Any]:
    if not isinstance(query, dict):
        raise BadArgument(f"filter: expected a JSON object, got {type(query).__name__}")
    if depth > MAX_DEPTH:
        raise BadArgument(f"filter: nested deeper than {MAX_DEPTH} levels")
    checked: dict[str, Any] = {}
    for key, value in query.items():
        if isinstance(key, str) and key.startswith("$"):
            if key not in OPERATORS:
                raise _bad_operator(key)
            if key not in _LOGICAL:
                raise BadArgument(f"filter: operator {key!r} must be applied to a field, "
                                  f"e.g. {{\"state\": {{{key!r}: ...}}}}")
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(clause, dict) for clause in value)):
                raise BadArgument(f"filter: {key!r} must be a non-empty list of objects")
            checked[key] = [_check_query(clause, fields, depth + 1) for clause in value]
        else:
            name = _check_field(key, fields, "filter")
            checked[name] = _check_condition(name, value, depth + 1)
    return checked


def check_filter(query: Any, fields: Collection[str] = JOB_FIELDS) -> dict[str, Any]:
    """Check a user-supplied MongoDB filter; return a copy that is safe to run.

    Only fields in ``fields`` (an entry ``"x.*"`` allows any path below ``x``)
    and the operators in ``OPERATORS`` may appear; ``$and``/``$or`` only at
    the level of fields, comparison operators only inside a field's value.
    Plain values (exact matches, including documents such as
    ``{"args": {"sleep": 3}}``) may not contain keys starting with ``$``.
    Nesting depth counts documents (and lists directly inside lists) and is
    limited to ``MAX_DEPTH``.

    On the way, 24-hex strings for ``ID_FIELDS`` become ObjectIds and ISO-8601
    strings for ``DATE_FIELDS`` become UTC datetimes (naive means UTC), in
    plain values and in every comparison operator's operand.

    Raises ``BadArgument`` naming the offending key or value; also for a
    string on an id field that is not a valid id, for a string on a date
    field that does not parse, for a time outside the years 1 to 9999 in UTC,
    and for text that is not valid Unicode.
    """
    return _check_query(query, fields, 1)


# ---------------------------------------------------------------- sorting

def _parse_sort_text(text: str) -> list[tuple[str, Any]]:
    keys: list[tuple[str, Any]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part[0] in "+-":
            keys.append((part[1:].strip(), -1 if part[0] == "-" else 1))
        else:
            keys.append((part, 1))
    return keys


def check_sort(sort: Any, fields: Collection[str] = JOB_FIELDS,
               default: Sequence[tuple[str, int]] = (("_id", -1),)) -> list[tuple[str, int]]:
    """Parse a sort specification into ``[(field, 1 | -1), ...]``.

    Accepts ``None`` (``default``), a string ``"-priority,_id"`` (``-``
    descending, ``+`` or nothing ascending), a list of such strings, a list of
    ``[field, 1 | -1]`` pairs, or a dict ``{field: 1 | -1}``. An empty
    specification means ``default``. ``_id`` is appended as a tiebreaker, in the
    direction of the last key, unless present, so that pages are stable.

    Raises ``BadArgument`` for an unknown field, a field given twice, a
    direction other than 1 or -1, or any other shape.
    """
    keys: list[tuple[Any, Any]] = []
    if sort is None:
        keys = list(default)
    elif isinstance(sort, str):
        keys = _parse_sort_text(sort)
    elif isinstance(sort, dict):
        keys = list(sort.items())
    elif isinstance(sort, (list, tuple)):
        for item in sort:
            if isinstance(item, str):
                keys.extend(_parse_sort_text(item))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                keys.append((item[0], item[1]))
            else:
                raise BadArgument(f"sort: expected 'field', '-field' or [field, 1 | -1], "
                                  f"got {item!r}")
    else:
        raise BadArgument(f"sort: expected a string, a list or an object, "
                          f"got {type(sort).__name__}")
    if not keys:
        keys = list(default)

    checked: list[tuple[str, int]] = []
    for name, direction in keys:
        name = _check_field(name, fields, "sort")
        if isinstance(direction, bool) or direction not in (1, -1):
            raise BadArgument(f"sort: direction for {name!r} must be 1 or -1, got {direction!r}")
        if any(name == seen for seen, _ in checked):
            raise BadArgument(f"sort: field {name!r} is given twice")
        checked.append((name, int(direction)))
    if all(name != "_id" for name, _ in checked):
        checked.append(("_id", checked[-1][1] if checked else -1))
    return checked


# ---------------------------------------------------------------- search

def _literal(char: str) -> str:
    # MongoDB refuses a pattern holding a NUL byte; the escape matches one all the same.
    return r"\x00" if char == "\x00" else re.escape(char)


def _glob_pattern(glob: str) -> str:
    """An anchored regex that matches what ``glob`` (without runs of ``*``) does, and cannot backtrack.

    The classic glob match: the segment before the first ``*`` at the start,
    each middle segment at its earliest place after the one before, the last
    segment at the end. The earliest place never loses a match, because a
    segment has a fixed length and a ``*`` follows it; the atomic group
    ``(?>.*?segment)`` commits to that place, so no ``*`` is ever tried
    again. The work grows with the value's length times the pattern's, where
    one ``.*`` per ``*`` made it grow with the value's length to the power of
    the number of stars (13 stars took 11 s on a 21-character name). Atomic
    groups exist in PCRE (MongoDB) and Python 3.11's ``re`` (secantusd);
    ``\\z`` is the very end (``$`` also matches before a final newline), and
    secantusd translates it.
    """
    segments = ["".join("." if char == "?" else _literal(char) for char in segment)
                for segment in glob.split("*")]
    if len(segments) == 1:
        return f"^{segments[0]}\\z"
    first, *middle, last = segments
    pattern = "^" + first + "".join(f"(?>.*?{segment})" for segment in middle)
    return pattern + (f".*{last}\\z" if last else "")


def search_filter(search: str | None, field: str = "qual_name") -> dict[str, Any]:
    """A case-insensitive ``$regex`` filter on ``field`` for a wildcard search.

    Without wildcards, ``search`` matches anywhere in the value (``dummy`` is
    ``*dummy*``). With ``*`` (any run of characters) or ``?`` (one character)
    it must match the whole value. Every other character is literal. ``None``
    or blank gives ``{}``. Raises ``BadArgument`` if ``search`` is not a
    string, longer than ``MAX_SEARCH`` characters or holds more than
    ``MAX_WILDCARDS`` wildcards (a run of ``*`` counts once).
    """
    if search is None:
        return {}
    search = check_text(search, "search")
    if len(search) > MAX_SEARCH:
        raise BadArgument(f"search: at most {MAX_SEARCH} characters, got {len(search)}")
    glob = re.sub(r"\*+", "*", search.strip())
    if not glob:
        return {}
    wildcards = glob.count("*") + glob.count("?")
    if wildcards > MAX_WILDCARDS:
        raise BadArgument(f"search: at most {MAX_WILDCARDS} wildcards ('*' or '?', a run of '*' "
                          f"counting once), got {wildcards}")
    if not wildcards:
        glob = f"*{glob}*"
    # "s": '*' and '?' match a newline too, as they do in fnmatch.
    return {field: {"$regex": _glob_pattern(glob), "$options": "is"}}


# ---------------------------------------------------------------- pagination

@dataclass
class Page:
    """One page of a listing, with the figures of the paginated reply envelope."""

    items: list[dict[str, Any]] = dataclass_field(repr=False)
    total_count: int
    count: int
    #: None for a page found by a cursor (its number is not known).
    page: int | None
    page_count: int
    per_page: int
    #: Whether ``total_count`` (and so ``page_count``) is exact or a cap reached (``core.keyset``).
    total_exact: bool = True
    #: Cursors of the pages after and before this one (None: there is none), for listings that have them.
    next: str | None = None
    prev: str | None = None
    has_cursors: bool = False

    def envelope_fields(self) -> dict[str, Any]:
        """``total_count``, ``count``, ``page``, ``page_count`` and ``per_page`` (SPEC §5).

        Listings with cursors add ``total_exact``, ``next`` and ``prev``.
        """
        fields = {"total_count": self.total_count, "count": self.count, "page": self.page,
                  "page_count": self.page_count, "per_page": self.per_page}
        if self.has_cursors:
            fields.update(total_exact=self.total_exact, next=self.next, prev=self.prev)
        return fields


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadArgument(f"{name} must be an integer, got {value!r}")
    return value


@contextmanager
def time_limited(what: str, advice: str = "") -> Iterator[None]:
    """Turn the database stopping a query at its ``maxTimeMS`` into ``DatabaseUnavailable``.

    The queries inside pass ``maxTimeMS=QUERY_TIMEOUT_MS`` themselves. The
    message reads "<what> took longer than 5 s and was stopped; <advice>".
    """
    try:
        yield
    except ExecutionTimeout:
        message = f"{what} took longer than {QUERY_TIMEOUT_MS / 1000:g} s and was stopped"
        raise DatabaseUnavailable(f"{message}; {advice}" if advice else message) from None


async def paginate(collection: AsyncCollection, query: dict[str, Any], *,
                   sort: list[tuple[str, int]], page: int = 0, per_page: int = 10,
                   projection: dict[str, Any] | None = None, advice: str = "") -> Page:
    """Count the documents matching ``query`` and fetch page ``page`` of them.

    ``page`` is 0-based; a negative page counts from the end (-1 is the last
    page; on an empty listing it is page 0). A page past the end is not an
    error: it comes back empty with its number. A negative page before the
    first one is a ``BadArgument`` ("page -5 is before the first page"), as is
    ``per_page`` outside 1..``MAX_PER_PAGE``. ``query`` and ``sort`` must
    already be checked (``check_filter``, ``check_sort``); ``sort`` should end
    in ``_id`` so that consecutive pages neither repeat nor skip documents.

    The count and the page are two reads: a document written in between may
    make ``count`` and ``total_count`` disagree by that much. Each may take
    ``QUERY_TIMEOUT_MS``; past that, ``DatabaseUnavailable`` says so and gives
    ``advice`` (how to narrow the listing).
    """
    per_page = _check_int("per_page", per_page)
    page = _check_int("page", page)
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise BadArgument(f"per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}")
    with time_limited("the listing", advice):
        total = await collection.count_documents(query, maxTimeMS=QUERY_TIMEOUT_MS)
        page_count = math.ceil(total / per_page)
        if page < 0:
            if page < -max(page_count, 1):
                raise BadArgument(f"page {page} is before the first page "
                                  f"({page_count} page{'' if page_count == 1 else 's'} in all)")
            page = max(page_count + page, 0)
        items: list[dict[str, Any]] = []
        if page < page_count:
            cursor = collection.find(query, projection, max_time_ms=QUERY_TIMEOUT_MS)
            items = await cursor.sort(sort).skip(page * per_page).limit(per_page).to_list()
    return Page(items=items, total_count=total, count=len(items), page=page,
                page_count=page_count, per_page=per_page)


# ---------------------------------------------------------------- building blocks

def time_range(field: str, since: datetime | None, until: datetime | None) -> dict[str, Any]:
    """``{field: {"$gte": since, "$lt": until}}`` with only the bounds given; ``{}`` for none.

    Bounds come back in UTC; naive datetimes are taken as UTC. Raises
    ``BadArgument`` if a bound is not a datetime, lies outside the years 1 to
    9999 in UTC, or ``since`` is later than ``until``.
    """
    bounds: dict[str, datetime] = {}
    for name, operator, moment in (("since", "$gte", since), ("until", "$lt", until)):
        if moment is None:
            continue
        if not isinstance(moment, datetime):
            raise BadArgument(f"{name} must be a time, got {moment!r}")
        bounds[operator] = as_utc(moment, name)
    if "$gte" in bounds and "$lt" in bounds and bounds["$gte"] > bounds["$lt"]:
        raise BadArgument(f"since ({bounds['$gte'].isoformat()}) is later than until "
                          f"({bounds['$lt'].isoformat()})")
    return {field: bounds} if bounds else {}


def combine(*queries: dict[str, Any]) -> dict[str, Any]:
    """All of ``queries`` at once, as one document of conditions where they name different fields.

    Top-level conditions of one document all hold; a clause that names a
    field (or ``$or``) already taken goes into a residual ``$and``. One
    document matters for the cost: the embedded server plans no index for a
    filter that is only a ``$and`` (MongoDB flattens it), so e.g. a state and
    a permission filter wrapped together would read the whole collection.
    The clauses of a ``$and`` in any of them (as ``combine`` makes) are
    taken apart first.
    """
    clauses: list[dict[str, Any]] = []
    pending = [query for query in queries if query]
    while pending:
        query = pending.pop(0)
        ands = query.get("$and")
        if isinstance(ands, list) and all(isinstance(clause, dict) for clause in ands):
            query = {key: value for key, value in query.items() if key != "$and"}
            pending[:0] = [clause for clause in ands if clause]
        if query:
            clauses.append(query)
    merged: dict[str, Any] = {}
    rest: list[dict[str, Any]] = []
    for clause in clauses:
        if any(key in merged for key in clause):
            rest.append(clause)
        else:
            merged.update(clause)
    if rest:
        merged["$and"] = rest
    return merged
