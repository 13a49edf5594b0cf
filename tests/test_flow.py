"""Flow control in the engine: concurrency limits (core.slots), pause (core.flow), worker tags."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from pymongo.errors import PyMongoError

from core import flow, queue, registry, slots, states
from core.claim import Claimer
from core.config import Config
from core.db import Database
from core.errors import BadArgument, Conflict, Forbidden
from core.states import State
from core.worker import Worker
from tests.conftest import forget_package, make_package, wait_for, worker_process

ADMIN = queue.operator("test")
DUMMY = "jobs.example.DummyJob"
NOOP = "jobs.example.NoopJob"


async def enqueue(db: Database, qual_name: str = NOOP, args: dict[str, Any] | None = None, **options: Any
                  ) -> dict[str, Any]:
    return await queue.enqueue(db, qual_name, args or {}, user=ADMIN, **options)


def claimer(db: Database, name: str, **kwargs: Any) -> Claimer:
    return Claimer(db, worker=name, host="test", classes={DUMMY, NOOP}, **kwargs)


async def finished(db: Database, ids: list[Any]) -> bool:
    return await db.journal.count_documents({"_id": {"$in": ids}}) == len(ids)


# --- concurrency limits -------------------------------------------------------------------------------


async def test_max_parallel_2_across_3_workers_never_runs_3_and_a_killed_worker_frees_its_slot(
        db: Database, config: Config, job_classes: Any) -> None:
    jobs = [await enqueue(db, DUMMY, {"sleep": 0.4, "loop_time": 0.1}, max_parallel=2) for _ in range(30)]
    ids = [job["_id"] for job in jobs]
    most = 0
    samples = 0

    async def sample() -> None:  # the number running, read from the database after every change
        nonlocal most, samples
        async with await db.db.watch([{"$match": {"ns.coll": {"$in": ["queue", "slots"]}}}]) as stream:
            async for _ in stream:
                running = await db.queue.count_documents({"_id": {"$in": ids}, "state": "running"})
                most, samples = max(most, running), samples + 1

    sampler = asyncio.create_task(sample())
    workers = list(await asyncio.gather(*(worker_process(config, slots=4, lease_seconds=2) for _ in range(3))))
    try:
        # SIGKILL the worker running the first job seen running: its slot stays taken until it is reaped.
        victim = await wait_for(lambda: db.queue.find_one({"_id": {"$in": ids}, "state": "running"}))
        owner = victim["locked"]["worker"]
        for process in workers:
            if owner.split(":")[-2] == str(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        await wait_for(lambda: finished(db, ids), timeout=60, message="all 30 jobs to end")
    finally:
        for process in workers:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    ended = await db.journal.find({"_id": {"$in": ids}}).to_list()
    lost = [job for job in ended if (job.get("last_error") or {}).get("exception") == "WorkerLost"]
    # Reaped, and the slots it held freed with it (it may have run a second one).
    assert victim["_id"] in {job["_id"] for job in lost} and len(lost) <= 2
    assert sum(job["state"] == "complete" for job in ended) == 30 - len(lost)
    assert samples > 30 and most == 2
    # The same from the runs' own times: never 3 at once.
    edges = sorted([(job["started_at"], 1) for job in ended] + [(job["finished_at"], -1) for job in ended],
                   key=lambda edge: (edge[0], edge[1]))
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    assert peak <= 2
    assert await db.slots.count_documents({}) == 0


async def test_a_pool_with_max_running_1_runs_one_job_at_a_time_across_its_workers(
        db: Database, job_classes: Any) -> None:
    first, second = claimer(db, "w1", pool=("gpu", 1)), claimer(db, "w2", pool=("gpu", 1))
    a, b = await enqueue(db), await enqueue(db)
    [claimed] = await first.claim(4)
    assert claimed["_id"] == a["_id"] and claimed["locked"]["slots"] == ["pool:gpu#0"]
    assert await second.claim(4) == [] and second.blocked
    await states.transition(db, claimed, State.COMPLETE, fence={"locked.token": claimed["locked"]["token"]},
                            finished_at=claimed["locked"]["at"])
    assert await db.slots.count_documents({}) == 0  # freed with the end of the run
    [claimed] = await second.claim(4)
    assert claimed["_id"] == b["_id"]


async def test_jobs_of_a_full_class_are_passed_over_for_others_and_claimed_once_a_slot_frees(
        db: Database, job_classes: Any) -> None:
    limited = [await enqueue(db, max_parallel=1, priority=5) for _ in range(2)]
    free = await enqueue(db)
    claims = claimer(db, "w1")
    taken = await claims.claim(3)
    assert [job["_id"] for job in taken] == [limited[0]["_id"], free["_id"]]
    # A reaped run frees its slot too (the reaper's transition).
    await states.transition(db, taken[0], State.FAILED, query_at=taken[0]["locked"]["at"], locked=None)
    [again] = await claims.claim(3)
    assert again["_id"] in {limited[0]["_id"], limited[1]["_id"]}


async def test_a_slot_whose_job_no_longer_runs_is_freed_as_stale(db: Database, job_classes: Any) -> None:
    job = await enqueue(db, max_parallel=1)
    [claimed] = await claimer(db, "w1").claim(1)
    await db.queue.update_one({"_id": job["_id"]}, {"$set": {"state": "pending", "locked": None}})  # by hand
    assert await slots.release_stale(db, older_than=60) == 0  # young: may be a claim in flight
    assert await slots.release_stale(db, older_than=0) == 1
    assert claimed["locked"]["slots"] == ["class:jobs.example.NoopJob#0"]
    assert [j["_id"] for j in await claimer(db, "w2").claim(1)] == [job["_id"]]


@pytest.mark.parametrize("limit", [0, -1, 1.5, "2", True, 100_001])
async def test_a_bad_max_parallel_is_refused(db: Database, job_classes: Any, limit: Any) -> None:
    with pytest.raises(BadArgument, match="max_parallel"):
        await enqueue(db, max_parallel=limit)
    assert await db.queue.count_documents({}) == 0


# --- pause ----------------------------------------------------------------------------------------------


async def test_paused_jobs_stay_pending_running_ones_finish_and_resume_starts_them(
        db: Database, worker_factory: Any) -> None:
    worker = await worker_factory(slots=2)
    running = await enqueue(db, DUMMY, {"sleep": 1, "loop_time": 0.1})
    await wait_for(lambda: db.queue.find_one({"_id": running["_id"], "state": "running"}))
    reply = await flow.pause(db, user=ADMIN, lease_seconds=5)
    assert reply["flow"]["all"] and reply["workers"] == 1 and reply["acknowledged"] == 1
    held = await enqueue(db)
    await wait_for(lambda: finished(db, [running["_id"]]))  # the running one finishes
    assert (await db.journal.find_one({"_id": running["_id"]}))["state"] == "complete"
    assert (await db.queue.find_one({"_id": held["_id"]}))["state"] == "pending"
    resumed_at = time.time()
    reply = await flow.resume(db, user=ADMIN, lease_seconds=5)
    assert not reply["flow"]["all"] and reply["acknowledged"] == 1
    await wait_for(lambda: finished(db, [held["_id"]]))
    started = (await db.journal.find_one({"_id": held["_id"]}))["started_at"]
    assert started.timestamp() >= resumed_at - 0.05
    assert worker.claimer.flow.version == 2


async def test_a_paused_class_waits_while_other_classes_run(db: Database, worker_factory: Any) -> None:
    await worker_factory(slots=2)
    await flow.pause(db, user=ADMIN, qual_name=NOOP, lease_seconds=5)
    held = await enqueue(db)
    other = await enqueue(db, DUMMY, {"sleep": 0})
    await wait_for(lambda: finished(db, [other["_id"]]))
    assert (await db.queue.find_one({"_id": held["_id"]}))["state"] == "pending"
    assert (await flow.read(db)).classes == {NOOP}
    await flow.resume(db, user=ADMIN, qual_name=NOOP, lease_seconds=5)
    await wait_for(lambda: finished(db, [held["_id"]]))


async def test_pausing_everything_needs_admin_and_a_class_needs_execute(db: Database) -> None:
    executor = {"name": "bob", "roles": [], "perms": ["job:jobs.example.*:x"], "active": True}
    reader = {"name": "rita", "roles": [], "perms": ["job:jobs.example.*:r"], "active": True}
    with pytest.raises(Forbidden):
        await flow.pause(db, user=executor, wait=0)
    with pytest.raises(Forbidden):
        await flow.pause(db, user=reader, qual_name=NOOP, wait=0)
    reply = await flow.pause(db, user=executor, qual_name=NOOP, wait=0)
    assert reply["flow"]["classes"] == [NOOP] and reply["workers"] == 0
    entry = await db.audit.find_one({"action": "queue.pause"})
    assert entry["actor"] == "bob" and entry["target"] == NOOP


async def test_a_class_to_pause_must_be_a_class_name_and_the_list_is_bounded(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("", "NoDot", "a..b", "a.b c", "x" * 199 + ".y", 5):
        with pytest.raises(BadArgument, match="qual_name"):
            await flow.pause(db, user=ADMIN, qual_name=bad, wait=0)
    monkeypatch.setattr(flow, "MAX_PAUSED", 2)
    await flow.pause(db, user=ADMIN, qual_name="a.One", wait=0)
    await flow.pause(db, user=ADMIN, qual_name="a.Two", wait=0)
    with pytest.raises(Conflict, match="at most 2 job classes"):
        await flow.pause(db, user=ADMIN, qual_name="a.Three", wait=0)
    await flow.pause(db, user=ADMIN, wait=0)  # the whole queue still can
    assert (await flow.read(db)).classes == {"a.One", "a.Two"}


# --- tags -------------------------------------------------------------------------------------------------


async def test_a_job_is_claimed_only_by_a_worker_with_every_tag_it_requires(db: Database, job_classes: Any) -> None:
    both = await enqueue(db, requires=["gpu", "eu"])
    gpu = await enqueue(db, requires=["gpu"])
    plain = await enqueue(db)
    gpu_worker = claimer(db, "w1", tags=["gpu"])
    assert [job["_id"] for job in await gpu_worker.claim(5)] == [gpu["_id"], plain["_id"]]
    assert await claimer(db, "w2").claim(5) == []
    assert [job["_id"] for job in await claimer(db, "w3", tags=["eu", "gpu", "x"]).claim(5)] == [both["_id"]]


async def test_a_job_no_live_worker_can_run_says_so(db: Database, worker_factory: Any) -> None:
    await worker_factory(slots=1, worker_tags=["gpu"])
    workers = await flow.live_tags(db, lease_seconds=5)
    assert workers == [frozenset({"gpu"})]
    assert flow.unmet(["gpu"], workers) is None
    assert flow.unmet(["gpu", "eu"], workers) == "no live worker has tags eu, gpu"
    job = await enqueue(db, requires=["eu", "gpu"])
    runnable = await enqueue(db, requires=["gpu"])
    await wait_for(lambda: finished(db, [runnable["_id"]]))
    assert (await db.queue.find_one({"_id": job["_id"]}))["state"] == "pending"


@pytest.mark.parametrize("requires", ["gpu", ["bad tag"], [""], [1], ["x"] * 17])
async def test_bad_requires_are_refused(db: Database, job_classes: Any, requires: Any) -> None:
    with pytest.raises(BadArgument, match="requires"):
        await enqueue(db, requires=requires)


async def test_class_attributes_max_parallel_and_requires_are_the_enqueue_defaults(
        db: Database, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    package = make_package(tmp_path, monkeypatch, {"gpu": '''
        from jobs import Job

        class Render(Job):
            """Needs a GPU; one at a time."""
            max_parallel = 1
            requires = ("gpu",)

            def execute(self) -> None:
                return None
    '''})
    try:
        await registry.sync(db, registry.discover([package]))
        job = await enqueue(db, f"{package}.gpu.Render")
        assert job["max_parallel"] == 1 and job["requires"] == ["gpu"]
        lifted = await enqueue(db, f"{package}.gpu.Render", max_parallel=None, requires=[])
        assert "max_parallel" not in lifted and "requires" not in lifted  # an enqueue may lift them
    finally:
        forget_package(package)


async def test_a_slot_freed_by_another_worker_is_claimed_at_once_not_at_the_next_poll(
        db: Database, worker_factory: Any) -> None:
    await worker_factory(slots=1, worker_tags=["a"])
    await worker_factory(slots=1, worker_tags=["b"])
    # It runs longer than next_due_in looks back: nothing but the slot's release can wake b in time.
    first = await enqueue(db, DUMMY, {"sleep": 1.5, "loop_time": 0.1}, max_parallel=1, requires=["a"])
    await wait_for(lambda: db.queue.find_one({"_id": first["_id"], "state": "running"}))
    second = await enqueue(db, DUMMY, {"sleep": 0}, max_parallel=1, requires=["b"])  # only b runs it
    await wait_for(lambda: finished(db, [first["_id"], second["_id"]]), timeout=10)
    ended = (await db.journal.find_one({"_id": first["_id"]}))["finished_at"]
    started = (await db.journal.find_one({"_id": second["_id"]}))["started_at"]
    # Worker b's timer would wake it after 30 s; the deletion of a's slot wakes it at once.
    assert 0 < (started - ended).total_seconds() < 1


# --- faults --------------------------------------------------------------------------------------------


async def test_limited_claims_and_ends_survive_refused_writes_and_leak_no_slot(
        db: Database, worker_factory: Any) -> None:
    jobs = [await enqueue(db, DUMMY, {"sleep": 0.2, "loop_time": 0.1}, max_parallel=1) for _ in range(4)]
    ids = [job["_id"] for job in jobs]
    # The next 6 inserts and commits (slot claims, count changes, ends) meet a write conflict or a dropped
    # connection (a commit that loses its connection twice: the test after the election test below).
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 3}, "data": {
        "failCommands": ["insert", "commitTransaction"], "errorCode": 112,
        "errorLabels": ["TransientTransactionError"]}})
    try:
        await worker_factory(slots=2)
        await wait_for(lambda: db.queue.find_one({"_id": {"$in": ids}, "state": "running"}))
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 3}, "data": {
            "failCommands": ["insert", "commitTransaction"], "closeConnection": True}})
        await wait_for(lambda: finished(db, ids), timeout=60, message="the limited jobs to end")
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    ended = await db.journal.find({"_id": {"$in": ids}}).to_list()
    assert {job["state"] for job in ended} == {"complete"} and {job["trial"] for job in ended} == {1}
    spans = sorted((job["started_at"], job["finished_at"]) for job in ended)
    assert all(before[1] <= after[0] for before, after in zip(spans, spans[1:]))  # one at a time
    assert await db.slots.count_documents({}) == 0


async def test_an_election_while_limited_jobs_are_claimed_and_a_pause_is_asked_loses_nothing(own_server: Any) -> None:
    # On a server of its own: the embedded server's dropDatabase waits, holding its storage lock, for any
    # transaction still open on the database, and then nothing else is served until that transaction is
    # reaped, which only another transaction's statement does. A transaction left open (a worker killed in
    # one) would stall every later test of a shared server.
    start, _ = own_server
    url = start()
    db = Database.connect(url, "jobdeck")
    await db.setup(log_retention_days=1)
    classes = registry.discover()
    await registry.sync(db, classes)
    config = Config(mongo_url=url, database="jobdeck", lease_seconds=3, heartbeat_seconds=0.5)
    workers = [Worker(db, config, classes=classes, slots=2, kill_grace=0.5, shutdown_grace=0.2, poll_seconds=0.2)
               for _ in range(2)]
    try:
        for worker in workers:
            await worker.start()
        jobs = [await enqueue(db, DUMMY, {"sleep": 0.5, "loop_time": 0.1}, max_parallel=2) for _ in range(8)]
        ids = [job["_id"] for job in jobs]
        await wait_for(lambda: db.queue.find_one({"_id": {"$in": ids}, "state": "running"}))
        # Writes are refused for 3 s: ends, slot claims (their transactions) and the pause wait it out.
        await db.client.admin.command("replSetStepDown", 3, force=True)

        async def pause() -> dict[str, Any]:  # as a client does on the 503 of an election: try again
            while True:
                try:
                    return await flow.pause(db, user=ADMIN, qual_name=NOOP, lease_seconds=3, wait=10)
                except PyMongoError:
                    await asyncio.sleep(0.2)

        pausing = asyncio.create_task(pause())
        await wait_for(lambda: finished(db, ids), timeout=60, message="the limited jobs to end")
        reply = await asyncio.wait_for(pausing, 30)
        assert reply["flow"]["classes"] == [NOOP] and reply["unacknowledged"] == []
        assert all(worker.claimer.flow.paused(NOOP) for worker in workers)
        ended = await db.journal.find({"_id": {"$in": ids}}).to_list()
        assert sorted(job["_id"] for job in ended) == sorted(ids)
        assert {job["state"] for job in ended} == {"complete"} and {job["trial"] for job in ended} == {1}
        edges = sorted([(job["started_at"], 1) for job in ended] + [(job["finished_at"], -1) for job in ended],
                       key=lambda edge: (edge[0], edge[1]))
        level = peak = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        assert peak <= 2
        assert await db.slots.count_documents({}) == 0
    finally:
        for worker in workers:
            worker.hurry()
            await worker.stop()
        await db.close()


async def test_a_slot_claim_whose_commit_is_lost_leaves_no_transaction_holding_the_job(own_server: Any) -> None:
    # On a server of its own: without the fix the embedded server stalls (see the election test above).
    start, _ = own_server
    url = start()
    db = Database.connect(url, "jobdeck")
    await db.setup(log_retention_days=1)
    await registry.sync(db, registry.discover())
    try:
        job = await enqueue(db, DUMMY, {"sleep": 0}, max_parallel=1)
        # The commit and the driver's one retry of it lose their connection: whether it ran is unknown.
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 2}, "data": {
            "failCommands": ["commitTransaction"], "closeConnection": True}})
        with pytest.raises(PyMongoError) as lost:
            await claimer(db, "w1").claim(1)
        assert lost.value.has_error_label("UnknownTransactionCommitResult")
        # The transaction was ended, not left open for the server's 60 s holding the job and its slot:
        # another worker claims the job at once, and the database can be dropped.
        [claimed] = await asyncio.wait_for(claimer(db, "w2").claim(1), 10)
        assert claimed["_id"] == job["_id"] and claimed["locked"]["slots"] == [f"class:{DUMMY}#0"]
        await asyncio.wait_for(db.client.drop_database("jobdeck"), 10)
    finally:
        await db.close()


async def test_the_ready_list_is_read_again_only_when_what_is_paused_changed(db: Database, job_classes: Any) -> None:
    """Reading the queue costs what is due on the embedded server (seconds with 100,000 queued): every
    reopening of a worker's change stream reads the flow again, unchanged, and must not cost a read."""
    first, second = await enqueue(db), await enqueue(db)
    claims = claimer(db, "w1")
    [claimed] = await claims.claim(1)
    assert claimed["_id"] == first["_id"] and claims.scans == 1
    claims.set_flow(flow.Flow(version=claims.flow.version))  # the same, read again
    [claimed] = await claims.claim(1)
    assert claimed["_id"] == second["_id"] and claims.scans == 1
    third = await enqueue(db, DUMMY)
    claims.set_flow(flow.Flow(classes=frozenset({NOOP}), version=1))  # NoopJob paused
    [claimed] = await claims.claim(1)
    assert claims.scans == 2 and claimed["_id"] == third["_id"]
