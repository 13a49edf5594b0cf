"""core.audit: entries, and a document written together with the entry that records it."""
from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
from bson import ObjectId
from pymongo.errors import DuplicateKeyError, PyMongoError

from core import audit
from core.db import Database


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
