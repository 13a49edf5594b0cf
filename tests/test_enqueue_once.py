"""``queue.enqueue_once``: one job per key, whatever the number of identical calls, and none after a failed write."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import pytest
from pymongo.errors import ConnectionFailure, OperationFailure

from core import counts, queue
from core.db import Database
from core.errors import BadArgument, Conflict, Forbidden
from tests.test_queue import ADMIN, DUMMY, READER, qdb, unique_job  # noqa: F401  (fixtures)

KEEP = timedelta(hours=1)


@pytest.fixture(params=[True, False], ids=["transaction", "no transactions"])
async def tdb(request: pytest.FixtureRequest, qdb: Database) -> AsyncIterator[Database]:  # noqa: F811
    """The test database, written in a transaction (the embedded server has them) and, as on a lone server, not."""
    assert qdb.transactions
    qdb.transactions = request.param
    yield qdb


async def enqueue_entries(db: Database) -> int:
    return await db.audit.count_documents({"action": "job.enqueue"})


async def test_the_same_key_twice_makes_one_job_and_returns_it(tdb: Database) -> None:
    job, new = await queue.enqueue_once(tdb, "k1", DUMMY, {"message": "hi"}, user=ADMIN, keep=KEEP, priority=3)
    again, repeated_new = await queue.enqueue_once(tdb, "k1", DUMMY, {"message": "hi"}, user=ADMIN, keep=KEEP,
                                                   priority=3)

    assert (new, repeated_new) == (True, False)
    assert again["_id"] == job["_id"] and again["state"] == "pending"
    assert await tdb.queue.distinct("_id") == [job["_id"]]
    assert await enqueue_entries(tdb) == 1  # only the real enqueue is audited
    guard = await tdb.enqueue_keys.find_one({"_id": "k1"})
    assert guard["job_id"] == job["_id"] and guard["user"] == "test"
    assert abs((guard["expires"] - guard["at"]) - KEEP) < timedelta(seconds=1)
    await counts.fold(tdb)
    assert (await counts.read(tdb))[DUMMY].states["pending"] == 1


async def test_other_arguments_under_a_used_key_are_a_conflict_naming_the_first_job(tdb: Database) -> None:
    job, _ = await queue.enqueue_once(tdb, "k", DUMMY, {"message": "a"}, user=ADMIN, keep=KEEP)
    for args, options in [({"message": "b"}, {}), ({"message": "a"}, {"priority": 1}), ({"message": "a"},
                                                                                      {"delay": 60})]:
        with pytest.raises(Conflict, match=f"used for job {job['_id']}") as raised:
            await queue.enqueue_once(tdb, "k", DUMMY, args, user=ADMIN, keep=KEEP, **options)
        assert raised.value.details == {"job_id": str(job["_id"])}
    assert await tdb.queue.count_documents({}) == 1


async def test_twenty_concurrent_identical_calls_make_one_job(tdb: Database) -> None:
    results = await asyncio.gather(*(queue.enqueue_once(tdb, "burst", DUMMY, {"message": "x"}, user=ADMIN, keep=KEEP)
                                     for _ in range(20)))

    ids = {job["_id"] for job, _ in results}
    assert len(ids) == 1
    assert sum(new for _, new in results) == 1
    assert await tdb.queue.distinct("_id") == list(ids)
    assert await enqueue_entries(tdb) == 1


@pytest.mark.parametrize("commands", [["insert"], ["commitTransaction"]])
async def test_a_failed_write_leaves_neither_guard_nor_job_and_a_retry_succeeds(qdb: Database,  # noqa: F811
                                                                                 commands: list[str]) -> None:
    await qdb.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                    "data": {"failCommands": commands, "errorCode": 8}})  # UnknownError
    try:
        with pytest.raises(OperationFailure):
            await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    finally:
        await qdb.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert await qdb.enqueue_keys.count_documents({}) == 0
    assert await qdb.queue.count_documents({}) == 0
    assert await enqueue_entries(qdb) == 0

    job, new = await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    assert new and await qdb.queue.distinct("_id") == [job["_id"]]


async def test_without_transactions_a_failed_job_insert_deletes_the_guard_again(qdb: Database) -> None:  # noqa: F811
    tdb = qdb
    tdb.transactions = False
    command = "bulkWrite" if tdb.client_bulk_write else "insert"
    await tdb.client.admin.command({"configureFailPoint": "failCommand", "mode": {"skip": 1},  # the guard's goes in
                                    "data": {"failCommands": ["insert", "bulkWrite"] if command == "bulkWrite"
                                             else ["insert"], "errorCode": 8}})
    try:
        with pytest.raises(OperationFailure):
            await queue.enqueue_once(tdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    finally:
        await tdb.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert await tdb.enqueue_keys.count_documents({}) == 0
    assert await tdb.queue.count_documents({}) == 0
    assert (await queue.enqueue_once(tdb, "k", DUMMY, user=ADMIN, keep=KEEP))[1]


async def test_a_lost_database_is_raised_and_leaves_nothing(qdb: Database) -> None:  # noqa: F811
    await qdb.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                    "data": {"failCommands": ["insert"], "closeConnection": True}})
    try:
        with pytest.raises(ConnectionFailure):
            await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    finally:
        await qdb.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert await qdb.enqueue_keys.count_documents({}) == 0 and await qdb.queue.count_documents({}) == 0


@pytest.mark.parametrize("how", ["expired", "deleted"])
async def test_a_key_kept_no_longer_makes_a_new_job(tdb: Database, how: str) -> None:
    first, _ = await queue.enqueue_once(tdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    if how == "expired":  # (the TTL monitor deletes it within a minute; until then it is ignored)
        await tdb.enqueue_keys.update_one({"_id": "k"}, {"$set": {"expires": datetime.now(timezone.utc)
                                                                  - timedelta(seconds=1)}})
    else:
        await tdb.enqueue_keys.delete_one({"_id": "k"})
    second, new = await queue.enqueue_once(tdb, "k", DUMMY, {"message": "other"}, user=ADMIN, keep=KEEP)

    assert new and second["_id"] != first["_id"]
    assert await tdb.queue.count_documents({}) == 2
    assert (await tdb.enqueue_keys.find_one({"_id": "k"}))["job_id"] == second["_id"]


async def test_a_repeat_finds_the_first_job_in_the_journal_or_names_it_when_gone(qdb: Database) -> None:  # noqa: F811
    job, _ = await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    await queue.kill(qdb, job["_id"], user=ADMIN)
    assert await qdb.queue.count_documents({}) == 0  # journaled
    again, new = await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    assert not new and again["_id"] == job["_id"] and again["state"] == "killed"

    await qdb.journal.delete_one({"_id": job["_id"]})
    gone, new = await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    assert not new and gone == {"_id": job["_id"], "qual_name": DUMMY}


async def test_extra_fields_go_into_the_job_and_the_fingerprint(tdb: Database) -> None:
    tick = datetime(2030, 1, 1, tzinfo=timezone.utc)
    job, _ = await queue.enqueue_once(tdb, "s", DUMMY, user=ADMIN, keep=KEEP,
                                      extra={"schedule": {"id": "daily", "tick": tick}})
    stored = await tdb.queue.find_one({"_id": job["_id"]})
    assert stored["schedule"] == {"id": "daily", "tick": tick}
    with pytest.raises(Conflict):
        await queue.enqueue_once(tdb, "s", DUMMY, user=ADMIN, keep=KEEP,
                                 extra={"schedule": {"id": "daily", "tick": tick + timedelta(minutes=1)}})
    for name in ("state", "args", "unique_key", "$set", "a.b"):
        with pytest.raises(BadArgument, match="is a job field or not a field name"):
            await queue.enqueue_once(tdb, "x", DUMMY, user=ADMIN, keep=KEEP, extra={name: 1})
    assert await tdb.queue.count_documents({}) == 1


async def test_enqueue_checks_come_first_also_for_a_repeat(qdb: Database) -> None:  # noqa: F811
    await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP)
    with pytest.raises(Forbidden):
        await queue.enqueue_once(qdb, "k", DUMMY, user=READER, keep=KEEP)
    with pytest.raises(BadArgument, match="option 'priority'"):
        await queue.enqueue_once(qdb, "k", DUMMY, user=ADMIN, keep=KEEP, priority="high")
    with pytest.raises(BadArgument, match="non-empty string"):
        await queue.enqueue_once(qdb, "", DUMMY, user=ADMIN, keep=KEEP)
    assert await qdb.queue.count_documents({}) == 1


async def test_a_unique_job_a_live_job_holds_is_a_conflict_and_leaves_no_guard(tdb: Database,
                                                                              unique_job: str) -> None:  # noqa: F811
    live = await queue.enqueue(tdb, unique_job, {"key": "b"}, user=ADMIN)
    with pytest.raises(Conflict, match=f"same arguments exists: {live['_id']}"):
        await queue.enqueue_once(tdb, "u", unique_job, {"key": "b"}, user=ADMIN, keep=KEEP)
    assert await tdb.enqueue_keys.count_documents({}) == 0
