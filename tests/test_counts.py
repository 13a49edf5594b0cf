"""The job counts (``core.counts``): kept in the writes that change them, equal to a recount after anything."""
from __future__ import annotations

import asyncio
import os
import random
import signal
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import pytest
from bson import ObjectId

from core import counts, queue, retention, stats
from core.config import Config
from core.db import Database
from core.errors import Conflict, NotFound
from core.worker import Worker
from tests.conftest import wait_for, worker_process

ADMIN = queue.operator("test")
StartWorker = Callable[..., Awaitable[Worker]]

pytestmark = pytest.mark.usefixtures("job_classes")  # the example jobs are registered


@pytest.fixture(params=[True, False], ids=["transactions", "no transactions"])
def transactions(request: pytest.FixtureRequest, db: Database) -> bool:
    """Run with the server's transactions, and once as on a MongoDB without them."""
    db.transactions = request.param
    return request.param


async def recount(db: Database) -> dict[str, dict[str, int]]:
    """Jobs per class and state, counted one by one in the queue and the journal."""
    found: dict[str, dict[str, int]] = {}
    for collection in (db.queue, db.journal):
        async for job in collection.find({}, {"qual_name": 1, "state": 1}):
            states = found.setdefault(job["qual_name"], {})
            states[job["state"]] = states.get(job["state"], 0) + 1
    return found


async def shown(db: Database) -> dict[str, dict[str, int]]:
    return (await stats.stats(db, user=ADMIN, lease_seconds=5))["classes"]


async def enqueue(db: Database, qual_name: str = "jobs.example.DummyJob", **args: Any) -> dict[str, Any]:
    options = {name: args.pop(name) for name in ("attempts", "error_time", "priority") if name in args}
    return await queue.enqueue(db, qual_name, args, user=ADMIN, **options)


async def agree(db: Database) -> bool:
    return await shown(db) == await recount(db)


async def quiet(db: Database) -> bool:
    """No job runs, none is due."""
    return not await db.queue.find_one({"$or": [{"state": "running"},
                                                {"query_at": {"$lte": datetime.now(timezone.utc)}}]})


async def test_counts_follow_every_kind_of_change(db: Database, worker_factory: StartWorker,
                                                  transactions: bool) -> None:
    for n in range(3):
        await enqueue(db, sleep=0)
    await queue.enqueue_many(db, [{"qual_name": "jobs.example.DummyJob", "args": {"sleep": 0}}] * 4 +
                             [{"qual_name": "jobs.example.FailJob", "attempts": 2, "error_time": 0}],
                             user=ADMIN)
    waiting_failure = await enqueue(db, "jobs.example.FailJob", attempts=3, error_time=3600)
    await enqueue(db, "jobs.example.DeferJob", until=2)
    killed_waiting = await enqueue(db, sleep=0, priority=-10)
    await queue.kill(db, killed_waiting["_id"], user=ADMIN)
    long = await enqueue(db, sleep=60, loop_time=0.1, priority=10)
    assert await shown(db) == await recount(db)

    await worker_factory(slots=2)
    await wait_for(lambda: db.queue.find_one({"_id": long["_id"], "state": "running"}), message="the long job")
    await queue.remove(db, long["_id"], user=ADMIN)
    await wait_for(lambda: db.queue.find_one({"_id": waiting_failure["_id"], "state": "failed"}),
                   message="a failed job waiting for its retry")
    await queue.restart(db, waiting_failure["_id"], user=ADMIN)  # failed -> pending: counted again
    await queue.restart(db, killed_waiting["_id"], user=ADMIN)  # killed -> a new child job
    await wait_for(lambda: quiet(db), message="every job to end or wait")

    # Without transactions a job's count is written just after its state: they agree a write later.
    await wait_for(lambda: agree(db), timeout=5, message="the counts to agree with a recount")
    assert (await shown(db))["jobs.example.FailJob"] == {"error": 1, "failed": 1}

    removed, _ = await retention.sweep(db, 0.0001, now=datetime.now(timezone.utc) + timedelta(days=1), pause=0)
    assert removed > 0 and await db.journal.count_documents({}) == 0
    assert await shown(db) == await recount(db)


async def test_running_jobs_are_shown_running_and_claims_write_no_count(db: Database,
                                                                       worker_factory: StartWorker) -> None:
    jobs = [await enqueue(db, sleep=60, loop_time=0.1) for _ in range(3)]
    before = await stored(db)
    await worker_factory(slots=2)
    await wait_for(lambda: _running(db, 2), message="two jobs to run")

    assert await stored(db) == before == {"jobs.example.DummyJob": {"pending": 3}}
    figures = await stats.stats(db, user=ADMIN, lease_seconds=5)
    assert figures["queue"] == {"pending": 1, "running": 2, "deferred": 0, "failed": 0}
    assert figures["classes"] == {"jobs.example.DummyJob": {"pending": 1, "running": 2}}
    assert sum(figures["running_per_worker"].values()) == 2
    assert figures["oldest_pending_seconds"] is not None and figures["oldest_pending_seconds"] >= 0
    for job in jobs:
        await queue.kill(db, job["_id"], user=ADMIN)


async def stored(db: Database) -> dict[str, dict[str, int]]:
    """The counts as written, not corrected for running jobs."""
    return {name: {state: n for state, n in change.states.items() if n}
            for name, change in (await counts.read(db)).items()}


async def _running(db: Database, n: int) -> bool:
    return await db.queue.count_documents({"state": "running"}) == n


async def test_the_oldest_pending_job_is_found_in_the_minute_of_its_id(db: Database) -> None:
    now = datetime.now(timezone.utc)
    old = await enqueue(db, sleep=0)
    # a job made an hour ago (its id says so, like one enqueued then), and one made now
    hour_ago = now - timedelta(hours=1)
    older = {**old, "_id": ObjectId.from_datetime(hour_ago), "enqueued": {**old["enqueued"], "at": hour_ago}}
    await db.queue.insert_one(older)
    await counts.write(db, counts.added([older]))
    await counts.fold(db)  # (as a worker's or server's folder does within a second)

    figures = await stats.stats(db, user=ADMIN, lease_seconds=5)

    assert 3590 < figures["oldest_pending_seconds"] < 3700
    await queue.kill(db, older["_id"], user=ADMIN)
    assert (await stats.stats(db, user=ADMIN, lease_seconds=5))["oldest_pending_seconds"] < 60


async def test_jobs_finished_in_the_last_minute_and_hour_come_from_the_slots(db: Database,
                                                                          worker_factory: StartWorker) -> None:
    for _ in range(6):
        await enqueue(db, "jobs.example.NoopJob")
    await worker_factory(slots=2)
    await wait_for(lambda: _journaled(db, 6), message="six jobs to end")

    figures = (await stats.stats(db, user=ADMIN, lease_seconds=5))["finished_per_minute"]

    minutes = figures.pop("minutes")
    assert figures == {"last_minute": 6, "last_hour": 0.1}
    assert len(minutes) == 60 and sum(minutes) == 6 and sum(minutes[-2:]) == 6  # this minute (or the one before)


async def test_the_minutes_of_the_last_hour_place_each_finished_job_in_its_minute(db: Database) -> None:
    now = datetime.now(timezone.utc)
    for ago in (30, 30, 59):
        await db.journal.insert_one({"_id": ObjectId(), "qual_name": "jobs.example.NoopJob", "state": "complete",
                                     "finished_at": now - timedelta(minutes=ago), "version": 2})
    await counts.rebuild(db)
    minutes = (await stats.stats(db, user=ADMIN, lease_seconds=5))["finished_per_minute"]["minutes"]
    moved = counts.slot_of(datetime.now(timezone.utc)) // 6 - counts.slot_of(now) // 6  # a minute began meanwhile
    assert minutes[-31 - moved] == 2 and minutes[-60] == (1 if moved == 0 else 0)


async def _journaled(db: Database, n: int) -> bool:
    return await db.journal.count_documents({}) >= n


async def test_rebuild_recounts_counts_gone_wrong_and_a_database_never_counted(db: Database) -> None:
    for _ in range(3):
        await enqueue(db, sleep=0)
    await queue.kill(db, (await db.queue.find_one())["_id"], user=ADMIN)
    right = await recount(db)
    await counts.fold(db)
    await db.counts.update_many({}, {"$inc": {"pending": 5, "killed": -1}})
    await db.counts.insert_one({"_id": "gone.Job", "qual_name": "gone.Job", "pending": 3})
    await db.count_changes.insert_one(counts.Change("other.Job", states={"failed": 2}).record())
    assert await shown(db) != right

    totals = await counts.rebuild(db)

    assert await shown(db) == right
    assert totals == {"pending": 2, "killed": 1, "deferred": 0, "failed": 0, "complete": 0, "error": 0,
                      "inactive": 0}
    await db.counts.drop()
    await db.settings.delete_many({"_id": {"$in": ["counts", "queue_levels"]}})
    assert await counts.ensure(db) and not await counts.ensure(db)
    assert await shown(db) == right
    # and the queue listing learns where its priority level starts (core.levels)
    first = (await db.queue.find({}, {"_id": 1}).sort("_id", 1).limit(1).to_list())[0]["_id"]
    assert (await db.settings.find_one({"_id": "queue_levels"}))["low"] == {"p0": first}


async def test_counts_equal_a_recount_after_a_random_run_with_workers_killed(
        db: Database, config: Config, worker_factory: StartWorker) -> None:
    chance = random.Random(os.environ.get("JOBDECK_TEST_SEED", "counts"))
    workers = list(await asyncio.gather(*(worker_process(config, slots=2, lease_seconds=2) for _ in range(2))))
    killed_workers = 0
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while asyncio.get_running_loop().time() < deadline:
            action = chance.choice(["enqueue", "enqueue", "batch", "kill", "remove", "restart", "sigkill"])
            live = await db.queue.find({}, {"_id": 1}).limit(50).to_list()
            try:
                if action == "enqueue" and chance.random() < 0.3:
                    await enqueue(db, "jobs.example.FailJob", attempts=2, error_time=0)
                elif action == "enqueue":
                    await enqueue(db, sleep=chance.choice([0, 0.3, 1.5]), attempts=2, error_time=0)
                elif action == "batch":
                    await queue.enqueue_many(db, [{"qual_name": "jobs.example.DummyJob",
                                                   "args": {"sleep": chance.choice([0, 0.5])}}] * 3, user=ADMIN)
                elif action in ("kill", "remove") and live:
                    await getattr(queue, action)(db, chance.choice(live)["_id"], user=ADMIN)
                elif action == "restart":
                    ended = await db.journal.find({"state": {"$in": ["killed", "error"]},
                                                   "enqueued.child_id": None}, {"_id": 1}).limit(20).to_list()
                    if ended:
                        await queue.restart(db, chance.choice(ended)["_id"], user=ADMIN)
                elif action == "sigkill" and await db.queue.find_one({"state": "running"}):
                    victim = workers.pop(chance.randrange(len(workers)))
                    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its job processes
                    await victim.wait()
                    killed_workers += 1
                    workers.append(await worker_process(config, slots=2, lease_seconds=2))
            except (Conflict, NotFound):
                pass  # raced with a worker: that is part of the run
            await asyncio.sleep(chance.uniform(0.05, 0.15))  # a pace, not a synchronisation
        assert killed_workers, "the run killed no worker"
        # The last workers, and one that reaps what the killed ones held, run everything to its end.
        await worker_factory(slots=4, lease_seconds=2, heartbeat_seconds=0.5)
        await wait_for(lambda: _empty(db), 90, interval=0.2, message="the queue to empty")
    finally:
        for process in workers:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()

    assert await shown(db) == await recount(db)
    assert sum(figures.get("error", 0) + figures.get("killed", 0)
               for figures in (await shown(db)).values()) > 0


async def _empty(db: Database) -> bool:
    return await db.queue.count_documents({}) == 0


@pytest.mark.parametrize("poison", [{"q": 5, "c": {"pending": 1}}, {"q": "x.Job", "c": "x"},
                                    {"q": "x.Job", "c": {"pending": "1"}}, {"q": "x.Job", "c": {"$set": 1}},
                                    {"q": "x.Job", "w": {"minute": 1}}, {"q": "x.Job", "d": {"s1": 1}},
                                    {"q": "x.Job", "l": {"0": ["a", "b"]}}, {}],
                         ids=["q-number", "c-text", "count-text", "c-operator", "w-key", "d-key", "l-ids", "empty"])
async def test_a_malformed_change_is_logged_once_and_deleted_and_the_rest_fold(
        db: Database, transactions: bool, poison: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(2):
        await enqueue(db, sleep=0)
    bad = await db.count_changes.insert_one(dict(poison))  # (insert_one would set the shared dict's _id)
    await enqueue(db, sleep=0)
    caplog.set_level("ERROR", logger="core.counts")

    # stats keep working, without the malformed change, and say so once however often they are read
    assert await shown(db) == await recount(db)
    assert await shown(db) == await recount(db)
    assert [r.levelname for r in caplog.records if str(bad.inserted_id) in r.getMessage()] == ["ERROR"]

    caplog.clear()
    assert await counts.fold(db) == 4
    deleted = [r.getMessage() for r in caplog.records if str(bad.inserted_id) in r.getMessage()]
    assert len(deleted) == 1 and "deleted" in deleted[0]
    assert await db.count_changes.count_documents({}) == 0
    assert (await db.counts.find_one({"_id": "jobs.example.DummyJob"}))["pending"] == 3
    assert await shown(db) == await recount(db)


async def test_the_folder_goes_on_past_a_malformed_change(db: Database) -> None:
    await db.count_changes.insert_one({"q": "x.Job", "c": "x"})
    await enqueue(db, sleep=0)
    folder = counts.Folder(db, interval=0.05)
    folder.start()
    try:
        await wait_for(lambda: _folded(db), 10, message="every change to be folded")
    finally:
        await folder.stop()
    assert (await db.counts.find_one({"_id": "jobs.example.DummyJob"}))["pending"] == 1


async def _folded(db: Database) -> bool:
    return await db.count_changes.count_documents({}) == 0
