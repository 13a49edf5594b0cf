"""Running jobs survive database faults: fail points, an election, a real stop and restart of the server.

Every test runs real workers with real child processes. The outcome a user
cares about: each job ends as it would have without the fault, each run
happens exactly once, and every log line is stored once, in order.
"""
from __future__ import annotations

import asyncio
import os
import signal
import dataclasses
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from core import queue, registry
from core.config import Config
from core.db import Database
from core.lease import reap_expired
from core.worker import Worker
from tests.conftest import wait_for, worker_process

ADMIN = queue.operator("test")
DUMMY = "jobs.example.DummyJob"


@pytest.fixture
async def job_classes(db: Database) -> dict[str, Any]:
    """The example jobs and ``tests.jobs``, registered."""
    found = registry.discover(["tests.jobs"])
    await registry.sync(db, found)
    return found


async def finished(db: Database, job_id: ObjectId, timeout: float = 60.0) -> dict[str, Any]:
    return await wait_for(lambda: db.journal.find_one({"_id": job_id}), timeout, message=f"job {job_id} to end")


async def assert_ran_once_with_its_whole_log(db: Database, job: dict[str, Any], steps: int) -> None:
    done = await finished(db, job["_id"])
    assert done["state"] == "complete", done.get("last_error")
    assert done["trial"] == 1 and done["last_error"] is None
    records = await db.log.find({"job_id": job["_id"]}, {"_id": 0}).sort("seq", 1).to_list()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    messages = [r["message"] for r in records]
    assert messages.count(f"dummy: sleeping {job['args']['sleep']:g} s in steps of {job['args']['loop_time']:g} s") == 1
    numbers = [int(m.split()[2]) for m in messages if m.startswith("dummy: step")]
    assert numbers == list(range(done["result"]["steps"])) and len(numbers) >= steps // 2


def dummy_steps(sleep: float, loop_time: float) -> int:
    import math
    return math.ceil(sleep / loop_time)


@pytest.fixture
async def apps(config: Config, db: Database) -> AsyncIterator[Any]:
    """``await apps(name)``: a database handle on a client of its own appName (to aim fail points at)."""
    opened: list[Database] = []

    async def open_one(name: str) -> Database:
        # A quick monitor: after "shutting down" or "not primary" the driver pauses its pool until the
        # monitor sees the server again (10 s by default), which only makes the test slow.
        handle = Database(AsyncMongoClient(config.mongo_url, appname=name, tz_aware=True, tzinfo=timezone.utc,
                                           w="majority", serverSelectionTimeoutMS=5000,
                                           heartbeatFrequencyMS=1000), config.database)
        await handle.setup(log_retention_days=1)
        opened.append(handle)
        return handle

    yield open_one
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    for handle in opened:
        await handle.close()


async def start_worker(db: Database, config: Config, classes: dict[str, Any], **settings: Any) -> Worker:
    worker = Worker(db, dataclasses.replace(config, heartbeat_seconds=settings.pop("heartbeat", 0.5),
                                            lease_seconds=settings.pop("lease", 3)),
                    classes=classes, slots=settings.pop("slots", 2), kill_grace=0.5, shutdown_grace=0.2,
                    poll_seconds=0.2)
    await worker.start()
    return worker


async def running(db: Database, job_id: ObjectId) -> dict[str, Any]:
    return await wait_for(lambda: db.queue.find_one({"_id": job_id, "state": "running",
                                                     "locked.pid": {"$ne": None}}), message="the job to run")


@pytest.mark.parametrize("data", [
    # a dropped connection on every kind of write the run makes: progress, lease, log, the end
    {"failCommands": ["update", "insert", "find", "delete", "commitTransaction"], "closeConnection": True},
    # writes refused: the server is shutting down, or not primary
    {"failCommands": ["update", "insert"], "errorCode": 91},
    {"failCommands": ["update", "insert", "commitTransaction"], "errorCode": 10107},
    # written, but the write concern failed (log inserts, progress, renewals)
    {"failCommands": ["update", "insert"], "writeConcernError": {"code": 91, "errmsg": "ShutdownInProgress"}},
], ids=["closeConnection", "ShutdownInProgress", "NotWritablePrimary", "writeConcernError"])
async def test_write_faults_while_jobs_run_change_nothing_about_how_they_end(
        db: Database, config: Config, job_classes: dict[str, Any], apps: Any, data: dict[str, Any]) -> None:
    worker_db = await apps("faulty-worker")
    jobs = [await queue.enqueue(db, DUMMY, {"sleep": 2, "loop_time": 0.1}, user=ADMIN, attempts=1)
            for _ in range(2)]
    worker = await start_worker(worker_db, config, job_classes)
    try:
        for job in jobs:
            await running(db, job["_id"])
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 12},
                                       "data": {**data, "appName": "faulty-worker"}})
        for job in jobs:
            await assert_ran_once_with_its_whole_log(db, job, dummy_steps(2, 0.1))
    finally:
        await worker.stop()


async def test_an_election_while_jobs_run_changes_nothing_about_how_they_end(
        db: Database, config: Config, job_classes: dict[str, Any]) -> None:
    jobs = [await queue.enqueue(db, DUMMY, {"sleep": 4, "loop_time": 0.1}, user=ADMIN, attempts=1)
            for _ in range(2)]
    worker = await start_worker(db, config, job_classes, lease=3)
    try:
        for job in jobs:
            await running(db, job["_id"])
        # The server steps down: writes are refused for 5 s, longer than a lease.
        await db.client.admin.command("replSetStepDown", 5, force=True)
        for job in jobs:
            await assert_ran_once_with_its_whole_log(db, job, dummy_steps(4, 0.1))
    finally:
        await worker.stop()


async def test_after_an_outage_longer_than_a_lease_no_worker_reaps_anothers_healthy_job(
        db: Database, config: Config, job_classes: dict[str, Any], apps: Any) -> None:
    one, two = await apps("worker-one"), await apps("worker-two")
    first = await start_worker(one, config, job_classes, slots=1, lease=2)
    second = await start_worker(two, config, job_classes, slots=1, lease=2)
    jobs = [await queue.enqueue(db, DUMMY, {"sleep": 6, "loop_time": 0.2}, user=ADMIN, attempts=1)
            for _ in range(2)]
    try:
        for job in jobs:
            await running(db, job["_id"])
        # Every update of both workers is refused for 3 s: longer than their lease.
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {
            "failCommands": ["update"], "errorCode": 10107}})
        await asyncio.sleep(3)  # the outage itself
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        for job in jobs:
            await assert_ran_once_with_its_whole_log(db, job, dummy_steps(6, 0.2))
    finally:
        await first.stop()
        await second.stop()


async def test_a_run_that_lost_its_claim_writes_nothing_and_its_job_never_runs_twice_here(
        db: Database, config: Config, job_classes: dict[str, Any]) -> None:
    job = await queue.enqueue(db, DUMMY, {"sleep": 2, "loop_time": 0.1}, user=ADMIN, attempts=2)
    worker = await start_worker(db, config, job_classes, lease=3)
    try:
        await running(db, job["_id"])
        # To a reaper with a lease of 1 ms the lease has expired; the worker's heartbeat looks as old.
        await db.worker.update_one({"_id": worker.id}, {"$set": {"heartbeat": datetime(2000, 1, 1, tzinfo=timezone.utc)}})
        assert await reap_expired(db, 0.001) == 1
        assert (await db.queue.find_one({"_id": job["_id"]}))["state"] == "failed"

        done = await finished(db, job["_id"])
    finally:
        await worker.stop()
    # The first run's end was refused (its claim was gone); the job ran again, once, as trial 2.
    assert done["state"] == "complete" and done["trial"] == 2
    assert done["last_error"]["exception"] == "WorkerLost"
    records = await db.log.find({"job_id": job["_id"]}, {"_id": 0}).sort("seq", 1).to_list()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    second = [int(r["message"].split()[2]) for r in records if r["trial"] == 2 and r["message"].startswith("dummy: step")]
    assert second == list(range(done["result"]["steps"]))


async def test_malformed_documents_are_skipped_and_the_worker_goes_on(
        db: Database, config: Config, job_classes: dict[str, Any]) -> None:
    now = datetime.now(timezone.utc)
    old = now - timedelta(minutes=5)
    await db.queue.insert_one({"_id": ObjectId(), "qual_name": DUMMY, "state": "pending", "query_at": None,
                               "priority": 0, "trial": 0, "version": 1, "args": {}})
    await db.queue.insert_one({"_id": ObjectId(), "qual_name": DUMMY, "state": "running", "priority": 0,
                               "locked": {"worker": "ghost", "heartbeat": old, "at": old, "token": "x"}})
    worker = await start_worker(db, config, job_classes, lease=1, heartbeat=0.2)
    try:
        job = await queue.enqueue(db, DUMMY, {"sleep": 0.2, "loop_time": 0.1}, user=ADMIN)
        done = await finished(db, job["_id"])
        assert done["state"] == "complete"
        beat = (await db.worker.find_one({"_id": worker.id}))["heartbeat"]
        await wait_for(lambda: db.worker.find_one({"_id": worker.id, "heartbeat": {"$gt": beat}}),
                       message="the heartbeat to go on past the malformed expired job")
    finally:
        await worker.stop()


async def test_a_new_trial_never_reuses_a_log_seq_even_when_the_old_records_expired(
        db: Database, config: Config, job_classes: dict[str, Any]) -> None:
    job = await queue.enqueue(db, "tests.jobs.LogThenDeferJob", {"until": 2}, user=ADMIN)
    worker = await start_worker(db, config, job_classes)
    try:
        deferred = await wait_for(lambda: db.queue.find_one({"_id": job["_id"], "state": "deferred"}),
                                  message="the first trial to defer")
        first = await db.log.count_documents({"job_id": job["_id"]})
        assert deferred["log_seq"] == first > 0
        await db.log.delete_many({"job_id": job["_id"]})  # what the TTL index does after log_retention_days
        done = await finished(db, job["_id"])
    finally:
        await worker.stop()
    assert done["trial"] == 2
    seqs = [r["seq"] for r in await db.log.find({"job_id": job["_id"]}).sort("seq", 1).to_list()]
    assert seqs and seqs[0] == first + 1


# ------------------------------------------------------------ a real stop and restart of the server

async def test_a_database_stopped_for_20_s_under_running_jobs_loses_nothing(own_server: Any) -> None:
    """The outage of the issue: 20 s, four leases of 5 s; a second worker that could reap is idle."""
    start, stop = own_server
    url = start()
    db = Database.connect(url, "jobdeck")
    await db.setup(log_retention_days=1)
    classes = registry.discover()
    await registry.sync(db, classes)
    config = Config(mongo_url=url, database="jobdeck", lease_seconds=5, heartbeat_seconds=1)
    jobs = [await queue.enqueue(db, DUMMY, {"sleep": 26, "loop_time": 0.5}, user=ADMIN, attempts=1)
            for _ in range(2)]
    worker = await start_worker(db, config, classes, lease=5, heartbeat=1)
    idle_db = Database.connect(url, "jobdeck")
    idle = None
    try:
        for job in jobs:
            await running(db, job["_id"])
        idle = await start_worker(idle_db, config, classes, lease=5, heartbeat=1)
        stop()
        await asyncio.sleep(20)  # the outage itself, not a wait for something
        assert start() == url  # the same port: every client finds it again
        for job in jobs:
            await assert_ran_once_with_its_whole_log(db, job, dummy_steps(26, 0.5))
            done = await db.journal.find_one({"_id": job["_id"]})
            assert done["locked"] is None and done["prog"]["value"] == 1.0
    finally:
        await worker.stop()
        if idle is not None:
            await idle.stop()
        await idle_db.close()
        await db.close()


async def test_shutdown_ends_in_bounded_time_while_the_database_is_gone(own_server: Any) -> None:
    start, stop = own_server
    url = start()
    db = Database.connect(url, "jobdeck", timeout=1)
    await db.setup(log_retention_days=1)
    classes = registry.discover()
    await registry.sync(db, classes)
    config = Config(mongo_url=url, database="jobdeck", lease_seconds=3, heartbeat_seconds=0.5)
    job = await queue.enqueue(db, DUMMY, {"sleep": 30, "loop_time": 0.2}, user=ADMIN)
    worker = Worker(db, config, classes=classes, slots=1, kill_grace=0.5, shutdown_grace=0.5, poll_seconds=0.2)
    await worker.start()
    try:
        await running(db, job["_id"])
        stop()
        began = time.monotonic()
        await asyncio.wait_for(worker.stop(), 30)
        assert time.monotonic() - began < 0.5 + 0.5 + 10 + 5
    finally:
        await db.close()


# ------------------------------------------------------------ smaller engine points

async def test_the_workers_change_stream_ignores_lease_renewals_and_progress(db: Database) -> None:
    from core.claim import QueueWatcher
    wakes: list[int] = []
    woken = asyncio.Event()

    def wake() -> None:
        wakes.append(1)
        woken.set()

    watcher = QueueWatcher(db, wake=wake, killed=lambda job_id: None, reopened=lambda: None)
    watcher.start()
    try:
        await asyncio.wait_for(woken.wait(), 10)  # opened
        woken.clear()
        opened = len(wakes)
        job_id = ObjectId()
        await db.queue.insert_one({"_id": job_id, "state": "pending", "version": 1, "prog": {"value": 0}})
        await asyncio.wait_for(woken.wait(), 10)  # an insert wakes
        woken.clear()
        await db.queue.update_one({"_id": job_id}, [{"$set": {"locked.heartbeat": "$$NOW", "version": 2}}])
        await db.queue.update_one({"_id": job_id}, {"$set": {"prog": {"value": 0.5}}, "$inc": {"version": 1}})
        await db.queue.update_one({"_id": job_id}, {"$set": {"state": "failed"}, "$inc": {"version": 1}})
        await asyncio.wait_for(woken.wait(), 10)
        # In stream order the renewal and the progress came first: had they woken it, there would be more.
        assert len(wakes) == opened + 2
    finally:
        await watcher.stop()


async def test_the_log_buffer_is_bounded_in_bytes(db: Database) -> None:
    from core.logs import LogWriter
    writer = LogWriter(db, {"_id": ObjectId(), "qual_name": DUMMY}, start_seq=0, trial=1, max_bytes=1 << 20)
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                   "data": {"failCommands": ["insert"], "errorCode": 11601}})
    try:
        writer.start()
        adding = asyncio.create_task(writer.add("INFO", "x" * (600 * 1024)))
        await adding
        blocked = asyncio.create_task(writer.add("INFO", "y" * (600 * 1024)))
        second = asyncio.create_task(writer.add("INFO", "z" * (600 * 1024)))
        done, _ = await asyncio.wait({blocked, second}, timeout=1)
        assert len(done) <= 1  # past 1 MiB queued, the job's output waits for the database
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    await asyncio.wait_for(asyncio.gather(blocked, second), 20)
    await writer.close()
    assert [r["seq"] for r in await db.log.find({"job_id": writer.job_id}).sort("seq", 1).to_list()] == [1, 2, 3]


async def test_a_worker_killed_in_the_middle_of_ending_a_job_does_not_hold_it_for_the_transaction_lifetime(
        db: Database, config: Config, job_classes: dict[str, Any], worker_factory: Any) -> None:
    # Every commit is held back by the server for 7 s: the worker's end of its job stays an open
    # transaction, its writes locked, until the server's transaction lifetime (60 s) or the hold ends.
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {
        "failCommands": ["commitTransaction"], "blockConnection": True, "blockTimeMS": 7_000}})
    lost = await worker_process(config, lease_seconds=2)
    try:
        job = await queue.enqueue(db, DUMMY, {"sleep": 0}, user=ADMIN, attempts=2)
        await wait_for(lambda: db.queue.find_one({"_id": job["_id"], "state": "running"}), message="the claim")
        await wait_for(lambda: _ending(db, lost.pid), message="the worker to be ending the job")
        os.killpg(lost.pid, signal.SIGKILL)
        await lost.wait()
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        if lost.returncode is None:
            os.killpg(lost.pid, signal.SIGKILL)
            await lost.wait()
    started = time.monotonic()

    # the reaper ends the dead worker's sessions, so the job is reaped and run again at once
    await worker_factory(slots=1, lease_seconds=2, heartbeat_seconds=0.5)
    done = await finished(db, job["_id"], timeout=6)

    assert time.monotonic() - started < 6  # (the held commit would have ended the job at 7 s, trial 1)
    assert done["state"] == "complete" and done["trial"] == 2
    assert done["last_error"]["exception"] == "WorkerLost"


async def _ending(db: Database, pid: int) -> bool:
    """Whether the worker process ``pid`` is committing a transaction (held back by the fail point)."""
    operations = (await db.client.admin.command({"currentOp": True})).get("inprog", [])
    return any(op.get("command", {}).get("commitTransaction") for op in operations)
