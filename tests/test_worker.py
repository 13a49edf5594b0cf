"""Workers: real ``Worker``s in the test's loop running real child processes against the test database."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import psutil
import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from core import queue
from core.config import Config
from core.db import Database
from core.job import Job
from core.states import State, transition
from core.worker import Worker, reap_expired
from tests.conftest import wait_for, worker_process

ADMIN = queue.operator("test")
DUMMY = "jobs.example.DummyJob"

StartWorker = Callable[..., Awaitable[Worker]]


async def finished(db: Database, job_id: ObjectId, timeout: float = 30.0) -> dict[str, Any]:
    """The job's journal document, once it has one."""
    return await wait_for(lambda: db.journal.find_one({"_id": job_id}), timeout,
                          message=f"job {job_id} to finish")


async def running_with_pid(db: Database, job_id: ObjectId) -> dict[str, Any]:
    """The job's queue document once a worker runs it in a started process."""
    return await wait_for(
        lambda: db.queue.find_one({"_id": job_id, "state": "running", "locked.pid": {"$ne": None}}),
        message=f"job {job_id} to run")


async def log_of(db: Database, job_id: ObjectId) -> list[dict[str, Any]]:
    return await db.log.find({"job_id": job_id}, {"_id": 0}).sort("seq", 1).to_list()


def assert_contiguous(records: list[dict[str, Any]]) -> None:
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


def is_gone(process: psutil.Process) -> bool:
    """Whether ``process`` has ended (a zombie has: the sandbox's pid 1 reaps orphans slowly)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def process_group(pgid: int) -> list[psutil.Process]:
    """Every live process in process group ``pgid``."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and not is_gone(process):
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


async def enqueue(db: Database, qual_name: str = DUMMY, args: dict[str, Any] | None = None,
                  **options: Any) -> dict[str, Any]:
    return await queue.enqueue(db, qual_name, args or {}, user=ADMIN, **options)


@pytest.fixture
def start_worker(worker_factory: StartWorker) -> StartWorker:
    """Start a worker on the test database (2 slots unless told; stopped at teardown)."""
    return functools.partial(worker_factory, slots=2)


# --- outcomes -----------------------------------------------------------------------------

@pytest.mark.parametrize("job_start", ["fork", "spawn"])
async def test_dummy_job_completes_with_result_log_and_progress(db: Database, start_worker: StartWorker,
                                                                job_start: str) -> None:
    job = await enqueue(db, args={"sleep": 0.3, "loop_time": 0.1})
    await start_worker(job_start=job_start)

    done = await finished(db, job["_id"])

    assert done["state"] == "complete"
    assert done["result"]["slept"] == 0.3 and done["result"]["steps"] >= 1
    assert done["prog"]["value"] == 1.0
    assert done["trial"] == 1 and done["attempts_left"] == 1
    assert done["locked"] is None
    assert done["finished_at"] >= done["started_at"]
    assert done["runtime"] > 0
    assert await db.queue.count_documents({}) == 0
    fetched = await queue.get(db, str(job["_id"]), user=ADMIN)
    assert fetched["journal"] is True and fetched["state"] == "complete"
    records = await log_of(db, job["_id"])
    assert_contiguous(records)
    assert records[0]["message"] == "dummy: sleeping 0.3 s in steps of 0.1 s"
    assert any(r["message"].startswith("dummy: step 0") for r in records)
    assert {(r["qual_name"], r["trial"], r["level"]) for r in records} == {(DUMMY, 1, "INFO")}


async def test_fail_job_is_retried_and_ends_error_with_the_traceback(db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, "jobs.example.FailJob", attempts=2, error_time=0.2)
    await start_worker()

    done = await finished(db, job["_id"])

    assert done["state"] == "error"
    assert done["trial"] == 2 and done["attempts_left"] == 0
    assert done["last_error"]["exception"] == "RuntimeError"
    assert done["last_error"]["message"] == "this job fails on purpose"
    assert "RuntimeError: this job fails on purpose" in done["last_error"]["traceback"]
    records = await log_of(db, job["_id"])
    assert_contiguous(records)
    assert [(r["trial"], r["message"]) for r in records] == [
        (1, "about to fail (trial 1)"), (2, "about to fail (trial 2)")]


async def test_defer_job_runs_again_without_using_attempts(db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, "jobs.example.DeferJob", {"until": 3}, defer_time=0.2)
    await start_worker()

    done = await finished(db, job["_id"])

    assert done["state"] == "complete"
    assert done["result"] == {"trials": 3}
    assert done["trial"] == 3
    assert done["attempts_left"] == done["attempts"] == 1


async def test_a_job_deferred_past_defer_max_ends_inactive(db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, "jobs.example.DeferJob", {"until": 100}, defer_time=0.2, defer_max=0.1)
    await start_worker()

    done = await finished(db, job["_id"])

    assert done["state"] == "inactive"
    assert done["last_error"]["exception"] == "Deferred"
    assert "past defer_max" in done["last_error"]["message"]
    assert done["attempts_left"] == 1
    assert done["trial"] <= 2


async def test_wall_time_exceeded_kills_the_job(db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, args={"sleep": 10}, wall_time=0.5)
    await start_worker()

    done = await finished(db, job["_id"], timeout=20)

    assert done["state"] == "killed"
    assert done["last_error"]["exception"] == "WallTimeExceeded"
    assert done["killed_at"] is not None
    assert done["runtime"] < 10


# --- waking and claiming ------------------------------------------------------------------

class ObservedWorker(Worker):
    """A worker that tells the test when it has scanned for due jobs and when a claim failed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scanned = asyncio.Event()
        self.claim_failed = asyncio.Event()

    async def _next_due_in(self) -> float:
        try:
            return await super()._next_due_in()
        finally:
            self.scanned.set()

    async def claim(self) -> dict[str, Any] | None:
        try:
            return await super().claim()
        except PyMongoError:
            self.claim_failed.set()
            raise


@pytest.fixture
async def own_client(config: Config, db: Database) -> AsyncIterator[tuple[Database, str]]:
    """A database handle on a client of its own application name (to aim failpoints at), and that name."""
    app = f"observed-{os.getpid()}-{time.monotonic_ns()}"
    client: AsyncMongoClient = AsyncMongoClient(config.mongo_url, appname=app, tz_aware=True,
                                                tzinfo=timezone.utc)
    handle = Database(client, config.database)
    await handle.setup(log_retention_days=config.log_retention_days)
    try:
        yield handle, app
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        await handle.close()


async def test_a_job_enqueued_before_the_change_stream_is_open_runs_at_once(
        db: Database, config: Config, job_classes: dict[str, type[Job]], own_client: tuple[Database, str]) -> None:
    # The worker's change stream opens in the background after start(). A job
    # enqueued after the first scan but before the stream is open must not
    # wait for the fallback timer (30 s with change streams). The server holds
    # the worker's change-stream command back for 2 s to open that window.
    worker_db, app = own_client
    assert worker_db.change_streams
    await db.client.admin.command({
        "configureFailPoint": "failCommand", "mode": {"times": 1},
        "data": {"failCommands": ["aggregate"], "appName": app, "blockConnection": True, "blockTimeMS": 2000}})
    worker = ObservedWorker(worker_db, config, classes=job_classes, slots=1, poll_seconds=0.2)
    await worker.start()
    try:
        await asyncio.wait_for(worker.scanned.wait(), 10)
        job = await enqueue(db, args={"sleep": 0})

        done = await finished(db, job["_id"], timeout=15)

        assert done["state"] == "complete"
    finally:
        await worker.stop()


async def test_a_database_error_while_claiming_does_not_stop_the_worker_claiming(
        db: Database, config: Config, job_classes: dict[str, type[Job]], own_client: tuple[Database, str]) -> None:
    worker_db, app = own_client
    worker = ObservedWorker(worker_db, dataclasses.replace(config, heartbeat_seconds=0.5), classes=job_classes,
                            slots=1, poll_seconds=0.2)
    await worker.start()
    try:
        await asyncio.wait_for(worker.scanned.wait(), 10)
        # Interrupted (11601): an OperationFailure the driver does not retry.
        await db.client.admin.command({
            "configureFailPoint": "failCommand", "mode": "alwaysOn",
            "data": {"failCommands": ["find"], "appName": app, "errorCode": 11601}})
        job = await enqueue(db, args={"sleep": 0})
        await asyncio.wait_for(worker.claim_failed.wait(), 40)
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})

        done = await finished(db, job["_id"], timeout=15)

        assert done["state"] == "complete"
    finally:
        await worker.stop()


# --- kill and remove ----------------------------------------------------------------------

async def test_kill_of_a_running_job_ends_it_killed_and_its_process_is_gone(
        db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, args={"sleep": 10})
    await start_worker()
    process = psutil.Process((await running_with_pid(db, job["_id"]))["locked"]["pid"])

    asked = time.monotonic()
    await queue.kill(db, job["_id"], user=ADMIN)
    done = await finished(db, job["_id"], timeout=20)

    assert time.monotonic() - asked < 10
    assert done["state"] == "killed"
    assert done["killed_at"] is not None and done["removed_at"] is None
    assert await db.queue.count_documents({}) == 0
    await wait_for(lambda: is_gone(process), 10, message="the job process to end")


@pytest.mark.parametrize("job_start", ["fork", "spawn"])
async def test_kill_of_a_job_ignoring_sigterm_kills_its_whole_process_group(
        db: Database, start_worker: StartWorker, job_start: str) -> None:
    job = await enqueue(db, "jobs.example.StubbornJob")
    await start_worker(kill_grace=0.5, job_start=job_start)
    pid = (await running_with_pid(db, job["_id"]))["locked"]["pid"]
    said = await wait_for(lambda: db.log.find_one({"job_id": job["_id"], "message": {"$regex": "child pid"}}),
                          message="the stubborn job to fork")
    grandchild = int(said["message"].rsplit(" ", 1)[1])
    group = process_group(pid)
    assert {pid, grandchild} <= {p.pid for p in group}

    await queue.kill(db, job["_id"], user=ADMIN)
    done = await finished(db, job["_id"], timeout=20)

    assert done["state"] == "killed"
    await wait_for(lambda: all(is_gone(p) for p in group), 10, message="every process of the job's group to end")


async def test_remove_of_a_running_job_ends_it_killed_and_removed(db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, args={"sleep": 10})
    await start_worker()
    process = psutil.Process((await running_with_pid(db, job["_id"]))["locked"]["pid"])

    await queue.remove(db, job["_id"], user=ADMIN)
    done = await finished(db, job["_id"], timeout=20)

    assert done["state"] == "killed"
    assert done["removed_at"] is not None and done["killed_at"] is not None
    await wait_for(lambda: is_gone(process), 10, message="the job process to end")


# --- shutdown -----------------------------------------------------------------------------

async def test_stopped_worker_puts_its_running_job_back_without_using_an_attempt(
        db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, args={"sleep": 1.5, "loop_time": 0.1})
    worker = await start_worker(shutdown_grace=0.2)
    assert await db.worker.find_one({"_id": worker.id}) is not None
    process = psutil.Process((await running_with_pid(db, job["_id"]))["locked"]["pid"])

    await worker.stop()

    back = await db.queue.find_one({"_id": job["_id"]})
    assert back["state"] == "pending"
    assert back["attempts_left"] == 1
    assert back["locked"] is None
    assert await db.journal.count_documents({}) == 0
    assert await db.worker.find_one({"_id": worker.id}) is None
    await wait_for(lambda: is_gone(process), 10, message="the job process to end")

    await start_worker()
    done = await finished(db, job["_id"])
    assert done["state"] == "complete"
    assert done["trial"] == 2
    assert done["attempts_left"] == 1
    assert {r["trial"] for r in await log_of(db, job["_id"])} == {1, 2}
    assert_contiguous(await log_of(db, job["_id"]))


async def test_stop_while_the_worker_is_claiming_returns_promptly(
        db: Database, config: Config, job_classes: dict[str, type[Job]]) -> None:
    # A stop (or a wake-up) that arrives while claim() awaits the database
    # must not be lost: the claim loop would then sleep until its next timer
    # (30 s with change streams) before it noticed.
    class GatedWorker(Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.claiming, self.gate = asyncio.Event(), asyncio.Event()

        async def claim(self) -> dict[str, Any] | None:
            self.claiming.set()
            await self.gate.wait()
            return await super().claim()

    worker = GatedWorker(db, config, classes=job_classes, slots=1, shutdown_grace=0.2, poll_seconds=0.2)
    await worker.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(worker.claiming.wait(), 10)
        stopping = asyncio.create_task(worker.stop())
        await wait_for(lambda: worker._stopping, 10, message="stop to begin")
        worker.gate.set()
        await asyncio.wait_for(asyncio.shield(stopping), 5)
    finally:
        worker.gate.set()
        await (stopping or worker.stop())


async def test_stopped_worker_lets_a_job_finish_within_the_grace_period(
        db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, args={"sleep": 0.5, "loop_time": 0.1})
    worker = await start_worker(shutdown_grace=20)
    await running_with_pid(db, job["_id"])

    await worker.stop()

    done = await db.journal.find_one({"_id": job["_id"]})
    assert done is not None and done["state"] == "complete"
    assert done["trial"] == 1


# --- logs and throughput ------------------------------------------------------------------

async def test_chatty_job_keeps_every_log_line_in_order(db: Database, start_worker: StartWorker) -> None:
    lines = 6_000
    job = await enqueue(db, "jobs.example.ChattyJob", {"lines": lines})
    await start_worker()

    done = await finished(db, job["_id"], timeout=60)

    assert done["state"] == "complete", done["last_error"]
    records = await db.log.find({"job_id": job["_id"]}, {"_id": 0, "seq": 1, "message": 1, "stream": 1}
                                ).sort("seq", 1).to_list()
    assert len(records) == lines
    assert [r["seq"] for r in records] == list(range(1, lines + 1))
    assert [r["message"] for r in records] == [f"line {n}" for n in range(1, lines + 1)]
    assert records[0].get("stream") == "stdout" and records[1].get("stream") is None


async def test_two_workers_run_every_job_exactly_once(db: Database, start_worker: StartWorker) -> None:
    count = 80
    jobs = [await enqueue(db, args={"sleep": 0}) for _ in range(count)]
    await start_worker(slots=2)
    await start_worker(slots=2)

    await wait_for(lambda: _at_least(db, count), 150, interval=0.2, message=f"{count} jobs to finish")

    assert await db.queue.count_documents({}) == 0
    assert await db.journal.count_documents({}) == count
    assert await db.journal.count_documents({"state": "complete", "trial": 1}) == count
    assert set(await db.journal.distinct("_id")) == {job["_id"] for job in jobs}
    starts = await db.log.count_documents({"message": {"$regex": "^dummy: sleeping"}})
    assert starts == count, "each job ran once"


async def _at_least(db: Database, count: int) -> bool:
    return await db.journal.count_documents({}) >= count


# --- priority and due time ----------------------------------------------------------------

async def test_higher_priority_is_claimed_first(db: Database, start_worker: StartWorker) -> None:
    low = await enqueue(db, args={"sleep": 0})
    high = await enqueue(db, args={"sleep": 0}, priority=5)
    later = await enqueue(db, args={"sleep": 0})
    await start_worker(slots=1)

    done = {job["_id"]: await finished(db, job["_id"]) for job in (low, high, later)}

    # One slot: each claim comes after the previous job's process ended.
    assert done[high["_id"]]["started_at"] < done[low["_id"]]["started_at"]
    assert done[low["_id"]]["started_at"] < done[later["_id"]]["started_at"], "then oldest first"


async def test_a_job_is_not_claimed_before_its_query_at(db: Database, start_worker: StartWorker) -> None:
    job = await enqueue(db, args={"sleep": 0})
    due = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    await db.queue.update_one({"_id": job["_id"]}, {"$set": {"query_at": due}, "$inc": {"version": 1}})
    await start_worker()

    done = await finished(db, job["_id"])

    assert done["state"] == "complete"
    assert done["started_at"] >= due.replace(microsecond=due.microsecond // 1000 * 1000)


# --- lost workers -------------------------------------------------------------------------

async def lost_job(db: Database, *, attempts: int = 1, killed: bool = False) -> dict[str, Any]:
    """A running job whose worker stopped renewing its lease a minute ago."""
    job = await enqueue(db, attempts=attempts)
    old = datetime.now(timezone.utc) - timedelta(minutes=1)
    fields: dict[str, Any] = {"killed_at": old} if killed else {}
    return await transition(db, job, State.RUNNING, trial=1, started_at=old, **fields,
                            locked={"worker": "ghost:1:abcd", "pid": 99999999, "at": old, "heartbeat": old})


async def test_reap_expired_ends_a_lost_job_with_no_attempts_left_as_error(db: Database, job_classes: Any) -> None:
    job = await lost_job(db)

    assert await reap_expired(db, 3) == 1

    done = await db.journal.find_one({"_id": job["_id"]})
    assert done["state"] == "error"
    assert done["last_error"]["exception"] == "WorkerLost"
    assert "ghost:1:abcd" in done["last_error"]["message"]
    assert done["attempts_left"] == 0
    assert done["locked"] is None
    assert await reap_expired(db, 3) == 0


async def test_reap_expired_makes_a_lost_job_with_attempts_left_due_again(db: Database, job_classes: Any) -> None:
    job = await lost_job(db, attempts=2)

    assert await reap_expired(db, 3) == 1

    back = await db.queue.find_one({"_id": job["_id"]})
    assert back["state"] == "failed"
    assert back["attempts_left"] == 1
    assert back["last_error"]["exception"] == "WorkerLost"
    assert back["query_at"] <= datetime.now(timezone.utc)


async def test_reap_expired_ends_a_lost_job_that_was_asked_to_die_killed(db: Database, job_classes: Any) -> None:
    job = await lost_job(db, attempts=3, killed=True)

    assert await reap_expired(db, 3) == 1

    done = await db.journal.find_one({"_id": job["_id"]})
    assert done["state"] == "killed"
    assert done["last_error"]["exception"] == "WorkerLost"


async def test_reap_expired_leaves_jobs_with_a_fresh_lease_alone(db: Database, job_classes: Any) -> None:
    job = await enqueue(db)
    now = datetime.now(timezone.utc)
    await transition(db, job, State.RUNNING, trial=1,
                     locked={"worker": "w", "pid": None, "at": now, "heartbeat": now})

    assert await reap_expired(db, 3) == 0

    assert (await db.queue.find_one({"_id": job["_id"]}))["state"] == "running"


@pytest.mark.parametrize("job_start", ["fork", "spawn"])
async def test_job_of_a_killed_worker_is_reaped_and_completed_once_by_another(
        db: Database, config: Config, start_worker: StartWorker, tmp_path: Path, job_start: str) -> None:
    with open(tmp_path / "worker.err", "wb") as errors:
        lost = await worker_process(config, job_start=job_start, stderr=errors)
    try:
        job = await enqueue(db, args={"sleep": 1.5, "loop_time": 0.1}, attempts=2)
        process = psutil.Process((await running_with_pid(db, job["_id"]))["locked"]["pid"])
        await wait_for(lambda: db.log.find_one({"job_id": job["_id"], "trial": 1}),
                       message="a log record of the first trial")

        lost.send_signal(signal.SIGKILL)
        await lost.wait()
        await wait_for(lambda: is_gone(process), 10, message="the orphaned job process to end")

        await start_worker(lease_seconds=3, heartbeat_seconds=0.5)
        done = await finished(db, job["_id"], timeout=30)
    finally:
        if lost.returncode is None:
            lost.kill()
            await lost.wait()

    assert done["state"] == "complete"
    assert done["trial"] == 2
    assert done["attempts_left"] == 1
    assert done["last_error"]["exception"] == "WorkerLost"
    assert await db.journal.count_documents({"_id": job["_id"]}) == 1
    assert await db.queue.count_documents({}) == 0
    records = await log_of(db, job["_id"])
    assert_contiguous(records)
    assert {r["trial"] for r in records} == {1, 2}
    assert [r["trial"] for r in records] == sorted(r["trial"] for r in records)
    assert sum(r["message"].startswith("dummy: sleeping") for r in records) == 2
