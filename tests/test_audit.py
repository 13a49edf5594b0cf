"""core.audit: entries, and a document written together with the entry that records it."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest
from bson import ObjectId
from pymongo import monitoring
from pymongo.errors import DuplicateKeyError, PyMongoError

from core import audit
from core.config import Config
from core.db import Database


class Commands(monitoring.CommandListener):
    """The names of the commands a client sends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(params=[True, False], ids=["bulkWrite", "two inserts"])
async def adb(request: pytest.FixtureRequest, db: Database) -> AsyncIterator[Database]:
    """The test database, written with one bulkWrite (MongoDB 8.0+) and, as with older servers, without."""
    assert db.client_bulk_write  # the embedded server has it
    db.client_bulk_write = request.param
    yield db


async def fail_next(db: Database, command: str, **data: Any) -> None:
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                                   "data": {"failCommands": [command], **data}})


async def test_a_document_is_inserted_with_the_entry_that_records_it(adb: Database) -> None:
    job = {"_id": ObjectId(), "qual_name": "jobs.example.DummyJob"}

    await audit.insert_recorded(adb, adb.queue, job, "job.enqueue", actor="bob", target=str(job["_id"]),
                                qual_name="jobs.example.DummyJob")

    assert await adb.queue.find_one({"_id": job["_id"]}) == job
    entry = await adb.audit.find_one({"target": str(job["_id"])}, {"_id": 0, "at": 0})
    assert entry == {"action": "job.enqueue", "actor": "bob", "target": str(job["_id"]),
                     "detail": {"qual_name": "jobs.example.DummyJob"}}


async def test_a_refused_document_raises_duplicate_key_and_is_not_recorded(adb: Database) -> None:
    job = {"_id": ObjectId()}
    await adb.queue.insert_one(dict(job))

    with pytest.raises(DuplicateKeyError):
        await audit.insert_recorded(adb, adb.queue, job, "job.enqueue", actor="bob", target=str(job["_id"]))

    assert await adb.audit.count_documents({}) == 0


async def test_a_failed_write_is_raised_not_lost(adb: Database) -> None:
    await fail_next(adb, "bulkWrite" if adb.client_bulk_write else "insert", errorCode=8)  # UnknownError
    job = {"_id": ObjectId()}
    try:
        with pytest.raises(PyMongoError):
            await audit.insert_recorded(adb, adb.queue, job, "job.enqueue", actor="bob", target=str(job["_id"]))
    finally:
        await adb.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    # Nothing was written: no job goes unrecorded.
    assert await adb.queue.count_documents({}) == 0 and await adb.audit.count_documents({}) == 0


async def test_without_bulk_write_an_entry_that_cannot_be_written_fails_the_call(db: Database) -> None:
    db.client_bulk_write = False
    # The first insert (the job's) passes, the next (the entry's) fails.
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"skip": 1},
                                   "data": {"failCommands": ["insert"], "errorCode": 8}})
    job = {"_id": ObjectId()}
    try:
        with pytest.raises(PyMongoError):
            await audit.insert_recorded(db, db.queue, job, "job.enqueue", actor="bob", target=str(job["_id"]))
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    # The caller hears of it (a 500 for a request): the job is in, its entry is not.
    assert await db.queue.count_documents({}) == 1 and await db.audit.count_documents({}) == 0


async def test_long_names_are_cut_and_their_length_kept() -> None:
    entry = audit.entry("login.failed", actor="x" * 500, target="y" * 50)
    assert entry["actor"] == "x" * audit.MAX_NAME and entry["detail"] == {"actor_length": 500}


# --- many callers at once ------------------------------------------------------------------

async def insert_all(inserts: audit.RecordedInserts, documents: list[dict[str, Any]]) -> list[Any]:
    """Insert ``documents`` from one concurrent caller each; what each got (None or its error)."""
    return await asyncio.gather(*(inserts.insert(document, "job.enqueue", actor="bob", target=str(document["_id"]))
                                  for document in documents), return_exceptions=True)


async def test_concurrent_callers_share_writes_and_every_document_is_recorded(db: Database) -> None:
    inserts = audit.RecordedInserts(db, db.queue)
    jobs = [{"_id": ObjectId(), "n": n} for n in range(20)]

    assert await insert_all(inserts, jobs) == [None] * 20

    assert inserts.batches == 1  # all of them arrived before the first write began
    assert await db.queue.count_documents({}) == 20
    targets = {entry["target"] async for entry in db.audit.find({"action": "job.enqueue"})}
    assert targets == {str(job["_id"]) for job in jobs}


async def test_a_refused_document_fails_its_caller_only_and_is_not_recorded(db: Database) -> None:
    inserts = audit.RecordedInserts(db, db.queue)
    taken = {"_id": ObjectId()}
    await db.queue.insert_one(dict(taken))
    jobs = [{"_id": ObjectId()}, {"_id": ObjectId()}, dict(taken), {"_id": ObjectId()}]

    got = await insert_all(inserts, jobs)

    assert [type(result) for result in got[1:]] == [type(None), DuplicateKeyError, type(None)]
    assert await db.audit.count_documents({"target": str(taken["_id"])}) == 0
    assert await db.audit.count_documents({}) == 3


async def test_a_failed_batch_write_fails_every_caller_of_the_batch(db: Database) -> None:
    inserts = audit.RecordedInserts(db, db.queue)
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                   "data": {"failCommands": ["insert", "bulkWrite"], "errorCode": 8}})
    try:
        got = await insert_all(inserts, [{"_id": ObjectId()} for _ in range(5)])
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert all(isinstance(result, PyMongoError) for result in got)
    assert await db.queue.count_documents({}) == 0 and await db.audit.count_documents({}) == 0
    # and the next callers are written as usual
    assert await insert_all(inserts, [{"_id": ObjectId()} for _ in range(3)]) == [None] * 3


async def test_entries_that_cannot_be_written_fail_their_callers(db: Database) -> None:
    inserts = audit.RecordedInserts(db, db.queue)
    # The jobs' insert passes, the entries' fails.
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"skip": 1},
                                   "data": {"failCommands": ["insert"], "errorCode": 8}})
    try:
        got = await insert_all(inserts, [{"_id": ObjectId()} for _ in range(3)])
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert all(isinstance(result, PyMongoError) for result in got)  # their jobs are in; they hear it
    assert await db.queue.count_documents({}) == 3 and await db.audit.count_documents({}) == 0


async def test_a_caller_alone_is_written_in_one_command(config: Config, db: Database) -> None:
    commands = Commands()
    counted = Database.connect(config.mongo_url, config.database, event_listeners=[commands])
    try:
        await counted.setup(log_retention_days=config.log_retention_days)
        inserts = audit.RecordedInserts(counted, counted.queue)
        commands.names.clear()
        await inserts.insert({"_id": ObjectId()}, "job.enqueue", actor="bob")
        assert commands.names == ["bulkWrite"]
    finally:
        await counted.close()
    assert await db.queue.count_documents({}) == 1 and await db.audit.count_documents({}) == 1


async def test_a_caller_who_leaves_does_not_stop_the_others_and_stop_waits_for_them(db: Database) -> None:
    inserts = audit.RecordedInserts(db, db.queue)
    jobs = [{"_id": ObjectId()} for _ in range(4)]
    callers = [asyncio.ensure_future(inserts.insert(job, "job.enqueue", actor="bob")) for job in jobs]
    await asyncio.sleep(0)
    callers[2].cancel()

    await inserts.stop()

    assert await db.queue.count_documents({}) == 4 and await db.audit.count_documents({}) == 4
    assert [caller.cancelled() for caller in callers] == [False, False, True, False]
