"""Memory of a server whose clients follow one large job many times: bounded, and given back.

A real ``jobdeck serve`` process, so that its resident memory (psutil) is the
server's alone. One job of about 1 MB of args, followed 200 times at once by
one user; each follower reads its first state event whole, then the job's
progress is written a few times (as a worker writes it), so that the hub fans
every change out to all 200.
"""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Callable

import httpx
import psutil
import pytest
from bson import ObjectId

from core.config import Config
from core.db import Database
from tests.conftest import clean_env, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("admin", "hans")
DUMMY = "jobs.example.DummyJob"
FOLLOWERS = 200
UPDATES = 3
ARGS_CHARS = 1_000_000  # the request body stays under max_body_size (1 MiB)
MIB = 1024 * 1024
#: Growth of the server's RSS allowed while the followers are connected, and after they left.
#: One copy of the document per follower alone would be 200 MB; a cache of every serialised
#: document (and the last one each follower sent) made it about 390 MiB, and kept it.
BOUND = 150 * MIB

pytestmark = pytest.mark.usefixtures("admin", "job_classes")


@pytest.fixture
async def served(config: Config, tmp_path: Path) -> AsyncIterator[tuple[str, psutil.Process]]:
    """A ``jobdeck serve`` process on the test database: (API base URL, its process)."""
    port = free_port()
    env = clean_env(JOBDECK_MONGO_URL=config.mongo_url, JOBDECK_DATABASE=config.database,
                    JOBDECK_DATA_DIR=config.data_dir, JOBDECK_PORT=str(port), JOBDECK_LOG_LEVEL="WARNING",
                    JOBDECK_MAX_STREAMS_PER_USER=str(FOLLOWERS + 10))
    base = f"http://127.0.0.1:{port}/api/v1"
    log_path = tmp_path / "serve.stderr"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "jobdeck", "serve"], env=env, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=log)
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            async def healthy() -> bool:
                assert process.poll() is None, f"jobdeck serve exited: {log_path.read_text()}"
                try:
                    return (await http.get(base + "/health")).status_code == 200
                except httpx.HTTPError:
                    return False
            await wait_for(healthy, timeout=60, interval=0.1, message="GET /health of jobdeck serve")
        yield base, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            await wait_for(lambda: process.poll() is not None, timeout=30, message="jobdeck serve to stop")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


class Follower:
    """One SSE client of ``/job/follow/<id>``: records the version of every state event it read whole."""

    def __init__(self) -> None:
        self.versions: list[int] = []

    async def run(self, http: httpx.AsyncClient, job_id: str) -> None:
        kind = version = None
        async with http.stream("GET", f"/job/follow/{job_id}") as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    version = int(line[4:].partition(".")[0])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "state":
                    assert len(line) > ARGS_CHARS and line.endswith("}"), "a state event cut short"
                    self.versions.append(version)


def following(tasks: list[asyncio.Task[None]], condition: Callable[[], bool]) -> bool:
    """``condition()``, once sure that no follower has stopped (its error, if it failed)."""
    for task in tasks:
        if task.done():
            task.result()
            raise AssertionError("a follower's stream ended")
    return condition()


async def no_subscribers(http: httpx.AsyncClient) -> bool:
    """Whether the server has no hub subscription open, as its metrics say."""
    metrics = (await http.get("/metrics")).text
    return float(re.search(r"^jobdeck_hub_subscribers (\S+)", metrics, re.M).group(1)) == 0


async def test_two_hundred_followers_of_a_one_megabyte_job_leave_the_server_rss_bounded(
        served: tuple[str, psutil.Process], db: Database) -> None:
    base, server = served
    async with httpx.AsyncClient(base_url=base, auth=AUTH, timeout=60,
                                 limits=httpx.Limits(max_connections=FOLLOWERS + 10)) as http:
        reply = await http.post("/job", json={"qual_name": DUMMY, "args": {"message": "x" * ARGS_CHARS},
                                              "follow": False})
        assert reply.status_code == 200, reply.text  # accepted; no worker, so it stays pending
        job_id = reply.json()["data"]
        warm = Follower()  # one follower first: what the server needs to follow at all is not growth
        warming = asyncio.create_task(warm.run(http, job_id))
        await wait_for(lambda: warm.versions, timeout=30, message="the first follower's state")
        warming.cancel()
        await asyncio.gather(warming, return_exceptions=True)
        await wait_for(lambda: no_subscribers(http), timeout=10, message="the first follower to go")
        before = server.memory_info().rss

        followers = [Follower() for _ in range(FOLLOWERS)]
        tasks = [asyncio.create_task(follower.run(http, job_id)) for follower in followers]
        try:
            await wait_for(lambda: following(tasks, lambda: all(follower.versions for follower in followers)),
                           timeout=30, message=f"{FOLLOWERS} followers to read the first state")
            connected = server.memory_info().rss
            version = followers[0].versions[0]
            for step in range(1, UPDATES + 1):  # as a worker writes progress
                await db.queue.update_one({"_id": ObjectId(job_id)},
                                          {"$set": {"prog": {"value": step / 10, "message": f"step {step}"}},
                                           "$inc": {"version": 1}})
            await wait_for(lambda: following(tasks, lambda: all(follower.versions[-1] == version + UPDATES
                                                                for follower in followers)),
                           timeout=30, message=f"{FOLLOWERS} followers to read the last update")
            updated = server.memory_info().rss
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await wait_for(lambda: no_subscribers(http), timeout=10, message="every follower to go")
        after = server.memory_info().rss

    figures = (f"server RSS {before / MIB:.0f} MiB before, {connected / MIB:.0f} MiB with {FOLLOWERS} followers, "
               f"{updated / MIB:.0f} MiB after {UPDATES} updates, {after / MIB:.0f} MiB after they left")
    print(figures)
    assert all(follower.versions == sorted(set(follower.versions)) for follower in followers)  # no repeats
    assert max(connected, updated, after) - before < BOUND, figures
