"""Enqueue requests per second over HTTP, with basic auth and with an API token, against raw insert_one.

    .venv/bin/python bench/api.py [--requests 2000] [--concurrency 8] [--mongo-url URL]

Runs ``jobdeck serve`` as its own process, sends ``POST /api/v1/job`` with
``follow: false`` from ``--concurrency`` connections, authenticated by Basic
credentials, then by an API token (``Authorization: Bearer``), and measures,
in the same run and with the same concurrency, how many ``insert_one`` per
second the database itself takes.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
from common import database, drop_database, jobdeck_server, percentile  # also puts the project on sys.path

from bson import ObjectId  # noqa: E402
from core.db import Database  # noqa: E402


async def raw_inserts(url: str, name: str, total: int, concurrency: int) -> float:
    """insert_one per second with ``concurrency`` concurrent writers."""
    db = Database.connect(url, name)
    collection = db.db["bench_raw"]
    per_writer = total // concurrency

    async def writer() -> None:
        for _ in range(per_writer):
            await collection.insert_one({"qual_name": "jobs.example.NoopJob", "args": {}, "state": "pending",
                                         "version": 1, "payload": "x" * 300})

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await collection.drop()
    await db.close()
    return per_writer * concurrency / elapsed


async def api_token(base: str) -> str:
    """A new API token of the admin."""
    async with httpx.AsyncClient(base_url=base, auth=("admin", "bench"), timeout=60) as client:
        reply = await client.post("/token", json={"name": f"bench-{ObjectId()}"})
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]["token"]


async def enqueues(base: str, total: int, concurrency: int, auth: Any) -> tuple[float, list[float]]:
    """(requests per second, latencies) of POST /job with follow false, authenticated by ``auth``."""
    per_client = total // concurrency
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, auth=auth, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await client.post("/job", json={"qual_name": "jobs.example.NoopJob", "follow": False})  # warm the auth cache

        async def sender() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                reply = await client.post("/job", json={"qual_name": "jobs.example.NoopJob", "follow": False})
                latencies.append(time.perf_counter() - started)
                assert reply.status_code == 200, reply.text

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return per_client * concurrency / elapsed, latencies


class _Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mongo-url")
    args = parser.parse_args()
    name = f"bench_{ObjectId()}"
    with database(args.mongo_url) as url:
        raw = asyncio.run(raw_inserts(url, name, args.requests, args.concurrency))
        with jobdeck_server(url, name) as (base, _process):
            token = asyncio.run(api_token(base))
            runs = [(kind, asyncio.run(enqueues(base, args.requests, args.concurrency, auth)))
                    for kind, auth in (("basic auth", ("admin", "bench")),
                                       ("API token", _Bearer(token)))]
        print(f"raw insert_one, {args.concurrency} concurrent writers: {raw:.0f}/s")
        for kind, (rate, latencies) in runs:
            print(f"POST /job ({kind}, follow=false), {args.concurrency} connections, {args.requests} requests: "
                  f"{rate:.0f}/s = {rate / raw * 100:.0f}% of raw insert_one (latency p50 "
                  f"{percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms)")
        asyncio.run(drop_database(url, name))


if __name__ == "__main__":
    main()
