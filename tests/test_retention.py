"""Tests for core.retention: the journal sweep (journal_retention_days) and the worker that runs it."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import PyMongoError

from core import retention
from core.config import Config
from core.db import Database
from core.retention import Sweeper, sweep
from core.worker import Worker
from tests.conftest import wait_for

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


async def finished(db: Database, days_ago: float, *, records: int = 2, state: str = "complete") -> ObjectId:
    """A journaled job that finished ``days_ago`` days before NOW, with ``records`` log records."""
    job_id = ObjectId()
    at = NOW - timedelta(days=days_ago)
    await db.journal.insert_one({"_id": job_id, "qual_name": "jobs.example.DummyJob", "state": state,
                                 "finished_at": at, "version": 3, "journal": True})
    if records:
        # Created now: the log's own TTL (log_retention_days, 30) would remove records of NOW's time
        # (months ago) whenever its monitor ran during the test.
        created = datetime.now(timezone.utc)
        await db.log.insert_many([{"job_id": job_id, "seq": seq, "created": created, "level": "INFO",
                                   "message": f"line {seq}", "qual_name": "jobs.example.DummyJob", "trial": 1}
                                  for seq in range(1, records + 1)])
    return job_id


async def live(db: Database, **fields: Any) -> ObjectId:
    """A live job in the queue (with a log record), whatever its times say."""
    job_id = ObjectId()
    await db.queue.insert_one({"_id": job_id, "qual_name": "jobs.example.DummyJob", "state": "running",
                               "priority": 0, "version": 1, "query_at": NOW - timedelta(days=400), **fields})
    await db.log.insert_one({"job_id": job_id, "seq": 1, "created": datetime.now(timezone.utc), "level": "INFO",
                             "message": "running", "qual_name": "jobs.example.DummyJob", "trial": 1})
    return job_id


async def journal_ids(db: Database) -> set[ObjectId]:
    return {job["_id"] for job in await db.journal.find({}, {"_id": 1}).to_list()}


async def orphan_records(db: Database) -> list[Any]:
    """Job ids of log records whose job is in neither collection."""
    ids = set(await db.log.distinct("job_id"))
    known = await journal_ids(db) | {job["_id"] for job in await db.queue.find({}, {"_id": 1}).to_list()}
    return sorted(ids - known)


async def test_jobs_past_the_retention_go_with_their_logs_newer_and_live_ones_stay(db: Database) -> None:
    old = [await finished(db, days, state=state) for days, state in
           [(31, "complete"), (90, "error"), (400, "killed"), (365 * 10, "inactive")]]
    kept = [await finished(db, days) for days in (29.9, 1, 0)]
    running = await live(db, finished_at=NOW - timedelta(days=400))
    removed, cutoff = await sweep(db, 30, now=NOW)
    assert removed == 4 and cutoff == NOW - timedelta(days=30)
    assert await journal_ids(db) == set(kept)
    assert set(await db.log.distinct("job_id")) == {*kept, running}
    assert await db.log.count_documents({"job_id": {"$in": old}}) == 0
    assert await db.queue.find_one({"_id": running}) is not None


async def test_a_backlog_goes_in_bounded_rounds(db: Database) -> None:
    old = [await finished(db, 40 + i / 1000, records=1) for i in range(25)]  # dense: many per window
    old += [await finished(db, 100 + 20 * i, records=1) for i in range(10)]  # sparse
    kept = await finished(db, 10, records=1)
    deletes: list[int] = []
    original = db.journal.delete_many

    async def counting(query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        deletes.append(len(query["_id"]["$in"]))
        return await original(query, *args, **kwargs)

    db.journal.delete_many = counting  # type: ignore[method-assign]
    removed, _ = await sweep(db, 30, now=NOW, batch=4, pause=0)
    assert removed == len(old)
    assert max(deletes) <= 4
    assert await journal_ids(db) == {kept}
    assert await db.log.count_documents({}) == 1


async def test_jobs_finished_before_the_epoch_are_swept_too(db: Database) -> None:
    ancient = await finished(db, (NOW - retention.EPOCH).days + 100)
    await sweep(db, 30, now=NOW)
    assert ancient not in await journal_ids(db)


async def _fail(db: Database, *, skip: int = 0) -> None:
    mode = {"skip": skip} if skip else {"times": 1}
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": mode,
                                   "data": {"failCommands": ["delete"], "errorCode": 8}})


@pytest.mark.parametrize("skip", [0, 1], ids=["logs-delete-fails", "journal-delete-fails"])
async def test_a_database_fault_leaves_consistent_data_and_the_sweep_retries(db: Database, skip: int) -> None:
    old = [await finished(db, 60) for _ in range(3)]
    kept = await finished(db, 1)
    await _fail(db, skip=skip)
    try:
        with pytest.raises(PyMongoError):
            await sweep(db, 30, now=NOW)
        assert await orphan_records(db) == []  # logs go first: never a record without its job
        assert await journal_ids(db) == {*old, kept}
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    await _fail(db)  # the sweeper's first try fails too; it tries again later
    sweeper = Sweeper(db, retention_days=30, interval=60, retry_seconds=0.05)
    try:
        sweeper.start()
        await wait_for(lambda: _only(db, {kept}), 10, message="the retried sweep")
    finally:
        await sweeper.stop()
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert await orphan_records(db) == []
    assert set(await db.log.distinct("job_id")) == {kept}


async def _only(db: Database, ids: set[ObjectId]) -> bool:
    return await journal_ids(db) == ids


async def test_a_changed_retention_acts_on_the_next_sweep(db: Database) -> None:
    ten, five, two = await finished(db, 10), await finished(db, 5), await finished(db, 2)
    sweeper = Sweeper(db, retention_days=None)
    assert await sweeper.sweep() == 0 and await journal_ids(db) == {ten, five, two}  # not set: keep everything
    now = await db.server_time()
    for job_id, days in ((ten, 10), (five, 5), (two, 2)):  # relative to the database's clock
        await db.journal.update_one({"_id": job_id}, {"$set": {"finished_at": now - timedelta(days=days)}})
    sweeper.retention_days = 7
    assert await sweeper.sweep() == 1 and await journal_ids(db) == {five, two}
    sweeper.retention_days = 3
    assert await sweeper.sweep() == 1 and await journal_ids(db) == {two}
    sweeper.retention_days = 30  # raised: what is gone stays gone, what is left stays
    assert await sweeper.sweep() == 0 and await journal_ids(db) == {two}


async def test_the_worker_sweeps_the_journal_when_a_retention_is_set(db: Database, config: Config,
                                                                      job_classes: dict[str, Any]) -> None:
    now = await db.server_time()
    await db.journal.insert_many([{"_id": ObjectId(), "qual_name": "jobs.example.DummyJob", "state": "complete",
                                   "finished_at": now - timedelta(days=days)} for days in (3, 0.5)])
    worker = Worker(db, dataclasses.replace(config, journal_retention_days=1), classes=job_classes,
                    poll_seconds=0.2)
    await worker.start()
    try:
        await wait_for(lambda: _count(db, 1), 10, message="the worker's sweep")
    finally:
        worker.hurry()
        await worker.stop()
    assert worker.sweeper._task is None


async def _count(db: Database, expected: int) -> bool:
    return await db.journal.count_documents({}) == expected


def test_the_default_config_sweeps_nothing() -> None:
    assert Config().journal_retention_days is None
