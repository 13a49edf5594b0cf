"""Benchmark of what grows with the collections: the same operations with a small and a large backlog and history.

    .venv/bin/python bench/scale.py [--sizes 1000,10000,100000] [--jobs 200] [--samples 30] [--mongo-url URL]

For each size N, a fresh database gets N finished jobs in the journal
(finished over the last 30 days) and N queued no-op jobs, half of them due
now and half due only in a day, written raw with ``insert_many``. Then it
prints, next to the figures of the smallest size:

- the first page (25) of the queue and of the journal, the statistics and
  one job's detail, called through the core functions the HTTP API calls
  (p50 of 10 calls);
- no-op jobs per second, 1 worker x 2 slots (fork), over the first
  ``--jobs`` jobs it runs from the due backlog;
- enqueue-to-running latency of an urgent job (priority 100) while that
  worker runs the backlog: p50 and p99 (from the job's own timestamps).

Then batch enqueue (``POST /job/batch``, 1,000 a request, ``--batch-jobs``
jobs) against raw ``insert_many`` of the same documents, in the same run
(``bench/batch.py``).

Without --mongo-url it starts its own embedded server (in memory).
"""
from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from batch import batch_enqueues, raw_inserts
from common import database, drop_database, jobdeck_server, percentile  # also puts the project on sys.path
from engine import NOOP, claimed_at, start_worker, stop_workers, wait_workers

from bson import ObjectId  # noqa: E402

from core import counts, journal, queue, registry, stats  # noqa: E402
from core.db import Database  # noqa: E402

_CHUNK = 5000


async def populate(db: Database, user: dict, size: int) -> dict[str, Any]:
    """``size`` finished and ``size`` queued jobs (half due in a day), raw; returns one queued job."""
    template = await queue.enqueue(db, NOOP, {}, user=user)
    await db.queue.delete_one({"_id": template["_id"]})
    template.pop("unique_key", None)
    now = datetime.now(timezone.utc)
    later = now + timedelta(days=1)
    for start in range(0, size, _CHUNK):
        count = min(_CHUNK, size - start)
        await db.queue.insert_many([{**template, "_id": ObjectId(), "query_at": later if (start + n) % 2 else now}
                                    for n in range(count)], ordered=False)
        await db.journal.insert_many([
            {**template, "_id": ObjectId(), "state": "complete", "trial": 1, "runtime": 0.01,
             "started_at": now - timedelta(days=30 * (start + n) / size), "locked": None,
             "finished_at": now - timedelta(days=30 * (start + n) / size)} for n in range(count)], ordered=False)
    await counts.rebuild(db)  # raw writes are not counted: recounted, as an operator would after an import
    return await db.queue.find_one({}, sort=[("_id", -1)])


async def p50(call: Callable[[], Awaitable[Any]], times: int = 10) -> float:
    """Median seconds of ``times`` calls (after one warm-up call)."""
    await call()
    values = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        values.append(time.perf_counter() - started)
    return percentile(values, 0.5)


async def finished_since(db: Database, moment: datetime) -> list[dict]:
    """The jobs finished since ``moment`` (a bounded range of the journal's ``finished_at`` index)."""
    return await db.journal.find({"finished_at": {"$gte": moment}}, {"finished_at": 1, "runtime": 1,
                                                                      "enqueued": 1, "priority": 1}).to_list()


async def measure(url: str, user: dict, size: int, args: argparse.Namespace) -> dict[str, float]:
    db = Database.connect(url, f"bench_{ObjectId()}")
    figures: dict[str, float] = {}
    try:
        await db.setup(log_retention_days=1)
        await registry.sync(db, registry.discover())
        started = time.monotonic()
        job = await populate(db, user, size)
        print(f"  {size} queued + {size} finished written in {time.monotonic() - started:.0f} s", flush=True)
        figures["queue page"] = await p50(lambda: journal.list_queue(db, user=user, per_page=25))
        figures["journal page"] = await p50(lambda: journal.list_journal(db, user=user, per_page=25))
        figures["stats"] = await p50(lambda: stats.stats(db, user=user, lease_seconds=30), times=5)
        figures["detail"] = await p50(lambda: queue.get(db, job["_id"], user=user))

        worker = start_worker(url, db.name, 2)
        try:
            await wait_workers(db)
            begin = datetime.now(timezone.utc)
            while len(done := await finished_since(db, begin)) < args.jobs:
                await asyncio.sleep(0.2)
            first = min(claimed_at(j) for j in done)
            ends = sorted(j["finished_at"].timestamp() for j in done)[:args.jobs]
            figures["jobs/s"] = args.jobs / (ends[-1] - first)
            latencies = []
            for _ in range(args.samples):
                urgent = await queue.enqueue(db, NOOP, {}, user=user, priority=100)
                while (ended := await db.journal.find_one({"_id": urgent["_id"]})) is None:
                    await asyncio.sleep(0.005)
                latencies.append(claimed_at(ended) - ended["enqueued"]["at"].timestamp())
            figures["latency p50"] = percentile(latencies, 0.5)
            figures["latency p99"] = percentile(latencies, 0.99)
        finally:
            stop_workers([worker])
    finally:
        await db.client.drop_database(db.name)
        await db.close()
    return figures


def show(size: int, figures: dict[str, float], base: dict[str, float] | None, base_size: int) -> None:
    print(f"N = {size}:")
    for name, value in figures.items():
        unit = "jobs/s" if name == "jobs/s" else "ms"
        shown = value if unit == "jobs/s" else value * 1000
        versus = ""
        if base is not None:
            versus = f"   ({value / base[name] * 100:.0f}% of N = {base_size})" if unit == "jobs/s" \
                else f"   ({value / base[name]:.1f}x N = {base_size})"
        print(f"  {name:14} {shown:9.1f} {unit}{versus}")


async def main(args: argparse.Namespace, url: str) -> None:
    user = queue.operator("bench")
    base = None
    for size in args.sizes:
        figures = await measure(url, user, size, args)
        show(size, figures, base, args.sizes[0])
        base = base or figures


def batch(url: str, jobs: int) -> None:
    """Batch enqueue against raw insert_many, printed."""
    name = f"bench_{ObjectId()}"
    with jobdeck_server(url, name) as (api, _process):
        rate = asyncio.run(batch_enqueues(api, jobs, 1000))
    raw, count = asyncio.run(raw_inserts(url, name, 1000))
    asyncio.run(drop_database(url, name))
    print(f"batch enqueue, {jobs} jobs in requests of 1000: {rate:.0f} jobs/s; raw insert_many of the same "
          f"{count} documents: {raw:.0f} docs/s; batch = {rate / raw * 100:.0f}% of raw")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")], default=[1000, 10000],
                        help="comma-separated N: finished jobs, and queued jobs (half due in a day)")
    parser.add_argument("--jobs", type=int, default=200, help="no-op jobs for the throughput figure")
    parser.add_argument("--samples", type=int, default=30, help="urgent jobs for the latency figure")
    parser.add_argument("--batch-jobs", type=int, default=5000, help="jobs for the batch enqueue figure (0: none)")
    parser.add_argument("--mongo-url", help="benchmark this server instead of an embedded one")
    args = parser.parse_args()
    with database(args.mongo_url) as mongo_url:
        asyncio.run(main(args, mongo_url))
        if args.batch_jobs:
            batch(mongo_url, args.batch_jobs)
