"""Batch enqueue (``POST /job/batch``) jobs per second, against raw ``insert_many`` of the same documents.

    .venv/bin/python bench/batch.py [--jobs 10000] [--batch 1000] [--mongo-url URL]

Runs ``jobdeck serve`` as its own process and sends the jobs in requests of
``--batch`` each, one after the other. Then, in the same run, it inserts the
very documents those requests stored (fresh ids) with ``insert_many`` in
batches of the same size into the queue collection of a second database set
up the same way (same indexes). A batch enqueue also checks every job and
writes an audit entry per job, in a transaction: twice the documents.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from common import database, drop_database, jobdeck_server  # also puts the project on sys.path

from bson import ObjectId  # noqa: E402
from core.db import Database  # noqa: E402


async def batch_enqueues(base: str, total: int, size: int) -> float:
    """Jobs per second of POST /job/batch, ``size`` jobs a request."""
    async with httpx.AsyncClient(base_url=base, auth=("admin", "bench"), timeout=120) as client:
        await client.post("/job/batch", json={"jobs": [{"qual_name": "jobs.example.NoopJob"}]})  # warm the caches
        started = time.perf_counter()
        for first in range(0, total, size):
            jobs = [{"qual_name": "jobs.example.NoopJob", "args": {}, "priority": n % 3}
                    for n in range(first, min(total, first + size))]
            reply = await client.post("/job/batch", json={"jobs": jobs})
            assert reply.status_code == 200, reply.text
        return total / (time.perf_counter() - started)


async def raw_inserts(url: str, name: str, size: int) -> tuple[float, int]:
    """(documents per second, documents) of insert_many of the stored jobs into a fresh, equally indexed queue."""
    source = Database.connect(url, name)
    documents = await source.queue.find({}).sort("_id", 1).to_list()
    await source.close()
    raw = Database.connect(url, f"{name}_raw")
    await raw.setup(log_retention_days=7)
    for document in documents:
        document["_id"] = ObjectId()
    started = time.perf_counter()
    for first in range(0, len(documents), size):
        await raw.queue.insert_many(documents[first:first + size])
    elapsed = time.perf_counter() - started
    await raw.client.drop_database(f"{name}_raw")
    await raw.close()
    return len(documents) / elapsed, len(documents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--mongo-url")
    args = parser.parse_args()
    name = f"bench_{ObjectId()}"
    with database(args.mongo_url) as url:
        with jobdeck_server(url, name) as (base, _process):
            rate = asyncio.run(batch_enqueues(base, args.jobs, args.batch))
        raw, count = asyncio.run(raw_inserts(url, name, args.batch))
        print(f"POST /job/batch, {args.batch} jobs a request, {args.jobs} jobs: {rate:.0f} jobs/s")
        print(f"raw insert_many of the same {count} documents, {args.batch} a call: {raw:.0f} docs/s")
        print(f"batch enqueue = {rate / raw * 100:.0f}% of raw insert_many (it also writes an audit entry per job, "
              "in a transaction)")
        asyncio.run(drop_database(url, name))


if __name__ == "__main__":
    main()
