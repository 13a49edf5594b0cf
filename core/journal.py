"""Listing live and finished jobs, as a user may see them."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.errors import BadArgument
from core import levels
from core.keyset import page_of
from core.listing import (Page, check_filter, check_sort, check_text, combine, search_filter,
                          time_range)
from core.permissions import readable_filter
from core.states import FINAL, LIVE

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["list_queue", "list_journal", "state_filter"]

_HIDDEN = {"unique_key": 0}
_QUEUE_ORDER = (("priority", -1), ("_id", 1))
_JOURNAL_ORDER = (("finished_at", -1), ("_id", -1))


def state_filter(states: str | Sequence[str] | None, allowed: frozenset[Any]) -> dict[str, Any]:
    """``{"state": {"$in": [...]}}`` for names among ``allowed`` (comma-separated text or a list).

    ``None``, ``""`` or an empty list means all of ``allowed``. Raises
    ``BadArgument`` naming the first entry that is not one of them (a
    non-string included), or if ``states`` is neither text nor a list.
    """
    known = sorted(s.value for s in allowed)
    if states is None:
        names = []
    elif isinstance(states, str):
        names = [n.strip() for n in states.split(",")] if states else []
    elif isinstance(states, (list, tuple)):
        names = list(states)
    else:
        raise BadArgument(f"state: expected comma-separated names or a list of them, "
                          f"got {type(states).__name__}")
    if not names:
        return {"state": {"$in": known}}
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise BadArgument(f"state {name!r} is not one of {', '.join(known)}")
    return {"state": {"$in": names}}


async def list_queue(db: Database, *, user: dict[str, Any], filter: Any = None,
                     state: str | Sequence[str] | None = None, search: str | None = None,
                     sort: Any = None, page: int = 0, per_page: int = 10, after: Any = None,
                     before: Any = None) -> Page:
    """Live jobs the user may read, next to run first unless ``sort`` says otherwise.

    ``after``/``before``: a cursor of a page's ``next``/``prev`` (``core.keyset``).
    In the queue's own order the first page and cursor pages are walked level
    by level (``core.levels``: about a page of reads, more for a filter that
    matches few jobs); other sorts walk their cursor pages (``core.keyset``)
    and, like numbered pages, read their first page whole.
    """
    conditions = combine(readable_filter(user), search_filter(search), check_filter(filter or {}))
    order = check_sort(sort, default=_QUEUE_ORDER)
    advice = "narrow it with state, a search or a filter"
    if order == list(_QUEUE_ORDER) and page == 0:
        # No state given is no condition: the walk leaves out final copies itself, and a condition
        # beside a window would make the embedded server read the whole level.
        return await levels.page(db, combine(state_filter(state, LIVE) if state else {}, conditions),
                                 after=after, before=before, per_page=per_page, projection=_HIDDEN, advice=advice)
    query = combine(state_filter(state, LIVE), conditions)
    return await page_of(db.queue, query, listing="queue", sort=order, after=after, before=before, page=page,
                         per_page=per_page, projection=_HIDDEN, advice=advice, window_ties=True, walk_first=False)


async def list_journal(db: Database, *, user: dict[str, Any], filter: Any = None,
                       state: str | Sequence[str] | None = None, qual_name: str | None = None,
                       search: str | None = None, since: datetime | None = None,
                       until: datetime | None = None, sort: Any = None, page: int = 0,
                       per_page: int = 10, after: Any = None, before: Any = None) -> Page:
    """Finished jobs the user may read, newest first; ``since``/``until`` bound ``finished_at``.

    ``after``/``before``: a cursor of a page's ``next``/``prev`` (``core.keyset``).
    """
    # Every journal document is final: all final states is no condition (and would cost an index's use).
    query = combine(readable_filter(user), state_filter(state, FINAL) if state else {}, search_filter(search),
                    {"qual_name": check_text(qual_name, "qual_name")} if qual_name else {},
                    time_range("finished_at", since, until), check_filter(filter or {}))
    order = check_sort(sort, default=_JOURNAL_ORDER)
    by_time = order[0][0] == "finished_at"
    return await page_of(db.journal, query, listing="journal", sort=order, after=after, before=before, page=page,
                         per_page=per_page, projection=_HIDDEN,
                         advice="narrow it with state, qual_name, since/until or a search",
                         kind="time" if by_time else None)
