"""Enqueue at scale: ``queue.enqueue_many`` (all or none), and ``delay``/``run_at`` for every enqueue."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import pytest
from bson import ObjectId
from pymongo.errors import ConnectionFailure

from core import queue
from core.db import Database
from core.errors import BadArgument, Conflict, Forbidden, NotFound
from core.worker import Worker
from tests.conftest import wait_for
from tests.test_queue import ADMIN, DUMMY, FAIL, qdb, unique_job  # noqa: F401  (fixtures)

NOOP = "jobs.example.NoopJob"
DUMMIES = {"name": "dummies", "roles": [], "perms": ["job:jobs.example.Dummy*:x"], "active": True}


def items(n: int, qual_name: str = DUMMY) -> list[dict[str, Any]]:
    return [{"qual_name": qual_name, "args": {"message": f"job {i}"}} for i in range(n)]


async def nothing_written(db: Database) -> bool:
    return await db.queue.count_documents({}) == 0 and await db.audit.count_documents({}) == 0


@pytest.fixture(params=[True, False], ids=["transaction", "no transactions"])
async def tdb(request: pytest.FixtureRequest, qdb: Database) -> AsyncIterator[Database]:  # noqa: F811
    """The test database, written in a transaction (the embedded server has them) and, as on a lone server, not."""
    assert qdb.transactions
    qdb.transactions = request.param
    yield qdb


# --- enqueue_many ---------------------------------------------------------------------------

async def test_a_batch_of_1000_is_written_in_order_with_an_audit_entry_each(tdb: Database) -> None:
    jobs = await queue.enqueue_many(tdb, items(1000), user=ADMIN, hostname="client")

    assert [job["args"]["message"] for job in jobs] == [f"job {i}" for i in range(1000)]
    stored = await tdb.queue.find({}).sort("_id", 1).to_list()
    assert [job["_id"] for job in stored] == [job["_id"] for job in jobs]  # claim order is batch order
    assert all(job["state"] == "pending" and job["enqueued"]["hostname"] == "client" for job in stored)
    entries = await tdb.audit.find({"action": "job.enqueue"}).to_list()
    assert sorted(entry["target"] for entry in entries) == sorted(str(job["_id"]) for job in jobs)
    assert {entry["actor"] for entry in entries} == {"test"}
    assert {tuple(entry["detail"].items()) for entry in entries} == {(("qual_name", DUMMY),)}


async def test_an_empty_batch_writes_nothing(qdb: Database) -> None:  # noqa: F811
    assert await queue.enqueue_many(qdb, [], user=ADMIN) == []
    assert await nothing_written(qdb)


@pytest.mark.parametrize(("bad", "error", "message"), [
    ({"qual_name": DUMMY, "args": {"sleep": "long"}}, BadArgument, "jobs[500]: bad arguments for"),
    ({"qual_name": DUMMY, "priority": "high"}, BadArgument, "jobs[500]: option 'priority' must be an integer"),
    ({"qual_name": DUMMY, "colour": "red"}, BadArgument, "jobs[500]: unknown field 'colour'"),
    ({"qual_name": DUMMY, "delay": 1, "run_at": "2030-01-01"}, BadArgument, "jobs[500]: give delay or run_at"),
    ({"qual_name": "jobs.example.Nothing"}, NotFound, "jobs[500]: unknown job 'jobs.example.Nothing'"),
    ({"args": {}}, BadArgument, "jobs[500]: qual_name must be a non-empty string"),
    ("jobs.example.DummyJob", BadArgument, "jobs[500]: a job must be an object"),
], ids=["args", "option", "unknown-field", "delay-and-run_at", "unknown-class", "no-qual_name", "not-an-object"])
async def test_a_bad_item_names_its_index_and_nothing_is_written(qdb: Database, bad: Any, error: type,  # noqa: F811
                                                                 message: str) -> None:
    batch = items(1000)
    batch[500] = bad
    with pytest.raises(error) as raised:
        await queue.enqueue_many(qdb, batch, user=ADMIN)
    assert str(raised.value).startswith(message), str(raised.value)
    assert raised.value.details["index"] == 500
    assert await nothing_written(qdb)


async def test_a_batch_of_more_than_1000_is_refused(qdb: Database) -> None:  # noqa: F811
    with pytest.raises(BadArgument, match="at most 1000 jobs per batch, got 1001"):
        await queue.enqueue_many(qdb, items(1001), user=ADMIN)
    with pytest.raises(BadArgument, match="jobs must be a list"):
        await queue.enqueue_many(qdb, {"qual_name": DUMMY}, user=ADMIN)
    assert await nothing_written(qdb)


async def test_a_batch_needs_execute_permission_for_every_class_in_it(qdb: Database) -> None:  # noqa: F811
    batch = items(3) + [{"qual_name": FAIL}] + items(2)
    with pytest.raises(Forbidden, match=r"^jobs\[3\]: user 'dummies' may not execute jobs.example.FailJob$"):
        await queue.enqueue_many(qdb, batch, user=DUMMIES)
    assert await nothing_written(qdb)
    assert len(await queue.enqueue_many(qdb, items(2), user=DUMMIES)) == 2


async def test_a_unique_job_twice_in_a_batch_is_a_conflict_naming_both(qdb: Database,  # noqa: F811
                                                                      unique_job: str) -> None:  # noqa: F811
    batch = [{"qual_name": unique_job, "args": {"key": "a"}}, {"qual_name": unique_job, "args": {"key": "b"}},
             {"qual_name": unique_job, "args": {"key": "a"}}]
    with pytest.raises(Conflict, match=r"^jobs\[2\]: .*OnlyOnce is unique and jobs\[0\] has the same arguments"
                       ) as raised:
        await queue.enqueue_many(qdb, batch, user=ADMIN)
    assert raised.value.details == {"index": 2, "duplicate_of": 0}
    assert await nothing_written(qdb)


async def test_a_unique_job_a_live_job_holds_is_a_conflict_naming_it(qdb: Database,  # noqa: F811
                                                                    unique_job: str) -> None:  # noqa: F811
    live = await queue.enqueue(qdb, unique_job, {"key": "b"}, user=ADMIN)
    batch = [{"qual_name": unique_job, "args": {"key": "a"}}, {"qual_name": unique_job, "args": {"key": "b"}}]
    with pytest.raises(Conflict, match=rf"^jobs\[1\]: .* same arguments exists: {live['_id']}") as raised:
        await queue.enqueue_many(qdb, batch, user=ADMIN)
    assert raised.value.details == {"index": 1, "job_id": str(live["_id"])}
    assert await qdb.queue.count_documents({}) == 1


async def test_a_job_refused_half_way_through_the_write_leaves_none_of_the_batch(
        tdb: Database, unique_job: str) -> None:  # noqa: F811
    # Another enqueue got in between the check and the write: the ordered insert stops at job 120.
    jobs = await queue.enqueue_many(tdb, [{"qual_name": unique_job, "args": {"n": n}} for n in range(200)],
                                    user=ADMIN)
    await tdb.queue.delete_many({})
    await tdb.audit.delete_many({})
    thief = await queue.enqueue(tdb, unique_job, {"n": 120}, user=ADMIN)
    fresh = [{**job, "_id": ObjectId()} for job in jobs]
    with pytest.raises(Conflict, match=rf"^jobs\[120\]: .* exists: {thief['_id']}"):
        await queue._insert_batch(tdb, fresh, [{"action": "job.enqueue", "target": str(job["_id"])} for job in fresh])
    assert await tdb.queue.distinct("_id") == [thief["_id"]]
    assert await tdb.audit.count_documents({"target": {"$ne": str(thief["_id"])}}) == 0


async def test_a_failed_write_leaves_none_of_the_batch(tdb: Database) -> None:
    await tdb.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                    "data": {"failCommands": ["bulkWrite", "insert"], "closeConnection": True}})
    try:
        with pytest.raises(ConnectionFailure):
            await queue.enqueue_many(tdb, items(100), user=ADMIN)
    finally:
        await tdb.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert await nothing_written(tdb)


# --- delay and run_at -----------------------------------------------------------------------

def near(moment: datetime, expected: datetime, slack: float = 5.0) -> bool:
    return abs((moment - expected).total_seconds()) < slack


async def test_delay_and_run_at_set_when_a_job_may_first_start(qdb: Database) -> None:  # noqa: F811
    now = datetime.now(timezone.utc)
    delayed = await queue.enqueue(qdb, DUMMY, user=ADMIN, delay=600)
    later = (now + timedelta(days=3)).replace(microsecond=0)
    naive = await queue.enqueue(qdb, DUMMY, user=ADMIN, run_at=later.replace(tzinfo=None).isoformat())
    zoned = await queue.enqueue(qdb, DUMMY, user=ADMIN, run_at=(now + timedelta(hours=2)).astimezone(
        timezone(timedelta(hours=5))).isoformat())
    past = await queue.enqueue(qdb, DUMMY, user=ADMIN, run_at="2001-01-01T00:00:00Z")
    plain = await queue.enqueue(qdb, DUMMY, user=ADMIN, delay=0)

    stored = {job["_id"]: job for job in await qdb.queue.find({}).to_list()}
    assert near(stored[delayed["_id"]]["query_at"], now + timedelta(seconds=600))
    assert stored[naive["_id"]]["query_at"] == later  # a time without a zone is UTC
    assert near(stored[zoned["_id"]]["query_at"], now + timedelta(hours=2))
    assert near(stored[past["_id"]]["query_at"], now) and near(stored[plain["_id"]]["query_at"], now)
    assert all(near(job["enqueued"]["at"], now) for job in stored.values())


async def test_items_of_a_batch_take_delay_and_run_at(qdb: Database) -> None:  # noqa: F811
    now = datetime.now(timezone.utc)
    jobs = await queue.enqueue_many(qdb, [{"qual_name": DUMMY, "delay": 60},
                                          {"qual_name": DUMMY, "run_at": (now + timedelta(days=2)).isoformat()},
                                          {"qual_name": DUMMY}], user=ADMIN)
    stored = [await qdb.queue.find_one({"_id": job["_id"]}) for job in jobs]
    assert near(stored[0]["query_at"], now + timedelta(seconds=60))
    assert near(stored[1]["query_at"], now + timedelta(days=2))
    assert near(stored[2]["query_at"], now)


@pytest.mark.parametrize(("start", "message"), [
    ({"delay": 1, "run_at": "2030-01-01T00:00:00Z"}, "give delay or run_at, not both"),
    ({"delay": -1}, "delay must be a number of seconds from 0 to 31536000, got '-1'"),
    ({"delay": 400 * 86400}, "delay must be a number of seconds from 0"),
    ({"delay": True}, "delay must be a number"),
    ({"delay": "10"}, "delay must be a number"),
    ({"run_at": "tomorrow"}, "run_at must be an ISO 8601 time"),
    ({"run_at": 1700000000}, "run_at must be an ISO 8601 time"),
    ({"run_at": "0001-01-01T00:00:00+01:00"}, "run_at must be an ISO 8601 time"),
    ({"run_at": "2999-01-01T00:00:00Z"}, "run_at must be at most 31536000 s (365 days) ahead"),
], ids=["both", "negative", "too-long", "bool", "text", "not-a-time", "a-number", "out-of-range", "too-far"])
async def test_a_bad_delay_or_run_at_is_refused_and_nothing_is_written(qdb: Database, start: dict[str, Any],  # noqa: F811
                                                                       message: str) -> None:
    with pytest.raises(BadArgument, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        await queue.enqueue(qdb, DUMMY, user=ADMIN, **start)
    with pytest.raises(BadArgument, match=r"^jobs\[1\]: " + message.replace("(", r"\(").replace(")", r"\)")):
        await queue.enqueue_many(qdb, [{"qual_name": DUMMY}, {"qual_name": DUMMY, **start}], user=ADMIN)
    assert await nothing_written(qdb)


async def test_a_delayed_job_restarted_after_a_kill_runs_now(qdb: Database) -> None:  # noqa: F811
    job = await queue.enqueue(qdb, DUMMY, user=ADMIN, delay=3600)
    await queue.kill(qdb, job["_id"], user=ADMIN)
    child = await queue.restart(qdb, job["_id"], user=ADMIN)
    assert child["_id"] != job["_id"] and child["query_at"] <= datetime.now(timezone.utc)


# --- a worker honours them --------------------------------------------------------------------

async def test_a_worker_claims_a_delayed_job_when_it_falls_due_and_not_before(qdb: Database,  # noqa: F811
                                                                               worker: Worker) -> None:
    now = datetime.now(timezone.utc)
    single = await queue.enqueue(qdb, NOOP, user=ADMIN, delay=1.5)
    batched = (await queue.enqueue_many(qdb, [{"qual_name": NOOP, "run_at": (now + timedelta(seconds=2)).isoformat()},
                                              {"qual_name": NOOP}], user=ADMIN))
    ids = [single["_id"], batched[0]["_id"]]
    await wait_for(lambda: qdb.journal.find_one({"_id": batched[1]["_id"], "state": "complete"}), timeout=15,
                   message="the job without delay to run at once")
    # Until the first falls due, neither is claimed: watch the queue, polling, until then.
    due = single["query_at"]
    while datetime.now(timezone.utc) < due - timedelta(seconds=0.1):
        assert await qdb.queue.count_documents({"_id": {"$in": ids}, "state": "pending", "trial": 0}) == 2
        await asyncio.sleep(0.05)
    for job_id, due in zip(ids, (single["query_at"], batched[0]["query_at"])):
        done = await wait_for(lambda job_id=job_id: qdb.journal.find_one({"_id": job_id, "state": "complete"}),
                              timeout=15, message="the delayed job to run once due")
        assert done["started_at"] >= due, (done["started_at"], due)
        assert (done["started_at"] - due).total_seconds() < 5, "claimed soon after falling due"
