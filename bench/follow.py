"""Live following at scale: write-to-client latency for 100 and 1,000 followers of one job.

    .venv/bin/python bench/follow.py [--followers 100 1000] [--records 40] [--mongo-url URL]

For each follower count: a ``jobdeck serve`` process, N SSE clients on
``/job/follow/<id>`` (raw sockets, to keep the client side light), then log
records written straight into the database (as a worker would) every 50 ms.
Prints, per count: latency from the database write to each client receiving
the event (p50, p99), against the change-stream latency measured alone on the
same server; the server's memory per follower; and how many change streams
the server opened (one hub per process, whatever the number of followers).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import re
import time
from datetime import datetime, timezone

import httpx
import psutil
from common import database, jobdeck_server, percentile  # also puts the project on sys.path

from bson import ObjectId  # noqa: E402
from core import queue, registry  # noqa: E402
from core.db import Database  # noqa: E402

AUTH = "Basic " + base64.b64encode(b"admin:bench").decode()
_SEQ = re.compile(r'"seq": (\d+)')


async def write_records(db: Database, job_id: ObjectId, count: int, start_seq: int) -> dict[int, float]:
    """Insert ``count`` log records 50 ms apart; return seq -> time written."""
    written = {}
    for seq in range(start_seq, start_seq + count):
        await asyncio.sleep(0.05)
        written[seq] = time.time()
        await db.log.insert_one({"job_id": job_id, "seq": seq, "created": datetime.now(timezone.utc),
                                 "level": "INFO", "message": f"bench {seq}", "qual_name": "jobs.example.NoopJob",
                                 "trial": 1})
    return written


async def stream_latency(db: Database, count: int) -> list[float]:
    """Write-to-event latency of one change stream alone (no jobdeck in between)."""
    job_id = ObjectId()
    received: dict[int, float] = {}
    async with await db.log.watch([{"$match": {"fullDocument.job_id": job_id}}]) as stream:
        writer = asyncio.create_task(write_records(db, job_id, count, 1))
        async for change in stream:
            received[change["fullDocument"]["seq"]] = time.time()
            if len(received) == count:
                break
        written = await writer
    return [received[seq] - written[seq] for seq in written]


class Follower:
    """A minimal SSE client: records when each log seq arrived."""

    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.connected = asyncio.Event()
        self.closed = False

    async def run(self, port: int, job_id: ObjectId) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/v1/job/follow/{job_id} HTTP/1.1\r\nHost: bench\r\nAuthorization: {AUTH}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        kind = None
        while line := await reader.readline():
            text = line.decode().rstrip("\r\n")
            if text.startswith("event: "):
                kind = text[7:]
                self.connected.set()
            elif text.startswith("data: ") and kind == "log":
                self.received[int(_SEQ.search(text).group(1))] = time.time()
            elif text.startswith("data: ") and kind == "close":
                self.closed = True
                break
        writer.close()


async def run_followers(base: str, server: psutil.Process, db: Database, followers: int,
                        records: int) -> dict[str, float]:
    port = int(re.search(r":(\d+)/", base).group(1))
    job = await queue.enqueue(db, "jobs.example.NoopJob", {}, user=queue.operator("bench"))
    rss_before = server.memory_info().rss
    clients = [Follower() for _ in range(followers)]
    tasks = [asyncio.create_task(client.run(port, job["_id"])) for client in clients]
    await asyncio.gather(*(client.connected.wait() for client in clients))
    await asyncio.sleep(0.5)  # let the server settle before measuring its memory
    rss_after = server.memory_info().rss
    written = await write_records(db, job["_id"], records, 1)
    deadline = time.monotonic() + 60
    while any(len(c.received) < records for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await queue.kill(db, job["_id"], user=queue.operator("bench"))
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    latencies = [c.received[seq] - written[seq] for c in clients for seq in written if seq in c.received]
    missing = followers * records - len(latencies)
    async with httpx.AsyncClient(base_url=base, auth=("admin", "bench")) as http:
        metrics = (await http.get("/metrics")).text
    streams = re.search(r"^jobdeck_hub_change_streams_opened (\S+)", metrics, re.M).group(1)
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "missing": missing,
            "closed": sum(c.closed for c in clients), "rss_per_follower": (rss_after - rss_before) / followers,
            "streams": float(streams)}


async def measure(url: str, name: str, counts: list[int], records: int) -> None:
    db = Database.connect(url, name)
    await db.setup(log_retention_days=1)
    await registry.sync(db, registry.discover())
    alone = await stream_latency(db, records)
    print(f"change stream alone ({records} records): p50 {percentile(alone, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(alone, 0.99) * 1000:.1f} ms")
    for count in counts:
        # One user opens them all: lift the per-user cap on open streams for the run.
        with jobdeck_server(url, name, max_streams_per_user=count + 10, max_streams=count + 10) as (base, process):
            figures = await run_followers(base, psutil.Process(process.pid), db, count, records)
        print(f"{count} followers x {records} log events: write->client p50 {figures['p50'] * 1000:.1f} ms, "
              f"p99 {figures['p99'] * 1000:.1f} ms (change stream alone p50 {percentile(alone, 0.5) * 1000:.1f} ms); "
              f"server memory {figures['rss_per_follower'] / 1024:.1f} KiB per follower; "
              f"change streams opened by the server: {figures['streams']:.0f}; "
              f"events missing: {figures['missing']}; streams closed properly: {figures['closed']}/{count}")
    await db.client.drop_database(name)
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--followers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--mongo-url")
    args = parser.parse_args()
    with database(args.mongo_url) as url:
        asyncio.run(measure(url, f"bench_{ObjectId()}", args.followers, args.records))


if __name__ == "__main__":
    main()
