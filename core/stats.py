"""Queue statistics and the list of workers, as a user may see them."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from core.listing import combine
from core.permissions import readable_filter
from core.states import FINAL, LIVE, State

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["stats", "workers"]


async def _count_by_state(collection: Any, visible: dict[str, Any], states: frozenset[State]) -> dict[str, int]:
    return {state.value: await collection.count_documents(combine(visible, {"state": state.value}))
            for state in sorted(states, key=list(State).index)}


async def stats(db: Database, *, user: dict[str, Any], lease_seconds: float) -> dict[str, Any]:
    """Counts per state, oldest pending age, running per worker, alive workers, finished per minute.

    Only jobs ``user`` may read are counted.
    """
    now = datetime.now(timezone.utc)
    visible = readable_filter(user)
    queue = await _count_by_state(db.queue, visible, LIVE)
    journal = await _count_by_state(db.journal, visible, FINAL)
    oldest = await db.queue.find_one(combine(visible, {"state": State.PENDING.value}),
                                     {"enqueued.at": 1}, sort=[("_id", 1)])
    running: dict[str, int] = {}
    async for job in db.queue.find(combine(visible, {"state": State.RUNNING.value}), {"locked.worker": 1}):
        worker = (job.get("locked") or {}).get("worker") or "?"
        running[worker] = running.get(worker, 0) + 1
    alive = await db.worker.count_documents({"heartbeat": {"$gte": now - timedelta(seconds=lease_seconds)}})
    last_minute = await db.journal.count_documents(
        combine(visible, {"finished_at": {"$gte": now - timedelta(minutes=1)}}))
    last_hour = await db.journal.count_documents(
        combine(visible, {"finished_at": {"$gte": now - timedelta(hours=1)}}))
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

    ``running`` lists only the jobs ``user`` may read.
    """
    now = datetime.now(timezone.utc)
    found = await db.worker.find({}).sort("heartbeat", -1).to_list()
    visible = readable_filter(user)
    for worker in found:
        worker["alive"] = (now - worker["heartbeat"]).total_seconds() <= lease_seconds
        if visible and worker.get("running"):
            ids = [ObjectId(i) for i in worker["running"] if ObjectId.is_valid(i)]
            readable = await db.queue.find(combine(visible, {"_id": {"$in": ids}}), {"_id": 1}).to_list()
            worker["running"] = [str(job["_id"]) for job in readable]
    return found
