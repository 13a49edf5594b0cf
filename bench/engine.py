"""Benchmark of the job engine against the database's own limit and the cost of a process, measured in the same run.

    .venv/bin/python bench/engine.py [--jobs 1000] [--samples 100] [--mongo-url URL]

Prints:
- the cost of starting and ending a no-op job's process: forked by the fork
  server, and spawned (``python -m core.runner``);
- the database limit: the writes a queued job costs from its claim to the
  journal (a compare-and-set, then a transaction deleting it from the queue
  and writing the journal), on the same collections and job documents, done
  raw by 2 concurrent writers on the same server, without jobdeck's code;
- no-op jobs per second, ``--jobs`` queued before the workers start, clock
  from the first claim to the last end: 1 worker x 2 slots (fork and spawn),
  and 2 workers x 2 slots;
- enqueue-to-running latency with an idle worker (p50, p99), from the job's
  own timestamps (``enqueued.at`` -> its claim).

Without --mongo-url it starts its own embedded server (in memory).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from common import ROOT, database, percentile  # also puts the project on sys.path

from bson import ObjectId  # noqa: E402

from core import queue, registry  # noqa: E402
from core.db import Database  # noqa: E402
from core.forkserver import ForkServer  # noqa: E402
from core.process import JobProcess  # noqa: E402

NOOP = "jobs.example.NoopJob"


async def raw_job_limit(db: Database, user: dict, count: int, writers: int = 2) -> float:
    """Jobs per second the database takes for a job's writes after its enqueue, done raw by ``writers``.

    The same commands as the worker's, on the same collections with their
    indexes and on real job documents, without jobdeck's code: a claim (an
    update by ``_id``, then a read of the job), then a transaction reading the
    job, deleting it from the queue and writing it to the journal.
    """
    ids = [(await queue.enqueue(db, NOOP, {}, user=user))["_id"] for _ in range(count)]
    chunks = [ids[n::writers] for n in range(writers)]

    async def writer(chunk: list[Any]) -> None:
        for _id in chunk:
            token = ObjectId().binary.hex()
            await db.queue.update_one(
                {"_id": _id, "state": "pending", "version": 1},
                {"$set": {"state": "running", "trial": 1, "locked": {"worker": "raw", "token": token,
                                                                      "at": datetime.now(timezone.utc)}},
                 "$inc": {"version": 1}})
            await db.queue.find_one({"_id": _id, "locked.token": token})

            async def move(session: Any) -> None:
                doc = await db.queue.find_one({"_id": _id, "state": "running", "locked.token": token},
                                              session=session)
                await db.queue.delete_one({"_id": _id, "version": doc["version"]}, session=session)
                await db.journal.replace_one({"_id": _id}, {**doc, "state": "complete", "locked": None},
                                             upsert=True, session=session)
            async with db.client.start_session() as session:
                await session.with_transaction(move)

    started = time.perf_counter()
    await asyncio.gather(*(writer(chunk) for chunk in chunks))
    elapsed = time.perf_counter() - started
    await db.journal.delete_many({})
    return count / elapsed


async def process_cost(launcher: ForkServer | None, count: int) -> float:
    """Seconds to start and finish the process of a no-op job, as the worker does it."""
    async def ignore(*args: object, **kwargs: object) -> None:
        pass

    job = {"_id": ObjectId(), "qual_name": NOOP, "args": {}}
    started = time.perf_counter()
    for _ in range(count):
        process = JobProcess(job, 1, on_log=ignore, on_progress=ignore, launcher=launcher)
        await process.start()
        assert (await process.wait()).kind == "result"
    return (time.perf_counter() - started) / count


async def process_costs() -> tuple[float, float]:
    """(fork server, spawn) seconds per no-op job process."""
    launcher = ForkServer(["jobs.example"])
    await launcher.start()
    try:
        await process_cost(launcher, 5)  # warm-up
        forked = await process_cost(launcher, 100)
    finally:
        await launcher.stop()
    return forked, await process_cost(None, 20)


def start_worker(url: str, database: str, slots: int, job_start: str = "fork") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBDECK_")}
    env.update(JOBDECK_MONGO_URL=url, JOBDECK_DATABASE=database, JOBDECK_LOG_LEVEL="WARNING",
               JOBDECK_JOB_START=job_start)
    return subprocess.Popen([sys.executable, "-m", "jobdeck", "worker", "--slots", str(slots)], env=env,
                            cwd=ROOT)


def stop_workers(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait()


async def wait_workers(db: Database, count: int = 1) -> None:
    while await db.worker.count_documents({}) < count:
        await asyncio.sleep(0.05)


async def latency(db: Database, user: dict, samples: int) -> list[float]:
    """Enqueue-to-running latencies (s), one job at a time, with an idle worker."""
    values = []
    for _ in range(samples):
        job = await queue.enqueue(db, NOOP, {}, user=user)
        while (done := await db.journal.find_one({"_id": job["_id"]})) is None:
            await asyncio.sleep(0.005)
        values.append(claimed_at(done) - done["enqueued"]["at"].timestamp())
    return values


def claimed_at(job: dict) -> float:
    """When the worker claimed the job (``locked`` is cleared at the end; ``runtime`` counts from the claim)."""
    return job["finished_at"].timestamp() - job["runtime"]


async def throughput(db: Database, user: dict, count: int, url: str, *, workers: int = 1, slots: int = 2,
                     job_start: str = "fork") -> tuple[float, float]:
    """(jobs per second, wall seconds) for ``count`` queued no-op jobs with fresh workers.

    The clock runs from the first claim to the last end.
    """
    await db.journal.delete_many({})
    await registry.sync(db, registry.discover())  # as jobdeck enqueue does: the last worker withdrew its offer
    for _ in range(count):
        await queue.enqueue(db, NOOP, {}, user=user)
    started = [start_worker(url, db.name, slots, job_start) for _ in range(workers)]
    try:
        # Seldom: on the embedded server a count reads every document it counts.
        while await db.journal.count_documents({}) < count:
            await asyncio.sleep(0.5)
    finally:
        stop_workers(started)
    jobs = await db.journal.find({}, {"finished_at": 1, "runtime": 1}).to_list()
    first_claim = min(claimed_at(j) for j in jobs)
    last_end = max(j["finished_at"].timestamp() for j in jobs)
    return count / (last_end - first_claim), last_end - first_claim


async def main(args: argparse.Namespace, url: str) -> None:
    db = Database.connect(url, f"bench_{ObjectId()}")
    try:
        await db.setup(log_retention_days=1)
        await registry.sync(db, registry.discover())
        user = queue.operator("bench")

        forked, spawned = await process_costs()
        print("job process start+exit (no-op job):")
        print(f"  fork server  {forked * 1000:6.1f} ms  -> limit {2 / forked:5.0f} jobs/s with 2 slots")
        print(f"  spawn        {spawned * 1000:6.1f} ms  -> limit {2 / spawned:5.0f} jobs/s with 2 slots")

        limit = await raw_job_limit(db, user, args.raw)
        print(f"database limit: a job's writes after its enqueue (claim; delete + journal in a transaction), "
              f"raw, 2 writers: {limit:.0f} jobs/s")

        for workers, job_start in ((1, "fork"), (1, "spawn"), (2, "fork")):
            jobs = args.jobs if job_start == "fork" else max(50, args.jobs // 5)
            rate, wall = await throughput(db, user, jobs, url, workers=workers, job_start=job_start)
            print(f"no-op jobs, {workers} worker{'s' if workers > 1 else ''} x 2 slots, {job_start}: "
                  f"{jobs} jobs in {wall:.1f} s = {rate:.0f} jobs/s = {rate / limit * 100:.0f}% of the database limit")

        worker = start_worker(url, db.name, 2)
        try:
            await wait_workers(db)
            await registry.sync(db, registry.discover())
            await latency(db, user, 5)  # warm-up
            values = await latency(db, user, args.samples)
        finally:
            stop_workers([worker])
        print(f"enqueue-to-running latency, idle worker ({args.samples} jobs): "
              f"p50 {percentile(values, 0.5) * 1000:.1f} ms, p99 {percentile(values, 0.99) * 1000:.1f} ms")
    finally:
        await db.client.drop_database(db.name)
        await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="no-op jobs for the throughput runs")
    parser.add_argument("--samples", type=int, default=100, help="jobs for the latency run")
    parser.add_argument("--raw", type=int, default=1000, help="jobs for the raw database measurement")
    parser.add_argument("--mongo-url", help="benchmark this server instead of an embedded one")
    arguments = parser.parse_args()
    with database(arguments.mongo_url) as mongo_url:
        asyncio.run(main(arguments, mongo_url))
