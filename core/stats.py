"""Queue statistics and the list of workers, as a user may see them.

Every query carries ``maxTimeMS`` (``listing.QUERY_TIMEOUT_MS``); one the
database stops is a ``DatabaseUnavailable``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from core.listing import QUERY_TIMEOUT_MS, combine, time_limited
from core.permissions import READ, is_admin, may, readable_filter
from core.states import FINAL, LIVE, State

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["stats", "workers"]


async def _count_by_state(collection: Any, visible: dict[str, Any], states: frozenset[State]) -> dict[str, int]:
    return {state.value: await collection.count_documents(combine(visible, {"state": state.value}),
                                                          maxTimeMS=QUERY_TIMEOUT_MS)
            for state in sorted(states, key=list(State).index)}


async def stats(db: Database, *, user: dict[str, Any], lease_seconds: float) -> dict[str, Any]:
    """Counts per state, oldest pending age, running per worker, alive workers, finished per minute.

    Only jobs ``user`` may read are counted.
    """
    now = datetime.now(timezone.utc)
    visible = readable_filter(user)
    with time_limited("counting the statistics"):
        queue = await _count_by_state(db.queue, visible, LIVE)
        journal = await _count_by_state(db.journal, visible, FINAL)
        oldest = await db.queue.find_one(combine(visible, {"state": State.PENDING.value}),
                                         {"enqueued.at": 1}, sort=[("_id", 1)], max_time_ms=QUERY_TIMEOUT_MS)
        running: dict[str, int] = {}
        async for job in db.queue.find(combine(visible, {"state": State.RUNNING.value}), {"locked.worker": 1},
                                       max_time_ms=QUERY_TIMEOUT_MS):
            worker = (job.get("locked") or {}).get("worker") or "?"
            running[worker] = running.get(worker, 0) + 1
        alive = await db.worker.count_documents(
            {"heartbeat": {"$gte": now - timedelta(seconds=lease_seconds)}}, maxTimeMS=QUERY_TIMEOUT_MS)
        last_minute = await db.journal.count_documents(
            combine(visible, {"finished_at": {"$gte": now - timedelta(minutes=1)}}), maxTimeMS=QUERY_TIMEOUT_MS)
        last_hour = await db.journal.count_documents(
            combine(visible, {"finished_at": {"$gte": now - timedelta(hours=1)}}), maxTimeMS=QUERY_TIMEOUT_MS)
    return {
        "queue": queue,
        "journal": journal,
        "oldest_pending_seconds": round((now - oldest["enqueued"]["at"]).total_seconds(), 3) if oldest else None,
        "running_per_worker": running,
        "workers_alive": alive,
        "finished_per_minute": {"last_minute": last_minute, "last_hour": round(last_hour / 60, 2)},
    }


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
            worker["jobs"] = [name for name in worker.get("jobs", []) if may(user, name, READ)]
            if worker.get("running"):
                ids = [ObjectId(i) for i in worker["running"] if ObjectId.is_valid(i)]
                readable = await db.queue.find(combine(visible, {"_id": {"$in": ids}}), {"_id": 1},
                                               max_time_ms=QUERY_TIMEOUT_MS).to_list()
                worker["running"] = [str(job["_id"]) for job in readable]
    return found
