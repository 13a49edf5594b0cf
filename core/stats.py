"""Queue statistics and the list of workers, as a user may see them.

Every query carries ``maxTimeMS`` (``listing.QUERY_TIMEOUT_MS``); one the
database stops is a ``DatabaseUnavailable``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from core import counts, flow, keyset, levels
from core.listing import QUERY_TIMEOUT_MS, combine, time_limited
from core.permissions import READ, is_admin, may, readable_filter
from core.states import FINAL, LIVE, WAITING, State

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["stats", "workers"]


async def stats(db: Database, *, user: dict[str, Any], lease_seconds: float) -> dict[str, Any]:
    """Counts per state and per class, oldest pending age, running per worker, alive workers, finished per minute.

    Only jobs ``user`` may read are counted. The counts come from
    ``core.counts`` (one document per job class and a second's changes) and
    the running jobs (at most the workers' slots, and those not reaped yet):
    the cost does not grow with the queue or the journal.
    ``oldest_pending_seconds`` reads the jobs made in the minute of the
    oldest pending one.
    """
    now = datetime.now(timezone.utc)
    visible = readable_filter(user)
    with time_limited("counting the statistics"):
        counted = [change for name, change in (await counts.read(db, max_time_ms=QUERY_TIMEOUT_MS)).items()
                   if may(user, name, READ)]
        running = await db.queue.find(combine(visible, {"state": State.RUNNING.value}),
                                      {"qual_name": 1, "state": 1, "claimed_from": 1, "locked.worker": 1},
                                      max_time_ms=QUERY_TIMEOUT_MS).to_list()
        classes = {change.qual_name: {state: change.states.get(state, 0) for state in _STATES}
                   for change in counted}
        waiting: dict[str, int] = {}  # jobs resting pending by minute, less those running
        for change in counted:
            for minute, n in change.waiting.items():
                waiting[minute] = waiting.get(minute, 0) + n
        per_worker: dict[str, int] = {}
        for job in running:
            figures = classes.setdefault(job["qual_name"], dict.fromkeys(_STATES, 0))
            figures[State.RUNNING.value] += 1
            figures[counts.resting(job)] -= 1
            if counts.resting(job) == State.PENDING.value:
                minute = counts.minute_of(job["_id"])
                waiting[minute] = waiting.get(minute, 0) - 1
            worker = (job.get("locked") or {}).get("worker") or "?"
            per_worker[worker] = per_worker.get(worker, 0) + 1
        oldest = await _oldest_pending(db, user, sorted((m for m, n in waiting.items() if n > 0),
                                                           key=lambda m: int(m[1:])))
        alive = await db.worker.count_documents(
            {"heartbeat": {"$gte": now - timedelta(seconds=lease_seconds)}}, maxTimeMS=QUERY_TIMEOUT_MS)
        paused = await flow.read(db, max_time_ms=QUERY_TIMEOUT_MS)
        unrunnable = await _unrunnable(db, visible, lease_seconds)
    slot = counts.slot_of(now)
    totals = {state: sum(figures[state] for figures in classes.values()) for state in _STATES}
    return {
        "queue": {state: totals[state] for state in _STATES if State(state) in LIVE},
        "journal": {state: totals[state] for state in _STATES if State(state) in FINAL},
        "classes": {name: {state: n for state, n in figures.items() if n}
                    for name, figures in sorted(classes.items()) if any(figures.values())},
        "oldest_pending_seconds": round((now - oldest).total_seconds(), 3) if oldest else None,
        "running_per_worker": per_worker,
        "workers_alive": alive,
        "paused": {"all": paused.all, "classes": sorted(name for name in paused.classes if may(user, name, READ))},
        "unrunnable": unrunnable,
        "finished_per_minute": {
            # The current 10 s slot and the five before it: the last 50 to 60 s.
            "last_minute": sum(n for change in counted for s, n in change.done.items() if s > slot - 6),
            "last_hour": round(sum(sum(change.done.values()) for change in counted) / 60, 2),
            # The last 60 minutes, oldest first, the current (partial) minute last.
            "minutes": _per_minute(counted, slot)},
    }


async def _unrunnable(db: Database, visible: dict[str, Any], lease_seconds: float) -> list[dict[str, Any]]:
    """Waiting jobs that require tags no live worker has: ``{"requires", "jobs", "reason"}`` per set of tags.

    Only jobs that require tags are read (the partial ``requires`` index).
    """
    query = combine(visible, {"requires": {"$exists": True}, "state": {"$in": sorted(s.value for s in WAITING)}})
    groups = await (await db.queue.aggregate([{"$match": query}, {"$group": {"_id": "$requires", "jobs": {"$sum": 1}}}],
                                             maxTimeMS=QUERY_TIMEOUT_MS)).to_list()
    if not groups:
        return []
    workers = await flow.live_tags(db, lease_seconds, max_time_ms=QUERY_TIMEOUT_MS)
    found = []
    for group in groups:
        reason = flow.unmet(group["_id"], workers)
        if reason:
            found.append({"requires": group["_id"], "jobs": group["jobs"], "reason": reason})
    return sorted(found, key=lambda item: item["requires"])


def _per_minute(counted: list[counts.Change], slot: int) -> list[int]:
    """Jobs finished in each of the last 60 minutes (6 slots each), oldest first; the last is the current."""
    per_slot: dict[int, int] = {}
    for change in counted:
        for done_slot, n in change.done.items():
            per_slot[done_slot] = per_slot.get(done_slot, 0) + n
    step = 60 // counts.SLOT_SECONDS
    newest = slot - slot % step  # the first slot of the current minute
    return [sum(per_slot.get(first + i, 0) for i in range(step)) for first in range(newest - 59 * step, newest + 1, step)]


#: The states in the order they are shown.
_STATES = [state.value for state in State]


async def _oldest_pending(db: Database, user: dict[str, Any], minutes: list[str]) -> datetime | None:
    """When the oldest pending job was enqueued: the first pending one of the oldest minutes that hold one.

    Each priority level the queue listing knows (``core.levels``) is read in
    ``{priority, _id}`` windows (``core.keyset``: 64 ids wide at first, wider
    while empty) from where the level starts or the minute does, until one
    holds a pending job ``user`` may read: a burst of jobs in that minute
    costs about a window of it. (A window of ``_id`` alone, or beside
    ``state``, costs the whole queue on the embedded server. A minute's
    count may include a job claimed or ended a moment ago: then the next
    minute is read; after three, the minute itself answers.)
    """
    if not minutes:
        return None
    hints = await levels.load_hints(db)
    for minute in minutes[:3]:
        bounds = counts.minute_range(minute)
        found = [job for level, low in hints.low.items()
                 if (job := await _first_pending(db, user, level, max(low, bounds["$gte"]), bounds["$lt"]))]
        if found:
            return min(found, key=lambda job: job["_id"])["enqueued"]["at"]
    return counts.minute_range(minutes[0])["$gte"].generation_time


async def _first_pending(db: Database, user: dict[str, Any], level: int, start: ObjectId, end: ObjectId
                         ) -> dict[str, Any] | None:
    """The first pending job ``user`` may read at priority ``level`` with an ``_id`` from ``start`` to ``end``."""
    windows = keyset.windows_from(start, "oid", down=False)
    held = None
    while start < end:
        try:
            window = next(windows) if held is None else windows.send(held)
        except StopIteration:
            return None
        if window["$gte"] >= end:
            return None
        ids = {"$gte": window["$gte"], "$lte": min(window["$lte"], end)}
        jobs = await db.queue.find({"priority": level, "_id": ids}, {"state": 1, "qual_name": 1, "enqueued.at": 1},
                                   sort=[("_id", 1)], max_time_ms=QUERY_TIMEOUT_MS).to_list()
        for job in jobs:
            if job.get("state") == State.PENDING.value and may(user, str(job.get("qual_name")), READ):
                return job
        held = len(jobs)
    return None


async def workers(db: Database, *, user: dict[str, Any], lease_seconds: float) -> list[dict[str, Any]]:
    """Registered workers, newest heartbeat first, with ``alive`` (heartbeat within the lease).

    ``running`` and ``jobs`` (the classes a worker offers) list only the jobs
    and classes ``user`` may read; ``host``, ``pid`` and ``import_errors`` (job
    modules the worker could not import) are shown to admins only.
    """
    now = datetime.now(timezone.utc)
    with time_limited("listing the workers"):
        found = await db.worker.find({}, max_time_ms=QUERY_TIMEOUT_MS).sort("heartbeat", -1).to_list()
        for worker in found:
            worker["alive"] = (now - worker["heartbeat"]).total_seconds() <= lease_seconds
        if is_admin(user):
            return found
        visible = readable_filter(user)
        for worker in found:
            worker.pop("host", None)
            worker.pop("pid", None)
            worker.pop("import_errors", None)
            worker.pop("sessions", None)
            worker["jobs"] = [name for name in worker.get("jobs", []) if may(user, name, READ)]
            if worker.get("running"):
                ids = [ObjectId(i) for i in worker["running"] if ObjectId.is_valid(i)]
                readable = await db.queue.find(combine(visible, {"_id": {"$in": ids}}), {"_id": 1},
                                               max_time_ms=QUERY_TIMEOUT_MS).to_list()
                worker["running"] = [str(job["_id"]) for job in readable]
    return found
