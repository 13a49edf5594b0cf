"""The fork server: jobs forked by a launcher that imported them once, and the spawn fallback."""
from __future__ import annotations

import logging
import os
import signal
from typing import Any, Awaitable, Callable

import psutil
import pytest
from bson import ObjectId

from core import forkserver, queue, registry
from core.db import Database
from core.forkserver import ForkServer
from core.process import JobProcess
from core.worker import Worker
from tests.conftest import wait_for

ADMIN = queue.operator("test")
FACTS = "tests.jobs.ProcessFactsJob"

StartWorker = Callable[..., Awaitable[Worker]]

pytestmark = pytest.mark.skipif(not forkserver.is_available(), reason="no fork server on this platform")


@pytest.fixture
async def job_classes(db: Database) -> dict[str, Any]:
    """The example jobs and ``tests.jobs``, registered (the workers of ``worker_factory`` run these)."""
    found = registry.discover(["tests.jobs"])
    await registry.sync(db, found)
    return found


@pytest.fixture
def start_worker(worker_factory: StartWorker) -> StartWorker:
    """``await start_worker("fork" | "spawn")``: a 2-slot worker (stopped at teardown)."""
    return lambda job_start="fork": worker_factory(slots=2, job_start=job_start)


async def run_job(db: Database, qual_name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    job = await queue.enqueue(db, qual_name, args or {}, user=ADMIN, attempts=1)
    return await wait_for(lambda: db.journal.find_one({"_id": job["_id"]}), 30, message=f"{qual_name} to end")


async def test_a_forked_job_leads_its_own_session_with_only_its_descriptors_like_a_spawned_one(
        db: Database, start_worker: StartWorker) -> None:
    forked_worker = await start_worker("fork")
    forked = (await run_job(db, FACTS))["result"]
    await forked_worker.stop()
    await start_worker("spawn")
    spawned = (await run_job(db, FACTS))["result"]

    for facts in (forked, spawned):
        assert facts["pid"] == facts["pgid"] == facts["sid"]  # a process group (and session) of its own
    assert forked["ppid"] == forked_worker.launcher.process.pid
    assert spawned["ppid"] == os.getpid()
    # fds 0-2, the channel, the directory being listed: nothing of the launcher's or another job's
    assert forked["fds"] == spawned["fds"]
    assert forked["imported"]  # the launcher imported the job modules before forking


async def test_a_worker_with_job_start_spawn_starts_no_launcher(db: Database, start_worker: StartWorker) -> None:
    worker = await start_worker("spawn")
    assert worker.launcher is None
    assert (await run_job(db, "jobs.example.NoopJob"))["state"] == "complete"


async def test_a_dead_launcher_is_replaced_and_said_so_and_running_jobs_go_on(
        db: Database, start_worker: StartWorker, caplog: pytest.LogCaptureFixture) -> None:
    worker = await start_worker("fork")
    first = worker.launcher.process.pid
    long = await queue.enqueue(db, "jobs.example.DummyJob", {"sleep": 1.5, "loop_time": 0.1}, user=ADMIN,
                               attempts=1)
    # the claim is written before the worker records the run: wait on the run itself
    running = await wait_for(lambda: worker.runs.get(long["_id"]), message="the job to run")
    await wait_for(lambda: running.pid, message="its process to start")

    with caplog.at_level(logging.WARNING, logger="core.forkserver"):
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: worker.launcher.pid is None, message="the worker to notice")
        assert "the job launcher (pid %d) died" % first in caplog.text
        after = await run_job(db, FACTS)

    assert after["state"] == "complete"
    assert worker.launcher.process.pid != first and after["result"]["ppid"] == worker.launcher.process.pid
    assert "starting a new job launcher" in caplog.text
    done = await wait_for(lambda: db.journal.find_one({"_id": long["_id"]}), 30, message="the long job to end")
    assert done["state"] == "complete" and done["trial"] == 1


async def test_a_job_that_cannot_be_launched_ends_with_a_clear_error(
        db: Database, start_worker: StartWorker) -> None:
    worker = await start_worker("fork")
    os.kill(worker.launcher.process.pid, signal.SIGKILL)
    await wait_for(lambda: worker.launcher.pid is None, message="the worker to notice")
    worker.launcher.python = "/nonexistent/python"  # no new launcher can start

    done = await run_job(db, "jobs.example.NoopJob")

    assert done["state"] == "error"
    assert done["last_error"]["message"].startswith("cannot start the job process:")
    assert "/nonexistent/python" in done["last_error"]["message"]


async def test_the_launcher_reports_each_exit_status_and_leaves_no_zombie() -> None:
    launcher = ForkServer(["jobs.example"])
    await launcher.start()
    try:
        async def ignore(*args: object, **kwargs: object) -> None:
            pass

        outcomes = []
        for qual_name, args in (("jobs.example.NoopJob", {}), ("jobs.example.DummyJob", {"sleep": 30})):
            process = JobProcess({"_id": ObjectId(), "qual_name": qual_name, "args": args}, 1, on_log=ignore,
                                 on_progress=ignore, launcher=launcher)
            await process.start()
            if args:
                await process.kill(5)
            outcomes.append((await process.wait(), process.returncode))
        assert outcomes[0][0].kind == "result" and outcomes[0][1] == 0
        assert outcomes[1][0].kind == "error" and outcomes[1][1] == -signal.SIGTERM
        assert "killed by signal SIGTERM" in outcomes[1][0].message
        parent = psutil.Process(launcher.process.pid)
        await wait_for(lambda: not parent.children(), 5, message="the launcher to reap its children")
    finally:
        await launcher.stop()
    assert launcher.process.poll() is not None  # it ends with its socket
