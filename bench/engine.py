"""Benchmark of the job engine against the database's own limit, measured in the same run.

    .venv/bin/python bench/engine.py [--jobs 300] [--samples 100] [--mongo-url URL]

Prints:
- raw cost of the database operations one job needs (insert, conditional
  update by _id+version, delete), one at a time, on the same server;
- enqueue-to-running latency with an idle worker (p50, p99), from the job's
  own timestamps (``enqueued.at`` -> ``locked.at``);
- no-op jobs per second with one worker of 2 slots, against the database limit
  for the writes a job costs and against the cost of starting a job process.

Without --mongo-url it starts its own embedded server (in memory).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from common import ROOT, database, percentile  # also puts the project on sys.path

from bson import ObjectId  # noqa: E402

from core import queue, registry  # noqa: E402
from core.db import Database  # noqa: E402
from core.process import JobProcess  # noqa: E402

NOOP = "jobs.example.NoopJob"
# The writes one job costs at the least: enqueue (insert), claim, pid and
# end (3 conditional updates), journal (insert), queue (delete), audit (insert).
JOB_WRITES = {"insert": 3, "update": 3, "delete": 1}


async def raw_costs(db: Database, count: int) -> dict[str, float]:
    """Seconds per insert_one, conditional update_one and delete_one (sequential)."""
    collection = db.db["bench_raw"]
    ids = [ObjectId() for _ in range(count)]
    started = time.perf_counter()
    for _id in ids:
        await collection.insert_one({"_id": _id, "state": "pending", "version": 1, "payload": "x" * 200})
    insert = (time.perf_counter() - started) / count
    started = time.perf_counter()
    for _id in ids:
        await collection.update_one({"_id": _id, "state": "pending", "version": 1},
                                    {"$set": {"state": "running"}, "$inc": {"version": 1}})
    update = (time.perf_counter() - started) / count
    started = time.perf_counter()
    for _id in ids:
        await collection.delete_one({"_id": _id})
    delete = (time.perf_counter() - started) / count
    await collection.drop()
    return {"insert": insert, "update": update, "delete": delete}


async def process_cost(count: int = 20) -> float:
    """Seconds to start and finish the job process of a no-op job, as the worker does it."""
    async def ignore(*args: object, **kwargs: object) -> None:
        pass

    job = {"_id": ObjectId(), "qual_name": NOOP, "args": {}}
    started = time.perf_counter()
    for _ in range(count):
        process = JobProcess(job, 1, on_log=ignore, on_progress=ignore)
        await process.start()
        assert (await process.wait()).kind == "result"
    return (time.perf_counter() - started) / count


def start_worker(url: str, database: str, slots: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBDECK_")}
    env.update(JOBDECK_MONGO_URL=url, JOBDECK_DATABASE=database, JOBDECK_LOG_LEVEL="WARNING")
    return subprocess.Popen([sys.executable, "-m", "jobdeck", "worker", "--slots", str(slots)], env=env,
                            cwd=ROOT)


async def wait_worker(db: Database) -> None:
    while not await db.worker.count_documents({}):
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


async def throughput(db: Database, user: dict, count: int, url: str) -> tuple[float, float]:
    """(jobs per second, wall seconds) for ``count`` no-op jobs with a fresh 2-slot worker."""
    for _ in range(count):
        await queue.enqueue(db, NOOP, {}, user=user)
    worker = start_worker(url, db.name, 2)
    try:
        while await db.journal.count_documents({}) < count:
            await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait()
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

        raw = await raw_costs(db, args.raw)
        per_job_db = sum(raw[op] * n for op, n in JOB_WRITES.items())
        spawn = await process_cost()
        print(f"database, one operation at a time ({args.raw} each):")
        for op, seconds in raw.items():
            print(f"  {op:<8} {seconds * 1000:7.3f} ms  ({1 / seconds:8.0f} ops/s)")
        print(f"  writes one job needs ({', '.join(f'{n} {op}' for op, n in JOB_WRITES.items())}): "
              f"{per_job_db * 1000:.2f} ms -> limit {1 / per_job_db:.0f} jobs/s per writer")
        print(f"job process start+exit (python -m core.runner, no-op): {spawn * 1000:.1f} ms "
              f"-> limit {2 / spawn:.0f} jobs/s with 2 slots")

        worker = start_worker(url, db.name, 2)
        try:
            await wait_worker(db)
            await latency(db, user, 3)  # warm-up
            values = await latency(db, user, args.samples)
        finally:
            worker.terminate()
            worker.wait()
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"enqueue-to-running latency, idle worker ({args.samples} jobs): "
              f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
              f"(one conditional update costs {raw['update'] * 1000:.2f} ms)")

        await db.journal.delete_many({})
        rate, wall = await throughput(db, user, args.jobs, url)
        db_limit = 1 / per_job_db
        spawn_limit = 2 / spawn
        print(f"no-op jobs, 1 worker x 2 slots ({args.jobs} jobs in {wall:.1f} s): {rate:.1f} jobs/s "
              f"= {rate / db_limit * 100:.0f}% of the database limit ({db_limit:.0f}/s), "
              f"{rate / spawn_limit * 100:.0f}% of the process-start limit ({spawn_limit:.0f}/s)")
    finally:
        await db.client.drop_database(db.name)
        await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="no-op jobs for the throughput run")
    parser.add_argument("--samples", type=int, default=100, help="jobs for the latency run")
    parser.add_argument("--raw", type=int, default=1000, help="operations per raw measurement")
    parser.add_argument("--mongo-url", help="benchmark this server instead of an embedded one")
    arguments = parser.parse_args()
    with database(arguments.mongo_url) as mongo_url:
        asyncio.run(main(arguments, mongo_url))
