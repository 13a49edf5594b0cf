"""The multiplexed event stream: delivery latency against the follow stream's, and memory per subscriber.

    .venv/bin/python bench/events.py [--jobs 20] [--rate 100] [--seconds 10] [--idle 100] [--mongo-url URL]

A ``jobdeck serve`` process; ``--jobs`` live jobs, whose state and progress
are then changed straight in the database (as workers would) ``--rate``
times a second in all for ``--seconds``. One client reads ``GET /job/events``
(as the dashboard does) while one follower per job reads
``GET /job/follow/<id>`` (raw sockets, to keep the client side light).
Prints the latency from each database write to the client receiving its
event (p50, p99) for both, against the change stream's own measured alone on
the same server with the same writes; and the server's memory per idle
events subscriber (its RSS before and after ``--idle`` of them connect).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import re
import time
from datetime import datetime, timezone
from typing import Any

import psutil
from common import database, jobdeck_server, percentile  # also puts the project on sys.path

from bson import ObjectId  # noqa: E402
from core.db import Database  # noqa: E402

AUTH = "Basic " + base64.b64encode(b"admin:bench").decode()
QUAL_NAME = "jobs.example.NoopJob"
_ID = re.compile(r'"_id": "([0-9a-f]{24})"')
_VERSION = re.compile(r'"version": (\d+)')


def new_job() -> dict[str, Any]:
    """A running job's document, as a worker leaves it (written straight, no worker runs)."""
    now = datetime.now(timezone.utc)
    return {"_id": ObjectId(), "qual_name": QUAL_NAME, "args": {}, "state": "running", "priority": 0, "attempts": 1,
            "attempts_left": 1, "trial": 1, "query_at": datetime(2100, 1, 1, tzinfo=timezone.utc),
            "enqueued": {"at": now, "username": "bench", "hostname": "bench", "parent_id": None, "child_id": None},
            "started_at": now, "finished_at": None, "runtime": None, "prog": {"value": 0.0, "message": None},
            "locked": {"worker": "bench", "heartbeat": now}, "last_error": None, "result": None, "killed_at": None,
            "removed_at": None, "tags": [], "version": 1}


async def change(db: Database, jobs: list[dict[str, Any]], rate: float, seconds: float) -> dict[tuple[str, int], float]:
    """Change the jobs' state and progress ``rate`` times a second, round robin; (id, version) -> time written."""
    written: dict[tuple[str, int], float] = {}
    loop = asyncio.get_running_loop()
    start, count = loop.time(), int(rate * seconds)
    for number in range(count):
        await asyncio.sleep(max(0.0, start + number / rate - loop.time()))
        job = jobs[number % len(jobs)]
        job["version"] += 1
        state = "running" if job["version"] % 2 else "deferred"  # a change every follower is told of
        written[(str(job["_id"]), job["version"])] = time.time()
        await db.queue.update_one({"_id": job["_id"]}, {"$set": {"state": state, "prog.value": number / count},
                                                        "$inc": {"version": 1}})
    return written


async def stream_alone(db: Database, jobs: list[dict[str, Any]], rate: float, seconds: float) -> list[float]:
    """Write-to-event latency of one change stream alone (no jobdeck in between), for the same writes."""
    received: dict[tuple[str, int], float] = {}
    async with await db.queue.watch([{"$match": {"operationType": "update"}}], full_document="updateLookup") as stream:
        writer = asyncio.create_task(change(db, jobs, rate, seconds))
        while not writer.done() or len(received) < len(writer.result()):
            event = await stream.try_next()
            if event is not None and event.get("fullDocument"):
                document = event["fullDocument"]
                received.setdefault((str(document["_id"]), document["version"]), time.time())
            elif writer.done() and time.time() - max(writer.result().values()) > 5:
                break
        written = writer.result()
    return [received[key] - at for key, at in written.items() if key in received]


class Client:
    """A minimal SSE client: when each (job id, version) arrived."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: dict[tuple[str, int], float] = {}
        self.connected = asyncio.Event()

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/v1{self.path} HTTP/1.1\r\nHost: bench\r\nAuthorization: {AUTH}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\r\n")
                if not text and not self.connected.is_set():
                    self.connected.set()  # the end of the reply's headers
                elif text.startswith("data: ") and (found := _ID.search(text)) and (version := _VERSION.search(text)):
                    self.received.setdefault((found.group(1), int(version.group(1))), time.time())
        finally:
            writer.close()


async def connect(port: int, clients: list[Client]) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(client.run(port)) for client in clients]
    await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 60)
    return tasks


async def close(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def figures(latencies: list[float]) -> str:
    return f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms"


async def measure(url: str, name: str, args: argparse.Namespace) -> None:
    db = Database.connect(url, name)
    await db.setup(log_retention_days=1)
    jobs = [new_job() for _ in range(args.jobs)]
    await db.queue.insert_many([dict(job) for job in jobs])
    alone = await stream_alone(db, jobs, args.rate, min(args.seconds, 3))
    print(f"change stream alone ({len(alone)} updates at {args.rate:g}/s): {figures(alone)}")
    with jobdeck_server(url, name, max_streams_per_user=args.idle + args.jobs + 10,
                        max_streams=args.idle + args.jobs + 10) as (base, process):
        port = int(re.search(r":(\d+)/", base).group(1))
        server = psutil.Process(process.pid)
        await asyncio.sleep(1)  # the server's start-up settles
        rss_before = server.memory_info().rss
        idle = await connect(port, [Client("/job/events") for _ in range(args.idle)])
        await asyncio.sleep(1)
        rss_after = server.memory_info().rss
        await close(idle)
        print(f"{args.idle} idle events subscribers: server memory {(rss_after - rss_before) / args.idle / 1024:.1f} "
              f"KiB per subscriber (RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB)")
        events = Client("/job/events")
        followers = [Client(f"/job/follow/{job['_id']}") for job in jobs]
        tasks = await connect(port, [events, *followers])
        await asyncio.sleep(0.5)  # the followers' first state events
        written = await change(db, jobs, args.rate, args.seconds)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(set(written) - set(events.received)) or any(
                key not in follower.received for follower in followers for key in written
                if key[0] == follower.path.rsplit("/", 1)[1])):
            await asyncio.sleep(0.05)
        await close(tasks)
    followed = {key: at for follower in followers for key, at in follower.received.items()}
    by_events = [events.received[key] - at for key, at in written.items() if key in events.received]
    by_follow = [followed[key] - at for key, at in written.items() if key in followed]
    print(f"{len(written)} changes at {args.rate:g}/s of {args.jobs} jobs, write->client:")
    print(f"  /job/events, 1 client:            {figures(by_events)}; missing {len(written) - len(by_events)}")
    print(f"  /job/follow, 1 client per job:    {figures(by_follow)}; missing {len(written) - len(by_follow)}")
    print(f"  change stream alone:              {figures(alone)}")
    await db.client.drop_database(name)
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="live jobs whose changes are spread over")
    parser.add_argument("--rate", type=float, default=100, help="changes per second, in all")
    parser.add_argument("--seconds", type=float, default=10, help="how long the changes go on")
    parser.add_argument("--idle", type=int, default=100, help="idle events subscribers for the memory figure")
    parser.add_argument("--mongo-url")
    args = parser.parse_args()
    with database(args.mongo_url) as url:
        asyncio.run(measure(url, f"bench_{ObjectId()}", args))


if __name__ == "__main__":
    main()
